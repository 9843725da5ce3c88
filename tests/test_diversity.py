"""Unit tests for the diversity-aware selectors (thresher.selection.deita, ds2, facility_location,
alpagasus, opencs): hand-checked small cases and parity with
deliberately naive references (one row at a time, no blocks, no heap)."""

from __future__ import annotations

import math

import numpy as np
import pytest

from thresher.errors import ConfigError
from thresher.selection.alpagasus import alpagasus_select
from thresher.selection.deita import deita_repr_filter
from thresher.selection.ds2 import ds2_diversity_filter
from thresher.selection.facility_location import facility_location
from thresher.selection.opencs import opencs_select

from test_selection import NAN, eq   # shared: int64 indices equal to an expected list


def unit(*degrees):
    """2-D unit vectors at the given angles (degrees): cos(a, b) = cos(angle difference)."""
    r = np.radians(degrees)
    return np.stack([np.cos(r), np.sin(r)], axis=1)


# --------------------------------------------------------------------------- naive references

def naive_deita(s, X, k, t):
    """DEITA's rule one row at a time: walk by (score desc, index), accept iff cos <= t to every
    accepted row."""
    order = sorted((i for i in range(len(s)) if not math.isnan(s[i])), key=lambda i: (-s[i], i))
    acc = []
    for i in order:
        if k is not None and len(acc) == k:
            break
        u = X[i] / np.linalg.norm(X[i])
        if all(float(u @ (X[j] / np.linalg.norm(X[j]))) <= t for j in acc):
            acc.append(i)
    return acc


def naive_ds2(s, X, k, top=10, thr=0.5, buckets=(5, 4, 3, 2)):
    """DS2's notebook loop: buckets in order, index order inside; first row accepted; then the
    mean of the `top` largest cosine distances (all of them while <= top selected) < thr."""
    U = X / np.linalg.norm(X, axis=1, keepdims=True)
    sel = []
    for b in buckets:
        for i in range(len(s)):
            if s[i] != b or len(sel) >= k:
                continue
            if not sel:
                sel.append(i)
                continue
            dist = sorted((1.0 - float(U[j] @ U[i]) for j in sel), reverse=True)[:top]
            if sum(dist) / len(dist) < thr:
                sel.append(i)
    return sel


def naive_fl(K, k):
    """Plain greedy on a (rows x candidates) similarity matrix: evaluate F(S + j) from scratch
    for every j, take the largest gain, lowest position among gains within 1e-9 of it (exact
    ties are common: two points that only cover each other). Also returns the smallest gap
    between the best and the runner-up gain over the steps (0 where there was a tie)."""
    n, m = K.shape
    S, gap = [], np.inf

    def F(T):
        return sum(max(K[i, j] for j in T) for i in range(n)) if T else 0.0

    for _ in range(min(k, m)):
        base = F(S)
        gains = np.array([F(S + [j]) - base if j not in S else -np.inf for j in range(m)])
        best = gains.max()
        S.append(int(np.flatnonzero(gains >= best - 1e-9 * max(1.0, best))[0]))
        if len(S) < m:
            gap = min(gap, gains[S[-1]] - np.sort(gains)[-2])
    return S, gap


# --------------------------------------------------------------------------- deita_repr_filter

def test_deita_hand_checked_2d():
    # cos > 0.9 <=> angle < 25.84 degrees. Score order: rows 3, 0, 4, 1, 2 (5 has NaN).
    X = unit(30, 50, 90, 0, 20, 45)
    s = [4.0, 2.0, 1.0, 5.0, 3.0, NAN]
    # row 3 (0 deg) first; row 0 (30): 30 from row 3 -> accept; row 4 (20): 20 from row 3 ->
    # reject; row 1 (50): 20 from row 0 -> reject; row 2 (90): 40 from row 1 ... but 60 from
    # row 0 and 90 from row 3 (row 1 was rejected) -> accept. Row 5 (45) is NaN: never.
    for chunk in (1, 2, 3, 100):
        eq(deita_repr_filter(s, X, chunk=chunk), [3, 0, 2])
        eq(deita_repr_filter(s, X, k=2, chunk=chunk), [3, 0])
    eq(deita_repr_filter(s, X, ratio=0.34), [3, 0])          # int(0.34 * 6) = 2


