"""IterIT: TF-IDF greedy with decay, window reordering, and the per-epoch schedule (no model, no training).

The schedule is driven by a deterministic scoring function (a pure function of row and epoch): what is
under test is which rows get re-scored and selected, not the scores.
"""

from __future__ import annotations

import json
import math
from types import SimpleNamespace

import numpy as np
import pytest

from thresher.errors import ConfigError
from thresher.selection.iterit import tfidf_greedy, window_order
from thresher.training.iterit import IterITSampler

NAN = float("nan")


def eq(a, b):
    a = np.asarray(a)
    assert a.dtype == np.int64, a.dtype
    assert a.tolist() == list(b)


# --------------------------------------------------------------------------- naive references

def naive_tfidf_unigrams(docs):
    """scikit-learn's default TF-IDF written out, for docs of lowercase words of >= 2 letters."""
    toks = [d.split() for d in docs]
    vocab = sorted({t for ts in toks for t in ts})
    tf = np.array([[ts.count(v) for v in vocab] for ts in toks], dtype=float)
    df = (tf > 0).sum(0)
    idf = np.log((1 + len(docs)) / (1 + df)) + 1                      # smooth idf
    x = tf * idf
    return x / np.linalg.norm(x, axis=1, keepdims=True)               # row L2 normalisation


def naive_greedy(S, X, k, decay):
    """IterIT's loop on a dense matrix, without its duplicate picks: full re-sum every pick."""
    X = X.copy()
    picks = []
    for _ in range(min(k, len(S))):
        gain = S * X.sum(1)
        gain[picks] = -np.inf
        i = int(np.argmax(gain))
        if not gain[i] > 0:
            break
        picks.append(i)
        cols = np.flatnonzero(X[i] != 0)
        X[:, cols] *= decay
        X[i, cols] = 0.0
    return picks


def naive_order(S, docs, k, decay, ngram_range=(1, 3), eos="", threshold=1.0):
    from sklearn.feature_extraction.text import TfidfVectorizer

    cand = [i for i in range(len(S)) if S[i] < threshold]
    by_score = sorted(cand, key=lambda i: (-S[i], i))
    try:
        X = TfidfVectorizer(ngram_range=ngram_range).fit_transform([docs[i] + eos for i in cand]).toarray()
        picks = [cand[j] for j in naive_greedy(S[cand], X, k, decay)]
    except ValueError:                                                # empty vocabulary
        picks = []
    return picks + [i for i in by_score if i not in picks]


# --------------------------------------------------------------------------- tfidf_greedy

# Hand case: d0 and d1 share "aa"; d2 shares nothing. idf(aa) = ln(4/3) + 1, idf(other) = ln(2) + 1.
DOCS = ["aa bb", "aa cc", "dd ee"]
S3 = np.array([0.9, 0.8, 0.5])


def test_hand_tfidf_and_greedy_decay():
    ia, io = math.log(4 / 3) + 1, math.log(2) + 1
    norm = math.hypot(ia, io)
    X = naive_tfidf_unigrams(DOCS)
    div = X.sum(1)
    assert div == pytest.approx([(ia + io) / norm, (ia + io) / norm, math.sqrt(2)])
    assert div == pytest.approx([1.401310, 1.401310, 1.414214], abs=1e-6)
    from sklearn.feature_extraction.text import TfidfVectorizer     # the matrix tfidf_greedy fits
    np.testing.assert_allclose(TfidfVectorizer(ngram_range=(1, 1)).fit_transform(DOCS).toarray(), X)
    # pick 1: gains 0.9*1.4013=1.2612 > 0.8*1.4013=1.1210 > 0.5*1.4142=0.7071 -> d0
    # decay 0.1 on aa, bb: d1's div = (0.1*ia + io)/norm = 0.8565 -> gain 0.6852 < d2's 0.7071 -> d2, then d1
    assert 0.8 * (0.1 * ia + io) / norm == pytest.approx(0.685196, abs=1e-6)
    eq(tfidf_greedy(S3, DOCS, k=3, decay=0.1, ngram_range=(1, 1)), [0, 2, 1])
    eq(tfidf_greedy(S3, DOCS, k=3, decay=0.0, ngram_range=(1, 1)), [0, 2, 1])
    eq(tfidf_greedy(S3, DOCS, k=3, decay=1.0, ngram_range=(1, 1)), [0, 1, 2])   # no decay: score order
    # k=1: one greedy pick, then the rest by score: d1 (0.8) before d2 (0.5)
    eq(tfidf_greedy(S3, DOCS, k=1, decay=0.1, ngram_range=(1, 1)), [0, 1, 2])
    eq(naive_greedy(S3, X, 3, 0.1), [0, 2, 1])


