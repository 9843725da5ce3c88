"""IFD and perplexity on the bundled real model: parity with a naive one-sample reference, invariance
to batching/order/padding, a planted-defect check, and the Cherry-vs-offsets span boundary."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from thresher.data.records import split_turns
from thresher.data.table import Dataset, LoadReport
from thresher.data.templates import render
from thresher.engine.scoring import score_dataset
from thresher.data.spans import HEAD_CHARS_PER_TOKEN, HEAD_MARGIN, _head_cut, build_spans, encode_heads
from thresher.scoring import make_scorer
from thresher.models.context import ModelContext

pytestmark = pytest.mark.slow


def naive_response_loss(model, tok, prefix: str, response: str) -> float:
    """Deliberately plain reference: one sample, full logits, mean NLL of the response tokens
    (tokens whose character span ends inside the response), nothing truncated."""
    text = prefix + response
    enc = tok(text, return_offsets_mapping=True)
    ids = torch.tensor([enc["input_ids"]])
    with torch.no_grad():
        logits = model(ids).logits[0].double()
    logp = torch.log_softmax(logits, dim=-1)
    losses = []
    for j, (a, b) in enumerate(enc["offset_mapping"]):
        if j >= 1 and b > len(prefix) and b > a:
            losses.append(-logp[j - 1, enc["input_ids"][j]].item())
    return float(np.mean(losses))


def _rows(ds: Dataset, n: int) -> Dataset:
    return ds.subset(range(n))


@pytest.mark.parametrize("template", ["alpaca", "none"])
def test_ifd_and_perplexity_match_naive_reference(ctx, sharegpt_short, cache_root, template):
    ds = _rows(sharegpt_short, 32)
    lm = ctx.lm()
    ifd = score_dataset(ds, make_scorer("ifd", template=template, turns="first"), ctx, shard_size=16,
                        cache_root=cache_root)
    ppl = score_dataset(ds, make_scorer("perplexity", template=template, turns="first"), ctx, shard_size=16,
                        cache_root=cache_root)
    cond, direct = [], []
    for msgs, meta in zip(ds.messages, ds.meta):
        context, resp = split_turns(msgs, "first")[0]
        r = render(template, context, resp, meta, lm.tokenizer)
        cond.append(naive_response_loss(lm.model, lm.tokenizer, r.prompt, r.response))
        direct.append(naive_response_loss(lm.model, lm.tokenizer, r.direct_prefix, r.response))
    cond, direct = np.array(cond), np.array(direct)
    assert (ifd["status"] == "ok").all()
    np.testing.assert_allclose(ifd["loss_cond"], cond, atol=1e-4)
    np.testing.assert_allclose(ifd["loss_direct"], direct, atol=1e-4)
    np.testing.assert_allclose(ifd["ifd_loss_ratio"], cond / direct, atol=1e-4)
    np.testing.assert_allclose(ifd["ifd_ppl_ratio"], np.exp(cond - direct), atol=1e-4)
    np.testing.assert_allclose(ppl["ppl"], np.exp(cond), rtol=1e-4)
    # Not a constant: real IFDs spread out.
    assert ifd["ifd"].std() > 0.05


def _scores(ds, ctx_kwargs, cache_root, **params):
    c = ModelContext("bundled", device="cpu", dtype="float32", **ctx_kwargs)
    c._lm = None
    return score_dataset(ds, make_scorer("ifd", **params), c, shard_size=len(ds), cache_root=cache_root)


def test_ifd_invariant_to_batch_size_order_and_padding(ctx, sharegpt_short, tmp_path):
    ds = _rows(sharegpt_short, 16)
    lm = ctx.lm()
    results = {}
    for name, kw in {"bs1": dict(max_batch_size=1), "bs4": dict(max_batch_size=4), "bs16": dict(max_batch_size=16),
                     "left": dict(max_batch_size=16, padding_side="left")}.items():
        c = ModelContext("bundled", device="cpu", dtype="float32", **kw)
        c.lm().model, c.lm().tokenizer, c.lm().device, c.lm().dtype = lm.model, lm.tokenizer, lm.device, lm.dtype
        results[name] = score_dataset(ds, make_scorer("ifd", template="alpaca", turns="first"), c,
                                      shard_size=16, cache_root=tmp_path / name)["ifd"].to_numpy()
    perm = np.random.default_rng(0).permutation(len(ds))
    shuffled = score_dataset(ds.subset(perm), make_scorer("ifd", template="alpaca", turns="first"), ctx,
                             shard_size=16, cache_root=tmp_path / "shuf")["ifd"].to_numpy()
    back = np.empty_like(shuffled)
    back[perm] = shuffled
    for name, v in results.items():
        np.testing.assert_allclose(v, results["bs1"], atol=1e-4, err_msg=name)
    np.testing.assert_allclose(back, results["bs1"], atol=1e-4)


def test_planted_mismatched_responses_have_higher_ifd(ctx, sharegpt_short, cache_root):
    """Pair 40 instructions with other samples' responses: their IFD must rise above the clean pairs'."""
    ds = sharegpt_short.subset(range(40))
    pairs = [split_turns(m, "first")[0] for m in ds.messages]
    shift = [(i + 17) % 40 for i in range(40)]
    msgs = [c + [{"role": "assistant", "content": r}] for c, r in pairs] + \
           [pairs[i][0] + [{"role": "assistant", "content": pairs[j][1]}] for i, j in enumerate(shift)]
    planted = Dataset(ids=[f"clean{i}" for i in range(40)] + [f"swap{i}" for i in range(40)], messages=msgs,
                      raw=[{} for _ in msgs], meta=[{"index": i} for i in range(80)], fmt="messages",
                      container="jsonl", source="planted", report=LoadReport("planted", "messages", "jsonl"))
    s = score_dataset(planted, make_scorer("ifd", template="alpaca"), ctx, shard_size=40, cache_root=cache_root)
    clean, swapped = s["ifd"].to_numpy()[:40], s["ifd"].to_numpy()[40:]
    frac = float((swapped > np.median(clean)).mean())
    assert frac >= 0.8, f"only {frac:.0%} of mismatched pairs above the clean median"


def test_cherry_and_offsets_span_rules_differ_at_bpe_boundary(ctx):
    """Response '//...' after '### Response:' merges with the prompt's ':' into one token '://'.
    offsets scores that straddling token; Cherry's rule (tokenise the prefix alone) starts one later."""
    tok = ctx.lm().tokenizer
    r = render("alpaca", [{"role": "user", "content": "Start a C++ line comment."}], "// a comment")
    off = build_spans(tok, [r], 512, "offsets", "alpaca")
    che = build_spans(tok, [r], 512, "cherry", "alpaca")
    pieces = tok.convert_ids_to_tokens(off.cond_ids[0].tolist())
    s_off, s_che = off.cond_span[0][0], che.cond_span[0][0]
    assert s_che == s_off + 1
    assert tok.convert_tokens_to_string([pieces[s_off]]) == "://"           # the straddling token
    assert off.cond_span[0][1] == che.cond_span[0][1] == len(off.cond_ids[0])


