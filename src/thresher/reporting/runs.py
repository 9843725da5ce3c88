"""Reading run folders for the report: the manifest, the summary, each stage's scores and kept ids, and the
run's data (streamed: only the rows a report shows are read).

A run folder (``thresher run`` / ``thresher score``) holds one dataset's stages (``<stage>/scores.parquet``,
``<stage>/selected_ids.txt``), or, for a run over private clients, one such set per client under
``clients/<name>/``. Both are read as a list of ``Part`` (one dataset each) holding their ``StageView``s.
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import pandas as pd

from thresher.data.records import split_turns
from thresher.errors import ConfigError, ThresherError
from thresher.outputs import read_marker
from thresher.pipeline.config import SelectConfig
from thresher.pipeline.export import data_path, run_data
from thresher.selection.base import NOT_SCORES


@dataclass
class StageView:
    """One stage of one dataset: its manifest record, summary entry, score table and kept ids."""
    name: str
    folder: Path
    record: dict                          # the manifest's stage record
    summary: dict                         # the summary's stage entry ({} when absent)
    scores: pd.DataFrame | None = None    # id + score columns, one row per data row, in data order
    selected: list[str] | None = None     # kept ids in selection order (None: the stage does not select)

    @property
    def is_train(self) -> bool:
        return "train" in self.record

    @property
    def main(self) -> str | None:
        """The stage's main column: its last scorer's."""
        scorers = self.record.get("scorers") or []
        return scorers[-1]["main_column"] if scorers else None

    @property
    def ranked(self) -> str | None:
        """The column the stage's selector ranks (None: it ranks none, or the stage does not select)."""
        sel = self.record.get("select")
        if not sel:
            return self.main
        chosen = SelectConfig(**sel).make(f"stage {self.name!r}")
        return chosen.main_column(self.main) if chosen.reads_main else None

    @property
    def higher_is_better(self) -> bool | None:
        """The ranked column's direction: the selector's own ``higher_is_better`` parameter, else the scorer's."""
        sel = self.record.get("select") or {}
        own = (sel.get("params") or {}).get("higher_is_better")
        if own is not None:
            return bool(own)
        return {s["main_column"]: s.get("higher_is_better") for s in self.record.get("scorers") or []}.get(self.ranked)

    def kept_mask(self) -> np.ndarray | None:
        """(N,) bool over the score table's rows: the row's id is among the kept ids."""
        if self.scores is None or self.selected is None:
            return None
        return self.scores["id"].isin(set(self.selected)).to_numpy()


@dataclass
class Part:
    """One dataset of a run: the run itself, or one private client of it."""
    label: str                            # "" for a run's own data, else the client's name
    folder: Path
    data: dict                            # the manifest's data record
    summary: dict                         # the summary of this dataset (rows, load, stages)
    stages: list[StageView] = field(default_factory=list)
    _ds: object = None
    _ds_error: str | None = None

    def dataset(self):
        """The dataset the run read, streamed (a ``StreamedDataset``), or None when it cannot be read any
        more (moved, changed, ids differ); the reason is then ``data_error``."""
        if self._ds is None and self._ds_error is None:
            try:
                self._ds = _open_data(self)
            except ThresherError as e:
                self._ds_error = str(e)
        return self._ds

    @property
    def data_error(self) -> str | None:
        self.dataset()
        return self._ds_error

    def texts(self, rows) -> list[tuple[str, str]]:
        """(instruction, response) of the first exchange of each row in ``rows`` (positions in the data);
        empty strings for rows without an answer, and for every row when the data cannot be read."""
        ds = self.dataset()
        if ds is None:
            return [("", "")] * len(rows)
        out = []
        for msgs in ds.subset(np.asarray(rows, dtype=np.int64)).messages:
            units = split_turns(msgs, "first")
            context, resp = units[0] if units else (msgs, "")
            out.append(("\n\n".join(m["content"] for m in context if m["role"] != "system"), resp))
        return out


