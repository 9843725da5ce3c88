"""The noise guard's pool-level signals (issue 17): prompt-response relatedness and near-duplicate responses.

Dataset scope: the engine calls it once with the whole pool. Per row (its chosen assistant turn and prompt):
  qa_cosine   method embedding: cosine of the sentence embeddings (bundled all-MiniLM-L6-v2 by default) of the
              prompt and the response, [-1, 1]; typical 0.3-0.8 for an answer, LOW (< 0.15) = unrelated.
              method minhash (no model): cosine of the two texts' content-word count vectors (the stopwords of
              thresher.algorithms.text_signals dropped), [0, 1]; typical 0.1-0.5, low = unrelated (answers
              sharing few words with their question read low too).
  dup_cosine  method embedding: the highest cosine of this row's response embedding to any OTHER row's, [-1, 1],
              exact (blocks of ``block`` rows against the pool, as thresher.algorithms.knn); near-duplicates
              read > 0.95, typical rows 0.3-0.8.
              method minhash: the highest estimated Jaccard similarity of the response's word 5-gram set to any
              other row's (thresher.algorithms.minhash, ``num_perm`` values in ``bands`` LSH bands), [0, 1];
              near-duplicates read > 0.8; a row whose best match is under the banding threshold (~0.4)
              reads 0.0. HIGH = near-duplicate under both methods.
  dup_of      the id of that nearest row ("" when there is none: a pool of one row, no words, no candidate).
``status``: "ok", "no assistant turn", "pool of one row" or "response has no words" (minhash).
"""

from __future__ import annotations

from collections import Counter
from dataclasses import dataclass

import numpy as np

from thresher.algorithms import minhash
from thresher.algorithms.knn import knn
from thresher.algorithms.text_signals import content_words
from thresher.config import choice, option
from thresher.data.table import Dataset
from thresher.errors import ConfigError
from thresher.scoring.base import Scorer
from thresher.scoring.guard_text import GUARD_TURNS, prompts_and_responses


@dataclass
class GuardEmbedParams:
    method: str = choice("embedding", "embedding", "minhash",
                         help="embedding: a sentence embedder's cosines; minhash: no model, word 5-gram MinHash "
                              "Jaccard for duplicates and word-count cosine for qa_cosine")
    model: str | None = option(None, help="method embedding: a sentence-transformers id or path (null: the "
                                          "bundled all-MiniLM-L6-v2)")
    max_length: int = option(256, help="method embedding: tokens per text; longer texts are cut")
    block: int = option(4096, help="method embedding: responses per similarity block (memory ~ block x pool x 4 "
                                   "bytes); does not change the result")
    num_perm: int = option(128, help="method minhash: MinHash values per text (standard error of a Jaccard "
                                     "estimate ~ sqrt(J(1-J)/num_perm))")
    bands: int = option(32, help="method minhash: LSH bands (num_perm must be a multiple); more bands = lower "
                                 "detection threshold (~(1/bands)^(bands/num_perm)), more candidate pairs")
    seed: int = option(0, help="method minhash: seed of the hash family")
    turns: str = choice("last", *GUARD_TURNS, help="which assistant turn of a row is compared")

    def check(self, owner):
        for name in ("max_length", "block", "num_perm", "bands"):
            if getattr(self, name) < 1:
                raise ConfigError(f"The '{name}' parameter of {owner} must be an int >= 1. Got "
                                  f"{getattr(self, name)}.")
        if self.num_perm % self.bands:
            raise ConfigError(f"The 'num_perm' parameter of {owner} must be a multiple of 'bands' ({self.bands}). "
                              f"Got {self.num_perm}.")


def _bag_cosine(a: str, b: str) -> float:
    """Cosine of the content-word (stopwords dropped) count vectors of two texts; NaN when either has none."""
    ca, cb = Counter(content_words(a)), Counter(content_words(b))
    if not ca or not cb:
        return np.nan
    dot = sum(v * cb.get(w, 0) for w, v in ca.items())
    return dot / np.sqrt(sum(v * v for v in ca.values()) * sum(v * v for v in cb.values()))


class GuardEmbedScorer(Scorer):
    """Noise-guard pool signals: prompt-response cosine and nearest duplicate response (embeddings or MinHash)."""

    name = "guard_embed"
    version = "1"
    Params = GuardEmbedParams
    main_column = "dup_cosine"
    higher_is_better = False
    scope = "dataset"
    produces = {
        "qa_cosine": "prompt-response cosine (embedding: [-1, 1]; minhash: content-word-count cosine, [0, 1]); low = "
                     "unrelated",
        "dup_cosine": "max cosine (embedding) or estimated word 5-gram Jaccard (minhash) of the response to any "
                      "other row's; high = near-duplicate",
        "dup_of": "id of that nearest row ('' when none)",
        "status": "ok, or why NaN",
    }

    @property
    def uses(self):
        return ("embedder",) if self.params.method == "embedding" else ()

    def model_identity(self, ctx) -> str:
        if self.params.method == "embedding":
            return ctx.embedder(self.params.model).identity()
        return "minhash"

    def score_batch(self, rows: Dataset, inputs=None) -> dict[str, np.ndarray]:
        q, a, has = prompts_and_responses(rows, self.params.turns)
        qa, best, who = self._embedding(q, a) if self.params.method == "embedding" else self._minhash(q, a)
        n = len(rows)
        ids = np.asarray(rows.ids, dtype=object)
        status = np.full(n, "ok", dtype=object)
        status[np.isnan(best)] = "response has no words"
        if n == 1:
            status[:] = "pool of one row"
        status[~has] = "no assistant turn"
        bad = ~has
        return {"qa_cosine": np.where(bad, np.nan, qa), "dup_cosine": np.where(bad, np.nan, best),
                "dup_of": np.where((who >= 0) & ~bad, ids[np.maximum(who, 0)], "").astype(str),
                "status": status.astype(str)}

    def _embedding(self, q: list[str], a: list[str]):
        p = self.params
        emb = self.ctx.embedder(p.model).setup()
        emb.model.max_seq_length = p.max_length
        vecs = emb.embed(q + a)                                # (2n, d), unit rows
        n = len(a)
        qv, av = vecs[:n], vecs[n:]
        qa = np.einsum("nd,nd->n", qv, av).astype(np.float64)
        if n < 2:
            return qa, np.full(n, np.nan), np.full(n, -1, dtype=np.int64)
        dist, idx = knn(av, k=1, exclude_self=True, chunk_size=p.block)
        return qa, 1.0 - dist[:, 0].astype(np.float64), idx[:, 0].astype(np.int64)

    def _minhash(self, q: list[str], a: list[str]):
        p = self.params
        qa = np.array([_bag_cosine(x, y) for x, y in zip(q, a)], dtype=np.float64)
        sig, has = minhash.signatures(a, num_perm=p.num_perm, seed=p.seed)
        best, who = minhash.nearest(sig, has, bands=p.bands)
        if len(a) < 2:
            best[:] = np.nan
        return qa, best, who
