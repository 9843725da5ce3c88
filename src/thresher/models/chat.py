"""The chat (judge) backend protocol shared by every LLM-judge backend.

Backends: the local Hugging Face model (``thresher.models.local_judge.LocalChat``), any
OpenAI-compatible HTTP API (``thresher.models.api.OpenAIChat``) and vLLM in-process
(``thresher.models.vllm_chat.VLLMChat``, optional extra). Scorers and evaluation only see this
protocol:

    backend.identity() -> str                # model identity for cache keys; never a secret
    backend.chat(requests) -> list[ChatResult]  # same length and order as requests; never raises for
                                                # one failed request: that result has text None and error
    backend.stats() -> dict                  # requests, cached hits, retries, failures, tokens, cost

A failed request (retries exhausted, refused) is a ``ChatResult`` with ``text=None`` and an
``error``: the caller turns it into NaN plus a counted reason, never into a plausible score. A
failure marked ``transient`` (the API backend's exhausted retries, timeouts, requests not sent) is
not final: scorers report it so that the engine does not cache the shard and a rerun asks again.
"""

from __future__ import annotations

import json
from dataclasses import asdict, dataclass, field
from typing import Protocol

from thresher.io import sha256_text


@dataclass(frozen=True)
class ChatRequest:
    messages: tuple[tuple[str, str], ...]   # ((role, content), ...), role in system|user|assistant
    max_tokens: int = 128
    temperature: float = 0.0                 # 0 = greedy / deterministic
    top_p: float = 1.0
    seed: int | None = None

    @staticmethod
    def of(messages: list[dict], **sampling) -> "ChatRequest":
        return ChatRequest(tuple((m["role"], m["content"]) for m in messages), **sampling)

    def as_messages(self) -> list[dict]:
        return [{"role": r, "content": c} for r, c in self.messages]

    def key(self, model_identity: str) -> str:
        """Cache key: model identity, messages and sampling parameters (no credentials)."""
        blob = json.dumps([model_identity, self.messages, self.max_tokens, self.temperature, self.top_p,
                           self.seed], ensure_ascii=False)
        return sha256_text(blob)


@dataclass
class ChatResult:
    text: str | None                 # the completion; None when the request failed
    error: str | None = None         # why it failed (no secrets)
    prompt_tokens: int = 0
    completion_tokens: int = 0
    cached: bool = False             # served from the on-disk request cache (not paid again)
    transient: bool = False          # a failure that a later run may not meet (network, 5xx, timeouts,
                                     # rate limits, not sent): the caller must not keep it as final

    def as_dict(self) -> dict:
        return asdict(self)


@dataclass
class ChatStats:
    requests: int = 0                # results returned
    cached: int = 0                  # of which served from cache
    calls: int = 0                   # HTTP calls / generation batches actually made
    retries: int = 0
    failed: int = 0
    prompt_tokens: int = 0
    completion_tokens: int = 0
    cost: float = 0.0                # in the currency of the configured prices
    extra: dict = field(default_factory=dict)

    def as_dict(self) -> dict:
        return asdict(self)


class ChatBackend(Protocol):
    def identity(self) -> str: ...

    def chat(self, requests: list[ChatRequest]) -> list[ChatResult]: ...

    def stats(self) -> dict: ...
