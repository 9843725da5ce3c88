"""DS2 score curation (thresher.algorithms.ds2_curation) and DS2 bucket selection (thresher.selection.ds2).

METHODS.md 8.2 formula checks, hand-checked pieces of SimiFeat, parity of the HOC consensus with a
naive loop, and recovery on synthetic clustered data whose true scores and rating noise are known.
"""

from __future__ import annotations

import numpy as np
import pytest

from thresher.errors import ConfigError
from thresher.algorithms.ds2_curation import (
    _flag_per_class,
    _hoc_moments,
    _neighbour_votes,
    ds2_compress,
    ds2_curate,
    expected_noise_rate,
    hoc_consensus,
    hoc_estimate,
    long_tail_from_distance,
    long_tail_score,
    noisy_rate,
    simifeat_detect,
    suggest_scores,
)
from thresher.selection.ds2 import ds2_bucket_select

NAN = float("nan")
K = 6

# A realistic rater: true score i is rated j with probability T_TRUE[i, j]; diagonal 0.65-0.75,
# mistakes mostly one class away (cf. the DS2 matrices in METHODS.md 8.1).
T_TRUE = np.array([
    [0.70, 0.20, 0.05, 0.05, 0.00, 0.00],
    [0.15, 0.65, 0.15, 0.05, 0.00, 0.00],
    [0.00, 0.10, 0.70, 0.15, 0.05, 0.00],
    [0.00, 0.05, 0.10, 0.75, 0.10, 0.00],
    [0.00, 0.00, 0.05, 0.15, 0.70, 0.10],
    [0.00, 0.00, 0.00, 0.10, 0.20, 0.70]])
P_TRUE = np.array([0.10, 0.15, 0.20, 0.25, 0.20, 0.10])

# Small settings so the suite stays fast; the draws (2000 of 3000) are genuinely random.
FAST = dict(hoc_rounds=10, hoc_sample_size=2000, hoc_steps=600, detect_epochs=15,
            detect_sample_size=2000, device="cpu")


def synthetic(n=3000, d=32, per_class=4, spread=1.2, seed=0):
    """Unit vectors in 24 gaussian clusters (4 per true class); ratings drawn through T_TRUE.
    spread 1.2 makes clusters overlap a little: ~94 % of 2-NN pairs share the true class."""
    rng = np.random.default_rng(seed)
    centres = rng.normal(size=(K * per_class, d))
    centres /= np.linalg.norm(centres, axis=1, keepdims=True)
    true = rng.choice(K, size=n, p=P_TRUE)
    cluster = true * per_class + rng.integers(per_class, size=n)
    x = centres[cluster] + spread * rng.normal(size=(n, d)) / np.sqrt(d)
    x /= np.linalg.norm(x, axis=1, keepdims=True)
    u = rng.random(n)[:, None]
    rated = (u > T_TRUE[true].cumsum(1)).sum(1)             # inverse-CDF draw per row
    return x.astype(np.float32), true, rated


@pytest.fixture(scope="module")
def data():
    return synthetic()


@pytest.fixture(scope="module")
def curated(data):
    x, _, rated = data
    return ds2_curate(rated, x, seed=0, **FAST)


# --------------------------------------------------------------------------- 8.2 formula checks

def test_compress_table():
    out = ds2_compress([1, 2, 3, 4, 5, 6, 7, 8, 9, 10, NAN])
    assert out[:10].tolist() == [0, 0, 0, 0, 1, 2, 3, 4, 5, 5]
    assert np.isnan(out[10])
    assert ds2_compress([NAN, 7], failed="zero").tolist() == [0.0, 3.0]   # DS2: failure -> 0


@pytest.mark.parametrize("bad", [0, 11, 5.5, -1])
def test_compress_rejects_out_of_range(bad):
    with pytest.raises(ConfigError, match="integer ratings in 1..10 .* at index 1"):
        ds2_compress([5, bad])


