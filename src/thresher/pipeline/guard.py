"""The noise guard in a run: score the guard's signals, judge every row (thresher.algorithms.guard), write the
verdict, and give the rows the run's selections may keep.

`thresher run RECIPE --guard` (or ``guard: {enabled: true}`` in the recipe): ``run_guard`` scores the guard stage
(thresher.pipeline.recipe.guard_stage, through the score cache like any stage) before the recipe's stages,
writes RUN/guard/, and returns the unflagged rows: every selection chooses among them only, and a training
stage on ``rows: all`` trains on them only. `thresher guard DATA --out DIR` runs the packaged guard recipe and
applies ``guard_outputs`` to its stage; its files are promoted to DIR like any last stage's.

A guard folder holds:
  scores.parquet   id, row, the signal columns, and the verdict: flagged, flags, reason, suspect, suspect_<kind>
  flagged.jsonl    the flagged records, unchanged, in data order, with three fields added: ``_guard_flags`` (the
                   kinds, ";"-joined), ``_guard_reason`` (the evidence) and ``_guard_suspect`` (in [0, 1])
and the run's summary.json gets ``guard``: rows, flagged, by_kind, examples (up to 5 ids per kind, most
suspect first), not_judged, partial (thresher.algorithms.guard.guard_summary) and, with --guard, ``dropped``.
"""

from __future__ import annotations

import json
from dataclasses import asdict
from pathlib import Path

import numpy as np
import pandas as pd

from thresher.algorithms.guard import GuardParams, guard_summary, guard_verdict
from thresher.config import build
from thresher.data.table import Dataset
from thresher.io import atomic_path, write_parquet
from thresher.pipeline.config import GUARD_STAGE, GuardConfig, Recipe
from thresher.pipeline.recipe import check_recipe, guard_stage
from thresher.pipeline.stages import scores_table, score_stage, stage_compute

FLAG_FIELDS = ("_guard_flags", "_guard_reason", "_guard_suspect")    # added to the records of flagged.jsonl


def run_guard(ds: Dataset, recipe: Recipe, out: Path, manifest: dict, summary: dict, *, cache_root=None,
              executor=None) -> np.ndarray | None:
    """With the recipe's guard enabled: its signals scored on ``ds``, the verdict written to ``out/guard``,
    ``summary["guard"]`` and ``manifest["guard"]`` recorded; returns (K,) int64 positions, ascending, of the
    rows it did not flag (the only rows the run's selections may keep). None when the guard is off."""
    cfg = build(GuardConfig, recipe.guard, "guard")
    if not cfg.enabled:
        return None
    stage = guard_stage(recipe, cfg)
    scores, info = score_stage(ds, stage, recipe, cache_root, executor=executor)
    verdict, block = write_guard(ds, scores, cfg.params(), out / GUARD_STAGE)
    keep = np.flatnonzero(~verdict["flagged"].to_numpy(dtype=bool)).astype(np.int64)
    block["dropped"] = int(len(ds) - len(keep))
    block["compute"] = stage_compute([rec["compute"] for rec in info], len(ds))
    summary["guard"] = block
    manifest["guard"] = {"config": asdict(cfg), "model": stage.model, "scorers": info}
    return keep


def guard_job(raw: dict, source: str, params: dict | None = None):
    """What `thresher guard` runs, from the guard recipe ``raw`` (read from ``source``) and verdict parameters
    ``params`` (GuardParams fields, over the recipe's ``guard:`` block): (recipe, data config, [the guard stage],
    the ``after`` step writing the verdict), for thresher.pipeline.run.run_recipe."""
    recipe, data_cfg, _ = check_recipe(raw, source)
    cfg = build(GuardConfig, {**recipe.guard, **(params or {}), "enabled": False}, "thresher guard")
    return recipe, data_cfg, [guard_stage(recipe, cfg)], guard_outputs(cfg.params())


def guard_outputs(params: GuardParams):
    """The ``after`` step of `thresher guard` (thresher.pipeline.run.run_recipe): the verdict over the scores
    of the guard recipe's stage, written into that stage's folder, recorded in the summary and manifest."""
    def after(ds: Dataset, out: Path, manifest: dict, summary: dict) -> None:
        st_dir = Path(out) / GUARD_STAGE
        scores = pd.read_parquet(st_dir / "scores.parquet").drop(columns="row")
        _, summary["guard"] = write_guard(ds, scores, params, st_dir)
        summary["guard"]["flagged_file"] = str(Path(out) / "flagged.jsonl")      # promoted from the stage folder
        manifest["guard"] = {"params": asdict(params)}
    return after


def write_guard(ds: Dataset, scores: pd.DataFrame, params: GuardParams, folder: Path) -> tuple[pd.DataFrame, dict]:
    """The verdict over ``scores`` (id + the signal columns, in ``ds``'s row order), written to ``folder``
    (scores.parquet, flagged.jsonl); returns (the verdict, the summary block)."""
    verdict = guard_verdict(scores, params)
    table = pd.concat([scores_table(scores), verdict.set_axis(scores.index)], axis=1)
    write_parquet(Path(folder) / "scores.parquet", table)
    write_flagged(ds, verdict, Path(folder) / "flagged.jsonl")
    return verdict, {**guard_summary(verdict, scores["id"]), "flagged_file": str(Path(folder) / "flagged.jsonl")}


def write_flagged(ds: Dataset, verdict: pd.DataFrame, path: Path) -> None:
    """The flagged rows' records, unchanged, with FLAG_FIELDS added, as JSON Lines (atomic)."""
    idx = np.flatnonzero(verdict["flagged"].to_numpy(dtype=bool))
    records = ds.iter_records(idx) if hasattr(ds, "iter_records") else (ds.raw[i] for i in idx.tolist())
    flags, reasons = verdict["flags"].to_numpy()[idx], verdict["reason"].to_numpy()[idx]
    suspect = verdict["suspect"].to_numpy(dtype=np.float64)[idx]
    with atomic_path(path) as tmp, open(tmp, "w", encoding="utf-8") as fh:
        for record, f, r, s in zip(records, flags, reasons, suspect):
            extra = dict(zip(FLAG_FIELDS, (f, r, round(float(s), 6))))
            fh.write(json.dumps({**record, **extra}, ensure_ascii=False, default=str) + "\n")
