"""The gradient scorers' per-shard passes through ``Scorer.map_shards`` on workers that are not this scorer.

``PickledRunner`` stands in for remote workers without Ray: every (fn, item, shared) crosses pickle, runs on one
of two worker scorers built from the scorer's name and parameters, each set up with its own ModelContext and
its own (worker-local) cache_root, items run in reverse order and results come back pickled, in item order.
On a tiny random Llama with a LoRA run, store shards of 3 units (several shards per pool): LESS and DataInf
give the same values as the inline run, LESS resumes its pool store with only the missing shard computed, the
sharded DataInf equals the one-shard run, CLUES's worker copy reproduces the driver's values, and workers write
nothing to their own cache folders.
"""

from __future__ import annotations

import dataclasses
import json
import pickle

import numpy as np
import pytest

from samples import ALPACA
from thresher.data import load
from thresher.errors import ConfigError
from thresher.models.context import ModelContext
from thresher.scoring import gradient_base, make_scorer
from thresher.scoring.base import ShardRunner

SHARD = 3                                                     # units per store / pass shard in these tests
LONG = {"instruction": "Summarise: " + "word " * 400, "input": "", "output": "Words."}   # prompt fills max_length


@pytest.fixture(scope="module", autouse=True)
def _one_thread(one_thread):
    yield


@pytest.fixture(autouse=True)
def _small_shards(monkeypatch):
    monkeypatch.setattr(gradient_base, "POOL_SHARD", SHARD)


def write_jsonl(path, records):
    path.write_text("".join(json.dumps(r) + "\n" for r in records), encoding="utf-8")
    return str(path)


@pytest.fixture(scope="module")
def env(tmp_path_factory):
    """A tiny random Llama, a LoRA run on it (r=4 on q,v, checkpoints at steps 2 and 4), a 9-row pool with
    one unscorable row (3 shards), two target/validation files."""
    pytest.importorskip("peft")
    from tiny_model import save_tiny_llama
    from thresher.training.sft import train

    root = tmp_path_factory.mktemp("shards")
    model = save_tiny_llama(root / "model")
    train(write_jsonl(root / "train.jsonl", ALPACA), out=root / "run", model=str(model), lora_r=4, lora_alpha=16,
          lora_dropout=0.0, target_modules=["q_proj", "v_proj"], template="alpaca", add_eos=False, max_length=128,
          max_steps=4, save_steps=2, batch_size=4, logging_steps=1, lr=5e-3, device="cpu", dtype="float32", seed=0)
    return {"model": str(model), "run": str(root / "run"),
            "pool": load(write_jsonl(root / "pool.jsonl", ALPACA[:4] + [LONG] + ALPACA[4:8])),
            "t1": write_jsonl(root / "t1.jsonl", ALPACA[8:10]), "t2": write_jsonl(root / "t2.jsonl", ALPACA[10:12])}


def new_ctx(env) -> ModelContext:
    return ModelContext(env["model"], device="cpu", dtype="float32")


class PickledRunner(ShardRunner):
    """Two simulated remote workers (see the module doc); ``calls`` records (fn name, items) of each map."""

    def __init__(self, env, root, n_workers: int = 2):
        self.env, self.root, self.n_workers = env, root, n_workers
        self.workers = None
        self.calls = []

    def worker_scorers(self, scorer):
        """Built once, like long-lived actors: same name and parameters, their own models and cache folders."""
        if self.workers is None:
            self.workers = []
            for w in range(self.n_workers):
                copy = make_scorer(scorer.name, **dataclasses.asdict(scorer.params))
                copy.cache_root = self.root / f"worker-{w}"
                copy.setup(new_ctx(self.env))
                self.workers.append(copy)
        return self.workers

    def map(self, scorer, fn, items, **shared):
        workers = self.worker_scorers(scorer)
        sent = [pickle.dumps((fn, item, shared)) for item in items]
        self.calls.append((fn.__name__, [pickle.loads(s)[1] for s in sent]))
        back = {}
        for k in reversed(range(len(sent))):                     # another order than the items'
            f, item, kw = pickle.loads(sent[k])
            back[k] = pickle.dumps(f(workers[k % len(workers)], item, **kw))
        for k in range(len(sent)):
            yield pickle.loads(back[k])

    def worker_files(self) -> list:
        return [p for p in self.root.glob("worker-*/**/*") if p.is_file()]


