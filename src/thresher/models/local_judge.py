"""The local Hugging Face judge: the chat protocol (``thresher.models.chat``) on an ``HFCausalLM``.

Two ways to ask the model for a rating:
  - ``chat(requests)``: batched generation (greedy at temperature 0, seeded sampling otherwise); the
    caller parses the text, as with any API judge;
  - ``rate(requests, labels)``: one forward pass, no generation: the next-token distribution after the
    generation prompt (plus an optional ``answer_prefix`` such as "Score: ") restricted to the label
    tokens, as DEITA's scorers do (METHODS 6.2: score = sum_s s * softmax(logit[id(s)])). It returns
    the renormalised distribution, its expectation, its argmax and the mass the model put on the labels
    before renormalising (low mass: the model did not want to answer with a label).

Prompts are rendered with the tokenizer's chat template (``add_generation_prompt=True``). A prompt
longer than ``max_prompt_tokens`` (or than the model's context minus the tokens to generate) is cut
from the LEFT: the template's end - everything after the last message's content (end-of-turn marker,
assistant header, answer prefix) - is always kept whole, a leading BOS token is kept, and tokens are
dropped from the start of the rest. The number of cut prompts is in ``stats()["extra"]["truncated"]``.
Note that left truncation drops the start of the conversation first: put a judge's rubric after the
sample, or shorten the sample before building the prompt, if the rubric must survive.
"""

from __future__ import annotations

import logging

import numpy as np

from thresher.errors import ConfigError
from thresher.models.chat import ChatRequest, ChatResult, ChatStats
from thresher.models.hf import CPU_GENERATION_BATCH_TOKENS, HFCausalLM

log = logging.getLogger(__name__)

_SENTINEL = "\u2063THRESHER-LAST-CONTENT\u2063"    # stands in for the last message to find the template's end


