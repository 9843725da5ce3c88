"""``evaluate``: generate a model's answers to a benchmark and judge them, writing ``report.json``.

Output folder layout (every file resumable: a rerun with the same settings only does what is missing):
    answers/candidate.jsonl, answers/baseline.jsonl      generated answers (one record per question)
    judgments/single-<label>.jsonl                       MT-Bench single grading replies
    judgments/pairwise.jsonl, judgments/accuracy-<label>.jsonl
    report.json                                          scores, CIs, counts, judge stats, manifest
"""

from __future__ import annotations

import json
import logging
import os
from pathlib import Path

import numpy as np

from thresher.config import build, merged
from thresher.errors import ConfigError, DataError
from thresher.evaluation.answers import MTBENCH_TEMPERATURES, generate_answers
from thresher.evaluation.config import EvalConfig
from thresher.evaluation.judging import grade_single, judge_accuracy, judge_pairwise
from thresher.evaluation.mtbench import load_mtbench
from thresher.evaluation.stats import summarize, summarize_pairwise
from thresher.io import atomic_path
from thresher.manifest import base_manifest
from thresher.models.hf import HFCausalLM
from thresher.models.judges import JudgeConfig, make_judge
from thresher.models.local_judge import LocalChat
from thresher.outputs import claim_output_dir, read_marker, refuse_special, write_marker

log = logging.getLogger(__name__)


# ------------------------------------------------------------------------------------ questions
def load_questions(path) -> list[dict]:
    """Questions from a JSON-lines file: each line has ``turns`` (a list of user messages), or
    ``instruction`` (+ optional ``input``), ``question`` or ``prompt``; optional ``question_id`` (or
    ``id``; default the line number), ``category`` and ``reference`` (a string or one per turn)."""
    path = Path(path)
    if not path.is_file():
        raise ConfigError(f"The 'bench' parameter must be 'mt-bench' or a JSON-lines file of questions. "
                          f"Got {str(path)!r}, which is not a file.")
    out = []
    for n, line in enumerate(path.read_text(encoding="utf-8").splitlines(), 1):
        if not line.strip():
            continue
        try:
            r = json.loads(line)
        except json.JSONDecodeError as e:
            raise DataError(path, f"not valid JSON: {e}", where=f"line {n}") from None
        if isinstance(r.get("turns"), list) and r["turns"] and all(isinstance(t, str) for t in r["turns"]):
            turns = list(r["turns"])
        elif isinstance(r.get("instruction"), str):
            turns = [r["instruction"] + (f"\n\n{r['input']}" if r.get("input") else "")]
        elif isinstance(r.get("question") or r.get("prompt"), str):
            turns = [r.get("question") or r.get("prompt")]
        else:
            raise DataError(path, "the record has no question.", where=f"line {n}",
                            expected="'turns' (a list of strings), 'instruction', 'question' or 'prompt'")
        rec = {"question_id": r.get("question_id", r.get("id", n)), "category": str(r.get("category", "")),
               "turns": turns}
        ref = r.get("reference", r.get("output"))
        if ref is not None:
            rec["reference"] = [ref] if isinstance(ref, str) else list(ref)
        out.append(rec)
    ids = [str(q["question_id"]) for q in out]
    if len(set(ids)) != len(ids):
        raise DataError(path, "question ids are not unique.", hint="Give each line a distinct 'question_id'.")
    return out


def pick_questions(questions: list[dict], subset) -> list[dict]:
    """All questions (None), the first ``subset`` (an int), or those whose ids are listed."""
    if subset is None:
        return questions
    if isinstance(subset, int) and not isinstance(subset, bool):
        if subset < 1:
            raise ConfigError(f"The 'questions' parameter of evaluate must be an int >= 1 or a list of ids. Got {subset}.")
        return questions[:subset]
    want = [str(x) for x in subset]
    by_id = {str(q["question_id"]): q for q in questions}
    missing = [x for x in want if x not in by_id]
    if missing:
        raise ConfigError(f"The 'questions' parameter of evaluate names unknown question id(s) "
                          f"{', '.join(missing[:5])}. Known ids: {', '.join(list(by_id)[:10])}, ...")
    return [by_id[x] for x in want]


