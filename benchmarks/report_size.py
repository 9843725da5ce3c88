"""Size and render time of `thresher report` as the run grows: the file should stay near-flat in the row count.

Builds synthetic run folders (deterministic seed): an Alpaca JSON Lines pool (instruction ~60 characters,
response long-tailed around 300), a scoring stage ``ifd`` with scores.parquet (ifd with 2 % NaN and a status
reason, n_resp_tokens, resp_chars), the top 10 % by ifd in selected_ids.txt, a manifest and a summary with
a compute ledger, as ``thresher run`` writes them. Then renders the report of each (``write_report``) and
prints the file size and the render time, each also as a ratio to the smallest size's (the baseline measured
in the same run). Histograms come from the full columns; the scatter and the example tables are sampled, and
only their rows are read from the pool.

    python benchmarks/report_size.py                        # 10k and 100k rows
    python benchmarks/report_size.py --sizes 10000,1000000  # with 1M rows (a ~150 MB pool, a few minutes)
"""

from __future__ import annotations

import argparse
import json
import shutil
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import pandas as pd

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "src"))

from thresher.io import write_json, write_parquet  # noqa: E402
from thresher.manifest import base_manifest  # noqa: E402
from thresher.outputs import write_marker  # noqa: E402
from thresher.reporting import write_report  # noqa: E402

WORDS = np.array("the data model score keep drop rank long short answer question code list table value".split())


def _text(rng, n_words: int) -> str:
    return " ".join(WORDS[rng.integers(0, len(WORDS), n_words)])


def write_pool(path: Path, n: int, seed: int = 0) -> np.ndarray:
    """An Alpaca JSONL pool of ``n`` records with ids r0..r{n-1}; returns the (n,) response lengths."""
    rng = np.random.default_rng(seed)
    resp_words = np.clip(rng.lognormal(3.5, 0.8, n).astype(int), 1, 2000)
    lengths = np.zeros(n, dtype=np.int64)
    with path.open("w", encoding="utf-8") as fh:
        for i in range(n):
            out = _text(rng, int(resp_words[i]))
            lengths[i] = len(out)
            fh.write(json.dumps({"id": f"r{i}", "instruction": _text(rng, 10), "input": "", "output": out}) + "\n")
    return lengths


def build_run(folder: Path, n: int, seed: int = 0, ratio: float = 0.1) -> Path:
    """A complete synthetic run folder of ``n`` rows in ``folder`` (created); returns it."""
    folder.mkdir(parents=True, exist_ok=True)
    write_marker(folder, "run")
    data = folder.parent / f"{folder.name}-pool.jsonl"
    lengths = write_pool(data, n, seed)
    rng = np.random.default_rng(seed + 1)
    ifd = rng.beta(5, 2, n) * 1.2
    status = np.where(rng.random(n) < 0.02, "prompt fills max_length", "ok")
    ifd[status != "ok"] = np.nan
    scores = pd.DataFrame({"id": [f"r{i}" for i in range(n)], "ifd": ifd,
                           "n_resp_tokens": (lengths // 4).astype(np.int64), "resp_chars": lengths, "status": status})
    keep = np.argsort(np.where(np.isfinite(ifd), -ifd, np.inf), kind="stable")[:int(n * ratio)]
    stage = folder / "ifd"
    write_parquet(stage / "scores.parquet", scores)
    (stage / "selected_ids.txt").write_text("".join(f"r{i}\n" for i in keep), encoding="utf-8")
    load = {"path": str(data), "fmt": "alpaca", "container": "jsonl", "n_read": n, "n_kept": n, "skipped": {},
            "examples": [], "truncated": None, "limit": None}
    write_json(folder / "manifest.json", {
        **base_manifest(["benchmarks/report_size.py"]), "recipe": {"name": "synthetic"}, "seed": seed,
        "data": {"path": str(data), "format": "alpaca", "on_invalid": "fail", "lenient": False, "limit": None,
                 "split": "train", "max_record_chars": None, "abs_path": str(data), "rows": n, "report": load},
        "stages": [{"name": "ifd", "model": "synthetic", "note": "", "select": {
            "selector": "top_k", "column": None, "params": {"ratio": ratio}}, "scorers": [{
                "scorer": "ifd", "version": "1", "params": {}, "main_column": "ifd", "higher_is_better": True,
                "cache": {"cached": 0, "computed": n, "failed": 0}}]}]})
    write_json(folder / "summary.json", {
        "recipe": "synthetic", "rows": n, "load": load, "seconds": 1.0, "stages": [{
            "name": "ifd", "model": "synthetic", "selected": len(keep), "dropped": n - len(keep),
            "compute": {"seconds": 1.0, "rows": n, "computed_rows": n, "cached_rows": 0,
                        "tokens": int(lengths.sum() // 4), "model_passes": n // 64}}]})
    return folder


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--sizes", default="10000,100000", help="comma-separated row counts (the first is the baseline)")
    ap.add_argument("--workdir", default=None, help="where the run folders go (default: a temp dir, removed)")
    args = ap.parse_args(argv)
    work = Path(args.workdir or tempfile.mkdtemp(prefix="thresher-report-size-"))
    base = None
    try:
        for n in (int(s) for s in args.sizes.split(",")):
            t0 = time.perf_counter()
            run = build_run(work / f"run{n}", n)
            built = time.perf_counter() - t0
            t0 = time.perf_counter()
            out = write_report([run], work / f"report{n}.html")
            secs = time.perf_counter() - t0
            size = out.stat().st_size
            base = base or (size, secs)
            print(f"{n:>9} rows: report {size / 1e6:.2f} MB ({size / base[0]:.2f}x), render {secs:.1f} s "
                  f"({secs / base[1]:.2f}x)   [building the run folder: {built:.1f} s]", flush=True)
    finally:
        if args.workdir is None:
            shutil.rmtree(work, ignore_errors=True)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
