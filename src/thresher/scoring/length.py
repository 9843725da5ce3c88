"""Completion length ("Long is more", METHODS.md 6.7): response length in characters and tokens.

Range [0, inf); higher = longer; the baseline selects the longest. With turns="all" lengths are
summed over the assistant turns. Only the tokenizer is loaded, never the model weights.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from thresher.config import choice
from thresher.data import TURNS, split_turns
from thresher.data.table import Dataset
from thresher.scoring.base import Scorer


@dataclass
class LengthParams:
    turns: str = choice("last", *TURNS, help="which assistant turns of a row are measured")


class LengthScorer(Scorer):
    """Completion length of the response (characters and tokens)."""

    name = "length"
    version = "1"
    Params = LengthParams
    main_column = "resp_tokens"
    higher_is_better = True
    produces = {"resp_tokens": "response tokens (model tokenizer, no special tokens)",
                "resp_chars": "response characters"}

    def model_identity(self, ctx) -> str:
        return ctx.lm().identity() + "|tokenizer-only"

    def score_batch(self, rows: Dataset) -> dict[str, np.ndarray]:
        tok = self.ctx.lm().tokenizer_only()
        texts, owner = [], []
        for r, msgs in enumerate(rows.messages):
            for _, resp in split_turns(msgs, self.params.turns):
                texts.append(resp)
                owner.append(r)
        ids = tok(texts, add_special_tokens=False)["input_ids"]
        owner = np.asarray(owner)
        n_tok = np.bincount(owner, weights=[len(x) for x in ids], minlength=len(rows))
        n_chr = np.bincount(owner, weights=[len(t) for t in texts], minlength=len(rows))
        return {"resp_tokens": n_tok.astype(np.int64), "resp_chars": n_chr.astype(np.int64)}
