"""Greedy facility location (Superfiltering.D, ``code_diversity_fla/do_fla.py``; METHODS.md 3.4).

``facility_location``: greedy maximisation of sum_i max_{j in S} sim(i, j), lazy greedy over a dense
similarity matrix, with submodlib's Euclidean kernel. Embeddings in, row indices (int64) out, in
greedy order. Used by two selectors: ``facility_location`` (on every row, or the rows passing
``where``) and ``superfiltering_d`` (Superfiltering.D: on the top IFD rows).
"""

from __future__ import annotations

import heapq
from dataclasses import dataclass

import numpy as np

from thresher.checks import check_choice, check_int, check_real, is_int, is_real, param_error
from thresher.config import choice, option
from thresher.errors import ConfigError
from thresher.selection.base import Selector, column_values
from thresher.selection.basic import BudgetParams, budget, check_where, superfiltering_select, where_mask
from thresher.selection.embeddings import BLOCK_ELEMS, embedding_matrix, row_norms, stack_embeddings

METRICS = ("euclidean", "cosine")
_METRIC_HELP = ("similarity kernel: euclidean = exp(-distance / dim), submodlib's, as Superfiltering.D; "
                "cosine = (1 + cos) / 2")


def _fl_kernel(X: np.ndarray, cand: np.ndarray, metric: str) -> np.ndarray:
    """(m, n) float64 similarities of each candidate row (X[cand]) to every row of X.

    euclidean: exp(-||x_j - x_i|| / d), d = number of features: submodlib's dense kernel
    (``create_square_kernel_dense``), in (0, 1], 1 on the diagonal, decreasing in distance.
    cosine: (1 + cos) / 2, in [0, 1]. Computed in row blocks of at most 2**24 entries."""
    n, d = X.shape
    Xd = X.astype(np.float64, copy=False)
    K = np.empty((len(cand), n), dtype=np.float64)
    sq = np.einsum("ij,ij->i", Xd, Xd)                          # (n,) squared norms
    if metric == "cosine":
        U = Xd / np.sqrt(sq)[:, None]
    step = max(1, BLOCK_ELEMS // max(1, n))
    for a in range(0, len(cand), step):
        c = cand[a:a + step]
        block = K[a:a + step]                                   # (b, n) view
        if metric == "euclidean":
            np.matmul(Xd[c], Xd.T, out=block)
            block *= -2.0
            block += sq[c, None]
            block += sq[None, :]                                # squared distances
            block[np.arange(len(c)), c] = 0.0                   # exact zero self-distance
            np.sqrt(np.maximum(block, 0.0, out=block), out=block)
            block *= -1.0 / d
            np.exp(block, out=block)
        else:
            np.matmul(U[c], U.T, out=block)
            block[np.arange(len(c)), c] = 1.0
            np.clip(block, -1.0, 1.0, out=block)
            block += 1.0
            block /= 2.0
    return K


def _tie_tol(g: float) -> float:
    """Gains this close to the best are ties (won by the earliest candidate). Facility location
    often has exactly tied gains (two points that only cover each other), which rounding would
    otherwise decide differently from one BLAS or block size to another."""
    return 1e-9 * max(1.0, abs(g))


def facility_location(emb, *, k, metric="euclidean", candidates=None, max_n=20000) -> np.ndarray:
    """Greedy facility location (Superfiltering.D, ``code_diversity_fla/do_fla.py``): indices in
    greedy order.

    Maximises F(S) = sum_{i=1..N} max_{j in S} sim(i, j) over S (a subset of ``candidates``, all
    rows if None; every row counts in the sum), |S| = min(k, number of candidates), F(empty) = 0.
    ``metric``: "euclidean" uses submodlib's dense Euclidean kernel sim = exp(-||x_i - x_j|| / d)
    with d the embedding dimension (the kernel Superfiltering used via submodlib's
    ``FacilityLocationFunction(mode="dense", metric="euclidean")``); "cosine" uses
    sim = (1 + cos) / 2, shifted into [0, 1] so that every gain is >= 0 (submodlib's cosine
    kernel is the raw cosine with the running maximum starting at 0, which treats negative
    cosines as 0: a different, non-affine variant). Both are monotone: F never decreases.

    Lazy greedy (priority queue of stale upper bounds on the gains; submodularity makes a stale
    gain an upper bound), equal to plain greedy that takes the candidate with the largest gain;
    gains within 1e-9 (relative, at least absolute 1e-9) of the largest are ties, won by the
    candidate earliest in ``candidates`` (the lowest row index when candidates is None).
    Greedy continues when all gains are 0 (submodlib's stopIfZeroGain=False), so k above the
    candidate count returns every candidate. submodlib computes in float32 and breaks ties its
    own way, so orders can differ from it where gains are (nearly) tied.

    Memory: a dense (candidates x N) float64 similarity matrix, fine up to N of about 20,000
    (3.2 GB). N above ``max_n`` raises; raise ``max_n`` if the memory is there.
    """
    f = "facility_location"
    check_int(f, "k", k, 0)
    check_choice(f, "metric", metric, METRICS)
    check_int(f, "max_n", max_n, 1)
    X = np.asarray(emb)
    if X.ndim != 2:
        raise ConfigError(f"The 'emb' parameter of {f} must be a 2-D array of numbers. Got an "
                          f"array of shape {X.shape}.")
    X = embedding_matrix(f, X, len(X))
    n = len(X)
    if n > max_n:
        raise ConfigError(f"{f} builds a dense similarity matrix over all {n} rows (about "
                          f"{8 * n * n / 2**30:.1f} GiB for n x n), above the 'max_n' limit of "
                          f"{max_n}. Pass a larger max_n if you have the memory, or select fewer "
                          "rows first (Superfiltering runs it on the top 20 % by IFD).")
    if candidates is None:
        cand = np.arange(n, dtype=np.int64)
    else:
        cand = np.asarray(candidates)
        if not (cand.ndim == 1 and (cand.size == 0 or np.issubdtype(cand.dtype, np.integer))
                and np.all((cand >= 0) & (cand < n)) and len(np.unique(cand)) == len(cand)):
            raise param_error(f, "candidates", f"None or a 1-D array of distinct row indices in "
                        f"[0, {n})", candidates)
        cand = cand.astype(np.int64)
    if n == 0 or len(cand) == 0 or k == 0:
        return np.empty(0, dtype=np.int64)
    if not np.isfinite(X).all():
        raise ConfigError(f"The 'emb' parameter of {f} must be finite. Got NaN or inf.")
    if metric == "cosine":
        row_norms(f, X, np.arange(n))
    K = _fl_kernel(X, cand, metric)                             # (m, n)

    # Lazy greedy. cur: (n,) similarity of each row to its best representative so far. Heap
    # entries: (-gain bound, position in cand, |S| when the bound was computed).
    cur = np.zeros(n)

    def gain(j: int) -> float:
        return float(np.maximum(K[j] - cur, 0.0).sum())

    heap = [(-g, j, 0) for j, g in enumerate(K.sum(axis=1).tolist())]   # exact for S = {}
    heapq.heapify(heap)
    chosen: list[int] = []
    while heap and len(chosen) < k:
        neg, j, stamp = heapq.heappop(heap)
        if stamp != len(chosen):                                # stale: refresh and requeue
            heapq.heappush(heap, (-gain(j), j, len(chosen)))
            continue
        g = -neg                                                # exact, and >= every other gain
        if g <= 0.0:                                            # every gain left is 0: in order
            rest = sorted([j] + [i for _, i, _ in heap])
            chosen.extend(rest[:k - len(chosen)])
            break
        near = [(g, j)]                                         # bound within tol: maybe a tie
        while heap and -heap[0][0] >= g - _tie_tol(g):
            nb, i, st = heapq.heappop(heap)
            near.append((-nb if st == len(chosen) else gain(i), i))
        best = min(i for gi, i in near if gi >= g - _tie_tol(g))
        for gi, i in near:
            if i != best:
                heapq.heappush(heap, (-gi, i, len(chosen)))
        chosen.append(best)
        np.maximum(cur, K[best], out=cur)
    return cand[np.asarray(chosen, dtype=np.int64)]


# ---------------------------------------------------------------------------------------------
# recipe adapters (thresher.selection.base)


@dataclass
class FacilityLocationParams(BudgetParams):
    metric: str = choice("euclidean", *METRICS, help=_METRIC_HELP)
    where: dict | None = option(None, help="restricts the candidates to rows passing every bound, "
                                           "{column: {lt|le|gt|ge: number}}, e.g. {ifd: {lt: 1.0}}")
    embedding: str = option("embedding", help="score column of (d,) embeddings, one per row (Superfiltering.D: "
                                              "all-MiniLM-L6-v2 on the whole sample)")

    def check(self, owner: str) -> None:
        super().check(owner)
        check_where(owner, self.where)


class FacilityLocationSelector(Selector):
    """Greedy facility location on embeddings: k | ratio representative rows (of all, or those passing 'where')."""

    name = "facility_location"
    Params = FacilityLocationParams
    reads_main = False

    def inputs(self, main=None) -> tuple[str, ...]:
        return (self.params.embedding, *(self.params.where or ()))

    def _select(self, scores, main, higher_is_better) -> np.ndarray:
        p = self.params
        mask = where_mask(scores, p.where)
        cand = None if mask is None else np.flatnonzero(mask)
        return facility_location(stack_embeddings(scores[p.embedding]), k=budget(p.k, p.ratio, len(scores)),
                                 candidates=cand, metric=p.metric)


@dataclass
class SuperfilteringDParams(BudgetParams):
    ifd_ratio: float | None = option(None, help="first step keeps the top ifd_ratio of all rows by IFD, a float "
                                               "in (0, 1]; null with no ifd_k: 0.2 (Superfiltering.D: 10,400 of "
                                               "52k); at most one of ifd_ratio | ifd_k")
    ifd_k: int | None = option(None, help="first step keeps the top ifd_k rows by IFD, an int >= 0")
    filter_below: float = option(1.0, help="first step's candidates have IFD strictly below this "
                                           "(Superfiltering: 1.0)")
    metric: str = choice("euclidean", *METRICS, help=_METRIC_HELP)
    embedding: str = option("embedding", help="score column of (d,) embeddings, one per row (Superfiltering.D: "
                                              "all-MiniLM-L6-v2 on the whole sample)")

    def check(self, owner: str) -> None:
        super().check(owner)
        if self.ifd_k is not None and self.ifd_ratio is not None:
            raise ConfigError(f"{owner} takes at most one of the 'ifd_k' and 'ifd_ratio' parameters (default: "
                              f"ifd_ratio 0.2). Got ifd_k={self.ifd_k!r}, ifd_ratio={self.ifd_ratio!r}.")
        if self.ifd_k is not None and not (is_int(self.ifd_k) and self.ifd_k >= 0):
            raise param_error(owner, "ifd_k", "an int >= 0", self.ifd_k)
        if self.ifd_ratio is not None and not (is_real(self.ifd_ratio) and 0 < self.ifd_ratio <= 1):
            raise param_error(owner, "ifd_ratio", "a float in (0, 1]", self.ifd_ratio)
        check_real(owner, "filter_below", self.filter_below)


class SuperfilteringDSelector(Selector):
    """Superfiltering.D: the top IFD rows below filter_below, then facility location picks k | ratio."""

    name = "superfiltering_d"
    Params = SuperfilteringDParams
    default_column = "ifd"

    def inputs(self, main=None) -> tuple[str, ...]:
        return (self.main_column(main), self.params.embedding)

    def _select(self, scores, main, higher_is_better) -> np.ndarray:
        p = self.params
        first = {"k": p.ifd_k} if p.ifd_k is not None else {"ratio": 0.2 if p.ifd_ratio is None else p.ifd_ratio}
        pool = superfiltering_select(column_values(scores, self.main_column(main)), base="pool",
                                     filter_below=p.filter_below, **first)
        return facility_location(stack_embeddings(scores[p.embedding]), k=budget(p.k, p.ratio, len(scores)),
                                 candidates=np.sort(pool), metric=p.metric)