def score(env, name, cache_root, runner=None, **params):
    """The scorer's columns on the pool, as the engine runs a dataset-scope scorer (setup, then one call)."""
    sc = make_scorer(name, checkpoints=env["run"], **params)
    sc.cache_root = cache_root
    if runner is not None:
        sc.runner = runner
    sc.setup(new_ctx(env))
    return sc.score_batch(env["pool"])


def summary(calls) -> list:
    """(fn name, [(units, checkpoint steps) of each item, or None]) of each map call."""
    return [(name, [None if item is None else (len(item[0]), [ck.step for ck in item[1]]) for item in items])
            for name, items in calls]


def store_shards(cache_root) -> dict:
    """{store/shard file name: path} of the pool stores under a cache folder."""
    return {p.relative_to(cache_root).as_posix(): p
            for p in sorted((cache_root / "grads").glob("*-pool-*/shard-*.npy"))}


# ------------------------------------------------------------------------------------------------ LESS
def test_less_on_workers_equals_inline_and_resumes_missing_store_shards(env, tmp_path, monkeypatch):
    kw = dict(target=[env["t1"], env["t2"]], proj_dim=64)
    inline = score(env, "less", tmp_path / "inline", **kw)
    runner = PickledRunner(env, tmp_path / "workers")
    remote = score(env, "less", tmp_path / "driver", runner, **kw)
    for col in ("less", "less_task", "status"):
        np.testing.assert_array_equal(remote[col], inline[col])
    assert np.isnan(inline["less"][4]) and inline["status"][4] == "prompt fills max_length"
    assert np.isfinite(np.delete(inline["less"], 4)).all() and np.ptp(np.delete(inline["less"], 4)) > 0
    # The pool stores: 2 checkpoints x 3 shards, written by the driver, equal to the inline run's.
    a, b = store_shards(tmp_path / "inline"), store_shards(tmp_path / "driver")
    assert len(b) == 6 and a.keys() == b.keys()
    for key in a:
        np.testing.assert_array_equal(np.load(a[key]), np.load(b[key]))
    # Calls: the parameter layout, the pool's 3 shards (both checkpoints each), the 4 target rows in 2 shards.
    assert summary(runner.calls) == [("selection_layout", [None]), ("shard_features", [(3, [2, 4])] * 3),
                                     ("shard_features", [(3, [2, 4]), (1, [2, 4])])]
    assert not runner.worker_files()                          # workers wrote nothing, not even to their own cache
    # The stores' shards in place: equal to one shard holding the whole pool (batches differ: float noise).
    monkeypatch.setattr(gradient_base, "POOL_SHARD", 256)
    whole = score(env, "less", tmp_path / "whole", **kw)
    np.testing.assert_allclose(inline["less"], whole["less"], atol=1e-5)
    monkeypatch.setattr(gradient_base, "POOL_SHARD", SHARD)

    # A lost store shard (one checkpoint's): the rerun computes that shard only, for that checkpoint only.
    lost = sorted(b)[-2]                                      # the last checkpoint's store, shard 1
    before = np.load(b[lost])
    b[lost].unlink()
    mtimes = {k: p.stat().st_mtime_ns for k, p in b.items() if k != lost}
    runner2 = PickledRunner(env, tmp_path / "workers2")
    again = score(env, "less", tmp_path / "driver", runner2, **kw)
    assert summary(runner2.calls) == [("selection_layout", [None]), ("shard_features", [(3, [4])])]
    assert {k: p.stat().st_mtime_ns for k, p in store_shards(tmp_path / "driver").items() if k != lost} == mtimes
    np.testing.assert_array_equal(np.load(b[lost]), before)
    np.testing.assert_array_equal(again["less"], inline["less"])


