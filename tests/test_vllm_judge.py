"""vLLM in-process judge: runs only with a CUDA GPU and the optional vllm extra installed; skipped otherwise.
Its greedy answers to rating prompts must parse like the local judge's, in the same order as the requests."""

from __future__ import annotations

import importlib.util

import pytest

torch = pytest.importorskip("torch")
pytestmark = [pytest.mark.gpu,
              pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU"),
              pytest.mark.skipif(importlib.util.find_spec("vllm") is None, reason="needs the vllm extra")]


def test_vllm_chat_generates_in_request_order():
    from thresher.models.chat import ChatRequest
    from thresher.models.vllm_chat import VLLMChat

    judge = VLLMChat("bundled", dtype="bfloat16", gpu_memory_utilization=0.3, max_model_len=2048)
    prompts = [f"Reply with the number {i} and nothing else." for i in range(6)]
    res = judge.chat([ChatRequest.of([{"role": "user", "content": p}], max_tokens=8) for p in prompts])
    assert len(res) == 6 and all(r.text is not None and r.completion_tokens >= 1 for r in res)
    stats = judge.stats()
    assert stats["requests"] == 6 and stats["calls"] == 1
