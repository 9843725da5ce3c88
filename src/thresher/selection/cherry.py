"""Cherry's pre-experience selection (``cherry_seletion/data_by_cluster.py``; METHODS.md 3.3).

K-Means on instruction embeddings, then from each cluster a few members of middling instruction
perplexity, spread evenly over dataset order. The result (~n_clusters * per_cluster rows) is the
set the base model is briefly trained on before IFD scoring.
"""

from __future__ import annotations

import logging

import numpy as np

from thresher.errors import ConfigError
from thresher.selection.basic import _fail, _float_array, _is_int, _is_real

logger = logging.getLogger(__name__)


def _middle_band_picks(members: np.ndarray, ppl: np.ndarray, per_cluster: int,
                       low_pct: float, high_pct: float) -> np.ndarray:
    """One cluster's picks. members: (m,) row indices in dataset order, all with finite ppl."""
    if len(members) < per_cluster:
        return members                                       # small cluster: keep whole
    p = ppl[members]
    lo, hi = np.percentile(p, low_pct), np.percentile(p, high_pct)
    band = members[(p >= lo) & (p <= hi)]                    # still in dataset order
    step = max(1, len(band) // per_cluster)
    return band[::step][:per_cluster]


def cherry_pre_experience(embeddings, ppl, *, n_clusters=100, per_cluster=10, low_pct=25.0,
                          high_pct=75.0, seed=0) -> np.ndarray:
    """Indices (int64, ascending) of Cherry's pre-experience subset.

    embeddings: (N, d) instruction embeddings (Cherry: mean of the last hidden layer over the
    prompt tokens); ppl: (N,) instruction perplexities. Steps:
    1. ``KMeans(n_clusters, random_state=seed, n_init=10)`` on all N rows (n_clusters drops to N,
       with a warning, when N < n_clusters);
    2. per cluster, in cluster-id order, over its members with finite ppl (in dataset order):
       fewer than ``per_cluster`` -> all; else the members whose ppl lies in
       [percentile(low_pct), percentile(high_pct)] of the cluster (inclusive), then every
       ``max(1, len(band) // per_cluster)``-th of that band, the first ``per_cluster``.
    Rows with NaN (or infinite) ppl take part in k-means but are never selected and do not
    enter the percentiles (the reference would get NaN bounds and select nothing there).
    Defaults follow Cherry's script (100 clusters, 10 per cluster, 25-75 band; the Python
    defaults in ``data_by_cluster.py`` are 1-99).
    """
    f = "cherry_pre_experience"
    X = _float_array(f, "embeddings", embeddings, ndim=2)    # (N, d)
    p = _float_array(f, "ppl", ppl)                          # (N,)
    if len(p) != len(X):
        raise ConfigError(f"The 'embeddings' and 'ppl' parameters of {f} must have the same "
                          f"number of rows. Got {len(X)} and {len(p)}.")
    if not np.isfinite(X).all():
        bad = np.flatnonzero(~np.isfinite(X).all(axis=1))
        raise ConfigError(f"The 'embeddings' parameter of {f} must be finite. Got NaN or inf "
                          f"in {bad.size} row(s) (first indices: {bad[:5].tolist()}).")
    for name, v in (("n_clusters", n_clusters), ("per_cluster", per_cluster)):
        if not (_is_int(v) and v >= 1):
            raise _fail(f, name, "an int >= 1", v)
    for name, v in (("low_pct", low_pct), ("high_pct", high_pct)):
        if not (_is_real(v) and 0 <= v <= 100):
            raise _fail(f, name, "a float in [0, 100]", v)
    if low_pct > high_pct:
        raise ConfigError(f"The 'low_pct' parameter of {f} must be <= 'high_pct'. "
                          f"Got low_pct={low_pct!r}, high_pct={high_pct!r}.")
    if not (_is_int(seed) and seed >= 0):
        raise _fail(f, "seed", "an int >= 0", seed)
    if len(X) == 0:
        return np.empty(0, dtype=np.int64)
    if len(X) < n_clusters:
        logger.warning("%s: only %d rows for n_clusters=%d; using n_clusters=%d.",
                       f, len(X), n_clusters, len(X))
        n_clusters = len(X)

    from sklearn.cluster import KMeans                       # lazy: selection imports numpy only

    labels = KMeans(n_clusters=int(n_clusters), random_state=seed, n_init=10).fit(X).labels_
    usable = np.isfinite(p)
    picks = [_middle_band_picks(np.flatnonzero((labels == c) & usable), p, int(per_cluster),
                                float(low_pct), float(high_pct))
             for c in np.unique(labels)]
    return np.sort(np.concatenate(picks)).astype(np.int64, copy=False)
