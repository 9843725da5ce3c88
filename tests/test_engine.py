"""The scoring engine: sharded, cached, resumable.

Real-model tests run ``python -m thresher score`` on a small alpaca file (16 short records, shard
size 2, max_length 128): a run killed with SIGKILL resumes without touching its finished shards and
ends with exactly the scores of an uninterrupted run; an identical command reuses every shard; a
changed parameter misses the cache. The engine's ordering and length checks use a model-free scorer.
"""

from __future__ import annotations

import json
import logging
import os
import signal
import subprocess
import sys
import time
from dataclasses import dataclass
from pathlib import Path
from types import SimpleNamespace

import numpy as np
import pandas as pd
import pytest

from thresher.cli import main
from thresher.data import load
from thresher.engine.scoring import score_dataset
from thresher.models.context import ModelContext
from thresher.scoring.base import Scorer

from samples import ALPACA   # noqa: E402 (shared records; other tests import it from here too)
N_ROWS, SHARD = len(ALPACA), 2
N_SHARDS = N_ROWS // SHARD


def write_jsonl(path: Path, records) -> Path:
    path.write_text("".join(json.dumps(r, ensure_ascii=False) + "\n" for r in records), encoding="utf-8")
    return path


def score_args(data, out, cache, *extra) -> list[str]:
    return ["score", str(data), "--scorer", "ifd", "--out", str(out), "--cache-dir", str(cache),
            "--shard-size", str(SHARD), "--max-length", "128", *map(str, extra)]


def thresher_cmd(args) -> list[str]:
    return [sys.executable, "-m", "thresher", *args]


def shard_files(cache: Path) -> list[Path]:
    return sorted((cache / "scores").glob("ifd-*/*.parquet"))


def dot_files(root: Path) -> list[Path]:
    """Hidden leftovers (temporary files): everything hidden but the output marker and the released lock."""
    lock = root / ".thresher-lock"
    assert not lock.exists() or lock.read_text() == "", "the run folder's lock is still held"
    return [p for p in root.rglob(".*") if p.name not in (".thresher-output.json", ".thresher-lock")]


def cache_stats(run: Path) -> dict:
    manifest = json.loads((run / "manifest.json").read_text(encoding="utf-8"))
    stats = manifest["stages"][0]["scorers"][0].get("cache")
    assert stats is not None, "the manifest records no cache statistics"
    return stats


def seconds(run: Path) -> float:
    return json.loads((run / "summary.json").read_text(encoding="utf-8"))["seconds"]


@pytest.fixture(scope="module")
def data16(tmp_path_factory) -> Path:
    return write_jsonl(tmp_path_factory.mktemp("data") / "alpaca16.jsonl", ALPACA)


@pytest.fixture(scope="module")
def reference(tmp_path_factory, data16):
    """One uninterrupted `thresher score` run in a cache of its own (subprocess, like the killed one)."""
    base = tmp_path_factory.mktemp("reference")
    run, cache = base / "run", base / "cache"
    t0 = time.perf_counter()
    res = subprocess.run(thresher_cmd(score_args(data16, run, cache)), capture_output=True, text=True,
                         env=os.environ.copy(), timeout=600)
    wall = time.perf_counter() - t0
    assert res.returncode == 0, res.stderr
    return SimpleNamespace(run=run, cache=cache, wall=wall, stderr=res.stderr)


# ------------------------------------------------------------------------------------ real model
@pytest.mark.slow
def test_uninterrupted_run_scores_every_row_in_dataset_order(reference, data16):
    scores = pd.read_parquet(reference.run / "scores.parquet")
    assert list(scores["id"]) == load(data16).ids
    assert {"ifd", "loss_cond", "loss_direct", "status"} <= set(scores.columns)
    assert np.isfinite(scores["ifd"]).all() and (scores["status"] == "ok").all()
    stats = cache_stats(reference.run)
    assert (stats["computed"], stats["cached"]) == (N_ROWS, 0)
    assert len(shard_files(reference.cache)) == N_SHARDS
    assert Path(stats["dir"]) == shard_files(reference.cache)[0].parent


