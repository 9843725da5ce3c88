"""Every registered selector, generated from thresher.selection.SELECTORS (a new selector is covered
automatically and fails here until it has an example and a bad value below): parameters checked without
data (adapter constructor and `thresher validate`), unknown parameters with "Did you mean", and
conformance on a synthetic score table built from the columns the selector declares (int64 indices in
range, unique, deterministic under ties, the same rows on a permuted table). Arrays only, no model.
"""

from __future__ import annotations

import dataclasses
import json
import os
import re
import subprocess
import sys

import numpy as np
import pandas as pd
import pytest
import yaml

from thresher.cli import main
from thresher.errors import ConfigError
from thresher.pipeline.recipe import PACKAGED, load_recipe
from thresher.selection import SELECTORS, make_selector

NAMES = SELECTORS.names()
MAIN = "score"                  # the stage's main column in the synthetic tables
N = 13

# A small valid example of a selector's parameters (for a table of N rows); a selector not listed runs on its
# default parameters, which must then be valid (``example``).
EXAMPLES = {
    "full": {},
    "random": {"k": 3, "seed": 1},
    "top_k": {"k": 3},
    "middle": {"ratio": 0.5},
    "threshold": {"ge": 0.5},
    "superfiltering": {"ratio": 0.5},
    "cherry_ifd": {"ratio": 0.5},
    "cherry_pre_experience": {"n_clusters": 2, "per_cluster": 2},
    "alpagasus": {"threshold": 0.5, "k": 3},
    "ds2_bucket": {"k": 4},
    "deita": {"ratio": 0.5, "threshold": 0.9},
    "ds2_diversity": {"k": 4},
    "facility_location": {"k": 3},
    "superfiltering_d": {"ifd_ratio": 0.5, "k": 2},
    "opencs": {"per_cluster": 2, "k": 5},
    "global_threshold": {"rule": "quantile", "q": 0.5},
}

# Bad values (each constrained parameter): params -> a part of the message. A new selector's own test file checks
# its values; every selector's parameters are type-checked and typo-checked below in any case.
BAD = {
    "full": [({"k": 1}, "has no parameter 'k'")],
    "random": [({"k": -1}, "'k' parameter"), ({"ratio": 0.0}, "'ratio' parameter"), ({}, "exactly one of"),
               ({"k": 1, "seed": -1}, "'seed' parameter")],
    "top_k": [({"k": 1, "ratio": 0.5}, "exactly one of"), ({"ratio": 1.5}, "(0, 1]"), ({"k": 1, "of": "some"}, "'of'"),
              ({"k": 1, "of": 0}, "'of'"), ({"k": 1, "nan": "drop"}, "'nan'"), ({"k": 1, "order": "asc"}, "'order'"),
              ({"k": 1, "where": {"ifd": {"below": 1}}}, "'where'"), ({"k": 1, "where": {"ifd": {"lt": "x"}}}, "'lt'")],
    "middle": [({"k": -2}, "'k' parameter"), ({"ratio": 0.5, "of": "pool"}, "'of'")],
    "threshold": [({}, "at least one of the 'lt'"), ({"lt": float("nan")}, "'lt'")],
    "superfiltering": [({"ratio": 2.0}, "'ratio'"), ({"ratio": 0.1, "base": "all"}, "'base'"),
                       ({"ratio": 0.1, "filter_below": float("nan")}, "'filter_below'")],
    "cherry_ifd": [({"ratio": 0.1, "base": -3}, "'base'"), ({"ratio": 0.1, "order": "rank_desc"}, "'order'"),
                   ({"ratio": 0.1, "keep_max": float("nan")}, "'keep_max'")],
    "cherry_pre_experience": [({"n_clusters": 0}, "'n_clusters'"), ({"per_cluster": 0}, "'per_cluster'"),
                              ({"low_pct": -1.0}, "'low_pct'"), ({"high_pct": 101.0}, "'high_pct'"),
                              ({"low_pct": 80.0}, "'low_pct'"), ({"seed": -1}, "'seed'")],
    "alpagasus": [({}, "needs a 'threshold'"), ({"threshold": float("nan")}, "'threshold'"),
                  ({"k": 1, "ratio": 0.5}, "exactly one of"), ({"k": 1, "seed": -1}, "'seed'")],
    "ds2_bucket": [({}, "exactly one of"), ({"ratio": 1.5}, "'ratio'")],
    "deita": [({"k": -1}, "'k'"), ({"k": 1, "ratio": 0.5}, "exactly one of"),
              ({"threshold": float("nan")}, "'threshold'"), ({"columns": []}, "'columns'")],
    "ds2_diversity": [({}, "'k' parameter"), ({"k": 2, "top": 0}, "'top'"),
                      ({"k": 2, "max_mean_distance": float("nan")}, "'max_mean_distance'")],
    "facility_location": [({"k": -1}, "'k' parameter"), ({"ratio": 1.5}, "'ratio'"), ({}, "exactly one of"),
                          ({"k": 2, "metric": "manhattan"}, "'metric'"), ({"k": 2, "where": [1]}, "'where'")],
    "superfiltering_d": [({"k": -1}, "'k'"), ({"k": 2, "ifd_k": 3, "ifd_ratio": 0.1}, "at most one of"),
                         ({"k": 2, "ifd_ratio": 1.5}, "'ifd_ratio'"), ({"k": 2, "ifd_k": -1}, "'ifd_k'"),
                         ({"k": 2, "metric": "l1"}, "'metric'")],
    "opencs": [({"per_cluster": 0}, "'per_cluster'"), ({"k": -1}, "'k'"), ({"order": "global"}, "needs the 'k'"),
               ({"order": "random"}, "'order'")],
    "global_threshold": [({"rule": "median"}, "'rule'"), ({"rule": "quantile"}, "'q' parameter"),
                         ({"rule": "quantile", "q": 1.5}, "'q' parameter")],
}

