"""`thresher bench noise`: planted corruptions (thresher.data.corrupt), the AUROC (thresher.algorithms.auroc) and
the benchmark end to end on short real ShareGPT rows with the length and perplexity methods."""

from __future__ import annotations

import json
from collections import Counter

import numpy as np
import pandas as pd
import pytest

from thresher.algorithms.auroc import auroc
from thresher.cli import main
from thresher.data.corrupt import (CLEAN, FOREIGN_ANSWERS, KINDS, REFUSALS, dominant_script, loop, plant,
                                   shuffled, truncated)
from thresher.data.readers import load
from thresher.errors import ConfigError
from thresher.pipeline.bench import bench_noise

INSTRUCTIONS = [f"Explain topic number {i} in a few clear sentences for a beginner." for i in range(16)]
RESPONSES = [f"Topic {i} is simple. It starts with one idea and adds another! Then it ends with a summary "
             f"of everything said about topic {i}." for i in range(16)]


# ---------------------------------------------------------------------------------------------- planting
def _by_kind(planted):
    return {p["kind"]: (row, p) for row, p in enumerate(planted) if p["kind"] != CLEAN}


def test_each_kind_does_what_it_says():
    planted = plant(INSTRUCTIONS, RESPONSES, rate=0.5, seed=3)
    kinds = _by_kind(planted)
    assert sorted(kinds) == sorted(KINDS)                  # 8 corrupted rows: one of each kind
    row, p = kinds["truncated"]
    orig = RESPONSES[row]
    assert orig.startswith(p["response"]) and len(p["response"]) < len(orig)
    assert 0.15 <= len(p["response"].split()) / len(orig.split()) <= 0.65
    assert p["response"][-1] not in ".!?:"                  # cut mid-sentence
    row, p = kinds["shuffled"]
    assert sorted(p["response"].split()) == sorted(RESPONSES[row].split()) and p["response"] != RESPONSES[row]
    row, p = kinds["copy"]
    assert p["response"] == INSTRUCTIONS[row]
    row, p = kinds["other_response"]
    assert p["donor"] != row and p["response"] == RESPONSES[p["donor"]]
    assert kinds["refusal"][1]["response"] in REFUSALS
    row, p = kinds["loop"]
    sentence = p["response"].split(". ")[0]
    assert len(p["response"]) >= len(RESPONSES[row]) and p["response"].count(sentence) >= 3
    row, p = kinds["other_language"]                       # no other script in this pool: a fixed answer
    assert p["donor"] is None and p["response"] in FOREIGN_ANSWERS.values()
    assert dominant_script(p["response"]) != dominant_script(INSTRUCTIONS[row]) == "LATIN"
    row, p = kinds["junk_tail"]
    assert p["response"].startswith(RESPONSES[row] + " ") and len(p["response"].split()) >= len(RESPONSES[row].split()) + 8
    assert all(p["response"] == RESPONSES[i] for i, p in enumerate(planted) if p["kind"] == CLEAN)


def test_other_language_borrows_a_response_in_another_script_from_the_pool():
    responses = RESPONSES[:15] + ["Это ответ на совсем другой вопрос, написанный по-русски для проверки."]
    planted = plant(INSTRUCTIONS, responses, rate=0.5, seed=3)
    lang = [p for p in planted if p["kind"] == "other_language"]
    assert lang and all(p["donor"] == 15 and p["response"] == responses[15] for p in lang)


def test_edits_on_hand_checked_text():
    rng = np.random.default_rng(0)
    text = "One two three four five six seven eight nine ten."
    cut = truncated(text, rng)
    assert text.startswith(cut) and 2 <= len(cut.split()) <= 6
    assert shuffled("a b", rng) == "b a"                    # never the original order
    looped = loop("First point here. Second one.", rng)
    assert looped in (" ".join(["First point here."] * 3), " ".join(["Second one."] * 3))


def test_rate_and_seed():
    a = plant(INSTRUCTIONS, RESPONSES, rate=0.25, seed=7)
    assert sum(p["kind"] != CLEAN for p in a) == 4
    assert a == plant(INSTRUCTIONS, RESPONSES, rate=0.25, seed=7)
    assert a != plant(INSTRUCTIONS, RESPONSES, rate=0.25, seed=8)
    counts = Counter(p["kind"] for p in plant(INSTRUCTIONS * 4, RESPONSES * 4, rate=0.5, seed=1))
    assert all(counts[k] == 4 for k in KINDS)               # 32 corrupted rows: the kinds evenly
    with pytest.raises(ConfigError, match="rate"):
        plant(INSTRUCTIONS, RESPONSES, rate=1.5, seed=0)


# ---------------------------------------------------------------------------------------------- AUROC
def _naive_auroc(scores, positive, higher_is_better=True):
    s = np.where(np.isnan(scores), -np.inf, scores if higher_is_better else -np.asarray(scores))
    pos, neg = s[positive], s[~positive]
    wins = sum((p > n) + 0.5 * (p == n) for p in pos for n in neg)
    return wins / (len(pos) * len(neg))


def test_auroc_matches_the_pair_count_with_ties_and_nan():
    rng = np.random.default_rng(0)
    for _ in range(20):
        n = int(rng.integers(5, 40))
        scores = rng.integers(0, 6, size=n).astype(float)   # many ties
        scores[rng.random(n) < 0.1] = np.nan
        positive = rng.random(n) < 0.6
        if positive.all() or not positive.any():
            continue
        for hib in (True, False):
            assert auroc(scores, positive, hib) == pytest.approx(_naive_auroc(scores, positive, hib))


