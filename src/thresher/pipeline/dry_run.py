"""`thresher run|score --dry-run`: what a run would do, found without doing it.

Loads the data as the run does (streamed), resolves the recipe's stages and, for each scorer, asks the engine
for its shard plan and cache lookup (thresher.engine.scoring.plan_scoring: the run's own key, shards and trust
checks), so "to compute" is exactly the shards a following run scores. No model is loaded (cache keys need a
model's identity only: the bundled GGUF's hash, a hub commit, a folder's hash), no output folder is made and
nothing is written to the score cache. Judge scorers that render their prompts (``judge_prompts``) get a request
count and a token estimate: prompt tokens ~ prompt characters / 4 (CHARS_PER_TOKEN, a rough rule for English
text and BPE tokenizers), reply tokens at most ``max_tokens`` each, priced with the judge's
``price_input_per_1m`` / ``price_output_per_1m``; answers already in the judge's request cache are not sent
again, so the counts are upper bounds.

What cannot be known before the run is said so: a stage whose model or parameters come from an earlier training
stage ("@T") has nothing cached for a model that does not exist yet; a training stage trains on the rows an
earlier selection keeps ("after selection"); a scorer that reads an earlier scorer's columns has its cache
looked up only when those columns are all cached.
"""

from __future__ import annotations

from dataclasses import asdict, replace

import pandas as pd

from thresher.config import build
from thresher.engine.base import ExecutorConfig
from thresher.engine.scoring import plan_scoring
from thresher.models.judges import describe as describe_judge
from thresher.pipeline.config import DataConfig, Recipe, ResolvedStage
from thresher.pipeline.recipe import resolve_scorer, training_refs
from thresher.pipeline.stages import join_scores, load_data, stage_context

CHARS_PER_TOKEN = 4


def plan_run(recipe: Recipe, data_cfg: DataConfig, stages: list[ResolvedStage], *, cache_root=None,
             executor=None) -> dict:
    """The dry-run plan: {"recipe", "data", "rows", "skipped", "executor", "clients", "stages": [...]}; each
    scoring stage {"name", "model", "rows", "scorers": [...], "select"}, each scorer {"scorer", "model_identity",
    "shards", "cached", "to_compute", "rows_to_compute", "judge"?, "note"?}; each training stage {"name",
    "train": True, "model", "rows"}. ``executor``: ExecutorConfig fields (nothing is started)."""
    ds = load_data(data_cfg)
    ex = build(ExecutorConfig, dict(executor or {}), "the executor")
    plan = {"recipe": recipe.name, "data": data_cfg.path, "rows": len(ds), "skipped": ds.report.as_dict().get("skipped"),
            "executor": asdict(ex), "clients": list(recipe.clients), "stages": []}
    trained: set[str] = set()
    for stage in stages:
        if stage.is_train:
            trained.add(stage.name)
            plan["stages"].append({"name": stage.name, "train": True, "model": stage.model,
                                   "rows": _train_rows(stage, len(ds))})
            continue
        plan["stages"].append(_plan_stage(ds, stage, recipe, trained, cache_root))
    return plan


def _train_rows(stage: ResolvedStage, n: int) -> str:
    tc = stage.train
    rows = f"{n}" if tc.rows == "all" else f"after selection ({'the last' if tc.rows == 'previous' else tc.rows}" \
                                           f"{' scoring stage' if tc.rows == 'previous' else ''}'s selection)"
    return rows + (f", a fraction {tc.fraction} of them" if tc.fraction is not None else "")