def test_cherry_rule_rejects_when_prompt_fills_budget(ctx):
    tok = ctx.lm().tokenizer
    r = render("alpaca", [{"role": "user", "content": "word " * 200}], "short answer")
    che = build_spans(tok, [r], 128, "cherry", "alpaca")
    off = build_spans(tok, [r], 128, "offsets", "alpaca")
    assert che.status[0] == "prompt fills max_length" and off.status[0] == "prompt fills max_length"


def test_head_tokenisation_matches_whole_text(ctx, sharegpt_long_texts):
    """encode_heads tokenises only the head of a long text: its tokens and offsets must be whole-text
    tokenisation's first max_tokens, on real ShareGPT turns and on texts built to break it (runs with no
    whitespace, whitespace runs, multi-byte characters, code, tokens over 6 characters), and both the
    cut path and the fall-back (whole text) path must run."""
    tok = ctx.lm().tokenizer
    texts = sharegpt_long_texts + [
        "x" * 5000 + " tail", "ab " * 3000, "  \n\t " * 2000 + "end", "数据选择 " * 1500, "é😀 " * 3000,
        "def f(x):\n    return x  # comment\n" * 300, "word " * 400 + "z" * 3000 + " word" * 500,
        ("=" * 64 + " ") * 200]
    for max_tokens in (16, 64, 512):
        ids, offs = encode_heads(tok, texts, max_tokens)
        whole = tok(texts, return_offsets_mapping=True, return_attention_mask=False)
        cut = fallback = 0
        for i, t in enumerate(texts):
            w_ids = np.asarray(whole["input_ids"][i])
            w_off = np.asarray(whole["offset_mapping"][i]).reshape(-1, 2)
            n = len(ids[i])
            assert n == len(w_ids) or n == max_tokens < len(w_ids), (max_tokens, i)
            assert np.array_equal(ids[i], w_ids[:n]) and np.array_equal(offs[i], w_off[:n]), (max_tokens, i)
            cut += n < len(w_ids)
            fallback += _head_cut(t, max_tokens * HEAD_CHARS_PER_TOKEN + HEAD_MARGIN) is not None and \
                n == len(w_ids) > max_tokens
        assert cut > 0, max_tokens
        if max_tokens == 16:
            assert fallback > 0                  # the '=' * 64 text: 16 tokens span more than the head


