"""Shards for scale: fixed-size shards (the unit of resume) merged into one file per COMPACT_ROWS rows once
all of a group is final, so a million rows make under 2,000 cache files while a crash loses at most one
shard per worker; the merged files are checked like shards and serve every later run."""

from __future__ import annotations

import json
from pathlib import Path

import pandas as pd
import pytest

from test_cache_integrity import CharScorer
from test_engine import ALPACA
from thresher.data import load
from thresher.engine.scoring import COMPACT_ROWS, plan_shards, score_dataset
from thresher.models.context import ModelContext


@pytest.fixture
def ds64(tmp_path):
    records = [{**ALPACA[i % len(ALPACA)], "id": f"r{i:02d}", "instruction": f"task {i}"} for i in range(64)]
    path = tmp_path / "d64.jsonl"
    path.write_text("".join(json.dumps(r) + "\n" for r in records), encoding="utf-8")
    return load(path)


def _files(cache: Path) -> list[Path]:
    return sorted((cache / "scores").glob("chars_it-*/*.parquet"))


def _run(ds, cache, **kw):
    sc = CharScorer()
    return score_dataset(ds, sc, ModelContext("bundled"), cache_root=cache, **kw), sc


def test_a_million_rows_make_under_2000_cache_files():
    groups = plan_shards(1_000_000, 64, COMPACT_ROWS, Path("/nonexistent"), lambda a, b: [f"{a}:{b}"])
    files = sum(1 if g.path is not None else len(g.units) for g in groups)
    assert files <= 2000 and sum(len(g.units) for g in groups) == 15_625
    assert all(g.b - g.a == COMPACT_ROWS for g in groups[:-1])
    again = plan_shards(1_000_000, 64, COMPACT_ROWS, Path("/nonexistent"), lambda a, b: [f"{a}:{b}"])
    assert [g.path for g in groups] == [g.path for g in again]           # the same files for any run


def test_finished_groups_are_merged_and_serve_later_runs(tmp_path, ds64):
    cache = tmp_path / "cache"
    # 64 rows, shards of 4, groups of 16 rows: 4 full groups of 4 shards -> 4 files.
    first, sc = _run(ds64, cache, shard_size=4, compact_rows=16)
    assert len(sc.calls) == 16 and first.attrs["cache"]["computed"] == 64
    files = _files(cache)
    assert len(files) == 4 and all(p.name.startswith("g") for p in files)
    assert [len(pd.read_parquet(p)) for p in files] == [16] * 4
    again, sc2 = _run(ds64, cache, shard_size=4, compact_rows=16)
    assert sc2.calls == [] and again.attrs["cache"]["cached"] == 64
    pd.testing.assert_frame_equal(again, first)
    # The unmerged 4-row shards of an earlier layout hit too: a run with no merging reuses nothing of the
    # merged files (other keys) but its own shards are then merged by a run that groups them.
    _run(ds64, tmp_path / "plain", shard_size=4, compact_rows=4)
    assert len(_files(tmp_path / "plain")) == 16
    regrouped, sc3 = _run(ds64, tmp_path / "plain", shard_size=4, compact_rows=32)
    assert sc3.calls == [] and len(_files(tmp_path / "plain")) == 2
    pd.testing.assert_frame_equal(regrouped, first)


def test_a_trailing_partial_group_stays_as_shards_and_a_crash_loses_one_shard(tmp_path, ds64):
    ds = ds64.subset(range(40))                 # 2 full groups of 16 rows + 2 trailing shards of 4
    cache = tmp_path / "cache"
    _run(ds, cache, shard_size=4, compact_rows=16)
    names = [p.name for p in _files(cache)]
    assert sum(n.startswith("g") for n in names) == 2 and len(names) == 4

    class Crash(CharScorer):                    # dies on its 6th shard: 5 shards done in the first group
        def score_batch(self, rows):
            if len(self.calls) == 5:
                raise RuntimeError("killed")
            return super().score_batch(rows)

    crash_cache = tmp_path / "crash"
    with pytest.raises(RuntimeError, match="killed"):
        score_dataset(ds, Crash(), ModelContext("bundled"), shard_size=4, compact_rows=16, cache_root=crash_cache)
    assert len(_files(crash_cache)) == 2        # group 1 merged (1 file), shard 5 kept (1 file)
    out, sc = _run(ds, crash_cache, shard_size=4, compact_rows=16)
    assert out.attrs["cache"]["cached"] == 20 and len(sc.calls) == 5
    pd.testing.assert_frame_equal(out, _run(ds, tmp_path / "clean", shard_size=4, compact_rows=16)[0])
