"""Adapter to EleutherAI's lm-evaluation-harness (optional extra ``lm_eval``) for benchmark tasks
(ARC, HellaSwag, MMLU, TruthfulQA, ...), for users who have the task datasets available.

``lm_eval`` is imported only when this adapter runs. The bundled model is passed to the harness as
its converted float checkpoint (the harness's ``hf`` model cannot load the GGUF file directly).
"""

from __future__ import annotations

from pathlib import Path

from thresher.errors import ConfigError
from thresher.io import write_json
from thresher.models.bundled import converted_model_dir


def _import_lm_eval():
    try:
        import lm_eval
    except ImportError:
        raise ConfigError("The lm-evaluation-harness adapter needs the optional package 'lm_eval'. Install it "
                          "with: pip install 'thresher[harness]' (or pip install lm_eval).") from None
    return lm_eval


def run_lm_eval(model: str, tasks: list[str], *, out=None, limit: int | float | None = None, num_fewshot=None,
                batch_size: int | str = 8, device: str = "cpu", dtype: str = "float32", seed: int = 0) -> dict:
    """Run ``tasks`` of lm-evaluation-harness on ``model`` (a path, a hub id available offline, or
    "bundled"); returns the harness's per-task results and writes them to ``out``/lm_eval.json if given.

    ``limit``: examples per task (an int) or a fraction (a float < 1), for quick runs.
    """
    if not tasks or not all(isinstance(t, str) and t for t in tasks):
        raise ConfigError(f"The 'tasks' parameter of run_lm_eval must be a non-empty list of task names, e.g. "
                          f"['arc_easy']. Got {tasks!r}.")
    lm_eval = _import_lm_eval()
    if model == "bundled":
        model = str(converted_model_dir())
    res = lm_eval.simple_evaluate(model="hf", model_args=f"pretrained={model},dtype={dtype}", tasks=list(tasks),
                                  num_fewshot=num_fewshot, batch_size=batch_size, device=device, limit=limit,
                                  random_seed=seed, numpy_random_seed=seed, torch_random_seed=seed)
    report = {"model": model, "tasks": list(tasks), "limit": limit, "results": res.get("results", {}),
              "versions": res.get("versions", {}), "n_samples": res.get("n-samples", {})}
    if out is not None:
        write_json(Path(out) / "lm_eval.json", report)
    return report
