"""DS2 score curation as a dataset-scope scorer (METHODS.md 2.3-2.4).

Reads the compressed 0-5 ratings (``rating`` of the judge scorer with the ds2 prompt) and the sample
embeddings, and writes the curated scores with the detection report:
  ds2_score      curated 0-5 score (main column; higher = better); NaN where the rating failed
  rare           long-tail score tanh(mean 10-NN cosine distance / 2), [0, 1); higher = rarer
  is_error       the rating was flagged as a rater error by the k-NN vote
  noisy_rate     (times flagged + 1) / (times drawn + 2)
  suggested      the class the neighbours vote for
  confidence     max suggestion share x noisy_rate; flagged scores at or above confidence_prob are replaced
Faithful vs clean: ``duplicate_pool`` (DS2 loads every embedding twice; default false: a unique pool that
excludes each point itself) and ``keep_low_confidence_flagged`` (DS2 keeps flagged samples below the
confidence threshold with their original score; default true, as the paper's selection rule; false drops
them). The estimated transition matrix and class priors are logged and stored in the run's scores only
as per-row columns; see ``thresher.algorithms.ds2_curation`` for the algorithm.
"""

from __future__ import annotations

import json
import logging
from dataclasses import dataclass

import numpy as np

from thresher.algorithms.ds2_curation import ds2_curate
from thresher.config import option
from thresher.data.table import Dataset
from thresher.errors import ConfigError
from thresher.scoring.base import Scorer
from thresher.selection.embeddings import stack_embeddings

log = logging.getLogger(__name__)


@dataclass
class DS2CurationParams:
    rating_column: str = option("rating", help="score column of the compressed 0..num_classes-1 ratings (the judge "
                                               "scorer with the ds2 prompt)")
    embedding_column: str = option("embedding", help="score column of (d,) sample embeddings (DS2: bge-large-en-v1.5)")
    num_classes: int = option(6, help="rating classes 0..num_classes-1, an int >= 1 (DS2: 6)")
    confidence_prob: float = option(0.5, help="a flagged rating is replaced by the neighbours' vote at this "
                                              "confidence or above, in [0, 1] (DS2: 0.5; 0.4 for LLaMA ratings)")
    keep_low_confidence_flagged: bool = option(True, help="true: flagged rows below confidence_prob keep their "
                                                          "rating (DS2); false: they are dropped (NaN)")
    duplicate_pool: bool = option(False, help="true: every embedding twice in the k-NN pool, as DS2 loads it; "
                                              "false: each row once, its neighbours exclude itself")
    k: int = option(10, help="nearest neighbours of the error vote and of the rareness score, an int >= 1 (DS2: 10)")
    hoc_rounds: int = option(50, help="rounds of the HOC consensus estimate, an int >= 1 (DS2: 50)")
    hoc_steps: int = option(1501, help="Adam steps fitting the transition matrix, an int >= 1 (DS2: 1501)")
    detect_epochs: int = option(51, help="epochs of the SimiFeat-rank error vote, an int >= 1 (DS2: 51)")
    sample_size: int = option(50000, help="rows drawn per HOC round and vote epoch, an int >= 1 (DS2: 50,000)")
    seed: int = option(0, help="seed of the draws and of the fit (DS2: 0)")

    def check(self, owner):
        if not 0.0 <= self.confidence_prob <= 1.0:
            raise ConfigError(f"The 'confidence_prob' parameter of {owner} must be a float in [0, 1]. "
                              f"Got {self.confidence_prob}.")
        for name in ("num_classes", "k", "hoc_rounds", "hoc_steps", "detect_epochs", "sample_size"):
            if getattr(self, name) < 1:
                raise ConfigError(f"The {name!r} parameter of {owner} must be an int >= 1. Got {getattr(self, name)}.")


class DS2CurationScorer(Scorer):
    """DS2 curation: rater-noise transition matrix, k-NN error detection, curated score, rareness."""

    name = "ds2_curation"
    version = "1"
    Params = DS2CurationParams
    main_column = "ds2_score"
    higher_is_better = True
    uses = ()
    scope = "dataset"
    produces = {"ds2_score": "curated 0-5 score; higher = better", "rare": "long-tail score [0, 1); higher = rarer",
                "is_error": "rating flagged as a rater error", "noisy_rate": "(flagged+1)/(drawn+2)",
                "suggested": "class voted by the neighbours", "confidence": "curation confidence",
                "ds2_report": "first row only: JSON of the transition matrix T and priors"}

    def required_columns(self):
        return (self.params.rating_column, self.params.embedding_column)

    def score_batch(self, rows: Dataset, inputs=None) -> dict[str, np.ndarray]:
        p = self.params
        labels = inputs[p.rating_column].to_numpy(dtype=np.float64)
        emb = stack_embeddings(inputs[p.embedding_column])
        bad = np.isfinite(labels) & ((labels < 0) | (labels > p.num_classes - 1) | (labels != np.round(labels)))
        if bad.any():
            i = int(np.flatnonzero(bad)[0])
            raise ConfigError(f"ds2_curation needs integer classes 0..{p.num_classes - 1} in column "
                              f"{p.rating_column!r}; row {i} (id {rows.ids[i]}) has {labels[i]}. Rate with the "
                              "ds2 prompt (compressed 0-5 scores), or set rating_column.")
        res = ds2_curate(labels, emb, K=p.num_classes, confidence_prob=p.confidence_prob,
                         keep_low_confidence_flagged=p.keep_low_confidence_flagged,
                         duplicate_pool=p.duplicate_pool, detect_k=p.k, rare_k=p.k, hoc_rounds=p.hoc_rounds,
                         hoc_steps=p.hoc_steps, detect_epochs=p.detect_epochs, hoc_sample_size=p.sample_size,
                         detect_sample_size=p.sample_size, seed=p.seed)
        report = {k: np.asarray(res[k]).round(4).tolist() for k in ("T", "p_clean", "p_org")}
        log.info("ds2 curation: %d of %d ratings flagged, transition matrix diagonal %s",
                 int(np.sum(res["is_error"])), len(labels), np.round(np.diag(res["T"]), 3).tolist())
        col = np.full(len(labels), "", dtype=object)
        if len(col):
            col[0] = json.dumps(report)
        return {"ds2_score": res["curated"], "rare": res["rare"], "is_error": np.asarray(res["is_error"], bool),
                "noisy_rate": res["noisy_rate"], "suggested": res["suggested"], "confidence": res["confidence"],
                "ds2_report": col.astype(str)}
