"""Selection shared by private clients: one global threshold from trusted anchor scores (CLUES,
METHODS.md 1.2 step 4), and how well a keep mask matches ground-truth quality labels. Arrays in, arrays out;
the recipe adapter ``global_threshold`` at the end (its selection runs in ``thresher.pipeline.clients``).
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from thresher.checks import is_real, param_error
from thresher.config import choice, option
from thresher.errors import ConfigError
from thresher.selection.base import Selector

THRESHOLD_RULES = ("min", "mean", "quantile")


def _check_rule(owner: str, rule, q) -> None:
    """rule one of THRESHOLD_RULES; q a float in [0, 1] for rule 'quantile' (ignored otherwise)."""
    if rule not in THRESHOLD_RULES:
        raise param_error(owner, "rule", "one of " + ", ".join(THRESHOLD_RULES), rule)
    if rule == "quantile" and not (is_real(q) and 0.0 <= q <= 1.0):
        raise param_error(owner, "q", "a float in [0, 1] for rule 'quantile'", q)


def global_threshold(anchor_scores: np.ndarray, rule: str = "min", q: float | None = None) -> float:
    """tau from trusted anchor scores: their minimum, mean, or q-quantile (rule 'quantile', q in [0, 1])."""
    _check_rule("global_threshold", rule, q)
    a = np.asarray(anchor_scores, dtype=np.float64)
    a = a[np.isfinite(a)]
    if a.size == 0:
        raise ConfigError("No finite anchor score: the global threshold needs scored anchor samples.")
    if rule == "quantile":
        return float(np.quantile(a, q))
    return float(a.min() if rule == "min" else a.mean())


def select_above(scores: np.ndarray, tau: float) -> np.ndarray:
    """Boolean keep mask: score >= tau (NaN scores are dropped)."""
    s = np.asarray(scores, dtype=np.float64)
    return np.isfinite(s) & (s >= tau)


def selection_metrics(selected: np.ndarray, is_good: np.ndarray) -> dict[str, float]:
    """Precision, recall and F1 of a keep mask against ground-truth good (clean) labels."""
    sel, good = np.asarray(selected, bool), np.asarray(is_good, bool)
    tp = float((sel & good).sum())
    p = tp / sel.sum() if sel.any() else 0.0
    r = tp / good.sum() if good.any() else 0.0
    return {"precision": p, "recall": r, "f1": 2 * p * r / (p + r) if p + r > 0 else 0.0}


def global_threshold_select(scores: np.ndarray, anchor_scores: np.ndarray, rule: str = "min",
                            q: float | None = None) -> np.ndarray:
    """Indices (int64, dataset order) of the rows scoring >= tau = global_threshold(anchor_scores, rule, q).
    Clients pass the anchor scores pooled over every client, so all of them share one tau."""
    return np.flatnonzero(select_above(scores, global_threshold(anchor_scores, rule, q))).astype(np.int64)


# ---------------------------------------------------------------------------------------------
# recipe adapter (thresher.selection.base)


@dataclass
class GlobalThresholdParams:
    rule: str = choice("min", *THRESHOLD_RULES,
                       help="tau = the min, mean or q-quantile of the anchor scores pooled over every client "
                            "(CLUES leaves it open; min is our choice)")
    q: float | None = option(None, help="the quantile for rule quantile, a float in [0, 1]")

    def check(self, owner: str) -> None:
        _check_rule(owner, self.rule, self.q)


class GlobalThresholdSelector(Selector):
    """CLUES: keep score >= tau, one tau for every client from the pooled anchor scores (min | mean | quantile)."""

    name = "global_threshold"
    Params = GlobalThresholdParams

    def _select(self, scores, main, higher_is_better) -> np.ndarray:
        raise ConfigError("Selector 'global_threshold' needs the anchor set's scores: it runs as the last stage "
                          "of a recipe with an anchor (thresher run ... --anchor FILE), not on a scores table alone.")
