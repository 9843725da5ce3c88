"""Adam preconditioning and what a training checkpoint provides: moments, learning rate, adapter.

Adam preconditioning (METHODS.md 0.5, LESS ``obtain_gradients_with_adam``, copied by CLUES):
  m' = b1 m + (1 - b1) g;  v' = b2 v + (1 - b2) g^2;  Gamma(g) = m' / sqrt(v' + eps)
no bias correction, eps inside the square root, b1 0.9, b2 0.999, eps 1e-8.

A checkpoint directory in the HF Trainer layout holds ``optimizer.pt`` (torch AdamW state_dict, params
numbered by position across param_groups), ``trainer_state.json`` (log_history) and the PEFT adapter
(``adapter_model.safetensors``). Trainer builds its groups as [weight-decay params, no-decay params],
each in ``model.named_parameters()`` order over trainable params (transformers Trainer.create_optimizer);
we rebuild that order to name the moments. A checkpoint of a thresher run is read only when complete
(``thresher.models.checkpoints``: its completion marker and every file it lists); one of another trainer
has no marker and is read as it is.
"""

from __future__ import annotations

import json
import re
from pathlib import Path

import numpy as np
import torch

from thresher.errors import ConfigError
from thresher.gradients.persample import ParamSelection
from thresher.models.checkpoints import require_complete

AdamState = dict[str, tuple[torch.Tensor, torch.Tensor]]   # param name -> (exp_avg, exp_avg_sq)
_NO_DECAY = [r"bias", r"layernorm", r"rmsnorm", r"(?:^|\.)norm(?:$|\.)", r"_norm(?:$|\.)"]


def adam_precondition(g: torch.Tensor, exp_avg: torch.Tensor, exp_avg_sq: torch.Tensor,
                      beta1: float = 0.9, beta2: float = 0.999, eps: float = 1e-8) -> torch.Tensor:
    """(B, P) gradients and (P,) moments -> (B, P) float32 m'/sqrt(v' + eps) (LESS formula)."""
    g = g.float()
    m = beta1 * exp_avg.float() + (1 - beta1) * g
    v = beta2 * exp_avg_sq.float() + (1 - beta2) * g * g
    return m / torch.sqrt(v + eps)


def flat_moments(state: AdamState, sel: ParamSelection) -> tuple[torch.Tensor, torch.Tensor]:
    """Concatenate the moments of the selected parameters in selection order -> two (P,) tensors."""
    missing = [n for n in sel.names if n not in state]
    if missing:
        raise ConfigError(f"The optimizer state has no moments for {len(missing)} selected parameters "
                          f"(first: {missing[0]!r}). Use the checkpoint of the same adapter and notation.")
    for n, shape in zip(sel.names, sel.shapes):
        if tuple(state[n][0].shape) != shape:
            raise ConfigError(f"Optimizer moment of {n!r} has shape {tuple(state[n][0].shape)}, "
                              f"the parameter has {shape}.")
    m = torch.cat([state[n][0].reshape(-1).float() for n in sel.names])
    v = torch.cat([state[n][1].reshape(-1).float() for n in sel.names])
    return m, v


def trainer_param_order(model: torch.nn.Module) -> list[str]:
    """Trainable parameter names in the order HF Trainer numbers them in its optimizer."""
    no_decay = [re.compile(p) for p in _NO_DECAY]
    norm_mods = {n for n, m in model.named_modules() if isinstance(m, torch.nn.LayerNorm)}
    trainable = [n for n, p in model.named_parameters() if p.requires_grad]

    def decays(n):
        return not any(p.search(n.lower()) for p in no_decay) and n.rsplit(".", 1)[0] not in norm_mods
    return [n for n in trainable if decays(n)] + [n for n in trainable if not decays(n)]


def load_optimizer_state(checkpoint_dir: str | Path, model: torch.nn.Module) -> AdamState:
    """Name the Adam moments in ``checkpoint_dir/optimizer.pt`` after ``model``'s trainable params."""
    require_complete(checkpoint_dir)
    path = Path(checkpoint_dir) / "optimizer.pt"
    if not path.is_file():
        raise ConfigError(f"{path} does not exist. Point at a Trainer checkpoint directory "
                          "(checkpoint-N with optimizer.pt, trainer_state.json and the adapter).")
    sd = torch.load(path, map_location="cpu", weights_only=True)
    ids = [i for g in sd["param_groups"] for i in g["params"]]
    names = trainer_param_order(model)
    if len(ids) != len(names):
        raise ConfigError(f"{path} holds {len(ids)} parameters but the model has {len(names)} trainable ones. "
                          "Load the adapter of the same training run first.")
    return {n: (sd["state"][i]["exp_avg"], sd["state"][i]["exp_avg_sq"]) for n, i in zip(names, ids)}


def load_adapter(checkpoint_dir: str | Path, model: torch.nn.Module) -> None:
    """Load the PEFT adapter weights of a checkpoint into ``model`` (a PeftModel) in place."""
    from peft import set_peft_model_state_dict
    from safetensors.torch import load_file

    require_complete(checkpoint_dir)
    path = Path(checkpoint_dir) / "adapter_model.safetensors"
    if not path.is_file():
        raise ConfigError(f"{path} does not exist; the checkpoint has no PEFT adapter.")
    res = set_peft_model_state_dict(model, load_file(str(path)))
    if getattr(res, "unexpected_keys", None):
        raise ConfigError(f"{path} has weights the model does not: {res.unexpected_keys[:3]}.")


def checkpoint_learning_rate(trainer_state: str | Path | dict, window_epochs: float = 1.0) -> float:
    """Mean learning rate over the log entries of the last ``window_epochs`` epochs before the checkpoint.

    CLUES's eta_c: mean of ``learning_rate`` over log_history entries with epoch > last epoch - 1. Eval
    entries carry no ``learning_rate`` and are skipped (the reference raised KeyError on them).
    """
    state = trainer_state
    if not isinstance(state, dict):
        path = Path(state)
        require_complete(path if path.is_dir() else path.parent)
        path = path / "trainer_state.json" if path.is_dir() else path
        state = json.loads(path.read_text())
    logs = [e for e in state.get("log_history", []) if "learning_rate" in e and "epoch" in e]
    if not logs:
        raise ConfigError("trainer_state.json has no log entry with a learning_rate; "
                          "train with logging_steps small enough to log inside every checkpoint window.")
    epochs = np.array([e["epoch"] for e in logs], dtype=float)
    last = float(state.get("epoch", epochs.max()))
    keep = (epochs > last - window_epochs) & (epochs <= last + 1e-9)      # window (last - w, last]
    if not keep.any():
        raise ConfigError(f"No learning_rate was logged in the last {window_epochs} epoch(s) before epoch {last}.")
    return float(np.mean([e["learning_rate"] for e, k in zip(logs, keep) if k]))
