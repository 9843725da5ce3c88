"""Running the stages of a recipe over one dataset: load, score each stage with its model, select, train.

Used by thresher.pipeline.run (one dataset) and thresher.pipeline.clients (once per private client)."""

from __future__ import annotations

import logging
import os
import time
from dataclasses import asdict, dataclass, replace
from pathlib import Path

import numpy as np
import pandas as pd

from thresher.data.fingerprint import data_fingerprint, row_hashes
from thresher.data.readers import data_source, load, write_records
from thresher.data.table import Dataset
from thresher.engine.scoring import score_dataset
from thresher.errors import ConfigError, as_option
from thresher.io import atomic_path, sha256_text, write_parquet
from thresher.models.context import ModelContext
from thresher.models.runs import TrainingRunFolder
from thresher.pipeline.config import DataConfig, Recipe, ResolvedStage
from thresher.pipeline.recipe import resolve_scorer
from thresher.pipeline.summary import describe_scores
from thresher.pipeline.train_stage import run_train_stage, train_rows, trained_model_dir
from thresher.selection.base import NOT_SCORES

log = logging.getLogger(__name__)


@dataclass
class Pending:
    """A client's scored last stage, waiting for the global threshold."""
    ds: Dataset
    stage: ResolvedStage                  # with resolved model and scorer parameters
    scores: pd.DataFrame
    column: str
    st_dir: Path
    st_sum: dict
    ctx: object
    cache_root: object
    executor: object = None               # where the anchor set's shards run (as the client's)
    name: str = ""
    anchor_scores: np.ndarray | None = None
    selected: np.ndarray | None = None    # row positions kept under the global threshold


_EXT = {"json": ".json", "jsonl": ".jsonl", "parquet": ".parquet", "hf": ".jsonl"}


def data_record(cfg: DataConfig, ds: Dataset, in_memory: bool = False) -> dict:
    """The manifest's record of the data a run read: its config, load report, the directory the run
    started in, and (for data on disk) the absolute path and a content fingerprint, which `thresher
    select` uses to find and check the data from any directory. ``in_memory``: the data was given in
    memory (thresher.api), recorded as ``memory``: its kind (``ds.source``), rows and a SHA-256 of its row
    hashes in order (``rows_sha256``: equal for the same records, whatever object held them)."""
    rec = {**asdict(cfg), "report": ds.report.as_dict(), "rows": len(ds), "cwd": os.getcwd()}
    if in_memory:
        rec["memory"] = {"source": ds.source, "rows": len(ds), "rows_sha256": sha256_text("".join(row_hashes(ds)))}
        return rec
    fp = data_fingerprint(data_source(cfg.path))
    if fp is not None:
        rec.update(abs_path=fp["abs_path"], fingerprint=fp)
    return rec


def load_data(cfg: DataConfig) -> Dataset:
    """The run's data, streamed: shards read their rows when scored (memory flat in the pool size)."""
    return load(data_source(cfg.path), cfg.format, on_invalid=cfg.on_invalid, lenient=cfg.lenient, limit=cfg.limit, split=cfg.split,
                max_record_chars=cfg.max_record_chars, stream=True)


def score_stage(ds: Dataset, stage: ResolvedStage, recipe: Recipe, cache_root=None,
                ctx: ModelContext | None = None, executor=None) -> tuple[pd.DataFrame, list]:
    """All of a stage's scorers over ``ds``, joined on row order; returns (scores, scorer records).
    ``executor``: where the shards run (thresher.engine.executors; default: this process)."""
    ctx = ctx or stage_context(stage, recipe)
    table, info = None, []
    for scorer in stage.scores:
        frame = score_dataset(ds, scorer, ctx, shard_size=recipe.shard_size, cache_root=cache_root,
                              label=f"{stage.name}:{scorer.name}", inputs=table, executor=executor)
        table = join_scores(table, frame, scorer.name)
        info.append({"scorer": scorer.name, "version": scorer.version, "params": scorer.param_dict(),
                     "model_identity": scorer.model_identity(ctx), "main_column": scorer.main_column,
                     "higher_is_better": scorer.higher_is_better, "cache": frame.attrs.get("cache"),
                     "compute": frame.attrs.get("compute"),
                     **({"judge": ctx.judge().stats()} if "judge" in scorer.uses else {})})
    return (table if table is not None else pd.DataFrame({"id": list(ds.ids)})), info


