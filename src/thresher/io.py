"""Foundations every layer may use: atomic files and folders, JSON files, content hashing, the cache root.

Atomic writes: write to a temporary file (or folder) in the target directory, then rename.

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
import shutil
import tempfile
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


def cache_dir() -> Path:
    """Root of thresher's caches: $THRESHER_CACHE, else ~/.cache/thresher."""
    return Path(os.environ.get("THRESHER_CACHE", Path.home() / ".cache" / "thresher"))


def sha256_text(text: str) -> str:
    """SHA-256 (hex) of one text's UTF-8 bytes, nothing added (keys that must stay as they were written)."""
    return hashlib.sha256(text.encode("utf-8")).hexdigest()


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


@contextmanager
def atomic_folder(path, *, replace: bool = False):
    """Yield a new empty folder next to ``path`` to fill; on success it is renamed to ``path``, else it is
    deleted: a half-written folder is never at ``path``.

    ``replace=False``: ``path`` must be absent or an empty folder when the filling is done (else the rename
    raises OSError and the new folder is deleted: e.g. another process finished the same folder first).
    ``replace=True``: a folder at ``path`` is moved aside, then deleted once the new one is in place.
    The temporary folders are named and locked like ``atomic_path``'s files, so that the folders a killed
    writer left beside ``path`` are removed (``remove_stale_tmp_files``) before a new one is made.
    """
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    remove_stale_tmp_files(path.parent)
    tmp, lock = _locked_tmp_dir(path)
    try:
        yield tmp
        if replace and path.exists():
            old, old_lock = _locked_tmp_dir(path)
            try:
                os.replace(path, old / "old")     # both renames are atomic; only the old folder is removed
                os.replace(tmp, path)
                shutil.rmtree(old, ignore_errors=True)
            finally:
                _close(old_lock)
        else:
            os.replace(tmp, path)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    finally:
        _close(lock)


def _locked_tmp_dir(path: Path) -> tuple[Path, int | None]:
    """A new folder ``.<name>.<pid>.<8 hex>.tmp`` beside ``path`` and the fd holding its lock (None: no locks)."""
    tmp = path.parent / f".{path.name}.{os.getpid()}.{uuid.uuid4().hex[:8]}.tmp"
    tmp.mkdir()
    fd = os.open(tmp, os.O_RDONLY)
    if fcntl is not None:
        try:
            fcntl.flock(fd, fcntl.LOCK_EX)
            return tmp, fd
        except OSError:                # a file system without locks: pid and age decide
            pass
    os.close(fd)
    return tmp, None


