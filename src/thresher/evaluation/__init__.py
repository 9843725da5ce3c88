"""Evaluation of trained models: answer generation for benchmark questions, LLM-judge grading
(MT-Bench single 1-10, Cherry/AlpaGasus pairwise with position swap, CLUES-style 0/1 accuracy) with
bootstrap confidence intervals, and an optional lm-evaluation-harness adapter.

Submodules are imported on use; ``evaluate`` is the entry point the CLI calls.
"""

from __future__ import annotations

from thresher.evaluation.answers import MTBENCH_TEMPERATURES, generate_answers
from thresher.evaluation.config import EvalConfig
from thresher.evaluation.mtbench import load_mtbench, parse_rating
from thresher.evaluation.run import evaluate, load_questions
from thresher.evaluation.stats import (bootstrap_ci, pairwise_outcomes, summarize, summarize_pairwise,
                                       winning_score)

__all__ = ["MTBENCH_TEMPERATURES", "EvalConfig", "bootstrap_ci", "evaluate", "generate_answers", "load_mtbench",
           "load_questions", "pairwise_outcomes", "parse_rating", "summarize", "summarize_pairwise", "winning_score"]
