"""IterIT (METHODS.md 4): selection interleaved with training, as an epoch-sampler hook plus a callback.

    sampler = IterITSampler(rescore, ratio=0.05, update_ratio=3)
    train(data, sampler=sampler, callbacks=[IterITCallback(sampler)], epochs=3, ...)

The sampler holds an ordering of the pool's rows (positions into ``plan.table``) and one score per row.
Schedule (the reference's ``IterativeTrainer.data_selection``):

* before epoch 0: every row is scored (``rescore(all rows, model=..., epoch=0)``, or ``initial_scores``)
  and the whole pool is the window: the ordering becomes ``window_order`` of it;
* after epoch e-1, for epoch e >= 1 ("iterative"): only the window of the first
  W = floor(update_ratio * k) positions (update_ratio > 1; else W = N) is re-scored with the live
  model, and only the window is re-ordered; rows beyond it keep their order and stale scores.
  "baseline" (the reference's static IFD baseline) keeps epoch 0's ordering for every epoch;
* epoch e trains on the first k positions, in the order IterIT's ``SubsetRandomSampler`` visits them:
  ``torch.randperm(k, generator=manual_seed(seed))``, the same permutation of positions every epoch
  (``vary_seed=True``: seed + e).

``rescore(rows, *, model, epoch) -> scores`` is injected: rows is an int64 array of table positions, the
result one float per row (IFD ppl ratio, >= 0, < 1 = the instruction helps; NaN = no score). ``model`` is
the live model the callback received (None when no callback supplied one: the function must then score
with a model of its own); ``epoch`` is the epoch the scores are for. The callback puts the model in eval
mode under ``torch.no_grad()`` around the call and restores training mode afterwards.

Each scoring round writes ``<log_dir>/epoch-<e>.json`` (default ``OUT/iterit``): the rows re-scored and
their scores, candidate and set-aside counts, the k rows selected (rank order, with ids and scores) and
the full ordering with each position's score (the reference's ``{e}_alpaca.jsonl`` and
``{e}_alpaca_selected.jsonl`` in one file), and the round's cost: ``rescored_count`` (rows the ``rescore``
callable scored; 0 when ``initial_scores`` stood in or for "baseline"), ``rescore_seconds`` (wall seconds
of that call) and ``order_seconds`` (wall seconds of ``window_order``: TF-IDF fit + greedy).
``state_dict`` is JSON (NaN scores as null).
"""

from __future__ import annotations

import inspect
import logging
import math
import time
from pathlib import Path

import numpy as np

from thresher.checks import check_choice, is_int, is_real, param_error
from thresher.config import did_you_mean
from thresher.data import split_turns
from thresher.data.spans import SPAN_RULES
from thresher.errors import ConfigError
from thresher.io import write_json
from thresher.models.context import ModelContext
from thresher.models.hf import HFCausalLM
from thresher.models.runs import ITERIT
from thresher.scoring import make_scorer
from thresher.selection.basic import check_budget
from thresher.selection.iterit import PLACEMENTS, check_ranking_params, window_order

log = logging.getLogger(__name__)

STRATEGIES = ("iterative", "baseline")
STATE_VERSION = 1