def test_deita_rejected_row_does_not_block_later_rows_in_block():
    # a (0 deg) kept; b (20) rejected by a; c (40) is 20 deg from b but 40 from a -> kept.
    # DEITA's batch_size > 1 code would also reject c (it compares with every earlier row of the
    # batch); the sequential rule, which we implement, keeps it.
    X = unit(0, 20, 40)
    for chunk in (1, 3):
        eq(deita_repr_filter([3.0, 2.0, 1.0], X, chunk=chunk), [0, 2])


def test_deita_threshold_is_inclusive_and_scale_free():
    X = np.array([[1.0, 0.0], [0.0, 5.0], [2.0, 2.0]])       # cos(0,1) = 0 exactly
    eq(deita_repr_filter([3.0, 2.0, 1.0], X, threshold=0.0), [0, 1])   # 0 <= 0 kept; row 2 cos .71
    eq(deita_repr_filter([3.0, 2.0, 1.0], X, threshold=0.75), [0, 1, 2])


@pytest.mark.parametrize("seed", [0, 1, 2])
def test_deita_matches_naive_sequential(seed):
    rng = np.random.default_rng(seed)
    n = 400
    X = rng.normal(size=(n, 4))                               # 4-D: many pairs above 0.8
    s = rng.integers(0, 6, n).astype(float)                   # heavy score ties
    s[rng.choice(n, 30, replace=False)] = NAN
    for t, k in ((0.8, None), (0.8, 25), (0.95, 60), (0.5, None)):
        ref = naive_deita(s, X, k, t)
        assert len(ref) > 5
        for chunk in (1, 7, 64, 1000):
            eq(deita_repr_filter(s, X, k=k, threshold=t, chunk=chunk), ref)
    X32 = X.astype(np.float32)
    eq(deita_repr_filter(s, X32, threshold=0.8, chunk=50), naive_deita(s, X32, None, 0.8))


def test_deita_edges():
    eq(deita_repr_filter([], np.empty((0, 3))), [])
    eq(deita_repr_filter([NAN, NAN], np.ones((2, 3))), [])
    X = unit(0, 90, 180)
    eq(deita_repr_filter([1.0, 2.0, 3.0], X, k=10), [2, 1, 0])  # k > n: all acceptable rows
    eq(deita_repr_filter([1.0, 2.0, 3.0], X, k=0), [])
    # a zero embedding is an error only where the row is a candidate
    Z = np.array([[1.0, 0.0], [0.0, 0.0]])
    eq(deita_repr_filter([1.0, NAN], Z), [0])
    with pytest.raises(ConfigError, match=r"'emb'.*non-zero.*\[1\]"):
        deita_repr_filter([1.0, 2.0], Z)
    with pytest.raises(ConfigError, match=r"one row per score \(3 rows\)"):
        deita_repr_filter([1.0, 2.0, 3.0], np.ones((2, 2)))
    with pytest.raises(ConfigError, match=r"exactly one of the 'k' and 'ratio'"):
        deita_repr_filter([1.0], np.ones((1, 2)), k=1, ratio=0.5)
    with pytest.raises(ConfigError, match=r"'chunk' parameter of deita_repr_filter"):
        deita_repr_filter([1.0], np.ones((1, 2)), chunk=0)


# --------------------------------------------------------------------------- ds2 variant

