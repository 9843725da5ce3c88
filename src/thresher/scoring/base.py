"""The scorer contract.

A scorer is a small batched class: a cheap constructor that validates and stores parameters, a lazy
``setup(ctx)`` that takes the models it needs from a shared ``ModelContext``, and one
``score_batch(rows) -> {column: array}`` whose arrays have exactly ``len(rows)`` entries. Class-level
metadata: ``name``, ``version`` (bump whenever the numbers change), ``produces`` (column -> meaning,
range, direction), ``higher_is_better`` (the main column's direction; None where selection picks it).
A row that cannot be scored gets NaN and a reason in its ``status`` column, never a plausible number.

Two extensions:
  - a scorer that reads earlier score columns (ratings, embeddings, tags) names them in
    ``required_columns()`` and receives them as ``score_batch(rows, inputs)`` (a DataFrame aligned
    with ``rows``); the engine hashes those values into the cache key;
  - ``scope = "dataset"`` marks a scorer that needs the whole pool at once (k-NN rareness, DS2
    curation, tag clustering): the engine calls it once with every row, as one cached unit.

Where the work runs: the engine sets ``scorer.runner`` (the executor's ``ShardRunner``). A dataset-scope
scorer with an expensive per-shard pass (gradient features, gradient reductions) sends it through
``self.map_shards(fn, items, **shared)``: ``fn`` is a module-level function ``fn(scorer, item, **shared)``
run where the executor's workers are (this process for the local executor, Ray actors for the ray one),
with a copy of this scorer (same name and parameters) already ``setup`` with that worker's models; the
results come back in the order of ``items``. Items and shared values must pickle (a ``Dataset`` subset, arrays).
Each finished item is reported as progress; the model passes an item ran (``thresher.progress.metered``)
are counted into the shard that called ``map_shards``, on the local and the ray runner alike.
"""

from __future__ import annotations

import dataclasses
from typing import ClassVar

import numpy as np

from thresher.config import build
from thresher.data.table import Dataset
from thresher.models.context import ModelContext
from thresher.progress import reporter


class ShardRunner:
    """Runs a scorer's per-shard function over items, in this process (the local executor's runner)."""

    def map(self, scorer: "Scorer", fn, items, **shared):
        """Yields ``fn(scorer, item, **shared)`` for each item, in order."""
        for item in items:
            yield fn(scorer, item, **shared)


class Scorer:
    name: ClassVar[str] = ""
    version: ClassVar[str] = "1"
    Params: ClassVar[type]                      # a dataclass of this scorer's parameters
    produces: ClassVar[dict[str, str]] = {}
    main_column: ClassVar[str] = ""
    higher_is_better: ClassVar[bool | None] = None
    uses: ClassVar[tuple[str, ...]] = ("lm",)   # which models of the context it needs: lm, embedder, judge
    scope: ClassVar[str] = "row"                # "row": any shard of rows; "dataset": the whole pool at once

    def __init__(self, **params):
        self.params = build(self.Params, params, f"scorer {self.name!r}")
        self.ctx: ModelContext | None = None
        self.cache_root = None                  # set by the engine: a folder for intermediate stores
        self.runner = ShardRunner()             # set by the engine: where map_shards runs (see the module doc)
        self.tokens_processed = 0               # read by the engine for tokens/s
        self.transient_failures = 0             # rows whose result is not final (a judge request that got no
                                                # answer after its retries): the engine does not cache their shard

    def param_dict(self) -> dict:
        return dataclasses.asdict(self.params)

    def model_identity(self, ctx: ModelContext) -> str:
        parts = []
        if "lm" in self.uses:
            parts.append(ctx.lm().identity())
            parts.append(f"dtype={ctx.dtype}")
        if "embedder" in self.uses:
            parts.append(ctx.embedder().identity())
        if "judge" in self.uses:
            parts.append(ctx.judge().identity())
        return "|".join(parts)

    def required_columns(self) -> tuple[str, ...]:
        """Score columns this scorer reads (produced by earlier scorers of the run)."""
        return ()

    def produced_columns(self) -> tuple[str, ...]:
        """Score columns this scorer may write (checked against later scorers' required columns)."""
        return tuple(self.produces)

    def setup(self, ctx: ModelContext) -> None:
        self.ctx = ctx

    def score_batch(self, rows: Dataset) -> dict[str, np.ndarray]:
        raise NotImplementedError

    def map_shards(self, fn, items, **shared):
        """``fn(scorer, item, **shared)`` for each item, in order, on the executor's workers (module doc); the
        items done are reported as progress (``thresher.progress``) under ``<scorer>:<fn>``."""
        total = len(items) if hasattr(items, "__len__") else None
        quiet = "none" if total is not None and total <= 1 else None     # a one-item call: no bar, no line
        with reporter(f"{self.name}:{fn.__name__}", total, unit="shards", mode=quiet) as progress:
            for result in self.runner.map(self, fn, items, **shared):
                progress.update(1)
                yield result

    def shards_in_flight(self, shard_size: int) -> int:
        """How many shards the engine may score at once in this process (threads, each with a shallow copy
        of this scorer sharing its models): 1 for compute-bound scorers; an API judge returns enough to keep
        its request concurrency busy across shard boundaries."""
        return 1

    @classmethod
    def describe(cls) -> str:
        return (cls.__doc__ or "").strip().splitlines()[0]