@dataclass
class RunView:
    path: Path
    manifest: dict
    summary: dict
    parts: list[Part]

    @property
    def label(self) -> str:
        return self.path.name or str(self.path)

    def scoring_stages(self) -> list[StageView]:
        return [st for p in self.parts for st in p.stages if not st.is_train]


def read_run(path) -> RunView:
    """The run folder ``path`` read; ConfigError when it is not one or is incomplete."""
    run = Path(path)
    if not run.is_dir():
        raise ConfigError(f"{str(path)!r} is not a run folder (no such folder); give a folder written by "
                          "`thresher run` or `thresher score`.")
    marker = read_marker(run)
    if marker is not None and marker["kind"] != "run":
        raise ConfigError(f"{str(path)!r} is a thresher {marker['kind']} output, not a run folder; give a folder "
                          "written by `thresher run` or `thresher score`.")
    if not (run / "manifest.json").is_file():
        what = "an incomplete run (no manifest.json: it stopped or is still running; rerun the same command to " \
               "finish it)" if marker is not None else "not a run folder (no manifest.json)"
        raise ConfigError(f"{str(path)!r} is {what}; give a folder written by `thresher run` or `thresher score`.")
    manifest, summary = _json(run / "manifest.json"), _json(run / "summary.json")
    if "clients" in manifest:
        parts = [_part(name, run / "clients" / name, c, (summary.get("clients") or {}).get(name, {}))
                 for name, c in manifest["clients"].items()]
    else:
        parts = [_part("", run, manifest, summary)]
    return RunView(run, manifest, summary, parts)


def _json(path: Path) -> dict:
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except FileNotFoundError:
        raise ConfigError(f"{path.parent} is an incomplete run: {path.name} is missing. Rerun the command that "
                          "wrote it.") from None
    except (ValueError, UnicodeDecodeError) as e:
        raise ConfigError(f"{path} is not valid JSON ({e}); the run folder is damaged. Rerun the command that "
                          "wrote it.") from None
    if not isinstance(data, dict):
        raise ConfigError(f"{path} holds no JSON object; the run folder is damaged. Rerun the command that wrote it.")
    return data


def _part(label: str, folder: Path, manifest: dict, summary: dict) -> Part:
    entries = {st.get("name"): st for st in summary.get("stages", [])}
    stages = []
    for rec in manifest.get("stages", []):
        st = StageView(rec["name"], folder / rec["name"], rec, entries.get(rec["name"], {}))
        if not st.is_train:
            st.scores = _scores(st.folder / "scores.parquet")
        ids = st.folder / "selected_ids.txt"
        if ids.is_file():
            st.selected = ids.read_text(encoding="utf-8").splitlines()
        stages.append(st)
    return Part(label, folder, manifest.get("data") or {}, summary, stages)


def _scores(path: Path) -> pd.DataFrame:
    if not path.is_file():
        raise ConfigError(f"{path.parent.parent} is an incomplete run: {path} is missing. Rerun the command that "
                          "wrote it.")
    return pd.read_parquet(path)


def _open_data(part: Part):
    """The part's data as the run loaded it (thresher select's rules: found by its recorded absolute path,
    checked by fingerprint), streamed; ConfigError when its ids no longer match the scores."""
    if not part.data:
        raise ConfigError(f"{part.folder}/manifest.json records no data.")
    scored = next((st.scores for st in part.stages if st.scores is not None), None)
    if scored is None:
        raise ConfigError(f"{part.folder} has no scored stage: there are no rows to show.")
    return run_data(part.folder, dict(part.data, path=data_path(part.folder, part.data)), scored)


def score_columns(scores: pd.DataFrame) -> list[str]:
    """The numeric score columns of a score table (bool and bookkeeping columns excluded)."""
    return [c for c in scores.columns if c not in NOT_SCORES and pd.api.types.is_numeric_dtype(scores[c])
            and not pd.api.types.is_bool_dtype(scores[c])]


def status_columns(scores: pd.DataFrame) -> list[str]:
    """The scorers' NaN-reason columns (``status``, or ``<scorer>.status`` when two scorers wrote one)."""
    return [c for c in scores.columns if c == "status" or c.endswith(".status")]
