"""Embedding helpers of the diversity-aware selectors (DEITA, DS2's diversity filter, facility location).

Embeddings are an (N, d) float array aligned with the scores. Cosine similarities are computed on
L2-normalised copies of the rows, so a zero or non-finite embedding row among the candidates is an
error (its cosine is undefined). Similarity blocks are bounded by ``BLOCK_ELEMS`` entries.
"""

from __future__ import annotations

import numpy as np

from thresher.checks import check_int
from thresher.errors import ConfigError

# Upper bound on the elements of one temporary similarity block (2**24 float32 = 64 MiB).
BLOCK_ELEMS = 1 << 24


def stack_embeddings(vectors) -> np.ndarray:
    """(N, d) float32 from N per-row vectors (a score table's embedding column); (0, 0) when N = 0."""
    rows = [np.asarray(v, dtype=np.float32) for v in vectors]
    return np.stack(rows) if rows else np.empty((0, 0), dtype=np.float32)


def embedding_matrix(owner: str, emb, n: int) -> np.ndarray:
    """emb as an (n, d) float32/float64 array (float32 kept as is, everything else float64)."""
    try:
        X = np.asarray(emb)
        if X.dtype != np.float32:
            X = X.astype(np.float64, copy=False)
    except (TypeError, ValueError):
        raise ConfigError(f"The 'emb' parameter of {owner} must be a 2-D array of numbers. "
                          "Got values that cannot be read as numbers.") from None
    if X.ndim != 2 or len(X) != n:
        raise ConfigError(f"The 'emb' parameter of {owner} must be a 2-D array with one row per "
                          f"score ({n} rows). Got an array of shape {X.shape}.")
    return X


def row_norms(owner: str, X: np.ndarray, rows: np.ndarray) -> np.ndarray:
    """(len(rows),) L2 norms of X[rows]; raises if one is zero or not finite. einsum makes no
    (n, d) temporary."""
    norms = np.sqrt(np.einsum("ij,ij->i", X, X))[rows]
    bad = ~np.isfinite(norms) | (norms == 0)
    if bad.any():
        where = rows[bad]
        raise ConfigError(f"The 'emb' parameter of {owner} must have finite, non-zero rows for "
                          f"every candidate (cosine similarity is undefined otherwise). Got "
                          f"{where.size} bad row(s) (first indices: {where[:5].tolist()}).")
    return norms


def check_chunk(owner: str, chunk) -> int:
    """Rows compared per block: an int >= 1."""
    return check_int(owner, "chunk", chunk, 1)


def any_above(B: np.ndarray, A: np.ndarray, threshold: float) -> np.ndarray:
    """(b,) bool: row i of B has cosine > threshold with some row of A (rows unit-norm)."""
    hit = np.zeros(len(B), dtype=bool)
    step = max(1, BLOCK_ELEMS // max(1, len(B)))
    for c in range(0, len(A), step):
        hit |= (B @ A[c:c + step].T > threshold).any(axis=1)        # (b, step) -> (b,)
    return hit


def smallest_cosines(B: np.ndarray, A: np.ndarray, top: int) -> np.ndarray:
    """(b, min(top, len(A))): the smallest cosine similarities of each row of B to the rows of A,
    i.e. its largest cosine distances (unsorted within a row)."""
    t = min(top, len(A))
    low = np.empty((len(B), 0), dtype=B.dtype)
    step = max(t, BLOCK_ELEMS // max(1, len(B)))
    for c in range(0, len(A), step):
        sims = np.concatenate([low, B @ A[c:c + step].T], axis=1)   # (b, <= t + step)
        low = sims if sims.shape[1] <= t else np.partition(sims, t - 1, axis=1)[:, :t]
    return low
