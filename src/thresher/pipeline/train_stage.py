"""Run a recipe's training stage: pick the rows, fine-tune with the SFT layer, optionally merge.

The stage's run directory is ``OUT/<stage>``, a ``thresher train`` run directory (checkpoints with Adam
state, final/, merged/ when asked). Re-running the recipe resumes an unfinished run and leaves a finished one
as it is (the SFT layer refuses a changed configuration or changed rows; use a new output directory).
"""

from __future__ import annotations

import json
import logging
from pathlib import Path

import numpy as np

from thresher.data.table import Dataset
from thresher.errors import ConfigError
from thresher.pipeline.config import Recipe, ResolvedStage, TrainStageConfig
from thresher.training.config import resolve_config
from thresher.training.export import export_merged
from thresher.training.iterit import make_iterit
from thresher.training.sft import train

log = logging.getLogger(__name__)



def train_rows(tc: TrainStageConfig, n: int, selections: dict[str, np.ndarray], last: str | None) -> np.ndarray:
    """Row positions to train on: a stage's selection (or all rows), then a seeded uniform fraction."""
    if tc.rows == "all":
        rows = np.arange(n, dtype=np.int64)
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
    run = out / stage.name
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
        done = json.loads((run / "summary.json").read_text(encoding="utf-8"))
    summary = {"name": stage.name, "model": model, "note": stage.note, "columns": {},
               "train": {"dir": str(run), "rows": int(len(rows)), "trained": done["n_examples"],
                         "skipped": done["n_skipped"], "steps": done["global_step"], "max_steps": done["max_steps"],
                         "loss": done["train_loss"], "samples_per_s": round(done["samples_per_s"], 3),
                         "checkpoints": done["checkpoints"], "final": done["final"]}}
    if tc.merge:
        merged = run / "merged"
        summary["train"]["merged"] = str(merged if (merged / "config.json").exists() else export_merged(run))
    if tc.iterit is not None:
        summary["train"]["iterit_logs"] = str(run / "iterit")
    return summary


_RESUME_FREE = ("logging_steps", "save_total_limit")


def finished_run(run: Path, tc: TrainStageConfig, params: dict, row_ids: list[str]) -> dict | None:
    """The saved summary of a finished run with the same settings and rows (a recipe re-run keeps it);
    None when there is nothing finished to reuse. A finished run with other settings or rows is an error:
    retraining over it would silently change the checkpoints later stages read."""

    if not ((run / "final").is_dir() and (run / "summary.json").exists()):
        return None
    saved = json.loads((run / "config.json").read_text(encoding="utf-8"))["config"]
    now = resolve_config(tc.preset, params, cpu_small=tc.cpu_small).as_dict()
    diff = sorted(k for k in now if k not in _RESUME_FREE and saved.get(k) != now[k])
    ids = json.loads((run / "train_ids.json").read_text(encoding="utf-8"))
    if diff or sorted(ids["ids"] + list(ids["skipped"])) != sorted(row_ids):
        what = ("settings " + ", ".join(f"{k} ({saved.get(k)!r} -> {now[k]!r})" for k in diff)) if diff else "rows"
        raise ConfigError(f"{run} holds a finished training run with other {what}. Use a new --out, or delete "
                          f"{run} to retrain (later stages read its model and checkpoints).")
    summary = json.loads((run / "summary.json").read_text(encoding="utf-8"))
    return summary if summary.get("final") else None


def trained_model_dir(run: Path) -> str:
    """The folder a later stage loads as ``model: "@stage"``: merged/ (LoRA) or final/ (full)."""
    merged, final = run / "merged", run / "final"
    if (merged / "config.json").exists():
        return str(merged)
    if (final / "config.json").exists():
        return str(final)
    raise ConfigError(f"{run} holds no loadable model (merged/ or a full-model final/).")


def iterit_trained_ids(run: Path) -> list[str]:
    """Ids trained in the last epoch of an IterIT run, in rank order (the run's final selection)."""
    logs = sorted((run / "iterit").glob("epoch-*.json"), key=lambda p: int(p.stem.split("-")[1]))
    if not logs:
        return []
    return list(json.loads(logs[-1].read_text(encoding="utf-8"))["selected_ids"])