@pytest.mark.slow
def test_resume_after_kill_keeps_finished_shards_and_matches_uninterrupted_run(tmp_path, data16, reference):
    run, cache = tmp_path / "run", tmp_path / "cache"
    cmd = thresher_cmd(score_args(data16, run, cache))
    log_path = tmp_path / "killed.log"
    with open(log_path, "wb") as log:
        proc = subprocess.Popen(cmd, stdout=log, stderr=subprocess.STDOUT, env=os.environ.copy())
        try:
            deadline = time.monotonic() + 300
            while len(shard_files(cache)) < 2:
                if proc.poll() is not None:
                    pytest.fail(f"the run ended (status {proc.returncode}) before 2 shards were written:\n"
                                + log_path.read_text(errors="replace"))
                if time.monotonic() > deadline:
                    pytest.fail("no 2 shards within 300 s")
                time.sleep(0.01)
            os.kill(proc.pid, signal.SIGKILL)
        finally:
            if proc.poll() is None and proc.returncode is None:
                proc.kill()
            proc.wait(timeout=60)
    assert proc.returncode == -signal.SIGKILL

    finished = {p: (p.stat().st_mtime_ns, p.stat().st_ino, p.read_bytes()) for p in shard_files(cache)}
    assert 2 <= len(finished) < N_SHARDS, "the run was not interrupted part-way"
    assert not (run / "scores.parquet").exists() and not (run / "manifest.json").exists()

    res = subprocess.run(cmd, capture_output=True, text=True, env=os.environ.copy(), timeout=600)
    assert res.returncode == 0, res.stderr

    # The finished shards were read, not rewritten: same inode, mtime and bytes.
    for p, (mtime_ns, ino, data) in finished.items():
        st = p.stat()
        assert (st.st_mtime_ns, st.st_ino) == (mtime_ns, ino), f"{p.name} was rewritten"
        assert p.read_bytes() == data
    assert len(shard_files(cache)) == N_SHARDS
    assert dot_files(cache) == [] and dot_files(run) == []

    # Exactly the scores of the uninterrupted run (NaN-aware), in the dataset's order.
    resumed = pd.read_parquet(run / "scores.parquet")
    pd.testing.assert_frame_equal(resumed, pd.read_parquet(reference.run / "scores.parquet"), check_exact=True)

    stats = cache_stats(run)
    assert stats["cached"] == SHARD * len(finished)
    assert stats["computed"] == N_ROWS - stats["cached"] < N_ROWS


@pytest.mark.slow
def test_identical_rerun_reuses_cache_and_a_changed_parameter_misses_it(tmp_path, data16, reference, caplog):
    caplog.set_level(logging.INFO)
    again = tmp_path / "again"
    assert main(score_args(data16, again, reference.cache)) == 0
    stats = cache_stats(again)
    assert (stats["computed"], stats["cached"]) == (0, N_ROWS)
    pd.testing.assert_frame_equal(pd.read_parquet(again / "scores.parquet"),
                                  pd.read_parquet(reference.run / "scores.parquet"), check_exact=True)
    # Nothing to compute: the weights are never loaded and the run takes a fraction of the first.
    assert "loaded bundled" not in caplog.text
    assert "loaded bundled" in reference.stderr
    assert seconds(again) <= 0.25 * seconds(reference.run), (seconds(again), seconds(reference.run))

    # Shards are keyed by content: the first 4 rows are the first 2 shards, already scored.
    prefix = tmp_path / "prefix"
    assert main(score_args(data16, prefix, reference.cache, "--limit", 4)) == 0
    assert (cache_stats(prefix)["computed"], cache_stats(prefix)["cached"]) == (0, 4)

    # The same rows with another max_length: a different scorer key, nothing reused.
    changed = tmp_path / "changed"
    assert main(score_args(data16, changed, reference.cache, "--limit", 4, "--max-length", 96)) == 0
    stats = cache_stats(changed)
    assert (stats["computed"], stats["cached"]) == (4, 0)
    assert len(list((reference.cache / "scores").glob("ifd-*"))) == 2
    assert Path(stats["dir"]) != Path(cache_stats(reference.run)["dir"])
    manifest = json.loads((changed / "manifest.json").read_text(encoding="utf-8"))
    assert manifest["stages"][0]["scorers"][0]["params"]["max_length"] == 96


# ------------------------------------------------------------------------------------ no model
@dataclass
class _CharParams:
    bias: float = 0.0