def join_scores(table: pd.DataFrame | None, frame: pd.DataFrame, scorer: str) -> pd.DataFrame:
    """A stage's score table with one more scorer's ``frame`` (id + columns, row order) joined on: a column
    already there is renamed ``<scorer>.<column>``."""
    if table is None:                   # the first frame brings the ids: one copy of them, not two
        table = frame.copy(deep=False)
        table.attrs = {}
        return table
    clash = [c for c in frame.columns if c != "id" and c in table.columns]
    renamed = frame.rename(columns={c: f"{scorer}.{c}" for c in clash})
    return pd.concat([table, renamed.drop(columns="id")], axis=1)


def stage_compute(parts: list[dict], rows: int) -> dict:
    """A scoring stage's compute ledger from its scorers' (score_dataset's ``attrs["compute"]``): seconds,
    tokens and model passes summed; computed_rows: the rows some scorer computed (the most any one did),
    cached_rows: the rest of the stage's rows."""
    computed = max((p["computed_rows"] for p in parts), default=0)
    return {"seconds": round(sum(p["seconds"] for p in parts), 3), "rows": rows, "computed_rows": computed,
            "cached_rows": rows - computed, "tokens": sum(p["tokens"] for p in parts),
            "model_passes": sum(p["model_passes"] for p in parts)}


def stage_context(stage: ResolvedStage, recipe: Recipe) -> ModelContext:
    return ModelContext(stage.model, device=recipe.device, dtype=recipe.dtype,
                        max_batch_tokens=recipe.max_batch_tokens, judge=recipe.judge)


def run_stages(ds: Dataset, recipe: Recipe, stages: list[ResolvedStage], out: Path, manifest: dict,
               summary: dict, *, cache_root=None, argv=None, executor=None, candidates: np.ndarray | None = None):
    """Run the stages over ``ds`` into ``out``, filling ``manifest`` and ``summary``.

    ``candidates``: (K,) int64 ascending row positions that selections may keep and ``rows: all`` training may
    use (the rows the noise guard did not flag); None: every row. Every stage still scores every row (the same
    cache with the guard on or off; dataset-scope scorers see the whole pool).

    Each scoring stage writes ``<stage>/scores.parquet`` (``scores_table``) once its selection is known.
    Returns None, or, when the last stage selects by a global threshold, what the threshold step needs
    (``Pending``): the scores wait with the selection for the anchors of every client.
    """
    selections: dict[str, np.ndarray] = {}
    train_dirs: dict[str, str] = {}
    last_scoring = None
    for stage in stages:
        model = trained_model_dir(Path(train_dirs[stage.model[1:]])) if stage.model.startswith("@") else stage.model
        if stage.is_train:
            rows = train_rows(stage.train, len(ds), selections, last_scoring, candidates)
            t0 = time.perf_counter()
            st_sum = run_train_stage(ds, stage, recipe, rows, out, model, argv=argv)
            st_sum["seconds"] = round(time.perf_counter() - t0, 3)
            train_dirs[stage.name] = str(out / stage.name)
            manifest["stages"].append({"name": stage.name, "model": model, "train": asdict(stage.train),
                                       "rows": [ds.ids[i] for i in rows], "note": stage.note})
            summary["stages"].append(st_sum)
            continue
        stage = replace(stage, model=model,
                        scores=[resolve_scorer(sc, recipe, train_dirs) for sc in stage.scores])
        ctx = stage_context(stage, recipe)
        scores, info = score_stage(ds, stage, recipe, cache_root, ctx, executor)
        st_dir = out / stage.name
        st_sum = {"name": stage.name, "model": stage.model, "note": stage.note, **describe_scores(scores, info)}
        st_sum["failed"] = {"rows": sum((rec.get("cache") or {}).get("failed", 0) for rec in info),
                            "of": len(ds) * len(info)}     # rows x scorers; failed rows are not cached
        st_sum["compute"] = stage_compute([rec["compute"] for rec in info], len(ds))
        judged = [rec for rec in info if "judge" in rec]
        if judged:
            st_sum["judge"] = judged[-1]["judge"]      # the backend's running totals for this stage
        manifest["stages"].append({"name": stage.name, "model": stage.model, "scorers": info,
                                   "select": asdict(stage.select) if stage.select else None, "note": stage.note})
        summary["stages"].append(st_sum)
        last_scoring = stage.name
        if stage.select is None:
            write_parquet(st_dir / "scores.parquet", scores_table(scores))
            continue
        # The stage's last scorer is its result (earlier ones feed it: ratings, embeddings).
        main = info[-1]["main_column"] if info else None
        # the direction of the column the selector ranks (None when it is no scorer's main column)
        hib = stage.select.direction(main, {rec["main_column"]: rec["higher_is_better"] for rec in info})
        if stage.select.selector == "global_threshold":
            return Pending(ds, stage, scores, main, st_dir, st_sum, ctx, cache_root, executor)
        idx = select_among(stage.select, scores, candidates, main=main, higher_is_better=hib)
        write_parquet(st_dir / "scores.parquet", scores_table(scores, idx))
        if not len(idx):
            empty_selection(f"stage {stage.name!r}: the selection ({stage.select.selector}) kept 0 of {len(ds)} "
                            "rows", recipe.strict, summary)
        selections[stage.name] = idx
        st_sum.update(write_selection(ds, idx, st_dir))
        st_sum["selector"] = asdict(stage.select)
    if stages[-1].is_train and stages[-1].train.iterit is not None:
        _write_iterit_selection(ds, out / stages[-1].name, summary["stages"][-1])
    return None