# Selectors whose selected rows depend on the row order of the table (not only on its content).
ORDER_DEPENDENT = {"random", "cherry_pre_experience", "ds2_diversity"}
# Selectors that need more than one score table: checked to say so.
NEEDS_ANCHOR = {"global_threshold"}


def example(name: str) -> dict:
    """EXAMPLES[name], or {} when the selector's defaults are valid (else the test says to add an example)."""
    if name in EXAMPLES:
        return EXAMPLES[name]
    try:
        make_selector(name)
    except ConfigError as e:
        pytest.fail(f"selector {name!r} has no valid default parameters ({e}): add an example to EXAMPLES")
    return {}


def test_every_selector_has_an_example_and_the_tables_name_only_registered_selectors():
    assert not (set(EXAMPLES) | set(BAD)) - set(NAMES)
    assert all(BAD.values())
    for name in NAMES:
        make_selector(name, params=example(name))
    assert len(NAMES) >= 16


# ------------------------------------------------------------------------------------ parameters, no data
@pytest.mark.parametrize("name", NAMES)
def test_bad_values_are_rejected_by_the_constructor(name):
    make_selector(name, params=example(name))                           # the example is valid
    for params, message in BAD.get(name, ()):
        with pytest.raises(ConfigError, match=re.escape(message)) as e:
            make_selector(name, params=params)
        assert f"selector {name!r}" in str(e.value), str(e.value)


@pytest.mark.parametrize("name", NAMES)
def test_every_declared_parameter_is_type_checked(name):
    fields = dataclasses.fields(SELECTORS.get(name).Params)
    for f in fields:
        with pytest.raises(ConfigError, match=f"'{f.name}' parameter of selector '{name}'"):
            make_selector(name, params={**example(name), f.name: {1, 2}})   # a type no field takes


@pytest.mark.parametrize("name", NAMES)
def test_unknown_parameter_gets_did_you_mean(name):
    fields = [f.name for f in dataclasses.fields(SELECTORS.get(name).Params)]
    typo = fields[0][:-1] + "x" + fields[0][-1] if fields else "k"
    with pytest.raises(ConfigError, match=f"selector '{name}' has no parameter '{typo}'") as e:
        make_selector(name, params={**example(name), typo: 1})
    if fields:
        assert f"Did you mean '{fields[0]}'?" in str(e.value)


def test_unknown_selector_gets_did_you_mean():
    with pytest.raises(ConfigError, match="Did you mean 'facility_location'"):
        _check_stage(_stage("facility_locaton", {"k": 2}, ["embedding"]))


