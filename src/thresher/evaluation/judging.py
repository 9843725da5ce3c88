"""Judging answers with an LLM judge through any chat backend: MT-Bench single grading (1-10),
Cherry/AlpaGasus pairwise comparison with position swapping, and CLUES-style accuracy (0/1).

Every judge request goes through ``ask``, which saves each judge reply (JSON lines, atomic) under a key
made of the judge's identity, the prompt and the exact answers judged, so a rerun asks only what is
missing or failed; the API backend's request cache adds a second, per-request layer. Replies are
stored as text and parsed afterwards: a reply that cannot be read is NaN and counted, never a default.

Pairwise prompt: ``eval_pairwise`` (thresher/prompts/eval_pairwise.yaml, our wording of the Cherry/AlpaGasus
protocol: both answers scored 1-10, read by the "[Response k]: [n]" parser). MT-Bench's own pair prompts
are not used there because they return a verdict ([[A]]/[[B]]/[[C]]), not the two scores that protocol needs.
"""

from __future__ import annotations

import json
import math

import numpy as np

from thresher.algorithms.opencs_tags import parse_pair_scores
from thresher.evaluation.answers import conversation
from thresher.evaluation.mtbench import judge_prompts, parse_rating, single_messages
from thresher.evaluation.stats import pairwise_outcomes
from thresher.evaluation.store import JsonlStore
from thresher.io import sha256_text
from thresher.models.chat import ChatRequest
from thresher.scoring.prompts import load_prompt, parse_first_number


def _digest(*parts) -> str:
    return sha256_text(json.dumps(parts, ensure_ascii=False))[:24]


def ask(backend, items: list[dict], *, max_tokens: int, out=None, chunk_size: int = 16) -> list[dict]:
    """Send each item's ``messages`` to the judge; returns the items with ``text`` and ``error`` added.

    ``items``: dicts with ``key`` (unique) and ``messages`` plus any metadata to keep. A stored reply
    with text is reused; a missing or failed one is asked (temperature 0), ``chunk_size`` per call, and
    saved after each call.
    """
    ident = backend.identity()
    store = JsonlStore(out, lambda r: r["key"])
    recs = []
    for it in items:
        key = _digest(ident, it["key"], it["messages"], max_tokens)
        old = store.get(key)
        recs.append(old if old is not None and old["text"] is not None else
                    {**{k: v for k, v in it.items() if k != "messages"}, "key": key, "item": it["key"],
                     "judge": ident, "text": None, "error": None, "_messages": it["messages"]})
    todo = [i for i, r in enumerate(recs) if "_messages" in r]
    for s in range(0, len(todo), chunk_size):
        part = todo[s:s + chunk_size]
        res = backend.chat([ChatRequest.of(recs[i]["_messages"], max_tokens=max_tokens) for i in part])
        for i, r in zip(part, res):
            del recs[i]["_messages"]
            recs[i]["text"], recs[i]["error"] = r.text, r.error
        store.put([recs[i] for i in part])
    return recs


def _status(text, value: float) -> str:
    """ok, judge_failed (no reply) or unparseable (a reply with no readable score)."""
    if text is None:
        return "judge_failed"
    return "ok" if not math.isnan(value) else "unparseable"


def grade_single(questions: list[dict], answers: list[dict], backend, *, max_tokens: int = 2048, out=None,
                 chunk_size: int = 16) -> list[dict]:
    """MT-Bench single-answer grading of turns 1 and 2 of each answered question.

    ``answers``: records of ``generate_answers`` aligned with ``questions``. Returns one record per
    graded turn: question_id, category, turn (1-based), prompt (MT-Bench judge prompt name), score (1-10
    or NaN), status (ok | unparseable | judge_failed), judge text. A turn with no answer is not graded
    (it is reported as ``no_answer`` by ``evaluate``).
    """

    prompts, items = judge_prompts(), []
    for q, a in zip(questions, answers):
        for t in range(min(2, len(q["turns"]))):
            if any(x is None for x in a["turns"][:t + 1]):
                continue
            name, msgs = single_messages(prompts, q, a["turns"], t)
            items.append({"key": f"single:{q['question_id']}:{t + 1}", "messages": msgs,
                          "question_id": q["question_id"], "category": q.get("category", ""), "turn": t + 1,
                          "prompt": name})
    recs = ask(backend, items, max_tokens=max_tokens, out=out, chunk_size=chunk_size)
    for r in recs:
        r["score"] = parse_rating(r["text"])
        r["status"] = _status(r["text"], r["score"])
    return recs