class LocalChat:
    """Chat and logit-rating judge on a local causal LM (a name, a path, "bundled", or an ``HFCausalLM``).

    ``device`` and ``dtype`` apply when ``model`` is a name or path; an ``HFCausalLM`` keeps its own
    (and may be shared with scorers). ``max_batch_tokens`` (None: the model's default) and
    ``max_batch_size`` bound every batch this judge runs. ``max_prompt_tokens`` is the longest prompt
    kept before left truncation (2048, DS2's limit).
    """

    def __init__(self, model="bundled", *, device: str = "auto", dtype: str = "auto",
                 max_batch_tokens: int | None = None, max_batch_size: int = 64, max_prompt_tokens: int = 2048):
        for name, v, low in (("max_batch_size", max_batch_size, 1), ("max_prompt_tokens", max_prompt_tokens, 8),
                             ("max_batch_tokens", 1 if max_batch_tokens is None else max_batch_tokens, 1)):
            if not isinstance(v, (int, np.integer)) or isinstance(v, bool) or v < low:
                raise ConfigError(f"The '{name}' parameter of LocalChat must be an int >= {low}. Got {v!r}.")
        if isinstance(model, HFCausalLM):
            if device != "auto" or dtype != "auto":
                raise ConfigError("The 'device' and 'dtype' parameters of LocalChat apply only when 'model' is a "
                                  "name or path; the given HFCausalLM keeps its own. Set them on the HFCausalLM.")
            self.lm = model
        else:
            self.lm = HFCausalLM(str(model), device=device, dtype=dtype, max_batch_tokens=max_batch_tokens,
                                 max_batch_size=max_batch_size)
        self.max_batch_tokens, self.max_batch_size = max_batch_tokens, int(max_batch_size)
        self.max_prompt_tokens = int(max_prompt_tokens)
        self._stats = ChatStats(extra={"truncated": 0, "rated": 0})

    @classmethod
    def from_judge_config(cls, cfg, ctx) -> "LocalChat":
        """The judge of ``kind: local`` (thresher.models.judges): ``ctx``'s own model, shared with the scorers,
        when ``cfg.model`` is unset or names it; else ``cfg.model`` on ``ctx``'s device, dtype and token budget."""
        if cfg.model in (None, ctx.model):
            return cls(ctx.lm())
        return cls(cfg.model, device=ctx.device, dtype=ctx.dtype, max_batch_tokens=ctx.max_batch_tokens)

    # ---------------------------------------------------------------- protocol
    def identity(self) -> str:
        """Model identity plus the dtype the numbers come from (no weights loaded)."""
        return f"local:{self.lm.identity()}:{self._dtype_name()}"

    def stats(self) -> dict:
        """requests, calls (forward or generation batches), failed, prompt/completion tokens, extra."""
        return self._stats.as_dict()

    def chat(self, requests: list[ChatRequest]) -> list[ChatResult]:
        """Generate a reply to each request (same length and order); a request whose prompt cannot be
        rendered or fitted gets ``text=None`` and an ``error``."""
        requests = list(requests)
        _check_sampling(requests)
        if not requests:
            return []
        self.lm.setup()
        reserve = np.array([r.max_tokens for r in requests])
        ids, errors = self._prompts(requests, "", reserve)
        ok = [i for i, e in enumerate(errors) if e is None]
        new: dict[int, list[int]] = {}
        if ok:
            gen = self._run(generation=True, fn=lambda: self.lm.generate(
                [ids[i] for i in ok], max_new_tokens=[requests[i].max_tokens for i in ok],
                temperature=[requests[i].temperature for i in ok], top_p=[requests[i].top_p for i in ok],
                seed=[requests[i].seed for i in ok]))
            new = dict(zip(ok, gen))
        texts = dict(zip(ok, self.lm.tokenizer.batch_decode([new[i] for i in ok], skip_special_tokens=True)))
        out = [ChatResult(text=None, error=e) if e else
               ChatResult(text=texts[i], prompt_tokens=len(ids[i]), completion_tokens=len(new[i]))
               for i, e in enumerate(errors)]
        self._count(out)
        return out

    def rate(self, requests: list[ChatRequest], labels: list[str], *, answer_prefix: str = "") -> dict:
        """Rate each request by the model's next-token distribution over single-token ``labels``.

        Returns a dict of arrays over the N requests and K labels:
          probs (N, K): distribution over the labels, renormalised (rows sum to 1);
          expected (N,): sum(value * prob) when every label is a number (range: the labels'), else None;
          argmax (N,): the most likely label's value (a float for numeric labels, else the label);
          mass (N,): probability the model put on the label tokens before renormalising, in [0, 1];
          labels, token_ids: the labels and the token id each was scored as;
          error (N,): None, or why a request could not be rated (its numbers are NaN).
        One forward pass per batch, deterministic; sampling parameters of the requests are ignored.
        """
        requests, labels = list(requests), _check_labels(labels)
        if not isinstance(answer_prefix, str):
            raise ConfigError(f"The 'answer_prefix' parameter of rate must be a str. Got {answer_prefix!r}.")
        self.lm.setup()
        cand = self._label_tokens(labels, answer_prefix)
        n, k = len(requests), len(labels)
        logp = np.full((n, k), np.nan)
        ids, errors = self._prompts(requests, answer_prefix, np.ones(n, dtype=np.int64))
        ok = [i for i, e in enumerate(errors) if e is None]
        if ok:
            logp[ok] = self._run(lambda: self.lm.next_token_logprobs([ids[i] for i in ok], cand))
        top = logp.max(axis=1, keepdims=True)                                  # (N, 1) for a stable softmax
        weights = np.exp(logp - top)                                           # (N, K)
        probs = weights / weights.sum(axis=1, keepdims=True)
        mass = np.exp(logp).sum(axis=1)
        values = _numeric(labels)
        failed = np.array([e is not None for e in errors], dtype=bool)
        best = np.argmax(np.nan_to_num(probs, nan=-1.0), axis=1)
        if values is None:
            expected, argmax = None, np.array([None if f else labels[j] for j, f in zip(best, failed)], dtype=object)
        else:
            expected = probs @ values
            argmax = np.where(failed, np.nan, values[best])
        self._count([ChatResult(text="", error=e, prompt_tokens=len(ids[i]) if e is None else 0)
                     for i, e in enumerate(errors)])
        self._stats.extra["rated"] += len(ok)
        return {"probs": probs, "expected": expected, "argmax": argmax, "mass": mass, "labels": labels,
                "token_ids": cand, "error": errors}

    # ---------------------------------------------------------------- internals
    def _run(self, fn, generation: bool = False):
        """Run fn under this judge's batch limits, counting the batches it ran as calls. Generation on a
        CPU gets a larger token budget than scoring passes: its decode steps are one token per row, so
        more rows per batch is what makes them fast."""
        before = self.lm.batches_run
        budget = self.max_batch_tokens
        if budget is None and generation and getattr(self.lm.device, "type", "cpu") != "cuda":
            budget = CPU_GENERATION_BATCH_TOKENS
        with self.lm.overrides(max_batch_tokens=budget, max_batch_size=self.max_batch_size):
            res = fn()
        self._stats.calls += self.lm.batches_run - before
        return res

    def _count(self, results: list[ChatResult]) -> None:
        s = self._stats
        s.requests += len(results)
        s.failed += sum(r.text is None or r.error is not None for r in results)
        s.prompt_tokens += sum(r.prompt_tokens for r in results)
        s.completion_tokens += sum(r.completion_tokens for r in results)

    def _dtype_name(self) -> str:
        if self.lm.dtype is not None:
            return str(self.lm.dtype).replace("torch.", "")
        if self.lm.dtype_spec != "auto":
            return self.lm.dtype_spec
        import torch
        on_gpu = self.lm.device_spec.startswith("cuda") or (self.lm.device_spec == "auto" and torch.cuda.is_available())
        return "bfloat16" if on_gpu else "float32"

    def _render(self, messages: list[dict], suffix: str) -> str:
        tok = self.lm.tokenizer
        if not getattr(tok, "chat_template", None):
            raise ConfigError(f"The model {self.lm.model_spec!r} has no chat template, which LocalChat needs to "
                              "render requests. Use an instruction-tuned model that ships one.")
        return tok.apply_chat_template(messages, tokenize=False, add_generation_prompt=True) + suffix

    def _prompts(self, requests: list[ChatRequest], suffix: str, reserve: np.ndarray):
        """Token ids of each rendered prompt (left-truncated to fit) and a per-request error or None."""
        from jinja2 import TemplateError

        if not requests:
            return [], []
        texts, errors = [], []
        for r in requests:                                # templating is per conversation by nature
            try:
                texts.append(self._render(r.as_messages(), suffix))
                errors.append(None)
            except (TemplateError, ValueError, TypeError) as e:
                texts.append("")
                errors.append(f"the chat template could not render this request: {e}")
        ids = self.lm.tokenizer(texts, add_special_tokens=False)["input_ids"]
        context = int(getattr(self.lm.model.config, "max_position_embeddings", 0) or 1 << 30)
        limits = np.minimum(self.max_prompt_tokens, context - reserve)       # (N,) room per prompt
        for i in np.flatnonzero(np.array([len(x) for x in ids]) > limits):   # rare: only over-long prompts
            if errors[i] is None:
                ids[i], errors[i] = self._truncate(requests[i], texts[i], suffix, int(limits[i]))
                self._stats.extra["truncated"] += errors[i] is None
        return ids, errors

    def _truncate(self, request: ChatRequest, text: str, suffix: str, limit: int):
        """Left-truncate one prompt to ``limit`` tokens, keeping a leading BOS and the template's end."""
        tok = self.lm.tokenizer
        msgs = request.as_messages()
        if not msgs:
            return None, f"the prompt is over {limit} tokens and has no message to cut"
        msgs[-1] = dict(msgs[-1], content=_SENTINEL)
        probe = self._render(msgs, suffix)
        at = probe.rfind(_SENTINEL)
        end = probe[at + len(_SENTINEL):] if at >= 0 else None
        if end is None or not text.endswith(end):
            return None, f"the prompt is over {limit} tokens and the chat template's end could not be located"
        enc = tok(text, add_special_tokens=False, return_offsets_mapping=True)
        ids, spans = enc["input_ids"], enc["offset_mapping"]
        cut = len(text) - len(end)
        first_end = next(j for j, (_, b) in enumerate(spans) if b > cut)      # a straddling token goes to the end
        head = ids[:1] if tok.bos_token_id is not None and ids[0] == tok.bos_token_id else []
        room = limit - len(head) - (len(ids) - first_end)
        if room < 1:
            return None, (f"the chat template's end alone is {len(ids) - first_end} tokens, which leaves no "
                          f"room under the {limit}-token prompt limit")
        log.warning("prompt of %d tokens cut from the left to %d", len(ids), limit)
        return head + ids[len(head):first_end][-room:] + ids[first_end:], None

    def _label_tokens(self, labels: list[str], answer_prefix: str) -> np.ndarray:
        """The token id of each label as the first token of the answer: the label exactly as given, or
        else every label with a leading space; ConfigError when some label is more than one token."""
        tok = self.lm.tokenizer
        context = self._render([{"role": "user", "content": "."}], answer_prefix)[-64:]
        base = tok(context, add_special_tokens=False)["input_ids"]

        def single(text: str):
            ids = tok(context + text, add_special_tokens=False)["input_ids"]
            return ids[-1] if len(ids) == len(base) + 1 and ids[: len(base)] == base else None

        for variant in ("{}", " {}"):
            found = [single(variant.format(lab)) for lab in labels]
            if all(t is not None for t in found):
                if len(set(found)) < len(found):
                    raise ConfigError(f"The labels {labels} map to repeated tokens {found}; use distinct labels.")
                return np.array(found, dtype=np.int64)
        bad = next((lab for lab in labels if single(lab) is None and single(" " + lab) is None), None)
        if bad is None:
            raise ConfigError(f"The labels {labels} are single tokens only in different forms (some with a "
                              "leading space, some without); use labels of one form, e.g. all digits.")
        plain = tok(bad, add_special_tokens=False)["input_ids"]
        spaced = tok(" " + bad, add_special_tokens=False)["input_ids"]
        raise ConfigError(f"The label {bad!r} is not a single token of this tokenizer after the prompt's end "
                          f"{context[-24:]!r}: it is {len(plain)} tokens {plain} as {bad!r} and {len(spaced)} "
                          f"tokens {spaced} as {' ' + bad!r}. Logit rating needs single-token labels (e.g. the "
                          "digits 0-9); use generation (chat) for multi-token answers.")


def _check_sampling(requests: list[ChatRequest]) -> None:
    for i, r in enumerate(requests):
        if not isinstance(r, ChatRequest):
            raise ConfigError(f"Request {i} must be a ChatRequest. Got {type(r).__name__}.")
        if r.max_tokens < 1 or r.temperature < 0 or not 0 < r.top_p <= 1:
            raise ConfigError(f"Request {i} needs max_tokens >= 1, temperature >= 0 and top_p in (0, 1]. Got "
                              f"max_tokens={r.max_tokens}, temperature={r.temperature}, top_p={r.top_p}.")


def _check_labels(labels) -> list[str]:
    given = labels
    labels = [] if isinstance(labels, str) else list(labels)
    if len(labels) < 2 or not all(isinstance(x, str) and x for x in labels) \
            or len(set(labels)) < len(labels):
        raise ConfigError("The 'labels' parameter of rate must be a list of at least two distinct non-empty "
                          f"strings, e.g. ['0', '1', '2', '3', '4', '5']. Got {given!r}.")
    return labels


def _numeric(labels: list[str]) -> np.ndarray | None:
    try:
        return np.array([float(x) for x in labels], dtype=np.float64)
    except ValueError:
        return None