# ------------------------------------------------------------------------------------ thresher validate
def _stage(selector, params, scorers, **select):
    return {"name": "s", "score": [{"scorer": s} for s in scorers],
            "select": {"selector": selector, "params": params, **select}}


def _recipe(tmp_path, *stages):
    path = tmp_path / "r.yaml"
    path.write_text(yaml.safe_dump({"name": "t", "data": {"path": "bundled:sharegpt"}, "stages": list(stages)}),
                    encoding="utf-8")
    return path


def _check_stage(stage):
    from thresher.pipeline.recipe import check_recipe

    check_recipe({"name": "t", "stages": [stage]}, "<test>")


def _validate_error(tmp_path, path) -> str:
    """`thresher validate path` in a fresh process: exit 2, one error line naming the recipe and the stage's
    selection, no model loaded; returns the line."""
    env = {**os.environ, "THRESHER_CACHE": str(tmp_path / "cache")}
    res = subprocess.run([sys.executable, "-m", "thresher", "validate", str(path)], capture_output=True,
                         text=True, env=env, timeout=120)
    assert res.returncode == 2, res.stdout + res.stderr
    lines = res.stderr.strip().splitlines()
    assert len(lines) == 1, res.stderr
    assert str(path) in lines[0] and "stage 0: select" in lines[0]
    assert not (tmp_path / "cache" / "models").exists()
    return lines[0]


def test_validate_rejects_facility_location_k_minus_1_before_scoring(tmp_path):
    line = _validate_error(tmp_path, _recipe(tmp_path, _stage("facility_location", {"k": -1}, ["embedding"])))
    assert "The 'k' parameter of selector 'facility_location' must be an int >= 0. Got -1." in line


@pytest.mark.parametrize("selector, params, scorers, message", [
    ("top_k", {"k": 2, "of": "some"}, ["length"], "'of' parameter of selector 'top_k'"),
    ("alpagasus", {"ratio": 2.0}, ["judge"], "'ratio' parameter of selector 'alpagasus'"),
    ("opencs", {"order": "global"}, ["opencs_tags", "opencs_clusters", "opencs_pairs"], "needs the 'k'"),
    ("superfiltering_d", {"k": 2, "metric": "l1"}, ["ifd", "embedding"], "'metric' parameter"),
    ("ds2_diversity", {"top": 3}, ["judge", "embedding"], "'k' parameter of selector 'ds2_diversity'"),
    ("facility_location", {"k": 2, "metrc": "cosine"}, ["embedding"], "Did you mean 'metric'?"),
])
def test_validate_rejects_bad_selector_values(tmp_path, capsys, selector, params, scorers, message):
    assert main(["validate", str(_recipe(tmp_path, _stage(selector, params, scorers)))]) == 2
    err = capsys.readouterr().err
    assert message in err and "Traceback" not in err, err


@pytest.mark.parametrize("stage, message", [
    (_stage("facility_location", {"k": 2}, ["length"]), "reads column(s) 'embedding'"),
    (_stage("facility_location", {"k": 2}, ["length"]), "add the scorer 'embedding' or 'perplexity' for 'embedding'"),
    (_stage("ds2_bucket", {"k": 2}, ["judge", "embedding"]), "add the scorer 'ds2_curation' for 'rare'"),
    (_stage("cherry_pre_experience", {}, ["ifd"]), "add the scorer 'perplexity' for 'ppl'"),
    (_stage("opencs", {"k": 2}, ["opencs_tags"]), "'label_set', 'opencs_rank', 'opencs_cluster_scores'"),
    (_stage("deita", {"columns": ["quality_rating"], "per_turn": True, "k": 2}, ["embedding"]),
     "add the scorer 'judge' with a prefix for 'quality_rating_turns'"),
    (_stage("top_k", {"k": 2, "where": {"ifd": {"lt": 1.0}}}, ["length"]), "add the scorer 'guard_lm' or 'ifd' for 'ifd'"),      # both write an ifd column
    (_stage("top_k", {"k": 2}, ["length"], column="resp_tokenz"), "no registered scorer produces 'resp_tokenz'"),
])
def test_validate_checks_the_columns_a_selector_reads(stage, message):
    with pytest.raises(ConfigError, match=re.escape(message)):
        _check_stage(stage)


