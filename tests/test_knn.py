"""thresher.algorithms.knn.knn against a deliberately naive numpy brute force (one query at a time, full
stable sort), plus hand-checked tie cases. Milliseconds each."""

from __future__ import annotations

import numpy as np
import pytest

from thresher.errors import ConfigError
from thresher.algorithms.knn import knn


def naive_knn(query, pool, k, exclude_self=False, duplicate=False):
    """Loop over queries; float64 cosine distances; stable argsort = ties by lower index."""
    q = query / np.linalg.norm(query, axis=1, keepdims=True)
    p = pool / np.linalg.norm(pool, axis=1, keepdims=True)
    n_pool = len(p)
    if duplicate:
        p = np.concatenate([p, p])
    dist, idx = [], []
    for i in range(len(q)):
        d = 1.0 - p @ q[i]
        cand = np.arange(len(p))
        if exclude_self:
            cand = cand[cand != i]
        order = cand[np.argsort(d[cand], kind="stable")][:k]
        dist.append(d[order])
        idx.append(order % n_pool)
    return np.array(dist), np.array(idx)


def rand(n, d, seed):
    return np.random.default_rng(seed).normal(size=(n, d)).astype(np.float32)


def check(got, want, atol=1e-5):
    (gd, gi), (wd, wi) = got, want
    assert gd.dtype == np.float32 and gi.dtype == np.int64
    assert gi.tolist() == wi.tolist()
    np.testing.assert_allclose(gd, np.clip(wd, 0, 2), atol=atol)
    assert (np.diff(gd, axis=1) >= 0).all()                  # ascending


def test_parity_self_pool_exclude_self():
    x = rand(60, 8, 0)
    check(knn(x, k=5, device="cpu"), naive_knn(x, x, 5, exclude_self=True))


def test_parity_self_pool_keep_self():
    x = rand(40, 8, 1)
    got = knn(x, k=4, exclude_self=False, device="cpu")
    check(got, naive_knn(x, x, 4))
    assert got[1][:, 0].tolist() == list(range(40))          # each point is its own nearest


def test_parity_separate_pool():
    q, p = rand(30, 6, 2), rand(50, 6, 3)
    check(knn(q, p, k=7, device="cpu"), naive_knn(q, p, 7))
    # exclude_self means nothing with a separate pool: row i of the pool is not the query i
    check(knn(q, p, k=7, exclude_self=True, device="cpu"), naive_knn(q, p, 7))


def test_parity_duplicate_pool():
    x = rand(25, 5, 4)
    got = knn(x, k=6, duplicate_pool=True, device="cpu")
    check(got, naive_knn(x, x, 6, duplicate=True))
    # self and its copy come first, both mapped back to the sample's own index, distance ~0
    assert got[1][:, :2].tolist() == [[i, i] for i in range(25)]
    assert np.abs(got[0][:, :2]).max() < 1e-6


def test_chunk_size_invariance():
    x = rand(101, 16, 5)
    ref = knn(x, k=9, chunk_size=4096, device="cpu")
    for cs in (1, 7, 50, 101):
        d, i = knn(x, k=9, chunk_size=cs, device="cpu")
        assert i.tolist() == ref[1].tolist()
        np.testing.assert_allclose(d, ref[0], atol=1e-6)


def test_unnormalised_input_is_normalised():
    x = rand(20, 4, 6)
    scaled = x * np.random.default_rng(7).uniform(0.1, 50, size=(20, 1)).astype(np.float32)
    a, b = knn(x, k=3, device="cpu"), knn(scaled, k=3, device="cpu")
    assert a[1].tolist() == b[1].tolist()
    np.testing.assert_allclose(a[0], b[0], atol=1e-6)


