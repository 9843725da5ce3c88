"""On-disk gradient feature store: fixed-size shards of .npy arrays plus a JSON manifest.

Layout of a store directory:
  manifest.json     ids, dim, dtype, shard_size, shard file names, user metadata (seed, checkpoint, ...)
  shard-00000.npy   rows [0, shard_size) as a (rows, dim) array; shard-00001.npy the next rows; ...
Every file is written to a temporary name, flushed and fsync'ed, then renamed (``thresher.io.atomic_path``),
so a shard file that exists is complete. Writing is resumable: after a crash or kill -9, calling
``write_store`` again with the same ids and metadata computes only the missing shards (``StoreWriter``
is the same for a writer whose shards are computed elsewhere, e.g. on an executor's workers). Reading maps
shards with ``np.load(mmap_mode="r")``: a 100k-sample store never has to fit in RAM.
Bytes per sample = dim * itemsize (d = 8192: 32 KiB float32, 16 KiB float16) plus the ids in the manifest.
"""

from __future__ import annotations

import json
from collections.abc import Callable, Iterator
from pathlib import Path

import numpy as np

from thresher.errors import ConfigError
from thresher.io import atomic_path

MANIFEST = "manifest.json"
DTYPES = ("float32", "float16")


def _atomic_write(path: Path, write: Callable) -> None:
    """``write(binary file)`` into ``path``, fsync'ed and renamed into place."""
    with atomic_path(path, fsync=True) as tmp, open(tmp, "wb") as f:
        write(f)


def shard_name(i: int) -> str:
    return f"shard-{i:05d}.npy"


def write_store(path: str | Path, ids: list[str], compute: Callable[[np.ndarray], np.ndarray], dim: int, *,
                shard_size: int = 1024, dtype: str = "float32", meta: dict | None = None) -> Path:
    """Fill the store at ``path`` with ``compute(row_indices) -> (len, dim)`` for every shard not yet written.

    ``meta`` (JSON-serialisable: seed, checkpoint, notation, ...) is recorded in the manifest; resuming
    with different ids, dim, dtype, shard_size or meta raises instead of mixing features.
    """
    store = StoreWriter(path, ids, dim, shard_size=shard_size, dtype=dtype, meta=meta)
    for i in store.missing():
        store.write(i, compute(store.rows(i)))
    return store.path


class StoreWriter:
    """Write side of a store, for a writer that computes shards elsewhere (``write_store``, or workers whose
    features the driver writes): opening writes the manifest, or checks that an existing one describes the
    same store; ``missing()`` lists the shards still to write; ``write(i, feats)`` writes shard i atomically."""

    def __init__(self, path: str | Path, ids: list[str], dim: int, *, shard_size: int = 1024,
                 dtype: str = "float32", meta: dict | None = None):
        if dtype not in DTYPES:
            raise ConfigError(f"The 'dtype' parameter must be one of {', '.join(DTYPES)}. Got {dtype!r}.")
        if not isinstance(shard_size, int) or shard_size < 1:
            raise ConfigError(f"The 'shard_size' parameter must be an int >= 1. Got {shard_size!r}.")
        self.path, self.n, self.dim, self.dtype, self.shard_size = Path(path), len(ids), int(dim), dtype, shard_size
        self.path.mkdir(parents=True, exist_ok=True)
        n_shards = -(-len(ids) // shard_size)
        manifest = {"ids": [str(i) for i in ids], "dim": int(dim), "dtype": dtype, "shard_size": shard_size,
                    "shards": [shard_name(i) for i in range(n_shards)], "meta": meta or {}}
        self.shards = manifest["shards"]
        mpath = self.path / MANIFEST
        if mpath.exists():
            old = json.loads(mpath.read_text())
            if old != manifest:
                diff = [k for k in manifest if old.get(k) != manifest[k]]
                raise ConfigError(f"{mpath} describes a different store (differs in: {', '.join(diff)}). "
                                  "Use a new directory or delete this one.")
        else:
            _atomic_write(mpath, lambda f: f.write(json.dumps(manifest).encode()))

    def rows(self, i: int) -> np.ndarray:
        """Row indices of shard i: [i * shard_size, min((i + 1) * shard_size, n))."""
        return np.arange(i * self.shard_size, min((i + 1) * self.shard_size, self.n))

    def missing(self) -> list[int]:
        """Indices of the shards not yet written (a shard file that exists is complete: atomic rename)."""
        return [i for i, name in enumerate(self.shards) if not (self.path / name).exists()]

    def write(self, i: int, feats: np.ndarray) -> None:
        """Write shard i: ``feats`` (rows of shard i, dim), cast to the store's dtype."""
        feats = np.asarray(feats, dtype=self.dtype)
        n = len(self.rows(i))
        if feats.shape != (n, self.dim):
            raise ConfigError(f"The feature function returned shape {feats.shape} for {n} rows; "
                              f"expected ({n}, {self.dim}).")
        _atomic_write(self.path / self.shards[i], lambda f: np.save(f, feats))


class GradientStore:
    """Read side of a store: memory-mapped shards, chunked iteration, row gathering."""

    def __init__(self, path: str | Path):
        self.path = Path(path)
        mpath = self.path / MANIFEST
        if not mpath.is_file():
            raise ConfigError(f"{mpath} does not exist; {self.path} is not a gradient store.")
        m = json.loads(mpath.read_text())
        self.ids, self.dim, self.dtype = m["ids"], m["dim"], m["dtype"]
        self.shard_size, self.shards, self.meta = m["shard_size"], m["shards"], m["meta"]

    def __len__(self) -> int:
        return len(self.ids)

    @property
    def complete(self) -> bool:
        return all((self.path / s).exists() for s in self.shards)

    @property
    def bytes_per_sample(self) -> float:
        return self.dim * np.dtype(self.dtype).itemsize

    def shard(self, i: int) -> np.ndarray:
        p = self.path / self.shards[i]
        if not p.exists():
            raise ConfigError(f"{p} is missing: the store is incomplete. Re-run the gradient step to resume it.")
        return np.load(p, mmap_mode="r")

    def iter_chunks(self) -> Iterator[tuple[int, np.ndarray]]:
        """Yield (first row, (rows, dim) memmap) shard by shard."""
        for i in range(len(self.shards)):
            yield i * self.shard_size, self.shard(i)

    def rows(self, idx) -> np.ndarray:
        """(len(idx), dim) float32 copy of the given rows."""
        idx = np.asarray(idx, dtype=np.int64)
        out = np.empty((len(idx), self.dim), dtype=np.float32)
        s = idx // self.shard_size
        for k in np.unique(s):                  # one memmap per touched shard
            sel = np.flatnonzero(s == k)
            out[sel] = self.shard(int(k))[idx[sel] - k * self.shard_size]
        return out

    def to_array(self) -> np.ndarray:
        """All rows in RAM (float32); for small stores and tests."""
        return self.rows(np.arange(len(self)))