class IterITSampler:
    """IterIT's per-epoch selection as the SFT layer's epoch-sampler hook (see the module docstring).

    Budget: exactly one of ``k`` (int >= 1) and ``ratio`` (float in (0, 1]; k = floor(ratio * N)).
    ``score_type``, ``decay``, ``threshold``, ``ngram_range``, ``placement``: as ``window_order``.
    ``responses`` (one per row) and ``n``: given here, or taken from the plan in ``bind`` (the row's
    trained assistant turn). ``eos``: appended to each response for TF-IDF; None = the tokenizer's eos
    string at ``bind`` (IterIT), "" when unbound. ``seed``: None = the training seed at ``bind`` (42
    unbound). ``ids``: row ids for the logs (default: from the plan, else the positions).
    """

    def __init__(self, rescore, *, k=None, ratio=None, update_ratio=3, strategy="iterative",
                 score_type="BOTH", decay=0.1, threshold=1.0, ngram_range=(1, 3), placement="faithful",
                 seed=None, vary_seed=False, responses=None, eos=None, initial_scores=None,
                 ids=None, log_dir=None):
        f = "IterITSampler"
        if not callable(rescore):
            raise param_error(f, "rescore", "a callable rescore(rows, *, model, epoch) -> scores", rescore)
        check_budget(f, k, ratio)
        if k is not None and k < 1:
            raise param_error(f, "k", "an int >= 1", k)
        if not (is_real(update_ratio) and update_ratio > 0):
            raise param_error(f, "update_ratio", "a number > 0", update_ratio)
        check_choice(f, "strategy", strategy, STRATEGIES)
        check_ranking_params(f, 0, decay, ngram_range, score_type, threshold, "" if eos is None else eos)
        check_choice(f, "placement", placement, PLACEMENTS)
        if seed is not None and not (is_int(seed) and seed >= 0):
            raise param_error(f, "seed", "None or an int >= 0", seed)
        self.rescore, self.k_given, self.ratio = rescore, k, ratio
        self.update_ratio, self.strategy, self.vary_seed = float(update_ratio), strategy, bool(vary_seed)
        self.rank_kw = dict(decay=float(decay), ngram_range=tuple(ngram_range), score_type=score_type,
                            threshold=float(threshold), placement=placement)
        self.seed, self.eos = seed, eos
        self.responses = None if responses is None else [str(r) for r in responses]
        self.n = None if responses is None else len(self.responses)
        self.initial_scores = initial_scores
        self.ids = None if ids is None else [str(i) for i in ids]
        self.log_dir = None if log_dir is None else Path(log_dir)
        self.model = None                          # last live model seen (start / update)
        self.epoch = -1                            # epoch the ordering is for; -1 = not scored yet
        self.order = self.scores = None            # (N,) int64 rows, position 0 first; (N,) float64 by row

    # ---------------------------------------------------------------- hook protocol
    def bind(self, plan) -> None:
        """Take rows, responses, eos, seed, ids and the log directory from the SFT layer's plan."""

        if self.responses is None:
            # The trained responses (with turns "all": every reply of the row, joined).
            self.responses = ["\n".join(r for _, r in split_turns(m, plan.config.turns)) for m in plan.table.messages]
        elif len(self.responses) != len(plan.table):
            raise ConfigError(f"IterITSampler was given {len(self.responses)} responses but training "
                              f"keeps {len(plan.table)} rows; pass responses=None to take them from "
                              "the training table.")
        self.n = len(self.responses)
        if self.eos is None:
            self.eos = getattr(plan.tokenizer, "eos_token", None) or ""
        if self.seed is None:
            self.seed = int(plan.config.seed)
        if self.ids is None:
            self.ids = list(plan.table.ids)
        if self.log_dir is None:
            self.log_dir = Path(plan.out) / ITERIT
        if hasattr(self.rescore, "bind"):
            self.rescore.bind(plan)

    def __len__(self) -> int:
        return self.k

    def epoch_indices(self, epoch: int) -> np.ndarray:
        """Rows trained in ``epoch``: the first k positions, permuted as IterIT's sampler does."""
        import torch

        epoch = int(epoch)
        if self.order is None and epoch == 0:
            self.start(self.model)                 # lazily: no callback ran on_train_begin
        if self.order is None or (self.strategy == "iterative" and epoch != self.epoch):
            raise ConfigError(f"IterITSampler holds the ordering for epoch {self.epoch} but epoch {epoch} "
                              "asks for rows: pass IterITCallback(sampler) in train(callbacks=...) so "
                              "the window is re-scored after each epoch.")
        seed = self._seed() + (epoch if self.vary_seed else 0)
        perm = torch.randperm(self.k, generator=torch.Generator().manual_seed(seed)).numpy()
        return self.order[:self.k][perm].astype(np.int64)

    def state_dict(self) -> dict:
        return {"version": STATE_VERSION, "n": self.n, "k": self.k, "window": self.window,
                "seed": self._seed(), "eos": self.eos, "epoch": self.epoch,
                "order": None if self.order is None else self.order.tolist(),
                "scores": None if self.scores is None else _json_floats(self.scores)}

    def load_state_dict(self, state: dict) -> None:
        if state.get("version") != STATE_VERSION:
            raise ConfigError(f"IterIT sampler state version {state.get('version')!r} is not "
                              f"{STATE_VERSION}; it was written by another thresher version.")
        if self.n is not None and (state["n"], state["k"]) != (self.n, self.k):
            raise ConfigError(f"The saved IterIT state is for {state['n']} rows and k={state['k']}; this "
                              f"run has {self.n} rows and k={self.k}. Resume with the same data and "
                              "budget, or start a new output directory.")
        self.n, self.seed, self.eos, self.epoch = int(state["n"]), int(state["seed"]), state["eos"], \
            int(state["epoch"])
        self.order = None if state["order"] is None else np.asarray(state["order"], dtype=np.int64)
        self.scores = (None if state["scores"] is None
                       else np.array([np.nan if x is None else x for x in state["scores"]], np.float64))

    # ---------------------------------------------------------------- schedule
    @property
    def k(self) -> int:
        if self.k_given is not None:
            return int(self.k_given)
        k = math.floor(self._n() * self.ratio)
        if k < 1:
            raise ConfigError(f"ratio={self.ratio} of {self._n()} rows trains on no row per epoch; raise "
                              "'ratio' or pass 'k'.")
        return k

    @property
    def window(self) -> int:
        """Rows re-scored after each epoch: floor(update_ratio * k) if update_ratio > 1, else all."""
        n = self._n()
        return min(n, math.floor(self.update_ratio * self.k)) if self.update_ratio > 1 else n

    def start(self, model=None) -> None:
        """Score the whole pool and order it (before epoch 0); nothing when a state is already held."""
        if model is not None:
            self.model = model
        if self.order is not None:
            return
        n = self._n()
        if self.k > n:
            raise ConfigError(f"The 'k' parameter of IterITSampler must be <= the {n} training rows. "
                              f"Got {self.k}.")
        rows = np.arange(n, dtype=np.int64)
        t = time.perf_counter()
        if self.initial_scores is not None:
            s, scored = self._check_scores(self.initial_scores, n, "initial_scores"), 0
        else:
            s, scored = self._check_scores(self.rescore(rows, model=self.model, epoch=0), n, "rescore"), n
        self.scores = np.full(n, np.nan)
        self._reorder(0, rows, rows, s, scored, time.perf_counter() - t)

    def update(self, epoch: int, model=None) -> None:
        """Prepare ``epoch`` (>= 1) after epoch - 1 has trained: re-score the window with ``model``."""
        epoch = int(epoch)
        if self.order is None or epoch != self.epoch + 1:
            raise ConfigError(f"IterITSampler.update({epoch}) needs the ordering of epoch {epoch - 1}; it "
                              f"holds {'none' if self.order is None else 'epoch ' + str(self.epoch)}.")
        if model is not None:
            self.model = model
        if self.strategy == "baseline":
            self.epoch = epoch
            self._log(epoch, np.zeros(0, np.int64), np.zeros(0), 0, 0.0, 0.0)
            return
        rows = self.order[:self.window].copy()
        t = time.perf_counter()
        s = self._check_scores(self.rescore(rows, model=self.model, epoch=epoch), len(rows), "rescore")
        self._reorder(epoch, self.order, rows, s, len(rows), time.perf_counter() - t)

    # ---------------------------------------------------------------- internals
    def _reorder(self, epoch: int, order: np.ndarray, rows: np.ndarray, s: np.ndarray, scored: int,
                 rescore_s: float) -> None:
        """Store the window's new scores, re-order the window, log the round (with its timings)."""
        self.scores[rows] = s
        t = time.perf_counter()
        docs = [self.responses[r] for r in rows]
        self.order = window_order(order, s, docs, k=self.k, eos=self.eos or "", **self.rank_kw)
        order_s = time.perf_counter() - t
        self.epoch = epoch
        self._log(epoch, rows, s, scored, rescore_s, order_s)

    def _log(self, epoch: int, rows: np.ndarray, s: np.ndarray, scored: int, rescore_s: float,
             order_s: float) -> None:
        sel = self.order[:self.k]
        cand = int(np.sum(s < self.rank_kw["threshold"]))
        log.info("IterIT epoch %d: re-scored %d rows (%.2f s), %d candidates, %d set aside; ordering %.2f s",
                 epoch, scored, rescore_s, cand, len(rows) - cand, order_s)
        if self.log_dir is None:
            return

        ids = self.ids if self.ids is not None else [str(i) for i in range(self._n())]
        write_json(self.log_dir / f"epoch-{epoch}.json", {
            "epoch": epoch, "k": self.k, "window": len(rows), "strategy": self.strategy,
            "rescored": rows.tolist(), "rescored_scores": _json_floats(s),
            "n_candidates": cand, "n_set_aside": len(rows) - cand,
            "selected": sel.tolist(), "selected_ids": [ids[r] for r in sel],
            "selected_scores": _json_floats(self.scores[sel]),
            "order": self.order.tolist(), "order_scores": _json_floats(self.scores[self.order]),
            "rescored_count": int(scored), "rescore_seconds": float(rescore_s),
            "order_seconds": float(order_s)})

    def _check_scores(self, scores, n: int, what: str) -> np.ndarray:
        try:
            s = np.asarray(scores, dtype=np.float64)
        except (TypeError, ValueError):
            raise ConfigError(f"IterITSampler's {what} must give numbers; got values that cannot be "
                              "read as floats.") from None
        if s.shape != (n,):
            raise ConfigError(f"IterITSampler's {what} must give one score per row: shape ({n},). "
                              f"Got shape {s.shape}.")
        return s

    def _n(self) -> int:
        if self.n is None:
            raise ConfigError("IterITSampler does not know the pool yet: pass responses=..., or give it "
                              "to train(sampler=...), which binds it to the training rows.")
        return self.n

    def _seed(self) -> int:
        return 42 if self.seed is None else int(self.seed)


