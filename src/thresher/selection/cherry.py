"""Cherry's pre-experience selection (``cherry_seletion/data_by_cluster.py``; METHODS.md 3.3).

K-Means on instruction embeddings, then from each cluster a few members of middling instruction
perplexity, spread evenly over dataset order. The result (~n_clusters * per_cluster rows) is the
set the base model is briefly trained on before IFD scoring.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass

import numpy as np

from thresher.checks import check_int, float_array, is_real, param_error
from thresher.config import option
from thresher.errors import ConfigError
from thresher.selection.base import Selector, column_values
from thresher.selection.embeddings import stack_embeddings

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


def _check_params(owner: str, n_clusters, per_cluster, low_pct, high_pct, seed) -> None:
    for name, v in (("n_clusters", n_clusters), ("per_cluster", per_cluster)):
        check_int(owner, name, v, 1)
    for name, v in (("low_pct", low_pct), ("high_pct", high_pct)):
        if not (is_real(v) and 0 <= v <= 100):
            raise param_error(owner, name, "a float in [0, 100]", v)
    if low_pct > high_pct:
        raise ConfigError(f"The 'low_pct' parameter of {owner} must be <= 'high_pct'. "
                          f"Got low_pct={low_pct!r}, high_pct={high_pct!r}.")
    check_int(owner, "seed", seed, 0)


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
    X = float_array(f, "embeddings", embeddings, ndim=2)    # (N, d)
    p = float_array(f, "ppl", ppl)                          # (N,)
    if len(p) != len(X):
        raise ConfigError(f"The 'embeddings' and 'ppl' parameters of {f} must have the same "
                          f"number of rows. Got {len(X)} and {len(p)}.")
    if not np.isfinite(X).all():
        bad = np.flatnonzero(~np.isfinite(X).all(axis=1))
        raise ConfigError(f"The 'embeddings' parameter of {f} must be finite. Got NaN or inf "
                          f"in {bad.size} row(s) (first indices: {bad[:5].tolist()}).")
    _check_params(f, n_clusters, per_cluster, low_pct, high_pct, seed)
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


# ---------------------------------------------------------------------------------------------
# recipe adapter (thresher.selection.base)


@dataclass
class PreExperienceParams:
    n_clusters: int = option(100, help="k-means clusters, an int >= 1 (Cherry: 100; fewer rows: one per row)")
    per_cluster: int = option(10, help="rows taken per cluster, an int >= 1 (Cherry: 10; about n_clusters * "
                                       "per_cluster rows in all)")
    low_pct: float = option(25.0, help="lower percentile in [0, 100] of a cluster's perplexity band (Cherry's "
                                       "script: 25; data_by_cluster.py's default: 1)")
    high_pct: float = option(75.0, help="upper percentile in [low_pct, 100] of the band (Cherry's script: 75; "
                                        "data_by_cluster.py's default: 99)")
    seed: int = option(0, help="k-means random_state, an int >= 0 (Cherry: 0)")
    embedding: str = option("embedding", help="score column of (d,) instruction embeddings, one per row")

    def check(self, owner: str) -> None:
        _check_params(owner, self.n_clusters, self.per_cluster, self.low_pct, self.high_pct, self.seed)


class PreExperienceSelector(Selector):
    """Cherry's pre-experience set: k-means on embeddings, middling perplexity per cluster."""

    name = "cherry_pre_experience"
    Params = PreExperienceParams
    default_column = "ppl"                  # instruction perplexity (perplexity mode=instruction pool=mean)

    def main_column(self, main: str | None) -> str:
        return self.column or self.default_column       # perplexity, not the stage's main column

    def inputs(self, main=None) -> tuple[str, ...]:
        return (self.main_column(main), self.params.embedding)

    def _select(self, scores, main, higher_is_better) -> np.ndarray:
        p = self.params
        emb = stack_embeddings(scores[p.embedding])                 # (N, d)
        ppl = column_values(scores, self.main_column(main))         # (N,)
        return cherry_pre_experience(emb, ppl, n_clusters=p.n_clusters, per_cluster=p.per_cluster,
                                     low_pct=p.low_pct, high_pct=p.high_pct, seed=p.seed)
