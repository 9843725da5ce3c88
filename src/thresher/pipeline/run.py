"""Run a resolved recipe, or a single scorer, over a dataset and write a reproducible run directory.

Layout of ``out``:
  manifest.json            argv, resolved recipe, data report, models and their identities, versions, seed
  summary.json             counts, score quantiles, the compute ledger of each stage, where outputs went
  run.log                  the log lines of every start of a run in this folder, with timestamps (appended)
  <stage>/scores.parquet   every row: id, row (its position in the loaded data), the score columns, and for a
                           stage that selects: selected (bool), rank (Int64, 1 = first pick, <NA> dropped)
  <stage>/selected_ids.txt the selected ids, in selection order
  <stage>/selected.<ext>   the selected records, unchanged, in the input's own format
  scores.parquet, selected.<ext>, selected_ids.txt   copies of the last stage's outputs
"""

from __future__ import annotations

import shutil
import time
from dataclasses import asdict
from pathlib import Path

from thresher.data.table import Dataset
from thresher.engine.executors import executor_record, open_executor
from thresher.errors import ConfigError
from thresher.io import atomic_path, write_json
from thresher.manifest import base_manifest
from thresher.outputs import claim_output_dir, clear_results, finish_run_folder, output_lock
from thresher.pipeline.clients import collaborate, finish_global_threshold, run_clients
from thresher.pipeline.config import GUARD_STAGE, DataConfig, Recipe, ResolvedStage
from thresher.pipeline.guard import run_guard
from thresher.pipeline.stages import data_record, load_data, run_stages
from thresher.pipeline.summary import failure_summary
from thresher.progress import run_log


def run_inputs(recipe: Recipe, data_cfg: DataConfig) -> list[str]:
    """The files a run reads (never acceptable as its output folder)."""
    return [data_cfg.path, *recipe.clients, *recipe.target, *recipe.validation,
            *([recipe.anchor] if recipe.anchor else [])]


def run_recipe(recipe: Recipe, data_cfg: DataConfig, stages: list[ResolvedStage], out: Path, *,
               argv=None, raw_recipe: dict | None = None, cache_root=None, executor=None,
               dataset: Dataset | None = None, after=None) -> dict:
    """Run every stage into the run folder ``out`` (thresher.outputs: claimed, locked, the earlier
    run's results cleared first; its log lines appended to ``out/run.log``); with ``recipe.clients`` once
    per client (thresher.pipeline.clients).
    ``executor``: where the scoring shards run: None (this process), an ExecutorConfig or its fields as a
    dict (``{"executor": "ray", "workers": 4}``; started and stopped here), or an open executor.
    ``dataset``: data already loaded from memory (``thresher.data.load`` of a list, DataFrame or
    datasets.Dataset; ``data_cfg`` then only records the options it was loaded with): the run scores it
    instead of loading ``data_cfg.path``, and the manifest records it as in-memory data.
    ``recipe.guard`` enabled: the noise guard runs first and its flagged rows are left out of every selection
    (thresher.pipeline.guard). ``after``: called as ``after(ds, out, manifest, summary)`` once the stages ran,
    before the folder is finished (`thresher guard` writes its verdict so)."""
    out = Path(out)
    if dataset is not None and recipe.clients:
        raise ConfigError(f"recipe {recipe.name!r} runs once per client file (clients); in-memory data cannot "
                          "be one: pass the clients as files and no data.")
    claim_output_dir(out, "run", inputs=run_inputs(recipe, data_cfg))
    with output_lock(out), run_log(out, f"run {recipe.name or ''}".strip()), open_executor(executor) as ex:
        clear_results(out)
        if recipe.clients:
            return run_clients(recipe, data_cfg, stages, out, argv=argv, raw_recipe=raw_recipe,
                               cache_root=cache_root, executor=ex)
        return _run_one(recipe, data_cfg, stages, out, argv=argv, raw_recipe=raw_recipe, cache_root=cache_root,
                        executor=ex, dataset=dataset, after=after)


def _run_one(recipe: Recipe, data_cfg: DataConfig, stages: list[ResolvedStage], out: Path, *,
             argv=None, raw_recipe: dict | None = None, cache_root=None, executor=None,
             dataset: Dataset | None = None, after=None) -> dict:
    t0 = time.perf_counter()
    ds = load_data(data_cfg) if dataset is None else dataset
    manifest = {**base_manifest(argv), "recipe": raw_recipe or asdict(recipe), "seed": recipe.seed,
                "data": data_record(data_cfg, ds, in_memory=dataset is not None),
                "executor": executor_record(executor), "stages": []}
    summary = {"recipe": recipe.name, "rows": len(ds), "load": ds.report.as_dict(), "stages": []}
    candidates = run_guard(ds, recipe, out, manifest, summary, cache_root=cache_root, executor=executor)
    pending = run_stages(ds, recipe, stages, out, manifest, summary, cache_root=cache_root, argv=argv,
                         executor=executor, candidates=candidates)
    if after is not None:
        after(ds, out, manifest, summary)
    summary["failed"] = failure_summary([summary], recipe.max_failed_ratio)
    if pending is not None:                   # a global threshold: this dataset is the only client
        summary["global_threshold"] = finish_global_threshold([pending], recipe, stages[-1])
        summary.setdefault("warnings", []).extend(summary["global_threshold"].pop("warnings", []))
        if recipe.collaborate is not None:
            summary["collaborate"] = collaborate([pending], recipe, stages, out, argv=argv)
    finish_run(out, stages, manifest, summary, t0)
    return summary


def finish_run(out: Path, stages: list[ResolvedStage], manifest: dict, summary: dict, t0: float) -> None:
    """Promote the last stage's outputs, remove what an earlier run left, write the summary and, last,
    the manifest (a run folder with a manifest is complete)."""
    if stages[-1].is_train and stages[-1].train.iterit is not None:
        promoted = _promote_last(out, stages[-1].name, only="selected")
    else:
        last = [st for st in stages if not st.is_train]
        promoted = _promote_last(out, last[-1].name) if last else []
    produced = [st.name for st in stages] + promoted + ["manifest.json", "summary.json"]
    if summary.get("guard"):
        produced.append(GUARD_STAGE)
    if summary.get("collaborate"):
        produced.append("collaborate")
    finish_run_folder(out, "run", produced)
    summary["outputs"] = {"dir": str(out), "manifest": str(out / "manifest.json")}
    summary["seconds"] = round(time.perf_counter() - t0, 1)
    write_json(out / "summary.json", summary)
    write_json(out / "manifest.json", manifest)


def _promote_last(out: Path, stage: str, only: str = "") -> list[str]:
    """Copy the last scoring stage's outputs (or its files named ``only*``) to the top of the run directory;
    returns the names copied."""
    if not (out / stage).is_dir():
        return []
    names = []
    for f in sorted((out / stage).iterdir()):
        if f.is_file() and not f.name.startswith(".") and f.name.startswith(only):
            with atomic_path(out / f.name) as tmp:
                shutil.copyfile(f, tmp)
            names.append(f.name)
    return names