def test_hand_case_default_trigrams():
    # (1, 3): d0 = {aa, bb, aa bb}, div 1.7191; d2 = {dd, ee, dd ee}, div sqrt(3) = 1.7321. After d0,
    # d1 keeps 2 of its 3 terms at full weight: div 1.2929, gain 0.8 * 1.2929 = 1.0343 beats d2's
    # 0.5 * 1.7321 = 0.8660, so decay does not reorder here; with S(d2) = 0.7, d2's 1.2124 wins
    eq(tfidf_greedy(S3, DOCS, k=3), [0, 1, 2])
    eq(tfidf_greedy([0.9, 0.8, 0.7], DOCS, k=3), [0, 2, 1])
    assert naive_order(np.array([0.9, 0.8, 0.7]), DOCS, 3, 0.1) == [0, 2, 1]


def test_ifd_only_order_threshold_and_nan():
    s = [0.5, 1.0, NAN, 0.9, 0.5, 1.7, 0.1]
    docs = ["x"] * 7
    eq(tfidf_greedy(s, docs, k=2, score_type="IFD"), [3, 0, 4, 6])   # < 1 only; ties: lower first
    eq(tfidf_greedy(s, docs, k=2, score_type="IFD", threshold=2.0), [5, 1, 3, 0, 4, 6])
    eq(tfidf_greedy([1.0, 2.0], ["aa", "bb"], k=2), [])


def test_fewer_candidates_than_k_no_duplicates():
    s = np.array([0.3, 0.9, 0.6, 1.2])
    docs = ["same words here", "same words here", "same words here", "other text"]
    for decay in (0.0, 0.1, 1.0):
        out = tfidf_greedy(s, docs, k=10, decay=decay)
        eq(out, [1, 2, 0])                     # each candidate once; the set-aside row 3 absent
    # decay 0 zeroes every shared column after one pick: gains all 0 -> greedy stops, rest by score
    eq(tfidf_greedy([0.5, 0.9, 0.7], ["aa bb"] * 3, k=3, decay=0.0), [1, 2, 0])


def test_decay_zero_gains_are_exactly_zero():
    # after picks 5, 3, 2, 1 every term of rows 0 and 4 has been zeroed: their gains must be exactly 0
    # (greedy stops, score order: 0 then 4); incremental float updates would leave a residual of
    # ~1e-17 that ranks row 4 first
    docs = ["ee cc aa", "ee dd gg", "ee gg hh", "aa ff ee", "dd cc aa dd ff", "gg bb ee gg cc"]
    s = [0.77, 0.51, 0.51, 0.7, 0.22, 0.76]
    eq(tfidf_greedy(s, docs, k=6, decay=0.0, ngram_range=(1, 1)), [5, 3, 2, 1, 0, 4])
    assert naive_order(np.array(s), docs, 6, 0.0, (1, 1)) == [5, 3, 2, 1, 0, 4]


def test_empty_vocabulary_falls_back_to_score_order():
    eq(tfidf_greedy([0.2, 0.7, 0.4], ["a", "b c", "!"], k=2), [1, 2, 0])


def test_eos_is_appended_before_fitting():
    # "zz" appended to every response is a shared term: it changes the norms and what decays
    s = np.array([0.9, 0.85, 0.8])
    docs = ["aa bb", "cc dd ee", "aa ff"]
    a = tfidf_greedy(s, docs, k=3, ngram_range=(1, 1))
    b = tfidf_greedy(s, docs, k=3, ngram_range=(1, 1), eos=" zz")
    assert a.tolist() == naive_order(s, docs, 3, 0.1, (1, 1))
    assert b.tolist() == naive_order(s, docs, 3, 0.1, (1, 1), eos=" zz")


def test_parity_with_naive_dense_loop():
    rng = np.random.default_rng(0)
    words = [f"w{i}" for i in range(25)]
    for trial in range(60):
        n = int(rng.integers(1, 25))
        docs = [" ".join(rng.choice(words, size=int(rng.integers(0, 12)))) for _ in range(n)]
        s = rng.uniform(0, 1.2, n)
        s[rng.random(n) < 0.1] = NAN
        k = int(rng.integers(0, 30))
        decay = float(rng.choice([0.0, 0.1, 0.5, 1.0]))
        got = tfidf_greedy(s, docs, k=k, decay=decay)
        assert got.tolist() == naive_order(s, docs, k, decay), (trial, k, decay)


