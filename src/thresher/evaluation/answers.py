"""Answer generation for multi-turn benchmark questions through any chat backend.

A question is a dict ``{"question_id", "category", "turns": [user message, ...], "reference": [...]?}``
(MT-Bench's shape; ``thresher.evaluation.mtbench.load_questions`` reads it and plain instruction files).
Turn t of every question is generated in one backend call per chunk of questions, conditioned on the
model's OWN earlier answers (MT-Bench's protocol: turn 2 sees the turn-1 answer the model gave).

Answers are saved after every chunk to a JSON-lines file (one record per question, atomic rewrite):
``{"question_id", "category", "settings", "turns": [answer or None, ...], "errors": [...]}``. A rerun
with the same settings skips the turns already answered and retries the failed ones; a rerun with other
settings (another model, max_new_tokens, temperature, seed, system prompt) is refused, not mixed in.
"""

from __future__ import annotations

import logging
import zlib

from thresher.errors import ConfigError
from thresher.evaluation.store import JsonlStore
from thresher.models.chat import ChatRequest

log = logging.getLogger(__name__)

# MT-Bench's sampling temperature per category (FastChat gen_model_answer.py); 0 = greedy.
MTBENCH_TEMPERATURES = {"writing": 0.7, "roleplay": 0.7, "extraction": 0.0, "math": 0.0, "coding": 0.0,
                        "reasoning": 0.0, "stem": 0.1, "humanities": 0.1}


def _temperature(temperature, category: str) -> float:
    if isinstance(temperature, dict):
        return float(temperature.get(category, temperature.get("default", 0.0)))
    return float(temperature)


def _check(max_new_tokens, chunk_size, temperature) -> None:
    for name, v in (("max_new_tokens", max_new_tokens), ("chunk_size", chunk_size)):
        if not isinstance(v, int) or isinstance(v, bool) or v < 1:
            raise ConfigError(f"The '{name}' parameter of generate_answers must be an int >= 1. Got {v!r}.")
    temps = temperature.values() if isinstance(temperature, dict) else [temperature]
    if not all(isinstance(t, (int, float)) and not isinstance(t, bool) and t >= 0 for t in temps):
        raise ConfigError("The 'temperature' parameter of generate_answers must be a float >= 0 or a dict "
                          f"category -> float >= 0 (e.g. MTBENCH_TEMPERATURES). Got {temperature!r}.")


def _seed(seed: int, question: dict) -> int:
    """A per-question seed that does not depend on which other questions are in the run."""
    return (seed * 1_000_003 + zlib.crc32(str(question["question_id"]).encode("utf-8"))) % (1 << 31)


def conversation(question: dict, answers: list, turn: int, system: str | None) -> list[dict]:
    """Chat messages for ``turn`` (0-based): earlier user turns with the model's own answers, then the turn."""
    msgs = [{"role": "system", "content": system}] if system else []
    for j in range(turn):
        msgs += [{"role": "user", "content": question["turns"][j]}, {"role": "assistant", "content": answers[j]}]
    return msgs + [{"role": "user", "content": question["turns"][turn]}]


def generate_answers(questions: list[dict], backend, *, max_new_tokens: int = 1024, temperature=0.0,
                     seed: int = 0, system: str | None = None, out=None, chunk_size: int = 16) -> list[dict]:
    """Answer every turn of every question; returns one record per question, in input order.

    ``backend``: any chat backend (``LocalChat`` over the candidate model, ``OpenAIChat``, ...).
    ``temperature``: one value, or a dict category -> value (``MTBENCH_TEMPERATURES`` reproduces
    MT-Bench); a sampled turn's seed comes from ``seed`` and the question id, so a rerun draws the same.
    ``out``: the JSON-lines file to save to and resume from (None: in memory). ``chunk_size``: questions
    per backend call (the backend batches inside a call); answers are saved after each chunk.
    A failed turn is ``None`` with its error in ``errors``; later turns of that question are not asked.
    """
    _check(max_new_tokens, chunk_size, temperature)
    settings = {"model": backend.identity(), "max_new_tokens": max_new_tokens, "temperature": temperature,
                "seed": seed, "system": system}
    store = JsonlStore(out, lambda r: str(r["question_id"]))
    recs = []
    for q in questions:
        old = store.get(str(q["question_id"]))
        if old is not None and old["settings"] != settings:
            raise ConfigError(f"The answers file {out} holds answers to question {q['question_id']} made with "
                              f"other settings ({old['settings']}) than this run ({settings}). Use another output "
                              "directory, or delete the file to regenerate.")
        recs.append(old or {"question_id": q["question_id"], "category": q.get("category", ""),
                            "settings": settings, "turns": [None] * len(q["turns"]),
                            "errors": [None] * len(q["turns"])})
    for turn in range(max((len(q["turns"]) for q in questions), default=0)):
        todo = [i for i, (q, r) in enumerate(zip(questions, recs)) if turn < len(q["turns"])
                and r["turns"][turn] is None and all(a is not None for a in r["turns"][:turn])]
        for s in range(0, len(todo), chunk_size):
            part = todo[s:s + chunk_size]
            reqs = []
            for i in part:
                t = _temperature(temperature, questions[i].get("category", ""))
                reqs.append(ChatRequest.of(conversation(questions[i], recs[i]["turns"], turn, system),
                                           max_tokens=max_new_tokens, temperature=t,
                                           seed=_seed(seed, questions[i]) if t > 0 else None))
            for i, res in zip(part, backend.chat(reqs)):
                recs[i]["turns"][turn], recs[i]["errors"][turn] = res.text, res.error
            store.put([recs[i] for i in part])
            log.info("answers: turn %d, %d/%d questions", turn + 1, min(s + chunk_size, len(todo)), len(todo))
    return recs
