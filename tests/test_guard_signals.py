"""The noise guard's signals (guard_lm, guard_text, guard_embed) on hand-made cases whose verdict is obvious, each
against a clean counter-case; guard_lm on the bundled SmolLM2, guard_embed on the bundled MiniLM and on MinHash;
guard_lm's losses equal the ifd scorer's on the same rows (the one-pass reuse is faithful)."""

from __future__ import annotations

import numpy as np
import pytest

from thresher.algorithms import minhash, text_signals
from thresher.data import load
from thresher.scoring import make_scorer
from thresher.scoring.guard_lm import CUT, tail_contrast

FRANCE = "What is the capital of France?"
PHOTO_Q = "Explain photosynthesis in one sentence."
PHOTO_A = ("Photosynthesis is the process by which green plants use sunlight, water and carbon dioxide to make "
           "their own food and release oxygen.")
STORY_Q = "Describe what a good and healthy breakfast looks like for an adult."
STORY_A = ("A good breakfast includes some protein, such as eggs or yogurt, whole grains like oatmeal or toast, "
           "and a piece of fresh fruit. Drinking a glass of water helps as well.")
LOOP = " ".join(["I like the blue car because it is fast."] * 12)
RUSSIAN = "Завтрак должен включать белок, например яйца или йогурт, цельные злаки и свежие фрукты."
CHINESE = "一顿好的早餐应该包括蛋白质，例如鸡蛋或酸奶，全谷物以及新鲜水果。"
SPANISH = ("Un buen desayuno incluye proteínas, como huevos o yogur, cereales integrales como la avena y una "
           "fruta fresca. También es bueno beber un vaso de agua.")
REFUSAL = "I'm sorry, but I can't help with that request."
JUNK = STORY_A + " asdf qwer %%%% #### zxcv"


@pytest.fixture(scope="module", autouse=True)
def _one_thread(one_thread):
    yield


def _rows(pairs):
    return load([{"instruction": q, "input": "", "output": a} for q, a in pairs])


def _scrambled(text: str, seed: int = 0) -> str:
    ws = text.split()
    return " ".join(np.random.default_rng(seed).permutation(ws))


def _text(pairs) -> dict:
    return make_scorer("guard_text").score_batch(_rows(pairs))


# ------------------------------------------------------------------------------------------------ guard_lm
@pytest.fixture(scope="module")
def lm_cases(ctx):
    """guard_lm over every hand-made LM case in one batch, on the bundled model."""
    pairs = {
        "matched": (PHOTO_Q, PHOTO_A), "mismatched": (FRANCE, PHOTO_A),
        "clean": (STORY_Q, STORY_A), "scrambled": (STORY_Q, _scrambled(STORY_A)),
        "complete": (FRANCE, "The capital of France is Paris."),
        "cut": (FRANCE, "The capital of France is Paris, which is also the"),
        "junk": (STORY_Q, STORY_A + " x7Q# zk9&/ QJ}w 4%b_ Kq~2 @z8X vb#1 ]]q7 Z0$e jX!k"),
    }
    scorer = make_scorer("guard_lm", max_length=128)
    scorer.setup(ctx)
    out = scorer.score_batch(_rows(pairs.values()))
    return {k: {c: v[i] for c, v in out.items()} for i, k in enumerate(pairs)}


@pytest.mark.slow
def test_an_answer_to_another_question_has_higher_ifd_and_a_smaller_margin(lm_cases):
    good, bad = lm_cases["matched"], lm_cases["mismatched"]
    assert bad["ifd"] > good["ifd"]
    assert bad["loss_cond"] - bad["loss_direct"] > good["loss_cond"] - good["loss_direct"] + 0.1
    assert good["status"] == bad["status"] == "ok"


@pytest.mark.slow
def test_scrambled_words_have_a_much_higher_direct_loss(lm_cases):
    assert lm_cases["scrambled"]["loss_direct"] > lm_cases["clean"]["loss_direct"] + 1.5


