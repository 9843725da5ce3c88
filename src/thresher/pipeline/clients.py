"""Private clients and one global threshold (CLUES, METHODS.md 1.2 step 4).

``thresher run clues --clients a.jsonl b.jsonl --anchor anchor.jsonl`` runs the recipe's stages once per
client, each in ``OUT/clients/<name>/``: local training on the client's own rows, then its scoring stage,
which scores the client's rows AND the public anchor set with the same model, checkpoints, learning rates
and weights. The last stage's selector is ``global_threshold``: only the anchor scores leave the clients;
the server pools them and derives one threshold tau by the rule (min, mean or a quantile q of the anchor
scores); every client then keeps its own rows scoring >= tau. No client's rows or scores of rows leave its
folder except the counts in the summary. With ``labels`` (a record field holding 1 for good, 0 for bad
samples) the summary reports precision, recall and F1 of the selection per client and overall (the
CLUES paper's Table 3).

With a ``collaborate`` block (CLUES step 5) every client then fine-tunes the base model on the rows it kept
(``OUT/clients/<name>/collaborate/``) and the server merges the clients' LoRA adapters into
``OUT/collaborate/`` (TIES with density 0.2 and weights 1.0 by default, as the CLUES code; linear, cat or
FedAvg by option; thresher.training.merge), and ``OUT/collaborate/merged/`` is the base model with the
merged adapter folded in, loadable by path (``thresher score --model``, ``thresher eval``).

Summary of ``OUT``: per-client summaries, tau, the anchor score quantiles, the selection metrics.
"""

from __future__ import annotations

import json
import time
from dataclasses import asdict, replace
from pathlib import Path

import numpy as np

from thresher.data.table import Dataset
from thresher.engine.executors import executor_record
from thresher.errors import ConfigError, as_option
from thresher.io import write_json, write_parquet
from thresher.manifest import base_manifest
from thresher.outputs import finish_run_folder
from thresher.pipeline.config import DataConfig, Recipe, ResolvedStage, safe_name
from thresher.pipeline.recipe import check_collaborate
from thresher.pipeline.stages import (Pending, data_record, empty_selection, load_data, run_stages, score_stage,
                                      scores_table, write_selection)
from thresher.pipeline.summary import failure_summary
from thresher.pipeline.train_stage import run_train_stage
from thresher.selection.clients import global_threshold, select_above, selection_metrics
from thresher.training.merge import merge_runs



def score_anchor(p: Pending, recipe: Recipe) -> np.ndarray:
    """The anchor set scored by the client's own stage (same model, checkpoints, learning rates, weights)."""
    if not recipe.anchor:
        raise ConfigError("Selector 'global_threshold' needs a trusted anchor set: pass "
                          f"{as_option('anchor', metavar='FILE')} (or set 'anchor' in the recipe).")
    anchor = load_data(DataConfig(path=recipe.anchor))
    table, info = score_stage(anchor, p.stage, recipe, p.cache_root, p.ctx, p.executor)
    write_parquet(p.st_dir / "anchor_scores.parquet", table)
    return table[info[-1]["main_column"]].to_numpy(dtype=np.float64)


def finish_global_threshold(pending: list[Pending], recipe: Recipe, stage: ResolvedStage) -> dict:
    """Pool the clients' anchor scores, derive tau, select in every client, write the selections."""
    rule = stage.select.make().params                   # rule, q: thresher.selection.clients
    for p in pending:
        if p.anchor_scores is None:
            p.anchor_scores = score_anchor(p, recipe)
    pooled = np.concatenate([p.anchor_scores for p in pending])
    tau = global_threshold(pooled, rule.rule, rule.q)
    out = {"rule": rule.rule, "q": rule.q, "tau": tau,
           "anchor": _quantiles(pooled), "clients": {}}
    all_keep, all_good = [], []
    for p in pending:
        s = p.scores[p.column].to_numpy(dtype=np.float64)
        keep = select_above(s, tau)
        idx = np.flatnonzero(keep).astype(np.int64)
        p.selected = idx
        write_parquet(p.st_dir / "scores.parquet", scores_table(p.scores, idx))
        if not len(idx):
            empty_selection(f"client {p.name or 'data'}: the global threshold tau = {tau:.6g} kept 0 of {len(p.ds)} "
                            "rows", recipe.strict, out)
        p.st_sum.update(write_selection(p.ds, idx, p.st_dir))
        p.st_sum["selector"] = asdict(stage.select)
        p.st_sum["tau"] = tau
        entry = {"rows": len(p.ds), "selected": int(keep.sum()), "own_anchor_min": float(np.nanmin(p.anchor_scores))}
        if recipe.labels:
            good = ground_truth(p.ds, recipe.labels)
            entry.update(selection_metrics(keep, good))
            all_keep.append(keep), all_good.append(good)
            p.st_sum["metrics"] = {k: entry[k] for k in ("precision", "recall", "f1")}
        out["clients"][p.name or "data"] = entry
    if all_keep:
        out["overall"] = selection_metrics(np.concatenate(all_keep), np.concatenate(all_good))
    return out


