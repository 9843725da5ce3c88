"""Peak memory of `thresher score --scorer length` as the pool grows: it should stay flat in the pool size.

Writes synthetic Alpaca pools (JSON Lines, deterministic seed, Alpaca-like lengths: instruction ~60
characters, an input on 40 % of rows, response ~300 characters on average, long-tailed) of each size, runs
``python -m thresher score POOL --scorer length --out DIR`` on each in a child process with a fresh cache,
and prints the child's peak RSS (``os.wait4``'s ``ru_maxrss``), its wall time, and the ratio of each peak to
the first (smallest) size's. Issue 15's target: the 1M-row peak at most 2x the 10k-row peak.

    python benchmarks/memory_scale.py                                   # 10k, 100k, 1M rows
    python benchmarks/memory_scale.py --sizes 10000,100000              # quicker
    python benchmarks/memory_scale.py --src /work/main/src              # another source tree (the baseline)
    python benchmarks/memory_scale.py --sizes 10000 -- --shard-size 512 # after "--": extra `thresher score` argv
    python benchmarks/memory_scale.py --executors local,ray             # the same with the ray executor

The pools are kept in ``--workdir`` (default: a folder under the system temp dir) and reused by later runs
with the same seed; ``--clean`` removes them at the end.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

_WORDS = ("the a of to and in is for that with on as by this be are from or it an at which can use data model "
          "write explain list give describe how what why when where who summarize translate classify generate "
          "sentence paragraph example number word people time year water energy system process result "
          "important different following provide create find make following below above text question answer "
          "story poem code function value table list city country history science computer learning").split()


def corpus(rng: np.random.Generator, n_words: int = 2_000_000) -> str:
    """One long text of random words; rows are slices of it (cheap, and different rows differ)."""
    picks = rng.integers(0, len(_WORDS), n_words)
    return " ".join(_WORDS[i] for i in picks)


def _lengths(rng, n: int, median: float, sigma: float, hi: int) -> np.ndarray:
    return np.clip(rng.lognormal(np.log(median), sigma, n), 1, hi).astype(np.int64)


def write_pool(path: Path, n: int, seed: int = 0, chunk: int = 50_000) -> None:
    """``n`` Alpaca rows as JSON Lines at ``path`` (written atomically: a killed run leaves no partial pool)."""
    rng = np.random.default_rng(seed)
    text = corpus(rng)
    tmp = path.with_name(path.name + ".part")
    with open(tmp, "w", encoding="utf-8") as fh:
        for a in range(0, n, chunk):
            m = min(chunk, n - a)
            lens = {"instruction": _lengths(rng, m, 60, 0.5, 1000), "input": _lengths(rng, m, 50, 0.8, 2000),
                    "output": _lengths(rng, m, 200, 0.9, 8000)}
            has_input = rng.random(m) < 0.4
            starts = {k: rng.integers(0, len(text) - 8000, m) for k in lens}
            lines = []
            for i in range(m):
                rec = {k: text[starts[k][i]:starts[k][i] + lens[k][i]].strip() or "x" for k in lens}
                if not has_input[i]:
                    rec["input"] = ""
                lines.append(json.dumps(rec))
            fh.write("\n".join(lines) + "\n")
    os.replace(tmp, path)


def peak_rss(argv: list[str], env: dict) -> tuple[float, float, int]:
    """(peak RSS of the child in MB, wall seconds, exit status) of running ``argv``."""
    t0 = time.perf_counter()
    proc = subprocess.Popen(argv, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    stderr = proc.stderr.read()
    _, status, usage = os.wait4(proc.pid, 0)
    proc.returncode = os.waitstatus_to_exitcode(status)
    if proc.returncode:
        sys.stderr.write(stderr.decode(errors="replace")[-4000:])
    return usage.ru_maxrss / 1024, time.perf_counter() - t0, proc.returncode   # ru_maxrss: KiB on Linux


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--sizes", default="10000,100000,1000000", help="comma-separated pool sizes in rows")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--scorer", default="length")
    ap.add_argument("--src", default=None, help="source tree put first on PYTHONPATH (default: the installed one)")
    ap.add_argument("--workdir", default=str(Path(tempfile.gettempdir()) / "thresher-memory-scale"))
    ap.add_argument("--clean", action="store_true", help="remove the pools and runs at the end")
    ap.add_argument("--executors", default="local", help="comma-separated: local, ray (ray: 2 workers; the peak "
                                                        "is the driver's, which holds the pool's index and scores)")
    args, extra = ap.parse_known_args()
    extra = [a for a in extra if a != "--"]
    sizes = [int(s) for s in args.sizes.split(",")]
    work = Path(args.workdir)
    work.mkdir(parents=True, exist_ok=True)
    env = dict(os.environ)
    if args.src:
        env["PYTHONPATH"] = os.pathsep.join(p for p in (args.src, env.get("PYTHONPATH")) if p)
    print(f"{'executor':>8} {'rows':>9} {'pool MB':>8} {'peak MB':>8} {'x first':>8} {'seconds':>8}  (scorer "
          f"{args.scorer}, src {args.src or 'installed'}{', extra ' + ' '.join(extra) if extra else ''})")
    for ex in args.executors.split(","):
        rc = _sizes(args, sizes, work, env, [*extra, *(["--executor", "ray", "--workers", "2"] if ex == "ray" else [])],
                    ex)
        if rc:
            return rc
    if args.clean:
        shutil.rmtree(work, ignore_errors=True)
    return 0


def _sizes(args, sizes, work: Path, env: dict, extra: list, executor: str) -> int:
    first = None
    for n in sizes:
        pool = work / f"alpaca-{n}-seed{args.seed}.jsonl"
        if not pool.exists():
            t0 = time.perf_counter()
            write_pool(pool, n, args.seed)
            print(f"  (wrote {pool} in {time.perf_counter() - t0:.1f} s)", flush=True)
        run, cache = work / f"run-{n}", work / f"cache-{n}"
        for d in (run, cache):
            shutil.rmtree(d, ignore_errors=True)
        argv = [sys.executable, "-m", "thresher", "score", str(pool), "--scorer", args.scorer, "--out", str(run),
                "--cache-dir", str(cache), *extra]
        mb, secs, rc = peak_rss(argv, env)
        if rc:
            print(f"{n:>9} failed with exit status {rc}")
            return rc
        first = first or mb
        print(f"{executor:>8} {n:>9} {pool.stat().st_size / 1e6:>8.0f} {mb:>8.0f} {mb / first:>8.2f} {secs:>8.1f}",
              flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
