"""The scorer contract.

A scorer is a small batched class: a cheap constructor that validates and stores parameters, a lazy
``setup(ctx)`` that takes the models it needs from a shared ``ModelContext``, and one
``score_batch(rows) -> {column: array}`` whose arrays have exactly ``len(rows)`` entries. Class-level
metadata: ``name``, ``version`` (bump whenever the numbers change), ``produces`` (column -> meaning,
range, direction), ``higher_is_better`` (the main column's direction; None where selection picks it).
A row that cannot be scored gets NaN and a reason in its ``status`` column, never a plausible number.

Two extensions:
  - a scorer that reads earlier score columns (ratings, embeddings, tags) names them in
    ``required_columns()`` and receives them as ``score_batch(rows, inputs)`` (a DataFrame aligned
    with ``rows``); the engine hashes those values into the cache key;
  - ``scope = "dataset"`` marks a scorer that needs the whole pool at once (k-NN rareness, DS2
    curation, tag clustering): the engine calls it once with every row, as one cached unit.
"""

from __future__ import annotations

import dataclasses
from typing import ClassVar

import numpy as np

from thresher.config import build
from thresher.data.table import Dataset


class ModelContext:
    """Models shared by the scorers of one run; each is loaded on first use.

    ``judge`` configures the chat backend of LLM-judge scorers (``thresher.models.judges.JudgeConfig``
    fields as a dict); the default is the local model of this context.
    """

    def __init__(self, model: str = "bundled", *, device: str = "auto", dtype: str = "auto",
                 max_batch_tokens: int | None = None, max_batch_size: int = 64, padding_side: str = "right",
                 embedder: str = "bundled-minilm", judge: dict | None = None):
        self.model, self.device, self.dtype = model, device, dtype
        self.max_batch_tokens, self.max_batch_size, self.padding_side = max_batch_tokens, max_batch_size, padding_side
        self.embedder_spec = embedder
        self.judge_spec = dict(judge or {})
        self._lm = self._emb = self._judge = None

    def judge(self):
        """The chat backend for judge scorers (local model, OpenAI-compatible API or vLLM)."""
        if self._judge is None:
            from thresher.models.judges import make_judge
            self._judge = make_judge(self.judge_spec, self)
        return self._judge

    def lm(self):
        if self._lm is None:
            from thresher.models.hf import HFCausalLM
            self._lm = HFCausalLM(self.model, device=self.device, dtype=self.dtype,
                                  max_batch_tokens=self.max_batch_tokens, max_batch_size=self.max_batch_size,
                                  padding_side=self.padding_side)
        return self._lm

    def embedder(self, spec: str | None = None):
        """A sentence embedder: the context's default, or ``spec`` (loaded once per spec)."""
        from thresher.models.embedder import SentenceEmbedder
        spec = spec or self.embedder_spec
        if self._emb is None:
            self._emb = {}
        if spec not in self._emb:
            self._emb[spec] = SentenceEmbedder(spec, device=self.device)
        return self._emb[spec]

    def describe(self) -> dict:
        return {"model": self.model, "device": self.device, "dtype": self.dtype,
                "max_batch_tokens": self.max_batch_tokens, "max_batch_size": self.max_batch_size,
                "padding_side": self.padding_side, "embedder": self.embedder_spec, "judge": self.judge_spec}


class Scorer:
    name: ClassVar[str] = ""
    version: ClassVar[str] = "1"
    Params: ClassVar[type]                      # a dataclass of this scorer's parameters
    produces: ClassVar[dict[str, str]] = {}
    main_column: ClassVar[str] = ""
    higher_is_better: ClassVar[bool | None] = None
    uses: ClassVar[tuple[str, ...]] = ("lm",)   # which models of the context it needs: lm, embedder, judge
    scope: ClassVar[str] = "row"                # "row": any shard of rows; "dataset": the whole pool at once

    def __init__(self, **params):
        self.params = build(self.Params, params, f"scorer {self.name!r}")
        self.ctx: ModelContext | None = None
        self.cache_root = None                  # set by the engine: a folder for intermediate stores
        self.tokens_processed = 0               # read by the engine for tokens/s
        self.transient_failures = 0             # rows whose result is not final (a judge request that got no
                                                # answer after its retries): the engine does not cache their shard

    def param_dict(self) -> dict:
        return dataclasses.asdict(self.params)

    def model_identity(self, ctx: ModelContext) -> str:
        parts = []
        if "lm" in self.uses:
            parts.append(ctx.lm().identity())
            parts.append(f"dtype={ctx.dtype}")
        if "embedder" in self.uses:
            parts.append(ctx.embedder().identity())
        if "judge" in self.uses:
            parts.append(ctx.judge().identity())
        return "|".join(parts)

    def required_columns(self) -> tuple[str, ...]:
        """Score columns this scorer reads (produced by earlier scorers of the run)."""
        return ()

    def produced_columns(self) -> tuple[str, ...]:
        """Score columns this scorer may write (checked against later scorers' required columns)."""
        return tuple(self.produces)

    def setup(self, ctx: ModelContext) -> None:
        self.ctx = ctx

    def score_batch(self, rows: Dataset) -> dict[str, np.ndarray]:
        raise NotImplementedError

    @classmethod
    def describe(cls) -> str:
        return (cls.__doc__ or "").strip().splitlines()[0]