def test_ds2_hand_checked_and_inverted_relative_to_deita():
    # visit order: bucket 5 (rows 1, 2), then bucket 4 (rows 0, 3); row 4 (score 1) never.
    X = unit(0, 80, 10, 100, 90)
    s = [4.0, 5.0, 5.0, 4.0, 1.0]
    # row 1 first (empty set). row 2: distance 1 - cos70 = .658 >= .5 -> reject.
    # row 0: 1 - cos80 = .826 -> reject. row 3: 1 - cos20 = .060 -> accept.
    eq(ds2_diversity_filter(s, X, k=10), [1, 3])
    # DEITA on the same rows keeps the far row 2 (cos70 = .34) and drops the near ones:
    # row 0 (cos10 to row 2), row 3 (cos20 to row 1), row 4 (cos10 to row 1) are all > .9.
    eq(deita_repr_filter(s, X), [1, 2])


def test_ds2_top_largest_distances():
    X = unit(0, 10, 20, 30)
    s = [5.0] * 4
    # rows 0, 1, 2 accepted (means .015, .038); row 3 vs {0, 10, 20}: distances .134, .060,
    # .015. top=2 -> mean(.134, .060) = .097 >= .08 reject; top=3 -> mean of all .070 accept.
    eq(ds2_diversity_filter(s, X, k=10, top=2, max_mean_distance=0.08), [0, 1, 2])
    eq(ds2_diversity_filter(s, X, k=10, top=3, max_mean_distance=0.08), [0, 1, 2, 3])
    eq(ds2_diversity_filter(s, X, k=2, top=3, max_mean_distance=0.08), [0, 1])


@pytest.mark.parametrize("seed", [0, 1])
def test_ds2_matches_naive_loop(seed):
    rng = np.random.default_rng(seed)
    n = 500
    X = np.array([1.0, 0, 0, 0, 0]) + 0.7 * rng.normal(size=(n, 5))   # a loose cone
    s = rng.integers(0, 7, n).astype(float)                    # 0, 1, 6 are in no bucket
    s[:5] = NAN
    for k in (40, 1000):
        ref = naive_ds2(s, X, k)
        assert 15 < len(ref) < (s >= 2).sum()                  # past `top`, and some rejections
        for chunk in (1, 16, 333, 5000):
            eq(ds2_diversity_filter(s, X, k=k, chunk=chunk), ref)
    ref = naive_ds2(s, X, 1000, top=3, thr=0.3, buckets=(6, 2))
    eq(ds2_diversity_filter(s, X, k=1000, top=3, max_mean_distance=0.3, buckets=(6, 2),
                            chunk=20), ref)


def test_ds2_edges():
    eq(ds2_diversity_filter([1.0, NAN], np.ones((2, 2)), k=5), [])   # no row in a bucket
    eq(ds2_diversity_filter([5.0, 5.0], np.ones((2, 2)), k=0), [])
    eq(ds2_diversity_filter([], np.empty((0, 2)), k=3), [])
    with pytest.raises(ConfigError, match=r"'k' parameter of ds2_diversity_filter"):
        ds2_diversity_filter([5.0], np.ones((1, 2)), k=None)
    with pytest.raises(ConfigError, match=r"'top'"):
        ds2_diversity_filter([5.0], np.ones((1, 2)), k=1, top=0)


# --------------------------------------------------------------------------- facility location

def test_facility_location_hand_checked_line():
    # 1-D points, d = 1, so sim = exp(-|x_i - x_j|). Left cluster {0, 1, 3}, right {10, 11, 12.5}.
    x = np.array([0.0, 1.0, 3.0, 10.0, 11.0, 12.5])[:, None]
    e = math.exp
    # 1st: x=11 (row 4): F = 1 + 2e^-1... = 1 + e^-1 + e^-1.5 + e^-8 + e^-10 + e^-11 = 1.5914
    #      beats x=1 (row 1): 1 + e^-1 + e^-2 + e^-9 + e^-10 + e^-11.5 = 1.5034.
    # 2nd: x=1, gain about 1.5028. 3rd: x=3, gain 1 - e^-2 = .8647 > x=12.5's 1 - e^-1.5 = .7769.
    # 4th: x=12.5. 5th/6th: x=0 and x=10 both gain exactly 1 - e^-1: lower index first.
    eq(facility_location(x, k=6), [4, 1, 2, 5, 0, 3])
    eq(facility_location(x, k=2), [4, 1])
    assert 1 - e(-2) > 1 - e(-1.5) > 1 - e(-1)
    # candidates restrict the choice, every row still counts: of x = 0, 3, 10 (F = 1.418, 1.186,
    # 1.451) x=10 comes first, then x=0 (gain about 1.417: it covers 0 and 1 from scratch)
    eq(facility_location(x, k=2, candidates=[0, 2, 3]), [3, 0])


