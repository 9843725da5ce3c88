"""What a run records about its input data, so that a later command finds it from any directory and
notices when it changed (``data_fingerprint(path)``), and the content hash of each row
(``row_hashes(ds)``) that score caches are keyed by."""

from __future__ import annotations

import hashlib
import json
import os
from collections.abc import Sequence
from pathlib import Path

from thresher.data.table import StreamedDataset
from thresher.io import file_sha256, sha256_text

FULL_HASH_LIMIT = 256 * 1024 * 1024     # bytes; a larger file is hashed by its head and tail
_PART = 64 * 1024 * 1024


def data_fingerprint(path) -> dict | None:
    """The identity of the data at ``path``; None when nothing is on disk there (a hub dataset name).

    Returns ``{"abs_path", "kind", "size", "mtime_ns", "sha256", "hashed"}``:

    * a file (``kind`` "file"): ``size`` and ``mtime_ns`` from ``stat``; ``sha256`` of the whole file
      (``hashed`` "full") when it is at most 256 MB, else of its first 64 MB, its last 64 MB and its size
      (``hashed`` "head+tail+size": a change in the middle of a large file keeping its size goes unseen;
      the row ids a run also compares catch most of those);
    * a folder, e.g. a saved HF dataset (``kind`` "dir"): ``sha256`` of the sorted listing of its files
      (relative name, size, mtime_ns; ``hashed`` "listing"); ``size`` is their total and ``mtime_ns`` the
      newest. A copied folder (new mtimes) therefore reads as changed.

    Compare ``sha256`` (and ``size``) to tell whether the data changed; ``mtime_ns`` alone also changes
    when a file is touched or copied. A file's hash is kept in thresher's side cache of file hashes
    (``thresher.io.files_sha256``), so an unchanged file is not read again by a later run.
    """
    p = Path(os.path.expanduser(str(path)))
    if not p.exists():
        return None
    p = p.resolve()
    if p.is_dir():
        return _dir_fingerprint(p)
    st = p.stat()
    full = st.st_size <= FULL_HASH_LIMIT
    sha = file_sha256(p, head_tail=None if full else _PART)
    return {"abs_path": str(p), "kind": "file", "size": st.st_size, "mtime_ns": st.st_mtime_ns,
            "sha256": sha, "hashed": "full" if full else "head+tail+size"}


def same_data(recorded: dict, now: dict | None) -> bool:
    """True when two fingerprints describe the same content (``sha256`` and ``size``; not the mtime)."""
    return now is not None and all(recorded.get(k) == now.get(k) for k in ("kind", "size", "sha256"))


def _dir_fingerprint(p: Path) -> dict:
    files = sorted((f for f in p.rglob("*") if f.is_file()), key=lambda f: f.relative_to(p).as_posix())
    stats = [(f.relative_to(p).as_posix(), f.stat()) for f in files]
    listing = "".join(f"{name}\0{st.st_size}\0{st.st_mtime_ns}\n" for name, st in stats)
    return {"abs_path": str(p), "kind": "dir", "size": sum(st.st_size for _, st in stats),
            "mtime_ns": max((st.st_mtime_ns for _, st in stats), default=0), "sha256": sha256_text(listing),
            "hashed": "listing"}


def row_digest(row_id: str, messages, meta: dict) -> bytes:
    """SHA-256 (32 bytes) of what any scorer may read of one row; ``.hex()`` is its ``row_hashes`` entry."""
    text = json.dumps([row_id, messages, meta.get("instruction"), meta.get("input")], ensure_ascii=False)
    return hashlib.sha256(text.encode("utf-8") + b"\0").digest()     # as thresher.io.sha256_hex(text)


def row_hashes(ds) -> Sequence[str]:
    """Content hash of each row (64 hex characters): what any scorer may read of it.

    A streamed dataset computed them while loading (``StreamedDataset.hashes``: nothing is read again).
    """
    if isinstance(ds, StreamedDataset):
        return ds.hashes
    return [row_digest(i, m, meta).hex() for i, m, meta in zip(ds.ids, ds.messages, ds.meta)]
