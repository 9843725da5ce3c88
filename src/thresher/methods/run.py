"""Run a resolved recipe, or a single scorer, over a dataset and write a reproducible run directory.

Layout of ``out``:
  manifest.json            argv, resolved recipe, data report, models and their identities, versions, seed
  summary.json             counts, score quantiles, where outputs went
  <stage>/scores.parquet   id + score columns of every row
  <stage>/selected_ids.txt the selected ids, in selection order
  <stage>/selected.<ext>   the selected records, unchanged, in the input's own format
  scores.parquet, selected.<ext>, selected_ids.txt   copies of the last stage's outputs
"""

from __future__ import annotations

import logging
import shutil
import time
from dataclasses import asdict
from pathlib import Path

import numpy as np
import pandas as pd

from thresher.data.readers import bundled_sharegpt_path, load, write_records
from thresher.data.table import Dataset
from thresher.engine.io import write_json, write_parquet, atomic_path
from thresher.engine.manifest import base_manifest
from thresher.engine.scoring import score_dataset
from thresher.errors import ConfigError
from thresher.methods.recipe import DataConfig, Recipe, ResolvedStage
from thresher.methods.select import apply_selector
from thresher.scoring import make_scorer
from thresher.scoring.base import ModelContext

log = logging.getLogger(__name__)
_EXT = {"json": ".json", "jsonl": ".jsonl", "parquet": ".parquet", "hf": ".jsonl"}


def load_data(cfg: DataConfig) -> Dataset:
    path = bundled_sharegpt_path() if cfg.path in ("bundled:sharegpt", "sharegpt") else cfg.path
    return load(path, cfg.format, on_invalid=cfg.on_invalid, lenient=cfg.lenient, limit=cfg.limit, split=cfg.split)


def score_stage(ds: Dataset, stage: ResolvedStage, recipe: Recipe, cache_root=None) -> tuple[pd.DataFrame, list]:
    """All of a stage's scorers over ``ds``, joined on row order; returns (scores, scorer records)."""
    ctx = ModelContext(stage.model, device=recipe.device, dtype=recipe.dtype,
                       max_batch_tokens=recipe.max_batch_tokens, judge=recipe.judge)
    table, info = pd.DataFrame({"id": ds.ids}), []
    for sc in stage.scores:
        scorer = make_scorer(sc.scorer, **sc.params)
        frame = score_dataset(ds, scorer, ctx, shard_size=recipe.shard_size, cache_root=cache_root,
                              label=f"{stage.name}:{sc.scorer}", inputs=table)
        clash = [c for c in frame.columns if c != "id" and c in table.columns]
        if clash:
            frame = frame.rename(columns={c: f"{sc.scorer}.{c}" for c in clash})
        table = pd.concat([table, frame.drop(columns="id")], axis=1)
        info.append({"scorer": sc.scorer, "version": scorer.version, "params": scorer.param_dict(),
                     "model_identity": scorer.model_identity(ctx), "main_column": scorer.main_column,
                     "higher_is_better": scorer.higher_is_better, "cache": frame.attrs.get("cache"),
                     **({"judge": ctx.judge().stats()} if "judge" in scorer.uses else {})})
    return table, info


def run_recipe(recipe: Recipe, data_cfg: DataConfig, stages: list[ResolvedStage], out: Path, *,
               argv=None, raw_recipe: dict | None = None, cache_root=None) -> dict:
    t0 = time.perf_counter()
    out = Path(out)
    ds = load_data(data_cfg)
    manifest = {**base_manifest(argv), "recipe": raw_recipe or asdict(recipe), "seed": recipe.seed,
                "data": {**asdict(data_cfg), "report": ds.report.as_dict(), "rows": len(ds)}, "stages": []}
    summary = {"recipe": recipe.name, "rows": len(ds), "load": ds.report.as_dict(), "stages": []}
    for stage in stages:
        scores, info = score_stage(ds, stage, recipe, cache_root)
        st_dir = out / stage.name
        write_parquet(st_dir / "scores.parquet", scores)
        st_sum = {"name": stage.name, "model": stage.model, "note": stage.note, **describe_scores(scores, info)}
        judged = [rec for rec in info if "judge" in rec]
        if judged:
            st_sum["judge"] = judged[-1]["judge"]      # the backend's running totals for this stage
        if stage.select is not None:
            # The stage's last scorer is its result (earlier ones feed it: ratings, embeddings).
            main = info[-1]["main_column"] if info else None
            hib = info[-1]["higher_is_better"] if info else None
            idx = apply_selector(stage.select, scores, default_column=main, higher_is_better=hib)
            st_sum.update(write_selection(ds, idx, st_dir))
            st_sum["selector"] = asdict(stage.select)
        manifest["stages"].append({"name": stage.name, "model": stage.model, "scorers": info,
                                   "select": asdict(stage.select) if stage.select else None, "note": stage.note})
        summary["stages"].append(st_sum)
    _promote_last(out, stages[-1].name)
    summary["outputs"] = {"dir": str(out), "manifest": str(out / "manifest.json")}
    summary["seconds"] = round(time.perf_counter() - t0, 1)
    write_json(out / "manifest.json", manifest)
    write_json(out / "summary.json", summary)
    return summary



