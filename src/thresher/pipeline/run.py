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
import os
import shutil
import time
from dataclasses import asdict, replace
from pathlib import Path

import numpy as np
import pandas as pd

from thresher.data.fingerprint import data_fingerprint
from thresher.data.readers import data_source, load, write_records
from thresher.data.table import Dataset
from thresher.io import write_json, write_parquet, atomic_path
from thresher.manifest import base_manifest
from thresher.outputs import claim_output_dir, clear_results, finish_run_folder, output_lock
from thresher.engine.scoring import score_dataset
from thresher.errors import ConfigError
from thresher.pipeline.recipe import DataConfig, Recipe, ResolvedStage, ScoreConfig, resolve_refs
from thresher.scoring import make_scorer
from thresher.models.context import ModelContext

log = logging.getLogger(__name__)
_EXT = {"json": ".json", "jsonl": ".jsonl", "parquet": ".parquet", "hf": ".jsonl"}


def data_record(cfg: DataConfig, ds: Dataset) -> dict:
    """The manifest's record of the data a run read: its config, load report, the directory the run
    started in, and (for data on disk) the absolute path and a content fingerprint, which `thresher
    select` uses to find and check the data from any directory."""
    path = data_source(cfg.path)
    rec = {**asdict(cfg), "report": ds.report.as_dict(), "rows": len(ds), "cwd": os.getcwd()}
    fp = data_fingerprint(path)
    if fp is not None:
        rec.update(abs_path=fp["abs_path"], fingerprint=fp)
    return rec


def load_data(cfg: DataConfig) -> Dataset:
    return load(data_source(cfg.path), cfg.format, on_invalid=cfg.on_invalid, lenient=cfg.lenient, limit=cfg.limit, split=cfg.split,
                max_record_chars=cfg.max_record_chars)


def score_stage(ds: Dataset, stage: ResolvedStage, recipe: Recipe, cache_root=None,
                ctx: ModelContext | None = None) -> tuple[pd.DataFrame, list]:
    """All of a stage's scorers over ``ds``, joined on row order; returns (scores, scorer records)."""
    ctx = ctx or stage_context(stage, recipe)
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


def stage_context(stage: ResolvedStage, recipe: Recipe) -> ModelContext:
    return ModelContext(stage.model, device=recipe.device, dtype=recipe.dtype,
                        max_batch_tokens=recipe.max_batch_tokens, judge=recipe.judge)


def run_inputs(recipe: Recipe, data_cfg: DataConfig) -> list[str]:
    """The files a run reads (never acceptable as its output folder)."""
    return [data_cfg.path, *recipe.clients, *recipe.target, *recipe.validation,
            *([recipe.anchor] if recipe.anchor else [])]


def run_recipe(recipe: Recipe, data_cfg: DataConfig, stages: list[ResolvedStage], out: Path, *,
               argv=None, raw_recipe: dict | None = None, cache_root=None) -> dict:
    """Run every stage into the run folder ``out`` (thresher.outputs: claimed, locked, the earlier
    run's results cleared first); with ``recipe.clients`` once per client (thresher.pipeline.clients)."""
    out = Path(out)
    claim_output_dir(out, "run", inputs=run_inputs(recipe, data_cfg))
    with output_lock(out):
        clear_results(out)
        if recipe.clients:
            from thresher.pipeline.clients import run_clients
            return run_clients(recipe, data_cfg, stages, out, argv=argv, raw_recipe=raw_recipe,
                               cache_root=cache_root)
        return _run_one(recipe, data_cfg, stages, out, argv=argv, raw_recipe=raw_recipe, cache_root=cache_root)