def test_auroc_on_hand_made_scores():
    positive = np.array([True, True, True, False, False])
    assert auroc([5, 4, 3, 2, 1], positive) == 1.0
    assert auroc([5, 4, 3, 2, 1], positive, higher_is_better=False) == 0.0
    assert auroc([1, 1, 1, 1, 1], positive) == 0.5
    assert auroc([5, 4, np.nan, 2, 1], positive) == pytest.approx(4 / 6)   # NaN ranks worst
    assert np.isnan(auroc([1, 2], [True, True]))


# ---------------------------------------------------------------------------------------------- end to end
@pytest.fixture(scope="module")
def short_file(sharegpt_short, tmp_path_factory):
    """30 short real ShareGPT records (JSON Lines, their own schema)."""
    path = tmp_path_factory.mktemp("bench-data") / "short.jsonl"
    path.write_text("".join(json.dumps(r, ensure_ascii=False) + "\n" for r in sharegpt_short.raw[:30]))
    return path


def _bench(data, out, cache_root, *extra):
    args = ["bench", "noise", "--data", str(data), "--sample", "24", "--rate", "0.34", "--seed", "5",
            "--recipes", "length", "--scorers", "length,perplexity:lower", "--out", str(out),
            "--cache-dir", str(cache_root), "--device", "cpu", "--dtype", "float32", "--progress", "none", *extra]
    assert main(args) == 0
    return json.loads((out / "bench.json").read_text())


@pytest.fixture(scope="module")
def bench_pair(short_file, cache_root, tmp_path_factory):
    base = tmp_path_factory.mktemp("bench")
    return base / "a", _bench(short_file, base / "a", cache_root), _bench(short_file, base / "b", cache_root)


def _labels(out):
    return [json.loads(line) for line in (out / "labels.jsonl").read_text().splitlines()]


def test_bench_labels_match_what_it_reports(bench_pair):
    out, result, _ = bench_pair
    labels = _labels(out)
    counts = Counter(rec["kind"] for rec in labels)
    assert result["sample"]["rows"] == len(labels) == 24
    assert result["sample"]["corrupted"] == 24 - counts[CLEAN] == 8
    assert result["sample"]["by_kind"] == {k: counts[k] for k in KINDS} == {k: 1 for k in KINDS}
    assert result["base_rate"] == pytest.approx(8 / 24, abs=1e-4)
    planted = load(out / "planted.jsonl")                  # loads like the input: same schema, the labels' ids
    assert planted.fmt == "sharegpt" and list(planted.ids) == [rec["id"] for rec in labels]
    assert all(rec["id"] == (rec["of"] if rec["kind"] == CLEAN else f"{rec['of']}~{rec['kind']}") for rec in labels)
    kept = set((out / "runs" / "length" / "selected_ids.txt").read_text().split())
    bad = sum(rec["kind"] != CLEAN for rec in labels if rec["id"] in kept)
    assert result["methods"]["length"]["kept"] == {"rows": len(kept), "corrupted": bad, "share": round(bad / len(kept), 4)}
    assert set(result["methods"]) == {"length", "scorer:length", "scorer:perplexity", "guard", "length+guard",
                                      "scorer:length+guard", "scorer:perplexity+guard"}


def test_bench_is_reproducible_from_the_seed(bench_pair):
    out, a, b = bench_pair
    assert a["methods"].keys() == b["methods"].keys()
    for name in a["methods"]:
        strip = lambda m: {k: v for k, v in m.items() if k != "run"}   # noqa: E731
        assert strip(a["methods"][name]) == strip(b["methods"][name])
    assert (out / "planted.jsonl").read_bytes() == (out.parent / "b" / "planted.jsonl").read_bytes()


def test_length_auroc_per_kind_is_what_the_planted_lengths_imply(bench_pair, ctx):
    out, result, _ = bench_pair
    labels = _labels(out)
    planted = load(out / "planted.jsonl")
    tok = ctx.lm().tokenizer_only()
    lengths = np.array([len(tok(m[-1]["content"], add_special_tokens=False)["input_ids"]) for m in planted.messages],
                       dtype=float)
    kinds = np.array([rec["kind"] for rec in labels])
    for kind in ("loop", "junk_tail"):
        rows = (kinds == CLEAN) | (kinds == kind)
        expected = _naive_auroc(lengths[rows], kinds[rows] == CLEAN)
        assert result["methods"]["length"]["auroc_by_kind"][kind] == pytest.approx(expected, abs=1e-4)


def test_a_scorer_without_direction_must_be_told(short_file, cache_root, tmp_path):
    with pytest.raises(ConfigError, match="perplexity:lower"):
        bench_noise(short_file, tmp_path / "x", scorers=["perplexity"], sample=10, cache_root=cache_root)
    assert not (tmp_path / "x").exists()                   # checked before anything is written


def test_bench_with_the_guard(bench_pair):
    out, result, _ = bench_pair
    methods = result["methods"]
    assert methods["guard"]["higher_is_better"] is False and methods["guard"]["nan"] == 0
    kept = set((out / "runs" / "length-guard" / "selected_ids.txt").read_text().split())
    verdict = pd.read_parquet(out / "runs" / "guard" / "scores.parquet")
    flagged = set(verdict["id"][verdict["flagged"].astype(bool)])
    assert not kept & flagged                               # the guard's flagged rows never reach the selector


def test_no_guard_runs_only_the_methods(short_file, cache_root, tmp_path):
    result = _bench(short_file, tmp_path / "n", cache_root, "--no-guard")      # every score from the cache
    assert set(result["methods"]) == {"length", "scorer:length", "scorer:perplexity"}
    assert not (tmp_path / "n" / "runs" / "guard").exists()
