"""Exporting a run's selection: `thresher export RUN --to hf|parquet|jsonl|json --out PATH` and the writer
behind `thresher select ... --to FORMAT PATH`.

The records are the selected records exactly as ``selected.<ext>`` holds them (the input's records, in
selection order). ``hf`` writes a ``datasets`` ``save_to_disk`` folder (``datasets.load_from_disk(PATH)``)
with a short dataset card (README.md) and the export's manifest.json; a file format writes one file and a
sidecar ``<name>.manifest.json`` (thresher.outputs). Tabular outputs (hf, parquet) hold one column per field
of any record; a record without that field gets null there.

Added columns, after the record's own fields (a record that already has such a field is a ConfigError):
``with_scores``: the stage's score columns (scores.parquet, less ``id``/``row``/``selected``) and ``rank``
(1 = first selected); ``chat``: ``messages``, the conversation as OpenAI chat messages
``[{"role": "system"|"user"|"assistant", "content": str}, ...]`` (thresher.data.records' canonical form: an
alpaca record becomes one user turn, instruction + blank line + input, and one assistant turn).
"""

from __future__ import annotations

import json
from dataclasses import replace
from pathlib import Path

import numpy as np
import pandas as pd

from thresher import __version__
from thresher.data.fingerprint import data_fingerprint, same_data
from thresher.data.readers import BUNDLED_SHAREGPT, records_table, write_records
from thresher.data.table import Dataset
from thresher.errors import ConfigError
from thresher.io import write_json
from thresher.manifest import base_manifest
from thresher.outputs import atomic_dir, check_output_file, claim_output_dir, may_replace, refuse_special
from thresher.pipeline.config import DataConfig
from thresher.pipeline.stages import load_data
from thresher.selection.base import NOT_SCORES

# --to value -> the suffixes its output file may have (hf: a folder, none)
FORMATS = {"hf": (), "parquet": (".parquet",), "jsonl": (".jsonl", ".ndjson"), "json": (".json",)}
# suffixes that name a file format, never acceptable as the name of an hf folder
_FILE_SUFFIXES = (".json", ".jsonl", ".ndjson", ".parquet", ".csv", ".tsv", ".txt", ".arrow", ".gz", ".zip")
KIND = "export"                     # the output-ownership kind of an hf folder (thresher.outputs)
CHAT_COLUMN = "messages"


# ------------------------------------------------------------------------------------ the destination
def destination(to: list[str] | None, out: str | None) -> tuple[str | None, Path]:
    """(format, path) from the CLI's ``--to FORMAT [PATH]`` and ``--out PATH``: the path given once,
    by either; format None when only ``--out`` is given (``thresher select``: by the file's suffix)."""
    to = list(to or [])
    if len(to) > 2:
        raise ConfigError(f"--to takes a format and at most one path (--to hf DIR). Got {' '.join(to)!r}.")
    if len(to) == 2 and out:
        raise ConfigError(f"The output path is given twice (--to {to[0]} {to[1]} and --out {out}); give it once.")
    path = to[1] if len(to) == 2 else out
    if not path:
        raise ConfigError("Say where to write: --to FORMAT PATH (e.g. --to hf selected/) or --to FORMAT --out PATH.")
    return (to[0] if to else None), Path(path)


def check_format(to: str, out: Path, flag: str = "--to") -> None:
    """ConfigError unless ``to`` is a known format and ``out``'s suffix matches it (never guessed)."""
    if to not in FORMATS:
        raise ConfigError(f"{flag} {to!r} is not an output format; use one of {', '.join(FORMATS)} "
                          "(hf: a datasets save_to_disk folder).")
    suffix, want = out.suffix.lower(), FORMATS[to]
    if not want and suffix in _FILE_SUFFIXES:
        raise ConfigError(f"{flag} hf writes a folder, but {str(out)!r} is named like a {suffix} file; name the "
                          "folder without a file suffix, or use --to parquet|jsonl|json for a file.")
    if want and suffix not in want:
        raise ConfigError(f"{flag} {to} writes a {want[0]} file, but {str(out)!r} ends in "
                          f"{suffix or 'no suffix'!r}; name it *{want[0]} (the format is never guessed from the name).")


def check_output(to: str, out: Path, inputs=(), flag: str = "--out") -> None:
    """Before any work: ConfigError when ``out`` may not be written (a user's file or folder, an input)."""
    if FORMATS[to]:
        check_output_file(out, inputs=inputs, flag=flag)
        return
    refuse_special(out, flag, inputs)
    if not may_replace(out, KIND):
        claim_output_dir(out, KIND, inputs=inputs, flag=flag)      # raises, naming what is in the way


# ------------------------------------------------------------------------------------ reading a run
def read_run(run: Path, *, scores: str = "scores.parquet") -> tuple[dict, pd.DataFrame]:
    """A complete run folder's manifest and its scores table (``scores``: relative path)."""
    manifest_path, scores_path = run / "manifest.json", run / scores
    for p in (manifest_path, scores_path):
        if not p.exists():
            raise ConfigError(f"{run} is not a scored run: {p.relative_to(run)} is missing. "
                              "Create one with `thresher score` or `thresher run`.")
    return json.loads(manifest_path.read_text(encoding="utf-8")), pd.read_parquet(scores_path)


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


