"""Response token spans: the one place that decides which tokens of a text are scored.

Given rendered (prompt, response, direct_prefix) units, produce for each unit two token sequences
(conditioned: prompt+response, direct: direct_prefix+response) and the half-open token span of
response tokens to score in each. Token j is scored from the logits at position j-1, so a span
always starts at >= 1.

Two rules (``span_rule``):
  offsets  (default, clean) Tokenise each full text once with offsets. Response tokens are those whose
           character end lies past the response start (a token straddling the boundary carries response
           characters, so it is scored). Both passes are truncated at ``max_length``; the direct pass is
           then cut to cover exactly the response characters the conditioned pass kept, so both means are
           over the same answer text.
  cherry   (faithful to tianyi-lab/Cherry_LLM data_analysis.py / data_by_IFD.py) Span start =
           len(tokenize(text[:text.rfind(response)])), i.e. the prefix tokenised on its own; conditioned
           text truncated at max_length; direct text truncated at max_length - L_P - 2 where L_P is the
           token length of the prompt (of the raw instruction for the wiz template, as in Cherry's code);
           rejected if that budget is <= 4, if either span is empty, or if len(tokenize(instruction)) +
           direct span length > max_length. At BPE boundaries this can differ from ``offsets`` by a token.
Units that cannot be scored get a reason in ``status`` (their spans are empty) and become NaN downstream.

Only the head of a long text is tokenised (``encode_heads``): a ShareGPT response often runs to thousands
of tokens of which max_length keeps 512 (the first 382 first turns of the bundled ShareGPT: 266,012 tokens,
139,557 of them within 512 a text), and tokenisation is a large share of IFD's time on a GPU. The text is cut at a whitespace well past where the kept tokens can end, and the head's tokens are
used only when the first max_length of them end at least ``HEAD_MARGIN`` characters before the cut;
otherwise the whole text is tokenised. This relies on tokenisation being local to words (true of the
byte-level BPE, SentencePiece and WordPiece tokenizers of causal LMs: no token spans a whitespace
followed by more text); tests/test_ifd.py checks it against whole-text tokenisation on real data.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np

from thresher.data.templates import Rendered
from thresher.errors import ConfigError

SPAN_RULES = ("offsets", "cherry")
OK = "ok"


@dataclass
class SpanBatch:
    cond_ids: list[np.ndarray] = field(default_factory=list)
    cond_span: list[tuple[int, int]] = field(default_factory=list)
    direct_ids: list[np.ndarray] = field(default_factory=list)
    direct_span: list[tuple[int, int]] = field(default_factory=list)
    status: list[str] = field(default_factory=list)


def _encode(tokenizer, texts: list[str], offsets: bool):
    enc = tokenizer(texts, add_special_tokens=True, return_offsets_mapping=offsets,
                    return_attention_mask=False)
    return enc


# A head of max_length x HEAD_CHARS_PER_TOKEN characters (+ margin) holds max_length tokens unless the
# text averages more than 6 characters a token (English prose: ~4.2 with the bundled tokenizer); such
# texts are simply tokenised whole.
HEAD_CHARS_PER_TOKEN = 6
HEAD_MARGIN = 512


def _head_cut(text: str, limit: int) -> int | None:
    """Where to cut ``text`` for a head of about ``limit`` characters: just before a whitespace in the
    last HEAD_MARGIN / 2 characters of the limit; None to tokenise it whole (short, or no whitespace)."""
    if len(text) <= limit:
        return None
    lo = limit - HEAD_MARGIN // 2
    cut = max(text.rfind(" ", lo, limit), text.rfind("\n", lo, limit))
    return cut if cut > 0 else None


def encode_heads(tokenizer, texts: list[str], max_tokens: int) -> tuple[list[np.ndarray], list[np.ndarray]]:
    """Token ids and (N, 2) character offsets of each text, limited to the first ``max_tokens`` tokens
    where the text has more; the same tokens as tokenising the whole text (see the module docstring)."""
    limit = max_tokens * HEAD_CHARS_PER_TOKEN + HEAD_MARGIN
    cuts = [_head_cut(t, limit) for t in texts]
    enc = _encode(tokenizer, [t if c is None else t[:c] for t, c in zip(texts, cuts)], True)
    ids = [np.asarray(x, dtype=np.int64) for x in enc["input_ids"]]
    offs = [np.asarray(x, dtype=np.int64).reshape(-1, 2) for x in enc["offset_mapping"]]
    redo = []
    for i, cut in enumerate(cuts):
        if cut is None:
            continue
        near = np.flatnonzero(offs[i][:, 1] > cut - HEAD_MARGIN)      # tokens ending close to the cut
        if near.size and near[0] >= max_tokens:
            ids[i], offs[i] = ids[i][:max_tokens], offs[i][:max_tokens]
        else:
            redo.append(i)
    if redo:
        enc = _encode(tokenizer, [texts[i] for i in redo], True)
        for j, i in enumerate(redo):
            ids[i] = np.asarray(enc["input_ids"][j], dtype=np.int64)
            offs[i] = np.asarray(enc["offset_mapping"][j], dtype=np.int64).reshape(-1, 2)
    return ids, offs


def build_spans(tokenizer, units: list[Rendered], max_length: int, rule: str = "offsets",
                template: str = "") -> SpanBatch:
    if rule not in SPAN_RULES:
        raise ConfigError(f"The 'span_rule' parameter must be one of {', '.join(SPAN_RULES)}. Got {rule!r}.")
    if not isinstance(max_length, int) or max_length < 2:
        raise ConfigError(f"The 'max_length' parameter must be an int >= 2. Got {max_length!r}.")
    if rule == "cherry":
        return _cherry_spans(tokenizer, units, max_length, template)
    return _offset_spans(tokenizer, units, max_length)


def _response_tokens(offsets: np.ndarray, char_start: int) -> np.ndarray:
    """Indices of real (non-special) tokens whose character end lies past char_start."""
    starts, ends = offsets[:, 0], offsets[:, 1]
    return np.flatnonzero((ends > char_start) & (ends > starts))


def _offset_spans(tokenizer, units, max_length) -> SpanBatch:
    cond_ids, cond_off = encode_heads(tokenizer, [u.prompt + u.response for u in units], max_length)
    direct_ids, direct_off = encode_heads(tokenizer, [u.direct_prefix + u.response for u in units], max_length)
    out = SpanBatch()
    for i, u in enumerate(units):
        c_ids, c_off, d_ids, d_off = cond_ids[i], cond_off[i], direct_ids[i], direct_off[i]
        c_tok = _response_tokens(c_off, len(u.prompt))
        c_tok = c_tok[(c_tok >= 1) & (c_tok < max_length)]
        if c_tok.size == 0:
            out_fail = "prompt fills max_length" if len(c_ids) >= max_length else "empty response span"
            _append(out, c_ids[:max_length], d_ids[:max_length], None, None, out_fail)
            continue
        covered = int(c_off[c_tok[-1], 1]) - len(u.prompt)        # response characters kept
        d_tok = _response_tokens(d_off, len(u.direct_prefix))
        d_tok = d_tok[(d_tok >= 1) & (d_off[d_tok, 1] <= len(u.direct_prefix) + covered) & (d_tok < max_length)]
        if d_tok.size == 0:
            _append(out, c_ids[:max_length], d_ids[:max_length], None, None, "empty direct span")
            continue
        c_span, d_span = (int(c_tok[0]), int(c_tok[-1]) + 1), (int(d_tok[0]), int(d_tok[-1]) + 1)
        _append(out, c_ids[: c_span[1]], d_ids[: d_span[1]], c_span, d_span, OK)
    return out


def _append(out: SpanBatch, c_ids, d_ids, c_span, d_span, status):
    out.cond_ids.append(np.asarray(c_ids, dtype=np.int64))
    out.direct_ids.append(np.asarray(d_ids, dtype=np.int64))
    out.cond_span.append(c_span or (0, 0))
    out.direct_span.append(d_span or (0, 0))
    out.status.append(status)


def _lengths(tokenizer, texts: list[str]) -> np.ndarray:
    return np.array([len(x) for x in _encode(tokenizer, texts, False)["input_ids"]], dtype=np.int64)


def _cherry_spans(tokenizer, units, max_length, template) -> SpanBatch:
    whole = [u.prompt + u.response for u in units]
    direct = [u.direct_prefix + u.response for u in units]
    c_all = encode_heads(tokenizer, whole, max_length)[0]
    d_all = encode_heads(tokenizer, direct, max_length)[0]
    c_t0 = _lengths(tokenizer, [w[: w.rfind(u.response)] for w, u in zip(whole, units)])
    d_t0 = _lengths(tokenizer, [d[: d.rfind(u.response)] for d, u in zip(direct, units)])
    # Cherry measures L_P on the rendered prompt (alpaca) but on the raw instruction for wiz.
    lp_texts = [u.instruction if template in ("wiz", "none") else u.prompt for u in units]
    l_p = np.minimum(_lengths(tokenizer, lp_texts), max_length)
    l_ins = np.minimum(_lengths(tokenizer, [u.instruction for u in units]), max_length)
    out = SpanBatch()
    for i in range(len(units)):
        c_ids = np.asarray(c_all[i][:max_length])
        budget = max_length - int(l_p[i]) - 2
        d_ids = np.asarray(d_all[i][: max(budget, 0)])
        c_span = (max(int(c_t0[i]), 1), len(c_ids))
        d_span = (max(int(d_t0[i]), 1), len(d_ids))
        status = OK
        if budget <= 4:
            status = "prompt fills max_length"
        elif c_span[0] >= c_span[1] or d_span[0] >= d_span[1]:
            status = "empty response span"
        elif int(l_ins[i]) + (d_span[1] - d_span[0]) > max_length:
            status = "instruction + response exceed max_length"
        ok = status == OK
        _append(out, c_ids, d_ids, c_span if ok else None, d_span if ok else None, status)
    return out
