"""turns="all" in fine-tuning: every assistant reply of a multi-turn row is labelled, user/system text is not;
"last"/"first" stay the scorer's one-response examples; truncation; a template that rewrites a reply is an
error; a short real LoRA run on multi-turn ShareGPT rows."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch
from transformers import AutoTokenizer

from thresher.data import split_turns
from thresher.data.table import Dataset, LoadReport
from thresher.data.templates import ALPACA_NO_INPUT, render
from thresher.errors import ConfigError
from thresher.models.bundled import converted_model_dir
from thresher.data.spans import build_spans
from thresher.training import IGNORE, build_examples, resolve_config, train

# Hand-made 3-turn conversations. The second one is planted against a text search: its first reply "ok"
# also occurs earlier inside the user's words, and its second reply is the very word the alpaca-family
# templates write before every reply ("Assistant: ...").
CONV = [("user", "What is the capital of France?"), ("assistant", "The capital of France is Paris."),
        ("user", "And of Italy?"), ("assistant", "Rome is the capital of Italy."),
        ("user", "Which of the two cities is older?"),
        ("assistant", "Rome is older; it was founded long before Paris grew into a city.")]
TRICKY = [("system", "Be brief."), ("user", "Say ok, ok?"), ("assistant", "ok"),
          ("user", "Now repeat your role name, capitalised."), ("assistant", "Assistant"),
          ("user", "Thanks, that is all."), ("assistant", "You are welcome, ok.")]
SMOL_SYSTEM = "<|im_start|>system\nYou are a helpful AI assistant named SmolLM, trained by Hugging Face<|im_end|>\n"


def _table(convs) -> Dataset:
    msgs = [[{"role": r, "content": c} for r, c in conv] for conv in convs]
    n = len(msgs)
    return Dataset(ids=[f"c{i}" for i in range(n)], messages=msgs, raw=[{}] * n,
                   meta=[{"index": i} for i in range(n)], fmt="messages", container="jsonl", source="hand",
                   report=LoadReport(path="hand", fmt="messages", container="jsonl"))


def _hand_prompt(template: str, conv) -> tuple[str, list[tuple[int, int]]]:
    """The last turn's prompt written by hand, piece by piece, and where each earlier reply sits in it."""
    *context, _ = conv
    pieces, where = [], []
    if template == "alpaca":
        head, tail = ALPACA_NO_INPUT.split("{instruction}")
        pieces.append(head)
        for role, text in context[:-1]:
            pieces.append(f"{role.capitalize()}: ")
            if role == "assistant":
                where.append(len("".join(pieces)))
            pieces.append(text + "\n\n")
        pieces.append(context[-1][1] + tail)
    else:                                                      # SmolLM2's chat template
        pieces.append("" if context[0][0] == "system" else SMOL_SYSTEM)
        for role, text in context:
            pieces.append(f"<|im_start|>{role}\n")
            if role == "assistant":
                where.append(len("".join(pieces)))
            pieces.append(text + "<|im_end|>\n")
        pieces.append("<|im_start|>assistant\n")
    replies = [text for role, text in context if role == "assistant"]
    return "".join(pieces), [(s, s + len(t)) for s, t in zip(where, replies)]


def _runs(labels: np.ndarray) -> list[np.ndarray]:
    """Maximal runs of labelled token positions."""
    on = np.flatnonzero(labels != IGNORE)
    return np.split(on, np.flatnonzero(np.diff(on) > 1) + 1) if on.size else []


@pytest.fixture(scope="module")
def tok():
    return AutoTokenizer.from_pretrained(converted_model_dir())


@pytest.fixture(scope="module")
def multi_turn():
    """Real ShareGPT rows with at least two assistant replies, shortest first."""
    from thresher.data.readers import bundled_sharegpt_path, load

    ds = load(bundled_sharegpt_path(), limit=400, lenient=True, on_invalid="skip")
    multi = [i for i, m in enumerate(ds.messages) if sum(x["role"] == "assistant" for x in m) >= 2]
    single = [i for i, m in enumerate(ds.messages) if sum(x["role"] == "assistant" for x in m) == 1]
    multi.sort(key=lambda i: sum(len(x["content"]) for x in ds.messages[i]))
    assert len(multi) >= 20 and len(single) >= 10
    return ds, multi, single


