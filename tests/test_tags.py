"""Unit tests for thresher.algorithms.opencs_tags (OpenCS's model-free tag pipeline): hand-checked cases,
realistic model outputs, and parity of the dedup with a naive re-implementation of the
reference's dict loop."""

from __future__ import annotations

import math

import numpy as np
import pytest

from thresher.errors import ConfigError
from thresher.algorithms.opencs_tags import (
    cluster_labels,
    cluster_members,
    consecutive_pairs,
    dedup_by_label_set,
    frequency_filter,
    normalise_tag,
    parse_pair_scores,
    parse_tags,
    scored_members,
    unique_pairs,
)
from thresher.selection.opencs import opencs_select

pytest.importorskip("nltk")


def both_nan(pair):
    return all(math.isnan(x) for x in pair)


# --------------------------------------------------------------------------- parse_tags

FENCED = """Sure! Here are the tags:
```json
[
  {"tag": "Grammar Checking", "explanation": "The user wants the sentence [begin]...[end] fixed."},
  {"tag": "Text Editing", "explanation": "Rewrite for clarity."}
]
```
Let me know if you need more."""

BARE = ('The intentions are [{"tag": "Information Retrieval", "explanation": "asks for a fact"}, '
        '{"tag": "History", "explanation": "about [the] Roman empire"}] as requested.')


def test_parse_tags_realistic_outputs():
    assert parse_tags(FENCED) == ["Grammar Checking", "Text Editing"]
    assert parse_tags(BARE) == ["Information Retrieval", "History"]
    assert parse_tags('["Coding", " Math "]') == ["Coding", "Math"]
    assert parse_tags('```\n[{"tag": "Cosplay"}]\n```') == ["Cosplay"]          # bare fence
    assert parse_tags('{"tags": [{"tag": "Poetry", "explanation": "x"}]}') == ["Poetry"]
    # a citation-like [1] and a broken fence are skipped; the first real tag list is used
    assert parse_tags('See [1].\n```json\n[{"tag": "A",}]\n```\n[{"tag": "B"}]') == ["B"]
    assert parse_tags("[]") == []
    assert parse_tags('[{"tag": "  "}, {"tag": "X"}]') == ["X"]              # blank tag dropped


@pytest.mark.parametrize("text", [
    "I cannot help with that.",
    '[{"tag": "A", "explanation": "unterminated}]',
    '[{"name": "A"}]',                                  # no "tag" key
    "[1, 2]",
    '[{"tag": 3}]',                                     # non-string tag
    "",
    None,
])
def test_parse_tags_garbage_is_none(text):
    assert parse_tags(text) is None


# --------------------------------------------------------------------------- normalise_tag

def test_normalise_tag_examples():
    assert normalise_tag("Grammar Checking!") == "grammar check"
    assert normalise_tag("Grammar Checking!", strip=False) == "grammar checking "   # reference
    assert normalise_tag("Role-playing") == "role play"
    assert normalise_tag("Text Generation") == "text gener"
    assert normalise_tag("Coding Problems") == "coding problem"     # only the last word stems
    assert normalise_tag("Coding") == "code"
    assert normalise_tag("Q&A") == "q a"
    assert normalise_tag("  Data--Analysis ") == "data analysi"


# --------------------------------------------------------------------------- frequency_filter

ROWS = [["Coding", "Math"], ["coding", "Math"], ["Coding!"], None, ["Rare"], ["Math", "math"],
        ["Coding"]]


def test_frequency_filter_raw_counts_then_normalise():
    # raw counts: Coding 2, Math 3, coding 1, Coding! 1, Rare 1, math 1
    filtered, kept, counts = frequency_filter(ROWS, min_count=2)
    assert filtered == [["code", "math"], ["math"], None, None, None, ["math"], ["code"]]
    assert kept == ["code", "math"]
    assert counts == {"code": 2, "math": 3}          # surviving raw occurrences only


def test_frequency_filter_normalised_counts_sum_variants():
    # "code" = Coding 2 + coding 1 + Coding! 1 = 4; "math" = Math 3 + math 1 = 4; "rare" 1
    filtered, kept, counts = frequency_filter(ROWS, min_count=2, count="normalised")
    assert filtered == [["code", "math"], ["code", "math"], ["code"], None, None, ["math"],
                        ["code"]]
    assert kept == ["code", "math"]
    assert counts == {"code": 4, "math": 4}
    # a threshold only the summed count passes
    _, kept, counts = frequency_filter(ROWS, min_count=4)
    assert kept == [] and counts == {}
    _, kept, counts = frequency_filter(ROWS, min_count=4, count="normalised")
    assert kept == ["code", "math"]


def test_frequency_filter_errors():
    with pytest.raises(ConfigError, match=r"'min_count'"):
        frequency_filter(ROWS, min_count=0)
    with pytest.raises(ConfigError, match=r"'count'.*'raw', 'normalised'"):
        frequency_filter(ROWS, count="both")
    with pytest.raises(ConfigError, match=r"row 1"):
        frequency_filter([["a"], "abc"])


# --------------------------------------------------------------------------- clusters

def test_cluster_labels_per_unique_tag():
    unique = ["code", "math", "write"]
    ids = np.array([3, 1, 3])
    rows = [["code", "write"], ["math", "code"], None, ["write"]]
    assert cluster_labels(unique, ids, rows) == [(3,), (1, 3), None, (3,)]
    with pytest.raises(ConfigError, match=r"not in 'unique_tags'"):
        cluster_labels(unique, ids, [["poetry"]])
    with pytest.raises(ConfigError, match=r"must not repeat"):
        cluster_labels(["a", "a"], np.array([0, 1]), [])
    with pytest.raises(ConfigError, match=r"one id per unique tag \(3\)"):
        cluster_labels(unique, np.array([0, 1]), [])


