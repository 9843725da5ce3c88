"""thresher.io: atomic folders, and the one file hasher with its side cache (data and model files alike)."""

from __future__ import annotations

import hashlib
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

import thresher.io as tio
from thresher.data.fingerprint import data_fingerprint


def _settled(path, data: bytes):
    """Write ``data`` to ``path`` and wait until the file system's clock has moved past its stamp."""
    path.write_bytes(data)
    time.sleep(0.05)
    return path


def _read(fn):
    """(result of fn(), bytes the hasher read meanwhile)."""
    before = tio.hash_stats["hashed_bytes"]
    out = fn()
    return out, tio.hash_stats["hashed_bytes"] - before


def test_an_unchanged_data_file_is_hashed_once_and_a_changed_one_again(tmp_path):
    data = os.urandom(5 << 20)
    f = _settled(tmp_path / "pool.jsonl", data)
    first, read = _read(lambda: data_fingerprint(f))
    assert first["sha256"] == hashlib.sha256(data).hexdigest() and read == len(data)
    again, read = _read(lambda: data_fingerprint(f))
    assert again == first and read == 0                       # the side cache answered: no byte read

    new = data[:-1] + bytes([data[-1] ^ 1])                     # same size, other bytes, a new mtime
    f.write_bytes(new)
    st = f.stat()
    os.utime(f, ns=(st.st_atime_ns, st.st_mtime_ns + 1_000_000))
    changed, read = _read(lambda: data_fingerprint(f))
    assert changed["sha256"] == hashlib.sha256(new).hexdigest() != first["sha256"] and read == len(new)


def test_head_tail_hashes_are_cached_apart_from_full_ones(tmp_path):
    data = os.urandom(3000)
    f = _settled(tmp_path / "big.bin", data)
    full, part = tio.file_sha256(f), tio.file_sha256(f, head_tail=100)
    assert full == hashlib.sha256(data).hexdigest()
    assert part == hashlib.sha256(data[:100] + data[-100:] + b"3000").hexdigest()
    (full2, part2), read = _read(lambda: (tio.file_sha256(f), tio.file_sha256(f, head_tail=100)))
    assert (full2, part2, read) == (full, part, 0)


def test_a_file_changed_within_the_clock_tick_of_its_hashing_is_hashed_again(tmp_path, monkeypatch):
    """On a file system whose clock has not ticked since the file was written, a later write in the same
    tick could keep the stamp: such a hash is marked racy and not trusted until the clock has moved on."""
    f = tmp_path / "fresh.jsonl"
    f.write_bytes(b"x" * 1000)
    with monkeypatch.context() as m:
        m.setattr(tio, "_fs_clock", lambda folder: f.stat().st_ctime_ns)    # the same tick
        sha, read = _read(lambda: tio.file_sha256(f))
    assert read == 1000
    assert tio.read_json_object(tio.cache_dir() / tio.SIDE_CACHE)[str(f.resolve())]["racy"] == ["sha256"]
    time.sleep(0.05)
    again, read = _read(lambda: tio.file_sha256(f))            # not trusted: read again, now settled
    assert (again, read) == (sha, 1000)
    assert "racy" not in tio.read_json_object(tio.cache_dir() / tio.SIDE_CACHE)[str(f.resolve())]
    assert _read(lambda: tio.file_sha256(f)) == (sha, 0)


def test_sha256_text_is_the_plain_digest_of_the_utf8_bytes():
    assert tio.sha256_text("chat — 猫") == hashlib.sha256("chat — 猫".encode()).hexdigest()
    assert tio.sha256_hex("chat") != tio.sha256_text("chat")   # sha256_hex ends each part with a NUL


_HOLD_FOLDER = """
import sys, time
import thresher.io as tio
with tio.atomic_folder(sys.argv[1]) as tmp:
    (tmp / "half").write_text("x")
    print(tmp, flush=True)
    time.sleep(600)
"""


def _writer(target):
    """A process inside atomic_folder(target), filling it; returns (process, its temporary folder)."""
    p = subprocess.Popen([sys.executable, "-c", _HOLD_FOLDER, str(target)], stdout=subprocess.PIPE, text=True)
    return p, Path(p.stdout.readline().strip())


def test_a_killed_writers_folder_is_removed_and_a_live_writers_kept(tmp_path):
    target = tmp_path / "merged"
    live, live_tmp = _writer(target)
    dead, dead_tmp = _writer(target)
    try:
        os.kill(dead.pid, signal.SIGKILL)
        dead.wait()
        assert dead_tmp.is_dir() and live_tmp.is_dir() and not target.exists()   # kill -9 leaves it behind
        with tio.atomic_folder(target) as tmp:                 # the next writer cleans up first
            (tmp / "a").write_text("1")
        assert not dead_tmp.exists() and live_tmp.is_dir()     # the live writer's folder is untouched
        assert (target / "a").read_text() == "1"
    finally:
        live.kill()
        live.wait()
    assert tio.remove_stale_tmp_files(tmp_path) == 1 and sorted(p.name for p in tmp_path.iterdir()) == ["merged"]


def test_atomic_folder_appears_whole_or_not_at_all(tmp_path):
    target = tmp_path / "out"
    with pytest.raises(RuntimeError):
        with tio.atomic_folder(target) as tmp:
            (tmp / "half").write_text("x")
            raise RuntimeError("killed")
    assert list(tmp_path.iterdir()) == []                      # nothing at the target, no temp folder

    with tio.atomic_folder(target) as tmp:
        (tmp / "a").write_text("1")
    assert [p.name for p in tmp_path.iterdir()] == ["out"] and (target / "a").read_text() == "1"

    with pytest.raises(OSError):                               # replace=False never replaces a filled folder
        with tio.atomic_folder(target) as tmp:
            (tmp / "b").write_text("2")
    assert sorted(p.name for p in target.iterdir()) == ["a"] and [p.name for p in tmp_path.iterdir()] == ["out"]

    with tio.atomic_folder(target, replace=True) as tmp:
        (tmp / "b").write_text("2")
    assert sorted(p.name for p in target.iterdir()) == ["b"] and [p.name for p in tmp_path.iterdir()] == ["out"]