def test_exact_duplicates_and_ties_by_index():
    # 12 one-hot rows, row i = e_(i % 4): distances are exactly 0 (same vector) or 1
    x = np.eye(4, dtype=np.float32)[np.arange(12) % 4]
    for cs in (1, 5, 12):
        for dt in ("float32", "float16"):
            d, i = knn(x, k=5, chunk_size=cs, device="cpu", dtype=dt)
            # row 0: its duplicates 4 and 8 (distance 0), then the lowest other indices
            assert i[0].tolist() == [4, 8, 1, 2, 3]
            assert i[4].tolist() == [0, 8, 1, 2, 3]          # self (4) excluded by index only
            assert i[11].tolist() == [3, 7, 0, 1, 2]
            assert d[0].tolist() == [0.0, 0.0, 1.0, 1.0, 1.0]
    check(knn(x, k=11, device="cpu"), naive_knn(x, x, 11, exclude_self=True), atol=0)
    # duplicated pool: ties go by index in the 2N pool, so originals (0, 4, 8) before copies
    d, i = knn(x, k=6, duplicate_pool=True, device="cpu")
    assert i[0].tolist() == [0, 4, 8, 0, 4, 8]
    assert d[0].tolist() == [0.0] * 6


def test_float64_parity_is_tight():
    x = rand(50, 8, 15).astype(np.float64)
    check(knn(x, k=6, device="cpu", dtype="float64"), naive_knn(x, x, 6, exclude_self=True),
          atol=1e-6)
    assert np.abs(knn(x, k=6, device="cpu", dtype="float64")[0]
                  - np.clip(naive_knn(x, x, 6, exclude_self=True)[0], 0, 2)).max() < 1e-7


def test_float16_matches_float32_on_separated_data():
    x = rand(40, 8, 8)
    a = knn(x, k=3, device="cpu", dtype="float32")
    b = knn(x, k=3, device="cpu", dtype="float16")
    np.testing.assert_allclose(a[0], b[0], atol=5e-3)
    assert (a[1][:, 0] == b[1][:, 0]).mean() > 0.9


def test_torch_input_and_k_limits():
    import torch

    x = rand(5, 3, 9)
    d, i = knn(torch.from_numpy(x), k=4, device="cpu")      # all 4 others
    assert sorted(i[0].tolist()) == [1, 2, 3, 4]
    assert knn(x, k=5, exclude_self=False, device="cpu")[1].shape == (5, 5)
    assert knn(x, k=10, duplicate_pool=True, device="cpu")[1].shape == (5, 10)


@pytest.mark.parametrize("kwargs, match", [
    (dict(k=0), "'k' parameter of knn must be an int >= 1. Got 0"),
    (dict(k=5), "at most the number of candidate neighbours \\(4"),
    (dict(k=3, dtype="int8"), "'dtype' parameter of knn must be one of"),
    (dict(k=3, chunk_size=0), "'chunk_size' parameter of knn must be an int >= 1"),
    (dict(k=3, device="tpu:x"), "'device' parameter of knn"),
    (dict(k=3, exclude_self="yes"), "'exclude_self' parameter of knn must be a bool"),
])
def test_errors(kwargs, match):
    with pytest.raises(ConfigError, match=match):
        knn(rand(5, 3, 10), **kwargs)


def test_zero_row_and_width_mismatch_are_errors():
    x = rand(5, 3, 11)
    x[2] = 0
    with pytest.raises(ConfigError, match="non-zero rows .*first indices: \\[2\\]"):
        knn(x, k=2)
    with pytest.raises(ConfigError, match="same width. Got 3 and 4"):
        knn(rand(5, 3, 12), rand(6, 4, 13), k=2)
    with pytest.raises(ConfigError, match="2-D array"):
        knn(np.ones(5), k=2)


@pytest.mark.gpu
def test_cuda_matches_cpu():
    torch = pytest.importorskip("torch")
    if not torch.cuda.is_available():
        pytest.skip("no CUDA device")
    x = rand(3000, 64, 14)
    a = knn(x, k=10, device="cpu")
    b = knn(x, k=10, device="cuda", chunk_size=512)
    assert (a[1] == b[1]).mean() > 0.999
    np.testing.assert_allclose(a[0], b[0], atol=1e-5)
    e = np.eye(4, dtype=np.float32)[np.arange(12) % 4]
    assert knn(e, k=5, device="cuda", dtype="float16")[1][0].tolist() == [4, 8, 1, 2, 3]