def test_validate_accepts_columns_the_stage_produces():
    judges = [{"scorer": "judge", "params": {"prefix": p, "turns": "all"}} for p in ("complexity_", "quality_")]
    deita = _stage("deita", {"columns": ["complexity_rating", "quality_rating"], "per_turn": True, "k": 2}, [])
    _check_stage({**deita, "score": [*judges, {"scorer": "embedding"}]})
    _check_stage(_stage("top_k", {"k": 2, "higher_is_better": True}, ["length"], column="resp_chars"))


def test_validate_rejects_top_k_without_a_direction_before_scoring(tmp_path):
    """perplexity has no fixed direction (higher_is_better None): top_k on it must say which end to keep."""
    line = _validate_error(tmp_path, _recipe(tmp_path, _stage("top_k", {"ratio": 0.1}, ["perplexity"])))
    assert "Selector 'top_k' on column 'ppl': say which end to keep with higher_is_better: true|false" in line


@pytest.mark.parametrize("stage", [
    _stage("top_k", {"k": 2}, ["length", "perplexity"]),                # the last scorer is the stage's result
    _stage("top_k", {"k": 2}, ["perplexity"], column="ppl"),
])
def test_validate_rejects_a_ranking_without_a_direction(stage):
    with pytest.raises(ConfigError, match="say which end to keep"):
        _check_stage(stage)


@pytest.mark.parametrize("stage", [
    _stage("top_k", {"k": 2, "higher_is_better": False}, ["perplexity"]),   # the recipe gives the direction
    _stage("top_k", {"k": 2}, ["perplexity", "length"]),                    # the main scorer has one
    _stage("middle", {"k": 2}, ["perplexity"]),                             # the rule has its own
    _stage("threshold", {"lt": 20.0}, ["perplexity"]),
])
def test_validate_accepts_a_ranking_with_a_direction(stage):
    _check_stage(stage)


def test_a_ranked_column_takes_the_direction_of_the_scorer_whose_main_column_it_is():
    """top_k on another scorer's main column follows that scorer's direction, not the stage's last scorer's; on a
    column that is no scorer's main column (here length's resp_chars) the recipe must say which end to keep."""
    from thresher.pipeline.config import SelectConfig

    directions = {"resp_tokens": True, "ifd": None}
    sel = SelectConfig("top_k", column="resp_tokens", params={"k": 2})
    assert sel.direction("ifd", directions) is True and SelectConfig("top_k", params={"k": 2}).direction(
        "ifd", directions) is None
    _check_stage(_stage("top_k", {"k": 2}, ["length", "perplexity"], column="resp_tokens"))
    with pytest.raises(ConfigError, match="say which end to keep"):
        _check_stage(_stage("top_k", {"k": 2}, ["perplexity", "length"], column="resp_chars"))
    scores = {"id": ["a", "b", "c"], "resp_tokens": np.array([5.0, 1.0, 9.0]), "ifd": np.array([0.1, 0.9, 0.5])}
    assert sel.apply(pd.DataFrame(scores), main="ifd", higher_is_better=sel.direction("ifd", directions)).tolist() \
        == [2, 0]                                       # the longest two, whatever ifd's direction


@pytest.mark.parametrize("recipe", sorted(p.stem for p in PACKAGED.glob("*.yaml")))
def test_packaged_recipes_declare_the_columns_their_selectors_read(recipe):
    load_recipe(recipe)                     # columns, values and directions of every stage


# ------------------------------------------------------------------------------------ conformance
def _float_column(rng, ties: bool) -> np.ndarray:
    if ties:                                        # two values, each shared by many rows
        return rng.choice([0.5, 3.0], size=N)
    # distinct: IFD-like values below 1 and DS2-like buckets 2..5
    return rng.permutation(np.r_[np.sort(rng.uniform(0.05, 0.95, N - 4)), 2.0, 3.0, 4.0, 5.0])


def _opencs_columns(rng) -> dict:
    label_sets = [sorted({int(rng.integers(3)), int(rng.integers(3))}) for _ in range(N)]
    cluster_scores = [{str(c): float(rng.integers(0, 101)) for c in ls} for ls in label_sets]
    return {"label_set": [json.dumps(ls) for ls in label_sets], "opencs_rank": rng.permutation(N),
            "opencs_cluster_scores": [json.dumps(d) for d in cluster_scores]}