def test_truncation_scores_same_answer_chars_in_both_passes(ctx, sharegpt_short):
    """With a long response cut at max_length, the direct pass covers exactly the kept response text."""
    tok = ctx.lm().tokenizer
    r = render("alpaca", [{"role": "user", "content": "Tell a story."}], "Once upon a time " * 60)
    sp = build_spans(tok, [r], 96, "offsets", "alpaca")
    (c0, c1), (d0, d1) = sp.cond_span[0], sp.direct_span[0]
    kept_c = tok.decode(sp.cond_ids[0][c0:c1])
    kept_d = tok.decode(sp.direct_ids[0][d0:d1])
    assert c1 == 96 and kept_c == kept_d


def test_turns_all_aggregates_token_weighted(ctx, cache_root):
    msgs = [[{"role": "user", "content": "What is 2+2?"}, {"role": "assistant", "content": "2+2 equals 4."},
             {"role": "user", "content": "And 3+3?"}, {"role": "assistant", "content": "3+3 equals 6."}]]
    ds = Dataset(ids=["a"], messages=msgs, raw=[{}], meta=[{"index": 0}], fmt="messages", container="jsonl",
                 source="t", report=LoadReport("t", "messages", "jsonl"))
    first = score_dataset(ds, make_scorer("ifd", turns="first"), ctx, cache_root=cache_root)
    last = score_dataset(ds, make_scorer("ifd", turns="last"), ctx, cache_root=cache_root)
    both = score_dataset(ds, make_scorer("ifd", turns="all"), ctx, cache_root=cache_root)
    n1, n2 = first["n_resp_tokens"][0], last["n_resp_tokens"][0]
    assert both["n_resp_tokens"][0] == n1 + n2
    expect = (first["loss_cond"][0] * n1 + last["loss_cond"][0] * n2) / (n1 + n2)
    # The "all" pass batches both turns together, so float32 sums differ in the last bits (~2e-6
    # measured); a wrong weighting (unweighted mean of the two turns) is off by far more.
    assert both["loss_cond"][0] == pytest.approx(expect, abs=2e-5)
    assert abs(both["loss_cond"][0] - (first["loss_cond"][0] + last["loss_cond"][0]) / 2) > 1e-3 or n1 == n2