def write_selection(ds: Dataset, idx: np.ndarray, st_dir: Path) -> dict:
    ext = _EXT.get(ds.container, ".jsonl")
    target = st_dir / f"selected{ext}"
    write_records(ds, idx, target)
    with atomic_path(st_dir / "selected_ids.txt") as tmp:
        tmp.write_text("".join(f"{ds.ids[i]}\n" for i in idx), encoding="utf-8")
    return {"selected": int(len(idx)), "dropped": int(len(ds) - len(idx)), "selected_file": str(target)}


def _promote_last(out: Path, stage: str) -> None:
    """Copy the last stage's outputs to the top of the run directory."""
    for f in (out / stage).iterdir():
        if f.is_file() and not f.name.startswith("."):
            with atomic_path(out / f.name) as tmp:
                shutil.copyfile(f, tmp)


def describe_scores(scores: pd.DataFrame, info: list[dict]) -> dict:
    """Quantiles of each scorer's main column, NaN count and reasons."""
    out = {"columns": {}}
    for rec in info:
        col = rec["main_column"]
        if col not in scores.columns or not pd.api.types.is_numeric_dtype(scores[col]):
            continue                       # embeddings, tags, label sets: not a score to summarise
        v = scores[col].to_numpy(dtype=np.float64)
        finite = v[np.isfinite(v)]
        q = dict(zip(["min", "p05", "p25", "p50", "p75", "p95", "max"],
                     np.quantile(finite, [0, .05, .25, .5, .75, .95, 1]).round(4).tolist())) if finite.size else {}
        entry = {"scored": int(finite.size), "nan": int(v.size - finite.size), "quantiles": q}
        if "status" in scores.columns:
            bad = scores.loc[scores["status"] != "ok", "status"].value_counts()
            entry["nan_reasons"] = {str(k): int(n) for k, n in bad.items()}
        out["columns"][col] = entry
    return out


def format_summary(summary: dict) -> str:
    """Human-readable summary printed by the CLI."""
    lines = [f"thresher: {summary.get('recipe') or 'score'} on {summary['rows']} rows "
             f"from {summary['load']['path']} ({summary['load']['fmt']}, {summary['load']['container']})"]
    load = summary["load"]
    if load.get("truncated"):
        lines.append(f"  input: {load['truncated']}")
    if load.get("skipped"):
        lines.append("  skipped at load: " + ", ".join(f"{k}: {v}" for k, v in load["skipped"].items()))
    for st in summary["stages"]:
        lines.append(f"stage {st['name']} (model {st['model']})")
        for col, e in st["columns"].items():
            q = e["quantiles"]
            qs = "  ".join(f"{k} {v:.4g}" for k, v in q.items()) if q else "no finite scores"
            lines.append(f"  {col}: {e['scored']} scored, {e['nan']} NaN  |  {qs}")
            if e.get("nan_reasons"):
                lines.append("    NaN reasons: " + ", ".join(f"{k}: {v}" for k, v in e["nan_reasons"].items()))
        if st.get("judge"):
            j = st["judge"]
            lines.append(f"  judge: {j.get('requests', 0)} requests ({j.get('cached', 0)} from cache), "
                         f"{j.get('calls', 0)} calls, {j.get('retries', 0)} retries, {j.get('failed', 0)} failed, "
                         f"{j.get('prompt_tokens', 0)}+{j.get('completion_tokens', 0)} tokens, "
                         f"cost {j.get('cost', 0.0):.4f}")
        if "selected" in st:
            lines.append(f"  selected {st['selected']} kept / {st['dropped']} dropped -> {st['selected_file']}")
        if st.get("note"):
            lines.append(f"  note: {st['note']}")
    lines.append(f"outputs: {summary['outputs']['dir']}  ({summary.get('seconds', 0)} s)")
    return "\n".join(lines)