def _plan_stage(ds, stage: ResolvedStage, recipe: Recipe, trained: set[str], cache_root) -> dict:
    after = _training_refs(stage)
    out = {"name": stage.name, "model": stage.model, "rows": len(ds), "scorers": [],
           "select": asdict(stage.select) if stage.select else None}
    if after:
        n_shards = -(-len(ds) // recipe.shard_size) if len(ds) else 0
        for sc in stage.scores:
            out["scorers"].append({"scorer": sc.name, "shards": n_shards, "cached": 0, "to_compute": n_shards,
                                   "rows_to_compute": len(ds), "note": f"after training stage(s) "
                                   f"{', '.join(sorted(after))}: the model is not trained yet, nothing is cached"})
        return out
    stage = replace(stage, scores=[resolve_scorer(sc, recipe, {}) for sc in stage.scores])
    ctx = stage_context(stage, recipe)
    table: pd.DataFrame | None = None        # earlier scorers' columns, while every one of them is cached
    for i, scorer in enumerate(stage.scores):
        need = tuple(scorer.required_columns())
        if need and table is None:
            out["scorers"].append({"scorer": scorer.name, "note": f"reads {', '.join(need)} from earlier scorers "
                                   "not all cached: its cache is looked up when they are computed"})
            continue
        later_reads = any(sc.required_columns() for sc in stage.scores[i + 1:])
        sp = plan_scoring(ds, scorer, ctx, shard_size=recipe.shard_size, cache_root=cache_root,
                          inputs=table if need else None, keep_frames=later_reads)
        entry = {"scorer": scorer.name, "model_identity": scorer.model_identity(ctx), "key": sp.key,
                 "shards": len(sp.cached) + len(sp.todo), "cached": len(sp.cached), "to_compute": len(sp.todo),
                 "rows_to_compute": sum(u.b - u.a for u in sp.todo)}
        if "judge" in scorer.uses:
            entry["judge"] = _judge_estimate(ds, scorer, ctx, sp.todo)
        out["scorers"].append(entry)
        complete = not sp.todo and (table is not None or i == 0)
        table = join_scores(table, pd.concat(sp.frames, ignore_index=True), scorer.name) \
            if complete and later_reads else None
    return out


def _training_refs(stage: ResolvedStage) -> set[str]:
    """The training stages a scoring stage's model or scorer parameters name ("@T")."""
    refs = {stage.model[1:]} if stage.model.startswith("@") else set()
    for sc in stage.scores:
        refs.update(training_refs(asdict(sc.params)))
    return refs


def _judge_estimate(ds, scorer, ctx, todo) -> dict:
    """Requests the shards to compute would send, and their estimated tokens and cost (module docstring)."""
    judge = describe_judge(ctx.judge_spec)
    out = {"kind": judge["kind"], "model": judge["model"] or ctx.model}
    if not hasattr(scorer, "judge_prompts"):
        return {**out, "requests": None}
    requests = prompt_chars = 0
    reply = 0
    for u in todo:
        msgs, reply = scorer.judge_prompts(ds.subset(range(u.a, u.b)), ctx)
        requests += len(msgs)
        prompt_chars += sum(len(m["content"]) for chat in msgs for m in chat)
    prompt_tokens, completion_tokens = -(-prompt_chars // CHARS_PER_TOKEN), requests * reply
    cost = (prompt_tokens * judge["price_input_per_1m"] + completion_tokens * judge["price_output_per_1m"]) / 1e6
    return {**out, "requests": requests, "prompt_tokens": prompt_tokens, "completion_tokens": completion_tokens,
            "cost": cost if judge["kind"] == "api" else 0.0}


def format_plan(plan: dict) -> str:
    """The dry run as the CLI prints it."""
    skipped = sum((plan["skipped"] or {}).values())
    ex = plan["executor"]
    lines = [f"dry run of recipe {plan['recipe']!r}: data {plan['data']}, {plan['rows']} rows"
             + (f" ({skipped} skipped)" if skipped else ""),
             "executor: " + ex["executor"] + "".join(f", {k}={v}" for k, v in ex.items() if k != "executor" and v)]
    if plan["clients"]:
        lines.append(f"clients: {len(plan['clients'])} files, each run through the stages like the data above "
                     "(planned here for the data above only)")
    for st in plan["stages"]:
        if st.get("train"):
            lines.append(f"stage {st['name']!r}: train model {st['model']}; rows: {st['rows']}")
            continue
        lines.append(f"stage {st['name']!r}: model {st['model']}, {st['rows']} rows")
        for sc in st["scorers"]:
            lines.extend(_scorer_lines(sc))
        if st["select"]:
            sel = st["select"]
            lines.append(f"  select: {sel['selector']}" + (f" on {sel['column']}" if sel["column"] else "")
                         + "".join(f", {k}={v}" for k, v in sel["params"].items()))
    lines.append("nothing was loaded or written (no model, no output folder, no cache entry)")
    return "\n".join(lines)


def _scorer_lines(sc: dict) -> list[str]:
    if "shards" not in sc:
        return [f"  {sc['scorer']}: {sc['note']}"]
    line = (f"  {sc['scorer']}: {sc['shards']} shards, {sc['cached']} cached, {sc['to_compute']} to compute "
            f"({sc['rows_to_compute']} rows)")
    out = [line + (f"; {sc['note']}" if "note" in sc else "")]
    if "model_identity" in sc:
        out.append(f"    model: {sc['model_identity'] or '(none)'}")
    judge = sc.get("judge")
    if judge and judge["requests"] is None:
        out.append(f"    judge {judge['kind']} {judge['model']}: requests depend on the data (no estimate)")
    elif judge:
        price = f", ~${judge['cost']:.4f} at the configured prices" if judge["kind"] == "api" else \
                " (local judge: no API cost)"
        out.append(f"    judge {judge['kind']} {judge['model']}: up to {judge['requests']} requests, "
                   f"~{judge['prompt_tokens']} prompt + up to {judge['completion_tokens']} reply tokens{price}")
    return out
