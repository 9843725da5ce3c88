"""IFD and perplexity on the bundled real model: parity with a naive one-sample reference, invariance
to batching/order/padding, a planted-defect check, and the Cherry-vs-offsets span boundary."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from thresher.data.readers import split_turns
from thresher.data.table import Dataset, LoadReport
from thresher.data.templates import render
from thresher.engine.scoring import score_dataset
from thresher.models.spans import build_spans
from thresher.scoring import make_scorer
from thresher.scoring.base import ModelContext

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