def synthetic_table(sel, seed: int = 0, ties: bool = False) -> pd.DataFrame:
    """A score table with exactly the columns ``sel`` declares (for main column MAIN), built by kind:
    its embedding column (d = 4 vectors), ``*_turns`` (per-turn lists), OpenCS's columns, else scores."""
    rng = np.random.default_rng(seed)
    table = {"id": [f"r{i}" for i in range(N)]}
    embedding = getattr(sel.params, "embedding", None)
    opencs = _opencs_columns(rng)
    for col in sel.inputs(MAIN):
        if col == embedding:
            table[col] = list(rng.normal(size=(N, 4)).astype(np.float32))
        elif col.endswith("_turns"):
            table[col] = [np.full(int(rng.integers(1, 3)), v) for v in _float_column(rng, ties)]
        elif col in opencs:
            table[col] = opencs[col]
        else:
            table[col] = _float_column(rng, ties)
    return pd.DataFrame(table)


def _select(sel, table) -> np.ndarray:
    return sel.select(table, main=MAIN, higher_is_better=True)


def _assert_indices(idx, n):
    assert isinstance(idx, np.ndarray) and idx.dtype == np.int64 and idx.ndim == 1, (type(idx), idx)
    assert ((idx >= 0) & (idx < n)).all() and len(np.unique(idx)) == len(idx), idx


@pytest.mark.parametrize("name", NAMES)
def test_conformance_indices_in_range_unique_and_deterministic(name):
    sel = make_selector(name, params=example(name))
    for ties in (False, True):
        table = synthetic_table(sel, ties=ties)
        assert set(table.columns) == {"id", *sel.inputs(MAIN)}
        if name in NEEDS_ANCHOR:
            with pytest.raises(ConfigError, match="anchor"):
                _select(sel, table)
            continue
        idx = _select(sel, table)
        _assert_indices(idx, len(table))
        np.testing.assert_array_equal(_select(sel, table.copy()), idx)        # equal scores: same order again
        np.testing.assert_array_equal(_select(make_selector(name, params=example(name)), table), idx)


@pytest.mark.parametrize("name", sorted(set(NAMES) - ORDER_DEPENDENT - NEEDS_ANCHOR))
def test_conformance_same_rows_on_a_permuted_table(name):
    sel = make_selector(name, params=example(name))
    table = synthetic_table(sel, seed=1)
    perm = np.random.default_rng(2).permutation(len(table))
    shuffled = table.iloc[perm].reset_index(drop=True)
    chosen = set(table["id"].to_numpy()[_select(sel, table)])
    assert chosen and chosen == set(shuffled["id"].to_numpy()[_select(sel, shuffled)])


@pytest.mark.parametrize("name", NAMES)
def test_conformance_a_missing_input_column_is_named(name):
    sel = make_selector(name, params=example(name))
    table = synthetic_table(sel)
    for col in sel.inputs(MAIN):
        with pytest.raises(ConfigError, match=f"needs score column {col!r}"):
            _select(sel, table.drop(columns=col))


@pytest.mark.parametrize("name", sorted(set(NAMES) - NEEDS_ANCHOR))
def test_conformance_the_declared_direction(name):
    """needs_direction() tells the truth: a selector declaring no need ignores the stage's direction; one
    declaring it fails without one (what validate reports early) and follows it."""
    sel = make_selector(name, params=example(name))
    table = synthetic_table(sel)
    pick = {hib: lambda hib=hib: sel.select(table, main=MAIN, higher_is_better=hib) for hib in (None, True, False)}
    if not sel.needs_direction():
        np.testing.assert_array_equal(pick[True](), pick[None]())
        np.testing.assert_array_equal(pick[False](), pick[None]())
        return
    with pytest.raises(ConfigError, match="say which end to keep"):
        pick[None]()
    assert set(pick[True]()).isdisjoint(pick[False]())     # distinct scores, a small budget: opposite ends


def test_ls_describes_every_selector(capsys):
    assert main(["ls", "selectors"]) == 0
    lines = {x.split()[0]: x for x in capsys.readouterr().out.splitlines()[1:]}
    assert set(lines) == set(NAMES)
    for name in NAMES:
        assert SELECTORS.get(name).describe() and SELECTORS.get(name).describe() in lines[name]
