"""Pure score functions over stored gradient features (numpy in, numpy out; no model).

Feature arrays may be np.memmap (GradientStore shards or ``store.to_array()``); functions that take
(N, d) pool features walk them in row chunks so memory stays bounded.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np

from thresher.errors import ConfigError

CHUNK = 4096


def normalize_rows(x: np.ndarray) -> np.ndarray:
    """Rows scaled to unit L2 norm (float32); all-zero rows stay zero."""
    x = np.asarray(x, dtype=np.float32)
    n = np.linalg.norm(x, axis=1, keepdims=True)
    return x / np.where(n > 0, n, 1.0)


def lr_weights(lrs) -> np.ndarray:
    """Checkpoint weights w_c = eta_c / sum(eta) (LESS renormalises so they sum to 1)."""
    w = np.asarray(lrs, dtype=np.float64)
    if w.ndim != 1 or w.size == 0 or (w < 0).any() or w.sum() <= 0:
        raise ConfigError(f"The 'lrs' parameter must be a non-empty list of learning rates >= 0 with a "
                          f"positive sum. Got {list(w)}.")
    return w / w.sum()


def _check_ckpts(name: str, per_ckpt: Sequence, n_ckpt: int):
    if len(per_ckpt) != n_ckpt:
        raise ConfigError(f"The '{name}' parameter must hold one feature array per checkpoint "
                          f"({n_ckpt}). Got {len(per_ckpt)}.")


def less_scores(train: Sequence[np.ndarray], target: Sequence[np.ndarray], task: np.ndarray, lrs,
                per_task: bool = False) -> np.ndarray:
    """LESS (METHODS.md 6.3): S = sum_c w_c cos(train_c, target_c); mean over each task's examples;
    max over tasks.

    train: per checkpoint (N, d) Adam-preconditioned pool features; target: per checkpoint (M, d) SGD
    features of the target examples; task: (M,) task label of each target example.
    Returns (N,) in [-1, 1], higher = more similar to some target task (or (N, n_tasks) if per_task).
    """
    w = lr_weights(lrs)
    _check_ckpts("train", train, len(w)), _check_ckpts("target", target, len(w))
    tasks, t_idx = np.unique(np.asarray(task), return_inverse=True)
    onehot = np.zeros((len(t_idx), len(tasks)), dtype=np.float64)
    onehot[np.arange(len(t_idx)), t_idx] = 1.0 / np.bincount(t_idx)[t_idx]     # (M, T) task means
    # Weighted target directions per checkpoint averaged per task: mean_m cos(x, t_m) = <x/|x|, mean t_m/|t_m|>.
    tgt = [w[c] * normalize_rows(target[c]).astype(np.float64).T @ onehot for c in range(len(w))]  # (d, T)
    n = len(train[0])
    out = np.zeros((n, len(tasks)))
    for s in range(0, n, CHUNK):
        for c in range(len(w)):
            out[s: s + CHUNK] += normalize_rows(train[c][s: s + CHUNK]) @ tgt[c]
    return out if per_task else out.max(axis=1)


def domain_means(val: np.ndarray, domain: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Mean validation gradient per domain: (domains (L,), means (L, d))."""
    doms, idx = np.unique(np.asarray(domain), return_inverse=True)
    sums = np.zeros((len(doms), np.shape(val)[1]))
    np.add.at(sums, idx, np.asarray(val, dtype=np.float64))
    return doms, sums / np.bincount(idx)[:, None]


def clues_domain_weights(domains: Sequence, own: str, other_weight: float = 1.0) -> np.ndarray:
    """w_l = 1 for the client's own domain, ``other_weight`` (CLUES scoring_weight) for the others."""
    return np.where(np.asarray(domains) == own, 1.0, float(other_weight))


def clues_scores(train: Sequence[np.ndarray], val_means: Sequence[np.ndarray], lrs, domain_weights) -> np.ndarray:
    """CLUES (METHODS.md 1.3): score_i = (1/C) sum_c eta_c sum_l w_l <Gamma_i^c, gbar_l^c>.

    train: per checkpoint (N, d) (Adam-preconditioned) features; val_means: per checkpoint (L, d) mean
    SGD gradient of each validation domain; lrs: (C,) raw learning rates (not renormalised: the absolute
    value is compared with the anchor threshold); domain_weights: (L,).
    Returns (N,) real numbers, higher = training on the sample lowers validation loss more (keep).
    """
    lrs = np.asarray(lrs, dtype=np.float64)
    _check_ckpts("train", train, len(lrs)), _check_ckpts("val_means", val_means, len(lrs))
    w = np.asarray(domain_weights, dtype=np.float64)
    direction = [lrs[c] * (w @ np.asarray(val_means[c], dtype=np.float64)) for c in range(len(lrs))]  # (d,)
    n = len(train[0])
    out = np.zeros(n)
    for s in range(0, n, CHUNK):
        for c in range(len(lrs)):
            out[s: s + CHUNK] += np.asarray(train[c][s: s + CHUNK], dtype=np.float64) @ direction[c]
    return out / len(lrs)


def datainf_influence(train: np.ndarray, val: np.ndarray, layers: Sequence[slice] | None = None,
                      lambda_const_param: float = 10.0) -> np.ndarray:
    """DataInf (METHODS.md 6.4): closed-form LoRA influence of each training sample on validation loss.

    Per layer l (a slice of the flattened gradient; None = one layer, as CLUES does):
      lambda_l = mean_i mean(g_il^2) / lambda_const_param
      h_l = (v_l - mean_i[(v_l . g_il / (lambda_l + |g_il|^2)) g_il]) / lambda_l
      I_k = -sum_l h_l . g_kl
    train: (n, P) raw per-sample gradients; val: (m, P) validation gradients or their (P,) mean.
    Returns (n,): more negative = more beneficial (lowers validation loss); large positive = harmful.
    """
    g = np.asarray(train, dtype=np.float64)
    v = np.asarray(val, dtype=np.float64)
    v = v.mean(axis=0) if v.ndim == 2 else v
    if g.ndim != 2 or v.shape != (g.shape[1],):
        raise ConfigError(f"DataInf needs train (n, P) and val (m, P) or (P,). Got {g.shape} and {np.shape(val)}.")
    out = np.zeros(len(g))
    for sl in layers or [slice(0, g.shape[1])]:
        gl, vl = g[:, sl], v[sl]
        lam = float((gl ** 2).mean()) / lambda_const_param
        if lam <= 0:
            raise ConfigError("A DataInf layer has all-zero training gradients (a fresh LoRA adapter has B = 0 and "
                              "zero A-gradients); use a warmed-up adapter.")
        c = (gl @ vl) / (lam + (gl ** 2).sum(axis=1))                          # (n,)
        h = (vl - c @ gl / len(gl)) / lam                                     # (P_l,)
        out -= gl @ h
    return out
