"""Numbers of an evaluation: bootstrap confidence intervals and the Cherry/AlpaGasus pairwise outcome.

Pairwise protocol (METHODS.md 3.7, Cherry ``review_eval_score.py``): the judge scores both answers 1-10
with model A shown first, then again with B shown first. Per order, d = score(A) - score(B).
  win  if A is higher in both orders, or higher in one and equal in the other;
  tie  if A wins one order and loses the other, or the two are equal in both;
  lose otherwise (lower in both, or lower in one and equal in the other).
That is outcome = sign(sign(d1) + sign(d2)) in {+1 win, 0 tie, -1 lose}. The winning score is
(win - lose) / total + 1 = mean(outcome) + 1, in [0, 2]; 1 means as good as the baseline, higher is better.
"""

from __future__ import annotations

import math

import numpy as np

from thresher.errors import ConfigError


def pairwise_outcomes(a_first: np.ndarray, a_second: np.ndarray) -> np.ndarray:
    """Per-item outcome of model A from its score differences in the two orders.

    ``a_first``: score(A) - score(B) with A shown first, (N,); ``a_second``: the same difference with B
    shown first, (N,). Returns (N,) floats in {+1 win, 0 tie, -1 lose}; NaN where either difference is
    NaN (an unparseable judge answer: counted by the caller, never turned into a tie).
    """
    d1, d2 = np.asarray(a_first, dtype=np.float64), np.asarray(a_second, dtype=np.float64)
    out = np.sign(np.sign(d1) + np.sign(d2))         # NaN propagates through sign
    return out


def winning_score(win: int, lose: int, total: int) -> float:
    """(win - lose) / total + 1, in [0, 2]; 1.0 = par with the baseline. NaN when total is 0."""
    if total < 0 or win < 0 or lose < 0 or win + lose > total:
        raise ConfigError(f"winning_score needs 0 <= win + lose <= total. Got win={win}, lose={lose}, total={total}.")
    return (win - lose) / total + 1.0 if total else math.nan


def bootstrap_ci(values, *, n_resamples: int = 1000, level: float = 0.95, seed: int = 0,
                 offset: float = 0.0) -> tuple[float, float]:
    """Percentile bootstrap confidence interval of the mean of ``values`` (NaNs dropped), plus ``offset``.

    Resamples the items with replacement ``n_resamples`` times (seeded: the same inputs give the same
    interval) and returns the (1-level)/2 and (1+level)/2 quantiles of the resampled means. (nan, nan)
    when no value is left; (m, m) for a single value.
    """
    if not isinstance(n_resamples, (int, np.integer)) or isinstance(n_resamples, bool) or n_resamples < 1:
        raise ConfigError(f"The 'n_resamples' parameter of bootstrap_ci must be an int >= 1. Got {n_resamples!r}.")
    if not 0 < level < 1:
        raise ConfigError(f"The 'level' parameter of bootstrap_ci must be a float in (0, 1). Got {level!r}.")
    x = np.asarray(values, dtype=np.float64).ravel()
    x = x[~np.isnan(x)]
    if x.size == 0:
        return math.nan, math.nan
    rng = np.random.default_rng(seed)
    # Resample in chunks so (chunk, N) index matrices stay small for large N.
    chunk = max(1, min(n_resamples, 2_000_000 // x.size))
    means = np.concatenate([x[rng.integers(0, x.size, size=(min(chunk, n_resamples - s), x.size))].mean(axis=1)
                            for s in range(0, n_resamples, chunk)])     # (n_resamples,)
    lo, hi = np.quantile(means, [(1 - level) / 2, (1 + level) / 2])
    return float(lo) + offset, float(hi) + offset


def summarize(values, *, n_resamples: int = 1000, level: float = 0.95, seed: int = 0) -> dict:
    """Mean, bootstrap CI, number of values used and number of NaNs (unparseable or failed) of a score list."""
    x = np.asarray(values, dtype=np.float64).ravel()
    ok = ~np.isnan(x)
    lo, hi = bootstrap_ci(x, n_resamples=n_resamples, level=level, seed=seed)
    return {"mean": float(x[ok].mean()) if ok.any() else math.nan, "ci_low": lo, "ci_high": hi,
            "n": int(ok.sum()), "unparseable": int((~ok).sum()), "level": level}


def summarize_pairwise(outcomes, *, n_resamples: int = 1000, level: float = 0.95, seed: int = 0) -> dict:
    """Win/tie/lose counts, winning score with its bootstrap CI, and the count of unparseable items."""
    o = np.asarray(outcomes, dtype=np.float64).ravel()
    ok = ~np.isnan(o)
    win, tie, lose = int((o == 1).sum()), int((o == 0).sum()), int((o == -1).sum())
    lo, hi = bootstrap_ci(o, n_resamples=n_resamples, level=level, seed=seed, offset=1.0)
    return {"win": win, "tie": tie, "lose": lose, "total": int(ok.sum()), "unparseable": int((~ok).sum()),
            "winning_score": winning_score(win, lose, int(ok.sum())), "ci_low": lo, "ci_high": hi, "level": level}