def _json_floats(a: np.ndarray) -> list:
    return [None if math.isnan(x) else x for x in np.asarray(a, dtype=np.float64).tolist()]


class IFDRescorer:
    """IterIT's complexity score S_com for ``IterITSampler``: IFD as a perplexity ratio
    exp(s(A|Q) - s(A)) computed by thresher's IFD scorer with the model as it is being trained (its
    LoRA included), in float64, on the training rows' own template, max_length and turns (taken from
    the SFT plan at ``bind``). Never cached: the model changes every epoch. Rows the scorer cannot
    score (prompt fills max_length) are NaN and set aside by the sampler.

    ``span_rule``: "offsets" (default; clean) or "cherry" (prefix re-tokenisation). IterIT's own rule
    tokenises ``text[:rfind(A)]`` without special tokens (METHODS.md 4.3, pitfall 4.7.5); the offsets rule
    gives the same span wherever that one is right.
    """

    def __init__(self, *, span_rule: str = "offsets", template: str | None = None, max_batch_tokens: int | None = None):
        self.span_rule, self.template, self.max_batch_tokens = span_rule, template, max_batch_tokens
        self.plan = None

    def bind(self, plan) -> None:
        self.plan = plan

    def __call__(self, rows, *, model, epoch: int) -> np.ndarray:
        if self.plan is None or model is None:
            raise ConfigError("IFDRescorer needs the SFT plan and the live model: use it as the rescore of an "
                              "IterITSampler passed to thresher.training.train(sampler=..., callbacks="
                              "[IterITCallback(sampler)]).")
        cfg = self.plan.config
        scorer = make_scorer("ifd", variant="ppl_ratio", template=self.template or cfg.template,
                             max_length=int(cfg.max_length), span_rule=self.span_rule, turns=cfg.turns)
        ctx = ModelContext.for_model(HFCausalLM.from_model(model, self.plan.tokenizer, identity=f"iterit-epoch{epoch}",
                                                           max_batch_tokens=self.max_batch_tokens))
        scorer.setup(ctx)
        cols = scorer.score_batch(self.plan.table.subset(np.asarray(rows, dtype=np.int64)))
        return np.asarray(cols["ifd_ppl_ratio"], dtype=np.float64)

