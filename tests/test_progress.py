"""Progress reporting (bar / log / none), the smoothed rate and ETA, progress inside map_shards, the model
usage meter, run.log, the global flags after the subcommand, and the compute ledger in summary.json."""

from __future__ import annotations

import io
import json
import logging
import math
import os
import re
import subprocess
import sys
from pathlib import Path

import pytest

from thresher import progress
from thresher.cli import build_parser, main
from thresher.progress import Reporter, count_model, metered, progress_mode

SRC = str(Path(__file__).resolve().parents[1] / "src")
LINE = re.compile(r"\[(\S+)\] (\d+)/(\d+) (\w+) \(\d+%\)  [\d.e+]+ \w+/s.*  ETA (\S+)")


class Clock:
    """A clock the test moves by hand."""

    def __init__(self):
        self.t = 0.0

    def __call__(self) -> float:
        return self.t


def _records(caplog) -> list[str]:
    return [r.getMessage() for r in caplog.records if r.name == "thresher.progress"]


def _data(path: Path, n: int) -> Path:
    path.write_text("".join(json.dumps({"instruction": f"Say {i} things " * (i % 5 + 1), "output": "ok " * (i % 9 + 1)})
                            + "\n" for i in range(n)), encoding="utf-8")
    return path


@pytest.fixture
def quiet_env(monkeypatch):
    """main() sets these when -v is absent; restore them after the test."""
    monkeypatch.setenv("TQDM_DISABLE", "1")
    monkeypatch.setenv("HF_HUB_DISABLE_PROGRESS_BARS", "1")


# ----------------------------------------------------------------------------------- the reporter
def test_smoothed_rate_and_eta_by_hand():
    clock = Clock()
    p = Reporter("x", total=100, mode="none", clock=clock)
    clock.t = 2.0
    p.update(10)                          # first sample: 10 rows in 2 s
    assert p.rate.value == pytest.approx(5.0) and p.eta() == pytest.approx(90 / 5.0)
    clock.t = 4.0
    p.update(10)                          # the same rate: unchanged
    assert p.rate.value == pytest.approx(5.0)
    clock.t = 5.0
    p.update(30)                          # 30 rows/s for 1 s moves it by 1 - exp(-1/30) of the gap
    want = 5.0 + (1 - math.exp(-1 / 30)) * (30.0 - 5.0)
    assert p.rate.value == pytest.approx(want) and p.eta() == pytest.approx(50 / want)
    clock.t = 6.0
    p.update(20, cached=True)             # cached rows are done but not in the rate
    assert p.rate.value == pytest.approx(want) and p.eta() == pytest.approx(30 / want)
    assert (p.done, p.computed, p.cached) == (70, 50, 20)
    assert "70/100 rows (70%)" in p.line() and "(20 cached)" in p.line()


def test_log_mode_is_throttled_and_ends_with_a_total(caplog):
    caplog.set_level(logging.INFO, logger="thresher")
    clock = Clock()
    with Reporter("stage:s", total=40, mode="log", interval=10.0, clock=clock) as p:
        for t in range(1, 9):             # one update every 3 s: lines at 12 s and 24 s only
            clock.t = 3.0 * t
            p.update(5, tokens=50)
    lines = _records(caplog)
    assert len(lines) == 3, lines
    m = LINE.search(lines[0])
    assert m and m.group(2) == "20" and "tok/s" in lines[0] and m.group(5) != "?"
    assert lines[-1].startswith("[stage:s] done: 40 rows (40 computed, 0 cached)")


def test_none_mode_is_silent(caplog, capsys):
    caplog.set_level(logging.DEBUG, logger="thresher")
    with progress_mode("none", interval=1e-9):
        with progress.reporter("quiet", total=3) as p:
            p.update(3)
    assert not _records(caplog) and not capsys.readouterr().err
    assert progress.get_mode() == "log"   # the block's setting is undone


def test_bar_mode_renders_rate_and_eta():
    buf = io.StringIO()
    clock = Clock()
    with Reporter("stage:s", total=10, mode="bar", file=buf, clock=clock) as p:
        for t in range(1, 6):
            clock.t = float(t)
            p.update(2, tokens=100)
    out = buf.getvalue()
    assert "stage:s" in out and "10/10" in out and "rows/s" in out and "ETA" in out and "tok/s" in out


def test_default_mode_follows_the_terminal():
    import pty

    master, slave = pty.openpty()
    try:
        with os.fdopen(slave, "w") as tty:
            assert progress.default_mode(tty) == "bar"
    finally:
        os.close(master)
    assert progress.default_mode(io.StringIO()) == "log"


def test_bad_mode_is_a_config_error():
    from thresher.errors import ConfigError

    with pytest.raises(ConfigError, match="'progress' option must be one of bar, log, none"):
        progress.set_mode("fancy")


# ----------------------------------------------------------------------------------- map_shards and the meter
def _double(scorer, item, *, factor):
    count_model(1, len(item))             # what a model backend reports for one batch
    return [factor * x for x in item]


