"""Which folders thresher may write into, replace or empty: output ownership.

Every folder that a command creates as its output (a run, a training run, a merge, an export, an
evaluation report) holds a marker file, ``.thresher-output.json`` (``{"kind": ..., "created": ...}``).
The rule, applied by ``claim_output_dir`` before anything is written:

* a missing folder, or an empty one, is claimed: created if needed and marked;
* a folder whose marker names the same kind of output is thresher's own: it may be reused (resume,
  rerun) and its files replaced;
* anything else is refused with a ``ConfigError`` naming what is in the way: a folder holding files
  thresher did not write (a user's folder is never emptied), a folder of another kind of output, or a
  file at that path;
* never an output, whatever it holds: the filesystem root, the home directory, the current directory
  or any folder above it, an input (data file or dataset folder), a folder that contains an input, or
  a folder inside an input dataset folder.

``check_output_file`` applies the same rule to an output file (``thresher select --out``): it may
replace only a file that thresher wrote there before (its sidecar ``<name>.manifest.json`` says so).
"""

from __future__ import annotations

import json
import os
import shutil
import time
from contextlib import contextmanager
from pathlib import Path

from thresher.io import atomic_folder, read_json_object, remove_stale_tmp_files, write_json
from thresher.progress import RUN_LOG
from thresher.errors import ConfigError

MARKER = ".thresher-output.json"


def _resolve(path) -> Path:
    p = Path(os.path.expanduser(str(path)))
    try:
        return p.resolve()
    except (OSError, RuntimeError):          # a symlink loop: its own error comes from the reader
        return Path(os.path.abspath(p))


def refuse_special(path, what: str, inputs=()) -> Path:
    """``path`` resolved; ConfigError when it is a folder that must never be an output (see module doc)."""
    p = _resolve(path)
    cwd, home = Path.cwd().resolve(), Path.home().resolve()
    if p == Path(p.anchor):
        raise ConfigError(f"{what} {path!r} is the filesystem root; give a new or empty folder.")
    if p == home:
        raise ConfigError(f"{what} {path!r} is your home directory; give a new or empty folder inside it.")
    if cwd == p or cwd.is_relative_to(p):
        raise ConfigError(f"{what} {path!r} is the current directory or a folder above it; give a new or "
                          "empty folder, e.g. runs/NAME.")
    for inp in inputs:
        i = _resolve(inp) if inp is not None else None
        if i is None or not i.exists():          # bundled:sharegpt, hub names: nothing on disk to protect
            continue
        if p == i or i.is_relative_to(p) or (i.is_dir() and p.is_relative_to(i)):
            raise ConfigError(f"{what} {path!r} would overwrite or hold the input {str(inp)!r}; write the "
                              "output somewhere else.")
    return p


def read_marker(folder) -> dict | None:
    """The output marker of ``folder`` (None when it has none or it is unreadable)."""
    data = read_json_object(Path(folder) / MARKER)
    return data if data is not None and isinstance(data.get("kind"), str) else None


def may_replace(folder, kind: str) -> bool:
    """True when ``folder`` is missing, empty, or marked as a ``kind`` output by thresher."""
    p = Path(folder)
    if not p.exists():
        return True
    if not p.is_dir():
        return False
    marker = read_marker(p)
    return (marker is not None and marker["kind"] == kind) or not any(p.iterdir())


def write_marker(folder, kind: str) -> None:
    write_json(Path(folder) / MARKER, {"kind": kind, "created": time.strftime("%Y-%m-%dT%H:%M:%S%z")})


def claim_output_dir(path, kind: str, *, inputs=(), flag: str = "--out") -> Path:
    """Check that ``path`` may hold a ``kind`` output, create and mark it; returns it (as given)."""
    p = refuse_special(path, flag, inputs)
    if p.exists() and not p.is_dir():
        raise ConfigError(f"{flag} {str(path)!r} is a file; {kind} outputs go into a folder. Give a new or "
                          "empty folder.")
    if not may_replace(p, kind):
        marker = read_marker(p)
        if marker is not None:
            raise ConfigError(f"{flag} {str(path)!r} holds a thresher {marker['kind']} output, not a {kind} "
                              "output; give a new or empty folder.")
        names = sorted(e.name for e in p.iterdir())
        shown = ", ".join(names[:5]) + (f" and {len(names) - 5} more" if len(names) > 5 else "")
        raise ConfigError(f"{flag} {str(path)!r} already holds files that thresher did not write ({shown}); "
                          "thresher never replaces them. Give a new or empty folder.")
    p.mkdir(parents=True, exist_ok=True)
    if read_marker(p) is None:
        write_marker(p, kind)
    return Path(path)


def check_output_file(path, *, inputs=(), flag: str = "--out", sidecar_suffix: str = ".manifest.json") -> Path:
    """ConfigError unless ``path`` may be written as an output file: not a folder, not an input, and
    either absent or written by thresher before (its sidecar ``<name><sidecar_suffix>`` exists)."""
    p = refuse_special(path, flag, inputs)
    if p.is_dir():
        raise ConfigError(f"{flag} {str(path)!r} is a folder; give a file name such as selected.jsonl.")
    if p.exists() and not p.with_name(p.name + sidecar_suffix).is_file():
        raise ConfigError(f"{flag} {str(path)!r} exists and was not written by thresher (no "
                          f"{p.name + sidecar_suffix} beside it); thresher never overwrites it. Give another "
                          "file name or move the file away.")
    return Path(path)