def naive_dedup(label_sets, lengths):
    """tag_process.py's loop: dict keyed by label set, replaced only by a strictly longer one."""
    best = {}
    for i, (ls, n) in enumerate(zip(label_sets, lengths)):
        if not ls:
            continue
        if ls not in best or n > best[ls][0]:
            best[ls] = (n, i)
    return [i for _, i in best.values()]


def test_dedup_by_label_set_hand_checked():
    sets = [(1,), (1, 2), (1,), None, (1, 2), (3,), (1,)]
    lengths = [5, 7, 9, 100, 7, 1, 9]
    # (1,): rows 0, 2, 6 -> 2 (9; tie with 6 keeps the first); (1, 2): rows 1, 4 tie -> 1;
    # (3,): 5. Order: first appearance of each set.
    kept = dedup_by_label_set(sets, lengths)
    assert kept.dtype == np.int64 and kept.tolist() == [2, 1, 5]
    assert kept.tolist() == naive_dedup(sets, lengths)
    with pytest.raises(ConfigError, match=r"one number per row \(7\)"):
        dedup_by_label_set(sets, lengths[:-1])


def test_dedup_matches_naive_on_random_pool():
    rng = np.random.default_rng(0)
    sets = [tuple(sorted(set(rng.integers(0, 6, rng.integers(1, 3)).tolist())))
            for _ in range(500)]
    sets[7] = None
    lengths = rng.integers(0, 40, 500)                        # many length ties
    assert dedup_by_label_set(sets, lengths).tolist() == naive_dedup(sets, lengths)


def test_cluster_members_pairs_and_scores_end_to_end():
    sets = [(1,), (1, 2), (1,), None, (1, 2), (3,), (1, 3)]
    kept = dedup_by_label_set(sets, [5, 7, 9, 100, 7, 1, 8])  # -> [2, 1, 5, 6]
    assert kept.tolist() == [2, 1, 5, 6]
    members = cluster_members(sets, kept)
    assert {c: m.tolist() for c, m in members.items()} == {1: [2, 1, 6], 2: [1], 3: [5, 6]}
    pairs = consecutive_pairs(members)
    assert {c: p.tolist() for c, p in pairs.items()} == {1: [[2, 1]], 2: [], 3: [[5, 6]]}
    assert pairs[2].shape == (0, 2)
    up = unique_pairs({**pairs, 4: np.array([[2, 1]])})       # (2, 1) also in a 4th cluster
    assert up.tolist() == [[2, 1], [5, 6]]
    texts = ["Overall analysis ... [Response 1]: [80]\n... [Response 2]: [95]",
             "[Response 1] Score: 40\n[Response 2] Score: 130"]          # 130 out of range
    ps = np.array([parse_pair_scores(t) for t in texts])
    rows, scores = scored_members(pairs, up, ps)
    assert rows[1].tolist() == [2, 1] and scores[1].tolist() == [80.0, 95.0]
    assert rows[3].tolist() == [5, 6] and scores[3][0] == 40.0 and math.isnan(scores[3][1])
    assert rows[2].tolist() == [] and scores[2].tolist() == []
    # cluster sizes 2, 0, 2: cluster 2 (empty) first, then 1: 1 (95), then 3: 5 (40)
    assert opencs_select(scores, rows, per_cluster=1).tolist() == [1, 5]
    with pytest.raises(ConfigError, match=r"not in 'pairs'"):
        scored_members(pairs, up[:1], ps[:1])


# --------------------------------------------------------------------------- pair scores

def test_parse_pair_scores_both_formats():
    assert parse_pair_scores("Analysis...\n[Response 1]: [85]\n\nMore.\n[Response 2]: [72]") \
        == (85.0, 72.0)
    assert parse_pair_scores("[Response 1] Score: 4\n[Response 2] Score:6") == (4.0, 6.0)
    assert parse_pair_scores("**[Response 1]**: 88.5\n**[Response 2]:** [90]") == (88.5, 90.0)
    assert parse_pair_scores("[Response 1]: <60> [Response 2] score: (61)") == (60.0, 61.0)
    # the analysis mentions an earlier total; the last one is the final score
    assert parse_pair_scores("[Response 1]: [70] at first, but finally\n[Response 1]: [75]\n"
                             "[Response 2]: [50]") == (75.0, 50.0)


def test_parse_pair_scores_missing_and_out_of_range_are_nan():
    assert both_nan(parse_pair_scores("[Response 1] is clearly better than [Response 2]."))
    assert both_nan(parse_pair_scores("[Response 1]: []\n[Response 2]: []"))
    s1, s2 = parse_pair_scores("[Response 1]: [101]\n[Response 2]: [100]")
    assert math.isnan(s1) and s2 == 100.0
    s1, s2 = parse_pair_scores("[Response 1]: [-5]\n[Response 2]: [0]")
    assert math.isnan(s1) and s2 == 0.0
    assert parse_pair_scores("[Response 1]: [5]\n[Response 2]: [6]", high=5) [0] == 5.0
    assert both_nan(parse_pair_scores(None))


def test_parse_pair_scores_faithful_reference_regex():
    pair_fmt = "[Response 1]: [85]\n[Response 2]: [72]"
    assert parse_pair_scores(pair_fmt, faithful=True) == (0.0, 0.0)     # pitfall 5.9 item 4
    assert parse_pair_scores("[Response 1] Score: 85\n[Response 2] Score: 172",
                             faithful=True) == (85.0, 172.0)             # no range check
