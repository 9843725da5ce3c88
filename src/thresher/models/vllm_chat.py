"""vLLM in-process chat backend (optional extra ``thresher[vllm]``; needs a GPU).

Imported only when a judge of kind "vllm" is chosen. Generation goes through ``LLM.chat`` with the
model's own chat template, all requests of a call in one batch (vLLM schedules them). Logit rating
(``mode: logits``) is served by the local Hugging Face judge, not here: vLLM returns only the top
log-probabilities of a position, which need not contain every label.
"""

from __future__ import annotations

import logging

from thresher.errors import ConfigError
from thresher.models import bundled
from thresher.models.chat import ChatRequest, ChatResult, ChatStats

log = logging.getLogger(__name__)


class VLLMChat:
    def __init__(self, model: str, *, dtype: str = "auto", gpu_memory_utilization: float = 0.85,
                 max_model_len: int | None = None):
        self.model_spec, self.dtype = model, dtype
        self.gpu_memory_utilization, self.max_model_len = gpu_memory_utilization, max_model_len
        self.llm = None
        self._stats = ChatStats()

    @classmethod
    def from_judge_config(cls, cfg, ctx) -> "VLLMChat":
        """The judge of ``kind: vllm`` (thresher.models.judges): ``cfg.model`` or the run's model, at its dtype."""
        return cls(cfg.model or ctx.model, dtype=ctx.dtype)

    def identity(self) -> str:
        return f"vllm:{self.model_spec}:{self.dtype}"

    def setup(self) -> "VLLMChat":
        if self.llm is None:
            try:
                from vllm import LLM
            except ImportError:
                raise ConfigError("The vllm judge needs the optional extra: pip install 'thresher[vllm]' "
                                  "(and a CUDA GPU). Use --judge local or --judge api otherwise.") from None
            src = str(bundled.converted_model_dir()) if self.model_spec in bundled.BUNDLED_ALIASES else self.model_spec
            kw = {"max_model_len": self.max_model_len} if self.max_model_len else {}
            self.llm = LLM(model=src, dtype=self.dtype, gpu_memory_utilization=self.gpu_memory_utilization, **kw)
        return self

    def chat(self, requests: list[ChatRequest]) -> list[ChatResult]:
        from vllm import SamplingParams

        self.setup()
        out: list[ChatResult] = []
        # One llm.chat call per distinct sampling setting (a scorer's requests share one).
        groups: dict[tuple, list[int]] = {}
        for i, r in enumerate(requests):
            groups.setdefault((r.max_tokens, r.temperature, r.top_p, r.seed), []).append(i)
        results: list[ChatResult | None] = [None] * len(requests)
        for (max_tokens, temperature, top_p, seed), idx in groups.items():
            sp = SamplingParams(max_tokens=max_tokens, temperature=temperature, top_p=top_p, seed=seed)
            outs = self.llm.chat([requests[i].as_messages() for i in idx], sp, use_tqdm=False)
            self._stats.calls += 1
            for i, o in zip(idx, outs):
                gen = o.outputs[0]
                results[i] = ChatResult(gen.text, prompt_tokens=len(o.prompt_token_ids or []),
                                        completion_tokens=len(gen.token_ids))
        out = [r for r in results if r is not None]
        self._stats.requests += len(out)
        self._stats.prompt_tokens += sum(r.prompt_tokens for r in out)
        self._stats.completion_tokens += sum(r.completion_tokens for r in out)
        return out

    def stats(self) -> dict:
        return self._stats.as_dict()