def test_compress_failed_option():
    with pytest.raises(ConfigError, match="'failed' parameter of ds2_compress must be one of"):
        ds2_compress([5], failed="drop")


def test_long_tail_formula():
    assert long_tail_from_distance([0.0, 0.5, 1.0]).tolist() == [0.0, 0.2449, 0.4621]


def test_long_tail_on_constructed_embeddings():
    same = np.array([[1.0, 0.0], [1.0, 0.0]])
    sixty = np.array([[1.0, 0.0], [0.5, np.sqrt(3) / 2]])  # cos 0.5 -> distance 0.5
    ortho = np.array([[1.0, 0.0], [0.0, 1.0]])
    assert long_tail_score(same, k=1, device="cpu").tolist() == [0.0, 0.0]
    assert long_tail_score(sixty, k=1, device="cpu").tolist() == [0.2449, 0.2449]
    assert long_tail_score(ortho, k=1, device="cpu").tolist() == [0.4621, 0.4621]
    # DS2's duplicated pool: neighbours are self, copy (0, 0) and the other point (1):
    # mean 1/3 -> tanh(1/6) = 0.1651
    assert long_tail_score(ortho, k=3, duplicate_pool=True, device="cpu").tolist() == [0.1651] * 2


def test_noisy_rate_rounding():
    rate, err = noisy_rate([0, 3, 1, 2], [0, 4, 2, 2])
    np.testing.assert_allclose(rate, [0.5, 4 / 6, 0.5, 0.75])
    assert err.tolist() == [False, True, False, True]      # exactly 0.5 rounds to 0 (even)


# --------------------------------------------------------------------------- SimiFeat pieces

def test_expected_noise_rate_clipping():
    T = np.diag([0.8, 0.5, 0.0])
    rho = expected_noise_rate(T, [0.5, 0.3, 0.2], [0.5, 0.1, 0.4])
    # ratios 0.8, 1.5 -> min 1, 0  =>  rho 0.2, 0 -> 0.05, 1 -> 0.95
    np.testing.assert_allclose(rho, [0.2, 0.05, 0.95])


def test_neighbour_votes_hand_checked():
    y_sub = np.array([0, 1, 1, 0])
    dist = np.array([[0.1, 0.3], [0.2, 0.2], [0.1, 0.1], [0.0, 0.4]])
    nn = np.array([[1, 2], [2, 0], [1, 3], [0, 1]])
    v = _neighbour_votes(y_sub, dist, nn, 2)
    # point 0: self weight 1 - (2*0.1 - 0.3) = 1.1 on class 0; 0.9 + 0.7 on class 1
    np.testing.assert_allclose(v[0], np.array([1.1, 1.6]) / np.hypot(1.1, 1.6))
    # point 1: self 1 - 0.2 = 0.8 and 0.8 on class 1 (point 2), 0.8 on class 0 (point 0)
    np.testing.assert_allclose(v[1], np.array([0.8, 1.6]) / np.hypot(0.8, 1.6))
    # point 3: self 1 - (0 - 0.4) = 1.4 and 1.0 (point 0) on class 0; 0.6 on class 1
    np.testing.assert_allclose(v[3], np.array([2.4, 0.6]) / np.hypot(2.4, 0.6))


def test_flag_per_class_percentile():
    score = np.array([1.0, 2.0, 3.0, 4.0, 5.0, 0.0, 9.0, 0.5])
    y_sub = np.array([0, 0, 0, 0, 0, 1, 1, 1])
    rho = np.array([0.4, 0.05])
    # class 0: 60th percentile of 1..5 = 3.4 -> flags 4, 5; class 1: 95th of (0, 9, 0.5) = 8.15
    assert _flag_per_class(score, y_sub, rho).tolist() == [0, 0, 0, 1, 1, 0, 1, 0]


