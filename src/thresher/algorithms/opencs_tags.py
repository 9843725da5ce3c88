"""OpenCS / TACOS open-tag pipeline, the model-free parts (METHODS.md 5.2-5.5, pitfalls 5.9).

The integrator calls the tagger and the judge and embeds the tags; everything in between is here:

  tagger text --parse_tags--> raw tags --frequency_filter--> normalised tags per row
  unique tags --(embed + K-Means, outside)--> cluster id per unique tag
  --cluster_labels--> label set per row --dedup_by_label_set--> kept rows
  --cluster_members--> rows per cluster --consecutive_pairs / unique_pairs--> pairs to judge
  judge text --parse_pair_scores--> (s1, s2) --scored_members--> per-cluster scores
  --> thresher.selection.opencs.opencs_select

Fixes of the reference (``hexixiang/OpenCS:src/open_tag_cluster``), each noted where it applies:
cluster ids are assigned per unique tag (the reference embedded every occurrence and kept the last
occurrence's id); counts of raw tags that normalise to the same string are summed (the reference
overwrote them); pair scores parse both the pair and the rank output formats (the reference's
regex matched only the rank format, so every pair.txt score became 0).
"""

from __future__ import annotations

import json
import re
from collections import Counter
from collections.abc import Mapping

import numpy as np

from thresher.errors import ConfigError

# ---------------------------------------------------------------------------------------------
# tag parsing and normalisation

_FENCE = re.compile(r"```[ \t]*(?:json)?[ \t]*\r?\n(.*?)```", re.DOTALL | re.IGNORECASE)


def _tag_list(obj) -> list[str] | None:
    """Tags from a decoded JSON value: a list of {"tag": str, ...} or of str. Blank tags are
    dropped; any other element makes the whole list invalid (None)."""
    if not isinstance(obj, list):
        return None
    tags = []
    for item in obj:
        tag = item.get("tag") if isinstance(item, dict) else item
        if not isinstance(tag, str):
            return None
        if tag.strip():
            tags.append(tag.strip())
    return tags


def parse_tags(text) -> list[str] | None:
    """Tags from a tagger reply (OpenCS ``tag_pro.txt`` asks for ``[{"tag": str,
    "explanation": str}]``), or None if no tag list can be read (the reference drops the sample).

    Tries each fenced block (```json ... ``` or a bare ``` fence) first, as the reference does,
    then the first JSON list found anywhere in the text that is a tag list: its elements must be
    objects with a string "tag" or plain strings (a list such as [1] or ["a", 2] is skipped).
    Tags are stripped; blank ones dropped; [] gives [] (read, but no tags).
    """
    if not isinstance(text, str):
        return None
    for m in _FENCE.finditer(text):
        try:
            tags = _tag_list(json.loads(m.group(1)))
        except ValueError:
            continue
        if tags is not None:
            return tags
    decoder = json.JSONDecoder()
    for m in re.finditer(r"\[", text):
        try:
            obj, _ = decoder.raw_decode(text, m.start())
        except ValueError:
            continue
        tags = _tag_list(obj)
        if tags is not None:
            return tags
    return None


_STEMMER = None


def _stem(phrase: str) -> str:
    global _STEMMER
    if _STEMMER is None:
        try:
            from nltk.stem import PorterStemmer
        except ImportError:
            raise ConfigError("Tag normalisation (OpenCS) needs the 'nltk' package for its Porter "
                              "stemmer. Install it with: pip install nltk") from None
        _STEMMER = PorterStemmer()                           # NLTK_EXTENSIONS mode, as OpenCS
    return _STEMMER.stem(phrase)


def normalise_tag(tag: str, *, strip: bool = True) -> str:
    """OpenCS's rule aggregation (``tag_cluster.py: filter_tag_by_rule``): lowercase, each run of
    non-word characters -> one space, then NLTK ``PorterStemmer().stem`` on the whole phrase,
    which in effect stems only its last word ("Grammar Checking!" -> "grammar check").

    ``strip`` (default True) strips the spaces left by leading/trailing punctuation before
    stemming. strip=False is the reference exactly: "Grammar Checking!" becomes
    "grammar checking " (the trailing space stops the stemmer), a different string from
    "grammar check".
    """
    s = re.sub(r"\W+", " ", tag.lower())
    return _stem(s.strip() if strip else s)


