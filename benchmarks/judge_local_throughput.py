"""Local judge throughput: logit rating versus batched generation versus one prompt at a time, in one run.

All three rate the same N real ShareGPT first-turn pairs with the same AlpaGasus-style 0-5 prompt on the
same loaded model:
  - logit rating (``LocalChat.rate``): one forward pass per batch, the next-token distribution over the
    labels "0".."5" right after the assistant header (the same position where generation starts);
  - batched generation (``LocalChat.chat``, max_new_tokens tokens, greedy), the rating parsed from the text;
  - one-at-a-time generation: the same generation code with batch size 1 (the reference scripts' shape).
It prints samples/s, the ratios, and how often the logit argmax equals the rating parsed from the
generated text (the first standalone digit 0-5; texts without one count as unparsed).

    python benchmarks/judge_local_throughput.py                 # 48 samples, CPU float32
    python benchmarks/judge_local_throughput.py --n 16 --max-new-tokens 8
    python benchmarks/judge_local_throughput.py --device cuda    # bfloat16 on a GPU
"""

from __future__ import annotations

import argparse
import os
import re
import sys
import time

import numpy as np

from thresher.data import bundled_sharegpt_path, load, split_turns
from thresher.models.chat import ChatRequest
from thresher.models.hf import HFCausalLM
from thresher.models.local_judge import LocalChat

LABELS = [str(s) for s in range(6)]
SYSTEM = "You review the response an AI assistant gave to an instruction."
ASK = ("Rate the accuracy of the response on a scale from 0 to 5, where 5 is best. Write the score alone on "
       "the first line, then explain it in one sentence.")
PREFIX = "Score: "
RATING = re.compile(r"(?<![\d.])([0-5])(?![\d])")


def rating_requests(n: int, max_chars: int, max_new_tokens: int) -> list[ChatRequest]:
    ds = load(bundled_sharegpt_path(), limit=max(200, 4 * n), lenient=True, on_invalid="skip")
    out = []
    for msgs in ds.messages:
        units = split_turns(msgs, "first")
        if not units or len(units[0][0]) != 1:
            continue
        instruction, response = units[0][0][0]["content"], units[0][1]
        user = f"Instruction: {instruction[:max_chars]}\nResponse: {response[:max_chars]}\n\n{ASK}"
        out.append(ChatRequest.of([{"role": "system", "content": SYSTEM}, {"role": "user", "content": user}],
                                  max_tokens=max_new_tokens))
        if len(out) == n:
            return out
    sys.exit(f"only {len(out)} usable samples; lower --n")


def parse_rating(text: str | None) -> float:
    m = RATING.search(text or "")
    return float(m.group(1)) if m else np.nan


def timed(judge: LocalChat, fn):
    """fn's result, its seconds, and the batches (forward or generation) it ran."""
    calls, t = judge.stats()["calls"], time.perf_counter()
    out = fn()
    return out, time.perf_counter() - t, judge.stats()["calls"] - calls


def main(argv=None) -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--n", type=int, default=48)
    ap.add_argument("--max-new-tokens", type=int, default=16)
    ap.add_argument("--max-chars", type=int, default=600, help="clip instruction and response to this many chars")
    ap.add_argument("--device", default="cpu")
    ap.add_argument("--dtype", default="auto")
    ap.add_argument("--batch-size", type=int, default=64)
    ap.add_argument("--repeats", type=int, default=1,
                    help="run the three methods this many times, interleaved, and keep each one's fastest "
                         "(shared machines are noisy)")
    args = ap.parse_args(argv)
    os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")

    reqs = rating_requests(args.n, args.max_chars, args.max_new_tokens)
    lm = HFCausalLM("bundled", device=args.device, dtype=args.dtype).setup()
    batched, single = LocalChat(lm, max_batch_size=args.batch_size), LocalChat(lm, max_batch_size=1)
    batched.chat(reqs[:2]), batched.rate(reqs[:2], LABELS)                 # warm-up, not timed
    print(f"{len(reqs)} ShareGPT samples, {lm.device} {lm.dtype}, torch threads "
          f"{__import__('torch').get_num_threads()}, max_new_tokens {args.max_new_tokens}")

    t_rate = t_pre = t_gen = t_one = float("inf")
    for _ in range(args.repeats):
        rated, t, c_rate = timed(batched, lambda: batched.rate(reqs, LABELS))
        t_rate = min(t_rate, t)
        prefixed, t, c_pre = timed(batched, lambda: batched.rate(reqs, LABELS, answer_prefix=PREFIX))
        t_pre = min(t_pre, t)
        gen, t, c_gen = timed(batched, lambda: batched.chat(reqs))
        t_gen = min(t_gen, t)
        one, t, c_one = timed(single, lambda: single.chat(reqs))
        t_one = min(t_one, t)

    n = len(reqs)
    prompt_tok = np.mean([r.prompt_tokens for r in gen])
    new_tok = np.mean([r.completion_tokens for r in gen])
    print(f"prompt tokens: mean {prompt_tok:.0f}; generated tokens: mean {new_tok:.1f}")
    print(f"{'method':34s} {'batches':>8s} {'seconds':>8s} {'samples/s':>10s} {'vs one-at-a-time':>17s}")
    for name, t, c in (("logit rating (1 forward)", t_rate, c_rate),
                       (f"logit rating, prefix {PREFIX!r}", t_pre, c_pre),
                       ("batched generation", t_gen, c_gen), ("one-at-a-time generation", t_one, c_one)):
        print(f"{name:34s} {c:8d} {t:8.2f} {n / t:10.2f} {t_one / t:16.2f}x")
    print(f"logit rating vs batched generation: {t_gen / t_rate:.2f}x")

    same = np.mean([a.text == b.text for a, b in zip(gen, one)])
    parsed = np.array([parse_rating(r.text) for r in gen])
    ok = ~np.isnan(parsed)
    print(f"batched and one-at-a-time texts identical: {same:.0%}")
    print(f"generated texts with a parsable 0-5 rating: {ok.mean():.0%} ({int(ok.sum())})")
    for name, r in (("logit rating", rated), (f"logit rating, prefix {PREFIX!r}", prefixed)):
        agree = np.mean(r["argmax"][ok] == parsed[ok]) if ok.any() else float("nan")
        counts = np.bincount(r["argmax"].astype(int), minlength=6).tolist()
        print(f"{name}: argmax equals the parsed generated rating on {agree:.0%}; expected mean "
              f"{np.nanmean(r['expected']):.2f} (sd {np.nanstd(r['expected']):.2f}); mass on the labels mean "
              f"{np.nanmean(r['mass']):.2f}; argmax counts {dict(zip(LABELS, counts))}")
    print("example generations:", [r.text for r in gen[:3]])


if __name__ == "__main__":
    main()
