"""The noise guard's text cues (issue 17): surface signs of a broken (instruction, response) pair, no model.

Columns (one value per row, from the row's chosen assistant turn and the prompt before it; the cues are the
functions of ``thresher.algorithms.text_signals``, whose docstrings hold the exact rules and word lists):
  refusal            1.0 refusal / non-answer ("I'm sorry, but I can't", "As an AI language model",
                     "I cannot help with", a bare "I don't know"), else 0.0; high = suspect
  copy_overlap       share of the response's word 3-grams found in the instruction, [0, 1]; 1 = copied,
                     typical answers 0-0.1
  compression_ratio  zlib bytes / raw bytes of the response, (0, ~1.1]; LOW = repetitive loop (< 0.2),
                     prose 0.4-0.7, short texts > 0.8
  repeat_ngram       share of the response's word 4-grams repeating an earlier one, [0, 1); high = loop
                     (> 0.5), typical < 0.05; NaN under 4 words
  script_mismatch    1 - overlap of the instruction's and response's letter-script histograms, [0, 1];
                     high = answered in another script; NaN when a side has no letters
  lang_mismatch      1.0/0.0: stopword-profile language guesses (en es fr de pt it nl) differ; NaN when either
                     side has under 8 words or is not mostly Latin script (a requested translation reads 1.0)
  empty              1.0 for an empty / whitespace / punctuation-only / placeholder ("N/A", "<nooutput>")
                     response, else 0.0
  ends_cleanly       1.0 when the response ends like a finished answer (terminal punctuation, closed code
                     fence, list item or table row, a one-line answer of <= 3 words), 0.0 otherwise (low =
                     cut off); NaN when empty
  junk_tail          character share of junk tokens (no letters/digits, or new words made of 3-grams the rest
                     never uses) in the response's last 20 % of tokens (at most 12), [0, 1]; high = appended
                     junk; ShareGPT replies median 0.24, with a planted junk tail 0.51
  resp_chars         response characters
``status``: "ok", or the reasons some columns are NaN ("no assistant turn", "empty response",
"too short for a language guess", ...). No threshold is applied here: the verdict (thresher guard) reads them.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from thresher.algorithms import text_signals as ts
from thresher.config import choice
from thresher.data.table import Dataset
from thresher.scoring.base import Scorer
from thresher.scoring.embedding import sample_text

GUARD_TURNS = ("last", "first")


@dataclass
class GuardTextParams:
    turns: str = choice("last", *GUARD_TURNS, help="which assistant turn of a row is checked (its prompt: the "
                                                  "instruction and input, earlier turns as 'User:' lines)")


def prompts_and_responses(rows: Dataset, turns: str) -> tuple[list[str], list[str], np.ndarray]:
    """Per row: the prompt text (instruction + input, earlier turns included), the chosen response, and
    whether the row has an assistant turn at all (bool array)."""
    prompts = [sample_text(m, meta, turns, "instruction") for m, meta in zip(rows.messages, rows.meta)]
    responses = [sample_text(m, meta, turns, "response") for m, meta in zip(rows.messages, rows.meta)]
    has = np.array([any(x["role"] == "assistant" for x in m) for m in rows.messages], dtype=bool)
    return prompts, responses, has


_REASONS = {"copy_overlap": "response has no words", "compression_ratio": "empty response",
            "repeat_ngram": "under 4 words", "script_mismatch": "no letters on one side",
            "lang_mismatch": "too short or not Latin for a language guess", "ends_cleanly": "empty response",
            "junk_tail": "under 2 tokens"}


def status_of(cols: dict[str, np.ndarray], has: np.ndarray) -> np.ndarray:
    """'ok' where every column is a number; else the reasons of the NaN columns, '; '-joined (once each)."""
    out = []
    for r in range(len(has)):
        if not has[r]:
            out.append("no assistant turn")
            continue
        why = dict.fromkeys(f"{c}: {_REASONS[c]}" for c in _REASONS if np.isnan(cols[c][r]))
        out.append("; ".join(why) or "ok")
    return np.array(out, dtype=object).astype(str)


class GuardTextScorer(Scorer):
    """Noise-guard text cues: refusal, copy, loops, script/language mismatch, empty, cut-off, junk tail."""

    name = "guard_text"
    version = "1"
    Params = GuardTextParams
    main_column = "refusal"
    higher_is_better = False
    uses = ()
    produces = {
        "refusal": "1.0 refusal or non-answer pattern near the response start, else 0.0; high = suspect",
        "copy_overlap": "share of response word 3-grams found in the instruction, [0, 1]; 1 = copied",
        "compression_ratio": "zlib bytes / raw bytes of the response, (0, ~1.1]; low = repetitive loop",
        "repeat_ngram": "share of response word 4-grams repeating an earlier one, [0, 1); high = loop",
        "script_mismatch": "1 - overlap of instruction/response letter-script histograms, [0, 1]; high = "
                           "other script",
        "lang_mismatch": "1.0/0.0 stopword language guess differs (en es fr de pt it nl); NaN when too short",
        "empty": "1.0 empty / punctuation-only / placeholder response, else 0.0",
        "ends_cleanly": "1.0 ends like a finished answer, 0.0 not (low = cut off); NaN when empty",
        "junk_tail": "junk character share of the response's last 20 % of tokens (<= 12), [0, 1]; high = junk tail",
        "resp_chars": "response characters",
        "status": "ok, or why some columns are NaN",
    }

    def score_batch(self, rows: Dataset) -> dict[str, np.ndarray]:
        q, a, has = prompts_and_responses(rows, self.params.turns)
        cols = {
            "refusal": ts.refusal(a), "copy_overlap": ts.copy_overlap(q, a),
            "compression_ratio": ts.compression_ratio(a), "repeat_ngram": ts.repeat_ngram(a),
            "script_mismatch": ts.script_mismatch(q, a), "lang_mismatch": ts.lang_mismatch(q, a),
            "empty": ts.empty(a), "ends_cleanly": ts.ends_cleanly(a), "junk_tail": ts.junk_tail(a),
        }
        for c in cols:
            cols[c] = np.where(has, cols[c], np.nan)
        return {**cols, "resp_chars": np.array([len(x) for x in a], dtype=np.int64), "status": status_of(cols, has)}
