"""Choosing and building the chat backend of LLM-judge scorers from a ``JudgeConfig``.

Backends are chosen by name from ``JUDGE_BACKENDS`` (a thresher.registry.Registry: a backend's module is
imported only when it is chosen, so vLLM stays unimported unless ``kind: vllm``):
kind "local": the run's own Hugging Face model (or ``model``), batched generation and logit rating;
kind "api":   any OpenAI-compatible HTTP API (hosted, a vLLM or Ollama-style server), with retries,
              a per-request SQLite cache under the thresher cache dir, token and cost accounting;
kind "vllm":  vLLM in-process (optional extra, imported only when chosen; needs a GPU).
A backend is a class with the chat protocol (thresher.models.chat) and a classmethod
``from_judge_config(cfg, ctx)`` that builds it from a JudgeConfig and the run's ModelContext; adding one is
that class plus one ``JUDGE_BACKENDS.register`` line here.
The API key is read from the environment variable ``api_key_env`` (a variable name, never the key) at
call time and never stored. ``allow_http`` must be set to send it over plain http:// to a host other than
loopback; ``max_response_bytes`` and ``deadline`` bound each reply (see thresher.models.api).
"""

from __future__ import annotations

from dataclasses import asdict, dataclass

from thresher.config import build, choice, option
from thresher.errors import ConfigError
from thresher.keys import check_key_env
from thresher.models.api import check_base_url
from thresher.registry import Registry

JUDGE_BACKENDS = Registry("judge backend")
JUDGE_BACKENDS.register("local", "thresher.models.local_judge:LocalChat")
JUDGE_BACKENDS.register("api", "thresher.models.api:OpenAIChat")
JUDGE_BACKENDS.register("vllm", "thresher.models.vllm_chat:VLLMChat")


@dataclass
class JudgeConfig:
    kind: str = choice("local", *JUDGE_BACKENDS.names(), flags={"--judge": str},
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
        check_key_env(self.api_key_env, owner)             # a pasted key is refused, never echoed
        if self.kind == "api":
            check_base_url(self.base_url, self.allow_http, owner)


def make_judge(spec: dict, ctx):
    """The chat backend described by ``spec`` (JudgeConfig fields); ``ctx`` lends its local model."""
    cfg = build(JudgeConfig, spec, "judge")
    return JUDGE_BACKENDS.get(cfg.kind).from_judge_config(cfg, ctx)


def describe(spec: dict) -> dict:
    return asdict(build(JudgeConfig, spec, "judge"))
