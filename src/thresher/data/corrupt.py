"""Planted noise: corrupted copies of instruction-response pairs with known labels (``thresher bench noise``).

Pure functions over strings and record dicts; every random choice comes from the ``numpy.random.Generator``
passed in, so the same seed plants the same rows. ``plant(instructions, responses, rate, seed)`` picks which
rows to corrupt (``round(rate * n)`` of them, the kinds as even as the count allows) and returns each row's
kind ("clean" or one of ``KINDS``), its new response and the row whose text it borrowed, if any.

Kinds (what the corrupted response is):
  other_response  another sampled row's response (unrelated to the instruction)
  truncated       a proper prefix: the first 20-60 % of its words, cut mid-sentence (no final . ! ? :)
  shuffled        its own words in a random order (a permutation of the same words, single spaces)
  refusal         one of ``REFUSALS``
  copy            the instruction (the user turn) itself
  loop            one of its sentences repeated until the original length (at least 3 times)
  other_language  a response in another script: another sampled row's response whose dominant script
                  differs from this row's instruction when the sample has one, else a fixed short answer
                  from ``FOREIGN_ANSWERS`` in another script
  junk_tail       the response with a tail of random characters appended (about a third of its words again)
"""

from __future__ import annotations

import math
import re
import unicodedata
from collections import Counter

import numpy as np

from thresher.data.records import split_turns
from thresher.errors import ConfigError

KINDS = ("other_response", "truncated", "shuffled", "refusal", "copy", "loop", "other_language", "junk_tail")
CLEAN = "clean"
MIN_WORDS = 4            # rows whose response has fewer words are not sampled (too short to truncate or loop)

REFUSALS = (
    "I'm sorry, but I can't help with that request.",
    "As an AI language model, I cannot provide an answer to this question.",
    "I apologize, but I am unable to assist with this.",
    "Sorry, I can't comply with that.",
    "I'm not able to answer that. Is there anything else I can help you with?",
    "Unfortunately, I cannot fulfill this request as it goes against my guidelines.",
)

# Short generic answers, one per script (the key: ``dominant_script``'s name for it).
FOREIGN_ANSWERS = {
    "CJK": "这是一个很好的问题。一般来说，答案取决于具体情况。建议先明确目标，然后逐步分析每个条件，最后根据结果做出决定。",
    "CYRILLIC": "Это хороший вопрос. В общем случае ответ зависит от конкретной ситуации. Сначала определите цель, "
                "затем проанализируйте условия и только после этого принимайте решение.",
    "ARABIC": "هذا سؤال جيد. بشكل عام، تعتمد الإجابة على الظروف المحددة. حدد هدفك أولاً، ثم حلل الشروط خطوة بخطوة، "
              "وبعد ذلك اتخذ القرار المناسب.",
    "DEVANAGARI": "यह एक अच्छा प्रश्न है। सामान्य तौर पर उत्तर परिस्थितियों पर निर्भर करता है। पहले अपना लक्ष्य तय करें, "
                  "फिर शर्तों का विश्लेषण करें और उसके बाद निर्णय लें।",
    "HANGUL": "좋은 질문입니다. 일반적으로 답은 구체적인 상황에 따라 달라집니다. 먼저 목표를 정하고, 조건을 단계별로 "
              "분석한 다음 결정을 내리세요.",
    "GREEK": "Αυτή είναι μια καλή ερώτηση. Γενικά, η απάντηση εξαρτάται από τις συγκεκριμένες συνθήκες. Πρώτα "
             "ορίστε τον στόχο σας και μετά αναλύστε τις συνθήκες βήμα προς βήμα.",
    "LATIN": "That is a good question. In general, the answer depends on the specific situation. First decide on "
             "your goal, then analyse the conditions step by step, and only then make a decision.",
}

_WORD = re.compile(r"\S+")
_SENTENCE_END = re.compile(r"(?<=[.!?。！？])\s+")
_JUNK_ALPHABET = np.array(list("abcdefghijklmnopqrstuvwxyzQXZJK0123456789#$%&*+=<>/\\|~^_{}[]@;:"))
_SCRIPT_LETTERS = 400    # letters read to judge a text's dominant script


# ---------------------------------------------------------------------------------------------- one response
def truncated(response: str, rng: np.random.Generator) -> str:
    """A proper prefix of ``response``: its first 20-60 % of words (at least 1, at most all but one), the
    cut word's trailing sentence punctuation removed so the text stops mid-sentence."""
    ends = [m.end() for m in _WORD.finditer(response)]
    if len(ends) < 2:
        raise ConfigError(f"truncated needs a response of at least 2 words; got {len(ends)}.")
    keep = int(np.clip(round(rng.uniform(0.2, 0.6) * len(ends)), 1, len(ends) - 1))
    return response[:ends[keep - 1]].rstrip(".!?:;。！？")


def shuffled(response: str, rng: np.random.Generator) -> str:
    """The words of ``response`` in a random order, joined by single spaces."""
    words = response.split()
    order = rng.permutation(len(words))
    if len(words) > 1 and (order == np.arange(len(words))).all():
        order = np.roll(order, 1)                  # never the original order
    return " ".join(words[i] for i in order)


def refusal(rng: np.random.Generator) -> str:
    """One of ``REFUSALS``."""
    return REFUSALS[int(rng.integers(len(REFUSALS)))]


def loop(response: str, rng: np.random.Generator) -> str:
    """One sentence of ``response`` (at most its first 30 words) repeated, space-separated, until the text is at
    least as long as ``response`` and at least 3 times."""
    sentences = [s for s in _SENTENCE_END.split(response.strip()) if s.strip()]
    sentence = " ".join(sentences[int(rng.integers(len(sentences)))].split()[:30])
    times = max(3, math.ceil(len(response) / (len(sentence) + 1)))
    return " ".join([sentence] * times)


