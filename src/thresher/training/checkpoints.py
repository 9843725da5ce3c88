"""Reading the run's checkpoints: which one to resume from, Adam's moments by name, learning rates.

A checkpoint ``OUT/checkpoint-<step>/`` holds the model (LoRA: ``adapter_model.safetensors``; full
fine-tuning: ``model.safetensors``), ``optimizer.pt`` (AdamW state: per parameter ``step``, ``exp_avg``,
``exp_avg_sq``), ``scheduler.pt``, ``rng_state.pth``, ``trainer_state.json`` (``log_history`` with the
learning rate of every logged step) and thresher's ``optimizer_params.json`` (parameter names in the order
of the optimizer's state ids). The trainer writes ``trainer_state.json`` last, so a checkpoint whose
state file is missing or unreadable was cut off mid-save and is never resumed from.
"""

from __future__ import annotations

import json
import re
from pathlib import Path

from thresher.errors import ConfigError
from thresher.training.hooks import OPTIMIZER_PARAMS

_CKPT = re.compile(r"^checkpoint-(\d+)$")
_WEIGHTS = ("adapter_model.safetensors", "model.safetensors", "model.safetensors.index.json")


def list_checkpoints(out) -> list[Path]:
    """Complete checkpoints of a run directory, oldest step first."""
    out = Path(out)
    if not out.is_dir():
        return []
    found = []
    for d in out.iterdir():
        m = _CKPT.match(d.name)
        if m and d.is_dir() and _complete(d):
            found.append((int(m.group(1)), d))
    return [d for _, d in sorted(found)]


def last_checkpoint(out) -> Path | None:
    ck = list_checkpoints(out)
    return ck[-1] if ck else None


def _complete(d: Path) -> bool:
    try:
        json.loads((d / "trainer_state.json").read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return False
    return (d / "optimizer.pt").is_file() and any((d / w).is_file() for w in _WEIGHTS)


def learning_rates(checkpoint) -> dict[int, float]:
    """step -> learning rate, from the checkpoint's trainer_state.json (entries without one skipped)."""
    state = json.loads((Path(checkpoint) / "trainer_state.json").read_text(encoding="utf-8"))
    return {int(e["step"]): float(e["learning_rate"]) for e in state.get("log_history", [])
            if "learning_rate" in e and "step" in e}


def load_adam_moments(checkpoint) -> dict[str, dict]:
    """{parameter name: {"exp_avg", "exp_avg_sq", "step"}} from a checkpoint's optimizer.pt.

    Names are the model's ``named_parameters()`` names at training time (for LoRA, e.g.
    ``base_model.model.model.layers.0.self_attn.q_proj.lora_A.default.weight``). Only trainable
    parameters are in the optimizer, so these are exactly the LoRA matrices under LoRA.
    """
    import torch

    ck = Path(checkpoint)
    names_file = ck / OPTIMIZER_PARAMS
    if not names_file.exists():
        raise ConfigError(f"{ck}: no {OPTIMIZER_PARAMS}; this checkpoint was not written by thresher's trainer, "
                          "so its optimizer state cannot be matched to parameter names.")
    groups = json.loads(names_file.read_text(encoding="utf-8"))["param_groups"]
    opt = torch.load(ck / "optimizer.pt", map_location="cpu", weights_only=True)
    order = [i for g in opt["param_groups"] for i in g["params"]]       # state ids, group by group
    names = [n for g in groups for n in g]
    if len(order) != len(names):
        raise ConfigError(f"{ck}: optimizer.pt has {len(order)} parameters but {OPTIMIZER_PARAMS} names "
                          f"{len(names)}; the two files come from different runs.")
    out = {}
    for sid, name in zip(order, names):
        st = opt["state"].get(sid)
        if st is not None:                                               # no state before a first step
            out[name] = {k: st[k] for k in ("exp_avg", "exp_avg_sq", "step") if k in st}
    return out
