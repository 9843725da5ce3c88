"""Unit tests for thresher.selection (milliseconds each; hand-checked expectations)."""

from __future__ import annotations

import logging

import numpy as np
import pytest

from thresher.errors import ConfigError
from thresher.selection import (
    SELECTORS,
    cherry_ifd_select,
    cherry_pre_experience,
    random_k,
    superfiltering_select,
    threshold_mask,
    top_k,
)

NAN = float("nan")


def eq(a, b):
    a = np.asarray(a)
    assert a.dtype == np.int64, a.dtype
    assert a.tolist() == list(b)


# --------------------------------------------------------------------------- threshold_mask

def test_threshold_bounds_and_nan():
    s = [NAN, 0.0, 1.0, 2.0, 3.0]
    assert threshold_mask(s, ge=1, lt=3).tolist() == [False, False, True, True, False]
    assert threshold_mask(s, le=1).tolist() == [False, True, True, False, False]
    assert threshold_mask(s, gt=1).tolist() == [False, False, False, True, True]
    assert threshold_mask(s, gt=-np.inf).tolist() == [False, True, True, True, True]
    assert threshold_mask(s, gt=2, lt=1).tolist() == [False] * 5
    assert threshold_mask(s, le=1).dtype == bool


# --------------------------------------------------------------------------- top_k

def test_top_k_ties_stable_both_directions():
    s = [1.0, 3.0, 3.0, 2.0, 3.0]
    eq(top_k(s, k=2), [1, 2])
    eq(top_k(s, k=5), [1, 2, 4, 3, 0])
    eq(top_k(s, k=3, higher_is_better=False), [0, 3, 1])
    eq(top_k(s, k=5, higher_is_better=False), [0, 3, 1, 2, 4])


def test_top_k_ratio_floor_all_passing_int():
    s = np.arange(10, dtype=float)
    eq(top_k(s, ratio=0.25), [9, 8])                        # int(2.5) = 2 of all 10
    mask = np.array([True] * 7 + [False] * 3)
    s2 = s.copy()
    s2[0] = NAN                                             # 6 rows pass mask and are numeric
    eq(top_k(s2, ratio=0.25, of="passing", mask=mask), [6])  # int(1.5) = 1
    eq(top_k(s2, ratio=0.25, of="all", mask=mask), [6, 5])  # int(2.5) = 2, base ignores mask
    eq(top_k(s, ratio=0.0001, of=52002), [9, 8, 7, 6, 5])   # int(5.2002) = 5
    eq(top_k(s, ratio=1.0, of=3), [9, 8, 7])


def test_top_k_mask_and_nan_exclusion():
    s = [NAN, 5.0, 4.0, NAN, 3.0]
    mask = np.array([True, True, False, True, True])
    eq(top_k(s, k=10, mask=mask), [1, 4])
    eq(top_k(s, k=10), [1, 2, 4])
    eq(top_k(s, k=10, higher_is_better=False), [4, 2, 1])


def test_top_k_nan_error_message():
    s = [NAN, 5.0, NAN, NAN, 3.0]
    mask = np.array([True, True, False, True, True])       # NaN at 2 is masked out
    with pytest.raises(ConfigError, match=r"'nan'") as e:
        top_k(s, k=1, mask=mask, nan="error")
    assert "2 candidate row(s)" in str(e.value) and "[0, 3]" in str(e.value)
    eq(top_k([1.0, NAN], k=1, mask=np.array([True, False]), nan="error"), [0])


def test_top_k_order_rank_vs_original():
    s = [1.0, 5.0, 3.0, 4.0]
    eq(top_k(s, k=3), [1, 3, 2])
    eq(top_k(s, k=3, order="original"), [1, 2, 3])


def test_top_k_fewer_candidates_and_zero():
    eq(top_k([2.0, NAN, 1.0], k=10), [0, 2])
    eq(top_k([2.0, 1.0], k=0), [])
    eq(top_k([], ratio=0.5), [])


# --------------------------------------------------------------------------- random_k

def test_random_k_reproducible_and_seeded():
    a = random_k(100, k=10, seed=0)
    eq(a, np.random.default_rng(0).permutation(100)[:10].tolist())
    eq(random_k(100, k=10, seed=0), a.tolist())
    assert random_k(100, k=10, seed=1).tolist() != a.tolist()
    assert len(set(a.tolist())) == 10
    assert len(random_k(10, ratio=0.55)) == 5              # int(5.5)
    assert sorted(random_k(4, k=9).tolist()) == [0, 1, 2, 3]