def junk_tail(response: str, rng: np.random.Generator) -> str:
    """``response`` + a space + random tokens of 1-8 characters from letters, digits and symbols (a third of the
    response's word count, at least 8 tokens)."""
    n = max(8, len(response.split()) // 3)
    sizes = rng.integers(1, 9, size=n)
    chars = _JUNK_ALPHABET[rng.integers(len(_JUNK_ALPHABET), size=int(sizes.sum()))]
    cuts = np.cumsum(sizes)[:-1]
    return response + " " + " ".join("".join(part) for part in np.split(chars, cuts))


def dominant_script(text: str) -> str:
    """The Unicode script most of ``text``'s first letters belong to (``LATIN``, ``CJK``, ``CYRILLIC``,
    ``HANGUL``, ...; Japanese kana count as ``CJK``); ``""`` when it has no letters."""
    letters = [c for c in text if c.isalpha()][:_SCRIPT_LETTERS]
    if not letters:
        return ""
    names = Counter(unicodedata.name(c, "UNKNOWN ?").split()[0] for c in letters)
    name = names.most_common(1)[0][0]
    return "CJK" if name in ("HIRAGANA", "KATAKANA") else name


# ---------------------------------------------------------------------------------------------- planting
def plant(instructions: list[str], responses: list[str], rate: float, seed: int) -> list[dict]:
    """Which rows to corrupt and how: one dict per row, ``{"kind", "response", "donor"}`` (``kind`` "clean" or
    one of ``KINDS``; ``response`` the text to use; ``donor`` the row whose response was borrowed, or None).

    ``round(rate * n)`` rows are corrupted, chosen at random; the kinds go round ``KINDS`` in a seeded order,
    so each kind gets ``n_corrupt // 8`` or one more. Deterministic in ``seed``."""
    n = len(responses)
    if not 0.0 < rate < 1.0:
        raise ConfigError(f"The 'rate' of planted noise must be a fraction in (0, 1). Got {rate!r}.")
    rng = np.random.default_rng(seed)
    n_bad = int(round(rate * n))
    rows = rng.choice(n, size=n_bad, replace=False) if n_bad else np.empty(0, dtype=np.int64)
    order = [KINDS[i] for i in rng.permutation(len(KINDS))]
    out = [{"kind": CLEAN, "response": r, "donor": None} for r in responses]
    scripts = [dominant_script(r) for r in responses]
    for j, row in enumerate(rows.tolist()):
        kind = order[j % len(KINDS)]
        text, donor = _corrupt(kind, row, instructions, responses, scripts, rng)
        out[row] = {"kind": kind, "response": text, "donor": donor}
    return out


def _corrupt(kind: str, row: int, instructions: list[str], responses: list[str], scripts: list[str],
             rng: np.random.Generator) -> tuple[str, int | None]:
    """(the corrupted response of ``row``, the donor row or None)."""
    response = responses[row]
    if kind == "other_response":
        donor = _other(row, len(responses), rng)
        return responses[donor], donor
    if kind == "other_language":
        return _other_language(row, instructions, responses, scripts, rng)
    if kind == "copy":
        return instructions[row], None
    if kind == "refusal":
        return refusal(rng), None
    edits = {"truncated": truncated, "shuffled": shuffled, "loop": loop, "junk_tail": junk_tail}
    return edits[kind](response, rng), None


def _other(row: int, n: int, rng: np.random.Generator) -> int:
    """A random row other than ``row`` (n >= 2)."""
    j = int(rng.integers(n - 1))
    return j + (j >= row)


def _other_language(row: int, instructions: list[str], responses: list[str], scripts: list[str],
                    rng: np.random.Generator) -> tuple[str, int | None]:
    """Another row's response in a script other than the instruction's, else a fixed answer in another script."""
    own = dominant_script(instructions[row])
    donors = [j for j, s in enumerate(scripts) if j != row and s and s != own]
    if donors:
        donor = donors[int(rng.integers(len(donors)))]
        return responses[donor], donor
    choices = [s for s in FOREIGN_ANSWERS if s != own and s != "LATIN"] or ["LATIN"]
    return FOREIGN_ANSWERS[choices[int(rng.integers(len(choices)))]], None


# ---------------------------------------------------------------------------------------------- records
_SHAREGPT_SPEAKER = {"system": "system", "user": "human", "assistant": "gpt"}


def first_exchange(messages: list[dict]) -> tuple[list[dict], str, str]:
    """(the messages up to and including the first assistant turn, its user turn, that response)."""
    context, response = split_turns(messages, "first")[0]
    instruction = [m["content"] for m in context if m["role"] == "user"][-1]
    return [*context, {"role": "assistant", "content": response}], instruction, response


def exchange_record(raw: dict, fmt: str, messages: list[dict], response: str, rid: str) -> dict:
    """The record ``raw`` (format ``fmt``) cut to the exchange ``messages`` (``first_exchange``), with the
    assistant turn's text set to ``response`` and its ``id`` set to ``rid``; its other fields kept."""
    if fmt == "alpaca":
        if isinstance(raw.get("instruction"), list):
            raise ConfigError("bench noise plants into single-turn alpaca records; this record's 'instruction' "
                              "holds earlier turns (IterIT's multi-turn form). Convert it to sharegpt first.")
        return {**raw, "id": rid, "output": response}
    turns = [*messages[:-1], {"role": "assistant", "content": response}]
    if fmt == "sharegpt":
        return {**raw, "id": rid, "conversations": [{"from": _SHAREGPT_SPEAKER[m["role"]], "value": m["content"]}
                                                    for m in turns]}
    return {**raw, "id": rid, "messages": [{"role": m["role"], "content": m["content"]} for m in turns]}