def _kernel(X, metric):
    """Naive similarity matrix, entry by entry (rows x rows)."""
    n, d = X.shape
    K = np.empty((n, n))
    for i in range(n):
        for j in range(n):
            if metric == "euclidean":
                K[i, j] = math.exp(-math.sqrt(((X[i] - X[j]) ** 2).sum()) / d)
            else:
                c = X[i] @ X[j] / (np.linalg.norm(X[i]) * np.linalg.norm(X[j]))
                K[i, j] = (1 + c) / 2
    return K


@pytest.mark.parametrize("metric", ["euclidean", "cosine"])
def test_facility_location_lazy_matches_plain_greedy(metric):
    rng = np.random.default_rng(7)
    X = rng.normal(size=(40, 3))
    K = _kernel(X, metric)
    ref, gap = naive_fl(K, 25)
    if metric == "cosine":
        assert gap < 1e-12                                     # an exact tie is on the path
    eq(facility_location(X, k=25, metric=metric), ref)
    cand = np.array([31, 2, 17, 5, 9, 22, 38, 11])
    ref, _ = naive_fl(K[:, cand], 5)
    eq(facility_location(X, k=5, metric=metric, candidates=cand), cand[ref])
    # gains along the greedy order never increase (submodular) and stay >= 0 (monotone)
    order = facility_location(X, k=40, metric=metric)
    F = [K[:, order[:t]].max(axis=1).sum() if t else 0.0 for t in range(41)]
    gains = np.diff(F)
    assert (gains >= -1e-9).all() and (np.diff(gains) <= 1e-6).all()
    assert sorted(order.tolist()) == list(range(40))          # k = n: every row once


def test_facility_location_edges_and_limits():
    eq(facility_location(np.empty((0, 4)), k=3), [])
    eq(facility_location(np.ones((3, 2)), k=0), [])
    eq(facility_location(np.eye(3), k=10), [0, 1, 2])          # symmetric: ties by index
    # near tie: F({x=3}) exceeds F({x=3+1e-9}) by about 5e-11, within the 1e-9 tie tolerance,
    # so the earlier row wins; then x=0 (gain 1 - e^-3)
    eq(facility_location(np.array([[0.0], [3.0 + 1e-9], [3.0]]), k=2), [1, 0])
    eq(facility_location(np.array([[0.0], [3.0 + 1e-6], [3.0]]), k=2), [2, 0])  # a real gap
    with pytest.raises(ConfigError, match=r"'max_n' limit of 5"):
        facility_location(np.ones((6, 2)), k=1, max_n=5)
    with pytest.raises(ConfigError, match=r"'candidates' parameter"):
        facility_location(np.ones((3, 2)), k=1, candidates=[0, 3])
    with pytest.raises(ConfigError, match=r"'candidates' parameter"):
        facility_location(np.ones((3, 2)), k=1, candidates=[1, 1])
    with pytest.raises(ConfigError, match=r"'metric' parameter.*'euclidean', 'cosine'"):
        facility_location(np.ones((3, 2)), k=1, metric="manhattan")
    with pytest.raises(ConfigError, match=r"non-zero"):
        facility_location(np.array([[1.0, 0.0], [0.0, 0.0]]), k=1, metric="cosine")


# --------------------------------------------------------------------------- alpagasus

def test_alpagasus_threshold_index_order():
    s = [4.5, 5.0, 4.0, NAN, 4.5, 4.499]
    eq(alpagasus_select(s, threshold=4.5), [0, 1, 4])
    eq(alpagasus_select(s, threshold=5.0), [1])