def _run_one(recipe: Recipe, data_cfg: DataConfig, stages: list[ResolvedStage], out: Path, *,
             argv=None, raw_recipe: dict | None = None, cache_root=None) -> dict:
    t0 = time.perf_counter()
    ds = load_data(data_cfg)
    manifest = {**base_manifest(argv), "recipe": raw_recipe or asdict(recipe), "seed": recipe.seed,
                "data": data_record(data_cfg, ds), "stages": []}
    summary = {"recipe": recipe.name, "rows": len(ds), "load": ds.report.as_dict(), "stages": []}
    pending = run_stages(ds, recipe, stages, out, manifest, summary, cache_root=cache_root, argv=argv)
    summary["failed"] = failure_summary([summary], recipe.max_failed_ratio)
    if pending is not None:                   # a global threshold: this dataset is the only client
        from thresher.pipeline.clients import finish_global_threshold
        summary["global_threshold"] = finish_global_threshold([pending], recipe, stages[-1])
        summary.setdefault("warnings", []).extend(summary["global_threshold"].pop("warnings", []))
        if recipe.collaborate is not None:
            from thresher.pipeline.clients import collaborate
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
    if summary.get("collaborate"):
        produced.append("collaborate")
    finish_run_folder(out, "run", produced)
    summary["outputs"] = {"dir": str(out), "manifest": str(out / "manifest.json")}
    summary["seconds"] = round(time.perf_counter() - t0, 1)
    write_json(out / "summary.json", summary)
    write_json(out / "manifest.json", manifest)


def run_stages(ds: Dataset, recipe: Recipe, stages: list[ResolvedStage], out: Path, manifest: dict,
               summary: dict, *, cache_root=None, argv=None):
    """Run the stages over ``ds`` into ``out``, filling ``manifest`` and ``summary``.

    Returns None, or, when the last stage selects by a global threshold, what the threshold step needs
    (thresher.pipeline.clients.Pending): the scores are written, the selection waits for the anchors of
    every client.
    """
    from thresher.pipeline.train_stage import run_train_stage, train_rows, trained_model_dir

    selections: dict[str, np.ndarray] = {}
    train_dirs: dict[str, str] = {}
    last_scoring = None
    for stage in stages:
        model = trained_model_dir(Path(train_dirs[stage.model[1:]])) if stage.model.startswith("@") else stage.model
        if stage.is_train:
            rows = train_rows(stage.train, len(ds), selections, last_scoring)
            st_sum = run_train_stage(ds, stage, recipe, rows, out, model, argv=argv)
            train_dirs[stage.name] = str(out / stage.name)
            manifest["stages"].append({"name": stage.name, "model": model, "train": asdict(stage.train),
                                       "rows": [ds.ids[i] for i in rows], "note": stage.note})
            summary["stages"].append(st_sum)
            continue
        stage = replace(stage, model=model,
                        scores=[ScoreConfig(sc.scorer, resolve_refs(sc.params, recipe, train_dirs))
                                for sc in stage.scores])
        ctx = stage_context(stage, recipe)
        scores, info = score_stage(ds, stage, recipe, cache_root, ctx)
        st_dir = out / stage.name
        write_parquet(st_dir / "scores.parquet", scores)
        st_sum = {"name": stage.name, "model": stage.model, "note": stage.note, **describe_scores(scores, info)}
        st_sum["failed"] = {"rows": sum((rec.get("cache") or {}).get("failed", 0) for rec in info),
                            "of": len(ds) * len(info)}     # rows x scorers; failed rows are not cached
        judged = [rec for rec in info if "judge" in rec]
        if judged:
            st_sum["judge"] = judged[-1]["judge"]      # the backend's running totals for this stage
        manifest["stages"].append({"name": stage.name, "model": stage.model, "scorers": info,
                                   "select": asdict(stage.select) if stage.select else None, "note": stage.note})
        summary["stages"].append(st_sum)
        last_scoring = stage.name
        if stage.select is None:
            continue
        # The stage's last scorer is its result (earlier ones feed it: ratings, embeddings).
        main = info[-1]["main_column"] if info else None
        hib = info[-1]["higher_is_better"] if info else None
        if stage.select.selector == "global_threshold":
            from thresher.pipeline.clients import Pending
            return Pending(ds, stage, scores, main, st_dir, st_sum, ctx, cache_root)
        idx = stage.select.apply(scores, main=main, higher_is_better=hib)
        if not len(idx):
            empty_selection(f"stage {stage.name!r}: the selection ({stage.select.selector}) kept 0 of {len(ds)} "
                            "rows", recipe.strict, summary)
        selections[stage.name] = idx
        st_sum.update(write_selection(ds, idx, st_dir))
        st_sum["selector"] = asdict(stage.select)
    if stages[-1].is_train and stages[-1].train.iterit is not None:
        _write_iterit_selection(ds, out / stages[-1].name, summary["stages"][-1])
    return None


