"""Instruction-Following Difficulty (IFD): Cherry LLM and Superfiltering (METHODS.md 3).

For a unit (instruction Q, response A) and a causal LM:
  s(A|Q) = mean NLL of the response tokens given the rendered prompt      (column loss_cond)
  s(A)   = mean NLL of the response tokens given only the direct prefix   (column loss_direct)
  ifd_loss_ratio = s(A|Q) / s(A)               (Cherry; variant "loss_ratio")
  ifd_ppl_ratio  = exp(s(A|Q) - s(A))          (Superfiltering, IterIT; variant "ppl_ratio")
``ifd`` holds the chosen variant. Range (0, inf); typical values 0.5-1.0; below 1 means the
instruction helps predict the response; >= 1 marks a response the instruction does not explain
(Cherry and Superfiltering discard those). Higher IFD below 1 = harder, more valuable sample, so
``higher_is_better`` is True for selection among IFD < 1. The two variants are not rank-equivalent.
Rows that cannot be scored (prompt fills max_length, empty span) get NaN and a ``status`` reason.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from thresher.config import choice, option
from thresher.data import TURNS
from thresher.data.table import Dataset
from thresher.errors import ConfigError
from thresher.data.spans import OK, SPAN_RULES, build_spans
from thresher.scoring.base import Scorer
from thresher.data.templates import TEMPLATES, render_units
from thresher.scoring.common import row_mean_loss, row_status


@dataclass
class IFDParams:
    variant: str = choice("loss_ratio", "loss_ratio", "ppl_ratio",
                          help="the ifd column: s(A|Q)/s(A) (Cherry) or exp(s(A|Q)-s(A)) (Superfiltering)")
    template: str = choice("alpaca", *TEMPLATES, help="prompt template the instruction is rendered with")
    max_length: int = option(512, help="tokens per sequence (prompt + response); longer responses are cut")
    span_rule: str = choice("offsets", *SPAN_RULES, help="how the response tokens are found: tokenizer offsets, "
                                                         "or Cherry's prefix re-tokenisation")
    turns: str = choice("last", *TURNS, help="which assistant turns of a row are scored (all: one unit each)")

    def check(self, owner):
        if self.max_length < 8:
            raise ConfigError(f"The 'max_length' parameter of {owner} must be an int >= 8. Got {self.max_length}.")


class IFDScorer(Scorer):
    """IFD: conditioned / direct response loss (Cherry loss ratio or Superfiltering PPL ratio)."""

    name = "ifd"
    version = "1"
    Params = IFDParams
    main_column = "ifd"
    higher_is_better = True
    produces = {
        "ifd": "the chosen variant; (0, inf), <1 = instruction helps; keep <1, higher = harder",
        "ifd_loss_ratio": "s(A|Q)/s(A)", "ifd_ppl_ratio": "exp(s(A|Q)-s(A))",
        "loss_cond": "s(A|Q), mean NLL (nats) of response tokens given the prompt",
        "loss_direct": "s(A), mean NLL (nats) of response tokens given the direct prefix",
        "ppl_cond": "exp(loss_cond)", "ppl_direct": "exp(loss_direct)",
        "n_resp_tokens": "response tokens scored in the conditioned pass", "status": "ok or why NaN",
    }

    def score_batch(self, rows: Dataset) -> dict[str, np.ndarray]:
        p, lm = self.params, self.ctx.lm().setup()
        units, owner = render_units(rows, p.template, p.turns, lm.tokenizer)
        sp = build_spans(lm.tokenizer, units, p.max_length, p.span_rule, p.template)
        ok = np.array([s == OK for s in sp.status], dtype=bool)
        # Only scorable units go through the model (a prompt that fills max_length would cost a full-length
        # forward pass for a NaN).
        idx = np.flatnonzero(ok)
        res = lm.token_nll([sp.cond_ids[i] for i in idx] + [sp.direct_ids[i] for i in idx],
                           [sp.cond_span[i] for i in idx] + [sp.direct_span[i] for i in idx])
        self.tokens_processed += res.n_tokens
        n, m = len(units), len(idx)
        nll_c, nll_d = [np.zeros(0)] * n, [np.zeros(0)] * n
        for j, i in enumerate(idx):
            nll_c[i], nll_d[i] = res.nll[j], res.nll[m + j]
        cond, n_tok = row_mean_loss(nll_c, ok, owner, len(rows))
        direct, _ = row_mean_loss(nll_d, ok, owner, len(rows))
        with np.errstate(divide="ignore", invalid="ignore"):
            loss_ratio = cond / direct
            ppl_ratio = np.exp(cond - direct)
        return {
            "ifd": loss_ratio if p.variant == "loss_ratio" else ppl_ratio,
            "ifd_loss_ratio": loss_ratio, "ifd_ppl_ratio": ppl_ratio,
            "loss_cond": cond, "loss_direct": direct,
            "ppl_cond": np.exp(cond), "ppl_direct": np.exp(direct),
            "n_resp_tokens": n_tok, "status": row_status(sp.status, owner, len(rows)),
        }