# ------------------------------------------------------------------------------------------------ DataInf
@pytest.mark.parametrize("gradients", ["recompute", "store"])
def test_datainf_on_workers_equals_inline_and_one_shard(env, tmp_path, monkeypatch, gradients):
    kw = dict(validation=[env["t1"], env["t2"]], which="all", gradients=gradients)
    inline = score(env, "datainf", tmp_path / "inline", **kw)
    runner = PickledRunner(env, tmp_path / "workers")
    remote = score(env, "datainf", tmp_path / "driver", runner, **kw)
    for col in ("datainf", "datainf_influence", "status"):
        np.testing.assert_array_equal(remote[col], inline[col])
    assert np.isnan(inline["datainf"][4]) and np.ptp(np.delete(inline["datainf"], 4)) > 0
    names = [name for name, _ in runner.calls]
    passes = ["datainf_stats", "datainf_sums", "datainf_scores"] if gradients == "recompute" else ["shard_features"]
    assert names == ["selection_layout", "validation_sums", *passes]
    assert all(len(items) == 3 for name, items in runner.calls if name in passes)        # the pool's 3 shards
    assert not runner.worker_files()
    # The driver's combine over shards equals one shard holding the whole pool (batches differ: float noise).
    monkeypatch.setattr(gradient_base, "POOL_SHARD", 256)
    whole = score(env, "datainf", tmp_path / "whole", **kw)
    np.testing.assert_allclose(inline["datainf"], whole["datainf"], rtol=1e-4, atol=1e-7 * np.nanmax(
        np.abs(whole["datainf"])))


# ------------------------------------------------------------------------------------------------ CLUES
def test_clues_worker_copy_reproduces_the_driver_values(env, tmp_path):
    """CLUES is row scope: on Ray each worker's copy sets itself up and computes the validation means in its
    own cache folder. They are the same numbers as the driver-side scorer's, and so are its scores."""
    kw = dict(checkpoints=env["run"], validation=[env["t1"], env["t2"]], batch_size=3)
    here = make_scorer("clues", **kw)
    here.cache_root = tmp_path / "driver"
    here.setup(new_ctx(env))
    rows = env["pool"].subset(range(6))
    mine = here.score_batch(rows)
    copy = pickle.loads(pickle.dumps(make_scorer("clues", **dataclasses.asdict(here.params))))
    copy.cache_root = tmp_path / "worker"
    copy.setup(new_ctx(env))
    theirs = copy.score_batch(rows)
    for col in ("clues", "clues_own", "status"):
        np.testing.assert_array_equal(theirs[col], mine[col])
    a, b = sorted((tmp_path / "driver" / "grads").glob("clues-val-*.npy")), sorted(
        (tmp_path / "worker" / "grads").glob("clues-val-*.npy"))
    assert len(a) == 2 and [p.name for p in a] == [p.name for p in b]
    for x, y in zip(a, b):
        np.testing.assert_array_equal(np.load(x), np.load(y))


# ------------------------------------------------------------------------------------------------ errors
def test_a_worker_whose_run_differs_from_the_drivers_stops_with_the_reason(env, tmp_path):
    sc = make_scorer("less", checkpoints=env["run"], target=[env["t1"]], proj_dim=8)
    sc.cache_root = tmp_path
    sc.setup(new_ctx(env))
    ck = dataclasses.replace(sc.run().checkpoints[-1], fingerprint="0" * 64)     # retrained on the driver's side
    units, _ = sc.units(env["pool"].subset(range(2)), sc.ctx.lm().tokenizer_only())
    with pytest.raises(ConfigError, match="checkpoint-4 of .*run.* other content on this worker"):
        gradient_base.shard_features(sc, (units, (ck,)), adam=True, dtype="float32")
