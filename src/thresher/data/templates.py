"""Prompt templates: how a (context, response) unit becomes the texts a model scores.

One place for all template strings. A template renders three things:
  prompt         text before the response in the conditioned pass (ends right where the response begins)
  direct_prefix  text before the response in the direct (unconditioned) pass
  instruction    the raw instruction text (Cherry's faithful span rule measures its token length)
The conditioned text is ``prompt + response``; the direct text is ``direct_prefix + response``.

Names: alpaca, wiz, vicuna, none (METHODS.md 0.4, 3.2, 3.4) and chat (the tokenizer's own
chat template). Strings follow the reference code exactly (Cherry's ``PROMPT_DICT``; the response is
appended directly after "### Response:" with no separator).
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from thresher.data.records import split_turns
from thresher.data.table import Dataset
from thresher.errors import ConfigError

ALPACA_INPUT = (
    "Below is an instruction that describes a task, paired with an input that provides further context. "
    "Write a response that appropriately completes the request.\n\n"
    "### Instruction:\n{instruction}\n\n### Input:\n{input}\n\n### Response:"
)
ALPACA_NO_INPUT = (
    "Below is an instruction that describes a task. "
    "Write a response that appropriately completes the request.\n\n"
    "### Instruction:\n{instruction}\n\n### Response:"
)
VICUNA_SYSTEM = (
    "A chat between a curious user and an artificial intelligence assistant. "
    "The assistant gives helpful, detailed, and polite answers to the user's questions."
)
TEMPLATES = ("alpaca", "wiz", "vicuna", "none", "chat")
_PLACEHOLDER = "\u2063THRESHER_RESPONSE\u2063"


@dataclass(frozen=True)
class Rendered:
    prompt: str
    response: str
    direct_prefix: str
    instruction: str


def instruction_and_input(context: list[dict], meta: dict | None) -> tuple[str, str]:
    """The (instruction, input) pair a non-chat template fills in.

    Alpaca rows keep their own fields (meta). Other rows: the last user turn is the instruction;
    earlier turns (and a system message) are prepended as "User: ..."/"Assistant: ..." lines, so
    a multi-turn response is still conditioned on everything before it.
    """
    if meta and "instruction" in meta and len(context) == 1:
        return meta["instruction"], meta.get("input", "")
    *history, last = context
    lines = [f"{_ROLE_NAME[m['role']]}: {m['content']}" for m in history]
    instruction = "\n\n".join(lines + [last["content"]]) if lines else last["content"]
    return instruction, ""


_ROLE_NAME = {"system": "System", "user": "User", "assistant": "Assistant"}


def render(template: str, context: list[dict], response: str, meta: dict | None = None,
           tokenizer=None) -> Rendered:
    if template == "chat":
        return _render_chat(context, response, tokenizer)
    if template not in TEMPLATES:
        raise ConfigError(f"The 'template' parameter must be one of {', '.join(TEMPLATES)}. Got {template!r}.")
    ins, inp = instruction_and_input(context, meta)
    if template == "alpaca":
        prompt = ALPACA_INPUT.format(instruction=ins, input=inp) if inp else ALPACA_NO_INPUT.format(instruction=ins)
        return Rendered(prompt, response, "### Response:", ins)
    if template == "wiz":
        body = f"{ins}\nInput:{inp}" if inp else ins
        return Rendered(body + "\n\n### Response:", response, "### Response:", ins)
    if template == "vicuna":
        body = f"{ins}\nInput:\n{inp}" if inp else ins
        return Rendered(f"{VICUNA_SYSTEM} USER: {body} ASSISTANT:", response, "ASSISTANT:", ins)
    # "none" (Superfiltering): instruction and input each on a line, response appended directly.
    prompt = f"{ins}\n{inp}\n" if inp else f"{ins}\n"
    return Rendered(prompt, response, "", ins)


def _render_chat(context: list[dict], response: str, tokenizer) -> Rendered:
    """Tokenizer chat template. The direct prefix is the template applied to the assistant turn
    alone (as IterIT does), so it keeps any default system header the template inserts."""
    if tokenizer is None or not getattr(tokenizer, "chat_template", None):
        raise ConfigError("The 'chat' template needs a tokenizer with a chat template; this model has none. "
                          "Use template alpaca, wiz, vicuna or none.")
    prompt = tokenizer.apply_chat_template(context, tokenize=False, add_generation_prompt=True)
    direct = tokenizer.apply_chat_template([{"role": "assistant", "content": _PLACEHOLDER}], tokenize=False)
    direct_prefix = direct[: direct.index(_PLACEHOLDER)]
    user = [m["content"] for m in context if m["role"] == "user"]
    return Rendered(prompt, response, direct_prefix, user[-1] if user else "")


def end_of_turn_id(template: str, tokenizer) -> int | None:
    """The token that ends an assistant turn under ``template``: for "chat", the first token of what the chat
    template writes right after an assistant message (SmolLM2: <|im_end|>), unless that is only whitespace;
    for the other templates (and such chat templates) the tokenizer's end-of-sequence token, which SFT
    appends after the response. None when the tokenizer has neither."""
    if template == "chat" and getattr(tokenizer, "chat_template", None):
        text = tokenizer.apply_chat_template([{"role": "assistant", "content": _PLACEHOLDER}], tokenize=False)
        after = text[text.index(_PLACEHOLDER) + len(_PLACEHOLDER):]
        ids = tokenizer(after, add_special_tokens=False)["input_ids"] if after.strip() else []
        if ids:
            return int(ids[0])
    eos = tokenizer.eos_token_id
    return None if eos is None else int(eos)


def render_units(rows: Dataset, template: str, turns: str, tokenizer) -> tuple[list[Rendered], np.ndarray]:
    """Units to score and, for each, the row it belongs to (turns="all" gives several per row)."""
    units, owner = [], []
    for r, (msgs, meta) in enumerate(zip(rows.messages, rows.meta)):
        for context, response in split_turns(msgs, turns):
            units.append(render(template, context, response, meta, tokenizer))
            owner.append(r)
    return units, np.asarray(owner, dtype=np.int64)
