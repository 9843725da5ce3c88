"""Recipes: YAML files that compose data loading, scorers, selectors and training into a method.

A recipe is a ``Recipe``: data options, the model, and one or more stages. A scoring stage runs its
scorers over the whole dataset (with the stage's model, default the recipe's) and applies its
selector; a training stage (``train:``) fine-tunes the stage's model on rows chosen by an earlier stage
(Cherry's pre-experience, LESS's warm-up, CLUES's local training, IterIT). The last scoring stage's
selection is the recipe's result. Unknown keys anywhere are errors.

References, resolved when the recipe runs (``@name``):
  stage ``model: "@T"``               the model trained by training stage T (its merged or full model folder)
  scorer parameter ``"@T"``           the run directory of training stage T (checkpoints, for gradient scorers)
  scorer parameter ``"@target"``      the recipe's ``target`` files (``--target``), ``"@anchor"`` its anchor file,
                                      ``"@validation"`` its validation files (default: the anchor file)
``clients`` (``--clients``) runs the stages once per client file; see thresher.pipeline.clients.
``collaborate`` (after a ``global_threshold`` selection): every client fine-tunes on the rows it kept, and
the server merges the clients' LoRA adapters (CLUES step 5; thresher.training.merge).
"""

from __future__ import annotations

import dataclasses
import logging
from pathlib import Path

import yaml

from thresher.config import build, did_you_mean
from thresher.errors import ConfigError, as_option
from thresher.models.judges import JudgeConfig
from thresher.pipeline.config import (GUARD_STAGE, NAME_PATTERN, CollaborateConfig, DataConfig, GuardConfig, Recipe,
                                      ResolvedStage, ScoreConfig, SelectConfig, StageConfig, TrainStageConfig,
                                      is_safe_name)
from thresher.scoring import get_scorer
from thresher.scoring.base import Scorer
from thresher.training.config import resolve_config
from thresher.training.iterit import make_iterit
from thresher.training.merge import check_merge_options

log = logging.getLogger(__name__)
PACKAGED = Path(__file__).resolve().parent.parent / "recipes"


def resolve_recipe_path(spec: str) -> Path:
    """A path to a YAML file, or the name of a packaged recipe (e.g. "superfiltering")."""
    p = Path(spec)
    if p.exists():
        return p
    named = PACKAGED / f"{spec}.yaml"
    if named.exists():
        return named
    names = [q.stem for q in PACKAGED.glob("*.yaml")]
    raise ConfigError(f"Recipe {spec!r} is neither a file nor a packaged recipe.{did_you_mean(spec, names)} "
                      f"Packaged recipes: {', '.join(sorted(names))}.")


def read_recipe(spec: str) -> tuple[Path, dict]:
    """The recipe file ``spec`` names (a path or a packaged name) and its YAML mapping, unchecked; ConfigError
    when it is not valid YAML or not a mapping."""
    path = resolve_recipe_path(str(spec))
    try:
        raw = yaml.safe_load(path.read_text(encoding="utf-8")) or {}
    except yaml.YAMLError as e:
        raise ConfigError(f"{path}: not valid YAML: {e}") from None
    if not isinstance(raw, dict):
        raise ConfigError(f"{path}: a recipe must be a mapping of keys to values.")
    return path, raw


def set_guard(raw: dict, enabled: bool, where: str) -> None:
    """Turn the noise guard of recipe ``raw`` on or off (``--guard`` / ``--no-guard``, ``thresher.run(guard=)``),
    keeping the thresholds of its ``guard:`` block; ConfigError when that block is not a mapping."""
    if not isinstance(raw.setdefault("guard", {}), dict):
        raise ConfigError(f"{where}: 'guard' must be a mapping of GuardConfig fields (enabled, model, ...). "
                          f"Got {raw['guard']!r}.")
    raw["guard"]["enabled"] = bool(enabled)