def select_among(select, scores: pd.DataFrame, candidates: np.ndarray | None, *, main: str | None,
                 higher_is_better: bool | None) -> np.ndarray:
    """(M,) int64 positions in ``scores`` that ``select`` (a SelectConfig) keeps when it sees only the rows
    ``candidates`` (None: all): the selector ranks, counts its ratio over and normalises among those rows alone,
    as if the others were not in the data."""
    if candidates is None:
        return select.apply(scores, main=main, higher_is_better=higher_is_better)
    sub = scores.iloc[candidates].reset_index(drop=True)
    return candidates[select.apply(sub, main=main, higher_is_better=higher_is_better)]


def empty_selection(message: str, strict: bool, summary: dict) -> None:
    """A selection that keeps nothing: an error with ``strict``, else a warning kept in the summary."""
    if strict:
        strict_option = as_option("strict", True)
        raise ConfigError(f"{message}; with {strict_option} that is an error. Check the selection's ratio/k and "
                          f"the scores, or drop {strict_option} to accept an empty selection.")
    log.warning("%s", message)
    summary.setdefault("warnings", []).append(message)


def _write_iterit_selection(ds: Dataset, run: Path, st_sum: dict) -> None:
    """An IterIT recipe's result: the rows its last epoch trained on, written like a selection, with a
    scores.parquet of ids, rows and the selection (its re-scores stay in the run's iterit/epoch-*.json)."""
    ids = pd.Index(list(ds.ids))
    idx = ids.get_indexer(TrainingRunFolder(run).iterit_selected_ids).astype(np.int64)
    write_parquet(run / "scores.parquet", scores_table(pd.DataFrame({"id": ids}), idx))
    st_sum.update(write_selection(ds, idx, run))


def scores_table(scores: pd.DataFrame, idx: np.ndarray | None = None) -> pd.DataFrame:
    """A stage's scores.parquet: ``id``, ``row`` (int64, the row's 0-based position in the loaded dataset),
    the score columns, and for a stage that selects (``idx``: (M,) int64 positions in selection order)
    ``selected`` (bool) and ``rank`` (Int64: 1 for the first pick .. M, <NA> for a dropped row)."""
    n = len(scores)
    reserved = [c for c in NOT_SCORES[1:] if c in scores.columns]
    if reserved:
        raise ConfigError(f"A scorer wrote the column(s) {', '.join(map(repr, reserved))}, which thresher keeps "
                          "for the score table's row numbers and selection; rename the scorer's output column.")
    table = scores.copy(deep=False)
    table.insert(1, "row", np.arange(n, dtype=np.int64))
    if idx is not None:
        rank = np.zeros(n, dtype=np.int64)
        rank[np.asarray(idx, dtype=np.int64)] = np.arange(1, len(idx) + 1)
        table["selected"] = rank > 0
        table["rank"] = pd.arrays.IntegerArray(rank, mask=rank == 0)
    return table


def write_selection(ds: Dataset, idx: np.ndarray, st_dir: Path) -> dict:
    ext = _EXT.get(ds.container, ".jsonl")
    target = st_dir / f"selected{ext}"
    write_records(ds, idx, target)
    with atomic_path(st_dir / "selected_ids.txt") as tmp:
        tmp.write_text("".join(f"{ds.ids[i]}\n" for i in idx), encoding="utf-8")
    return {"selected": int(len(idx)), "dropped": int(len(ds) - len(idx)), "selected_file": str(target)}