def collaborate(pending: list[Pending], recipe: Recipe, stages: list[ResolvedStage], out: Path,
                argv=None) -> dict:
    """CLUES step 5: each client fine-tunes the base model on the rows it kept, then the server merges the
    clients' adapters. A client that kept nothing does not train (and is not merged); with one trained
    client there is nothing to merge and its run is the result."""
    tc, opts = check_collaborate(recipe.collaborate, stages, recipe.name)
    stage = ResolvedStage("collaborate", recipe.model, [], None, "", tc)
    trained, result = [], {"clients": {}, "merge": {k: opts[k] for k in ("method", "density", "weights")}}
    for p in pending:
        c_dir = p.st_dir.parent
        if not len(p.selected):
            result["clients"][p.name or "data"] = {"rows": 0, "note": "kept no row: not trained, not merged"}
            continue
        t = run_train_stage(p.ds, stage, recipe, p.selected, c_dir, recipe.model, argv=argv)["train"]
        result["clients"][p.name or "data"] = t
        trained.append(Path(t["dir"]))
    if not trained:
        raise ConfigError("No client kept any row under the global threshold: there is nothing to train on "
                          "collaboratively. Lower the threshold (rule mean or a quantile q) or check the scores.")
    if len(trained) == 1:
        result["merge"]["note"] = f"one client trained ({trained[0]}): nothing to merge"
        return result
    merged = merge_runs(trained, out / "collaborate", method=opts["method"], density=opts["density"],
                        weights=opts["weights"], export_full=opts["full"], argv=argv)
    result["merged"] = str(merged)
    result["merge"]["weights"] = json.loads((merged / "merge.json").read_text(encoding="utf-8"))["weights"]
    if opts["full"]:
        result["model"] = str(merged / "merged")
    return result


def ground_truth(ds: Dataset, field: str) -> np.ndarray:
    """(N,) bool from each record's ``field`` (1/0, true/false)."""
    vals = []
    for i, rec in enumerate(ds.raw):
        v = rec.get(field) if isinstance(rec, dict) else None
        if isinstance(v, bool) or (isinstance(v, (int, float)) and v in (0, 1)):
            vals.append(bool(v))
            continue
        raise ConfigError(f"{ds.source}: record {ds.meta[i].get('index', i)} has {field!r} = {v!r}; the labels "
                          f"field must be 1/0 or true/false in every record (1 = good sample).")
    return np.array(vals, dtype=bool)


def _quantiles(a: np.ndarray) -> dict:
    f = a[np.isfinite(a)]
    if not f.size:
        return {}
    return dict(zip(["min", "p25", "p50", "p75", "max"], np.quantile(f, [0, .25, .5, .75, 1]).round(6).tolist()))


def client_names(paths: list[str]) -> list[str]:
    """Folder names of the clients: file stems, made unique with a counter."""
    names, seen = [], {}
    for p in paths:
        stem = safe_name(Path(p).name.split(".")[0])
        seen[stem] = seen.get(stem, 0) + 1
        names.append(stem if seen[stem] == 1 else f"{stem}-{seen[stem]}")
    return names


def run_clients(recipe: Recipe, data_cfg: DataConfig, stages: list[ResolvedStage], out: Path, *,
                argv=None, raw_recipe: dict | None = None, cache_root=None, executor=None) -> dict:
    t0 = time.perf_counter()
    if stages[-1].is_train or stages[-1].select is None or stages[-1].select.selector != "global_threshold":
        raise ConfigError(f"Recipe {recipe.name!r} runs per client ({as_option('clients', metavar='FILE ...')}) "
                          "but its last stage does not select with 'global_threshold': clients share nothing but "
                          "that threshold.")
    manifest = {**base_manifest(argv), "recipe": raw_recipe or asdict(recipe), "seed": recipe.seed,
                "executor": executor_record(executor), "clients": {}}
    summary = {"recipe": recipe.name, "clients": {}, "stages": []}
    pending = []
    for name, path in zip(client_names(recipe.clients), recipe.clients):
        cfg = replace(data_cfg, path=path)                # the run's data options, this client's file
        ds = load_data(cfg)
        c_dir = out / "clients" / name
        c_man = {"data": data_record(cfg, ds), "stages": []}
        c_sum = {"recipe": recipe.name, "client": name, "rows": len(ds), "load": ds.report.as_dict(), "stages": []}
        p = run_stages(ds, recipe, stages, c_dir, c_man, c_sum, cache_root=cache_root, argv=argv, executor=executor)
        p.name = name
        p.anchor_scores = score_anchor(p, recipe)       # the only thing that leaves the client
        pending.append(p)
        manifest["clients"][name] = c_man
        summary["clients"][name] = c_sum
    gt = finish_global_threshold(pending, recipe, stages[-1])
    summary["warnings"] = gt.pop("warnings", [])
    if recipe.collaborate is not None:
        summary["collaborate"] = collaborate(pending, recipe, stages, out, argv=argv)
    for p in pending:
        write_json(out / "clients" / p.name / "summary.json", summary["clients"][p.name])
    summary["global_threshold"] = gt
    summary["rows"] = sum(len(p.ds) for p in pending)
    summary["outputs"] = {"dir": str(out), "manifest": str(out / "manifest.json"),
                          "clients": {p.name: str(p.st_dir) for p in pending}}
    produced = ["clients", "manifest.json", "summary.json", *(f"clients/{p.name}" for p in pending)]
    finish_run_folder(out, "run", produced + (["collaborate"] if summary.get("collaborate") else []))
    summary["seconds"] = round(time.perf_counter() - t0, 1)
    summary["failed"] = failure_summary(list(summary["clients"].values()), recipe.max_failed_ratio)
    write_json(out / "summary.json", summary)
    write_json(out / "manifest.json", manifest)          # last: a run folder with a manifest is complete
    return summary