def test_suggest_scores_hand_checked():
    counts = np.array([[3, 0, 1, 0, 0, 0], [0, 0, 0, 0, 0, 0], [0, 5, 0, 0, 0, 5]])
    sugg, conf = suggest_scores(counts, [0, 0, 1], [0.8, 0.5, 1.0])
    # row 0: S = [4,1,2,1,1,1]/10, own class 0 -> -1, best 2 (0.2); row 1: all 1/6, own 0 -> 1
    # row 2: S = [1,6,1,1,1,6]/16, own 1 -> -1 (even though most suggested), best 5 (6/16)
    assert sugg.tolist() == [2, 1, 5]
    np.testing.assert_allclose(conf, [0.2 * 0.8, 0.5 / 6, 6 / 16])


def test_simifeat_counts_are_consistent(data):
    x, _, rated = data
    det = simifeat_detect(rated, x, T_TRUE, P_TRUE, epochs=2, sample_size=1000, seed=1,
                          device="cpu")
    drawn, flagged = det["times_drawn"], det["times_flagged"]
    assert set(np.unique(drawn)) == {0, 1, 2} and (flagged <= drawn).all()
    np.testing.assert_allclose(det["noisy_rate"], (flagged + 1) / (drawn + 2))
    never = drawn == 0                                      # 0 of 0 -> 0.5 -> not an error
    assert never.sum() > 1000
    assert (det["noisy_rate"][never] == 0.5).all() and not det["is_error"][never].any()
    assert (det["is_error"] == (flagged * 2 > drawn)).all()
    assert (det["suggested"] != rated).all()                # own score never suggested
    # rho_c * (drawn of class c) flagged per epoch, give or take percentile ties
    rho = expected_noise_rate(T_TRUE, P_TRUE, np.bincount(rated, minlength=K) / len(rated))
    expect = sum(rho[c] * drawn[rated == c].sum() for c in range(K))
    assert abs(flagged.sum() - expect) < 0.02 * drawn.sum()


# --------------------------------------------------------------------------- HOC

def naive_consensus(labels, emb):
    """One round over the whole pool, one point at a time: 2 nearest others by cosine."""
    e = emb / np.linalg.norm(emb, axis=1, keepdims=True)
    c1, c2, c3 = np.zeros(K), np.zeros((K, K)), np.zeros((K, K, K))
    for i in range(len(e)):
        d = 1 - e @ e[i]
        d[i] = np.inf
        a, b = np.argsort(d, kind="stable")[:2]
        c1[labels[i]] += 1
        c2[labels[i], labels[a]] += 1
        c3[labels[i], labels[a], labels[b]] += 1
    return c1 / len(e), c2 / len(e), c3 / len(e)


def test_hoc_consensus_matches_naive_loop(data):
    x, _, rated = data
    x, rated = x[:400], rated[:400]
    got = hoc_consensus(rated, x, K, rounds=3, sample_size=10_000, device="cpu")
    for g, w in zip(got, naive_consensus(rated, x)):       # whole pool each round: same counts
        np.testing.assert_allclose(g, w, atol=1e-12)
    assert got[0].sum() == pytest.approx(1.0) and got[2].sum() == pytest.approx(1.0)


def test_hoc_estimate_exact_moments():
    import torch

    cs = [c.numpy() for c in _hoc_moments(torch.from_numpy(T_TRUE), torch.from_numpy(P_TRUE))]
    T, p = hoc_estimate(*cs, K, steps=600, seed=0)
    assert np.abs(T - T_TRUE).max() < 0.03                  # measured 0.003
    assert np.abs(p - P_TRUE).max() < 0.02
    np.testing.assert_allclose(T.sum(1), 1) and np.testing.assert_allclose(p.sum(), 1)