def judge_pairwise(questions: list[dict], answers_a: list[dict], answers_b: list[dict], backend, *,
                   prompt: str = "eval_pairwise", max_tokens: int = 1024, out=None, chunk_size: int = 16) -> list[dict]:
    """Cherry/AlpaGasus pairwise comparison of model A against model B on each question's first turn.

    Each question is judged twice, A shown first and B shown first; the prompt (a YAML prompt with slots
    instruction, response_1, response_2 and the ``pair`` parser) scores both answers on its ``scale``.
    Returns one record per question: scores of A and B in both orders, ``outcome`` of A (+1 win, 0 tie,
    -1 lose, NaN when any of the four scores is unreadable) and status. Only turn 1 is compared: the
    two models' turn-2 answers follow different turn-1 answers, so they do not answer the same prompt.
    """
    p = load_prompt(prompt)
    scale = p.scale or (1, 10)
    items, kept = [], []
    for q, a, b in zip(questions, answers_a, answers_b):
        if a["turns"][0] is None or b["turns"][0] is None:
            continue
        kept.append((q, a["turns"][0], b["turns"][0]))
        for order, (r1, r2) in (("ab", (a["turns"][0], b["turns"][0])), ("ba", (b["turns"][0], a["turns"][0]))):
            items.append({"key": f"pair:{q['question_id']}:{order}:{p.identity()}", "question_id": q["question_id"],
                          "order": order, "messages": p.render(instruction=q["turns"][0], response_1=r1, response_2=r2)})
    recs = ask(backend, items, max_tokens=max_tokens, out=out, chunk_size=chunk_size)
    s = np.array([parse_pair_scores(r["text"], low=scale[0], high=scale[1]) for r in recs],
                 dtype=np.float64).reshape(-1, 2, 2)          # (N, order ab|ba, shown 1st|2nd)
    a_first = s[:, 0, 0] - s[:, 0, 1]                        # A - B, A shown first
    a_second = s[:, 1, 1] - s[:, 1, 0]                       # A - B, B shown first
    outcome = pairwise_outcomes(a_first, a_second)
    out_recs = []
    for i, (q, _, _) in enumerate(kept):
        texts = [recs[2 * i]["text"], recs[2 * i + 1]["text"]]
        status = "judge_failed" if None in texts else ("ok" if not math.isnan(outcome[i]) else "unparseable")
        out_recs.append({"question_id": q["question_id"], "category": q.get("category", ""),
                         "a_first": [s[i, 0, 0], s[i, 0, 1]], "b_first": [s[i, 1, 1], s[i, 1, 0]],
                         "outcome": float(outcome[i]), "status": status, "texts": texts})
    return out_recs


def transcript(question: dict, answers: list, turn: int) -> str:
    """The question of ``turn`` (0-based) with the earlier turns of the conversation written out."""
    if turn == 0:
        return question["turns"][0]
    lines = [f"### {m['role'].capitalize()}:\n{m['content']}" for m in conversation(question, answers, turn, None)]
    return "\n\n".join(lines)


def judge_accuracy(questions: list[dict], answers: list[dict], backend, *, prompt: str = "eval_accuracy",
                   max_tokens: int = 256, out=None, chunk_size: int = 16) -> list[dict]:
    """CLUES-style accuracy: 1 if the answer is accurate and matches the reference answer, else 0.

    Judges every answered turn that has a reference (``question["reference"][turn]``). Returns one record
    per judged turn with ``score`` in {0, 1} or NaN (the reply was not a 0 or a 1) and status.
    """
    p = load_prompt(prompt)
    items = []
    for q, a in zip(questions, answers):
        for t, ref in enumerate(q.get("reference") or []):
            if t >= len(q["turns"]) or any(x is None for x in a["turns"][:t + 1]) or not ref:
                continue
            items.append({"key": f"acc:{q['question_id']}:{t + 1}:{p.identity()}", "question_id": q["question_id"],
                          "category": q.get("category", ""), "turn": t + 1,
                          "messages": p.render(instruction=transcript(q, a["turns"], t), reference=ref,
                                               response=a["turns"][t])})
    recs = ask(backend, items, max_tokens=max_tokens, out=out, chunk_size=chunk_size)
    for r in recs:
        v = parse_first_number(r["text"], p.scale)
        r["score"] = v if v in (0.0, 1.0) else math.nan
        r["status"] = _status(r["text"], r["score"])
    return recs