@pytest.mark.slow
def test_a_cut_response_is_less_likely_to_end_the_turn(lm_cases):
    assert lm_cases["cut"]["eot_logprob"] < lm_cases["complete"]["eot_logprob"] - 2.0
    assert lm_cases["complete"]["eot_logprob"] <= 0


@pytest.mark.slow
def test_an_appended_junk_tail_has_a_much_higher_tail_loss(lm_cases):
    assert lm_cases["junk"]["tail_loss"] > lm_cases["clean"]["tail_loss"] + 1.0     # measured +1.19


def test_tail_contrast_is_the_tail_mean_minus_the_head_mean():
    out = tail_contrast([np.ones(10), np.r_[np.ones(12), np.full(4, 5.0)], np.ones(7), np.zeros(0),
                         np.r_[np.ones(300), np.full(64, 3.0)]])
    np.testing.assert_allclose(out, [0.0, 4.0, np.nan, np.nan, 2.0])   # 4-64 tokens: a quarter, clipped


@pytest.mark.slow
def test_a_response_cut_by_max_length_gets_no_eot_logprob(ctx):
    scorer = make_scorer("guard_lm", max_length=72)
    scorer.setup(ctx)
    out = scorer.score_batch(_rows([(STORY_Q, STORY_A * 3), (FRANCE, "Paris.")]))
    assert np.isnan(out["eot_logprob"][0]) and out["status"][0] == CUT and np.isfinite(out["loss_cond"][0])
    assert np.isfinite(out["eot_logprob"][1]) and out["status"][1] == "ok"


@pytest.mark.slow
@pytest.mark.parametrize("template", ["alpaca", "chat"])
def test_the_losses_equal_the_ifd_scorers(ctx, sharegpt_short, template):
    rows = sharegpt_short.subset(range(6))
    guard, ifd = make_scorer("guard_lm", template=template, max_length=96), \
        make_scorer("ifd", template=template, max_length=96, variant="ppl_ratio")
    guard.setup(ctx)
    ifd.setup(ctx)
    g, f = guard.score_batch(rows), ifd.score_batch(rows)
    for col in ("loss_cond", "loss_direct", "ifd", "n_resp_tokens"):
        np.testing.assert_allclose(g[col], f[col], rtol=1e-4, equal_nan=True, err_msg=col)
    assert np.isfinite(g["eot_logprob"][g["status"] == "ok"]).all()


# ------------------------------------------------------------------------------------------------ guard_text
def test_refusal():
    out = _text([(FRANCE, REFUSAL), (FRANCE, "As an AI language model, I cannot browse the web."),
                 (FRANCE, "I don't know."), (FRANCE, "Paris is the capital of France."),
                 (STORY_Q, "I'm sorry to hear that your breakfast was bad; try eggs.")])
    assert out["refusal"].tolist() == [1.0, 1.0, 1.0, 0.0, 0.0]


def test_copied_instruction():
    out = _text([(STORY_Q + " Use two sentences.", STORY_Q + " Use two sentences."), (STORY_Q, STORY_A)])
    assert out["copy_overlap"][0] == 1.0 and out["copy_overlap"][1] < 0.1


def test_a_loop_compresses_well_and_repeats_ngrams():
    out = _text([(STORY_Q, LOOP), (STORY_Q, STORY_A)])
    assert out["compression_ratio"][0] < 0.25 < 0.5 < out["compression_ratio"][1]
    assert out["repeat_ngram"][0] > 0.7 and out["repeat_ngram"][1] == 0.0


def test_another_script_and_another_language():
    out = _text([(STORY_Q, RUSSIAN), (STORY_Q, CHINESE), (STORY_Q, STORY_A), (STORY_Q, SPANISH), (PHOTO_Q, PHOTO_A)])
    assert out["script_mismatch"][:2].min() > 0.95 and out["script_mismatch"][2] == 0.0
    assert out["lang_mismatch"][3] == 1.0 and out["lang_mismatch"][2] == 0.0
    assert np.isnan(out["lang_mismatch"][4])        # the question has 5 words: too short to tell
    assert "lang_mismatch" in out["status"][4] and out["status"][2] == "ok"


