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
import tempfile
import time
from contextlib import contextmanager
from pathlib import Path

from thresher.engine.io import write_json
from thresher.errors import ConfigError

MARKER = ".thresher-output.json"


def _resolve(path) -> Path:
    return Path(os.path.expanduser(str(path))).resolve()


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
    try:
        data = json.loads((Path(folder) / MARKER).read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return None
    return data if isinstance(data, dict) and isinstance(data.get("kind"), str) else None


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
    path = Path(path)
    tmp = Path(tempfile.mkdtemp(prefix=f".{path.name}-", dir=path.parent))
    try:
        yield tmp
        write_marker(tmp, kind)
        old = path.with_name(f".{path.name}-old-{os.getpid()}")
        os.replace(path, old)                 # both renames are atomic; only the old output is removed
        os.replace(tmp, path)
        shutil.rmtree(old, ignore_errors=True)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
