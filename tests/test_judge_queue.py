"""The API judge's request queue has no per-shard barrier (issue 15, part 5).

The loopback server (tests/fake_openai.py) records the number of requests in flight at every change.
With ``concurrency`` C and a fixed server latency, the count must reach C, never exceed it, and stay at C
until the last request has been sent (the queue has drained): briefly one below while a worker turns a
reply into its next request, never for as long as a request takes, which is what a shard waiting for its
slowest request looks like. Checked for several ``chat`` calls running at once on one backend, and for
``score_dataset``, whose local executor scores ``shards_in_flight`` shards at once in threads.
"""

from __future__ import annotations

import json
import threading
import time
from dataclasses import dataclass

import numpy as np
import pandas as pd
import pytest
import yaml

from fake_openai import FakeOpenAI, prompt_hash, rating_of
from samples import ALPACA
from thresher.data import load
from thresher.engine.base import LocalExecutor, Task
from thresher.engine.scoring import score_dataset
from thresher.models.api import OpenAIChat
from thresher.models.chat import ChatRequest
from thresher.models.context import ModelContext
from thresher.scoring import make_scorer
from thresher.scoring.base import Scorer
from thresher.scoring.judge import sample_fields
from thresher.scoring.prompts import load_prompt

C, LATENCY = 8, 0.2
PROMPT = {"name": "ten", "parser": "first_number", "scale": [1, 10],
          "user": "Rate this response from 1 to 10.\nInstruction: {{instruction}} {{input}}\nResponse: {{response}}"}


@pytest.fixture(autouse=True)
def _no_real_key(monkeypatch):
    monkeypatch.delenv("OPENAI_API_KEY", raising=False)


def req(prompt: str) -> ChatRequest:
    return ChatRequest.of([{"role": "user", "content": prompt}], max_tokens=16)


def queue_profile(timeline: list[tuple[float, int]], level: int, long: float) -> dict:
    """Over the stretch from the first time ``level`` requests are in flight to the last arrival (``span``
    seconds): the time-weighted ``mean`` in flight, the fraction of the time ``below`` ``level``, and
    ``long_dips``: how many times it stayed below ``level`` for ``long`` seconds or more; plus the ``max``
    ever in flight."""
    counts = [n for _, n in timeline]
    assert level in counts, f"never {level} requests in flight; at most {max(counts, default=0)}"
    start = counts.index(level)
    end = max(i for i in range(1, len(counts)) if counts[i] > counts[i - 1])      # the last arrival
    t, n = np.array([t for t, _ in timeline[start:end + 1]]), np.array(counts[start:end])
    dt = np.diff(t)                                           # n[i] in flight for dt[i] seconds
    full = np.flatnonzero(n >= level)                         # dips lie between consecutive full stretches
    gaps = t[full[1:]] - t[full[:-1] + 1]
    span = t[-1] - t[0]
    return {"max": max(counts), "mean": float(n @ dt / span), "below": float(dt[n < level].sum() / span),
            "long_dips": int((gaps >= long).sum() + (t[-1] - t[full[-1] + 1] >= long)), "span": float(span)}


def check_queue(srv: FakeOpenAI, n_sent: int) -> dict:
    """The in-flight property and the throughput of ``n_sent`` requests over the server's busy time."""
    timeline = srv.inflight_timeline()
    p = queue_profile(timeline, C, long=LATENCY / 2)
    assert p["max"] == C, p                                   # reached, never exceeded
    # At C until the queue drained: below it only for the moment a worker turns a reply into its next
    # request (a few ms; a few % of the time). A shard waiting for its slowest request would leave it below
    # C for about a request's latency at every shard boundary (31 here); a busy machine may stall once.
    assert p["mean"] >= 0.9 * C and p["long_dips"] <= 2, p
    busy = timeline[-1][0] - timeline[0][0]
    assert n_sent / busy >= 0.9 * C / LATENCY, (n_sent, busy)
    return p


# --------------------------------------------------------------------------- backend: concurrent calls

def test_concurrent_chat_calls_share_one_bounded_queue(tmp_path):
    sizes = (16, 24, 32, 24)                                  # 96 distinct prompts = 12 rounds of C
    calls = [[f"call {c} prompt {i}" for i in range(n)] for c, n in enumerate(sizes)]
    calls[1] += calls[0][:6]                                  # asked by two running calls: sent once
    with FakeOpenAI(latency=LATENCY) as srv:
        backend = OpenAIChat("fake-judge", base_url=srv.url, concurrency=C, cache_path=tmp_path / "c.sqlite")
        results, errors = {}, []

        def run(c):
            try:
                results[c] = backend.chat([req(p) for p in calls[c]])
            except Exception as e:                            # pragma: no cover - reported below
                errors.append(e)

        threads = [threading.Thread(target=run, args=(c,)) for c in range(len(calls))]
        for t in threads:
            t.start()
        for t in threads:
            t.join()
        assert not errors
        check_queue(srv, 96)
        billed = dict(srv.billed)
    assert billed == {prompt_hash(p): 1 for c in calls for p in c}
    for c, prompts in enumerate(calls):
        assert [r.text for r in results[c]] == [srv.expected(p) for p in prompts]
    s = backend.stats()
    assert (s["requests"], s["calls"], s["failed"]) == (102, 96, 0)
    assert s["cached"] + s["extra"]["deduplicated"] == 6      # joined while in flight, or cached by then
    assert s["prompt_tokens"] == sum(len(p.split()) for p in {p for c in calls for p in c})   # paid once