def test_bad_parameters():
    with pytest.raises(ConfigError, match="The 'k' parameter of tfidf_greedy must be an int >= 0. Got -1"):
        tfidf_greedy([0.5], ["aa"], k=-1)
    with pytest.raises(ConfigError, match="'decay' parameter of tfidf_greedy must be a float in"):
        tfidf_greedy([0.5], ["aa"], k=1, decay=1.5)
    with pytest.raises(ConfigError, match="'score_type'.*'BOTH', 'IFD'. Got 'ifd'"):
        tfidf_greedy([0.5], ["aa"], k=1, score_type="ifd")
    with pytest.raises(ConfigError, match="one response per score. Got 2 responses for 1"):
        tfidf_greedy([0.5], ["aa", "bb"], k=1)
    with pytest.raises(ConfigError, match="ngram_range"):
        tfidf_greedy([0.5], ["aa"], k=1, ngram_range=(2, 1))


# --------------------------------------------------------------------------- window_order

# window of 5 (positions 0..4) in a pool of 7 rows: candidates 0, 1, 3 (the DOCS hand case), set aside
# 2 (S >= 1) and 4 (NaN); the ranking is [0, 3, 1] with k = 2 as in test_hand_tfidf_and_greedy_decay
W_SCORES = [0.9, 0.8, 1.2, 0.5, NAN]
W_DOCS = ["aa bb", "aa cc", "zz yy", "dd ee", "aa dd"]
PREV = [10, 11, 12, 13, 14, 15, 16]


def test_window_order_faithful_and_window_end():
    kw = dict(k=2, ngram_range=(1, 1), decay=0.1)
    eq(tfidf_greedy(W_SCORES, W_DOCS, **kw), [0, 3, 1])   # set-aside docs are not in the TF-IDF fit
    eq(window_order(PREV, W_SCORES, W_DOCS, **kw), [10, 13, 12, 14, 11, 15, 16])
    eq(window_order(PREV, W_SCORES, W_DOCS, placement="window_end", **kw), [10, 13, 11, 12, 14, 15, 16])
    eq(window_order(PREV, W_SCORES, W_DOCS, k=2, score_type="IFD"), [10, 11, 12, 14, 13, 15, 16])
    with pytest.raises(ConfigError, match="'placement'"):
        window_order(PREV, W_SCORES, W_DOCS, k=2, placement="end")
    with pytest.raises(ConfigError, match="cannot be longer"):
        window_order(PREV[:3], W_SCORES, W_DOCS, k=2)


# --------------------------------------------------------------------------- sampler schedule

# scores by (epoch, row): row 2 is >= 1 at both epochs; only the window's rows are asked at epoch 1
TABLE = {0: [0.2, 0.9, 1.3, 0.5, 0.7, 0.95, 0.1, 0.6],
         1: [0.3, 0.4, 1.1, 0.8, 0.9, 0.2, 0.5, 0.7],
         2: [0.6, 0.3, 0.2, 0.1, 0.5, 0.4, 0.9, 0.8]}
RESPONSES = [f"answer number {w} with words" for w in
             ("one", "two", "three", "four", "five", "six", "seven", "eight")]


class Recorder:
    """A deterministic scoring function (row, epoch) -> TABLE[epoch][row] that remembers its calls."""

    def __init__(self):
        self.calls = []

    def __call__(self, rows, *, model, epoch):
        self.calls.append((epoch, np.asarray(rows).tolist()))
        return [TABLE[epoch][r] for r in rows]


def make(rescore, **kw):
    opts = dict(k=2, update_ratio=2, score_type="IFD", responses=RESPONSES, seed=42)
    opts.update(kw)
    return IterITSampler(rescore, **opts)


def torch_subset_order(rows, seed):
    """The rows in the order IterIT's SubsetRandomSampler(rows, generator seeded with seed) yields."""
    import torch

    return [int(r) for r in torch.utils.data.SubsetRandomSampler(
        list(rows), generator=torch.Generator().manual_seed(seed))]