def test_alpagasus_budget_random_tie_break_in_boundary_bucket():
    s = np.array([5.0, 4.5, 4.5, 4.5, 4.0, NAN, 4.5, 3.0])
    bucket = np.array([1, 2, 3, 6])
    seen = set()
    for seed in range(40):
        got = alpagasus_select(s, k=3, seed=seed)
        want = np.sort(np.random.default_rng(seed).permutation(bucket)[:2])
        eq(got, [0] + want.tolist())
        assert got.tolist() == alpagasus_select(s, k=3, seed=seed).tolist()   # deterministic
        seen.update(got[1:].tolist())
    assert seen == {1, 2, 3, 6}                                # not just the lowest indices
    eq(alpagasus_select(s, k=1), [0])                           # cut above the tie bucket
    eq(alpagasus_select(s, k=5), [0, 1, 2, 3, 6])               # whole bucket fits: no draw
    eq(alpagasus_select(s, k=20), [0, 1, 2, 3, 6, 4, 7])        # k > candidates
    eq(alpagasus_select(s, ratio=0.25), alpagasus_select(s, k=2))   # int(0.25 * 8) = 2
    eq(alpagasus_select(s, threshold=4.5, k=20), [0, 1, 2, 3, 6])
    eq(alpagasus_select(s, k=0), [])


def test_alpagasus_errors():
    with pytest.raises(ConfigError, match=r"needs a 'threshold'"):
        alpagasus_select([1.0])
    with pytest.raises(ConfigError, match=r"'threshold'.*real number"):
        alpagasus_select([1.0], threshold=NAN)


# --------------------------------------------------------------------------- opencs

def test_opencs_ascending_size_hand_checked():
    scores = np.array([90, 95, 80, NAN, 50, 60, 101, 70], dtype=float)
    clusters = {0: [0, 1, 2, 3], 1: [4, 5], 2: [1, 6, 7]}
    # sizes 2 (c1), 3 (c2), 4 (c0). c1 -> 5 (60), 4 (50). c2 -> 1 (95), 7 (70); row 6 (101) is
    # above 100. c0 -> ranked 1, 0, 2 (3 is NaN); 1 is taken -> 0, 2.
    eq(opencs_select(scores, clusters, per_cluster=2), [5, 4, 1, 7, 0, 2])
    eq(opencs_select(scores, clusters, per_cluster=2, k=3), [5, 4, 1])
    eq(opencs_select(scores, clusters, per_cluster=1), [5, 1, 0])
    eq(opencs_select(scores, list(clusters.values()), per_cluster=2), [5, 4, 1, 7, 0, 2])
    eq(opencs_select(scores, clusters, per_cluster=2, max_score=None), [5, 4, 6, 1, 0, 2])
    eq(opencs_select(scores, clusters, order="global", k=4), [1, 0, 2, 7])


def test_opencs_per_cluster_scores_and_ties():
    clusters = {0: [0, 1], 1: [1, 2]}
    scores = {0: [10.0, 20.0], 1: [90.0, 5.0]}                 # row 1 scored twice
    eq(opencs_select(scores, clusters, per_cluster=1), [1, 2])  # equal sizes: given order
    eq(opencs_select(scores, clusters, order="global", k=2), [1, 0])
    eq(opencs_select([[10.0, 20.0], [90.0, 5.0]], [[0, 1], [1, 2]], per_cluster=1), [1, 2])
    eq(opencs_select([7.0, 7.0, 7.0], {0: [2, 0, 1]}, per_cluster=2), [2, 0])   # member order
    with pytest.raises(ConfigError, match=r"order='global' needs the 'k'"):
        opencs_select([1.0], {0: [0]}, order="global")
    with pytest.raises(ConfigError, match=r"align with its 2 members"):
        opencs_select({0: [1.0]}, {0: [0, 1]})
    with pytest.raises(ConfigError, match=r"refers to row 5"):
        opencs_select([1.0, 2.0], {0: [0, 5]})
