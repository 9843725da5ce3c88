"""Training examples: the scoring code's templates and response spans turned into (input_ids, labels).

One row of the table becomes one example: the row's chosen assistant turn (``turns`` = "last" or
"first", as scoring's ``split_turns``) rendered with ``thresher.data.templates.render`` and tokenised by
``thresher.data.spans.build_spans`` (offsets rule). So the tokens a scorer scores are exactly the tokens
training supervises:

  mask_prompt=True   labels = -100 everywhere except the response span [start, end) that the IFD scorer
                     uses for ``loss_cond``; plus one end-of-sequence token after the response when
                     ``add_eos`` and the response was not cut by max_length (so the model learns to stop;
                     every paper's trainer appends one).
  mask_prompt=False  every real token is a label (CLUES trains on the full Alpaca sequence). Position 0 is
                     never predicted by a causal LM, whatever its label.
Padding is added by the collator with label -100. Rows whose span is empty (the prompt fills max_length,
an empty response) cannot be trained on; they are dropped and reported with the scorer's reason.

``turns="all"`` supervises every assistant reply of a row in one sequence (FastChat/Vicuna-style SFT on
ShareGPT): the row's LAST assistant turn is rendered as above (its prompt already holds every earlier
turn), the text is tokenised once with offsets, and each earlier assistant content is a labelled span
too, found by character position (``_assistant_chars``) and mapped to tokens with the offsets rule
(tokens whose character end lies inside the content: past its start, at most its end). System and user
text stays IGNORE; the end-of-sequence token follows the last reply only, under the same condition as
above. ``Examples.span`` is still the LAST reply's span (what scorers and IterIT score); the labels may
cover more. A span cut by max_length loses its tail; the sequence ends after its last labelled token; a
row whose every span is cut away is dropped with a reason. If max_length cuts the last reply away
entirely but an earlier reply survives, the row is kept and its ``span`` is empty, (n, n).
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field

import numpy as np

from thresher.data import TURNS
from thresher.data.table import Dataset
from thresher.data.templates import render
from thresher.errors import ConfigError
from thresher.data.spans import OK, build_spans
from thresher.data.templates import render_units

IGNORE = -100            # label of a token that carries no loss (torch cross-entropy's ignore_index)
_MARK = "\u2063"             # invisible separator: brackets a message index in a marked render
_MARK_RE = re.compile(f"{_MARK}(\\d+){_MARK}")


@dataclass
class Examples:
    input_ids: list[np.ndarray]            # per kept row: int64 token ids, length <= max_length
    labels: list[np.ndarray]               # same shapes; IGNORE where no loss
    span: list[tuple[int, int]]            # per kept row: the scorer's (last) response span [start, end);
                                           # with turns="all" the labels may cover earlier replies too
    rows: np.ndarray                       # (n_kept,) positions of the kept rows in the input table
    skipped: dict[int, str] = field(default_factory=dict)   # row position -> reason it was dropped

    def __len__(self) -> int:
        return len(self.input_ids)

    def n_tokens(self) -> int:
        return int(sum(len(x) for x in self.input_ids))


def build_examples(table: Dataset, tokenizer, *, template: str = "alpaca", max_length: int = 512,
                   mask_prompt: bool = True, add_eos: bool = True, turns: str = "last") -> Examples:
    """Tokenise every row of ``table`` for supervised fine-tuning (see the module docstring)."""
    if turns not in TURNS:
        raise ConfigError(f"The 'turns' parameter of training must be one of {', '.join(TURNS)} "
                          f"(last/first: one supervised response per row; all: every assistant reply). "
                          f"Got {turns!r}.")
    if turns == "all":
        return _all_turn_examples(table, tokenizer, template, max_length, mask_prompt, add_eos)
    units, owner = render_units(table, template, turns, tokenizer)
    sp = build_spans(tokenizer, units, max_length, "offsets", template) if units else None
    eos = tokenizer.eos_token_id
    if add_eos and eos is None:
        raise ConfigError("add_eos=True needs a tokenizer with an end-of-sequence token; this one has none. "
                          "Pass add_eos=False.")
    out = Examples([], [], [], np.zeros(0, dtype=np.int64))
    has_unit = np.zeros(len(table), dtype=bool)
    has_unit[owner] = True
    kept = []
    for u, r in enumerate(owner):                   # one unit per row (turns is last/first)
        if sp.status[u] != OK:
            out.skipped[int(r)] = sp.status[u]
            continue
        ids, (start, end) = sp.cond_ids[u], sp.cond_span[u]
        # The scorer cuts the sequence right after the kept response; a room left below max_length
        # means the whole response fits, so the end-of-sequence token can follow it.
        if add_eos and len(ids) < max_length:
            ids = np.append(ids, np.int64(eos))
        labels = ids.copy() if not mask_prompt else np.full(len(ids), IGNORE, dtype=np.int64)
        if mask_prompt:
            labels[start:] = ids[start:]            # response span (+ eos); prompt stays IGNORE
        out.input_ids.append(ids)
        out.labels.append(labels)
        out.span.append((int(start), int(end)))
        kept.append(int(r))
    for r in np.flatnonzero(~has_unit):
        out.skipped[int(r)] = "no assistant turn"
    out.rows = np.asarray(kept, dtype=np.int64)
    return out


def _all_turn_examples(table: Dataset, tokenizer, template: str, max_length: int, mask_prompt: bool,
                       add_eos: bool) -> Examples:
    """turns="all": one sequence per row, every assistant reply labelled (see the module docstring)."""
    if not isinstance(max_length, int) or max_length < 2:
        raise ConfigError(f"The 'max_length' parameter must be an int >= 2. Got {max_length!r}.")
    eos = tokenizer.eos_token_id
    if add_eos and eos is None:
        raise ConfigError("add_eos=True needs a tokenizer with an end-of-sequence token; this one has none. "
                          "Pass add_eos=False.")
    units, owner = render_units(table, template, "last", tokenizer)
    texts = [u.prompt + u.response for u in units]
    # One tokenisation of each full text; offsets (n_tokens, 2) give every span, earlier or last.
    enc = tokenizer(texts, add_special_tokens=True, return_offsets_mapping=True,
                    return_attention_mask=False) if units else None
    out = Examples([], [], [], np.zeros(0, dtype=np.int64))
    has_unit = np.zeros(len(table), dtype=bool)
    has_unit[owner] = True
    kept = []
    for u, r in enumerate(owner):                   # one unit per row: its last assistant turn
        msgs = table.messages[r]
        last = max(i for i, m in enumerate(msgs) if m["role"] == "assistant")
        earlier = _assistant_chars(template, msgs[:last], table.meta[r], tokenizer, units[u].prompt,
                                   table.ids[r])
        ids = np.asarray(enc["input_ids"][u], dtype=np.int64)
        off = np.asarray(enc["offset_mapping"][u], dtype=np.int64).reshape(-1, 2)
        spans = [_token_span(off, cs, ce, max_length) for cs, ce in earlier]
        final = _token_span(off, len(units[u].prompt), len(texts[u]), max_length)
        spans = [sp for sp in spans + [final] if sp[0] < sp[1]]
        if not spans:
            out.skipped[int(r)] = "prompt fills max_length" if len(ids) >= max_length else "empty response span"
            continue
        ids = ids[: spans[-1][1]]                   # nothing after the last labelled token is learnt from
        has_final = final[0] < final[1]
        if add_eos and has_final and len(ids) < max_length:
            ids = np.append(ids, np.int64(eos))     # the last reply is whole: the model learns to stop
        labels = ids.copy() if not mask_prompt else np.full(len(ids), IGNORE, dtype=np.int64)
        if mask_prompt:
            for s, e in spans:
                labels[s:e] = ids[s:e]
            if has_final:
                labels[final[1]:] = ids[final[1]:]  # the end-of-sequence token, when appended
        out.input_ids.append(ids)
        out.labels.append(labels)
        out.span.append((int(final[0]), int(final[1])) if has_final else (len(ids), len(ids)))
        kept.append(int(r))
    for r in np.flatnonzero(~has_unit):
        out.skipped[int(r)] = "no assistant turn"
    out.rows = np.asarray(kept, dtype=np.int64)
    return out


def _token_span(off: np.ndarray, cs: int, ce: int, max_length: int) -> tuple[int, int]:
    """Token span [start, end) of the characters [cs, ce), offsets rule: real (non-empty) tokens whose
    character end lies in (cs, ce]; a token straddling the start carries content, so it counts. Token 0 is
    never predicted and tokens from max_length on are cut. (end, end) style empty span when none is left.

    off: (n_tokens, 2) character offsets of one tokenised text.
    """
    starts, ends = off[:, 0], off[:, 1]
    tok = np.flatnonzero((ends > cs) & (ends <= ce) & (ends > starts))
    tok = tok[(tok >= 1) & (tok < max_length)]
    return (int(tok[0]), int(tok[-1]) + 1) if tok.size else (0, 0)


def _assistant_chars(template: str, context: list[dict], meta, tokenizer, prompt: str,
                     row_id) -> list[tuple[int, int]]:
    """Character spans [start, end) of the assistant contents of ``context`` inside ``prompt`` (the
    rendered prompt of the row's last turn), in order.

    The context is rendered a second time with each message's content replaced by a unique marker; the
    text between markers is the template's own. Putting the real contents back must give ``prompt``
    exactly, and then every content's position is known without searching for it (a search could land
    on the same words in a user turn or in the template's header). A chat template that trims contents
    is accepted (the stripped content is the span). Any other rewrite is a ConfigError: silently dropping
    supervision of a reply would be worse.
    """
    if not any(m["role"] == "assistant" for m in context):
        return []
    marked = [{"role": m["role"], "content": f"{_MARK}{i}{_MARK}"} for i, m in enumerate(context)]
    parts = _MARK_RE.split(render(template, marked, "", meta, tokenizer).prompt)   # glue, idx, glue, ...
    wanted = {i for i, m in enumerate(context) if m["role"] == "assistant"}
    for strip in (False, True):
        pieces, spans, seen, pos = [], [], set(), 0
        for j, piece in enumerate(parts):
            if j % 2:                                # a marker: message index
                i = int(piece)
                piece = context[i]["content"].strip() if strip else context[i]["content"]
                if i in wanted:
                    spans.append((pos, pos + len(piece)))
                    seen.add(i)
            pieces.append(piece)
            pos += len(piece)
        if "".join(pieces) == prompt and seen == wanted:
            return spans
    missing = sorted(wanted - seen) or sorted(wanted)
    raise ConfigError(f"Row {row_id!r}: the {template!r} template does not write assistant turn(s) at message "
                      f"position(s) {missing} verbatim into the prompt, so turns='all' cannot find the text to "
                      "supervise. Use turns='last' or 'first', or a template that keeps each message's text "
                      "(alpaca, wiz, vicuna, none, or a chat template that does not rewrite messages).")
