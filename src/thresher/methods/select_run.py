"""`thresher select`: re-select from a scored run without any model, and export the records."""

from __future__ import annotations

import json
from pathlib import Path

import pandas as pd

from thresher.data.readers import write_records
from thresher.engine.io import atomic_path, write_json
from thresher.engine.manifest import base_manifest
from thresher.errors import ConfigError
from thresher.methods.recipe import DataConfig
from thresher.methods.run import load_data
from thresher.methods.select import SelectConfig, apply_selector, check_params

# Candidate filters a scorer's main column gets unless the user says otherwise (printed, never silent).
DEFAULT_WHERE = {"ifd": {"ifd": {"lt": 1.0}}}


def _read_run(run: Path):
    manifest_path, scores_path = run / "manifest.json", run / "scores.parquet"
    for p in (manifest_path, scores_path):
        if not p.exists():
            raise ConfigError(f"{run} is not a scored run: {p.name} is missing. "
                              "Create one with `thresher score` or `thresher run`.")
    manifest = json.loads(manifest_path.read_text(encoding="utf-8"))
    return manifest, pd.read_parquet(scores_path)


def select_from_run(run: Path, out: Path, *, selector="top_k", column=None, k=None, ratio=None, of="all",
                    higher_is_better=None, where=None, params=None, argv=None) -> dict:
    from thresher.cli import parse_where

    manifest, scores = _read_run(run)
    last = manifest["stages"][-1]
    info = last["scorers"][-1] if last["scorers"] else {}   # the stage's result is its last scorer
    main = info.get("main_column")
    column = column or main
    p = dict(params or {})
    if k is not None:
        p["k"] = k
    if ratio is not None:
        p["ratio"] = ratio
    filt_note = ""
    if selector == "top_k":
        if of != "all":
            p["of"] = int(of) if str(of).isdigit() else of
        if where and [w.lower() for w in where] == ["none"]:
            w = {}
        elif where:
            w = parse_where(where)
        else:
            w = DEFAULT_WHERE.get(column, {})
            if w:
                filt_note = f" (default filter for {column}: {w}; pass --where none to disable)"
        if w:
            p["where"] = w
        if higher_is_better is not None:
            p["higher_is_better"] = higher_is_better
        elif column != main:
            raise ConfigError(f"Column {column!r} is not the scorer's main column: say which end to keep with "
                              "--higher-is-better or --lower-is-better.")
    cfg = SelectConfig(selector=selector, column=column, params=p)
    cfg.check("thresher select")
    check_params(cfg, "thresher select")
    idx = apply_selector(cfg, scores, default_column=main, higher_is_better=info.get("higher_is_better"))
    ds = load_data(DataConfig(**{k_: v for k_, v in manifest["data"].items() if k_ in DataConfig.__dataclass_fields__}))
    if list(ds.ids) != list(scores["id"]):
        raise ConfigError(f"The data at {manifest['data']['path']} no longer matches the scores in {run} "
                          "(ids differ): it changed since scoring. Re-run `thresher score`.")
    write_records(ds, idx, out)
    with atomic_path(out.with_name(out.name + ".ids.txt")) as tmp:
        tmp.write_text("".join(f"{ds.ids[i]}\n" for i in idx), encoding="utf-8")
    write_json(out.with_name(out.name + ".manifest.json"),
               {**base_manifest(argv), "run": str(run), "select": {"selector": selector, "column": column, "params": p},
                "selected": int(len(idx)), "rows": len(ds)})
    msg = f"selected {len(idx)} of {len(ds)} rows by {selector} on {column}{filt_note} -> {out}"
    return {"selected": int(len(idx)), "message": msg}