def test_rate_limit_pause_holds_every_concurrent_call():
    with FakeOpenAI(latency=0.02, faults={"a 0": ["429:0.6"]}) as srv:
        backend = OpenAIChat("fake-judge", base_url=srv.url, concurrency=4, backoff_base=0.01)
        threads = [threading.Thread(target=backend.chat, args=([req(f"{c} {i}") for i in range(30)],))
                   for c in ("a", "b")]
        for t in threads:
            t.start()
        for t in threads:
            t.join()
        records = list(srv.records)
    first = next(r for r in records if r["prompt"] == prompt_hash("a 0") and r["attempt"] == 0)
    assert first["status"] == 429
    assert not [r for r in records if first["t_reply"] + 0.05 < r["t_arrival"] < first["t_reply"] + 0.55]
    assert sum(r["billed"] for r in records) == 60


# --------------------------------------------------------------------------- scorer and engine

def _dataset(tmp_path, n: int):
    data = tmp_path / "data.json"
    data.write_text(json.dumps([{**ALPACA[i % len(ALPACA)],
                                 "instruction": f"{ALPACA[i % len(ALPACA)]['instruction']} (#{i})"}
                                for i in range(n)]))
    prompt_file = tmp_path / "ten.yaml"
    prompt_file.write_text(yaml.safe_dump(PROMPT))
    ds, prompt = load(data), load_prompt(str(prompt_file))
    users = [prompt.render(**sample_fields(m, meta, "last"), dimension="accuracy")[-1]["content"]
             for m, meta in zip(ds.messages, ds.meta)]
    return ds, str(prompt_file), users


def _ctx(srv: FakeOpenAI, tmp_path, name: str) -> ModelContext:
    return ModelContext("bundled", device="cpu", judge={
        "kind": "api", "model": "fake-judge", "base_url": srv.url, "concurrency": C,
        "cache": str(tmp_path / f"{name}.sqlite")})


def test_judge_scorer_asks_for_enough_shards_in_flight(tmp_path):
    sc = make_scorer("judge", prompt="alpagasus", mode="generate")
    assert sc.shards_in_flight(3) == 1                        # no context yet
    sc.setup(ModelContext("bundled", device="cpu"))
    assert sc.shards_in_flight(3) == 1                        # local judge: one shard at a time
    sc.setup(ModelContext("bundled", device="cpu", judge={"kind": "api", "model": "m", "concurrency": 64}))
    assert [sc.shards_in_flight(s) for s in (1, 64, 512, 100, 128, 127)] == [64, 3, 2, 3, 2, 3]
    tags = make_scorer("opencs_tags")
    tags.setup(ModelContext("bundled", device="cpu", judge={"kind": "api", "model": "m", "concurrency": 8}))
    assert tags.shards_in_flight(3) == 7


@dataclass
class _NoParams:
    pass


class _SlowScorer(Scorer):
    """Shard i (rows = i): every third shard ends late, shard 7 raises; one token per shard."""

    name, Params, uses = "slow", _NoParams, ()

    def shards_in_flight(self, shard_size):
        return 3

    def score_batch(self, rows):
        time.sleep(0.05 * (rows % 3 == 0))
        if rows == 7:
            raise RuntimeError("shard 7 failed")
        self.tokens_processed += 1
        self.transient_failures += rows == 5
        return {"n": np.array([rows])}


def test_threaded_shards_come_back_in_order_and_raise_in_turn():
    sc = _SlowScorer()
    got = LocalExecutor().run(sc, None, "key", (Task(i, i, None) for i in range(10)), shard_size=1)
    assert [(t.unit, int(r.cols["n"][0]), r.tokens, r.failures) for t, r in (next(got) for _ in range(7))] == \
        [(i, i, 1, int(i == 5)) for i in range(7)]
    with pytest.raises(RuntimeError, match="shard 7 failed"):
        next(got)
    # The copies did the work and counted it: the scorer's own counters are the engine's to add to.
    assert (sc.tokens_processed, sc.transient_failures) == (0, 0)


def test_score_dataset_keeps_the_queue_full_across_shard_boundaries(tmp_path):
    """Needs the engine to score ``scorer.shards_in_flight(shard_size)`` shards at once (issue 15, part 5)."""
    ds, prompt_file, users = _dataset(tmp_path, 96)
    with FakeOpenAI(latency=LATENCY) as srv:
        sc = make_scorer("judge", prompt=prompt_file, mode="generate")
        out = score_dataset(ds, sc, _ctx(srv, tmp_path, "engine"), shard_size=3, cache_root=tmp_path / "engine")
        check_queue(srv, 96)
        assert sum(srv.billed.values()) == 96 and out.attrs["cache"]["computed"] == 96
        n_sent = len(srv.records)
        again = score_dataset(ds, make_scorer("judge", prompt=prompt_file, mode="generate"),
                              _ctx(srv, tmp_path, "engine"), shard_size=3, cache_root=tmp_path / "engine")
        assert again.attrs["cache"]["cached"] == 96 and len(srv.records) == n_sent   # every shard committed

        srv.latency = 0.0                                     # the sequential reference: one shard at a time
        ref_scorer = make_scorer("judge", prompt=prompt_file, mode="generate")
        ref_scorer.shards_in_flight = lambda shard_size: 1
        ref = score_dataset(ds, ref_scorer, _ctx(srv, tmp_path, "ref"), shard_size=3, cache_root=tmp_path / "ref")
    pd.testing.assert_frame_equal(out, ref)
    pd.testing.assert_frame_equal(again, ref)
    np.testing.assert_array_equal(out["rating"].to_numpy(), [float(rating_of(u)) for u in users])
