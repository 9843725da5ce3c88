"""The local HF judge on the bundled real model: logit rating invariant to batching and padding, parity of
next-token log-probabilities and of greedy generation with deliberately naive references, left truncation
that keeps the template's end, per-request failures, and label checks."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from thresher.data.records import split_turns
from thresher.errors import ConfigError
from thresher.models.chat import ChatRequest
from thresher.models.hf import _pick
from thresher.models.local_judge import LocalChat

pytestmark = pytest.mark.slow

LABELS = [str(s) for s in range(6)]
SYSTEM = "You review an AI assistant's response to an instruction."
ASK = "Rate the response's accuracy from 0 to 5 (5 is best). Write the score first, then one reason."


def rating_request(instruction: str, response: str, max_tokens: int = 16) -> ChatRequest:
    """An AlpaGasus-style 0-5 rating prompt (our own wording), sample text clipped so the test is fast."""
    user = f"Instruction: {instruction[:80]}\nResponse: {response[:80]}\n\n{ASK}"
    return ChatRequest.of([{"role": "system", "content": SYSTEM}, {"role": "user", "content": user}],
                          max_tokens=max_tokens)


@pytest.fixture(scope="module")
def requests_12(sharegpt_short):
    out = []
    for msgs in sharegpt_short.messages[:12]:
        context, resp = split_turns(msgs, "first")[0]
        out.append(rating_request(context[0]["content"], resp))
    return out


def naive_next_token_logp(model, tok, request: ChatRequest, prefix: str) -> torch.Tensor:
    """Reference: one prompt, plain forward with full logits, log-softmax of the last position (float64)."""
    text = tok.apply_chat_template(request.as_messages(), tokenize=False, add_generation_prompt=True) + prefix
    ids = torch.tensor([tok(text, add_special_tokens=False)["input_ids"]])
    with torch.no_grad():
        return torch.log_softmax(model(ids).logits[0, -1].double(), dim=-1)


def naive_greedy(model, ids: list[int], steps: int, eos: int) -> list[int]:
    """Reference: no cache, no batch; recompute the whole sequence each step and take the argmax."""
    seq, out = list(ids), []
    with torch.no_grad():
        for _ in range(steps):
            nxt = int(model(torch.tensor([seq])).logits[0, -1].argmax())
            if nxt == eos:
                break
            seq.append(nxt)
            out.append(nxt)
    return out


def test_logit_rating_identical_across_batch_sizes_and_padding(ctx, requests_12):
    lm = ctx.lm()
    runs = {}
    for bs in (1, 3, 12):
        for side in ("left", "right") if bs > 1 else ("right",):    # one row has no padding to place
            judge = LocalChat(lm, max_batch_size=bs, max_batch_tokens=10**6)   # batches set by row count alone
            with lm.overrides(padding_side=side):
                runs[bs, side] = judge.rate(requests_12, LABELS, answer_prefix="Score: ")
            assert judge.stats()["calls"] == -(-12 // bs)          # really ran 12, 4 and 1 batches
    ref = runs[12, "right"]
    for key, out in runs.items():
        np.testing.assert_allclose(out["probs"], ref["probs"], rtol=0, atol=1e-5, err_msg=str(key))
        np.testing.assert_allclose(out["mass"], ref["mass"], rtol=0, atol=1e-5, err_msg=str(key))
    probs, expected = ref["probs"], ref["expected"]
    assert probs.shape == (12, 6) and np.isfinite(probs).all()
    np.testing.assert_allclose(probs.sum(1), 1.0, atol=1e-12)
    np.testing.assert_allclose(expected, probs @ np.arange(6.0), atol=1e-12)
    assert ((expected >= 0) & (expected <= 5)).all()
    np.testing.assert_array_equal(ref["argmax"], probs.argmax(1).astype(float))
    assert ((ref["mass"] > 0) & (ref["mass"] <= 1)).all()
    assert np.ptp(expected) > 0.05                                # ratings differ between real samples
    assert ctx.lm().tokenizer.convert_ids_to_tokens(ref["token_ids"].tolist()) == LABELS


def test_next_token_logprobs_and_rate_match_naive_full_logits(ctx, requests_12):
    lm = ctx.lm()
    reqs = requests_12[:5]
    naive = torch.stack([naive_next_token_logp(lm.model, lm.tokenizer, r, "Score: ") for r in reqs])  # (5, V)
    cand = [lm.tokenizer.convert_tokens_to_ids(s) for s in LABELS]
    texts = [lm.tokenizer.apply_chat_template(r.as_messages(), tokenize=False, add_generation_prompt=True)
             + "Score: " for r in reqs]
    ids = lm.tokenizer(texts, add_special_tokens=False)["input_ids"]
    np.testing.assert_allclose(lm.next_token_logprobs(ids, cand), naive[:, cand].numpy(), rtol=0, atol=1e-4)
    # The judge's outputs, recomputed naively from the full-vocabulary distribution.
    out = LocalChat(lm, max_batch_size=4).rate(reqs, LABELS, answer_prefix="Score: ")
    p = naive[:, cand].exp().numpy()
    np.testing.assert_allclose(out["mass"], p.sum(1), rtol=0, atol=1e-4)
    np.testing.assert_allclose(out["probs"], p / p.sum(1, keepdims=True), rtol=0, atol=1e-4)


def test_batched_greedy_generation_matches_naive_and_restores_order(ctx, requests_12):
    lm = ctx.lm()
    tok = lm.tokenizer
    reqs = requests_12[:4]
    texts = [tok.apply_chat_template(r.as_messages(), tokenize=False, add_generation_prompt=True) for r in reqs]
    ids = tok(texts, add_special_tokens=False)["input_ids"]
    steps = 8
    naive = [naive_greedy(lm.model, x, steps, tok.eos_token_id) for x in ids[:2]]   # the slow reference: 2
    perm = np.array([2, 0, 3, 1])                              # shuffled, so batches are re-sorted
    batched = lm.generate([ids[i] for i in perm], max_new_tokens=steps)
    one_by_one = [lm.generate([x], max_new_tokens=steps)[0] for x in ids]
    for j, i in enumerate(perm):
        # Float32 matmuls of different shapes differ in the last bits, which could flip a near-tie late in a
        # long sequence; over these first 8 tokens the three must agree exactly.
        assert batched[j] == one_by_one[i] and (i >= 2 or batched[j] == naive[i]), (j, i)
        assert 0 < len(batched[j]) <= steps and tok.eos_token_id not in batched[j]


def test_nucleus_pick_hand_checked():
    logits = torch.log(torch.tensor([[0.2, 0.5, 0.3]] * 4))
    temp, top_p = np.array([1.0, 1.0, 1.0, 0.0]), np.array([1.0, 1.0, 0.7, 1.0])
    u = torch.tensor([0.6, 0.45, 0.7, 0.99], dtype=torch.float64)
    # Sorted probabilities 0.5 (token 1), 0.3 (token 2), 0.2 (token 0): CDF 0.5, 0.8, 1.0. With top_p 0.7
    # token 0 is dropped (0.8 of mass already above it): renormalised CDF 0.625, 1.0. Row 4 is greedy.
    assert _pick(logits, temp, top_p, u, torch).tolist() == [2, 1, 2, 1]


def test_seeded_sampling_does_not_depend_on_the_batch(ctx, requests_12):
    lm = ctx.lm()
    tok = lm.tokenizer
    texts = [tok.apply_chat_template(r.as_messages(), tokenize=False, add_generation_prompt=True)
             for r in requests_12[4:7]]
    ids = tok(texts, add_special_tokens=False)["input_ids"]
    kw = dict(max_new_tokens=8, temperature=1.0)
    together = lm.generate(ids, seed=[1, 2, 3], **kw)
    alone = [lm.generate([x], seed=s, **kw)[0] for x, s in zip(ids, (1, 2, 3))]
    assert together == alone
    assert lm.generate(ids, seed=[11, 12, 13], **kw) != together          # other seeds, other samples
    greedy = lm.generate(ids, max_new_tokens=8)
    assert lm.generate(ids, seed=5, top_p=1e-9, **kw) == greedy         # a nucleus of one token is greedy


def test_chat_returns_text_counts_tokens_and_stops_at_eos(ctx, requests_12):
    lm = ctx.lm()
    judge = LocalChat(lm, max_batch_size=8)
    short = ChatRequest.of([{"role": "user", "content": "Say only the word: yes"}], max_tokens=40)
    reqs = [requests_12[0], short, requests_12[1]]
    res = judge.chat(reqs)
    text = lm.tokenizer.apply_chat_template(short.as_messages(), tokenize=False, add_generation_prompt=True)
    ids = lm.tokenizer(text, add_special_tokens=False)["input_ids"]
    ref = naive_greedy(lm.model, ids, 40, lm.tokenizer.eos_token_id)
    assert res[1].completion_tokens == len(ref) < 40                      # stopped at eos, not at the limit
    assert res[1].text == lm.tokenizer.decode(ref, skip_special_tokens=True)
    assert res[1].prompt_tokens == len(ids)
    for r in (res[0], res[2]):
        assert r.error is None and r.text.strip() and 0 < r.completion_tokens <= 16
    st = judge.stats()
    assert st["requests"] == 3 and st["failed"] == 0
    assert st["completion_tokens"] == sum(r.completion_tokens for r in res)
    assert st["prompt_tokens"] == sum(r.prompt_tokens for r in res)


def test_left_truncation_keeps_bos_and_template_end(ctx):
    lm = ctx.lm()
    tok = lm.tokenizer
    long = ChatRequest.of([{"role": "user", "content": "word " * 300 + "What is the capital of France?"}],
                          max_tokens=4)
    judge = LocalChat(lm, max_prompt_tokens=40)
    full = tok(judge._render(long.as_messages(), ""), add_special_tokens=False)["input_ids"]
    end = tok("<|im_end|>\n<|im_start|>assistant\n", add_special_tokens=False)["input_ids"]
    assert full[-len(end):] == end and full[0] == tok.bos_token_id and len(full) > 300
    ids, errors = judge._prompts([long], "", np.array([4]))
    expected = full[:1] + full[-(40 - 1):]                    # BOS, then the last 39 tokens (end included)
    assert errors == [None] and ids[0] == expected and ids[0][-len(end):] == end
    res = judge.chat([long])
    assert res[0].prompt_tokens == 40 and res[0].text and judge.stats()["extra"]["truncated"] == 2


def test_request_that_cannot_fit_fails_alone(ctx, requests_12):
    judge = LocalChat(ctx.lm())
    greedy = ChatRequest(requests_12[0].messages, max_tokens=8)
    # 8190 new tokens leave 2 prompt tokens of the 8192-token context: not even the template's end fits.
    res = judge.chat([greedy, ChatRequest(requests_12[1].messages, max_tokens=8190)])
    assert res[0].error is None and res[0].text
    assert res[1].text is None and "template's end" in res[1].error
    assert judge.stats()["failed"] == 1


def test_label_checks(ctx, requests_12):
    judge = LocalChat(ctx.lm())
    with pytest.raises(ConfigError, match="'10' is not a single token"):
        judge.rate(requests_12[:2], ["1", "2", "10"])
    with pytest.raises(ConfigError, match="at least two distinct"):
        judge.rate(requests_12[:2], ["1", "1"])
    out = judge.rate(requests_12[:2], ["no", "yes"], answer_prefix="Answer: ")   # words are single tokens here
    assert out["expected"] is None and set(out["argmax"]) <= {"no", "yes"}
    np.testing.assert_allclose(out["probs"].sum(1), 1.0, atol=1e-12)
