"""DS2's final selection (``subset_generation.py``; METHODS.md 2.4): score buckets, best first,
with rareness breaking the boundary bucket. Arrays in, indices out; imports only numpy."""

from __future__ import annotations

import numpy as np

from thresher.errors import ConfigError
from thresher.selection.basic import _budget, _check_budget, _float_array


def ds2_bucket_select(scores, rare, *, k=None, ratio=None) -> np.ndarray:
    """Indices (int64) of DS2's subset of ``k`` rows (or ``int(ratio * len(scores))``).

    scores: (N,) curated scores (DS2: classes 0..5, higher = better; any values work), NaN =
    no score, never selected. rare: (N,) long-tail score, higher = rarer (must be finite where
    the score is not NaN). Walks the distinct scores from highest down: a bucket that fits in the
    remaining budget is taken whole (in index order); the first one that does not fit is sorted
    by rare descending (ties: lower index first) and its top remaining rows are taken; then stop.
    Returned in that order (whole buckets, best first, then the boundary rows by rareness).
    The selected set equals the top k of a sort by (score desc, rare desc, index asc).
    With fewer scored rows than the budget, all of them are returned.
    DS2 seeds numpy with 3 here, but the rule itself draws nothing, so there is no seed.
    """
    f = "ds2_bucket_select"
    s = _float_array(f, "scores", scores)
    r = _float_array(f, "rare", rare)
    if len(r) != len(s):
        raise ConfigError(f"The 'scores' and 'rare' parameters of {f} must have the same "
                          f"length. Got {len(s)} and {len(r)}.")
    _check_budget(f, k, ratio)
    cand = ~np.isnan(s)
    bad = np.flatnonzero(cand & ~np.isfinite(r))
    if bad.size:
        raise ConfigError(f"The 'rare' parameter of {f} must be finite on every scored row. "
                          f"Got NaN or inf in {bad.size} row(s) (first indices: "
                          f"{bad[:5].tolist()}).")
    budget = _budget(k, ratio, len(s))
    idx = np.flatnonzero(cand)                               # (C,) ascending
    by_score = idx[np.argsort(-s[idx], kind="stable")]       # score desc, index asc
    if budget >= len(by_score):
        return by_score.astype(np.int64)
    edge = s[by_score[budget]]                               # score of the first row left out
    whole = by_score[s[by_score] > edge]                     # buckets that fit entirely
    bucket = by_score[s[by_score] == edge]                   # boundary bucket, index asc
    ranked = bucket[np.argsort(-r[bucket], kind="stable")]   # rare desc, index asc
    return np.concatenate([whole, ranked[:budget - len(whole)]]).astype(np.int64)