def test_schedule_two_epochs_faithful(tmp_path):
    f = Recorder()
    smp = make(f, log_dir=tmp_path)
    assert len(smp) == 2 and smp.window == 4
    e0 = smp.epoch_indices(0)
    # epoch 0: all 8 rows scored; < 1 by score: 5 .95, 1 .9, 4 .7, 7 .6, 3 .5, 0 .2, 6 .1; row 2 aside
    assert f.calls == [(0, list(range(8)))]
    eq(smp.order, [5, 1, 2, 4, 7, 3, 0, 6])
    assert sorted(e0.tolist()) == [1, 5]
    assert e0.tolist() == torch_subset_order([5, 1], 42)
    # epoch 1: exactly the window (first 4 positions) is re-scored: 5 .2, 1 .4, 2 1.1, 4 .9
    smp.update(1)
    assert f.calls[1] == (1, [5, 1, 2, 4])
    eq(smp.order, [4, 1, 2, 5, 7, 3, 0, 6])
    assert sorted(smp.epoch_indices(1).tolist()) == [1, 4]
    assert smp.scores[[4, 1, 2, 5]].tolist() == [0.9, 0.4, 1.1, 0.2]
    assert smp.scores[[7, 3, 0, 6]].tolist() == [0.6, 0.5, 0.2, 0.1]     # stale epoch-0 scores kept
    assert len(f.calls) == 2
    log0 = json.loads((tmp_path / "epoch-0.json").read_text())
    log1 = json.loads((tmp_path / "epoch-1.json").read_text())
    assert log0["selected"] == [5, 1] and log0["selected_ids"] == ["5", "1"]
    assert (log0["n_candidates"], log0["n_set_aside"], log0["window"]) == (7, 1, 8)
    assert log1["rescored"] == [5, 1, 2, 4] and log1["rescored_scores"] == [0.2, 0.4, 1.1, 0.9]
    assert log1["selected"] == [4, 1] and log1["selected_scores"] == [0.9, 0.4]
    assert log1["order"] == [4, 1, 2, 5, 7, 3, 0, 6]
    assert (log0["rescored_count"], log1["rescored_count"]) == (8, 4)          # the cost of each round
    assert min(log0["rescore_seconds"], log0["order_seconds"], log1["rescore_seconds"]) >= 0


def test_schedule_window_end_and_baseline():
    smp = make(Recorder(), placement="window_end")
    smp.epoch_indices(0)
    eq(smp.order, [5, 1, 4, 7, 3, 0, 6, 2])             # row 2 leaves the next window
    smp.update(1)                                       # window 5 .2, 1 .4, 4 .9, 7 .7: all candidates
    eq(smp.order, [4, 7, 1, 5, 3, 0, 6, 2])
    f = Recorder()
    base = make(f, strategy="baseline")
    first = base.epoch_indices(0)
    base.update(1)
    assert f.calls == [(0, list(range(8)))]             # never re-scored
    assert base.epoch_indices(1).tolist() == first.tolist()
    eq(base.order, [5, 1, 2, 4, 7, 3, 0, 6])


def test_seed_per_epoch_and_initial_scores():
    smp = make(Recorder(), k=4, update_ratio=1, vary_seed=True)
    a = smp.epoch_indices(0)
    smp.update(1)                                        # update_ratio <= 1: window = all rows
    assert smp.window == 8
    assert smp.epoch_indices(1).tolist() == torch_subset_order(smp.order[:4], 43)
    assert a.tolist() == torch_subset_order([5, 1, 4, 7], 42)
    f = Recorder()
    pre = make(f, initial_scores=TABLE[1])
    pre.epoch_indices(0)
    assert f.calls == []                                  # epoch 0 read from initial_scores
    eq(pre.order[:2], [4, 3])


def test_both_mode_matches_window_order():
    f = Recorder()
    smp = make(f, score_type="BOTH", eos=" eos")
    smp.epoch_indices(0)
    exp0 = window_order(np.arange(8), TABLE[0], RESPONSES, k=2, eos=" eos")
    eq(smp.order, exp0)
    smp.update(1)
    w = exp0[:4]
    exp1 = window_order(exp0, [TABLE[1][r] for r in w], [RESPONSES[r] for r in w], k=2, eos=" eos")
    eq(smp.order, exp1)