# --------------------------------------------------------------------------- IFD rules

IFD = [0.5, 1.0, 0.9, NAN, 1.2, 0.9, 0.3]


def test_superfiltering_select_hand_case():
    eq(superfiltering_select(IFD, ratio=0.5), [2, 5, 0])            # int(3.5) = 3, ties by index
    eq(superfiltering_select(IFD, ratio=0.5, base="survivors"), [2, 5])  # 4 survivors -> 2
    eq(superfiltering_select(IFD, k=10), [2, 5, 0, 6])               # 1.0 dropped (strict <)
    eq(superfiltering_select(IFD, k=2, filter_below=1.1), [1, 2])


def test_superfiltering_base_52002():
    ifd = np.linspace(0.0, 0.99, 10)
    eq(superfiltering_select(ifd, ratio=0.0001, base=52002), [9, 8, 7, 6, 5])  # int(5.2002)
    eq(superfiltering_select(ifd, ratio=0.1, base=52002), list(range(9, -1, -1)))  # 5200 > 10
    eq(superfiltering_select(ifd, ratio=0.1), [9])                   # pool: int(1.0) = 1


def test_cherry_ifd_select_keeps_one_and_reference_ties():
    eq(cherry_ifd_select(IFD, k=10), [0, 1, 2, 5, 6])                # IFD == 1.0 survives
    # survivors 5 -> int(2.5) = 2: sorted((ifd, idx)) ends (0.9, 2), (0.9, 5), (1.0, 1);
    # the last two are kept, so the 0.9 tie goes to the higher index, 5.
    eq(cherry_ifd_select(IFD, ratio=0.5), [1, 5])
    eq(cherry_ifd_select(IFD, ratio=0.5, order="rank"), [1, 5])
    eq(cherry_ifd_select(IFD, ratio=0.5, base="pool"), [1, 2, 5])    # int(3.5) = 3
    eq(cherry_ifd_select(IFD, ratio=0.5, base="pool", order="rank"), [1, 5, 2])
    eq(cherry_ifd_select(IFD, k=0), [])
    eq(cherry_ifd_select(IFD, k=1, keep_max=0.95), [5])          # 0.9 tie: higher index
    assert 1 not in superfiltering_select(IFD, k=10).tolist()


# --------------------------------------------------------------------------- pre-experience

def test_pre_experience_band_rule_hand_case():
    # one cluster of 12; ppl 1..12 scattered. Percentiles 25/75 = 3.75/9.25 -> band ppl 4..9 at
    # rows [0, 2, 4, 7, 8, 10] (dataset order); step 6 // 3 = 2 -> rows 0, 4, 8.
    ppl = [5, 1, 9, 3, 7, 11, 2, 8, 4, 10, 6, 12]
    emb = np.random.default_rng(0).normal(size=(12, 3))
    eq(cherry_pre_experience(emb, ppl, n_clusters=1, per_cluster=3), [0, 4, 8])
    # NaN at row 4 (ppl 7): 11 values, 25/75 = 3.5/9.5 -> band ppl {4,5,6,8,9} at rows
    # [0, 2, 7, 8, 10]; step 5 // 3 = 1 -> rows 0, 2, 7
    ppl_nan = np.array(ppl, dtype=float)
    ppl_nan[4] = NAN
    eq(cherry_pre_experience(emb, ppl_nan, n_clusters=1, per_cluster=3), [0, 2, 7])


def _blobs(sizes, seed=0):
    rng = np.random.default_rng(seed)
    centers = np.eye(len(sizes), 8) * 100.0
    emb = np.concatenate([c + rng.normal(size=(n, 8)) for c, n in zip(centers, sizes)])
    blob = np.repeat(np.arange(len(sizes)), sizes)
    perm = rng.permutation(len(blob))                       # interleave blobs in dataset order
    return emb[perm], blob[perm], rng.uniform(1, 50, size=len(blob))