def empty_selection(message: str, strict: bool, summary: dict) -> None:
    """A selection that keeps nothing: an error with ``strict``, else a warning kept in the summary."""
    if strict:
        raise ConfigError(f"{message}; with --strict that is an error. Check the selection's ratio/k and the "
                          "scores, or drop --strict to accept an empty selection.")
    log.warning("%s", message)
    summary.setdefault("warnings", []).append(message)


def _write_iterit_selection(ds: Dataset, run: Path, st_sum: dict) -> None:
    """An IterIT recipe's result: the rows its last epoch trained on, written like a selection."""
    from thresher.pipeline.train_stage import iterit_trained_ids

    pos = {rid: i for i, rid in enumerate(ds.ids)}
    idx = np.array([pos[i] for i in iterit_trained_ids(run)], dtype=np.int64)
    st_sum.update(write_selection(ds, idx, run))


def write_selection(ds: Dataset, idx: np.ndarray, st_dir: Path) -> dict:
    ext = _EXT.get(ds.container, ".jsonl")
    target = st_dir / f"selected{ext}"
    write_records(ds, idx, target)
    with atomic_path(st_dir / "selected_ids.txt") as tmp:
        tmp.write_text("".join(f"{ds.ids[i]}\n" for i in idx), encoding="utf-8")
    return {"selected": int(len(idx)), "dropped": int(len(ds) - len(idx)), "selected_file": str(target)}


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


def failure_summary(summaries: list[dict], max_ratio: float) -> dict:
    """Rows (per scorer) whose result is not final, over every stage of ``summaries``; ``exceeded`` when
    their share of all scored rows is above ``max_ratio`` (the CLI then exits with status 2)."""
    parts = [st["failed"] for s in summaries for st in s.get("stages", []) if "failed" in st]
    rows, of = sum(p["rows"] for p in parts), sum(p["of"] for p in parts)
    ratio = rows / of if of else 0.0
    return {"rows": rows, "of": of, "ratio": round(ratio, 6), "max_ratio": max_ratio, "exceeded": ratio > max_ratio,
            "resume": RESUME if rows else None}


RESUME = ("rerun the same command to resume: answered judge requests are cached, so only the failed rows are "
          "asked again")


def failure_line(failed: dict) -> str:
    """One sentence on failed rows for the printed summary and the CLI's error line."""
    over = (f", more than max_failed_ratio {failed['max_ratio']:g} allows (exit status 2)"
            if failed["exceeded"] else f", within max_failed_ratio {failed['max_ratio']:g}")
    return (f"failed: {failed['rows']} of {failed['of']} scored rows ({failed['ratio']:.1%}) got no judge answer "
            f"after retries{over}; {RESUME}.")


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
    if "clients" in summary and "load" not in summary:
        return _format_clients(summary)
    lines = [f"thresher: {summary.get('recipe') or 'score'} on {summary['rows']} rows "
             f"from {summary['load']['path']} ({summary['load']['fmt']}, {summary['load']['container']})"]
    lines += _format_stages(summary)
    if summary.get("global_threshold"):
        lines += _format_threshold(summary["global_threshold"])
    return "\n".join(lines + _closing_lines(summary))