def frequency_filter(tag_lists, *, min_count=20, count="raw", strip=True):
    """Frequency filtering + rule aggregation over the pool (METHODS.md 5.3 steps 2-3).

    ``tag_lists``: per row, the raw tags (``parse_tags`` output) or None (unparseable).
    ``count``:
      * "raw" (the reference's order): occurrences of each raw string are counted over the pool
        (a tag repeated within one row counts each time), raw tags seen fewer than ``min_count``
        (alpha = 20) times are dropped, then the survivors are normalised. Variants of one tag
        ("Coding" 15x, "coding" 10x) can each fall below alpha although together they pass.
      * "normalised" (fixed): raw tags are normalised first and occurrences counted per
        normalised string (summed over its raw variants); those below ``min_count`` are dropped.
    Returns ``(filtered, kept, counts)``:
      * filtered: list with one entry per row: its surviving normalised tags (first-seen order,
        no repeats), or None when the row was unparseable or has no tag left (the reference drops
        such rows);
      * kept: sorted list of the distinct surviving normalised tags (embed these, once each);
      * counts: dict normalised tag -> surviving raw occurrences summed over its raw variants
        (the reference's log kept only the last variant's count: pitfall 5.9 item 2).
    """
    f = "frequency_filter"
    if not (isinstance(min_count, (int, np.integer)) and not isinstance(min_count, bool)
            and min_count >= 1):
        raise ConfigError(f"The 'min_count' parameter of {f} must be an int >= 1. "
                          f"Got {min_count!r}.")
    if count not in ("raw", "normalised"):
        raise ConfigError(f"The 'count' parameter of {f} must be one of 'raw', 'normalised'. "
                          f"Got {count!r}.")
    tag_lists = list(tag_lists)
    for i, tags in enumerate(tag_lists):
        if tags is not None and (isinstance(tags, str) or not all(isinstance(t, str)
                                                                   for t in tags)):
            raise ConfigError(f"The 'tag_lists' parameter of {f} must hold, per row, a list of "
                              f"tag strings or None. Got {tags!r} at row {i}.")
    raw = Counter(t for tags in tag_lists if tags is not None for t in tags)
    norm = {t: normalise_tag(t, strip=strip) for t in raw}  # each distinct raw string once
    if count == "raw":
        ok_raw = {t for t, c in raw.items() if c >= min_count}
    else:
        total: Counter = Counter()
        for t, c in raw.items():
            total[norm[t]] += c
        ok_raw = {t for t in raw if total[norm[t]] >= min_count}
    counts: Counter = Counter()
    for t in ok_raw:
        counts[norm[t]] += raw[t]
    filtered = []
    for tags in tag_lists:
        keep = list(dict.fromkeys(norm[t] for t in tags if t in ok_raw)) if tags else []
        filtered.append(keep or None)
    return filtered, sorted(counts), dict(counts)


# ---------------------------------------------------------------------------------------------
# clusters and label sets


def cluster_labels(unique_tags, tag_cluster_ids, tag_lists) -> list[tuple[int, ...] | None]:
    """Per row, the sorted tuple of distinct cluster ids of its tags (its label set), or None
    for a None row.

    ``unique_tags``: the distinct normalised tags that were embedded and clustered (e.g.
    ``kept`` from ``frequency_filter``); ``tag_cluster_ids``: (U,) cluster id of each;
    ``tag_lists``: per row, normalised tags or None. The cluster id is looked up per unique tag
    (fix of pitfall 5.9 item 2). To reproduce the reference's K-Means over every occurrence,
    fit K-Means on the unique tags with ``sample_weight=`` their occurrence counts: the same
    objective. A tag missing from ``unique_tags`` is an error.
    """
    f = "cluster_labels"
    ids = np.asarray(tag_cluster_ids)
    if ids.ndim != 1 or len(ids) != len(unique_tags) or (
            ids.size and not np.issubdtype(ids.dtype, np.integer)):
        raise ConfigError(f"The 'tag_cluster_ids' parameter of {f} must be a 1-D int array with "
                          f"one id per unique tag ({len(unique_tags)}). Got shape {ids.shape}, "
                          f"dtype {ids.dtype}.")
    lookup = dict(zip(unique_tags, ids.tolist()))
    if len(lookup) != len(unique_tags):
        raise ConfigError(f"The 'unique_tags' parameter of {f} must not repeat a tag.")
    out: list[tuple[int, ...] | None] = []
    for i, tags in enumerate(tag_lists):
        if tags is None:
            out.append(None)
            continue
        missing = [t for t in tags if t not in lookup]
        if missing:
            raise ConfigError(f"Row {i} of the 'tag_lists' parameter of {f} has tag(s) "
                              f"{missing[:3]!r} that are not in 'unique_tags'. Pass the same "
                              "normalised tags that were clustered.")
        out.append(tuple(sorted({lookup[t] for t in tags})))
    return out