def load_recipe(spec: str, overrides: dict | None = None) -> tuple[Recipe, DataConfig, list[ResolvedStage]]:
    path, raw = read_recipe(spec)
    for key, value in (overrides or {}).items():
        set_dotted(raw, key, value)
    return check_recipe(raw, str(path))


def check_recipe(raw: dict, where: str):
    recipe = build(Recipe, raw, f"recipe {where}")
    data = build(DataConfig, recipe.data, f"recipe {where}: data")
    build(JudgeConfig, recipe.judge, f"recipe {where}: judge")
    if not 0.0 <= recipe.max_failed_ratio <= 1.0:
        raise ConfigError(f"The 'max_failed_ratio' parameter of recipe {where} must be a float in [0, 1] (the share "
                          f"of scored rows allowed to fail). Got {recipe.max_failed_ratio!r}.")
    if not recipe.stages:
        raise ConfigError(f"recipe {where}: 'stages' must list at least one stage.")
    for key in ("target", "clients", "validation"):
        if not isinstance(getattr(recipe, key), list):
            raise ConfigError(f"recipe {where}: {key!r} must be a list of data files. Got {getattr(recipe, key)!r}.")
    stages: list[ResolvedStage] = []
    for i, s in enumerate(recipe.stages):
        stages.append(_stage(s, i, recipe, where, stages))
    if recipe.collaborate is not None:
        check_collaborate(recipe.collaborate, stages, where)
    check_guard(recipe, stages, where)
    if all(st.is_train for st in stages) and not any(st.train.iterit for st in stages):
        raise ConfigError(f"recipe {where}: every stage trains and none selects: add a scoring stage, or an "
                          "'iterit' block to the training stage.")
    return recipe, data, stages


def _stage(raw, i, recipe: Recipe, where: str, earlier: list[ResolvedStage]) -> ResolvedStage:
    owner = f"recipe {where}: stage {i}"
    if not isinstance(raw, dict):
        raise ConfigError(f"{owner} must be a mapping with name and score/select, or name and train.")
    st = build(StageConfig, raw, owner)
    name = st.name or f"stage{i}"
    if not is_safe_name(name):
        raise ConfigError(f"{owner}: stage name {name!r} is not allowed: stage names name folders inside --out, "
                          f"so they must match {NAME_PATTERN} and hold no '..' (e.g. 'score', 'stage-2').")
    if name in {e.name for e in earlier}:
        raise ConfigError(f"{owner}: stage name {name!r} is used twice; stage names name output folders.")
    model = _model_ref(st.model or recipe.model, earlier, owner)
    if st.train is not None:
        if st.score or st.select is not None:
            raise ConfigError(f"{owner}: a stage either trains ('train') or scores and selects ('score', "
                              "'select'), not both: split it into two stages.")
        return ResolvedStage(name, model, [], None, st.note, _train_stage(st.train, owner, earlier))
    scores, produced = [], set()
    for j, sc in enumerate(st.score):
        sc = build(ScoreConfig, sc, f"{owner}: score {j}")
        check_refs(sc.params, recipe, earlier, f"{owner}: score {j} ({sc.scorer})")
        scorer = get_scorer(sc.scorer)(**sc.params)          # checks its parameters; loads nothing
        missing = [c for c in scorer.required_columns() if c not in produced]
        if missing:
            raise ConfigError(f"{owner}: score {j} ({sc.scorer}) reads column(s) {', '.join(map(repr, missing))}, "
                              f"which no earlier scorer of the stage produces (earlier columns: "
                              f"{', '.join(sorted(produced)) or 'none'}). Put the scorer producing them first.")
        produced |= set(scorer.produced_columns())
        scores.append(scorer)
    sel = None
    if st.select is not None:
        sel = build(SelectConfig, st.select, f"{owner}: select")       # checks every parameter
        if scores:
            directions = {s.main_column: s.higher_is_better for s in scores}
            sel.check_stage(produced, scorer.main_column, sel.direction(scorer.main_column, directions),
                            f"{owner}: select")
    if not scores and (sel is None or sel.selector not in ("full", "random")):
        raise ConfigError(f"{owner}: a stage needs at least one scorer unless it selects 'full' or 'random'.")
    return ResolvedStage(name, model, scores, sel, st.note)