def test_state_dict_round_trip_gives_identical_epochs(tmp_path):
    table = {e: list(v) for e, v in TABLE.items()}
    table[0][6] = NAN                                    # a failed score survives the JSON round trip

    def rescore(rows, *, model, epoch):
        return [table[epoch][r] for r in rows]

    a = make(rescore, k=2, update_ratio=3)
    a.epoch_indices(0)
    a.update(1)
    state = json.loads(json.dumps(a.state_dict(), allow_nan=False))   # strict JSON
    calls = []

    def counting(rows, *, model, epoch):
        calls.append(epoch)
        return rescore(rows, model=model, epoch=epoch)

    b = make(counting, k=2, update_ratio=3)
    b.load_state_dict(state)
    b.start()                                            # a resumed run does not score the pool again
    assert calls == []
    assert b.epoch_indices(1).tolist() == a.epoch_indices(1).tolist()
    a.update(2)
    b.update(2)
    assert calls == [2]
    eq(b.order, a.order)
    assert b.epoch_indices(2).tolist() == a.epoch_indices(2).tolist()
    np.testing.assert_array_equal(b.scores, a.scores)    # NaN included
    with pytest.raises(ConfigError, match="4 rows and k=2"):
        IterITSampler(rescore, k=2, responses=RESPONSES[:4]).load_state_dict(state)


def test_schedule_errors():
    smp = make(Recorder())
    with pytest.raises(ConfigError, match="epoch 1 asks for rows: pass IterITCallback"):
        smp.epoch_indices(0), smp.epoch_indices(1)
    with pytest.raises(ConfigError, match=r"update\(2\) needs the ordering of epoch 1"):
        smp.update(2)
    with pytest.raises(ConfigError, match="must be <= the 8 training rows. Got 9"):
        make(Recorder(), k=9).epoch_indices(0)
    with pytest.raises(ConfigError, match=r"one score per row: shape \(8,\). Got shape \(3,\)"):
        make(lambda rows, **kw: [0.1, 0.2, 0.3]).epoch_indices(0)
    with pytest.raises(ConfigError, match="exactly one of the 'k' and 'ratio'"):
        IterITSampler(Recorder(), k=2, ratio=0.1)
    with pytest.raises(ConfigError, match="does not know the pool yet"):
        len(IterITSampler(Recorder(), ratio=0.5))
    assert len(IterITSampler(Recorder(), ratio=0.3, responses=RESPONSES)) == 2   # floor(0.3 * 8)


def test_bind_takes_rows_responses_eos_and_seed(tmp_path):
    from thresher.data import load
    from thresher.training.config import TrainConfig
    from thresher.training.hooks import TrainPlan

    recs = [{"instruction": f"Q{i}", "input": "", "output": RESPONSES[i]} for i in range(8)]
    path = tmp_path / "pool.json"
    path.write_text(json.dumps(recs))
    table = load(path)
    plan = TrainPlan(table, None, SimpleNamespace(eos_token="<|eot_id|>"), TrainConfig(seed=7), tmp_path)
    smp = IterITSampler(Recorder(), k=2, update_ratio=2, score_type="IFD")
    smp.bind(plan)
    assert (smp.n, smp.eos, smp.seed) == (8, "<|eot_id|>", 7)
    assert smp.responses == RESPONSES
    assert smp.epoch_indices(0).tolist() == torch_subset_order([5, 1], 7)
    log0 = json.loads((tmp_path / "iterit" / "epoch-0.json").read_text())
    assert log0["selected_ids"] == [table.ids[5], table.ids[1]]


def test_callback_eval_mode_and_epoch_boundaries():
    torch = pytest.importorskip("torch")
    pytest.importorskip("transformers")
    from thresher.training.hooks import IterITCallback

    seen = []

    def rescore(rows, *, model, epoch):
        seen.append((epoch, model.training, torch.is_grad_enabled()))
        return [TABLE[epoch][r] for r in rows]

    model = torch.nn.Linear(2, 2)
    smp = make(rescore)
    cb = IterITCallback(smp)
    cb.on_train_begin(None, SimpleNamespace(global_step=0, max_steps=6, epoch=0.0), None, model=model)
    assert seen == [(0, False, False)] and model.training
    cb.on_epoch_end(None, SimpleNamespace(global_step=2, max_steps=6, epoch=0.5), None, model=model)
    assert len(seen) == 1                                 # stopped mid-epoch: no re-scoring
    cb.on_epoch_end(None, SimpleNamespace(global_step=2, max_steps=6, epoch=1.0), None, model=model)
    assert seen[1] == (1, False, False) and smp.epoch == 1 and model.training
    smp.epoch_indices(1)
    cb.on_epoch_end(None, SimpleNamespace(global_step=4, max_steps=6, epoch=2.0), None, model=model)
    cb.on_epoch_end(None, SimpleNamespace(global_step=6, max_steps=6, epoch=3.0), None, model=model)
    assert [s[0] for s in seen] == [0, 1, 2]              # nothing after the last epoch