def _label_set_ids(label_sets) -> np.ndarray:
    """(N,) int id per distinct label set in first-seen order; -1 for None or empty."""
    seen: dict[tuple, int] = {}
    return np.array([-1 if not ls else seen.setdefault(tuple(ls), len(seen))
                     for ls in label_sets], dtype=np.int64)


def dedup_by_label_set(label_sets, response_lengths) -> np.ndarray:
    """Row indices (int64) that survive OpenCS's dedup (``tag_process.py``): among rows with the
    same label set, the one with the longest response (characters in the reference; ties: the
    lowest index, as the reference's strict ">" keeps the first). Rows whose label set is None
    or empty are dropped. Order: by the first appearance of each label set in the pool, which is
    the order the reference writes its representatives in (and so the order of members within a
    cluster, which decides the pairs). ``np.sort`` it for dataset order.
    """
    f = "dedup_by_label_set"
    ids = _label_set_ids(label_sets)
    lengths = np.asarray(response_lengths, dtype=np.float64)
    if lengths.shape != ids.shape or np.isnan(lengths).any():
        raise ConfigError(f"The 'response_lengths' parameter of {f} must be one number per row "
                          f"({len(ids)}), without NaN. Got shape {lengths.shape}.")
    rows = np.flatnonzero(ids >= 0)
    if rows.size == 0:
        return np.zeros(0, dtype=np.int64)
    order = rows[np.lexsort((rows, -lengths[rows], ids[rows]))]  # by set, longest, lowest index
    first = np.r_[True, ids[order][1:] != ids[order][:-1]]      # first row of each set
    return order[first].astype(np.int64)                        # set ids are first-seen order


def cluster_members(label_sets, kept) -> dict[int, np.ndarray]:
    """Cluster id -> (m,) int64 row indices of the ``kept`` rows whose label set contains it, in
    the order of ``kept`` (a row is in every cluster of its label set). Keys ascending."""
    kept = np.asarray(kept, dtype=np.int64)
    sets = [label_sets[r] or () for r in kept.tolist()]
    rows = np.repeat(kept, [len(s) for s in sets])              # (total,) row per membership
    cids = np.fromiter((c for s in sets for c in s), dtype=np.int64, count=len(rows))
    order = np.argsort(cids, kind="stable")                     # group by cluster, keep order
    keys, starts = np.unique(cids[order], return_index=True)
    groups = np.split(rows[order], starts[1:])
    return {int(key): g for key, g in zip(keys, groups)}


def clusters_from_columns(label_sets, ranks) -> dict[int, np.ndarray]:
    """cluster id -> representative rows in representative order, from the opencs_clusters scorer's
    columns: ``label_sets`` (N,) JSON lists of cluster ids, ``ranks`` (N,) representative position (-1:
    not a representative)."""
    ranks = np.asarray(ranks, dtype=np.int64)
    reps = np.flatnonzero(ranks >= 0)
    reps = reps[np.argsort(ranks[reps], kind="stable")]
    return cluster_members([tuple(json.loads(s)) for s in label_sets], reps)


# ---------------------------------------------------------------------------------------------
# pairs and pair scores


