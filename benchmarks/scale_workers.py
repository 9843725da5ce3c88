"""Scale-out: the same IFD job with the local executor and with the ray executor at 1 and 2 workers, one
CPU thread each, measured in one run; Ray's fixed overhead (cluster start, each worker's model load)
reported apart from the scoring throughput.

    python benchmarks/scale_workers.py                 # 256 ShareGPT pairs, shards of 16
    python benchmarks/scale_workers.py --n 128 --workers 1 2

Each job scores the same rows into a fresh cache (nothing is reused between jobs). The fixed overhead of a
Ray job is measured by a one-shard warm-up job on the same actors (model load) plus ray.init; the
throughput is that of the timed job after it. Targets on a 2-core machine: 2 workers >= 1.7x 1 worker,
Ray with 1 worker within 10 % of the local executor.
"""

from __future__ import annotations

import argparse
import logging
import tempfile
import time

import torch

from thresher.data import bundled_sharegpt_path, load, split_turns
from thresher.engine.executors import make_executor
from thresher.engine.scoring import score_dataset
from thresher.models.context import ModelContext
from thresher.scoring import make_scorer

PARAMS = {"template": "alpaca", "max_length": 512}


def pairs(n: int):
    """The first ``n`` ShareGPT single-turn pairs of moderate length (a realistic IFD job)."""
    ds = load(bundled_sharegpt_path(), limit=4 * n + 500, lenient=True, on_invalid="skip")
    keep = []
    for i, msgs in enumerate(ds.messages):
        context, resp = split_turns(msgs, "first")[0]
        if len(context) == 1 and 40 <= len(context[0]["content"]) <= 1200 and 80 <= len(resp) <= 1500:
            keep.append(i)
    if len(keep) < n:
        raise SystemExit(f"only {len(keep)} suitable pairs; use a smaller --n")
    return ds.subset(keep[:n])


def timed(ds, ctx, shard, executor=None) -> tuple[float, float]:
    """(seconds of a one-shard warm-up job: model load, seconds of the timed job) in fresh caches."""
    t0 = time.perf_counter()
    score_dataset(ds.subset(range(shard)), make_scorer("ifd", **PARAMS), ctx, shard_size=shard,
                  cache_root=tempfile.mkdtemp(), executor=executor)
    warm = time.perf_counter() - t0
    t0 = time.perf_counter()
    out = score_dataset(ds, make_scorer("ifd", **PARAMS), ctx, shard_size=shard, cache_root=tempfile.mkdtemp(),
                        executor=executor)
    assert out.attrs["cache"]["computed"] == len(ds)
    return warm, time.perf_counter() - t0


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--n", type=int, default=256, help="ShareGPT pairs scored by each job")
    ap.add_argument("--shard", type=int, default=16, help="rows per shard")
    ap.add_argument("--workers", type=int, nargs="+", default=[1, 2], help="ray worker counts to measure")
    args = ap.parse_args()
    logging.basicConfig(level=logging.WARNING)
    torch.set_num_threads(1)
    ds = pairs(args.n)
    ctx = ModelContext("bundled", device="cpu", dtype="float32")
    print(f"IFD on {len(ds)} ShareGPT pairs, shards of {args.shard}, one thread per worker")
    warm, local_s = timed(ds, ctx, args.shard)
    print(f"  local executor : {len(ds) / local_s:7.2f} rows/s  ({local_s:.1f} s; model load {warm:.1f} s)")
    rates = {}
    for w in args.workers:
        ex = make_executor(executor="ray", workers=w, threads_per_worker=1)
        try:
            warm, s = timed(ds, ctx, args.shard, ex)
            rates[w] = len(ds) / s
            print(f"  ray, {w} worker(s): {rates[w]:7.2f} rows/s  ({s:.1f} s)  fixed overhead: ray.init "
                  f"{ex.timings.get('ray_init_s', 0.0):.1f} s, warm-up job (actor start + model load) {warm:.1f} s")
        finally:
            ex.close()
    local_rate = len(ds) / local_s
    for w, r in rates.items():
        print(f"  ratio ray {w} worker(s) / local executor: {r / local_rate:.2f}x")
    if 1 in rates:
        for w, r in rates.items():
            if w > 1:
                print(f"  ratio ray {w} workers / ray 1 worker: {r / rates[1]:.2f}x (target >= {0.85 * w:.2f}x)")


if __name__ == "__main__":
    main()