def test_map_shards_reports_each_item_and_meters_its_passes(caplog):
    from thresher.scoring.random import RandomScorer

    caplog.set_level(logging.INFO, logger="thresher")
    sc = RandomScorer()
    items = [[1, 2], [3], [4, 5, 6]]
    with progress_mode("log", interval=1e-9), metered() as usage:
        out = list(sc.map_shards(_double, items, factor=2))
    assert out == [[2, 4], [6], [8, 10, 12]]
    lines = _records(caplog)
    counts = [int(m.group(2)) for m in map(LINE.search, lines) if m]
    assert counts == [1, 2, 3] and all("random:_double" in x and "shards" in x for x in lines), lines
    assert (usage.passes, usage.tokens) == (3, 6)


def test_meter_nests_and_is_per_thread():
    import threading

    with metered() as outer:
        count_model(1, 10)
        with metered() as inner:
            count_model(2, 5)
        t = threading.Thread(target=count_model, args=(100, 100))     # another thread: not this meter
        t.start()
        t.join()
    assert (inner.passes, inner.tokens) == (2, 5) and (outer.passes, outer.tokens) == (3, 15)


# ----------------------------------------------------------------------------------- real runs
def test_score_run_log_lines_ledger_and_run_log(tmp_path, caplog, quiet_env):
    caplog.set_level(logging.INFO, logger="thresher")
    data, out = _data(tmp_path / "d.jsonl", 96), tmp_path / "run"
    args = ["score", str(data), "--scorer", "random", "--out", str(out), "--shard-size", "16",
            "--cache-dir", str(tmp_path / "cache"), "--progress", "log"]
    with progress_mode(interval=1e-9):
        assert main(args) == 0
    lines = [x for x in _records(caplog) if x.startswith("[random:random]")]
    parsed = [LINE.search(x) for x in lines[:-1]]
    assert parsed and all(parsed) and [int(m.group(2)) for m in parsed][-1] == 96, lines
    assert lines[-1].startswith("[random:random] done: 96 rows (96 computed, 0 cached)")
    first = json.loads((out / "summary.json").read_text())["stages"][0]["compute"]
    assert first["rows"] == 96 and first["computed_rows"] == 96 and first["cached_rows"] == 0
    assert first["computed_rows"] + first["cached_rows"] == first["rows"] and first["model_passes"] == 0
    log_text = (out / "run.log").read_text()
    assert re.search(r"^\d{4}-\d\d-\d\d \d\d:\d\d:\d\d,\d+ INFO thresher.progress: \[random:random\] done", log_text,
                     re.M)

    caplog.clear()
    with progress_mode(interval=1e-9):
        assert main(args) == 0           # an immediate rerun: everything from the cache
    again = json.loads((out / "summary.json").read_text())["stages"][0]["compute"]
    assert again["computed_rows"] == 0 and again["cached_rows"] == again["rows"] == 96 and again["tokens"] == 0
    log_text = (out / "run.log").read_text()
    assert log_text.count("==== thresher run score-random started") == 2      # appended, not replaced
    marker = json.loads((out / ".thresher-output.json").read_text())
    assert "run.log" in marker["entries"] and marker["kind"] == "run"


def test_model_scorer_ledger_counts_tokens_and_passes(tmp_path, ctx):
    from thresher.data import load
    from thresher.engine.scoring import score_dataset
    from thresher.scoring.ifd import IFDScorer

    ds = load(_data(tmp_path / "d.jsonl", 8))
    with progress_mode("none"):
        out = score_dataset(ds, IFDScorer(), ctx, shard_size=4, cache_root=tmp_path / "cache")
        again = score_dataset(ds, IFDScorer(), ctx, shard_size=4, cache_root=tmp_path / "cache")
    c = out.attrs["compute"]
    assert c["computed_rows"] == 8 and c["tokens"] > 0 and c["model_passes"] >= 2 and c["seconds"] > 0
    assert again.attrs["compute"]["tokens"] == 0 and again.attrs["compute"]["model_passes"] == 0


def test_global_flags_after_the_subcommand():
    ap = build_parser()
    base = ["score", "d.jsonl", "--scorer", "random", "--out", "o"]
    assert ap.parse_args([*base, "-v"]).verbose and ap.parse_args(["-v", *base]).verbose
    assert ap.parse_args([*base, "-q"]).quiet and ap.parse_args(["-q", *base]).quiet
    a = ap.parse_args(base)
    assert not a.verbose and not a.quiet and a.progress is None
    assert ap.parse_args([*base, "--progress", "none"]).progress == "none"
    assert ap.parse_args(["--progress", "bar", "run", "length"]).progress == "bar"


def test_quiet_after_the_subcommand_changes_the_level(tmp_path):
    data = _data(tmp_path / "d.jsonl", 20)
    env = {**os.environ, "PYTHONPATH": SRC, "THRESHER_CACHE": str(tmp_path / "cache")}

    def run(*flags):
        out = tmp_path / f"run{len(flags)}{'-'.join(flags)}"
        return subprocess.run([sys.executable, "-m", "thresher", "score", str(data), "--scorer", "random", "--out",
                               str(out), "--progress", "log", "--cache-dir", str(out) + "-cache", *flags], env=env,
                              capture_output=True, text=True,
                              timeout=120)

    loud, quiet = run(), run("-q")
    assert loud.returncode == 0 and quiet.returncode == 0, quiet.stderr
    assert "[random:random] done: 20 rows" in loud.stderr
    assert "[random:random]" not in quiet.stderr and "thresher: score-random" in quiet.stdout
    assert (tmp_path / "run1-q" / "run.log").read_text().count("[random:random] done") == 1   # the file keeps INFO