@contextmanager
def atomic_dir(path, kind: str, *, inputs=(), flag: str = "--out"):
    """Yield a fresh folder next to ``path`` to fill; on success it replaces ``path``, else it is deleted:
    a half-written folder is never left in place. ``path`` must pass ``claim_output_dir``'s rule: an
    existing folder is replaced only when it is empty or thresher's own ``kind`` output."""
    claim_output_dir(path, kind, inputs=inputs, flag=flag)
    with atomic_folder(path, replace=True) as tmp:
        yield tmp
        write_marker(tmp, kind)


# ----------------------------------------------------------------------------------- run folders
# A run folder (``thresher run`` / ``thresher score``) is claimed as above, then:
#   * an exclusive lock on ``.thresher-lock`` (flock: released by the OS when the process ends, kill -9
#     included) keeps a second run out while one is writing; the file names the holder (pid, host, start);
#   * at the start, the previous run's results are removed (manifest.json, summary.json, scores.parquet,
#     selected.*, selected_ids.txt, at the top and in each stage folder; a training stage keeps its
#     checkpoints and run records, which its own resume checks), so the folder never shows an old
#     manifest beside new scores: without manifest.json a run folder is incomplete, and rerunning the same
#     command resumes it (scores come back from the score cache, training from its checkpoints);
#   * at the end, top-level entries that an earlier run wrote and this run does not (a renamed stage, an
#     earlier run's client) are removed, and the marker records what this run wrote;
#   * ``run.log`` (thresher.progress.run_log: every run's log lines, appended) is neither a result nor stale.
LOCK = ".thresher-lock"
_RESULTS = ("manifest.json", "summary.json", "scores.parquet", "anchor_scores.parquet")
_SELECTED = ("selected_ids.txt", "selected.json", "selected.jsonl", "selected.parquet")
_TRAIN_RECORD = "train_ids.json"            # a training stage's folder (thresher.training.sft)


@contextmanager
def output_lock(folder):
    """Hold an exclusive lock on ``folder/.thresher-lock`` for the duration; ConfigError when another
    process holds it. The lock is the operating system's (``flock``): it is released when its process
    ends in any way, kill -9 included, so a stale lock cannot exist and two runs can never both take one
    over. The file stays (emptied on release) and names the current holder for the error message."""
    import fcntl
    import socket

    path = Path(folder) / LOCK
    fd = os.open(path, os.O_CREAT | os.O_RDWR, 0o644)
    try:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except BlockingIOError:
        os.close(fd)
        h = read_json_object(path) or {}
        raise ConfigError(f"Another thresher run (pid {h.get('pid', '?')} on {h.get('host', '?')}, started "
                          f"{h.get('started', '?')}) is writing into {folder}. Wait for it to finish or choose "
                          "another --out.") from None
    try:
        me = {"pid": os.getpid(), "host": socket.gethostname(), "started": time.strftime("%Y-%m-%dT%H:%M:%S%z")}
        os.ftruncate(fd, 0)
        os.pwrite(fd, json.dumps(me).encode(), 0)
        yield
    finally:
        os.ftruncate(fd, 0)
        os.close(fd)                         # closing the descriptor releases the lock


def _result_dirs(folder: Path) -> list[Path]:
    """The run folder, its stage folders and per-client folders (one and two levels below ``clients``)."""
    dirs = [folder]
    for d in [folder, *sorted(folder.glob("clients/*"))]:
        if d is not folder:
            dirs.append(d)
        dirs += [s for s in sorted(d.iterdir()) if s.is_dir() and s.name != "clients" and not s.name.startswith(".")]
    return dirs


def clear_results(folder) -> list[Path]:
    """Remove an earlier run's result files from a run folder (see above), and the temporary files a killed
    run left there (a kill during a write of atomic_path; the run lock is held, so no writer is live);
    returns the result files removed."""
    folder, removed = Path(folder), []
    if not folder.is_dir():
        return removed
    for d in _result_dirs(folder):
        remove_stale_tmp_files(d)
        # a training stage's folder: an IterIT selection writes selected.* and scores.parquet there
        names = _SELECTED + ("scores.parquet",) if (d / _TRAIN_RECORD).exists() else _SELECTED + _RESULTS
        for name in names:
            f = d / name
            if f.is_file():
                f.unlink()
                removed.append(f)
    return removed


def finish_run_folder(folder, kind: str, produced) -> list[str]:
    """Remove the top-level entries an earlier run wrote that this one did not (``produced``: names of the
    entries this run wrote; the folder's ``run.log``, appended by every run, is always kept), record
    ``produced`` in the marker; returns the names removed."""
    folder = Path(folder)
    produced = sorted(set(produced) | ({RUN_LOG} if (folder / RUN_LOG).is_file() else set()))
    before = (read_marker(folder) or {}).get("entries") or []
    stale = [n for n in before if n not in produced and n.count("/") <= 1
             and not any(part in ("", ".", "..") for part in n.split("/"))]
    for name in stale:
        p = folder / name
        if p.is_dir() and not p.is_symlink():
            shutil.rmtree(p)
        elif p.exists() or p.is_symlink():
            p.unlink()
    marker = read_marker(folder) or {"kind": kind}
    write_json(folder / MARKER, {**marker, "kind": kind, "entries": produced})
    return stale
