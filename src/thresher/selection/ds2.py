"""DS2's selections. Arrays in, indices (int64) out; imports only numpy.

* ``ds2_bucket_select``: DS2's final selection (``subset_generation.py``; METHODS.md 2.4): score buckets,
  best first, with rareness breaking the boundary bucket.
* ``ds2_diversity_filter``: the "DEITA" baseline as DS2 implemented it (METHODS.md 2.6: score buckets,
  mean of the 10 largest cosine distances to the selected set < 0.5). Its rule is inverted relative to
  DEITA's (``thresher.selection.deita``).
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np

from thresher.checks import check_int, check_real, float_array, is_int, is_real, param_error
from thresher.config import option
from thresher.errors import ConfigError
from thresher.selection.base import Selector, column_values
from thresher.selection.basic import BudgetParams, budget, check_budget, first_unique
from thresher.selection.embeddings import (check_chunk, embedding_matrix, row_norms, smallest_cosines,
                                           stack_embeddings)


def ds2_bucket_select(scores, rare, *, k=None, ratio=None) -> np.ndarray:
    """Indices (int64) of DS2's subset of ``k`` rows (or ``int(ratio * len(scores))``).

    scores: (N,) curated scores (DS2: classes 0..5, higher = better; any values work), NaN =
    no score, never selected. rare: (N,) long-tail score, higher = rarer (must be finite where
    the score is not NaN). Walks the distinct scores from highest down: a bucket that fits in the
    remaining budget is taken whole (in index order); the first one that does not fit is sorted
    by rare descending (ties: lower index first) and its top remaining rows are taken; then stop.
    Returned in that order (whole buckets, best first, then the boundary rows by rareness).
    The selected set equals the top k of a sort by (score desc, rare desc, index asc).
    With fewer scored rows than the budget, all of them are returned.
    DS2 seeds numpy with 3 here, but the rule itself draws nothing, so there is no seed.
    """
    f = "ds2_bucket_select"
    s = float_array(f, "scores", scores)
    r = float_array(f, "rare", rare)
    if len(r) != len(s):
        raise ConfigError(f"The 'scores' and 'rare' parameters of {f} must have the same "
                          f"length. Got {len(s)} and {len(r)}.")
    check_budget(f, k, ratio)
    cand = ~np.isnan(s)
    bad = np.flatnonzero(cand & ~np.isfinite(r))
    if bad.size:
        raise ConfigError(f"The 'rare' parameter of {f} must be finite on every scored row. "
                          f"Got NaN or inf in {bad.size} row(s) (first indices: "
                          f"{bad[:5].tolist()}).")
    take = budget(k, ratio, len(s))
    idx = np.flatnonzero(cand)                               # (C,) ascending
    by_score = idx[np.argsort(-s[idx], kind="stable")]       # score desc, index asc
    if take >= len(by_score):
        return by_score.astype(np.int64)
    edge = s[by_score[take]]                                 # score of the first row left out
    whole = by_score[s[by_score] > edge]                     # buckets that fit entirely
    bucket = by_score[s[by_score] == edge]                   # boundary bucket, index asc
    ranked = bucket[np.argsort(-r[bucket], kind="stable")]   # rare desc, index asc
    return np.concatenate([whole, ranked[:take - len(whole)]]).astype(np.int64)


def _check_diversity_params(owner: str, k, top, max_mean_distance) -> None:
    if not (is_int(k) and k >= 0):
        raise param_error(owner, "k", "an int >= 0", k)
    check_int(owner, "top", top, 1)
    check_real(owner, "max_mean_distance", max_mean_distance)


def ds2_diversity_filter(scores, emb, *, k, top=10, max_mean_distance=0.5,
                         buckets=(5, 4, 3, 2), chunk=1024) -> np.ndarray:
    """The "diversity-filtered (DEITA-style)" baseline as DS2 implemented it
    (``score_curation/data_gen_data_scale.ipynb``, METHODS.md 2.6), indices in acceptance order.

    Rows are visited bucket by bucket (``scores == b`` for b in ``buckets``, default 5, 4, 3, 2;
    other scores and NaN are never visited), in index order inside a bucket. The first visited
    row is accepted unconditionally (DS2 seeds the selected set with it). Every later row is
    accepted iff the mean of its ``top`` (10) LARGEST cosine distances (1 - cos) to the rows
    selected so far is < ``max_mean_distance`` (0.5); while at most ``top`` rows are selected the
    mean is over all of them. Stops at ``k`` rows.

    This is inverted relative to DEITA (``deita_repr_filter``): it keeps rows that are close to
    *everything* selected instead of rejecting rows close to *anything* selected. It is offered
    only as a faithful reproduction of DS2's baseline numbers.

    Computation: per block of ``chunk`` rows one matrix product against the selected set gives
    each row its ``top`` smallest similarities; once ``top`` rows are selected a row that fails
    against the pre-block set is rejected without further work (the mean of the ``top`` largest
    distances can only grow as the set grows); the rest are checked one by one against the
    rows accepted earlier in the block.
    """
    f = "ds2_diversity_filter"
    s = float_array(f, "scores", scores)
    X = embedding_matrix(f, emb, len(s))
    _check_diversity_params(f, k, top, max_mean_distance)
    if not (isinstance(buckets, Sequence) and not isinstance(buckets, str) and all(is_real(b) for b in buckets)):
        raise param_error(f, "buckets", "a sequence of real numbers", buckets)
    chunk = check_chunk(f, chunk)
    order = np.concatenate([np.flatnonzero(s == b) for b in buckets] + [np.empty(0, dtype=np.int64)])
    order = first_unique(order.astype(np.int64))                # a repeated bucket adds nothing
    want = min(int(k), len(order))
    if want == 0:
        return np.empty(0, dtype=np.int64)
    norms = row_norms(f, X, order)
    acc = np.empty((want, X.shape[1]), dtype=X.dtype)
    out = np.empty(want, dtype=np.int64)
    n = 0
    for start in range(0, len(order), chunk):
        rows = order[start:start + chunk]
        B = X[rows] / norms[start:start + chunk, None]          # (b, d)
        low = smallest_cosines(B, acc[:n], top)                        # (b, min(top, n))
        alive = np.arange(len(rows))
        if n >= top:                                            # monotone from here on
            alive = np.flatnonzero((1.0 - low).mean(axis=1) < max_mean_distance)
        G = B[alive] @ B[alive].T                               # (a, a)
        taken: list[int] = []                                   # positions in `alive`
        for p in range(len(alive)):
            if n + len(taken) == 0:                             # empty selected set: accept
                taken.append(p)
                continue
            dist = 1.0 - np.concatenate([low[alive[p]], G[p, taken]])
            if len(dist) > top:
                dist = np.partition(dist, len(dist) - top)[len(dist) - top:]
            if dist.mean() < max_mean_distance:
                taken.append(p)
                if n + len(taken) == want:
                    break
        take = alive[taken]
        acc[n:n + len(take)] = B[take]
        out[n:n + len(take)] = rows[take]
        n += len(take)
        if n == want:
            break
    return out[:n]


# ---------------------------------------------------------------------------------------------
# recipe adapters (thresher.selection.base)


@dataclass
class BucketParams(BudgetParams):
    rare: str = option("rare", help="score column of the long-tail (rareness) score that orders the boundary "
                                    "bucket, higher first (ds2_curation's rare)")


class BucketSelector(Selector):
    """DS2: curated score buckets from the best down, rareness breaking the boundary bucket."""

    name = "ds2_bucket"
    Params = BucketParams
    default_column = "ds2_score"

    def inputs(self, main=None) -> tuple[str, ...]:
        return (self.main_column(main), self.params.rare)

    def _select(self, scores, main, higher_is_better) -> np.ndarray:
        p = self.params
        return ds2_bucket_select(column_values(scores, self.main_column(main)), column_values(scores, p.rare),
                                 k=p.k, ratio=p.ratio)


@dataclass
class DiversityParams:
    k: int | None = option(None, help="rows to accept, an int >= 0 (required)")
    top: int = option(10, help="how many of the largest cosine distances to the selected rows are averaged, "
                               "an int >= 1 (DS2: 10)")
    max_mean_distance: float = option(0.5, help="accept a row when that mean cosine distance is below this (DS2: 0.5)")
    embedding: str = option("embedding", help="score column of (d,) embeddings, one per row (DS2: bge-large)")

    def check(self, owner: str) -> None:
        _check_diversity_params(owner, self.k, self.top, self.max_mean_distance)


class DiversitySelector(Selector):
    """DS2's inverted DEITA baseline: keep rows close to everything selected (score buckets 5..2)."""

    name = "ds2_diversity"
    Params = DiversityParams

    def inputs(self, main=None) -> tuple[str, ...]:
        return (self.main_column(main), self.params.embedding)

    def _select(self, scores, main, higher_is_better) -> np.ndarray:
        p = self.params
        return ds2_diversity_filter(column_values(scores, self.main_column(main)),
                                    stack_embeddings(scores[p.embedding]), k=p.k, top=p.top,
                                    max_mean_distance=p.max_mean_distance)