# ------------------------------------------------------------------------------------ backends
class _Models:
    """Local models of one evaluation, loaded once each and shared by candidate, baseline and judge."""

    def __init__(self, device: str, dtype: str, max_batch_size: int, max_batch_tokens: int | None):
        self.device, self.dtype, self.max_batch_size = device, dtype, max_batch_size
        self.max_batch_tokens, self.model, self._lms = max_batch_tokens, "bundled", {}

    def lm(self, spec: str | None = None):
        spec = str(spec or self.model)
        if spec not in self._lms:
            self._lms[spec] = HFCausalLM(spec, device=self.device, dtype=self.dtype, max_batch_size=self.max_batch_size,
                                         max_batch_tokens=self.max_batch_tokens)
        return self._lms[spec]

    def backend(self, spec):
        """A chat backend from a model path/id/"bundled", a JudgeConfig dict, or a ready backend."""
        if hasattr(spec, "chat") and hasattr(spec, "identity"):
            return spec
        if isinstance(spec, (str, os.PathLike)):
            return LocalChat(self.lm(str(spec)), max_batch_size=self.max_batch_size,
                             max_batch_tokens=self.max_batch_tokens)
        if not isinstance(spec, dict):
            raise ConfigError(f"A model must be a path, a model id, 'bundled' or a judge dict such as "
                              f"{{'kind': 'api', 'model': 'gpt-4o-mini'}}. Got {spec!r}.")
        cfg = build(JudgeConfig, spec, "judge")
        if cfg.kind == "local":
            return LocalChat(self.lm(cfg.model or "bundled"), max_batch_size=self.max_batch_size,
                             max_batch_tokens=self.max_batch_tokens)
        return make_judge(spec, self)


# ------------------------------------------------------------------------------------ report parts
def _single_report(recs: list[dict], n_answers_missing: int, **boot) -> dict:
    scores = np.array([r["score"] for r in recs], dtype=np.float64)
    cats = np.array([r["category"] for r in recs], dtype=object)
    turns = np.array([r["turn"] for r in recs], dtype=np.int64)
    statuses = [r["status"] for r in recs]
    return {"overall": summarize(scores, **boot),
            "by_category": {c: summarize(scores[cats == c], **boot) for c in sorted(set(cats))},
            "by_turn": {str(t): summarize(scores[turns == t], **boot) for t in sorted(set(turns.tolist()))},
            "counts": {"graded": len(recs), "unparseable": statuses.count("unparseable"),
                       "judge_failed": statuses.count("judge_failed"), "no_answer": n_answers_missing}}


def _missing_turns(questions, answers, max_turns: int | None = None) -> int:
    return sum(a["turns"][t] is None for q, a in zip(questions, answers)
               for t in range(min(len(q["turns"]), max_turns or len(q["turns"]))))


def _plain(x):
    """JSON-ready copy: numpy scalars to Python, NaN to null (strict JSON has no NaN)."""
    if isinstance(x, dict):
        return {str(k): _plain(v) for k, v in x.items()}
    if isinstance(x, (list, tuple)):
        return [_plain(v) for v in x]
    if isinstance(x, np.generic):
        x = x.item()
    if isinstance(x, float) and x != x:
        return None
    return x


def _write_json(path: Path, obj) -> None:
    """Write ``obj`` as strict JSON, atomically (a temporary file replaced in one step)."""
    with atomic_path(path) as tmp:
        tmp.write_text(json.dumps(_plain(obj), indent=2, ensure_ascii=False, allow_nan=False), encoding="utf-8")


# ------------------------------------------------------------------------------------ evaluate
def _claim_eval_dir(out: Path, inputs) -> None:
    """Make ``out`` an evaluation folder before any work (engine.outputs): a new or empty folder, or an
    earlier evaluation (resumed); never a user's folder, a model or the questions file."""
    refuse_special(out, "--out", inputs)
    legacy = (out / "report.json").is_file() or (out / "answers" / "candidate.jsonl").is_file()
    if read_marker(out) is None and legacy:
        write_marker(out, "eval")          # an evaluation written before output folders were marked
    claim_output_dir(out, "eval", inputs=inputs)