def test_vocab_sliced_head_equals_full_cross_entropy(ctx, sharegpt_short):
    """The online log-sum-exp over vocabulary slices equals cross-entropy on full logits: on the bundled
    model's real head and real hidden states (a slice width that leaves a short last slice, and the
    default), and on a tiny random model whose head has a bias and soft-capped logits (the bundled head
    has neither; tiny because only the head's arithmetic is under test)."""
    from transformers import LlamaConfig, LlamaForCausalLM

    from thresher.models.hf import HFCausalLM

    lm = ctx.lm()
    r = render("alpaca", *split_turns(sharegpt_short.messages[0], "first")[0], {}, lm.tokenizer)
    ids = torch.tensor([lm.tokenizer(r.prompt + r.response)["input_ids"]])
    with torch.inference_mode():
        states = lm._decoder()(input_ids=ids).last_hidden_state[0, :-1]
        targets = ids[0, 1:]
        # Reference in float64; float32 GEMMs (MKL or oneDNN) round logits of up to ~35 at about 1e-5.
        w = lm.model.get_output_embeddings().weight
        full = torch.nn.functional.cross_entropy(states.double() @ w.double().t(), targets, reduction="none")
        assert lm.cpu_gemm in ("onednn", "torch")
        for vocab_chunk in (3000, None):                       # 49152 = 16 x 3000 + 1152
            plain = HFCausalLM.from_model(lm.model, lm.tokenizer, identity="bundled")   # torch.mm slices
            for model in (plain, lm):                          # lm: oneDNN-packed slices where available
                old = model.vocab_chunk, model.head_chunk
                model.vocab_chunk, model.head_chunk = vocab_chunk, 7
                try:
                    got = model._head_nll(states, targets, torch).double()
                finally:
                    model.vocab_chunk, model.head_chunk = old
                torch.testing.assert_close(got, full, atol=5e-5, rtol=0)
        assert full.std() > 1                                  # real, spread-out losses

        torch.manual_seed(0)
        tiny = LlamaForCausalLM(LlamaConfig(vocab_size=1001, hidden_size=32, intermediate_size=64,
                                            num_hidden_layers=1, num_attention_heads=2, num_key_value_heads=2))
        tiny.config.tie_word_embeddings = False
        tiny.lm_head = torch.nn.Linear(32, 1001, bias=True)
        tiny.config.final_logit_softcapping = 2.0
        x, y = torch.randn(13, 32) * 4, torch.randint(0, 1001, (13,))
        capped = (tiny.lm_head(x) / 2.0).tanh() * 2.0
        ref = torch.nn.functional.cross_entropy(capped.double(), y, reduction="none")
        t = HFCausalLM.from_model(tiny, lm.tokenizer, identity="tiny")
        t.vocab_chunk, t.head_chunk = 128, 5
        torch.testing.assert_close(t._head_nll(x, y, torch).double(), ref, atol=1e-5, rtol=0)
        tiny.config.final_logit_softcapping = None             # the cap mattered: without it, other losses
        assert (t._head_nll(x, y, torch).double() - ref).abs().max() > 0.1


def test_cpu_worker_threads_give_identical_nll_and_restore_threads(ctx, sharegpt_short):
    """Batches in per-core worker threads give the same NLL, bit for bit, as one thread running them in
    turn; the caller's intra-op thread count is restored."""
    lm = ctx.lm()
    units = [render("alpaca", *split_turns(m, "first")[0], {}, lm.tokenizer) for m in sharegpt_short.messages[:12]]
    sp = build_spans(lm.tokenizer, units, 512, "offsets", "alpaca")
    before = torch.get_num_threads()
    try:
        with lm.overrides(max_batch_size=2):
            torch.set_num_threads(1)
            assert lm._cpu_workers(6, torch) == 1
            one = lm.token_nll(sp.cond_ids, sp.cond_span, pool="mean")
            torch.set_num_threads(2)
            assert lm._cpu_workers(6, torch) == 2
            two = lm.token_nll(sp.cond_ids, sp.cond_span, pool="mean")
            assert torch.get_num_threads() == 2
    finally:
        torch.set_num_threads(before)
    assert len(one.nll) == 12 and all(len(a) > 0 for a in one.nll)
    for a, b in zip(one.nll, two.nll):
        np.testing.assert_array_equal(a, b)
    assert two.embeddings.shape == (12, lm.model.config.hidden_size) and np.isfinite(two.embeddings).all()
    np.testing.assert_array_equal(one.embeddings, two.embeddings)