def _train_stage(raw, owner: str, earlier: list[ResolvedStage]) -> TrainStageConfig:
    """Check a training stage without loading anything: its rows, budget, preset and TrainConfig fields."""
    owner = f"{owner}: train"
    if not isinstance(raw, dict):
        raise ConfigError(f"{owner} must be a mapping (rows, fraction, preset, cpu_small, merge, params, iterit).")
    tc = build(TrainStageConfig, raw, owner)
    scoring = [e.name for e in earlier if not e.is_train]
    if tc.rows == "previous" and not any(e.select is not None for e in earlier if not e.is_train):
        raise ConfigError(f"{owner}: rows 'previous' needs an earlier stage that selects. Use rows: all to "
                          "train on every row.")
    if tc.rows not in ("previous", "all") and tc.rows not in scoring:
        raise ConfigError(f"The 'rows' parameter of {owner} must be previous, all or the name of an earlier "
                          f"scoring stage ({', '.join(scoring) or 'none'}). Got {tc.rows!r}.")
    if tc.fraction is not None and not (isinstance(tc.fraction, (int, float)) and 0 < tc.fraction <= 1):
        raise ConfigError(f"The 'fraction' parameter of {owner} must be a float in (0, 1]. Got {tc.fraction!r}.")
    if not isinstance(tc.params, dict):
        raise ConfigError(f"The 'params' parameter of {owner} must be a mapping of TrainConfig fields.")
    if "model" in tc.params:
        raise ConfigError(f"{owner}: set the model with the stage's 'model' key, not params.model.")
    resolve_config(tc.preset, tc.params, cpu_small=tc.cpu_small)     # unknown keys, bad values, preset name
    if tc.iterit is not None:
        make_iterit(tc.iterit, f"{owner}: iterit")
    return tc


def check_collaborate(raw, stages: list[ResolvedStage], where: str) -> tuple[TrainStageConfig, dict]:
    """The collaborate block, checked without loading anything: (its training config, merge options)."""
    owner = f"recipe {where}: collaborate"
    if not isinstance(raw, dict):
        raise ConfigError(f"{owner} must be a mapping with 'train' and 'merge'.")
    cc = build(CollaborateConfig, raw, owner)
    last = stages[-1]
    if last.is_train or last.select is None or last.select.selector != "global_threshold":
        raise ConfigError(f"{owner}: collaboration trains on the rows each client kept under the global "
                          "threshold; the last stage must select with 'global_threshold'.")
    if not isinstance(cc.train, dict) or {"rows", "fraction", "iterit", "merge"} & set(cc.train):
        raise ConfigError(f"{owner}: 'train' is a mapping of preset, cpu_small and params (each client trains on "
                          "the rows it kept; rows, fraction, iterit and merge do not apply).")
    tc = _train_stage({**cc.train, "rows": "all"}, owner, stages)
    if not _trained_is_lora(tc):
        raise ConfigError(f"{owner}: merging combines LoRA adapters; the clients' training must use LoRA "
                          "(a LoRA preset, or params.lora: true).")
    if not isinstance(cc.merge, dict):
        raise ConfigError(f"{owner}: 'merge' must be a mapping (method, density, weights, full).")
    opts = {"method": "ties", "density": 0.2, "weights": None, "full": True, **cc.merge}
    bad = [k for k in opts if k not in ("method", "density", "weights", "full")]
    if bad:
        raise ConfigError(f"{owner}: merge has no parameter {bad[0]!r}. Its parameters: density, full, method, "
                          "weights.")
    try:
        check_merge_options(opts["method"], opts["density"], opts["weights"])
    except ConfigError as e:
        raise ConfigError(f"{owner}: merge: {e}") from None
    return tc, opts


