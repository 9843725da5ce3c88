"""The score cache trusts a shard file only after checking it (issue 13, item 3).

Reproduction: 64 rows in 8 shards of 8; then one shard file truncated, one emptied, two swapped and
one replaced by a 16-row shard of another run. Before the fix the truncated/empty files crashed every
later run with ArrowInvalid, and the swapped / wrong-size files were accepted (wrong scores; 72 rows
for 64 inputs). Now each of those five is a cache miss: moved to quarantine/, recomputed, and the
result equals a clean run. A model-free scorer keeps this in milliseconds: the engine is what is tested.
"""

from __future__ import annotations

import json
import logging
import os
import subprocess
import sys
import time
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from thresher.data import load
from thresher.io import atomic_path
from thresher.engine.scoring import score_dataset
from thresher.models.context import ModelContext
from thresher.scoring.base import Scorer

from samples import ALPACA

SHARD = 8


@dataclass
class _Params:
    bias: float = 0.0


class CharScorer(Scorer):
    """Characters of the response (plus ``bias``); records which rows it was asked to score."""

    name = "chars_it"
    version = "1"
    Params = _Params
    main_column = "chars"
    higher_is_better = True
    uses = ()
    produces = {"chars": "response characters", "words": "response words"}

    def __init__(self, **params):
        super().__init__(**params)
        self.calls: list[list[str]] = []

    def score_batch(self, rows):
        self.calls.append(list(rows.ids))
        texts = [m[-1]["content"] for m in rows.messages]
        return {"chars": np.asarray([len(t) + self.params.bias for t in texts]),
                "words": np.asarray([len(t.split()) for t in texts], dtype=np.int64)}


