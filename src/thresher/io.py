"""Foundations every layer may use: atomic file writes, JSON files, content hashing.

Atomic writes: write to a temporary file in the target directory, then rename.

A temporary file is named ``.<name>.<pid>.<8 hex>.tmp`` and its writer holds an exclusive ``flock`` on
it until the rename, so a cleaner can tell a killed writer's leftover (no lock held: the kernel drops
a dead process's locks) from a live writer's file, on this machine or another sharing the folder.
"""

from __future__ import annotations

import errno
import hashlib
import json
import logging
import os
import re
import time
import uuid
from contextlib import contextmanager
from pathlib import Path

try:
    import fcntl
except ImportError:                    # not POSIX: stale files are judged by pid and age only
    fcntl = None

log = logging.getLogger(__name__)
_TMP = re.compile(r"^\.(?P<name>.+)\.(?P<pid>\d+)\.[0-9a-f]{8}\.tmp$")


def sha256_hex(*parts: str) -> str:
    """SHA-256 (hex) of text parts, each followed by a NUL byte, so that ("ab", "c") and ("a", "bc") differ."""
    h = hashlib.sha256()
    for part in parts:
        h.update(str(part).encode("utf-8"))
        h.update(b"\0")
    return h.hexdigest()


@contextmanager
def atomic_path(path, *, fsync: bool = False):
    """Yield a temporary path next to ``path``; on success rename it into place, else delete it.

    ``fsync``: flush the file's data to disk before the rename and the directory entry after it,
    so that after a power loss or OS crash the file is either absent or complete (a cache that is
    trusted on the next run needs this; a plain rename only guarantees it against a killed process).
    """
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    # Not mkstemp: its 0600 mode would stick to the renamed file (private run outputs and cache
    # shards); a fresh name that the writer creates gets the usual umask-based mode.
    tmp = path.parent / f".{path.name}.{os.getpid()}.{uuid.uuid4().hex[:8]}.tmp"
    lock = None
    try:
        lock = _lock_new(tmp)
        yield Path(tmp)
        if fsync:
            _fsync(tmp)
        os.replace(tmp, path)
        if fsync:
            _fsync(path.parent)
    except BaseException as err:
        Path(tmp).unlink(missing_ok=True)
        if isinstance(err, OSError) and is_disk_full(err) and not err.filename:
            raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC), str(path)) from err
        raise
    finally:
        if lock is not None:
            os.close(lock)


def _lock_new(tmp: Path) -> int | None:
    """Create ``tmp`` and hold an exclusive lock on it (the fd to close when done; None if locks are
    not available). The writer may reopen and truncate the file by its path: the lock stays with it."""
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o666)
    if fcntl is None:
        os.close(fd)
        return None
    try:
        fcntl.flock(fd, fcntl.LOCK_EX)
    except OSError:                    # a file system without locks: fall back to pid and age
        os.close(fd)
        return None
    return fd


def _fsync(path) -> None:
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def is_disk_full(err: BaseException) -> bool:
    """Whether ``err`` says the disk is full (pyarrow's IO errors carry the text but no errno)."""
    return isinstance(err, OSError) and (err.errno == errno.ENOSPC or "No space left on device" in str(err))


def remove_stale_tmp_files(folder, *, grace_s: float = 60.0, max_age_s: float = 86400.0) -> int:
    """Delete the temporary files of ``atomic_path`` in ``folder`` that a killed writer left; returns how many.

    A file whose lock is held belongs to a live writer and is kept. Where locks are not available, a
    file is stale when its writer's pid is not running here and it is older than ``grace_s`` (a writer
    on another machine), or older than ``max_age_s`` whoever wrote it (a reused pid).
    """
    removed = 0
    for p in Path(folder).glob(".*.tmp"):
        m = _TMP.match(p.name)
        if m and _remove_if_stale(p, int(m["pid"]), grace_s, max_age_s):
            removed += 1
    if removed:
        log.info("%s: removed %d temporary file(s) left by a killed run", folder, removed)
    return removed


def _remove_if_stale(p: Path, pid: int, grace_s: float, max_age_s: float) -> bool:
    try:
        fd = os.open(p, os.O_RDONLY)
    except OSError:                    # renamed or removed by its writer meanwhile
        return False
    try:
        return _stale_locked(p, fd, pid, grace_s, max_age_s)
    except FileNotFoundError:
        return False
    finally:
        os.close(fd)


def _stale_locked(p: Path, fd: int, pid: int, grace_s: float, max_age_s: float) -> bool:
    """Unlink ``p`` (open as ``fd``) unless a live writer may hold it; whether it was removed."""
    free = _unlocked(fd)
    if free is False or (free is None and not _old_and_orphaned(p, pid, grace_s, max_age_s)):
        return False
    p.unlink(missing_ok=True)
    return True


def _unlocked(fd: int) -> bool | None:
    """Whether no other open file holds a lock on ``fd``'s file (None: locks are not available here)."""
    if fcntl is None:
        return None
    try:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)    # kept until fd is closed: no writer can start
    except BlockingIOError:
        return False
    except OSError:
        return None
    return True


def _old_and_orphaned(p: Path, pid: int, grace_s: float, max_age_s: float) -> bool:
    age = time.time() - p.stat().st_mtime
    return age > max_age_s or (age > grace_s and not _pid_alive(pid))


def _pid_alive(pid: int) -> bool:
    if pid == os.getpid():
        return True
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except OSError:
        return True                    # someone else's process, or not knowable: keep its file
    return True


def read_json_object(path) -> dict | None:
    """The JSON object (dict) stored at ``path``; None when the file is missing, unreadable or not an object."""
    try:
        data = json.loads(Path(path).read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return None
    return data if isinstance(data, dict) else None


def write_json(path, obj) -> None:
    with atomic_path(path) as tmp:
        tmp.write_text(json.dumps(obj, indent=2, ensure_ascii=False, default=str) + "\n", encoding="utf-8")


def write_parquet(path, df, *, fsync: bool = False) -> None:
    with atomic_path(path, fsync=fsync) as tmp:
        df.to_parquet(tmp, index=False)
