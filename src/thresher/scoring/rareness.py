"""KNN rareness baseline (METHODS.md 6.6): mean cosine distance from a sample's embedding to its k
nearest other samples in the pool. Range [0, 2]; higher = more isolated (rarer); the baseline keeps
the highest. DS2's history used k = 2 on bge embeddings. Needs the whole pool: a dataset-scope scorer
that reads the ``embedding`` column of an earlier embedding scorer.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from thresher.algorithms.knn import knn
from thresher.config import option
from thresher.data.table import Dataset
from thresher.errors import ConfigError
from thresher.scoring.base import Scorer
from thresher.selection.embeddings import stack_embeddings


@dataclass
class KNNParams:
    k: int = option(2, help="nearest other rows averaged, an int >= 1 (DS2's KNN baseline: 2)")
    column: str = option("embedding", help="score column of (d,) embeddings, one per row (an earlier embedding "
                                           "scorer's)")

    def check(self, owner):
        if self.k < 1:
            raise ConfigError(f"The 'k' parameter of {owner} must be an int >= 1. Got {self.k}.")


class KNNRarenessScorer(Scorer):
    """Mean cosine distance to the k nearest neighbours (KNN rareness baseline)."""

    name = "knn"
    version = "1"
    Params = KNNParams
    main_column = "knn_distance"
    higher_is_better = True
    uses = ()
    scope = "dataset"
    produces = {"knn_distance": "mean cosine distance to the k nearest other samples, [0, 2]; higher = rarer"}

    def required_columns(self):
        return (self.params.column,)

    def score_batch(self, rows: Dataset, inputs=None) -> dict[str, np.ndarray]:
        emb = stack_embeddings(inputs[self.params.column])
        k = min(self.params.k, len(emb) - 1)
        if k < 1:
            return {"knn_distance": np.full(len(emb), np.nan)}
        dist, _ = knn(emb, k=k, exclude_self=True)
        return {"knn_distance": dist.astype(np.float64).mean(axis=1)}
