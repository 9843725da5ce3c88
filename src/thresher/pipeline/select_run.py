"""`thresher select`: re-select from a scored run without any model, and export the records."""

from __future__ import annotations

import json
import re
from pathlib import Path

import pandas as pd

from thresher.data.fingerprint import data_fingerprint, same_data
from thresher.data.readers import BUNDLED_SHAREGPT, OUTPUT_SUFFIXES, write_records
from thresher.io import atomic_path, write_json
from thresher.manifest import base_manifest
from thresher.outputs import check_output_file
from thresher.errors import ConfigError
from thresher.pipeline.config import DataConfig, SelectConfig
from thresher.pipeline.stages import empty_selection, load_data

# Candidate filters a scorer's main column gets unless the user says otherwise (printed, never silent).
DEFAULT_WHERE = {"ifd": {"ifd": {"lt": 1.0}}}

_WHERE = re.compile(r"^\s*([\w.]+)\s*(<=|>=|<|>)\s*([-+0-9.eE]+|inf|nan)\s*$")
_OPS = {"<": "lt", "<=": "le", ">": "gt", ">=": "ge"}


def parse_where(items: list[str] | None) -> dict:
    """["ifd<1", "n_resp_tokens>=20"] -> {"ifd": {"lt": 1.0}, "n_resp_tokens": {"ge": 20.0}}"""
    where: dict = {}
    for item in items or []:
        m = _WHERE.match(item)
        if not m:
            raise ConfigError(f"--where expects COLUMN<VALUE (operators < <= > >=), e.g. 'ifd<1'. Got {item!r}.")
        where.setdefault(m.group(1), {})[_OPS[m.group(2)]] = float(m.group(3))
    return where


def _read_run(run: Path):
    manifest_path, scores_path = run / "manifest.json", run / "scores.parquet"
    for p in (manifest_path, scores_path):
        if not p.exists():
            raise ConfigError(f"{run} is not a scored run: {p.name} is missing. "
                              "Create one with `thresher score` or `thresher run`.")
    manifest = json.loads(manifest_path.read_text(encoding="utf-8"))
    return manifest, pd.read_parquet(scores_path)


def _check_out_suffix(out: Path) -> None:
    if out.suffix.lower() not in OUTPUT_SUFFIXES:        # refused, never guessed from the input
        raise ConfigError(f"--out {str(out)!r}: the file name must end in .json, .jsonl or .parquet (the format "
                          f"of the selected records); got {out.suffix or 'no suffix'!r}.")


def data_path(run: Path, data: dict) -> str:
    """Where the data ``run`` was scored on is now: the absolute path ``score`` recorded (``abs_path``), or
    for older runs the recorded path against the directory score ran in (``cwd``, when recorded) or the
    current one. ConfigError when the recorded file is gone or its content changed (``fingerprint``)."""
    recorded = str(data["path"])
    if data.get("memory"):
        raise ConfigError(f"{run} was scored on data given in memory ({data['memory']['source']}, through the Python "
                          "API), which thresher cannot read again: select with thresher.select(...) on the scored "
                          "object, or score a data file.")
    if recorded in BUNDLED_SHAREGPT:
        return recorded
    fp, abs_path = data.get("fingerprint"), data.get("abs_path")
    if abs_path and (isinstance(fp, dict) or Path(abs_path).exists()):   # not for a hub name: nothing on disk
        path = abs_path
    elif data.get("cwd") and not Path(recorded).is_absolute() and (Path(data["cwd"]) / recorded).exists():
        path = str(Path(data["cwd"]) / recorded)
    else:
        path = recorded
    if isinstance(fp, dict):
        if not Path(path).exists():
            raise ConfigError(f"The data {recorded!r} that {run} was scored on is no longer at {path}: it was "
                              "moved or deleted. Put it back, or re-run `thresher score` on the data's new place.")
        if not same_data(fp, data_fingerprint(path)):
            raise ConfigError(f"The data at {path} no longer matches the scores in {run} (its content changed "
                              "since scoring). Re-run `thresher score`.")
    return path


def run_main_column(manifest: dict) -> tuple[str | None, bool | None]:
    """A run's main score column and its direction: its last stage's last scorer's (None, None: no scorer)."""
    last = manifest["stages"][-1]
    info = last["scorers"][-1] if last.get("scorers") else {}   # the stage's result is its last scorer
    return info.get("main_column"), info.get("higher_is_better")


def choose_rows(scores, main: str | None, main_hib: bool | None, *, selector="top_k", column=None, k=None,
                ratio=None, of="all", higher_is_better=None, where=None, params=None):
    """The rows ``thresher select`` keeps from the score table ``scores`` (a DataFrame, one row per data row),
    whose main column is ``main`` with direction ``main_hib``; returns (positions (M,) int64 in selection
    order, the column ranked, the selector's parameters, a note on the default filter or "").

    ``where``: None (top_k: the main column's default filter, DEFAULT_WHERE), ["none"] (no filter), a list of
    ``COLUMN<VALUE`` strings (``--where``) or a mapping {column: {lt|le|gt|ge: number}}."""
    asked, column = column, column or main          # the selector resolves its own default column
    p = dict(params or {})
    if k is not None:
        p["k"] = k
    if ratio is not None:
        p["ratio"] = ratio
    filt_note = ""
    if selector == "top_k":
        if of != "all":
            p["of"] = int(of) if str(of).isdigit() else of
        if isinstance(where, dict):
            w = where
        elif where and [w.lower() for w in where] == ["none"]:
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
    chosen = SelectConfig(selector=selector, column=asked, params=p).make("thresher select")
    return chosen.select(scores, main=main, higher_is_better=main_hib), column, p, filt_note


def select_from_run(run: Path, out: Path, *, selector="top_k", column=None, k=None, ratio=None, of="all",
                    higher_is_better=None, where=None, params=None, argv=None, strict: bool = False) -> dict:
    manifest, scores = _read_run(run)
    data = dict(manifest["data"], path=data_path(run, manifest["data"]))
    check_output_file(out, inputs=(data["path"], run / "scores.parquet", run / "manifest.json"))
    _check_out_suffix(out)
    main, main_hib = run_main_column(manifest)
    idx, column, p, filt_note = choose_rows(scores, main, main_hib, selector=selector, column=column, k=k,
                                            ratio=ratio, of=of, higher_is_better=higher_is_better, where=where,
                                            params=params)
    warnings: list[str] = []
    if not len(idx):
        empty_selection(f"the selection ({selector} on {column}) kept 0 of {len(scores)} rows", strict,
                        {"warnings": warnings})
    ds = load_data(DataConfig(**{k_: v for k_, v in data.items() if k_ in DataConfig.__dataclass_fields__}))
    if list(ds.ids) != list(scores["id"]):
        raise ConfigError(f"The data at {data['path']} no longer matches the scores in {run} "
                          "(ids differ): it changed since scoring. Re-run `thresher score`.")
    write_records(ds, idx, out)
    with atomic_path(out.with_name(out.name + ".ids.txt")) as tmp:
        tmp.write_text("".join(f"{ds.ids[i]}\n" for i in idx), encoding="utf-8")
    write_json(out.with_name(out.name + ".manifest.json"),
               {**base_manifest(argv), "run": str(run), "select": {"selector": selector, "column": column, "params": p},
                "selected": int(len(idx)), "rows": len(ds), "warnings": warnings})
    msg = f"selected {len(idx)} of {len(ds)} rows by {selector} on {column}{filt_note} -> {out}"
    msg += "".join(f"\nwarning: {w}" for w in warnings)
    return {"selected": int(len(idx)), "message": msg}
