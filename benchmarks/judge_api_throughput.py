"""LLM-judge API throughput: OpenAIChat at several concurrencies against the loopback fake server.

The server (tests/fake_openai.py, run as a separate process so that it does not share the GIL with
the client) adds a fixed latency to every reply, as a remote API would, and injects HTTP 429 (with
Retry-After) and 500 faults at the given rate on first and second attempts. Each concurrency level
judges its own distinct prompts through a fresh on-disk request cache, so every level pays for
every request. Printed per level: wall time, requests/s, speed-up over concurrency 1 and the ideal
(latency-bound) requests/s; then a correctness check (every answer equals the server's
deterministic answer; billed completions == unique prompts, so no prompt was paid twice) and the
throughput of re-running the last level from its cache.

    python benchmarks/judge_api_throughput.py                         # 256 requests, 0.3 s latency
    python benchmarks/judge_api_throughput.py --n 512 --latency 0.5 --fault-rate 0.05
"""

from __future__ import annotations

import argparse
import importlib.util
import logging
import sys
import tempfile
import time
from collections import Counter
from pathlib import Path

from thresher.models.api import OpenAIChat
from thresher.models.chat import ChatRequest

ROOT = Path(__file__).resolve().parents[1]


def load_fake():
    spec = importlib.util.spec_from_file_location("fake_openai", ROOT / "tests" / "fake_openai.py")
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    return mod


def requests_for(tag: str, n: int) -> tuple[list[str], list[ChatRequest]]:
    prompts = [f"[{tag}] Rate the response to instruction {i}: 'Explain recursion to a child.'"
               for i in range(n)]
    system = "You are a strict data-quality judge. Reply with a score from 1 to 10 on the first line."
    return prompts, [ChatRequest.of([{"role": "system", "content": system}, {"role": "user", "content": p}],
                                    max_tokens=64) for p in prompts]


def run_level(url: str, conc: int, n: int, cache: Path, args) -> dict:
    prompts, reqs = requests_for(f"c{conc}", n)
    backend = OpenAIChat("fake-judge", base_url=url, concurrency=conc, cache_path=cache,
                         timeout=max(5.0, 10 * args.latency), backoff_base=args.backoff_base,
                         backoff_max=2.0, max_retries=6)
    t = time.perf_counter()
    res = backend.chat(reqs)
    secs = time.perf_counter() - t
    return {"conc": conc, "n": n, "secs": secs, "rps": n / secs, "stats": backend.stats(),
            "prompts": prompts, "texts": [r.text for r in res], "backend": backend, "reqs": reqs}


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--n", type=int, default=256, help="requests per concurrency level (default 256)")
    ap.add_argument("--n-serial", type=int, default=None,
                    help="requests at concurrency 1 (default min(n, 32): it is latency-bound)")
    ap.add_argument("--concurrency", type=int, nargs="+", default=[1, 8, 32])
    ap.add_argument("--latency", type=float, default=0.3, help="server seconds per reply (default 0.3)")
    ap.add_argument("--fault-rate", type=float, default=0.02,
                    help="rate of 429 and, separately, of 500 on first/second attempts (default 0.02)")
    ap.add_argument("--retry-after", type=float, default=0.2, help="Retry-After of injected 429s (s)")
    ap.add_argument("--backoff-base", type=float, default=0.1)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("-v", "--verbose", action="store_true")
    args = ap.parse_args(argv)
    logging.basicConfig(level=logging.INFO if args.verbose else logging.WARNING,
                        format="%(asctime)s %(name)s %(levelname)s %(message)s")
    fake = load_fake()
    levels = sorted(set(args.concurrency))
    n_serial = args.n_serial or min(args.n, 32)

    with tempfile.TemporaryDirectory(prefix="thresher-judge-bench-") as tmp:
        tmp = Path(tmp)
        proc, url, log_path = fake.start_subprocess(
            tmp, "--latency", str(args.latency), "--rate", f"429={args.fault_rate}",
            "--rate", f"500={args.fault_rate}", "--retry-after", str(args.retry_after),
            "--seed", str(args.seed))
        try:
            runs = [run_level(url, c, n_serial if c == 1 else args.n, tmp / f"cache-c{c}.sqlite", args)
                    for c in levels]
            last = runs[-1]
            n_logged = len(fake.read_log(log_path))
            t = time.perf_counter()
            again = last["backend"].chat(last["reqs"])
            cached_secs = time.perf_counter() - t
            cached_calls = len(fake.read_log(log_path)) - n_logged
            time.sleep(0.2)                                # let the server finish writing its log
            records = fake.read_log(log_path)
        finally:
            proc.terminate()
            proc.wait()

    print(f"fake OpenAI server: latency {args.latency:g} s, 429 rate {args.fault_rate:g} "
          f"(Retry-After {args.retry_after:g} s), 500 rate {args.fault_rate:g}, loopback, separate process")
    base = next((r for r in runs if r["conc"] == 1), runs[0])
    print(f"{'concurrency':>11} {'requests':>8} {'seconds':>8} {'req/s':>7} {'speed-up':>8} "
          f"{'ideal req/s':>11} {'calls':>6} {'retries':>7} {'failed':>6}")
    for r in runs:
        s = r["stats"]
        ideal = f"{r['conc'] / args.latency:.1f}" if args.latency > 0 else "-"
        print(f"{r['conc']:>11} {r['n']:>8} {r['secs']:>8.2f} {r['rps']:>7.2f} "
              f"{r['rps'] / base['rps']:>7.2f}x {ideal:>11} {s['calls']:>6} "
              f"{s['retries']:>7} {s['failed']:>6}")
    print(f"cached re-run of concurrency {last['conc']}: {len(again)} requests in {cached_secs:.3f} s "
          f"({len(again) / cached_secs:,.0f} req/s), {cached_calls} HTTP calls, "
          f"{sum(r.cached for r in again)} served from cache")

    # Correctness: deterministic answers, each unique prompt billed exactly once over the whole run.
    prompts = [p for r in runs for p in r["prompts"]]
    wrong = sum(t != fake.reply_for(p) for r in runs for p, t in zip(r["prompts"], r["texts"]))
    wrong += sum(a.text != t for a, t in zip(again, last["texts"]))
    billed = Counter(rec["prompt"] for rec in records if rec["billed"])
    twice = sum(v > 1 for v in billed.values())
    ok = wrong == 0 and twice == 0 and sum(billed.values()) == len(set(prompts)) and cached_calls == 0
    print(f"correctness: {len(prompts) - wrong}/{len(prompts)} answers equal the server's; "
          f"billed completions {sum(billed.values())} for {len(set(prompts))} unique prompts "
          f"({twice} billed twice); requests seen by the server {len(records)} "
          f"(retries {len(records) - sum(billed.values())}) -> {'OK' if ok else 'FAILED'}")
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())
