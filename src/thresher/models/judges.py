"""Choosing and building the chat backend of LLM-judge scorers from a ``JudgeConfig``.

kind "local": the run's own Hugging Face model (or ``model``), batched generation and logit rating;
kind "api":   any OpenAI-compatible HTTP API (hosted, a vLLM or Ollama-style server), with retries,
              a per-request SQLite cache under the thresher cache dir, token and cost accounting;
kind "vllm":  vLLM in-process (optional extra, imported only when chosen; needs a GPU).
The API key is read from the environment variable ``api_key_env`` (a variable name, never the key) at
call time and never stored. ``allow_http`` must be set to send it over plain http:// to a host other than
loopback; ``max_response_bytes`` and ``deadline`` bound each reply (see thresher.models.api).
"""

from __future__ import annotations

from dataclasses import asdict, dataclass

from thresher.config import build, choice, option
from thresher.errors import ConfigError


@dataclass
class JudgeConfig:
    kind: str = choice("local", "local", "api", "vllm", flags={"--judge": str},
                       help="local: the run's model (bundled SmolLM2 by default, no network); api: any "
                            "OpenAI-compatible server; vllm: in-process vLLM (GPU, optional extra)")
    model: str | None = option(None, help="judge model name (local/vllm: default the run's model; api: required, "
                                          "e.g. gpt-4o-mini)")
    base_url: str = option("https://api.openai.com/v1", help="API base URL (e.g. http://localhost:8000/v1 for a "
                                                             "vLLM server)")
    api_key_env: str = option("OPENAI_API_KEY", help="NAME of the environment variable holding the API key; "
                                                     "never the key itself")
    concurrency: int = option(8, help="API requests in flight")
    max_retries: int = option(6, help="API: retries of a failed request (backing off)")
    timeout: float = option(60.0, help="API: seconds to wait for a reply")
    price_input_per_1m: float = option(0.0, help="API: price per million input tokens, for the cost line")
    price_output_per_1m: float = option(0.0, help="API: price per million output tokens, for the cost line")
    cache: str | None = option(None, help="API request cache file (default <cache dir>/judge/requests.sqlite)")
    allow_http: bool = option(False, help="API: allow a plain http:// base URL to a host other than this machine "
                                          "(the key then travels unencrypted; loopback is always allowed)")
    max_response_bytes: int = option(4 * 1024 * 1024, help="API: a longer reply is refused (and retried)")
    deadline: float | None = option(None, help="API: seconds for one whole attempt (default 5 x timeout)")

    def check(self, owner):
        if self.kind == "api" and not self.model:
            raise ConfigError(f"{owner}: an API judge needs a model name (judge.model, or --judge-model), "
                              "e.g. gpt-4o-mini.")
        if self.concurrency < 1:
            raise ConfigError(f"The 'concurrency' parameter of {owner} must be an int >= 1. Got {self.concurrency}.")
        if self.max_retries < 0:
            raise ConfigError(f"The 'max_retries' parameter of {owner} must be an int >= 0. Got {self.max_retries}.")
        from thresher.keys import check_key_env
        check_key_env(self.api_key_env, owner)             # a pasted key is refused, never echoed
        if self.kind == "api":
            from thresher.models.api import check_base_url
            check_base_url(self.base_url, self.allow_http, owner)


def make_judge(spec: dict, ctx):
    """The chat backend described by ``spec`` (JudgeConfig fields); ``ctx`` lends its local model."""
    cfg = build(JudgeConfig, spec, "judge")
    if cfg.kind == "local":
        from thresher.models.local_judge import LocalChat
        if cfg.model in (None, ctx.model):
            return LocalChat(ctx.lm())
        return LocalChat(cfg.model, device=ctx.device, dtype=ctx.dtype, max_batch_tokens=ctx.max_batch_tokens)
    if cfg.kind == "api":
        from thresher.models.api import OpenAIChat
        from thresher.models.bundled import cache_dir
        cache = cfg.cache or str(cache_dir() / "judge" / "requests.sqlite")
        return OpenAIChat(cfg.model, base_url=cfg.base_url, api_key_env=cfg.api_key_env,
                          concurrency=cfg.concurrency, max_retries=cfg.max_retries, timeout=cfg.timeout,
                          cache_path=cache, price_input_per_1m=cfg.price_input_per_1m,
                          price_output_per_1m=cfg.price_output_per_1m, allow_http=cfg.allow_http,
                          max_response_bytes=cfg.max_response_bytes, deadline=cfg.deadline)
    from thresher.models.vllm_chat import VLLMChat
    return VLLMChat(cfg.model or ctx.model, dtype=ctx.dtype)


def describe(spec: dict) -> dict:
    return asdict(build(JudgeConfig, spec, "judge"))