def _close(fd: int | None) -> None:
    if fd is not None:
        os.close(fd)


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
    """Delete the temporary files of ``atomic_path`` (and folders of ``atomic_folder``) in ``folder`` that a
    killed writer left; returns how many.

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
    if p.is_dir() and not p.is_symlink():      # a folder of atomic_folder
        shutil.rmtree(p, ignore_errors=True)
    else:
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
    return age > max_age_s or (age > grace_s and not pid_alive(pid))


def pid_alive(pid: int) -> bool:
    """Whether process ``pid`` may still run (this process, or one that exists or cannot be checked)."""
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


# ----------------------------------------------------------------------------------- file hashes
# A file's SHA-256 is remembered in a side cache, ``<cache_dir()>/file-hashes.json``, keyed by the file's
# absolute path and valid while its stamp is unchanged: size, modification and status-change times (ns)
# and inode (the change time too because a copy that keeps times, ``cp -p`` / ``rsync -t``, can give new
# bytes of the same size the old mtime; only the kernel sets ctime).
# A file system stamps times at the granularity of its clock (a kernel tick, 1-10 ms, on many), so a file
# changed in the same tick as its hashing began could change again unseen. Such a hash is recorded as
# racy and computed again the next time: racy when the file's stamp is not older than the time the file
# system gives a file written just before the hashing (git's "racily clean" entries).
# ``hash_stats`` counts the files and bytes read.
SIDE_CACHE = "file-hashes.json"
hash_stats = {"hashed_files": 0, "hashed_bytes": 0}
_READ = 1 << 22


def file_sha256(path, *, head_tail: int | None = None) -> str:
    """SHA-256 (hex) of the file at ``path``, from the side cache while the file is unchanged (see
    ``files_sha256``)."""
    return files_sha256([path], head_tail=head_tail)[str(Path(path).resolve())]


def files_sha256(files, *, head_tail: int | None = None) -> dict[str, str]:
    """{absolute path: SHA-256 hex} of ``files``, read from the side cache while a file is unchanged.

    ``head_tail``: hash only the first and the last ``head_tail`` bytes and then the size as decimal text
    (for files too large to read whole; a change in the middle that keeps the size goes unseen);
    None: the whole file.
    """
    method = "sha256" if head_tail is None else f"sha256:head+tail+size:{head_tail}"
    side_path = cache_dir() / SIDE_CACHE
    side = read_json_object(side_path) or {}
    out, clock = {}, None
    for f in files:
        p = Path(f).resolve()
        st = p.stat()
        stamp = [st.st_size, st.st_mtime_ns, st.st_ctime_ns, st.st_ino]
        entry = side.get(str(p))
        entry = entry if isinstance(entry, dict) and entry.get("stamp") == stamp else {"stamp": stamp}
        if isinstance(entry.get(method), str) and method not in entry.get("racy", ()):
            out[str(p)] = entry[method]
            continue
        clock = clock or _fs_clock(side_path.parent)
        out[str(p)] = _hash_file(p, st.st_size, head_tail)
        side[str(p)] = _recorded(entry, method, out[str(p)], racy=max(st.st_mtime_ns, st.st_ctime_ns) >= clock)
    if clock is not None:
        _save_side_cache(side_path, side)
    return out


def _fs_clock(folder: Path) -> int:
    """The time (ns) the file system stamps on a file written in ``folder`` now (its clock's tick, not the
    wall clock's); a file changed after this moment gets a stamp at least as late. When ``folder`` cannot
    be written, a time no stamp reaches (every hash is then racy, and the side cache cannot be saved anyway)."""
    try:
        folder.mkdir(parents=True, exist_ok=True)
        with tempfile.TemporaryFile(dir=folder) as fh:
            fh.write(b"\0")
            fh.flush()
            return os.fstat(fh.fileno()).st_mtime_ns
    except OSError:
        return 1 << 62


def _recorded(entry: dict, method: str, sha: str, *, racy: bool) -> dict:
    """``entry`` with ``method``'s hash set to ``sha``, listed under "racy" (computed again next time) when
    the file may change unseen."""
    marks = (set(entry.get("racy", ())) - {method}) | ({method} if racy else set())
    new = {**{k: v for k, v in entry.items() if k != "racy"}, method: sha}
    return {**new, "racy": sorted(marks)} if marks else new


def _hash_file(path: Path, size: int, head_tail: int | None) -> str:
    """SHA-256 (hex) of the file's bytes, or of its head, tail and size (see ``files_sha256``)."""
    if (size if head_tail is None else min(size, 2 * head_tail)) > 1 << 30:
        log.info("hashing %s (%.1f GB) once; its hash is kept in %s", path, size / 2**30, cache_dir() / SIDE_CACHE)
    h = hashlib.sha256()
    with open(path, "rb") as fh:
        if head_tail is None:
            n = _feed(h, fh, size)
        else:
            n = _feed(h, fh, head_tail)
            fh.seek(max(size - head_tail, 0))
            n += _feed(h, fh, head_tail)
            h.update(str(size).encode())
    hash_stats["hashed_files"] += 1
    hash_stats["hashed_bytes"] += n
    return h.hexdigest()


def _feed(h, fh, n: int) -> int:
    """Feed up to ``n`` bytes of ``fh`` to ``h``; the number fed."""
    fed = 0
    while fed < n:
        block = fh.read(min(_READ, n - fed))
        if not block:
            break
        h.update(block)
        fed += len(block)
    return fed


def _save_side_cache(side_path: Path, side: dict) -> None:
    """Write the side cache, dropping the entries of files that no longer exist; a cache that cannot be
    written (a read-only home) only costs a hash next time, so that is a warning, not an error."""
    try:
        write_json(side_path, {k: v for k, v in side.items() if Path(k).exists()})
    except OSError as err:
        log.warning("could not record file hashes in %s (%s); they are computed again next time", side_path, err)