class CharScorer(Scorer):
    """Model-free test scorer: the response's length in characters (+ bias), and the row's own id."""

    name = "chars"
    version = "1"
    Params = _CharParams
    main_column = "chars"
    higher_is_better = True
    uses = ()

    def __init__(self, short_by: int = 0, short_from: int = 0, **params):
        super().__init__(**params)
        # A planted defect, not a parameter (so the cache key is the good scorer's): return
        # ``short_by`` values too few from call number ``short_from + 1`` on.
        self.short_by, self.short_from = short_by, short_from
        self.calls: list[list[str]] = []

    def score_batch(self, rows):
        self.calls.append(list(rows.ids))
        n = len(rows) - (self.short_by if len(self.calls) > self.short_from else 0)
        chars = [len(m[-1]["content"]) + self.params.bias for m in rows.messages][:n]
        return {"chars": np.asarray(chars, dtype=np.float64), "echo": np.asarray(rows.ids[:n], dtype=object)}


@pytest.fixture
def ds10(tmp_path):
    return load(write_jsonl(tmp_path / "ten.jsonl", ALPACA[:10]))


def expected_chars(ds, bias=0.0):
    return [len(ds.raw[i]["output"]) + bias for i in range(len(ds))]


def test_score_dataset_keeps_dataset_order_and_reuses_shards(tmp_path, ds10):
    ctx, cache = ModelContext("bundled"), tmp_path / "cache"
    sc = CharScorer()
    out = score_dataset(ds10, sc, ctx, shard_size=3, cache_root=cache)
    assert list(out.columns) == ["id", "chars", "echo"]
    assert list(out["id"]) == ds10.ids and list(out["echo"]) == ds10.ids
    assert out["chars"].tolist() == expected_chars(ds10)
    assert [len(c) for c in sc.calls] == [3, 3, 3, 1]
    assert out.attrs["cache"]["computed"] == 10 and out.attrs["cache"]["cached"] == 0

    # Reversed order: other shard contents, so recomputed, and still in the order asked for.
    rev = ds10.subset(range(9, -1, -1))
    sc2 = CharScorer()
    out_rev = score_dataset(rev, sc2, ctx, shard_size=3, cache_root=cache)
    assert list(out_rev["id"]) == rev.ids == ds10.ids[::-1] and list(out_rev["echo"]) == rev.ids
    assert out_rev["chars"].tolist() == expected_chars(ds10)[::-1]
    assert len(sc2.calls) == 4

    # The same rows again: every shard from the cache, nothing scored, identical frame.
    sc3 = CharScorer()
    again = score_dataset(ds10, sc3, ctx, shard_size=3, cache_root=cache)
    assert sc3.calls == [] and again.attrs["cache"]["cached"] == 10
    pd.testing.assert_frame_equal(again, out)
    sc4 = CharScorer()
    head = score_dataset(ds10.subset(range(6)), sc4, ctx, shard_size=3, cache_root=cache)
    assert sc4.calls == [] and list(head["id"]) == ds10.ids[:6]

    # A changed parameter is a different scorer key: everything recomputed.
    sc5 = CharScorer(bias=1.0)
    biased = score_dataset(ds10, sc5, ctx, shard_size=3, cache_root=cache)
    assert len(sc5.calls) == 4 and biased["chars"].tolist() == expected_chars(ds10, 1.0)
    assert dot_files(cache) == []


def test_scorer_returning_wrong_length_raises_and_writes_no_bad_shard(tmp_path, ds10):
    ctx, cache = ModelContext("bundled"), tmp_path / "cache"
    with pytest.raises(RuntimeError, match=r"scorer 'chars' returned 2 values for column 'chars', expected 3"):
        score_dataset(ds10, CharScorer(short_by=1), ctx, shard_size=3, cache_root=cache)
    assert list((cache / "scores").rglob("*.parquet")) == [] and dot_files(cache) == []

    # Failing on the third shard: the two finished shards stay cached, the bad one is not written.
    with pytest.raises(RuntimeError, match="returned 2 values"):
        score_dataset(ds10, CharScorer(short_by=1, short_from=2), ctx, shard_size=3, cache_root=cache)
    assert len(list((cache / "scores").rglob("*.parquet"))) == 2 and dot_files(cache) == []
    sc = CharScorer()
    out = score_dataset(ds10, sc, ctx, shard_size=3, cache_root=cache)
    assert [len(c) for c in sc.calls] == [3, 1] and out.attrs["cache"]["cached"] == 6
    assert list(out["id"]) == ds10.ids and out["chars"].tolist() == expected_chars(ds10)
