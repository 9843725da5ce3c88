"""`thresher select`: re-select from a scored run without any model, and write the records (a file named by
its suffix, or ``to``: a format of thresher.pipeline.export, e.g. an hf save_to_disk folder)."""

from __future__ import annotations

import re
from pathlib import Path

from thresher.data.readers import OUTPUT_SUFFIXES
from thresher.errors import ConfigError, as_option
from thresher.io import atomic_path
from thresher.manifest import base_manifest
from thresher.outputs import check_output_file
from thresher.pipeline.config import SelectConfig
from thresher.pipeline.export import (check_format, check_output, data_path, read_run, run_data, run_info,
                                      write_selected)
from thresher.pipeline.stages import empty_selection
from thresher.selection.base import NOT_SCORES

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
            raise ConfigError(f"{as_option('where')} expects COLUMN<VALUE (operators < <= > >=), e.g. 'ifd<1'. "
                              f"Got {item!r}.")
        where.setdefault(m.group(1), {})[_OPS[m.group(2)]] = float(m.group(3))
    return where


def _out_format(out: Path) -> str:
    """The file format ``--out`` names by its suffix; refused, never guessed, for any other suffix."""
    fmt = OUTPUT_SUFFIXES.get(out.suffix.lower())
    if fmt is None:
        raise ConfigError(f"--out {str(out)!r}: the file name must end in .json, .jsonl or .parquet (the format "
                          f"of the selected records), or pass --to FORMAT PATH (e.g. --to hf DIR); got "
                          f"{out.suffix or 'no suffix'!r}.")
    return fmt


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
    if column in NOT_SCORES:
        raise ConfigError(f"--column {column!r} is not a score: scores.parquet's {', '.join(NOT_SCORES)} columns "
                          "are its row keys and the run's own selection. Name a score column.")
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
                filt_note = f" (default filter for {column}: {w}; pass {as_option('where', 'none')} to disable)"
        if w:
            p["where"] = w
        if higher_is_better is not None:
            p["higher_is_better"] = higher_is_better
        elif column != main:
            raise ConfigError(f"Column {column!r} is not the scorer's main column: say which end to keep with "
                              "--higher-is-better or --lower-is-better.")
    chosen = SelectConfig(selector=selector, column=asked, params=p).make("thresher select")
    return chosen.select(scores, main=main, higher_is_better=main_hib), column, p, filt_note


def select_from_run(run: Path, out: Path, *, to: str | None = None, selector="top_k", column=None, k=None,
                    ratio=None, of="all", higher_is_better=None, where=None, params=None, argv=None,
                    strict: bool = False) -> dict:
    """Select rows of ``run`` by its scores and write their records to ``out``: format ``to`` (hf, parquet,
    jsonl, json) or, when None, the format ``out``'s suffix names."""
    manifest, scores = read_run(run)
    data = dict(manifest["data"], path=data_path(run, manifest["data"]))
    inputs = (data["path"], run / "scores.parquet", run / "manifest.json")
    if to is None:                                  # a file, its format by its suffix
        check_output_file(out, inputs=inputs)
        fmt = _out_format(out)
    else:
        fmt = to
        check_format(fmt, out)
        check_output(fmt, out, inputs=inputs, flag="--to")
    last = manifest["stages"][-1]
    main, main_hib = run_main_column(manifest)
    idx, column, p, filt_note = choose_rows(scores, main, main_hib, selector=selector, column=column, k=k,
                                            ratio=ratio, of=of, higher_is_better=higher_is_better, where=where,
                                            params=params)
    warnings: list[str] = []
    if not len(idx):
        empty_selection(f"the selection ({selector} on {column}) kept 0 of {len(scores)} rows", strict,
                        {"warnings": warnings})
    ds = run_data(run, data, scores)
    record = {**base_manifest(argv), "run": str(run), **run_info(manifest, last), "stage": last["name"],
              "select": {"selector": selector, "column": column, "params": p},
              "selected": int(len(idx)), "rows": len(ds), "format": fmt, "warnings": warnings}
    write_selected(ds, idx, fmt, out, record)
    if fmt != "hf":
        with atomic_path(out.with_name(out.name + ".ids.txt")) as tmp:
            tmp.write_text("".join(f"{ds.ids[i]}\n" for i in idx), encoding="utf-8")
    msg = f"selected {len(idx)} of {len(ds)} rows by {selector} on {column}{filt_note} -> {out}"
    msg += "".join(f"\nwarning: {w}" for w in warnings)
    return {"selected": int(len(idx)), "message": msg}
