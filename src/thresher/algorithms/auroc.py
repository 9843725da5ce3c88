"""Ranking quality of a score against binary labels: AUROC by the rank (Mann-Whitney U) formula.

``auroc(scores, positive, higher_is_better)`` is the probability that a random positive row ranks above a random
negative row in the score's own direction, ties counting 1/2: 1.0 = every positive above every negative, 0.5 =
chance, 0.0 = every positive below. A NaN score ranks below every number (the worst place in either direction).
"""

from __future__ import annotations

import numpy as np


def oriented(scores, higher_is_better: bool) -> np.ndarray:
    """(N,) float64: ``scores`` turned so that higher is better, NaN -> -inf (worst)."""
    s = np.asarray(scores, dtype=np.float64)
    s = s if higher_is_better else -s
    return np.where(np.isnan(s), -np.inf, s)


def average_ranks(values) -> np.ndarray:
    """(N,) float64 ranks 1..N of ``values`` (no NaN), tied values sharing the mean of their ranks."""
    _, inverse, counts = np.unique(np.asarray(values), return_inverse=True, return_counts=True)
    last = np.cumsum(counts)                       # the rank of each distinct value's last copy
    return (last - (counts - 1) / 2.0)[inverse.reshape(-1)]


def auroc(scores, positive, higher_is_better: bool = True) -> float:
    """AUROC of ``positive`` (N,) bool rows ranking above the others by ``scores`` (N,) in the given direction;
    NaN when either group is empty."""
    pos = np.asarray(positive, dtype=bool)
    n_pos, n_neg = int(pos.sum()), int((~pos).sum())
    if n_pos == 0 or n_neg == 0:
        return float("nan")
    ranks = average_ranks(oriented(scores, higher_is_better))
    u = ranks[pos].sum() - n_pos * (n_pos + 1) / 2.0
    return float(u / (n_pos * n_neg))