# ------------------------------------------------------------------ every reply labelled, nothing else
@pytest.mark.parametrize("template", ["alpaca", "chat"])
def test_all_labels_exactly_the_assistant_replies(tok, template):
    ex = build_examples(_table([CONV, TRICKY]), tok, template=template, max_length=512, turns="all")
    assert list(ex.rows) == [0, 1] and ex.skipped == {}
    for j, conv in enumerate([CONV, TRICKY]):
        ids, labels = ex.input_ids[j], ex.labels[j]
        prompt, where = _hand_prompt(template, conv)
        assert render(template, [{"role": r, "content": c} for r, c in conv[:-1]], "", None, tok).prompt == prompt
        text = prompt + conv[-1][1]
        off = np.asarray(tok(text, return_offsets_mapping=True)["offset_mapping"])       # (n, 2)
        where.append((len(prompt), len(text)))
        replies = [c for r, c in conv if r == "assistant"]
        runs = _runs(labels)
        assert len(runs) == 3
        for k, (run, reply, (cs, ce)) in enumerate(zip(runs, replies, where)):
            np.testing.assert_array_equal(labels[run], ids[run])
            body = run[:-1] if k == 2 else run                  # the last run ends with the eos token
            # Decoded, each run is the reply (the alpaca family writes "Assistant: " before it, whose space
            # BPE glues to the reply's first word); by offsets it sits exactly where the reply was written.
            assert tok.decode(ids[body]).strip() == reply
            assert off[body[-1], 1] == ce and off[body[0], 0] in (cs, cs - 1)
        assert ids[-1] == tok.eos_token_id and labels[-1] == tok.eos_token_id and len(ids) == runs[-1][-1] + 1
        # Examples.span is the last reply's span, eos excluded
        assert ex.span[j] == (int(runs[-1][0]), int(runs[-1][-1]))


def test_unmasked_all_labels_every_token(tok):
    ex = build_examples(_table([CONV]), tok, template="chat", max_length=512, turns="all", mask_prompt=False)
    masked = build_examples(_table([CONV]), tok, template="chat", max_length=512, turns="all")
    np.testing.assert_array_equal(ex.input_ids[0], masked.input_ids[0])
    np.testing.assert_array_equal(ex.labels[0], ex.input_ids[0])


# ------------------------------------------------------------------ last / first unchanged
def _naive(table, tok, template, turns, max_length):
    """The one-response examples written out: render the chosen turn, take the scorer's span, add eos."""
    ids_out, lab_out, spans, rows = [], [], [], []
    for r, (msgs, meta) in enumerate(zip(table.messages, table.meta)):
        units = split_turns(msgs, turns)
        if not units:
            continue
        sp = build_spans(tok, [render(template, units[0][0], units[0][1], meta, tok)], max_length)
        if sp.status[0] != "ok":
            continue
        ids, (s, e) = list(sp.cond_ids[0]), sp.cond_span[0]
        if len(ids) < max_length:
            ids.append(tok.eos_token_id)
        ids_out.append(np.array(ids))
        lab_out.append(np.array([IGNORE] * s + ids[s:]))
        spans.append((s, e))
        rows.append(r)
    return ids_out, lab_out, spans, rows


@pytest.mark.parametrize("template,turns", [("alpaca", "last"), ("chat", "last"), ("chat", "first")])
def test_one_response_turns_equal_the_naive_reference(tok, multi_turn, template, turns):
    ds, multi, single = multi_turn
    table = ds.subset(multi[:12] + single[:6])
    ex = build_examples(table, tok, template=template, max_length=256, turns=turns)
    ids, labels, spans, rows = _naive(table, tok, template, turns, 256)
    assert list(ex.rows) == rows and ex.span == spans and len(rows) >= 10 and ex.skipped
    for a, b in zip(ex.input_ids + ex.labels, ids + labels):
        np.testing.assert_array_equal(a, b)


def test_all_equals_last_on_single_reply_rows_and_extends_it_on_multi(tok, multi_turn):
    ds, multi, single = multi_turn
    table = ds.subset(single[:8] + multi[:40])
    last = build_examples(table, tok, template="chat", max_length=256, turns="last")
    every = build_examples(table, tok, template="chat", max_length=256, turns="all")
    pos = {int(r): j for j, r in enumerate(every.rows)}
    assert set(last.rows) < set(pos)          # "all" also keeps rows whose last reply max_length cut away
    n_more = 0
    for i, r in enumerate(last.rows):
        j = pos[int(r)]
        np.testing.assert_array_equal(every.input_ids[j], last.input_ids[i])
        assert every.span[j] == last.span[i]
        s = last.span[i][0]
        np.testing.assert_array_equal(every.labels[j][s:], last.labels[i][s:])    # the last reply (+eos)
        if r < 8:
            np.testing.assert_array_equal(every.labels[j], last.labels[i])          # one reply: identical
        else:
            n_more += bool((every.labels[j][:s] != IGNORE).any())
    assert n_more == int((last.rows >= 8).sum()) >= 8   # every multi-turn row gains earlier labels
    for r in set(pos) - set(last.rows):       # last reply cut away: empty span at the end, earlier labels
        j = pos[r]
        n = len(every.input_ids[j])
        assert every.span[j] == (n, n) and n <= 256 and every.labels[j][-1] != IGNORE
        assert every.input_ids[j][-1] != tok.eos_token_id and last.skipped[r] == "prompt fills max_length"


