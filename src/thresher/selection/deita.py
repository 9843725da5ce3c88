"""DEITA's representation filter (``deita/selection/filter/base.py``; METHODS.md 6.2) and DEITA's
multi-turn score. Arrays in, row indices (int64) out, in acceptance order; NaN scores are never
selected. Embeddings: see ``thresher.selection.embeddings``.

``deita_repr_filter``: greedy by score, reject a row whose cosine similarity to any accepted row
exceeds the threshold, computed block by block with one matrix product per block and exactly equal
to the one-row-at-a-time rule. DS2's inverted variant of it is ``thresher.selection.ds2``'s
``ds2_diversity_filter``.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from thresher.checks import check_bool, check_real, float_array, param_error
from thresher.config import option
from thresher.selection.base import Selector, column_values
from thresher.selection.basic import budget, check_budget, ranked
from thresher.selection.embeddings import (any_above, check_chunk, embedding_matrix, row_norms,
                                           stack_embeddings)


def _check_params(owner: str, k, ratio, threshold) -> None:
    """The budget is optional (none: filter the whole pool); given, exactly one of k and ratio."""
    if k is not None or ratio is not None:
        check_budget(owner, k, ratio)
    check_real(owner, "threshold", threshold)


def _sequential_accept(conflict: np.ndarray) -> np.ndarray:
    """conflict: (m, m) bool, strictly lower-triangular (True: row i too similar to earlier j).
    Returns (m,) bool: accepted when walking rows in order, a row being rejected iff it conflicts
    with an earlier *accepted* row. Only rows with some earlier conflict need the walk."""
    keep = np.ones(len(conflict), dtype=bool)
    for i in np.flatnonzero(conflict.any(axis=1)):               # ascending: earlier rows final
        keep[i] = not (conflict[i] & keep).any()
    return keep


def deita_repr_filter(scores, emb, *, k=None, ratio=None, threshold=0.9, chunk=1024) -> np.ndarray:
    """DEITA's Repr Filter (``deita/selection/filter/base.py``), indices in acceptance order.

    Rows are visited by score descending (ties: lower index first; NaN scores never visited).
    A row is accepted iff its cosine similarity to every already-accepted row is <= ``threshold``
    (DEITA rejects when the similarity to any accepted row is > threshold, default 0.9; the
    first row is always accepted). The walk stops once ``k`` rows (or ``int(ratio * len(scores))``)
    are accepted; with neither, the whole pool is filtered. Fewer acceptable rows than the
    budget: all of them.

    Computation: candidates are processed ``chunk`` at a time; one matrix product compares the
    block with the accepted set (kept in a preallocated (budget, d) array), a second one compares
    the block's surviving rows with each other, and only rows with an earlier in-block conflict
    are resolved one by one. The result equals the one-row-at-a-time rule exactly (DEITA itself
    runs with batch_size 1; its batch_size > 1 would also reject rows similar to *rejected*
    earlier rows of the same batch, which this does not). Cost O(N * budget * d); memory
    O(budget * d + chunk**2). float32 embeddings are computed in float32, others in float64.
    """
    f = "deita_repr_filter"
    s = float_array(f, "scores", scores)
    X = embedding_matrix(f, emb, len(s))
    _check_params(f, k, ratio, threshold)
    chunk = check_chunk(f, chunk)
    order = ranked(s, ~np.isnan(s), descending=True)            # (C,) candidates, best first
    want = len(order) if k is None and ratio is None else min(budget(k, ratio, len(s)), len(order))
    if want == 0:
        return np.empty(0, dtype=np.int64)
    norms = row_norms(f, X, order)
    acc = np.empty((want, X.shape[1]), dtype=X.dtype)           # (want, d) accepted unit rows
    out = np.empty(want, dtype=np.int64)
    n = 0
    for start in range(0, len(order), chunk):
        rows = order[start:start + chunk]                       # (b,)
        B = X[rows] / norms[start:start + chunk, None]          # (b, d) unit rows
        alive = np.flatnonzero(~any_above(B, acc[:n], threshold))
        if alive.size:
            G = B[alive] @ B[alive].T                           # (a, a) in-block cosines
            take = alive[_sequential_accept(np.tril(G > threshold, -1))][:want - n]
            acc[n:n + len(take)] = B[take]
            out[n:n + len(take)] = rows[take]
            n += len(take)
        if n == want:
            break
    return out[:n]


def deita_turn_score(turns) -> np.ndarray:
    """DEITA's multi-turn score: (N,) sum over turns of the product of the per-turn values
    (complexity_t x quality_t). ``turns``: one sequence per factor, each holding N per-row 1-D arrays of
    per-turn values (the ``<column>_turns`` lists of judges run with turns: all); a row without turns
    scores NaN."""
    per = [list(t) for t in turns]
    n = len(per[0]) if per else 0
    out = np.empty(n)
    for r in range(n):                      # rows of ragged turn lists; a cheap selection-time pass
        prod = np.prod([np.asarray(v[r], dtype=np.float64) for v in per], axis=0)
        out[r] = prod.sum() if len(prod) else np.nan
    return out


# ---------------------------------------------------------------------------------------------
# recipe adapter (thresher.selection.base)


@dataclass
class DeitaParams:
    columns: list | None = option(None, help="score columns multiplied into DEITA's score (DEITA: complexity and "
                                             "quality); null: the stage's main column")
    per_turn: bool = option(False, help="score = sum over turns of the product of the per-turn values (reads the "
                                        "<column>_turns lists; DEITA's multi-turn score)")
    threshold: float = option(0.9, help="reject a row whose cosine similarity to an accepted row is above this, "
                                        "in [-1, 1] (DEITA: 0.9)")
    k: int | None = option(None, help="rows to accept, an int >= 0 (DEITA: 6000 or 10000); at most one of k | "
                                      "ratio, neither: filter the whole pool")
    ratio: float | None = option(None, help="rows to accept as a fraction in (0, 1] of all rows")
    embedding: str = option("embedding", help="score column of (d,) embeddings, one per row")

    def check(self, owner: str) -> None:
        if self.columns is not None and not (self.columns and all(isinstance(c, str) and c for c in self.columns)):
            raise param_error(owner, "columns", "a non-empty list of score column names", self.columns)
        check_bool(owner, "per_turn", self.per_turn)
        _check_params(owner, self.k, self.ratio, self.threshold)


class DeitaSelector(Selector):
    """DEITA: score (e.g. complexity x quality) descending, reject rows too similar to an accepted one."""

    name = "deita"
    Params = DeitaParams

    def _factors(self, main: str | None) -> list[str]:
        cols = self.params.columns or [self.main_column(main)]
        return [f"{c}_turns" for c in cols] if self.params.per_turn else list(cols)

    def inputs(self, main=None) -> tuple[str, ...]:
        return (*self._factors(main), self.params.embedding)

    def _select(self, scores, main, higher_is_better) -> np.ndarray:
        p, factors = self.params, self._factors(main)
        if p.per_turn:
            score = deita_turn_score([scores[c].to_numpy() for c in factors])
        else:
            score = np.prod([column_values(scores, c) for c in factors], axis=0)
        return deita_repr_filter(score, stack_embeddings(scores[p.embedding]), k=p.k, ratio=p.ratio,
                                 threshold=p.threshold)
