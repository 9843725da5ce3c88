"""Atomic file writes: write to a temporary file in the target directory, then rename.

A temporary file is named ``.<name>.<pid>.<8 hex>.tmp`` (the writer's pid lets a cleaner tell a
dead writer's leftover from a live writer's file: see ``stale_tmp_files``).
"""

from __future__ import annotations

import errno
import json
import logging
import os
import re
import time
import uuid
from contextlib import contextmanager
from pathlib import Path


log = logging.getLogger(__name__)
_TMP = re.compile(r"^\.(?P<name>.+)\.(?P<pid>\d+)\.[0-9a-f]{8}\.tmp$")


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
    try:
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


def _fsync(path) -> None:
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def is_disk_full(err: BaseException) -> bool:
    """Whether ``err`` says the disk is full (pyarrow's IO errors carry the text but no errno)."""
    return isinstance(err, OSError) and (err.errno == errno.ENOSPC or "No space left on device" in str(err))


def stale_tmp_files(folder, *, grace_s: float = 60.0, max_age_s: float = 86400.0) -> list[Path]:
    """Temporary files of ``atomic_path`` in ``folder`` left behind by a killed writer.

    Stale: the writer's pid is not running and the file was last written more than ``grace_s`` ago
    (the grace covers a writer on another machine sharing the folder), or it is older than
    ``max_age_s`` whoever wrote it (a reused pid). A live writer's file is never listed.
    """
    now, out = time.time(), []
    for p in Path(folder).glob(".*.tmp"):
        m = _TMP.match(p.name)
        try:
            age = now - p.stat().st_mtime
        except FileNotFoundError:      # renamed or removed by its writer meanwhile
            continue
        if m and (age > max_age_s or (age > grace_s and not _pid_alive(int(m["pid"])))):
            out.append(p)
    return out


def _pid_alive(pid: int) -> bool:
    if pid == os.getpid():
        return True
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except (PermissionError, OSError):
        return True                    # someone else's process, or not knowable: keep its file
    return True


def remove_stale_tmp_files(folder, **ages) -> int:
    """Delete ``stale_tmp_files(folder)``; returns how many were removed."""
    removed = 0
    for p in stale_tmp_files(folder, **ages):
        try:
            p.unlink()
            removed += 1
        except FileNotFoundError:
            pass
    if removed:
        log.info("%s: removed %d temporary file(s) left by a killed run", folder, removed)
    return removed


@contextmanager
def atomic_dir(path):
    """Yield a fresh folder next to ``path`` to fill; on success it replaces ``path`` (an existing folder
    there is removed first), else it is deleted: a half-written folder is never left in place."""
    import shutil
    import tempfile

    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{path.name}-", dir=path.parent))
    try:
        yield tmp
        if path.exists():
            shutil.rmtree(path)
        os.replace(tmp, path)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise


def write_json(path, obj) -> None:
    with atomic_path(path) as tmp:
        tmp.write_text(json.dumps(obj, indent=2, ensure_ascii=False, default=str) + "\n", encoding="utf-8")


def write_parquet(path, df, *, fsync: bool = False) -> None:
    with atomic_path(path, fsync=fsync) as tmp:
        df.to_parquet(tmp, index=False)
