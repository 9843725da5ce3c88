"""Recipes: YAML files that compose data loading, scorers and selectors into a method.

A recipe is a ``Recipe``: data options, the model, and one or more stages. Each stage runs its
scorers over the whole dataset (with the stage's model, default the recipe's) and applies its
selector; the last stage's selection is the recipe's result. Unknown keys anywhere are errors.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

import yaml

from thresher.config import build, choice, did_you_mean
from thresher.errors import ConfigError
from thresher.methods.select import SelectConfig, check_params

PACKAGED = Path(__file__).resolve().parent.parent / "recipes"


@dataclass
class DataConfig:
    path: str = "bundled:sharegpt"        # a file, a saved HF dataset dir, a hub name, or bundled:sharegpt
    format: str = choice("auto", "auto", "alpaca", "sharegpt", "messages")
    on_invalid: str = choice("fail", "fail", "skip")
    lenient: bool = False                  # keep the complete records of a cut-off JSON file
    limit: int | None = None               # first N valid records
    split: str = "train"


@dataclass
class ScoreConfig:
    scorer: str = ""
    params: dict = field(default_factory=dict)


@dataclass
class StageConfig:
    name: str = ""
    model: str | None = None
    score: list = field(default_factory=list)
    select: dict | None = None
    note: str = ""


@dataclass
class Recipe:
    name: str = ""
    description: str = ""
    reference: str = ""
    data: dict = field(default_factory=dict)
    model: str = "bundled"
    device: str = "auto"
    dtype: str = choice("auto", "auto", "float32", "bfloat16", "float16")
    max_batch_tokens: int | None = None   # None: 768 on CPU, 32768 on GPU
    shard_size: int = 64
    seed: int = 0
    judge: dict = field(default_factory=dict)   # chat backend of judge scorers: see thresher.models.judges
    stages: list = field(default_factory=list)


@dataclass
class ResolvedStage:
    name: str
    model: str
    scores: list[ScoreConfig]
    select: SelectConfig | None
    note: str


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


def load_recipe(spec: str, overrides: dict | None = None) -> tuple[Recipe, DataConfig, list[ResolvedStage]]:
    path = resolve_recipe_path(spec)
    try:
        raw = yaml.safe_load(path.read_text(encoding="utf-8")) or {}
    except yaml.YAMLError as e:
        raise ConfigError(f"{path}: not valid YAML: {e}") from None
    if not isinstance(raw, dict):
        raise ConfigError(f"{path}: a recipe must be a mapping of keys to values.")
    for key, value in (overrides or {}).items():
        set_dotted(raw, key, value)
    return check_recipe(raw, str(path))


def check_recipe(raw: dict, where: str):
    recipe = build(Recipe, raw, f"recipe {where}")
    data = build(DataConfig, recipe.data, f"recipe {where}: data")
    from thresher.models.judges import JudgeConfig
    build(JudgeConfig, recipe.judge, f"recipe {where}: judge")
    if not recipe.stages:
        raise ConfigError(f"recipe {where}: 'stages' must list at least one stage.")
    stages = [_stage(s, i, recipe, where) for i, s in enumerate(recipe.stages)]
    return recipe, data, stages


def _stage(raw, i, recipe: Recipe, where: str) -> ResolvedStage:
    from thresher.scoring import get_scorer

    owner = f"recipe {where}: stage {i}"
    if not isinstance(raw, dict):
        raise ConfigError(f"{owner} must be a mapping with name, score and select.")
    st = build(StageConfig, raw, owner)
    scores, produced = [], set()
    for j, sc in enumerate(st.score):
        sc = build(ScoreConfig, sc, f"{owner}: score {j}")
        scorer = get_scorer(sc.scorer)(**sc.params)          # validates parameters; loads nothing
        missing = [c for c in scorer.required_columns() if c not in produced]
        if missing:
            raise ConfigError(f"{owner}: score {j} ({sc.scorer}) reads column(s) {', '.join(map(repr, missing))}, "
                              f"which no earlier scorer of the stage produces (earlier columns: "
                              f"{', '.join(sorted(produced)) or 'none'}). Put the scorer producing them first.")
        produced |= set(scorer.produced_columns())
        scores.append(sc)
    sel = None
    if st.select is not None:
        sel = build(SelectConfig, st.select, f"{owner}: select")
        check_params(sel, f"{owner}: select")
    if not scores and (sel is None or sel.selector not in ("full", "random")):
        raise ConfigError(f"{owner}: a stage needs at least one scorer unless it selects 'full' or 'random'.")
    return ResolvedStage(st.name or f"stage{i}", st.model or recipe.model, scores, sel, st.note)


def set_dotted(raw: dict, key: str, value) -> None:
    """Apply an override like ``stages.0.select.params.ratio=0.05`` to the raw mapping."""
    parts = key.split(".")
    cur = raw
    for part in parts[:-1]:
        if isinstance(cur, list):
            try:
                cur = cur[int(part)]
            except (ValueError, IndexError):
                raise ConfigError(f"Override {key!r}: {part!r} is not an index of a list of {len(cur)}.") from None
        else:
            cur = cur.setdefault(part, {})
    if isinstance(cur, list):
        cur[int(parts[-1])] = value
    else:
        cur[parts[-1]] = value
