"""AlpaGasus selection over judge ratings (METHODS.md 6.1): score >= threshold, or a fixed budget with
a seeded random tie-break in the boundary score bucket. Arrays in, row indices (int64) out."""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from thresher.checks import check_int, check_real, float_array
from thresher.config import option
from thresher.errors import ConfigError
from thresher.selection.base import Selector, column_values
from thresher.selection.basic import budget, check_budget, ranked


def _check_params(owner: str, threshold, k, ratio, seed) -> None:
    """A threshold, a budget (exactly one of k and ratio), or both; a seed >= 0."""
    if threshold is None and k is None and ratio is None:
        raise ConfigError(f"{owner} needs a 'threshold' (AlpaGasus: 4.5), a budget ('k' or "
                          "'ratio'), or both. Got none.")
    if threshold is not None:
        check_real(owner, "threshold", threshold)
    check_int(owner, "seed", seed, 0)
    if k is not None or ratio is not None:
        check_budget(owner, k, ratio)


def alpagasus_select(scores, *, threshold=None, k=None, ratio=None, seed=0) -> np.ndarray:
    """AlpaGasus selection over judge ratings (METHODS.md 6.1).

    threshold only: rows with score >= threshold, in index order (AlpaGasus: 4.5 on a 0-5 scale,
    about 9k of Alpaca-52k). A budget (``k``, or ``int(ratio * len(scores))``): rows sorted by
    score descending, the budget cut inside the boundary score bucket filled by a seeded random
    draw from that bucket (``np.random.default_rng(seed)``; the fixed-budget variant used by DS2
    and OpenCS, where coarse ratings make the tie-break decide most of the subset); returned in
    rank order, the boundary picks in index order. With both, the threshold filters first and the
    budget caps. NaN scores are never selected. No default threshold: pass 4.5 for AlpaGasus.
    """
    f = "alpagasus_select"
    s = float_array(f, "scores", scores)
    _check_params(f, threshold, k, ratio, seed)
    cand = ~np.isnan(s)
    if threshold is not None:
        cand &= s >= threshold
    if k is None and ratio is None:
        return np.flatnonzero(cand).astype(np.int64)
    order = ranked(s, cand, descending=True)
    want = budget(k, ratio, len(s))
    if want >= len(order):
        return order
    if want == 0:
        return np.empty(0, dtype=np.int64)
    edge = s[order[want - 1]]                                   # boundary bucket's score
    above = order[s[order] > edge]
    bucket = np.flatnonzero(cand & (s == edge))                 # index order
    picks = np.random.default_rng(seed).permutation(bucket)[:want - len(above)]
    return np.concatenate([above, np.sort(picks)]).astype(np.int64)


# ---------------------------------------------------------------------------------------------
# recipe adapter (thresher.selection.base)


@dataclass
class AlpagasusParams:
    threshold: float | None = option(None, help="keep rating >= threshold (AlpaGasus: 4.5 on its 0-5 scale); "
                                                "give a threshold, a budget, or both")
    k: int | None = option(None, help="rows to keep, an int >= 0, best rating first (the fixed-budget variant of "
                                      "DS2 and OpenCS); at most one of k | ratio")
    ratio: float | None = option(None, help="rows to keep as a fraction in (0, 1] of all rows")
    seed: int = option(0, help="int >= 0 seeding the random tie-break inside the boundary rating bucket")

    def check(self, owner: str) -> None:
        _check_params(owner, self.threshold, self.k, self.ratio, self.seed)


class AlpagasusSelector(Selector):
    """AlpaGasus: judge rating >= threshold, or the best k | ratio with a seeded tie-break."""

    name = "alpagasus"
    Params = AlpagasusParams

    def _select(self, scores, main, higher_is_better) -> np.ndarray:
        p = self.params
        return alpagasus_select(column_values(scores, self.main_column(main)), threshold=p.threshold, k=p.k,
                                ratio=p.ratio, seed=p.seed)