def test_hoc_recovers_transition_matrix(curated):
    # measured max |T - T_TRUE| = 0.080 here (0.056-0.082 over data seeds 0-3), the largest on
    # the diagonal: ~6 % of 2-NN pairs cross a true class, which HOC reads as rater disagreement
    assert np.abs(curated["T"] - T_TRUE).max() < 0.10
    assert np.abs(np.diag(curated["T"]) - np.diag(T_TRUE)).mean() < 0.06   # measured 0.046
    assert np.abs(curated["p_clean"] - P_TRUE).max() < 0.05


# --------------------------------------------------------------------------- detection, curation

def test_simifeat_finds_corrupted_ratings(data, curated):
    _, true, rated = data
    wrong = rated != true                                   # ~30 % of ratings are corrupted
    err = curated["is_error"]
    precision = (err & wrong).sum() / err.sum()
    recall = (err & wrong).sum() / wrong.sum()
    assert wrong.mean() == pytest.approx(0.30, abs=0.02)
    assert precision >= 0.8 and recall >= 0.8               # measured 0.904 / 0.978
    fix = err & wrong
    assert (curated["suggested"][fix] == true[fix]).mean() >= 0.8


def test_curation_moves_scores_towards_truth(data, curated):
    _, true, rated = data
    before, after = (rated == true).mean(), (curated["curated"] == true).mean()
    assert after >= before + 0.15                           # measured 0.697 -> 0.922
    assert np.abs(curated["curated"] - true).mean() < 0.6 * np.abs(rated - true).mean()


def test_curate_rule_and_outputs(data, curated):
    _, _, rated = data
    c = curated
    sure = c["is_error"] & (c["confidence"] >= 0.5)
    np.testing.assert_array_equal(c["curated"], np.where(sure, c["suggested"], rated))
    assert (c["is_error"] & ~sure).any()                    # low-confidence flags exist and kept
    assert ((c["rare"] >= 0) & (c["rare"] <= 0.7616)).all()
    np.testing.assert_allclose(c["p_org"], np.bincount(rated, minlength=K) / len(rated))
    assert c["T"].shape == (K, K) and c["p_clean"].shape == (K,)


def test_curate_drop_low_confidence_and_nan_labels(data):
    x, _, rated = data
    x, labels = x[:1500], rated[:1500].astype(float)
    labels[::20] = NAN                                      # 75 failed ratings
    out = ds2_curate(labels, x, keep_low_confidence_flagged=False, seed=0,
                     **{**FAST, "hoc_sample_size": 1000, "detect_sample_size": 1000})
    failed = np.isnan(labels)
    assert np.isnan(out["curated"][failed]).all() and np.isnan(out["noisy_rate"][failed]).all()
    assert (out["suggested"][failed] == -1).all() and (out["times_drawn"][failed] == 0).all()
    assert not out["is_error"][failed].any() and np.isfinite(out["rare"]).all()
    low = out["is_error"] & (out["confidence"] < 0.5)
    assert low.any() and np.isnan(out["curated"][low]).all()
    ok = ~failed & ~out["is_error"]
    np.testing.assert_array_equal(out["curated"][ok], labels[ok])


def test_duplicate_pool_inflates_agreement(data, curated):
    # METHODS.md 2.7.4: with every sample twice in the pool, a sample and its copy are often each
    # other's nearest neighbour, which HOC reads as agreement -> diagonal biased upwards
    x, _, rated = data
    dup = ds2_curate(rated, x, duplicate_pool=True, seed=0, **FAST)
    assert np.diag(dup["T"]).mean() > np.diag(curated["T"]).mean() + 0.05   # measured 0.80 vs 0.70
    # duplicated long-tail mean includes self and copy: (k-2)/k of the clean 8-NN mean, roughly
    assert (dup["rare"] < curated["rare"]).mean() > 0.95


