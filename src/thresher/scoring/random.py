"""Random baseline: a seeded uniform number in [0, 1) per row, derived from (seed, row id).

Deriving it from the id (not the row position) makes it independent of input order, batch size and
sharding; different seeds give independent draws. Top-k on it is uniform sampling without replacement.
"""

from __future__ import annotations

import hashlib
from dataclasses import dataclass

import numpy as np

from thresher.config import option
from thresher.data.table import Dataset
from thresher.scoring.base import Scorer


@dataclass
class RandomParams:
    seed: int = option(0, help="seed of the per-row draws; each seed gives an independent uniform ranking")


class RandomScorer(Scorer):
    """Seeded uniform [0, 1) per row id (random baseline)."""

    name = "random"
    version = "1"
    Params = RandomParams
    main_column = "random"
    higher_is_better = True
    produces = {"random": "uniform [0, 1), a function of (seed, id)"}
    uses = ()

    def score_batch(self, rows: Dataset) -> dict[str, np.ndarray]:
        seed = self.params.seed
        words = [int.from_bytes(hashlib.sha256(f"{seed}\x00{i}".encode()).digest()[:8], "big") for i in rows.ids]
        return {"random": np.array(words, dtype=np.float64) / 2.0**64}