def evaluate(model, *, out, against=None, judge: dict | None = None, config: EvalConfig | None = None,
             argv: list[str] | None = None, **overrides) -> dict:
    """Generate answers with ``model`` (and ``against``) and judge them; returns and writes the report.

    ``model``/``against``: a model folder or id, "bundled", a judge-style dict for an API model
    (``{"kind": "api", "model": ...}``) or a chat backend. ``judge``: ``JudgeConfig`` fields or a chat
    backend (default: the bundled model, locally; a local judge naming the candidate's model shares its
    weights). The settings are an ``EvalConfig``: ``config`` (default: its defaults) with ``overrides``,
    keyword arguments named like its fields, applied (an unknown name is a ConfigError):
    ``bench``: "mt-bench" or a JSON-lines file of questions (``load_questions``). ``questions``: None
    (all), an int (the first n) or a list of question ids. ``temperature``: a float, a dict category ->
    float, or "mt-bench" (MT-Bench's per-category values). Judging: ``single`` MT-Bench 1-10 grading of
    both turns (mt-bench only); ``pairwise`` (default: when ``against`` is given) win/tie/lose with
    position swapping on turn 1; ``accuracy`` 0/1 against the reference answers. Scores carry seeded
    percentile-bootstrap CIs (``n_resamples``, ``level``) and the counts of unparseable judge replies,
    failed judge calls and missing answers.
    """

    cfg = merged(EvalConfig, config, overrides, "evaluate")
    out, bench, judge_max_tokens = Path(out), cfg.bench, cfg.judge_max_tokens
    temperature = dict(MTBENCH_TEMPERATURES) if cfg.temperature == "mt-bench" else cfg.temperature
    pairwise = against is not None if cfg.pairwise is None else cfg.pairwise
    if pairwise and against is None:
        raise ConfigError("Pairwise evaluation needs a baseline model: set 'against' (--against).")
    is_mtbench = bench == "mt-bench"
    _claim_eval_dir(out, [x for x in (model, against, judge.get("model") if isinstance(judge, dict) else None,
                                      None if is_mtbench else bench) if isinstance(x, (str, os.PathLike))])
    if cfg.single and not is_mtbench:
        log.info("single grading uses MT-Bench's judge prompts; applied to %s as well", bench)
    qs = pick_questions(load_mtbench(cfg.reference_model) if is_mtbench else load_questions(bench), cfg.questions)
    boot = {"n_resamples": cfg.n_resamples, "level": cfg.level, "seed": cfg.seed}
    models = _Models(cfg.device, cfg.dtype, cfg.max_batch_size, cfg.max_batch_tokens)
    judge = {"kind": "local", "model": "bundled"} if judge is None else judge
    judge_backend = models.backend(judge)
    labels = {"candidate": model} | ({"baseline": against} if against is not None else {})
    gen = {"max_new_tokens": cfg.max_new_tokens, "temperature": temperature, "seed": cfg.seed, "system": cfg.system,
           "chunk_size": cfg.chunk_size}
    report: dict = {"bench": bench, "n_questions": len(qs), "question_ids": [q["question_id"] for q in qs],
                    "models": {}, "generation": {k: v for k, v in gen.items() if k != "chunk_size"}}
    answers = {}
    for label, spec in labels.items():
        backend = models.backend(spec)
        answers[label] = generate_answers(qs, backend, out=out / "answers" / f"{label}.jsonl", **gen)
        report["models"][label] = {"identity": backend.identity(), "answers": str(out / "answers" / f"{label}.jsonl"),
                                   "missing_answers": _missing_turns(qs, answers[label]), "backend_stats": backend.stats()}
    jk = {"backend": judge_backend, "chunk_size": cfg.chunk_size}
    if cfg.single:
        report["single"] = {}
        for label in labels:
            recs = grade_single(qs, answers[label], max_tokens=judge_max_tokens,
                                out=out / "judgments" / f"single-{label}.jsonl", **jk)
            report["single"][label] = _single_report(recs, _missing_turns(qs, answers[label], 2), **boot)
    if pairwise:
        recs = judge_pairwise(qs, answers["candidate"], answers["baseline"], prompt=cfg.pairwise_prompt,
                              max_tokens=judge_max_tokens, out=out / "judgments" / "pairwise.jsonl", **jk)
        summary = summarize_pairwise([r["outcome"] for r in recs], **boot)
        summary["judge_failed"] = sum(r["status"] == "judge_failed" for r in recs)
        summary["unparseable"] -= summary["judge_failed"]
        summary["no_answer"] = len(qs) - len(recs)
        summary["prompt"] = cfg.pairwise_prompt
        report["pairwise"] = summary
    if cfg.accuracy:
        report["accuracy"] = {}
        for label in labels:
            recs = judge_accuracy(qs, answers[label], prompt=cfg.accuracy_prompt, max_tokens=min(judge_max_tokens, 256),
                                  out=out / "judgments" / f"accuracy-{label}.jsonl", **jk)
            s = summarize([r["score"] for r in recs], **boot)
            s["judge_failed"] = sum(r["status"] == "judge_failed" for r in recs)
            s["unparseable"] -= s["judge_failed"]
            s["judged"], s["prompt"] = len(recs), cfg.accuracy_prompt
            report["accuracy"][label] = s
    report["judge"] = {"identity": judge_backend.identity(), "config": judge if isinstance(judge, dict) else None,
                       "max_tokens": judge_max_tokens, "stats": judge_backend.stats()}
    report["bootstrap"] = boot
    report["manifest"] = base_manifest(argv)
    report = _plain(report)
    _write_json(out / "report.json", report)
    return report


__all__ = ["evaluate", "load_questions", "pick_questions"]