def test_pre_experience_blobs_count_band_spread_deterministic():
    emb, blob, ppl = _blobs([40] * 5)
    picks = cherry_pre_experience(emb, ppl, n_clusters=5, per_cluster=4, seed=0)
    assert len(picks) == 20 and picks.tolist() == sorted(picks.tolist())
    assert np.bincount(blob[picks], minlength=5).tolist() == [4] * 5
    for b in range(5):
        p = ppl[blob == b]
        lo, hi = np.percentile(p, 25), np.percentile(p, 75)
        assert ((ppl[picks[blob[picks] == b]] >= lo) & (ppl[picks[blob[picks] == b]] <= hi)).all()
    eq(cherry_pre_experience(emb, ppl, n_clusters=5, per_cluster=4, seed=0), picks.tolist())


def test_pre_experience_small_cluster_kept_whole():
    emb, blob, ppl = _blobs([40, 40, 40, 40, 3])
    picks = cherry_pre_experience(emb, ppl, n_clusters=5, per_cluster=4)
    assert len(picks) == 19
    assert set(np.flatnonzero(blob == 4).tolist()) <= set(picks.tolist())


def test_pre_experience_fewer_rows_than_clusters_warns(caplog):
    with caplog.at_level(logging.WARNING, logger="thresher.selection.cherry"):
        picks = cherry_pre_experience(np.eye(3), [1.0, 2.0, 3.0], n_clusters=5, per_cluster=2)
    eq(picks, [0, 1, 2])
    assert "n_clusters=3" in caplog.text


# --------------------------------------------------------------------------- errors, registry

@pytest.mark.parametrize("call, param", [
    (lambda: top_k([1.0], ratio=1.5), "'ratio'"),
    (lambda: top_k([1.0], ratio=0.0), "'ratio'"),
    (lambda: top_k([1.0], k=-1), "'k'"),
    (lambda: top_k([1.0], k=1.0), "'k'"),
    (lambda: top_k([1.0], k=1, ratio=0.5), "'ratio'"),
    (lambda: top_k([1.0]), "'k'"),
    (lambda: top_k([1.0], k=1, of="some"), "'of'"),
    (lambda: top_k([1.0], k=1, of=0), "'of'"),
    (lambda: top_k([1.0], k=1, nan="drop"), "'nan'"),
    (lambda: top_k([1.0], k=1, order="asc"), "'order'"),
    (lambda: top_k([1.0], k=1, higher_is_better="yes"), "'higher_is_better'"),
    (lambda: top_k([1.0, 2.0], k=1, mask=[1, 0]), "'mask'"),
    (lambda: top_k([1.0, 2.0], k=1, mask=np.array([True])), "'mask'"),
    (lambda: top_k([[1.0]], k=1), "'scores'"),
    (lambda: top_k(["a"], k=1), "'scores'"),
    (lambda: threshold_mask([1.0]), "'lt'"),
    (lambda: threshold_mask([1.0], lt=NAN), "'lt'"),
    (lambda: random_k(-1, k=1), "'n'"),
    (lambda: random_k(5, k=1, seed=-1), "'seed'"),
    (lambda: superfiltering_select([0.5], ratio=0.5, base="all"), "'base'"),
    (lambda: superfiltering_select([0.5], ratio=0.5, filter_below=None), "'filter_below'"),
    (lambda: cherry_ifd_select([0.5], ratio=0.5, base=-3), "'base'"),
    (lambda: cherry_ifd_select([0.5], ratio=0.5, keep_max="1"), "'keep_max'"),
    (lambda: cherry_ifd_select([0.5], ratio=0.5, order="rank_desc"), "'order'"),
    (lambda: cherry_pre_experience(np.ones(3), [1.0] * 3), "'embeddings'"),
    (lambda: cherry_pre_experience(np.ones((3, 2)), [1.0] * 2), "'ppl'"),
    (lambda: cherry_pre_experience(np.full((3, 2), NAN), [1.0] * 3), "'embeddings'"),
    (lambda: cherry_pre_experience(np.ones((3, 2)), [1.0] * 3, per_cluster=0), "'per_cluster'"),
    (lambda: cherry_pre_experience(np.ones((3, 2)), [1.0] * 3, n_clusters=0), "'n_clusters'"),
    (lambda: cherry_pre_experience(np.ones((3, 2)), [1.0] * 3, low_pct=-1), "'low_pct'"),
    (lambda: cherry_pre_experience(np.ones((3, 2)), [1.0] * 3, high_pct=101), "'high_pct'"),
    (lambda: cherry_pre_experience(np.ones((3, 2)), [1.0] * 3, low_pct=80), "'low_pct'"),
])
def test_config_errors_name_the_parameter(call, param):
    with pytest.raises(ConfigError, match=param):
        call()