def consecutive_pairs(members: Mapping) -> dict[int, np.ndarray]:
    """Cluster id -> (P, 2) int64 pairs of consecutive members (0,1), (2,3), ...; an odd last
    member is left out and gets no score (``api_score_pairs.py``)."""
    out = {}
    for key, rows in members.items():
        r = np.asarray(rows, dtype=np.int64)
        out[key] = r[:len(r) // 2 * 2].reshape(-1, 2)
    return out


def unique_pairs(pairs_by_cluster: Mapping) -> np.ndarray:
    """(U, 2) int64 distinct ordered pairs over all clusters, in first-seen order: two rows that
    share several clusters are paired in each (the member order is the same in all of them), and
    such a pair needs one judge call only. Feed the scores back with ``scored_members``."""
    allp = np.concatenate([np.asarray(p, dtype=np.int64).reshape(-1, 2)
                           for p in pairs_by_cluster.values()] + [np.empty((0, 2), np.int64)])
    _, first = np.unique(allp, axis=0, return_index=True)
    return allp[np.sort(first)]


def scored_members(pairs_by_cluster: Mapping, pairs, pair_scores):
    """Per-cluster rows and their pair scores, ready for ``opencs_select``.

    ``pairs``: (U, 2) pairs that were judged (``unique_pairs``); ``pair_scores``: (U, 2) float,
    the scores of the first and second member (NaN when unparsed). Returns ``(rows, scores)``,
    two dicts cluster id -> (2P,) arrays: the members of the cluster's pairs, interleaved
    (i0, j0, i1, j1, ...) as the reference lists them, and the score each got in that pair. A
    cluster pair missing from ``pairs`` is an error.
    """
    f = "scored_members"
    pairs = np.asarray(pairs, dtype=np.int64).reshape(-1, 2)
    ps = np.asarray(pair_scores, dtype=np.float64)
    if ps.shape != pairs.shape:
        raise ConfigError(f"The 'pair_scores' parameter of {f} must have shape {pairs.shape} "
                          f"(one score per member of each pair). Got {ps.shape}.")
    where = {pair: u for u, pair in enumerate(map(tuple, pairs.tolist()))}
    rows, scores = {}, {}
    for cid, p in pairs_by_cluster.items():
        p = np.asarray(p, dtype=np.int64).reshape(-1, 2)
        try:
            pos = np.array([where[pair] for pair in map(tuple, p.tolist())], dtype=np.int64)
        except KeyError as e:
            raise ConfigError(f"Cluster {cid!r} passed to {f} has the pair {e.args[0]} that is "
                              "not in 'pairs'. Score every pair from unique_pairs first.") from None
        rows[cid] = p.reshape(-1)
        scores[cid] = ps[pos].reshape(-1)
    return rows, scores


_NUM = r"(\d+(?:\.\d+)?)"


def _pair_pattern(k: int) -> re.Pattern:
    # "[Response k]: [n]" (pair.txt) or "[Response k] Score: n" (rank_score.txt), allowing
    # markdown bold, "Score" without colon, and the number in [], <> or () or bare.
    return re.compile(r"\[\s*Response\s*" + str(k) + r"\s*\]\s*\**\s*(?:Score\s*:?|:)\s*\**\s*"
                      r"[\[<(]?\s*" + _NUM, re.IGNORECASE)


_PAIR = {1: _pair_pattern(1), 2: _pair_pattern(2)}
_PAIR_REF = {k: re.compile(r"\[Response " + str(k) + r"\] Score: (\d+)") for k in (1, 2)}


def parse_pair_scores(text, *, low=0.0, high=100.0, faithful=False) -> tuple[float, float]:
    """(s1, s2): the judge's total scores of Response 1 and Response 2, NaN where unreadable.

    Reads both output formats: pair.txt's "[Response 1]: [85]" and rank_score.txt's
    "[Response 1] Score: 85" (also "**[Response 1]**: 85", decimals). The last match wins (the
    totals follow the analysis). A score outside [``low``, ``high``] (0-100) is NaN.
    faithful=True reproduces ``sorted_1000.py``: only "[Response k] Score: <int>", first match,
    0.0 when absent, no range check (every pair.txt score is then 0: pitfall 5.9 item 4).
    """
    if not isinstance(text, str):
        return (0.0, 0.0) if faithful else (float("nan"), float("nan"))
    out = []
    for k in (1, 2):
        if faithful:
            m = _PAIR_REF[k].search(text)
            out.append(float(m.group(1)) if m else 0.0)
            continue
        found = _PAIR[k].findall(text)
        v = float(found[-1]) if found else float("nan")
        out.append(v if low <= v <= high else float("nan"))
    return out[0], out[1]


__all__ = [
    "cluster_labels",
    "cluster_members",
    "consecutive_pairs",
    "dedup_by_label_set",
    "frequency_filter",
    "normalise_tag",
    "parse_pair_scores",
    "parse_tags",
    "scored_members",
    "unique_pairs",
]