@pytest.fixture
def ds64(tmp_path):
    records = [{**ALPACA[i % len(ALPACA)], "id": f"r{i:02d}",
                "output": ALPACA[i % len(ALPACA)]["output"] + " " * (i // len(ALPACA))} for i in range(64)]
    path = tmp_path / "d64.jsonl"
    path.write_text("".join(json.dumps(r) + "\n" for r in records), encoding="utf-8")
    return load(path)


def run(ds, cache, shard_size=SHARD):
    sc = CharScorer()
    out = score_dataset(ds, sc, ModelContext("bundled"), shard_size=shard_size, cache_root=cache)
    return out, sc


def shards_by_first_id(cache: Path) -> dict[str, Path]:
    """Each shard file of the scorer, keyed by the first id it holds (read independently of the engine)."""
    return {pd.read_parquet(p)["id"].iloc[0]: p for p in (cache / "scores").glob("chars_it-*/*.parquet")}


def test_corrupted_shards_are_quarantined_and_recomputed(tmp_path, ds64, caplog):
    cache = tmp_path / "cache"
    clean, _ = run(ds64, cache)
    assert clean.attrs["cache"]["computed"] == 64 and len(clean) == 64
    files = shards_by_first_id(cache)
    assert len(files) == 8
    f = [files[f"r{i * SHARD:02d}"] for i in range(8)]        # f[i]: the file of shard i

    f[0].write_bytes(f[0].read_bytes()[:40])                  # truncated
    f[1].write_bytes(b"")                                     # empty
    a, b = f[2].read_bytes(), f[3].read_bytes()               # swapped
    f[2].write_bytes(b), f[3].write_bytes(a)
    # A 16-row shard (rows 32..47) from a run with shard size 16, put in the 8-row slot of shard 4.
    other, _ = run(ds64, tmp_path / "other", shard_size=16)
    sixteen = [p for i, p in shards_by_first_id(tmp_path / "other").items() if i == "r32"][0]
    f[4].write_bytes(sixteen.read_bytes())

    with caplog.at_level(logging.WARNING, logger="thresher.engine.scoring"):
        again, sc = run(ds64, cache)
    assert sorted(c[0] for c in sc.calls) == ["r00", "r08", "r16", "r24", "r32"]   # exactly the bad five
    assert again.attrs["cache"]["computed"] == 40 and again.attrs["cache"]["cached"] == 24
    assert again.attrs["cache"]["rejected_shards"] == 5
    pd.testing.assert_frame_equal(again, clean)
    warnings = [r.getMessage() for r in caplog.records if r.levelno == logging.WARNING]
    assert len(warnings) == 5 and all("recomputing" in w for w in warnings)
    assert sum("unreadable" in w for w in warnings) == 2
    assert sum("not this one" in w for w in warnings) == 3   # swapped and wrong-size files carry another key
    quarantined = list(f[0].parent.glob("quarantine/*.bad-*"))
    assert len(quarantined) == 5

    third, sc3 = run(ds64, cache)                             # the rewritten shards are trusted again
    assert sc3.calls == [] and third.attrs["cache"]["cached"] == 64
    pd.testing.assert_frame_equal(third, clean)


def test_shards_written_without_a_key_are_checked_by_ids_and_columns(tmp_path, ds64):
    """Files of an earlier thresher (plain pandas, no key metadata): kept when their ids and score columns
    fit the slot; a file with another slot's ids (a swap) or foreign columns is recomputed."""
    cache = tmp_path / "cache"
    clean, _ = run(ds64, cache)
    f = shards_by_first_id(cache)
    for p in f.values():                                       # rewrite all without the key
        pd.read_parquet(p).to_parquet(p, index=False)
    swapped = pd.read_parquet(f["r16"]), pd.read_parquet(f["r24"])
    swapped[1].to_parquet(f["r16"], index=False)
    swapped[0].to_parquet(f["r24"], index=False)
    foreign = pd.read_parquet(f["r40"]).rename(columns={"chars": "ifd"})
    foreign.to_parquet(f["r40"], index=False)
    again, sc = run(ds64, cache)
    assert sorted(c[0] for c in sc.calls) == ["r16", "r24", "r40"]
    assert again.attrs["cache"]["rejected_shards"] == 3
    pd.testing.assert_frame_equal(again, clean)


WRITER = """
import sys, time
from pathlib import Path
from thresher.io import atomic_path
with atomic_path(Path(sys.argv[1]) / "abc.parquet") as tmp:
    tmp.write_bytes(b"partial")
    print(tmp, flush=True)
    time.sleep(120)
"""


def test_a_killed_writers_tmp_file_is_removed_and_a_live_ones_kept(tmp_path, ds64):
    cache = tmp_path / "cache"
    run(ds64, cache)
    folder = next((cache / "scores").glob("chars_it-*"))
    writer = subprocess.Popen([sys.executable, "-c", WRITER, str(folder)], stdout=subprocess.PIPE, text=True,
                              env={**os.environ, "PYTHONPATH": os.pathsep.join(sys.path)})
    try:
        left = Path(writer.stdout.readline().strip())
        assert left.exists() and left.name.startswith(".abc.parquet.")
        again, sc = run(ds64, cache)                      # the writer is alive: its file is kept
        assert left.exists() and sc.calls == [] and again.attrs["cache"]["cached"] == 64
        writer.kill()                                     # kill -9 mid-write, as in the issue
        writer.wait(timeout=30)
    finally:
        if writer.poll() is None:
            writer.kill()
    assert left.exists()
    with atomic_path(folder / "live.parquet") as live:    # a writer of this process, still writing
        live.write_bytes(b"partial")
        other = folder / ".notes.tmp"                     # not an atomic_path name: not ours to remove
        other.write_bytes(b"x")
        again, sc = run(ds64, cache)
        assert not left.exists() and live.exists() and other.exists()
        assert sc.calls == [] and again.attrs["cache"]["cached"] == 64
    assert (folder / "live.parquet").read_bytes() == b"partial"


def test_without_file_locks_stale_tmp_files_are_judged_by_pid_and_age(tmp_path, monkeypatch):
    import thresher.io as io

    monkeypatch.setattr(io, "fcntl", None)
    dead = subprocess.run([sys.executable, "-c", "import os; print(os.getpid())"], capture_output=True,
                          text=True).stdout.strip()
    now = time.time()
    files = {"left": (dead, now - 3600), "fresh": (dead, now - 5), "live": (os.getpid(), now - 3600),
             "ancient": (os.getpid(), now - 2 * 86400)}
    paths = {}
    for name, (pid, mtime) in files.items():
        paths[name] = tmp_path / f".{name}.parquet.{pid}.0123abcd.tmp"
        paths[name].write_bytes(b"partial")
        os.utime(paths[name], (mtime, mtime))
    assert io.remove_stale_tmp_files(tmp_path) == 2
    assert sorted(p for p in paths if paths[p].exists()) == ["fresh", "live"]


def test_atomic_path_fsyncs_file_then_folder(tmp_path, monkeypatch):
    synced = []
    real_fsync = os.fsync

    def spy(fd):
        synced.append(Path(os.readlink(f"/proc/self/fd/{fd}")))
        real_fsync(fd)

    monkeypatch.setattr(os, "fsync", spy)
    target = tmp_path / "sub" / "x.bin"
    with atomic_path(target, fsync=True) as tmp:
        tmp.write_bytes(b"data")
    assert target.read_bytes() == b"data"
    assert len(synced) == 2 and synced[0].name.endswith(".tmp") and synced[1] == target.parent
    synced.clear()
    with atomic_path(tmp_path / "y.bin") as tmp:               # default: no fsync
        tmp.write_bytes(b"data")
    assert synced == []