def run_data(run: Path, data: dict, scores: pd.DataFrame) -> Dataset:
    """The run's data loaded again (streamed) as it was scored; ConfigError when its rows changed."""
    ds = load_data(DataConfig(**{k: v for k, v in data.items() if k in DataConfig.__dataclass_fields__}))
    if list(ds.ids) != list(scores["id"]):
        raise ConfigError(f"The data at {data['path']} no longer matches the scores in {run} "
                          "(ids differ): it changed since scoring. Re-run `thresher score`.")
    return ds


def selecting_stage(run: Path, manifest: dict, name: str | None) -> dict:
    """The manifest entry of stage ``name``, default the last stage that wrote a selection."""
    stages = manifest.get("stages") or []
    chosen = [st for st in stages if (run / st["name"] / "selected_ids.txt").is_file()]
    if name is None and chosen:
        return chosen[-1]
    if name is not None and name in [st["name"] for st in chosen]:
        return next(st for st in chosen if st["name"] == name)
    listed = ", ".join(st["name"] for st in stages) or "none"
    if name is not None and name not in [st["name"] for st in stages]:
        raise ConfigError(f"--stage {name!r}: {run} has no such stage (stages: {listed}).")
    what = f"stage {name!r} of {run}" if name is not None else f"{run} (stages: {listed})"
    raise ConfigError(f"{what} selected nothing to export: it only scores"
                      + (f"; stages with a selection: {', '.join(st['name'] for st in chosen)}" if chosen else "")
                      + f". Select first: `thresher select {run} --top-ratio 0.1 --to hf DIR` (or give the "
                        "recipe's stage a select: block).")


# ------------------------------------------------------------------------------------ export
def export_run(run, to: str, out, *, stage: str | None = None, with_scores: bool = False, chat: bool = False,
               argv=None) -> dict:
    """Write the records a run's stage selected (default: the last one that selects) to ``out`` in format
    ``to``; returns {"selected", "rows", "out", "message"}."""
    run, out = Path(run), Path(out)
    check_format(to, out)
    if not (run / "manifest.json").is_file():
        raise ConfigError(f"{run} is not a complete run folder (no manifest.json); export reads the folder of a "
                          "finished `thresher run` or `thresher score`.")
    manifest = json.loads((run / "manifest.json").read_text(encoding="utf-8"))
    if "data" not in manifest:
        raise ConfigError(f"{run} ran per client ({', '.join(manifest.get('clients', {}))}): each client's "
                          f"selection is in {run}/clients/<name>/<stage>/selected.<ext>; export works on a run "
                          "over one dataset.")
    st = selecting_stage(run, manifest, stage)
    _, scores = read_run(run, scores=f"{st['name']}/scores.parquet")
    data = dict(manifest["data"], path=data_path(run, manifest["data"]))
    check_output(to, out, inputs=(data["path"], run / st["name"] / "scores.parquet", run / "manifest.json"))
    ds = run_data(run, data, scores)
    ids = (run / st["name"] / "selected_ids.txt").read_text(encoding="utf-8").splitlines()
    idx = pd.Index(list(ds.ids)).get_indexer(ids).astype(np.int64)
    if (idx < 0).any():
        raise ConfigError(f"{run}/{st['name']}/selected_ids.txt names ids its scores do not have; the run folder "
                          "is damaged. Rerun the recipe.")
    extra = score_columns(scores, idx) if with_scores else {}
    info = {**base_manifest(argv), "run": str(run), **run_info(manifest, st), "stage": st["name"],
            "select": st.get("select") or {"selector": "iterit (the rows the last epoch trained on)"},
            "selected": int(len(idx)), "rows": len(ds), "format": to, "with_scores": with_scores, "chat": chat}
    write_selected(ds, idx, to, out, info, extra=extra, chat=chat)
    return {"selected": int(len(idx)), "rows": len(ds), "out": str(out),
            "message": f"exported {len(idx)} of {len(ds)} rows (stage {st['name']}) as {to} -> {out}"}


def run_info(manifest: dict, stage: dict) -> dict:
    """What an export records about the run it came from (the card's facts)."""
    data = manifest.get("data") or {}
    fp = data.get("fingerprint") or {}
    recipe = manifest.get("recipe") or {}
    return {"recipe": recipe.get("name"), "model": stage.get("model"),
            "scorers": [{k: s.get(k) for k in ("scorer", "params", "main_column")} for s in stage.get("scorers") or []],
            "data": {"path": data.get("path"), "abs_path": data.get("abs_path"), "sha256": fp.get("sha256"),
                     "format": (data.get("report") or {}).get("fmt")},
            "run_argv": manifest.get("argv"), "run_thresher": (manifest.get("versions") or {}).get("thresher")}


