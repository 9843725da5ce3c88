"""Perplexity baselines (METHODS.md 6.5) and Cherry's pre-experience signal (3.3).

mode="response":    ppl = exp(mean NLL of the response tokens given the rendered prompt) = PPL(A|Q),
                    CLUES's ``ppl_score``. Range [1, inf); lower = the model finds the answer more
                    predictable. Which end to select is a selection choice (lowest, highest, middle band).
mode="instruction": ppl = PPL of the rendered prompt alone (every token after the first scored, as
                    ``labels=input_ids`` does), Cherry's instruction perplexity. With ``pool`` set, also
                    the last-layer hidden states pooled over all prompt tokens (Cherry: mean) as
                    ``embedding``: the input of Cherry's k-means.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from thresher.config import choice, option
from thresher.data import TURNS
from thresher.data.table import Dataset
from thresher.data.spans import OK, build_spans
from thresher.scoring.base import Scorer
from thresher.data.templates import TEMPLATES, render_units
from thresher.scoring.common import row_mean_loss, row_status


@dataclass
class PerplexityParams:
    mode: str = choice("response", "response", "instruction",
                       help="response: perplexity of the response given the prompt; instruction: of the prompt alone")
    template: str = choice("alpaca", *TEMPLATES, help="prompt template the instruction is rendered with")
    max_length: int = option(512, help="tokens per sequence; longer ones are cut")
    turns: str = choice("last", *TURNS, help="which assistant turns of a row are scored")
    pool: str = choice("none", "none", "mean", "last",
                       help="instruction mode: also write the last layer's pooled state as an embedding column")


class PerplexityScorer(Scorer):
    """Perplexity of the response given the prompt, or of the instruction prompt alone."""

    name = "perplexity"
    version = "1"
    Params = PerplexityParams
    main_column = "ppl"
    higher_is_better = None
    produces = {"ppl": "perplexity, [1, inf)", "loss": "mean NLL (nats)", "n_tokens": "tokens scored",
                "status": "ok or why NaN", "embedding": "pooled last-layer state (instruction mode, pool set)"}

    def score_batch(self, rows: Dataset) -> dict[str, np.ndarray]:
        p, lm = self.params, self.ctx.lm().setup()
        units, owner = render_units(rows, p.template, p.turns, lm.tokenizer)
        if p.mode == "instruction":
            return self._instruction(units, owner, len(rows), lm)
        sp = build_spans(lm.tokenizer, units, p.max_length, "offsets", p.template)
        ok = np.array([s == OK for s in sp.status], dtype=bool)
        idx = np.flatnonzero(ok)                 # only scorable units go through the model
        res = lm.token_nll([sp.cond_ids[i] for i in idx], [sp.cond_span[i] for i in idx])
        self.tokens_processed += res.n_tokens
        nll = [np.zeros(0)] * len(units)
        for j, i in enumerate(idx):
            nll[i] = res.nll[j]
        loss, n_tok = row_mean_loss(nll, ok, owner, len(rows))
        return {"ppl": np.exp(loss), "loss": loss, "n_tokens": n_tok,
                "status": row_status(sp.status, owner, len(rows))}

    def _instruction(self, units, owner, n_rows, lm):
        # One unit per row here is the norm (turns="last"); with several, the row keeps its last unit's
        # embedding and a token-weighted mean loss.
        enc = lm.tokenizer([u.prompt for u in units], add_special_tokens=True, truncation=True,
                           max_length=self.params.max_length)["input_ids"]
        spans = [(1, len(x)) for x in enc]
        status = [OK if len(x) >= 2 else "prompt shorter than 2 tokens" for x in enc]
        pool = None if self.params.pool == "none" else self.params.pool
        res = lm.token_nll(enc, spans, pool=pool)
        self.tokens_processed += res.n_tokens
        ok = np.array([s == OK for s in status])
        loss, n_tok = row_mean_loss(res.nll, ok, owner, n_rows)
        out = {"ppl": np.exp(loss), "loss": loss, "n_tokens": n_tok, "status": row_status(status, owner, n_rows)}
        if pool:
            emb = np.zeros((n_rows, res.embeddings.shape[1]), dtype=np.float32)
            emb[owner] = res.embeddings
            out["embedding"] = list(emb)
        return out