def test_curation_errors(data):
    x, _, rated = data
    with pytest.raises(ConfigError, match="integers in 0..5 .* e.g. 6.0 at index 0"):
        ds2_curate([6, 1, 2], x[:3])
    with pytest.raises(ConfigError, match="one row per label \\(3\\)"):
        ds2_curate([0, 1, 2], x[:4])
    with pytest.raises(ConfigError, match="'confidence_prob' parameter of ds2_curate"):
        ds2_curate(rated, x, confidence_prob=1.5)
    with pytest.raises(ConfigError, match="'T' parameter of simifeat_detect must be a square"):
        simifeat_detect(rated, x, np.ones((6, 5)), P_TRUE)
    with pytest.raises(ConfigError, match="'k' parameter of simifeat_detect must be an int >= 3"):
        simifeat_detect(rated, x, T_TRUE, P_TRUE, k=2)
    with pytest.raises(ConfigError, match="'c3' parameter of hoc_estimate must be a finite"):
        hoc_estimate(np.ones(6), np.ones((6, 6)), np.ones((6, 6)), K)


# --------------------------------------------------------------------------- bucket selection

def eq(a, b):
    assert a.dtype == np.int64
    assert a.tolist() == list(b)


def test_bucket_whole_buckets_fit():
    s = [5, 3, 5, 4, 4, 0]
    r = [0.1, 0.9, 0.2, 0.3, 0.1, 0.5]
    eq(ds2_bucket_select(s, r, k=2), [0, 2])                # bucket 5 exactly fills it
    eq(ds2_bucket_select(s, r, k=4), [0, 2, 3, 4])          # 5s, then all 4s


def test_bucket_boundary_broken_by_rare():
    s = [5, 4, 4, 4, 3, 4, 5]
    r = [0.0, 0.2, 0.7, 0.2, 0.9, 0.5, 0.1]
    # bucket 5 = {0, 6} whole; bucket 4 = {1, 2, 3, 5} needs 2 of 4: rare 0.7 (2), 0.5 (5)
    eq(ds2_bucket_select(s, r, k=4), [0, 6, 2, 5])
    # 3 of bucket 4: next is a tie at 0.2 between 1 and 3 -> lower index
    eq(ds2_bucket_select(s, r, k=5), [0, 6, 2, 5, 1])
    # rare never lifts a lower bucket: row 4 (rarest, score 3) only after all 4s
    eq(ds2_bucket_select(s, r, k=7), [0, 6, 1, 2, 3, 5, 4])
    eq(ds2_bucket_select(s, r, ratio=0.5), [0, 6, 2])       # int(3.5) = 3


def test_bucket_nan_excluded_and_small_pool():
    s = [NAN, 2, NAN, 5, 2]
    r = [0.9, 0.1, NAN, 0.0, 0.3]                           # rare of a NaN-score row is ignored
    eq(ds2_bucket_select(s, r, k=10), [3, 1, 4])            # only the 3 scored rows
    eq(ds2_bucket_select(s, r, k=2), [3, 4])
    eq(ds2_bucket_select(s, r, k=0), [])


def test_bucket_matches_lexicographic_set():
    rng = np.random.default_rng(0)
    s = rng.integers(0, 6, size=500).astype(float)
    s[rng.random(500) < 0.1] = NAN
    r = np.round(rng.random(500), 2)                        # coarse: many ties
    for k in (0, 1, 37, 100, 250, 449, 600):
        got = ds2_bucket_select(s, r, k=k)
        ok = np.flatnonzero(~np.isnan(s))
        ref = ok[np.lexsort((ok, -r[ok], -s[ok]))][:k]      # (score desc, rare desc, index asc)
        assert sorted(got.tolist()) == sorted(ref.tolist())


def test_bucket_errors():
    with pytest.raises(ConfigError, match="same length. Got 2 and 3"):
        ds2_bucket_select([1, 2], [0, 0, 0], k=1)
    with pytest.raises(ConfigError, match="'rare' parameter of ds2_bucket_select must be finite"):
        ds2_bucket_select([1, 2], [0, NAN], k=1)
    with pytest.raises(ConfigError, match="exactly one of the 'k' and 'ratio'"):
        ds2_bucket_select([1, 2], [0, 0])
