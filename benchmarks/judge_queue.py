"""Judge queue throughput: the judge scorer through the engine against the loopback API server.

The server (tests/fake_openai.py, a separate process so that it does not share the GIL with the client)
answers every request after ``latency`` seconds (``--jitter J``: drawn uniformly from latency * (1 +- J),
as a real API's replies vary; ``--fault-rate``: HTTP 500 on that share of first attempts, retried after a
backoff), so the best a client can do with ``concurrency`` C is about C / latency rows per second. A shard
that waits for its slowest request loses little when every request takes the same time and the shard size
is a multiple of C; it loses the spread of the latencies and every retry's wait at each shard otherwise.
For each concurrency and shard size, `--rows` rows (prompts new to the server in every run) are rated by the
``judge`` scorer with a fresh request cache and a fresh shard cache (every row pays one request):

  barrier  ``score_dataset`` with the scorer's ``shards_in_flight`` pinned to 1: one shard at a time, each
           waiting for its slowest request (the engine before issue 15, the baseline)
  queue    ``score_dataset`` as it is: ``shards_in_flight(shard_size)`` shards at once in threads, one
           bounded request queue across shard boundaries

Printed per run: seconds, rows/s, the ratio to C / latency (issue 15 asks for >= 0.9 whatever the shard
size), the shards in flight (k), the mean number of requests in flight at the server over its busy time
and the HTTP requests it saw (retries included).

    python benchmarks/judge_queue.py                              # 512 rows, latency 0.3 s, C 8 32 64
    python benchmarks/judge_queue.py --jitter 0.5 --fault-rate 0.02
    python benchmarks/judge_queue.py --rows 256 --paths queue --concurrency 64 --shard-size 64
"""

from __future__ import annotations

import argparse
import importlib.util
import json
import logging
import sys
import tempfile
import time
from pathlib import Path

import yaml

from thresher.data import load
from thresher.engine.scoring import score_dataset
from thresher.models.context import ModelContext
from thresher.scoring import make_scorer

ROOT = Path(__file__).resolve().parents[1]
PROMPT = {"name": "ten", "parser": "first_number", "scale": [1, 10],
          "user": "Rate this response from 1 to 10.\nInstruction: {{instruction}} {{input}}\nResponse: {{response}}"}


def load_fake():
    spec = importlib.util.spec_from_file_location("fake_openai", ROOT / "tests" / "fake_openai.py")
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    return mod


def write_inputs(tmp: Path, n: int, tag: str) -> tuple[Path, Path]:
    """An Alpaca file of ``n`` rows, distinct within and across runs (``tag``), and a 1-10 rating prompt."""
    tmp.mkdir(parents=True)
    rows = [{"instruction": f"[{tag}] Explain step {i} of making bread to a beginner.", "input": "",
             "output": f"Step {i}: knead the dough for about {i % 15 + 5} minutes until it is smooth."}
            for i in range(n)]
    data, prompt = tmp / "pool.json", tmp / "ten.yaml"
    data.write_text(json.dumps(rows))
    prompt.write_text(yaml.safe_dump(PROMPT))
    return data, prompt


def run_one(path: str, url: str, conc: int, shard: int, rows: int, work: Path) -> dict:
    """One run's seconds, rows rated ok and shards in flight; every row's prompt is new to the server."""
    data, prompt = write_inputs(work, rows, work.name)
    ds = load(data)
    ctx = ModelContext("bundled", device="cpu", judge={"kind": "api", "model": "fake-judge", "base_url": url,
                                                       "concurrency": conc, "cache": str(work / "requests.sqlite")})
    scorer = make_scorer("judge", prompt=str(prompt), mode="generate")
    t = time.perf_counter()
    if path == "barrier":
        scorer.shards_in_flight = lambda shard_size: 1
    out = score_dataset(ds, scorer, ctx, shard_size=shard, cache_root=work / "cache")
    ok = int((out["status"] == "ok").sum())
    secs = time.perf_counter() - t
    return {"secs": secs, "ok": ok, "k": scorer.shards_in_flight(shard)}


def mean_in_flight(records: list[dict]) -> float:
    """Requests in flight at the server, averaged over its busy time (first arrival to last reply)."""
    done = [r for r in records if r.get("t_reply") is not None]
    busy = max(r["t_reply"] for r in done) - min(r["t_arrival"] for r in done)
    return sum(r["t_reply"] - r["t_arrival"] for r in done) / busy


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--rows", type=int, default=512, help="rows rated per run (default 512)")
    ap.add_argument("--concurrency", type=int, nargs="+", default=[8, 32, 64])
    ap.add_argument("--shard-size", type=int, nargs="+", default=[64, 512])
    ap.add_argument("--latency", type=float, default=0.3, help="server seconds per reply (default 0.3)")
    ap.add_argument("--jitter", type=float, default=0.0, help="latency spread J in [0, 1] (default 0)")
    ap.add_argument("--fault-rate", type=float, default=0.0, help="share of first attempts answered with 500")
    ap.add_argument("--paths", nargs="+", choices=("barrier", "queue"), default=["barrier", "queue"])
    ap.add_argument("-v", "--verbose", action="store_true")
    args = ap.parse_args(argv)
    logging.basicConfig(level=logging.INFO if args.verbose else logging.WARNING,
                        format="%(asctime)s %(name)s %(levelname)s %(message)s")
    fake = load_fake()
    results = []
    with tempfile.TemporaryDirectory(prefix="thresher-judge-queue-") as tmp:
        tmp = Path(tmp)
        proc, url, log_path = fake.start_subprocess(tmp, "--latency", str(args.latency), "--jitter",
                                                    str(args.jitter), "--rate", f"500={args.fault_rate}",
                                                    "--rate-attempts", "1")
        try:
            for path in args.paths:
                for conc in args.concurrency:
                    for shard in args.shard_size:
                        work = tmp / f"{path}-c{conc}-s{shard}"
                        seen = len(fake.read_log(log_path))
                        r = run_one(path, url, conc, shard, args.rows, work)
                        time.sleep(0.1)                     # the server's last log lines
                        records = fake.read_log(log_path)[seen:]
                        results.append({**r, "path": path, "conc": conc, "shard": shard, "sent": len(records),
                                        "billed": sum(x["billed"] for x in records),
                                        "in_flight": mean_in_flight(records)})
        finally:
            proc.terminate()
            proc.wait()

    print(f"judge scorer, {args.rows} rows, loopback server (separate process): latency {args.latency:g} s, "
          f"jitter {args.jitter:g}, 500 on {args.fault_rate:g} of first attempts")
    print(f"{'path':>7} {'conc':>5} {'shard':>6} {'k':>3} {'seconds':>8} {'rows/s':>7} {'ideal':>7} "
          f"{'ratio':>6} {'in flight':>9} {'sent':>5} {'ok':>5}")
    ok = True
    for r in results:
        ideal = r["conc"] / args.latency
        rate = args.rows / r["secs"]
        ok &= r["ok"] == args.rows and r["billed"] == args.rows
        print(f"{r['path']:>7} {r['conc']:>5} {r['shard']:>6} {r['k']:>3} {r['secs']:>8.2f} {rate:>7.1f} "
              f"{ideal:>7.1f} {rate / ideal:>6.2f} {r['in_flight']:>9.1f} {r['sent']:>5} {r['ok']:>5}")
    print("every row rated once, one request each:", "OK" if ok else "FAILED")
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())