def check_guard(recipe: Recipe, stages: list[ResolvedStage], where: str) -> GuardConfig:
    """The recipe's ``guard:`` block, checked without loading anything (with ``enabled``: its guard recipe and
    scorers too, and that the run can drop rows before selecting)."""
    owner = f"recipe {where}: guard"
    cfg = build(GuardConfig, recipe.guard, owner)
    if not cfg.enabled:
        return cfg
    if recipe.clients or any(st.select is not None and st.select.selector == "global_threshold" for st in stages):
        raise ConfigError(f"{owner}: the guard drops rows of the run's one dataset before its selections; a recipe "
                          "with clients or a global_threshold selection shares a threshold across clients and "
                          "cannot use it. Turn the guard off (guard.enabled: false, no --guard), or run "
                          "`thresher guard` on each client file first.")
    if any(st.name == GUARD_STAGE for st in stages):
        raise ConfigError(f"{owner}: the guard writes its signals to the run folder's {GUARD_STAGE!r} folder, "
                          f"and a stage of the recipe has that name: rename the stage.")
    guard_stage(recipe, cfg)
    return cfg


def guard_stage(recipe: Recipe, cfg: GuardConfig) -> ResolvedStage:
    """The stage that computes the guard's signals: the first stage of ``cfg.recipe`` (the packaged guard
    recipe by default), named GUARD_STAGE, with no selection, on ``cfg.model`` or the recipe's model."""
    _, _, stages = load_recipe(cfg.recipe)
    first = stages[0]
    if first.is_train or not first.scores:
        raise ConfigError(f"The 'recipe' parameter of guard names {cfg.recipe!r}, whose first stage has no "
                          "scorers: give a recipe whose first stage scores the guard's signals (guard_lm, "
                          "guard_text, guard_embed), e.g. the packaged 'guard'.")
    return dataclasses.replace(first, name=GUARD_STAGE, model=cfg.model or recipe.model, select=None)


def _model_ref(spec: str, earlier: list[ResolvedStage], owner: str) -> str:
    """A stage model "@T" must name an earlier training stage whose model loads as a plain folder."""
    if not (isinstance(spec, str) and spec.startswith("@")):
        return spec
    t = _train_ref(spec[1:], earlier, owner)
    lora = _trained_is_lora(t.train)
    if lora and not t.train.merge:
        raise ConfigError(f"{owner}: model {spec!r} is a LoRA run; set merge: true in stage {t.name!r} so it "
                          "writes a merged model folder that scorers can load.")
    return spec


def _trained_is_lora(tc: TrainStageConfig) -> bool:
    return resolve_config(tc.preset, tc.params, cpu_small=tc.cpu_small).lora


def _train_ref(name: str, earlier: list[ResolvedStage], owner: str) -> ResolvedStage:
    trains = {e.name: e for e in earlier if e.is_train}
    if name not in trains:
        raise ConfigError(f"{owner}: '@{name}' names no earlier training stage (training stages so far: "
                          f"{', '.join(trains) or 'none'}).{did_you_mean(name, trains)}")
    return trains[name]


REF_INPUTS = ("target", "anchor", "validation")


def check_refs(params, recipe: Recipe, earlier: list[ResolvedStage], owner: str) -> None:
    """Every "@name" string in scorer parameters names an earlier training stage or a recipe input."""
    for name in training_refs(params):
        _train_ref(name, earlier, owner)


def training_refs(params) -> list[str]:
    """The names T of the "@T" strings in ``params`` (nested dicts and lists) that are no recipe input: training
    stages, in order of appearance."""
    return [v[1:] for v in _walk(params) if isinstance(v, str) and v.startswith("@") and v[1:] not in REF_INPUTS]