def score_columns(scores: pd.DataFrame, idx: np.ndarray) -> dict[str, list]:
    """The score columns of rows ``idx`` (in that order) as plain Python values (NaN -> None, arrays -> lists),
    and ``rank`` (1 .. len(idx))."""
    part = scores.iloc[idx]
    out = {c: _plain(part[c]) for c in part.columns if c not in NOT_SCORES}
    out["rank"] = list(range(1, len(idx) + 1))
    return out


def _plain(col: pd.Series) -> list:
    values = col.astype(object).where(col.notna(), None).tolist()
    if col.dtype == object:
        values = [v.tolist() if isinstance(v, np.ndarray) else v for v in values]
    return values


# ------------------------------------------------------------------------------------ writing
def write_selected(ds: Dataset, idx: np.ndarray, to: str, out: Path, info: dict, *,
                   extra: dict[str, list] | None = None, chat: bool = False) -> Path:
    """Rows ``idx`` of ``ds`` (records unchanged, in that order, with the ``extra`` columns and with ``chat``
    the ``messages`` column) to ``out`` as ``to``, with the manifest ``info`` (and an hf folder's card)."""
    extra = dict(extra or {})
    if extra or chat:
        ds, idx = _with_columns(ds, idx, extra, chat), np.arange(len(idx), dtype=np.int64)
    inputs = ((info.get("data") or {}).get("abs_path"),)
    if FORMATS[to]:
        write_records(ds, idx, out, container=to)
        write_json(out.with_name(out.name + ".manifest.json"), info)
        return out
    import datasets                        # optional dependency: only an hf export needs it

    records = ds.iter_records(idx) if hasattr(ds, "iter_records") else (ds.raw[i] for i in idx.tolist())
    table = datasets.Dataset(records_table(list(records), out))
    quiet = not datasets.utils.are_progress_bars_disabled()
    with atomic_dir(out, KIND, inputs=inputs) as tmp:
        if quiet:                          # save_to_disk's bar: one shard of a selection, nothing to watch
            datasets.disable_progress_bars()
        try:
            table.save_to_disk(str(tmp))
        finally:
            if quiet:
                datasets.enable_progress_bars()
        (tmp / "README.md").write_text(dataset_card(info, out), encoding="utf-8")
        write_json(tmp / "manifest.json", info)
    return out


def _with_columns(ds: Dataset, idx: np.ndarray, extra: dict[str, list], chat: bool) -> Dataset:
    """The rows ``idx`` held in memory, each record with the added columns after its own fields."""
    sub = ds.subset(idx)
    if chat:
        extra[CHAT_COLUMN] = sub.messages
    fields = {k for r in sub.raw if isinstance(r, dict) for k in r}
    clash = sorted(fields.intersection(extra))
    if clash:
        raise ConfigError(f"The records already have the field(s) {', '.join(map(repr, clash))}, which "
                          + ("--chat" if clash == [CHAT_COLUMN] and chat else "--with-scores/--chat")
                          + " would overwrite; export without that option (the records keep their own) and "
                            "join scores.parquet on id or row instead.")
    raw = [{**r, **{c: v[i] for c, v in extra.items()}} for i, r in enumerate(sub.raw)]
    return replace(sub, raw=raw)


def dataset_card(info: dict, out: Path) -> str:
    """A short markdown dataset card from an export's manifest ``info``."""
    sel = info.get("select") or {}
    params = ", ".join(f"{k}={v}" for k, v in (sel.get("params") or {}).items())
    rule = f"{sel.get('selector')}" + (f" on {sel['column']}" if sel.get("column") else "") + (f" ({params})" if params else "")
    scorers = "; ".join(f"{s['scorer']}" + (f" ({', '.join(f'{k}={v}' for k, v in (s.get('params') or {}).items())})"
                                             if s.get("params") else "") for s in info.get("scorers") or []) or "none"
    data = info.get("data") or {}
    added = (["the score columns and `rank`"] if info.get("with_scores") else []) + \
            (["`messages` (OpenAI chat form)"] if info.get("chat") else [])
    lines = [
        f"# {info.get('recipe') or 'thresher'} selection: {info['selected']} of {info['rows']} rows", "",
        f"Instruction-tuning records selected by thresher {__version__} from "
        f"`{data.get('path')}`, unchanged, in selection order."
        + (f" Added columns: {', '.join(added)}." if added else ""), "",
        "| | |", "|---|---|",
        f"| recipe | {info.get('recipe')} (stage {info.get('stage')}) |",
        f"| selection | {rule} |",
        f"| scorers | {scorers} |",
        f"| model | {info.get('model')} |",
        f"| source data | `{data.get('abs_path') or data.get('path')}` ({data.get('format')}) |",
        f"| data sha256 | {data.get('sha256') or 'not recorded (not a local file)'} |",
        f"| rows kept | {info['selected']} of {info['rows']} |",
        f"| thresher | {__version__} (scored with {info.get('run_thresher')}) |",
        f"| run command | `{' '.join(info.get('run_argv') or [])}` |",
        f"| export command | `{' '.join(info.get('argv') or [])}` |",
        "", "```python", "from datasets import load_from_disk", f"ds = load_from_disk({str(out)!r})", "```", "",
        "manifest.json beside this card holds the full record (versions, parameters, data fingerprint).", ""]
    return "\n".join(lines)
