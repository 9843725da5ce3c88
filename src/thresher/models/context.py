"""The models one run shares: its causal LM, sentence embedders and the chat backend of LLM judges.

Scorers, IterIT's re-scoring and evaluation take models from a ``ModelContext``; each model is loaded on
first use, so building a context is cheap and loads nothing.
"""

from __future__ import annotations

from thresher.models.embedder import SentenceEmbedder
from thresher.models.hf import HFCausalLM
from thresher.models.judges import make_judge


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

    @classmethod
    def for_model(cls, lm, **options) -> "ModelContext":
        """A context whose language model is the live backend ``lm`` (e.g. ``HFCausalLM.from_model`` over a
        model being trained, as IterIT re-scores between epochs); ``options`` as the constructor's."""
        ctx = cls(getattr(lm, "model_spec", "live"), **options)
        ctx._lm = lm
        return ctx

    def judge(self):
        """The chat backend for judge scorers (local model, OpenAI-compatible API or vLLM)."""
        if self._judge is None:
            self._judge = make_judge(self.judge_spec, self)
        return self._judge

    def lm(self):
        if self._lm is None:
            self._lm = HFCausalLM(self.model, device=self.device, dtype=self.dtype,
                                  max_batch_tokens=self.max_batch_tokens, max_batch_size=self.max_batch_size,
                                  padding_side=self.padding_side)
        return self._lm

    def embedder(self, spec: str | None = None):
        """A sentence embedder: the context's default, or ``spec`` (loaded once per spec)."""
        spec = spec or self.embedder_spec
        if self._emb is None:
            self._emb = {}
        if spec not in self._emb:
            self._emb[spec] = SentenceEmbedder(spec, device=self.device)
        return self._emb[spec]

    def spec(self) -> dict:
        """Constructor keywords that rebuild this context elsewhere (a Ray worker): models load there."""
        return {"model": self.model, "device": self.device, "dtype": self.dtype,
                "max_batch_tokens": self.max_batch_tokens, "max_batch_size": self.max_batch_size,
                "padding_side": self.padding_side, "embedder": self.embedder_spec, "judge": dict(self.judge_spec)}

    def describe(self) -> dict:
        return {"model": self.model, "device": self.device, "dtype": self.dtype,
                "max_batch_tokens": self.max_batch_tokens, "max_batch_size": self.max_batch_size,
                "padding_side": self.padding_side, "embedder": self.embedder_spec, "judge": self.judge_spec}
