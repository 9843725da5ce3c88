"""Merge methods by registry (no model, no training run): every registered method is a MergeMethod that merges
synthetic LoRA factors into the shapes it declares; the CLI's --method choices, merge_states and the recipe
check read MERGE_METHODS, so one registration makes a new method usable everywhere. PEFT parity of the real
methods is tests/test_merge.py's."""

from __future__ import annotations

import argparse

import pytest
import torch

from thresher.errors import ConfigError
from thresher.pipeline.recipe import check_recipe
from thresher.registry import Registry
from thresher.training import merge
from thresher.training.merge_methods import MERGE_METHODS, MergeMethod, ones

R, IN, OUT = 2, 5, 3
KEYS = ("base_model.model.layers.0.q_proj.lora_A.weight", "base_model.model.layers.0.q_proj.lora_B.weight")

# Registered only in a copy of the registry (test_a_new_method_is_one_registration): client 0's adapter as is.
FIRST = MergeMethod(lambda a, b, weights, scalings, density: (a[0], b[0]), ones, folds_scaling=False)


def _states(n: int, seed: int = 0, ranks=None) -> list[dict]:
    g = torch.Generator().manual_seed(seed)
    ranks = ranks or [R] * n
    return [{KEYS[0]: torch.randn(r, IN, generator=g), KEYS[1]: torch.randn(OUT, r, generator=g)} for r in ranks]


def _recipe(method: str) -> dict:
    gt = {"name": "s", "score": [{"scorer": "length"}], "select": {"selector": "global_threshold"}}
    return {"name": "t", "data": {"path": "x.jsonl"}, "stages": [gt],
            "collaborate": {"train": {"preset": "clues"}, "merge": {"method": method}}}


def _cli_methods() -> tuple:
    p = argparse.ArgumentParser()
    merge.add_merge_arguments(p)
    return tuple(next(a for a in p._actions if a.dest == "method").choices)


@pytest.mark.parametrize("name", MERGE_METHODS.names())
def test_every_registered_method_merges_factors_into_its_declared_shape(name):
    method = MERGE_METHODS.get(name)
    assert isinstance(method, MergeMethod) and callable(method.combine) and callable(method.default_weights)
    ranks = [R, R] if method.same_rank else [R, R + 1]
    states = _states(2, ranks=ranks)
    merged = merge.merge_states(states, [0.5, 1.5], method=name, density=0.5, scalings=[2.0, 2.0])
    rank = R if method.same_rank else sum(ranks)
    assert merged[KEYS[0]].shape == (rank, IN) and merged[KEYS[1]].shape == (OUT, rank)
    assert all(torch.isfinite(t).all() and t.dtype == torch.float32 for t in merged.values())


def test_fedavg_and_cat_by_hand():
    a = _states(2)
    fed = merge.merge_states(a, [1.0, 3.0], method="fedavg")
    for k in KEYS:
        assert torch.allclose(fed[k], (a[0][k] + 3 * a[1][k]) / 4, atol=1e-6)
    cat = merge.merge_states(a, [0.5, 0.5], method="cat", scalings=[2.0, 2.0])
    update = cat[KEYS[1]] @ cat[KEYS[0]]                                    # exact: sum_i w_i s_i B_i A_i
    assert torch.allclose(update, sum(s[KEYS[1]] @ s[KEYS[0]] for s in a), atol=1e-5)


def test_the_cli_and_the_recipe_check_read_the_registry():
    assert _cli_methods() == tuple(MERGE_METHODS.names()) == ("ties", "linear", "cat", "fedavg")
    with pytest.raises(ConfigError, match=r"merge: The 'method' parameter of merge_runs must be one of ties, linear, "
                                          r"cat, fedavg. Got 'tie'. Did you mean 'ties'\?"):
        check_recipe(_recipe("tie"), "<test>")


def test_a_new_method_is_one_registration(monkeypatch):
    reg = Registry("merge method")
    for name in MERGE_METHODS.names():
        reg.register(name, MERGE_METHODS.target(name))
    reg.register("first", "test_merge_methods:FIRST")
    monkeypatch.setattr(merge, "MERGE_METHODS", reg)

    assert _cli_methods()[-1] == "first"
    merge.check_merge_options("first", 0.2)
    check_recipe(_recipe("first"), "<test>")
    with pytest.raises(ConfigError, match="Did you mean 'first'"):
        merge.check_merge_options("frist", 0.2)
    states = _states(3, seed=1)
    merged = merge.merge_states(states, [1.0, 1.0, 1.0], method="first")
    assert all(torch.equal(merged[k], states[0][k]) for k in KEYS)
