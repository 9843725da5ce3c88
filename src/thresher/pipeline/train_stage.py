"""Run a recipe's training stage: pick the rows, fine-tune with the SFT layer, optionally merge.

The stage's run directory is ``OUT/<stage>``, a ``thresher train`` run directory (checkpoints with Adam
state, final/, merged/ when asked). Re-running the recipe resumes an unfinished run and leaves a finished one
as it is (the SFT layer refuses a changed configuration or changed rows; use a new output directory).
"""

from __future__ import annotations

import logging
from pathlib import Path

import numpy as np

from thresher.data.table import Dataset
from thresher.errors import ConfigError
from thresher.models.runs import TrainingRunFolder
from thresher.pipeline.config import Recipe, ResolvedStage, TrainStageConfig
from thresher.training.config import resolve_config
from thresher.training.export import export_merged
from thresher.training.iterit import make_iterit
from thresher.training.sft import changed_settings, train

log = logging.getLogger(__name__)



def train_rows(tc: TrainStageConfig, n: int, selections: dict[str, np.ndarray], last: str | None,
               candidates: np.ndarray | None = None) -> np.ndarray:
    """Row positions to train on: a stage's selection (or all rows: ``candidates``, the rows the noise guard
    kept, when given), then a seeded uniform fraction."""
    if tc.rows == "all":
        rows = np.arange(n, dtype=np.int64) if candidates is None else candidates
    else:
        rows = selections[last if tc.rows == "previous" else tc.rows]
    if tc.fraction is not None:
        k = max(1, int(round(tc.fraction * len(rows))))
        pick = np.random.default_rng(tc.seed).choice(len(rows), size=min(k, len(rows)), replace=False)
        rows = rows[np.sort(pick)]             # keep table order: the trainer shuffles with its own seed
    return rows


def run_train_stage(ds: Dataset, stage: ResolvedStage, recipe: Recipe, rows: np.ndarray, out: Path,
                    model: str, argv=None) -> dict:
    """Train ``model`` on ``ds`` rows ``rows`` into ``out``; returns the stage summary."""

    tc = stage.train
    folder = TrainingRunFolder(out / stage.name)
    run = folder.path
    params = dict(tc.params)
    params.setdefault("device", recipe.device)
    params.setdefault("dtype", recipe.dtype)
    if not len(rows):
        raise ConfigError(f"Stage {stage.name!r} has no rows to train on: the stage it trains on selected none.")
    done = finished_run(run, tc, {**params, "model": model}, [ds.ids[i] for i in rows])
    if done is None:
        kw = {}
        if tc.iterit is not None:
            from thresher.training.hooks import IterITCallback      # imports torch and transformers
            sampler = make_iterit(tc.iterit, f"stage {stage.name}: iterit")
            kw = {"sampler": sampler, "callbacks": [IterITCallback(sampler)]}
        res = train(ds.subset(rows), out=run, preset=tc.preset, cpu_small=tc.cpu_small, model=model, argv=argv,
                    **params, **kw)
        if res.final_dir is None:
            raise ConfigError(f"Training stage {stage.name!r} stopped at step {res.global_step} of "
                              f"{res.max_steps}; run the recipe again to resume it.")
        done = folder.summary
    summary = {"name": stage.name, "model": model, "note": stage.note, "columns": {},
               "train": {"dir": str(run), "rows": int(len(rows)), "trained": done["n_examples"],
                         "skipped": done["n_skipped"], "steps": done["global_step"], "max_steps": done["max_steps"],
                         "loss": done["train_loss"], "samples_per_s": round(done["samples_per_s"], 3),
                         "checkpoints": done["checkpoints"], "final": done["final"]}}
    if tc.merge:
        summary["train"]["merged"] = str(folder.merged_dir if folder.has_merged else export_merged(run))
    if tc.iterit is not None:
        summary["train"]["iterit_logs"] = str(folder.iterit_dir)
    return summary


def finished_run(run: Path, tc: TrainStageConfig, params: dict, row_ids: list[str]) -> dict | None:
    """The saved summary of a finished run with the same settings and rows (a recipe re-run keeps it);
    None when there is nothing finished to reuse. A finished run with other settings or rows is an error:
    retraining over it would silently change the checkpoints later stages read."""
    folder = TrainingRunFolder(run)
    if not folder.finished:
        return None
    diff = changed_settings(folder.config, resolve_config(tc.preset, params, cpu_small=tc.cpu_small).as_dict())
    if diff or sorted(folder.ids + list(folder.skipped)) != sorted(row_ids):
        what = "settings " + ", ".join(diff) if diff else "rows"
        raise ConfigError(f"{run} holds a finished training run with other {what}. Use a new --out, or delete "
                          f"{run} to retrain (later stages read its model and checkpoints).")
    summary = folder.summary
    return summary if summary.get("final") else None


def trained_model_dir(run: Path) -> str:
    """The folder a later stage loads as ``model: "@stage"``: merged/ (LoRA) or final/ (full)."""
    model = TrainingRunFolder(run).model_dir
    if model is None:
        raise ConfigError(f"{run} holds no loadable model (merged/ or a full-model final/).")
    return str(model)
