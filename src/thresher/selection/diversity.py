"""Diversity-aware selectors over score arrays and embeddings (METHODS.md 2.6, 3.4, 5.5, 6.1, 6.2).

Arrays in, row indices (int64) out, in selection order unless a docstring says otherwise. NaN
scores are never selected. Embeddings are an (N, d) float array aligned with the scores; cosine
similarities are computed on L2-normalised copies of the rows, so a zero or non-finite
embedding row among the candidates is an error (its cosine is undefined).

* ``deita_repr_filter``: DEITA's Repr Filter (greedy by score, reject a row whose cosine
  similarity to any accepted row exceeds the threshold), computed block by block with one
  matrix product per block and exactly equal to the one-row-at-a-time rule.
* ``ds2_diversity_filter``: the "DEITA" baseline as DS2 implemented it (score buckets, mean of the
  10 largest cosine distances to the selected set < 0.5). Its rule is inverted relative to DEITA.
* ``facility_location``: greedy maximisation of sum_i max_{j in S} sim(i, j) (Superfiltering.D),
  lazy greedy over a dense similarity matrix, with submodlib's Euclidean kernel.
* ``alpagasus_select``: score >= threshold, or a fixed budget with a seeded random tie-break in
  the boundary score bucket.
* ``opencs_select``: OpenCS's per-cluster top-20 in ascending cluster size, or a global top-k.
"""

from __future__ import annotations

import heapq
from collections.abc import Mapping, Sequence

import numpy as np

from thresher.errors import ConfigError
from thresher.selection.basic import (
    _budget,
    _check_budget,
    _check_choice,
    _check_real,
    _fail,
    _float_array,
    _is_int,
    _is_real,
    _ranked,
)

# Upper bound on the elements of one temporary similarity block (2**24 float32 = 64 MiB).
_BLOCK_ELEMS = 1 << 24

_EMPTY = np.empty(0, dtype=np.int64)

# ---------------------------------------------------------------------------------------------
# shared helpers


def _embeddings(func: str, emb, n: int) -> np.ndarray:
    """emb as an (n, d) float32/float64 array (float32 kept as is, everything else float64)."""
    try:
        X = np.asarray(emb)
        if X.dtype != np.float32:
            X = X.astype(np.float64, copy=False)
    except (TypeError, ValueError):
        raise ConfigError(f"The 'emb' parameter of {func} must be a 2-D array of numbers. "
                          "Got values that cannot be read as numbers.") from None
    if X.ndim != 2 or len(X) != n:
        raise ConfigError(f"The 'emb' parameter of {func} must be a 2-D array with one row per "
                          f"score ({n} rows). Got an array of shape {X.shape}.")
    return X


def _row_norms(func: str, X: np.ndarray, rows: np.ndarray) -> np.ndarray:
    """(len(rows),) L2 norms of X[rows]; raises if one is zero or not finite. einsum makes no
    (n, d) temporary."""
    norms = np.sqrt(np.einsum("ij,ij->i", X, X))[rows]
    bad = ~np.isfinite(norms) | (norms == 0)
    if bad.any():
        where = rows[bad]
        raise ConfigError(f"The 'emb' parameter of {func} must have finite, non-zero rows for "
                          f"every candidate (cosine similarity is undefined otherwise). Got "
                          f"{where.size} bad row(s) (first indices: {where[:5].tolist()}).")
    return norms


def _check_chunk(func: str, chunk) -> int:
    if not (_is_int(chunk) and chunk >= 1):
        raise _fail(func, "chunk", "an int >= 1", chunk)
    return int(chunk)


