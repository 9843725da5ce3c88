"""Scoring several shards at once in threads, for scorers whose work waits on I/O (an API judge).

``score_shards_threaded(scorer, shards, k)`` scores up to ``k`` shards at the same time, each on its own
shallow copy of ``scorer`` (``copy.copy``: its own ``tokens_processed`` / ``transient_failures``
counters; the parameters, ``ctx`` and the models in it, e.g. the judge backend whose request gate
bounds the requests in flight, are shared), and yields the results in the order of ``shards`` so that
the caller commits each finished shard in order. Up to ``2k`` shards are handed to the ``k`` threads
ahead of the one last yielded, so a thread that ends a shard starts the next at once, also while the
caller is still committing an earlier shard or an older shard is still running.
``k = scorer.shards_in_flight(shard_size)``; with ``k <= 1`` the shards are scored one after another on
``scorer`` itself, in this thread.
"""

from __future__ import annotations

import copy
from collections import deque
from collections.abc import Iterable, Iterator
from concurrent.futures import ThreadPoolExecutor

from thresher.scoring.base import Scorer


def score_shards_threaded(scorer: Scorer, shards: Iterable[tuple],
                          k: int) -> Iterator[tuple[int, dict, int, int]]:
    """(shard index, score columns, tokens processed, transient failures) of each shard, in input order.

    ``shards``: ``(shard index, rows, inputs)`` items (``rows`` a Dataset; ``inputs`` the DataFrame of
    earlier score columns aligned with ``rows`` for a scorer with required columns, else None), read
    lazily, at most ``2k`` ahead of the shard last yielded. Each shard's counts are also added to
    ``scorer.tokens_processed`` / ``scorer.transient_failures`` when it is yielded. A shard's exception
    is raised when that shard's turn comes; the shards still running then finish and no more start.
    """
    if k <= 1:
        for index, rows, inputs in shards:
            yield (index, *_score(scorer, rows, inputs))
        return
    todo, held = iter(shards), deque()          # held: (index, future) in input order
    with ThreadPoolExecutor(max_workers=k, thread_name_prefix="thresher-shard") as pool:
        try:
            while True:
                _start(pool, scorer, todo, held, k)
                if not held:
                    return
                index, fut = held.popleft()
                cols, tokens, failed = fut.result()         # waits for the oldest shard
                scorer.tokens_processed += tokens
                scorer.transient_failures += failed
                yield index, cols, tokens, failed
        finally:
            for _, fut in held:
                fut.cancel()


def _start(pool: ThreadPoolExecutor, scorer: Scorer, todo: Iterator, held: deque, k: int) -> None:
    """Hand shards from ``todo`` to the pool (``k`` threads) until ``2k`` are held."""
    while len(held) < 2 * k:
        nxt = next(todo, None)
        if nxt is None:
            return
        index, rows, inputs = nxt
        held.append((index, pool.submit(_score, copy.copy(scorer), rows, inputs)))


def _score(scorer: Scorer, rows, inputs) -> tuple[dict, int, int]:
    """(columns, tokens processed, transient failures) of one shard: the growth of ``scorer``'s counters."""
    before, failed_before = scorer.tokens_processed, scorer.transient_failures
    cols = scorer.score_batch(rows) if inputs is None else scorer.score_batch(rows, inputs)
    return cols, scorer.tokens_processed - before, scorer.transient_failures - failed_before