def test_empty_and_boilerplate():
    out = _text([(FRANCE, "..."), (FRANCE, "N/A"), (FRANCE, "<nooutput>"), (FRANCE, "Paris.")])
    assert out["empty"].tolist() == [1.0, 1.0, 1.0, 0.0]
    assert out["resp_chars"].tolist() == [3, 3, 10, 6]
    assert text_signals.empty(["", " \n", "-- !"]).tolist() == [1.0, 1.0, 1.0]    # the loader refuses blank ones


def test_a_response_cut_mid_sentence_does_not_end_cleanly():
    cut = STORY_A[: STORY_A.index("whole") + 5]
    out = _text([(STORY_Q, cut), (STORY_Q, STORY_A), (FRANCE, "Paris"), (STORY_Q, "Steps:\n```python\nx = 1"),
                 (STORY_Q, "Steps:\n```python\nx = 1\n```"), (STORY_Q, "Eat:\n- eggs\n- fruit")])
    assert out["ends_cleanly"].tolist() == [0.0, 1.0, 1.0, 0.0, 1.0, 1.0]


def test_a_junk_tail():
    out = _text([(STORY_Q, JUNK), (STORY_Q, STORY_A)])
    assert out["junk_tail"][0] > 0.25 and out["junk_tail"][1] < 0.05


def test_text_cues_are_linear_in_length():
    """A response 50x longer costs about 50x, not 2500x (a quadratic helper would show here)."""
    import time

    def cost(text):
        t = time.perf_counter()
        _text([(STORY_Q, text)])
        return time.perf_counter() - t

    text_signals._script_table()
    small, big = min(cost(STORY_A * 20) for _ in range(3)), min(cost(STORY_A * 1000) for _ in range(3))
    assert big < small * 200


# ------------------------------------------------------------------------------------------------ guard_embed
POOL = [(STORY_Q, STORY_A), ("What should I eat in the morning?", STORY_A + " Enjoy!"),
        (PHOTO_Q, PHOTO_A), (FRANCE, "The capital of France is Paris, a city on the Seine known for its museums.")]


@pytest.mark.slow
@pytest.mark.parametrize("method", ["embedding", "minhash"])
def test_near_duplicate_responses(ctx, method):
    rows = _rows(POOL)
    scorer = make_scorer("guard_embed", method=method)
    scorer.setup(ctx)
    out = scorer.score_batch(rows)
    assert out["dup_cosine"][0] > 0.9 and out["dup_cosine"][1] > 0.9
    assert out["dup_of"][0] == rows.ids[1] and out["dup_of"][1] == rows.ids[0]
    assert out["dup_cosine"][2] < 0.5 and out["dup_cosine"][3] < 0.5
    assert (out["status"] == "ok").all()


@pytest.mark.slow
@pytest.mark.parametrize("method", ["embedding", "minhash"])
def test_an_unrelated_answer_has_a_lower_qa_cosine(ctx, method):
    scorer = make_scorer("guard_embed", method=method)
    scorer.setup(ctx)
    out = scorer.score_batch(_rows([(PHOTO_Q, PHOTO_A), (FRANCE, PHOTO_A)]))
    assert out["qa_cosine"][0] > out["qa_cosine"][1] + 0.1


def test_minhash_estimates_jaccard_and_finds_the_twin_in_a_larger_pool():
    rng = np.random.default_rng(0)
    vocab = [f"w{i}" for i in range(500)]
    texts = [" ".join(rng.choice(vocab, 60)) for _ in range(300)]
    texts[200] = texts[17].rsplit(" ", 3)[0] + " extra words here"          # 53 of 56 shingles shared
    sig, has = minhash.signatures(texts, num_perm=128, seed=1)
    best, who = minhash.nearest(sig, has)
    assert who[200] == 17 and who[17] == 200 and abs(best[17] - 53 / 59) < 0.1
    others = np.delete(best, [17, 200])
    assert others.max() < 0.2