def _closing_lines(summary: dict) -> list[str]:
    """The end of a printed summary: collaborative training, warnings, failed rows, where the outputs are."""
    lines = _format_collaborate(summary["collaborate"]) if summary.get("collaborate") else []
    lines += [f"warning: {w}" for w in summary.get("warnings", [])]
    if (summary.get("failed") or {}).get("rows"):
        lines.append(failure_line(summary["failed"]))
    lines.append(f"outputs: {summary['outputs']['dir']}  ({summary.get('seconds', 0)} s)")
    return lines


def _format_stages(summary: dict) -> list[str]:
    lines = []
    load = summary["load"]
    if load.get("truncated"):
        lines.append(f"  input: {load['truncated']}")
    if load.get("skipped"):
        lines.append("  skipped at load: " + ", ".join(f"{k}: {v}" for k, v in load["skipped"].items()))
    for st in summary["stages"]:
        lines.append(f"stage {st['name']} (model {st['model']})")
        if "train" in st:
            t = st["train"]
            loss = f"{t['loss']:.4f}" if t.get("loss") is not None else "n/a"
            lines.append(f"  trained on {t['trained']} of {t['rows']} rows ({t['skipped']} skipped), step "
                         f"{t['steps']}/{t['max_steps']}, loss {loss}, {len(t['checkpoints'])} checkpoint(s) -> "
                         f"{t.get('merged') or t['final']}")
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
        if st.get("metrics"):
            m = st["metrics"]
            lines.append(f"  against labels: precision {m['precision']:.3f} recall {m['recall']:.3f} f1 {m['f1']:.3f}")
        if st.get("note"):
            lines.append(f"  note: {st['note']}")
    return lines


def _format_threshold(gt: dict) -> list[str]:
    q = "  ".join(f"{k} {v:.4g}" for k, v in gt["anchor"].items())
    lines = [f"global threshold ({gt['rule']}{'' if gt.get('q') is None else ' q=' + str(gt['q'])} of the anchor "
             f"scores): tau = {gt['tau']:.6g}   anchor scores: {q}"]
    for name, c in gt["clients"].items():
        extra = f", precision {c['precision']:.3f} recall {c['recall']:.3f} f1 {c['f1']:.3f}" if "f1" in c else ""
        lines.append(f"  {name}: kept {c['selected']} of {c['rows']}{extra}")
    if gt.get("overall"):
        o = gt["overall"]
        lines.append(f"  overall: precision {o['precision']:.3f} recall {o['recall']:.3f} f1 {o['f1']:.3f}")
    return lines


def _format_clients(summary: dict) -> str:
    lines = [f"thresher: {summary['recipe']} over {len(summary['clients'])} clients, {summary['rows']} rows"]
    for name, c in summary["clients"].items():
        lines.append(f"client {name}: {c['rows']} rows from {c['load']['path']}")
        lines += ["  " + x for x in _format_stages(c)]
    lines += _format_threshold(summary["global_threshold"])
    return "\n".join(lines + _closing_lines(summary))


def _format_collaborate(c: dict) -> list[str]:
    m = c["merge"]
    lines = ["collaborative training on the kept rows:"]
    for name, t in c["clients"].items():
        if "note" in t:
            lines.append(f"  {name}: {t['note']}")
        else:
            loss = f"{t['loss']:.4f}" if t.get("loss") is not None else "n/a"
            lines.append(f"  {name}: trained on {t['trained']} rows, {t['steps']} steps, loss {loss} -> {t['final']}")
    if c.get("merged"):
        density = f", density {m['density']}" if m["method"] == "ties" else ""
        lines.append(f"  merged ({m['method']}{density}): adapter {c['merged']}"
                     + (f", model {c['model']}" if c.get("model") else ""))
    else:
        lines.append(f"  {m.get('note', 'not merged')}")
    return lines