# IterITSampler parameters a recipe may set (the rest come from the training plan).
_ITERIT_OWN = ("span_rule", "max_batch_tokens")
_ITERIT_FIXED = {"rescore", "responses", "initial_scores", "ids", "log_dir", "eos"}


def make_iterit(options: dict, owner: str):
    """The IterITSampler of a recipe's ``iterit`` block (checked without a model); training pairs it with
    ``thresher.training.hooks.IterITCallback(sampler)``."""
    if not isinstance(options, dict):
        raise ConfigError(f"{owner} must be a mapping of IterIT parameters (ratio, update_ratio, ...).")
    allowed = (set(inspect.signature(IterITSampler).parameters) - _ITERIT_FIXED) | set(_ITERIT_OWN)
    for key in options:
        if key not in allowed:
            raise ConfigError(f"{owner} has no parameter {key!r}.{did_you_mean(key, allowed)} "
                              f"Its parameters: {', '.join(sorted(allowed))}.")
    opts = dict(options)
    rescorer = IFDRescorer(**{k: opts.pop(k) for k in _ITERIT_OWN if k in opts})
    if rescorer.span_rule not in SPAN_RULES:
        raise ConfigError(f"The 'span_rule' parameter of {owner} must be one of "
                          f"{', '.join(SPAN_RULES)}. Got {rescorer.span_rule!r}.")
    if isinstance(opts.get("ngram_range"), list):
        opts["ngram_range"] = tuple(opts["ngram_range"])
    try:
        sampler = IterITSampler(rescorer, **opts)
    except ConfigError as e:
        raise ConfigError(f"{owner}: {e}") from None
    return sampler
