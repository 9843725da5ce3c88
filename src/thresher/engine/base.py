"""The executor contract and the local executor.

An executor takes the shards the cache lacks (``Task``) and yields each one's ``ShardResult`` as it
finishes; the engine (``thresher.engine.scoring``) writes the cache, so only the driver needs the cache
folder and a shard is written exactly once. ``runner(scorer, ctx, key)`` gives the ``ShardRunner`` through
which a dataset-scope scorer sends its per-shard passes (``Scorer.map_shards``). ``ExecutorConfig`` holds
the options (``thresher.engine.executors.make_executor`` builds the executor they describe).
"""

from __future__ import annotations

import copy
import os
from collections import deque
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass

import pandas as pd

from thresher.config import choice, option
from thresher.data.table import Dataset
from thresher.errors import ConfigError
from thresher.progress import metered
from thresher.scoring.base import Scorer, ShardRunner

EXECUTORS = ("local", "ray")


@dataclass
class Task:
    unit: object                      # the engine's shard (rows a..b and its cache file)
    rows: Dataset                     # the shard's rows, materialised
    inputs: pd.DataFrame | None       # earlier score columns of these rows (scorers with required columns)


@dataclass
class ShardResult:
    cols: dict                        # column -> values, one per row of the shard
    tokens: int = 0                   # tokens the scorer processed (for tokens/s and the compute ledger)
    failures: int = 0                 # rows whose result is not final (transient judge failures)
    passes: int = 0                   # forward passes (batches) the models ran for this shard


def score_shard(scorer: Scorer, rows: Dataset, inputs: pd.DataFrame | None) -> ShardResult:
    """Score one shard with ``scorer`` (its counters are left as they were). Tokens: the scorer's own count
    where it keeps one (ifd, perplexity, the judge's prompt + completion tokens), else what the models
    counted (``thresher.progress.metered``: embedders, gradient passes)."""
    tokens, failures = scorer.tokens_processed, scorer.transient_failures
    with metered() as usage:
        cols = scorer.score_batch(rows, inputs) if inputs is not None else scorer.score_batch(rows)
    res = ShardResult(cols, scorer.tokens_processed - tokens or usage.tokens, scorer.transient_failures - failures,
                      usage.passes)
    scorer.tokens_processed, scorer.transient_failures = tokens, failures
    return res


@dataclass
class ExecutorConfig:
    """Where the shards of the expensive passes run (CLI: --executor, --workers, --devices, --ray-address)."""

    executor: str = choice("local", *EXECUTORS, help="local: this process; ray: Ray actors on this machine or "
                                                     "the cluster at --ray-address / $RAY_ADDRESS")
    workers: int | None = option(None, help="ray: worker processes (CPU threads are split between them; "
                                            "default: one per device with --devices, else 2)")
    devices: list | None = option(None, help="ray: one worker per device, e.g. cuda:0,cuda:1 (each worker "
                                                   "takes one GPU)")
    ray_address: str | None = option(None, help="ray: address of an existing cluster (default $RAY_ADDRESS; "
                                                "unset: start a local one)")
    threads_per_worker: int | None = option(None, help="ray: CPU threads of each worker (default: this machine's "
                                                       "cores / workers, at least 1)")

    def check(self, owner: str = "the run") -> None:
        if self.executor not in EXECUTORS:
            raise ConfigError(f"The 'executor' option of {owner} must be one of {', '.join(EXECUTORS)}. "
                              f"Got {self.executor!r}.")
        for name in ("workers", "threads_per_worker"):
            v = getattr(self, name)
            if v is not None and (isinstance(v, bool) or not isinstance(v, int) or v < 1):
                raise ConfigError(f"The {name!r} option of {owner} must be an int >= 1. Got {v!r}.")
        if self.executor == "local" and (self.workers or self.device_list() or self.ray_address):
            raise ConfigError(f"The workers, devices and ray_address options of {owner} need the ray executor "
                              "(--executor ray).")

    def device_list(self) -> list[str]:
        d = self.devices
        if d is None or d == "":
            return []
        items = d.split(",") if isinstance(d, str) else d
        out = [str(x).strip() for x in items if str(x).strip()]
        bad = [x for x in out if not (x == "cpu" or x == "cuda" or x.startswith("cuda:"))]
        if bad:
            raise ConfigError(f"The 'devices' option must list devices like cuda:0,cuda:1. Got {bad[0]!r}.")
        return out


@dataclass
class LocalExecutor:
    """Shards scored in this process, one after another; an I/O-bound scorer (``shards_in_flight`` > 1, e.g. an
    API judge) gets that many shards at once in threads, each with a shallow copy of the scorer."""

    name: str = "local"

    def runner(self, scorer: Scorer, ctx, key: str) -> ShardRunner:
        return ShardRunner()

    def run(self, scorer: Scorer, ctx, key: str, tasks, shard_size: int) -> Iterator[tuple[Task, ShardResult]]:
        k = max(1, int(scorer.shards_in_flight(shard_size)))
        if k == 1:
            for t in tasks:
                yield t, score_shard(scorer, t.rows, t.inputs)
            return
        yield from _threaded(scorer, tasks, k)

    def close(self) -> None:
        pass


def _threaded(scorer: Scorer, tasks, k: int) -> Iterator[tuple[Task, ShardResult]]:
    """Up to ``k`` shards scored at once on threads, each on a shallow copy of ``scorer`` (own counters; the
    parameters and the models of its context, e.g. the judge backend whose request queue bounds the requests
    in flight, are shared); results in task order. Up to ``2k`` tasks are handed to the threads ahead of the
    one last yielded, so a thread that ends a shard starts the next at once, also while an older shard is
    still running or the engine is writing one. A shard's error is raised in its turn; no new shard starts."""
    todo, held = iter(tasks), deque()               # held: (task, future), in task order
    with ThreadPoolExecutor(max_workers=k, thread_name_prefix="thresher-shard") as pool:
        try:
            while True:
                while len(held) < 2 * k and (t := next(todo, None)) is not None:
                    held.append((t, pool.submit(score_shard, copy.copy(scorer), t.rows, t.inputs)))
                if not held:
                    return
                t, fut = held.popleft()
                yield t, fut.result()
        finally:
            for _, fut in held:
                fut.cancel()


def default_threads(workers: int) -> int:
    """CPU threads per worker when ``workers`` share this machine."""
    return max(1, (os.cpu_count() or 1) // max(workers, 1))