# ------------------------------------------------------------------ truncation
def test_truncation_cuts_spans_and_skips_rows_with_nothing_left(tok):
    table = _table([CONV])
    full = build_examples(table, tok, template="chat", max_length=512, turns="all")
    r1, r2, r3 = _runs(full.labels[0])
    # Cut inside the second reply: the first is whole, the second stops at max_length, the last is gone.
    cut = int(r2[len(r2) // 2])
    ex = build_examples(table, tok, template="chat", max_length=cut, turns="all")
    ids, labels = ex.input_ids[0], ex.labels[0]
    assert len(ids) == cut and ids[-1] != tok.eos_token_id
    np.testing.assert_array_equal(ids, full.input_ids[0][:cut])
    np.testing.assert_array_equal(labels, full.labels[0][:cut])
    assert [len(r) for r in _runs(labels)] == [len(r1), cut - r2[0]]
    assert ex.span == [(cut, cut)]                           # the last reply was cut away entirely
    # Cut inside the last reply: it keeps its head and gets no eos.
    cut = int(r3[len(r3) // 2])
    ex = build_examples(table, tok, template="chat", max_length=cut, turns="all")
    assert ex.span == [(int(r3[0]), cut)] and len(ex.input_ids[0]) == cut
    assert [len(r) for r in _runs(ex.labels[0])] == [len(r1), len(r2), cut - r3[0]]
    # Cut before the first reply: nothing to learn, skipped with the scorer's reason.
    ex = build_examples(_table([CONV, CONV]), tok, template="chat", max_length=int(r1[0]), turns="all")
    assert len(ex) == 0 and ex.skipped == {0: "prompt fills max_length", 1: "prompt fills max_length"}
    ex = build_examples(_table([CONV[:1]]), tok, template="chat", max_length=64, turns="all")
    assert ex.skipped == {0: "no assistant turn"}


# ------------------------------------------------------------------ templates that rewrite replies
def _rewriting_tokenizer(expr: str):
    t = AutoTokenizer.from_pretrained(converted_model_dir())
    t.chat_template = t.chat_template.replace("message['content']", f"(message['content']{expr})")
    assert t.chat_template.count(expr) == 1
    return t


def test_a_template_that_rewrites_a_reply_is_an_error(tok):
    upper = _rewriting_tokenizer(" | upper")
    with pytest.raises(ConfigError, match=r"Row 'c0'.*'chat' template.*position\(s\) \[1, 3\]"):
        build_examples(_table([CONV]), upper, template="chat", max_length=512, turns="all")
    build_examples(_table([CONV]), upper, template="chat", max_length=512, turns="last")   # one reply: fine
    # A template that trims contents still writes the reply's text: the stripped reply is labelled.
    trim = _rewriting_tokenizer(" | trim")
    padded = [(r, c + "  \n") if r == "assistant" else (r, c) for r, c in CONV]
    ex = build_examples(_table([padded]), trim, template="chat", max_length=512, turns="all")
    runs = _runs(ex.labels[0])
    assert [tok.decode(ex.input_ids[0][r]) for r in runs[:2]] == [CONV[1][1], CONV[3][1]]


def test_turns_choice_is_checked(tok):
    assert resolve_config(overrides={"turns": "all"}).turns == "all"
    with pytest.raises(ConfigError, match="turns"):
        resolve_config(overrides={"turns": "every"})
    with pytest.raises(ConfigError, match=r"last, first, all.*Got 'every'"):
        build_examples(_table([CONV]), tok, turns="every")


# ------------------------------------------------------------------ a short real run
def _masked_loss(model, ex):
    from trl.trainer.sft_trainer import DataCollatorForLanguageModeling

    batch = DataCollatorForLanguageModeling(pad_token_id=0)(
        [{"input_ids": i.tolist(), "labels": l.tolist()} for i, l in zip(ex.input_ids, ex.labels)])
    model.eval()
    with torch.no_grad():
        return float(model(**batch).loss)


def test_lora_run_with_all_turns_lowers_their_loss(tok, multi_turn, tmp_path, one_thread):
    ds, multi, _ = multi_turn
    kw = dict(template="chat", max_length=128, turns="all")
    # four real rows in which at least two replies start within 128 tokens
    ex = build_examples(ds.subset(multi), tok, **kw)
    table = ds.subset([multi[r] for r, lab in zip(ex.rows, ex.labels) if len(_runs(lab)) >= 2][:4])
    res = train(table, out=tmp_path / "run", batch_size=2, grad_accum=1, max_steps=4, lr=5e-3, logging_steps=1,
                device="cpu", dtype="float32", seed=0, save_steps=4, **kw)
    assert json.loads((tmp_path / "run" / "config.json").read_text())["config"]["turns"] == "all"
    ex = build_examples(table, tok, **kw)
    assert len(ex) == 4 and all(len(_runs(lab)) >= 2 for lab in ex.labels)
    after = _masked_loss(res.model, ex)
    with res.model.disable_adapter():
        before = _masked_loss(res.model, ex)
    assert after < before - 0.05, (before, after)