def test_error_message_sklearn_style():
    with pytest.raises(ConfigError) as e:
        top_k([1.0], ratio=1.5)
    assert str(e.value) == "The 'ratio' parameter of top_k must be a float in (0, 1]. Got 1.5."


def test_registry():
    from thresher.selection import basic, cherry

    assert {k: SELECTORS.get(k) for k in ("top_k", "threshold", "random", "superfiltering", "cherry_ifd",
                                          "cherry_pre_experience")} == {
        "top_k": basic.TopKSelector, "threshold": basic.ThresholdSelector, "random": basic.RandomSelector,
        "superfiltering": basic.SuperfilteringSelector, "cherry_ifd": basic.CherryIFDSelector,
        "cherry_pre_experience": cherry.PreExperienceSelector,
    }
    # Every selector a recipe can name is a registered adapter, including the compositions
    # (full, middle = top_k on distance, superfiltering_d = filter + facility location).
    assert {"full", "middle", "superfiltering_d"} <= set(SELECTORS)


def test_global_threshold_select_hand_checked():
    from thresher.selection import global_threshold_select

    s = np.array([0.3, 0.9, np.nan, 0.5, 0.7])
    anchors = np.array([0.6, 0.8, 0.5, np.nan])
    assert global_threshold_select(s, anchors).tolist() == [1, 3, 4]                    # tau = min = 0.5
    assert global_threshold_select(s, anchors, "mean").tolist() == [1, 4]               # tau = 0.633
    assert global_threshold_select(s, anchors, "quantile", q=1.0).tolist() == [1]       # tau = 0.8


def test_deita_per_turn_score_and_selection_hand_checked():
    import pandas as pd
    from thresher.selection import make_selector
    from thresher.selection.deita import deita_turn_score

    scores = pd.DataFrame({
        "c_turns": [np.array([2.0, 3.0]), np.array([5.0]), np.array([1.0, 1.0, 1.0])],
        "q_turns": [np.array([1.0, 2.0]), np.array([1.5]), np.array([4.0, 4.0, 4.0])],
        # unit vectors: rows 0 and 2 identical, row 1 orthogonal
        "embedding": [np.array([1.0, 0.0]), np.array([0.0, 1.0]), np.array([1.0, 0.0])],
    })
    # 2*1 + 3*2 = 8; 5*1.5 = 7.5; 3 * (1*4) = 12
    np.testing.assert_allclose(deita_turn_score([scores["c_turns"], scores["q_turns"]]), [8.0, 7.5, 12.0])
    sel = make_selector("deita", params={"columns": ["c", "q"], "per_turn": True, "k": 3, "threshold": 0.9})
    # by score: row 2 (12), row 0 (8, identical to row 2 -> rejected), row 1 (7.5)
    eq(sel.select(scores), [2, 1])


def test_superfiltering_d_and_facility_location_through_the_registry():
    import pandas as pd
    from thresher.selection import facility_location, make_selector

    # Six rows on a line; IFD >= 1 on row 5 (dropped), rows 0-4 kept as the top 5/6 by IFD.
    x = np.array([0.0, 0.1, 0.2, 5.0, 5.1, 9.0])
    scores = pd.DataFrame({"ifd": [0.9, 0.8, 0.7, 0.6, 0.5, 1.2],
                           "embedding": [np.array([v, 0.0], dtype=np.float32) for v in x]})
    emb = np.stack(scores["embedding"].to_numpy())
    fl = make_selector("facility_location", params={"ratio": 0.34}).select(scores)   # int(0.34 * 6) = 2
    eq(fl, facility_location(emb, k=2))
    sfd = make_selector("superfiltering_d", column="ifd", params={"ifd_k": 5, "k": 2}).select(scores)
    eq(sfd, facility_location(emb, k=2, candidates=np.arange(5)))
    assert 5 not in sfd.tolist() and {int(i) for i in sfd} & {0, 1, 2} and {int(i) for i in sfd} & {3, 4}
    with pytest.raises(ConfigError, match="exactly one of the 'k' and 'ratio'"):
        make_selector("facility_location", params={}).select(scores)
    with pytest.raises(ConfigError, match="ratio"):
        make_selector("facility_location", params={"ratio": 1.5}).select(scores)