def _walk(x):
    if isinstance(x, dict):
        for v in x.values():
            yield from _walk(v)
    elif isinstance(x, list):
        for v in x:
            yield from _walk(v)
    else:
        yield x


def resolve_refs(x, recipe: Recipe, train_dirs: dict[str, str]):
    """A copy of ``x`` with "@name" strings replaced: a training stage's run directory, the recipe's
    target files (a list; spliced into an enclosing list) or its anchor file."""
    if isinstance(x, dict):
        return {k: resolve_refs(v, recipe, train_dirs) for k, v in x.items()}
    if isinstance(x, list):
        out = []
        for v in x:
            r = resolve_refs(v, recipe, train_dirs)
            out.extend(r) if (v in ("@target", "@validation") and isinstance(r, list)) else out.append(r)
        return out
    if isinstance(x, str) and x.startswith("@"):
        name = x[1:]
        if name == "target":
            if not recipe.target:
                raise ConfigError(f"Recipe {recipe.name!r} needs target examples: pass "
                                  f"{as_option('target', metavar='FILE [FILE ...]')} (one file per target task, any "
                                  "supported format).")
            return list(recipe.target)
        if name == "anchor" or (name == "validation" and not recipe.validation):
            if not recipe.anchor:
                raise ConfigError(f"Recipe {recipe.name!r} needs a trusted anchor set: pass "
                                  f"{as_option('anchor', metavar='FILE')}.")
            if name == "validation":
                log.warning("the anchor set doubles as the validation set: each anchor's own gradient is part of "
                            "the mean it is scored against, which raises the anchor scores and so the threshold; "
                            "pass %s for a separate validation set", as_option("validation", metavar="FILE"))
                return [recipe.anchor]
            return recipe.anchor
        if name == "validation":
            return list(recipe.validation)
        return train_dirs[name]
    return x


def resolve_scorer(scorer: Scorer, recipe: Recipe, train_dirs: dict[str, str]) -> Scorer:
    """The stage's scorer with its "@name" parameters resolved (``resolve_refs``): the checked scorer itself
    when it has none, else a scorer of the same class with the resolved values."""
    params = dataclasses.asdict(scorer.params)
    resolved = resolve_refs(params, recipe, train_dirs)
    return scorer if resolved == params else type(scorer)(**resolved)


def set_dotted(raw: dict, key: str, value) -> None:
    """Apply an override like ``stages.0.select.params.ratio=0.05`` to the raw mapping."""
    parts = key.split(".")
    if not all(parts):
        raise ConfigError(f"--set {key!r}: an empty part in the key; use dotted names like stages.0.select.params.ratio.")
    cur = raw
    for i, part in enumerate(parts):
        slot = _slot(cur, part, key, ".".join(parts[:i]))
        if i == len(parts) - 1:
            cur[slot] = value
        else:
            cur = cur[slot] if isinstance(cur, list) else cur.setdefault(slot, {})


def _slot(cur, part: str, key: str, where: str):
    """``part`` as a key of the mapping or an index of the list ``cur`` (the value at ``where``)."""
    if isinstance(cur, dict):
        return part
    if isinstance(cur, list):
        if part.isdigit() and int(part) < len(cur):
            return int(part)
        allowed = f"an index 0..{len(cur) - 1}" if cur else "nothing (the list is empty)"
        raise ConfigError(f"--set {key!r}: {where} is a list of {len(cur)}, so {part!r} must be {allowed}.")
    raise ConfigError(f"--set {key!r}: {where} is {_kind(cur)} ({cur!r}), not a mapping or a list, so it has no "
                      f"{part!r}. Set {where} itself, e.g. --set {where}=VALUE.")


def _kind(value) -> str:
    return {str: "a string", bool: "a boolean", int: "a number", float: "a number",
            type(None): "null"}.get(type(value), f"a {type(value).__name__}")
