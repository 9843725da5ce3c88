"""The noise guard's language-model signals (issue 17): IFD's two passes plus the end-of-turn probability.

Per unit (the row's chosen assistant turn), ONE conditioned and ONE direct pass of the causal LM, exactly the
passes of the ``ifd`` scorer (same templates, spans and truncation; tests/test_guard_signals.py checks parity):
  loss_cond    s(A|Q): mean NLL (nats) of the response tokens given the rendered prompt; [0, inf), typical
               0.5-2.5 on real answers with the bundled 135M model
  loss_direct  s(A): the same given only the template's direct prefix; [0, inf), typical 1-3.5; HIGH = the
               response is not fluent text on its own (scrambled words, junk): the garbled-text cue
  ifd          exp(s(A|Q) - s(A)), Superfiltering's perplexity ratio; (0, inf), typical 0.4-0.95; >= 1 = the
               instruction does not help predict the response (an answer to another question)
  eot_logprob  log-probability (nats, <= 0) that the model ends the assistant turn right after the response,
               read in the conditioned pass: the template's end-of-turn token (the chat template's end marker,
               else the tokenizer's EOS; ``thresher.data.templates.end_of_turn_id``) is appended to the
               conditioned sequence and scored with it (one extra token, no extra pass). Typical -0.5 to -4
               after a finished answer; LOW (-6 and below) = the response looks cut off. NaN when the response
               reaches max_length (a cut made by us must not read as a cut-off response) or the tokenizer has
               no such token; ``status`` says which.
  tail_loss    mean NLL (nats) of the response's last tokens minus that of the tokens before them, read from
               the conditioned pass (no extra work): the last TAIL_SHARE of the response tokens, at least
               TAIL_MIN and at most TAIL_MAX. (-inf, inf), typical -1 to +0.5 on real answers (endings are
               usually easier than openings); HIGH (+1.5 and above) = the response ends in text the model cannot
               predict from what came before (an appended junk tail). NaN when the response has fewer than
               2 * TAIL_MIN tokens. A response cut at max_length is read up to the cut.
  n_resp_tokens  response tokens scored in the conditioned pass
``status``: "ok", the unit's reason when it could not be scored at all (as IFD: "prompt fills max_length",
"empty response span", ...), or "response cut at max_length: no eot_logprob" / "no end-of-turn token: no
eot_logprob" when only eot_logprob is NaN. No threshold is applied here: the verdict (thresher guard) reads them.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from thresher.config import choice, option
from thresher.data.spans import OK, SPAN_RULES, build_spans
from thresher.data.table import Dataset
from thresher.data.templates import TEMPLATES, end_of_turn_id, render_units
from thresher.errors import ConfigError
from thresher.scoring.base import Scorer
from thresher.scoring.common import row_mean_loss, row_status
from thresher.scoring.guard_text import GUARD_TURNS

TAIL_SHARE, TAIL_MIN, TAIL_MAX = 0.25, 4, 64     # tail_loss's window: a quarter of the response, 4-64 tokens
CUT = "response cut at max_length: no eot_logprob"
NO_EOT = "no end-of-turn token: no eot_logprob"


@dataclass
class GuardLMParams:
    template: str = choice("alpaca", *TEMPLATES, help="prompt template the instruction is rendered with (as IFD); "
                                                      "chat: the end-of-turn token is the chat template's end marker")
    max_length: int = option(512, help="tokens per sequence (prompt + response); longer responses are cut and "
                                       "get no eot_logprob")
    span_rule: str = choice("offsets", *SPAN_RULES, help="how the response tokens are found: tokenizer offsets, "
                                                         "or Cherry's prefix re-tokenisation (as IFD)")
    turns: str = choice("last", *GUARD_TURNS, help="which assistant turn of a row is scored")

    def check(self, owner):
        if self.max_length < 8:
            raise ConfigError(f"The 'max_length' parameter of {owner} must be an int >= 8. Got {self.max_length}.")


class GuardLMScorer(Scorer):
    """Noise-guard LM signals: conditioned/direct response loss, IFD and end-of-turn log-probability."""

    name = "guard_lm"
    version = "2"
    Params = GuardLMParams
    main_column = "ifd"
    higher_is_better = False
    produces = {
        "loss_cond": "s(A|Q), mean NLL (nats) of response tokens given the prompt, [0, inf)",
        "loss_direct": "s(A), mean NLL (nats) given the direct prefix, [0, inf); high = not fluent (garbled)",
        "ifd": "exp(loss_cond - loss_direct), (0, inf); >= 1 = the instruction does not help (mismatch)",
        "eot_logprob": "log P(end of turn | prompt, response), nats <= 0; low = looks cut off; NaN if cut by us",
        "tail_loss": "mean NLL of the response's last quarter (4-64 tokens) minus the rest's; high = junk tail",
        "n_resp_tokens": "response tokens scored in the conditioned pass",
        "status": "ok, or why NaN",
    }

    def score_batch(self, rows: Dataset) -> dict[str, np.ndarray]:
        p, lm = self.params, self.ctx.lm().setup()
        units, owner = render_units(rows, p.template, p.turns, lm.tokenizer)
        sp = build_spans(lm.tokenizer, units, p.max_length, p.span_rule, p.template)
        eot = end_of_turn_id(p.template, lm.tokenizer)
        ok = np.array([s == OK for s in sp.status], dtype=bool)
        whole = np.array([end < p.max_length for _, end in sp.cond_span], dtype=bool) & (eot is not None)
        # Only scorable units reach the model; a whole response gets the end-of-turn token appended to its
        # conditioned sequence, scored with the span (the causal mask leaves the response's NLLs unchanged).
        idx = np.flatnonzero(ok)
        cond = [np.append(sp.cond_ids[i], eot) if whole[i] else sp.cond_ids[i] for i in idx]
        cond_span = [(sp.cond_span[i][0], sp.cond_span[i][1] + int(whole[i])) for i in idx]
        res = lm.token_nll(cond + [sp.direct_ids[i] for i in idx], cond_span + [sp.direct_span[i] for i in idx])
        self.tokens_processed += res.n_tokens
        n, m = len(units), len(idx)
        nll_c, nll_d, eot_nll = [np.zeros(0)] * n, [np.zeros(0)] * n, np.full(n, np.nan)
        for j, i in enumerate(idx):
            c = res.nll[j]
            nll_c[i], nll_d[i] = (c[:-1], res.nll[m + j]) if whole[i] else (c, res.nll[m + j])
            if whole[i]:
                eot_nll[i] = c[-1]
        loss_c, n_tok = row_mean_loss(nll_c, ok, owner, len(rows))
        loss_d, _ = row_mean_loss(nll_d, ok, owner, len(rows))
        eot_lp = np.full(len(rows), np.nan)
        eot_lp[owner] = -eot_nll                               # one unit per row (turns last / first)
        tail = np.full(len(rows), np.nan)
        tail[owner] = np.where(ok, tail_contrast(nll_c), np.nan)
        with np.errstate(over="ignore", invalid="ignore"):
            ifd = np.exp(loss_c - loss_d)
        status = row_status(sp.status, owner, len(rows))
        lost = np.zeros(len(rows), dtype=bool)
        lost[owner] = ok & ~whole
        status = np.where((status == OK) & lost, NO_EOT if eot is None else CUT, status)
        return {"loss_cond": loss_c, "loss_direct": loss_d, "ifd": ifd, "eot_logprob": eot_lp,
                "tail_loss": tail, "n_resp_tokens": n_tok, "status": status.astype(str)}


def tail_contrast(nll: list[np.ndarray]) -> np.ndarray:
    """(U,) per unit: mean of the last k of its token NLLs minus the mean of the ones before them, k =
    round(TAIL_SHARE * n) clipped to [TAIL_MIN, TAIL_MAX]; NaN where n < 2 * TAIL_MIN (n: the unit's tokens)."""
    n = np.array([len(x) for x in nll], dtype=np.int64)
    k = np.clip(np.round(TAIL_SHARE * n).astype(np.int64), TAIL_MIN, TAIL_MAX)
    valid = n >= 2 * TAIL_MIN
    cs = np.concatenate([[0.0], np.cumsum(np.concatenate([np.asarray(x, np.float64) for x in nll] + [np.zeros(0)]))])
    end = np.cumsum(n)
    start, cut = end - n, np.maximum(end - k, end - n)
    with np.errstate(invalid="ignore", divide="ignore"):
        tail = (cs[end] - cs[cut]) / k
        head = (cs[cut] - cs[start]) / (n - k)
    return np.where(valid, tail - head, np.nan)
