"""Adam preconditioning of per-sample gradients with a checkpoint's moments (METHODS.md 0.5, LESS
``obtain_gradients_with_adam``, copied by CLUES):

  m' = b1 m + (1 - b1) g;  v' = b2 v + (1 - b2) g^2;  Gamma(g) = m' / sqrt(v' + eps)

no bias correction, eps inside the square root, b1 0.9, b2 0.999, eps 1e-8. The moments are read from a
checkpoint by ``thresher.models.checkpoints.load_adam_moments``.
"""

from __future__ import annotations

import torch

from thresher.errors import ConfigError
from thresher.gradients.persample import ParamSelection

AdamState = dict[str, tuple[torch.Tensor, torch.Tensor]]   # param name -> (exp_avg, exp_avg_sq)


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