def _any_above(B: np.ndarray, A: np.ndarray, threshold: float) -> np.ndarray:
    """(b,) bool: row i of B has cosine > threshold with some row of A (rows unit-norm)."""
    hit = np.zeros(len(B), dtype=bool)
    step = max(1, _BLOCK_ELEMS // max(1, len(B)))
    for c in range(0, len(A), step):
        hit |= (B @ A[c:c + step].T > threshold).any(axis=1)        # (b, step) -> (b,)
    return hit


def _smallest(B: np.ndarray, A: np.ndarray, top: int) -> np.ndarray:
    """(b, min(top, len(A))): the smallest cosine similarities of each row of B to the rows of A,
    i.e. its largest cosine distances (unsorted within a row)."""
    t = min(top, len(A))
    low = np.empty((len(B), 0), dtype=B.dtype)
    step = max(t, _BLOCK_ELEMS // max(1, len(B)))
    for c in range(0, len(A), step):
        sims = np.concatenate([low, B @ A[c:c + step].T], axis=1)   # (b, <= t + step)
        low = sims if sims.shape[1] <= t else np.partition(sims, t - 1, axis=1)[:, :t]
    return low


def _first_unique(rows: np.ndarray) -> np.ndarray:
    """rows without repeats, keeping each value's first occurrence, order preserved."""
    _, first = np.unique(rows, return_index=True)
    return rows[np.sort(first)]


# ---------------------------------------------------------------------------------------------
# DEITA


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
    s = _float_array(f, "scores", scores)
    X = _embeddings(f, emb, len(s))
    if k is not None or ratio is not None:
        _check_budget(f, k, ratio)
    _check_real(f, "threshold", threshold)
    chunk = _check_chunk(f, chunk)
    order = _ranked(s, ~np.isnan(s), descending=True)           # (C,) candidates, best first
    budget = len(order) if k is None and ratio is None else min(_budget(k, ratio, len(s)),
                                                                  len(order))
    if budget == 0:
        return _EMPTY.copy()
    norms = _row_norms(f, X, order)
    acc = np.empty((budget, X.shape[1]), dtype=X.dtype)         # (budget, d) accepted unit rows
    out = np.empty(budget, dtype=np.int64)
    n = 0
    for start in range(0, len(order), chunk):
        rows = order[start:start + chunk]                       # (b,)
        B = X[rows] / norms[start:start + chunk, None]          # (b, d) unit rows
        alive = np.flatnonzero(~_any_above(B, acc[:n], threshold))
        if alive.size:
            G = B[alive] @ B[alive].T                           # (a, a) in-block cosines
            take = alive[_sequential_accept(np.tril(G > threshold, -1))][:budget - n]
            acc[n:n + len(take)] = B[take]
            out[n:n + len(take)] = rows[take]
            n += len(take)
        if n == budget:
            break
    return out[:n]


# ---------------------------------------------------------------------------------------------
# DS2's inverted variant


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
    s = _float_array(f, "scores", scores)
    X = _embeddings(f, emb, len(s))
    if not (_is_int(k) and k >= 0):
        raise _fail(f, "k", "an int >= 0", k)
    if not (_is_int(top) and top >= 1):
        raise _fail(f, "top", "an int >= 1", top)
    _check_real(f, "max_mean_distance", max_mean_distance)
    if not (isinstance(buckets, Sequence) and not isinstance(buckets, str)
            and all(_is_real(b) for b in buckets)):
        raise _fail(f, "buckets", "a sequence of real numbers", buckets)
    chunk = _check_chunk(f, chunk)
    order = np.concatenate([np.flatnonzero(s == b) for b in buckets] + [_EMPTY])
    order = _first_unique(order.astype(np.int64))               # a repeated bucket adds nothing
    budget = min(int(k), len(order))
    if budget == 0:
        return _EMPTY.copy()
    norms = _row_norms(f, X, order)
    acc = np.empty((budget, X.shape[1]), dtype=X.dtype)
    out = np.empty(budget, dtype=np.int64)
    n = 0
    for start in range(0, len(order), chunk):
        rows = order[start:start + chunk]
        B = X[rows] / norms[start:start + chunk, None]          # (b, d)
        low = _smallest(B, acc[:n], top)                        # (b, min(top, n))
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
                if n + len(taken) == budget:
                    break
        take = alive[taken]
        acc[n:n + len(take)] = B[take]
        out[n:n + len(take)] = rows[take]
        n += len(take)
        if n == budget:
            break
    return out[:n]


# ---------------------------------------------------------------------------------------------
# facility location


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
    step = max(1, _BLOCK_ELEMS // max(1, n))
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
    if not (_is_int(k) and k >= 0):
        raise _fail(f, "k", "an int >= 0", k)
    _check_choice(f, "metric", metric, ("euclidean", "cosine"))
    if not (_is_int(max_n) and max_n >= 1):
        raise _fail(f, "max_n", "an int >= 1", max_n)
    X = np.asarray(emb)
    if X.ndim != 2:
        raise ConfigError(f"The 'emb' parameter of {f} must be a 2-D array of numbers. Got an "
                          f"array of shape {X.shape}.")
    X = _embeddings(f, X, len(X))
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
            raise _fail(f, "candidates", f"None or a 1-D array of distinct row indices in "
                        f"[0, {n})", candidates)
        cand = cand.astype(np.int64)
    if n == 0 or len(cand) == 0 or k == 0:
        return _EMPTY.copy()
    if not np.isfinite(X).all():
        raise ConfigError(f"The 'emb' parameter of {f} must be finite. Got NaN or inf.")
    if metric == "cosine":
        _row_norms(f, X, np.arange(n))
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
# AlpaGasus


def alpagasus_select(scores, *, threshold=None, k=None, ratio=None, seed=0) -> np.ndarray:
    """AlpaGasus selection over judge ratings (METHODS.md 6.1).

    threshold only: rows with score >= threshold, in index order (AlpaGasus: 4.5 on a 0-5 scale,
    about 9k of Alpaca-52k). A budget (``k``, or ``int(ratio * len(scores))``): rows sorted by
    score descending, the budget cut inside the boundary score bucket filled by a seeded random
    draw from that bucket (``np.random.default_rng(seed)``; the fixed-budget variant used by DS2
    and OpenCS, where coarse ratings make the tie-break decide most of the subset); returned in
    rank order, the boundary picks in index order. With both, the threshold filters first and the
    budget caps. NaN scores are never selected. No default threshold: pass 4.5 for AlpaGasus.
    """
    f = "alpagasus_select"
    s = _float_array(f, "scores", scores)
    if threshold is None and k is None and ratio is None:
        raise ConfigError(f"{f} needs a 'threshold' (AlpaGasus: 4.5), a budget ('k' or "
                          "'ratio'), or both. Got none.")
    if threshold is not None:
        _check_real(f, "threshold", threshold)
    if not (_is_int(seed) and seed >= 0):
        raise _fail(f, "seed", "an int >= 0", seed)
    cand = ~np.isnan(s)
    if threshold is not None:
        cand &= s >= threshold
    if k is None and ratio is None:
        return np.flatnonzero(cand).astype(np.int64)
    _check_budget(f, k, ratio)
    ranked = _ranked(s, cand, descending=True)
    budget = _budget(k, ratio, len(s))
    if budget >= len(ranked):
        return ranked
    if budget == 0:
        return _EMPTY.copy()
    edge = s[ranked[budget - 1]]                                # boundary bucket's score
    above = ranked[s[ranked] > edge]
    bucket = np.flatnonzero(cand & (s == edge))                 # index order
    picks = np.random.default_rng(seed).permutation(bucket)[:budget - len(above)]
    return np.concatenate([above, np.sort(picks)]).astype(np.int64)


# ---------------------------------------------------------------------------------------------
# OpenCS


def _clusters(func: str, clusters) -> tuple[list, list[np.ndarray]]:
    """(keys, member arrays) from a mapping id -> rows or a sequence of row arrays."""
    if isinstance(clusters, Mapping):
        keys, groups = list(clusters.keys()), list(clusters.values())
    elif isinstance(clusters, Sequence) and not isinstance(clusters, str):
        keys, groups = list(range(len(clusters))), list(clusters)
    else:
        raise _fail(func, "clusters", "a mapping cluster id -> row indices or a list of row "
                    "index arrays", type(clusters).__name__)
    out = []
    for key, g in zip(keys, groups):
        a = np.asarray(g)
        if not (a.ndim == 1 and (a.size == 0 or np.issubdtype(a.dtype, np.integer))
                and np.all(a >= 0)):
            raise ConfigError(f"The 'clusters' parameter of {func} must hold 1-D arrays of row "
                              f"indices >= 0. Got {a!r} for cluster {key!r}.")
        out.append(a.astype(np.int64))
    return keys, out


def _cluster_scores(func: str, scores, keys: list, members: list[np.ndarray]) -> list[np.ndarray]:
    """Per-cluster score arrays aligned with ``members``: from per-row scores (N,), or from a
    mapping / list of per-cluster arrays (OpenCS's pair scores differ per cluster)."""
    per_cluster = isinstance(scores, Mapping) or (
        isinstance(scores, (list, tuple)) and len(scores) > 0
        and all(np.ndim(x) == 1 for x in scores))
    if not per_cluster:
        s = _float_array(func, "scores", scores)
        top = max((int(m.max()) for m in members if m.size), default=-1)
        if top >= len(s):
            raise ConfigError(f"The 'clusters' parameter of {func} refers to row {top}, but "
                              f"'scores' has only {len(s)} rows.")
        return [s[m] for m in members]
    if isinstance(scores, Mapping):
        if set(scores.keys()) != set(keys):
            raise ConfigError(f"The 'scores' mapping of {func} must have the same cluster ids "
                              "as 'clusters'.")
        groups = [scores[key] for key in keys]
    else:
        if len(scores) != len(keys):
            raise ConfigError(f"The 'scores' parameter of {func} must have one array per "
                              f"cluster ({len(keys)}). Got {len(scores)}.")
        groups = list(scores)
    out = []
    for key, g, m in zip(keys, groups, members):
        a = _float_array(func, "scores", g)
        if len(a) != len(m):
            raise ConfigError(f"The scores of cluster {key!r} in {func} must align with its "
                              f"{len(m)} members. Got {len(a)} scores.")
        out.append(a)
    return out


def opencs_select(scores, clusters, *, per_cluster=20, k=None, order="ascending_size",
                  max_score=100.0) -> np.ndarray:
    """OpenCS selection (``src/data_quality_SFT/src/sorted_1000.py``, METHODS.md 5.5): indices in
    selection order.

    ``clusters``: mapping cluster id -> row indices, or a list of row-index arrays. ``scores``:
    one score per row (N,), or per-cluster arrays aligned with the members (a mapping with the
    same ids, or a list), since a row's pairwise score depends on the partner it was paired with
    in each cluster (see ``thresher.algorithms.opencs_tags.scored_members``). Scores are the judge's
    0-100 totals; NaN (unparsed) and scores above ``max_score`` (100; None: no cap) are skipped.

    order="ascending_size" (the code): clusters visited by ascending size, the number of
    entries given for the cluster (ties: the order given; ``scored_members`` gives only paired
    members, which is what the reference counts); from each, up to ``per_cluster`` (20) not-yet-selected members by score
    descending (ties: member order); ``k`` optionally caps the total. 50 clusters x 20 = 1,000.
    order="global" (the overview figure): the ``k`` best (cluster, member) scores overall,
    each row once; ``k`` is required.
    """
    f = "opencs_select"
    _check_choice(f, "order", order, ("ascending_size", "global"))
    if not (_is_int(per_cluster) and per_cluster >= 1):
        raise _fail(f, "per_cluster", "an int >= 1", per_cluster)
    if k is not None and not (_is_int(k) and k >= 0):
        raise _fail(f, "k", "None or an int >= 0", k)
    if order == "global" and k is None:
        raise ConfigError(f"{f} with order='global' needs the 'k' parameter (OpenCS: 1000). "
                          "Got k=None.")
    if max_score is not None:
        _check_real(f, "max_score", max_score)
    keys, members = _clusters(f, clusters)
    sc = _cluster_scores(f, scores, keys, members)
    cap = np.inf if max_score is None else max_score
    # each cluster's usable members, best first (stable: ties keep member order)
    ranked = []
    for m, s in zip(members, sc):
        pos = np.flatnonzero(~np.isnan(s) & (s <= cap))
        pos = pos[np.argsort(-s[pos], kind="stable")]
        ranked.append((m[pos], s[pos]))
    limit = np.inf if k is None else int(k)
    if order == "global":
        rows = np.concatenate([r for r, _ in ranked] + [_EMPTY])
        vals = np.concatenate([v for _, v in ranked] + [np.empty(0)])
        best = _first_unique(rows[np.argsort(-vals, kind="stable")])
        return best[:int(limit)].astype(np.int64)
    picked: list[np.ndarray] = []
    taken = np.zeros(1 + max((int(m.max()) for m in members if m.size), default=-1), dtype=bool)
    total = 0
    for c in np.argsort([len(m) for m in members], kind="stable"):
        if total >= limit:
            break
        rows = _first_unique(ranked[c][0])
        new = rows[~taken[rows]][:int(min(per_cluster, limit - total))]
        taken[new] = True
        picked.append(new)
        total += len(new)
    return np.concatenate(picked + [_EMPTY]).astype(np.int64)
