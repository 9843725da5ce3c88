"""Exact k-nearest neighbours on cosine distance, chunked over queries (METHODS.md 0.5 item 5).

One primitive shared by DS2 (HOC consensus, SimiFeat detection, long-tail score) and the KNN
rareness baseline (METHODS.md 6.6). Embeddings are L2-normalised here, so callers may pass raw
vectors; cosine distance = 1 - cosine similarity, clamped to [0, 2] (rounding can otherwise give
-1e-7 for a point and itself).

Cost: one (chunk, P) similarity block at a time, P = pool size (2P with ``duplicate_pool``), so
peak memory is about ``chunk_size * P * (element size + 2 bytes)``; time O(n * P * d).

Ties are broken by pool index (lower first), whatever the chunk size or device, so results are
deterministic: ``torch.topk`` alone makes no promise about which of several equal values it
returns, which matters for exact duplicate vectors and for fp16 similarities (DS2's setting).
"""

from __future__ import annotations

import numpy as np

from thresher.checks import check_bool, check_choice, check_int, param_error
from thresher.errors import ConfigError

_DTYPES = ("float32", "float16", "bfloat16", "float64")


def _resolve_device(func: str, device):
    import torch

    if device == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    try:
        return torch.device(device)
    except (RuntimeError, TypeError):
        raise param_error(func, "device", "'auto', 'cpu', 'cuda' or 'cuda:N'", device) from None


def _as_matrix(func: str, param: str, x, wide: bool = False):
    """x as a finite (n, d) torch tensor on the CPU, L2-normalised per row; float32, or float64
    when ``wide``."""
    import torch

    t = x.detach().cpu() if isinstance(x, torch.Tensor) else torch.from_numpy(np.asarray(x))
    if t.ndim != 2 or not (t.is_floating_point() or t.dtype in (torch.int32, torch.int64)):
        raise ConfigError(f"The '{param}' parameter of {func} must be a 2-D array of numbers "
                          f"(n, d). Got shape {tuple(t.shape)} and dtype {t.dtype}.")
    t = t.to(torch.float64 if wide else torch.float32)
    norm = t.norm(dim=1, keepdim=True)                       # (n, 1)
    bad = (~torch.isfinite(norm[:, 0])) | (norm[:, 0] == 0)
    if bool(bad.any()):
        rows = torch.nonzero(bad)[:, 0][:5].tolist()
        raise ConfigError(f"The '{param}' parameter of {func} must hold finite, non-zero rows "
                          f"(cosine distance needs a direction). Got {int(bad.sum())} bad row(s) "
                          f"(first indices: {rows}).")
    return t / norm


def _topk_stable(sim, k: int):
    """The k largest entries per row of sim (c, P), ties broken by lower column index.

    Returns (values (c, k) descending, columns (c, k) int64). One ``topk`` of k+1 per row finds
    the rows where equal values straddle the cut (the k-th and (k+1)-th are equal); only those
    rows are rescanned to admit the lowest-index ties, so the usual cost is a single topk.
    """
    import torch

    m = min(k + 1, sim.shape[1])
    vals, cols = torch.topk(sim, m, dim=1)                   # (c, m), ties in arbitrary order
    if m > k:
        straddle = vals[:, k] == vals[:, k - 1]              # (c,)
        vals, cols = vals[:, :k].contiguous(), cols[:, :k].contiguous()
        if bool(straddle.any()):
            rows = torch.nonzero(straddle)[:, 0]
            sub, kth = sim[rows], vals[rows, k - 1:k]        # (r, P), (r, 1)
            above, tie = sub > kth, sub == kth
            need = k - above.sum(1, keepdim=True)            # slots left for the tied values
            take = above | (tie & (tie.cumsum(1) <= need))   # lowest-index ties fill them
            cols[rows] = torch.nonzero(take)[:, 1].view(-1, k)
            vals[rows] = sub.gather(1, cols[rows])
    cols, perm = torch.sort(cols, dim=1)                     # index ascending ...
    vals, order = torch.sort(vals.gather(1, perm), dim=1, descending=True, stable=True)
    return vals, cols.gather(1, order)                       # ... then value descending


def knn(query_emb, pool_emb=None, k: int = 10, *, exclude_self: bool = True,
        duplicate_pool: bool = False, chunk_size: int = 4096, device: str = "auto",
        dtype: str = "float32"):
    """The ``k`` nearest pool points of every query by cosine distance.

    query_emb: (n, d) embeddings; pool_emb: (P, d) or None (the query is the pool). Both are
    L2-normalised here. Returns ``(dist, idx)``: dist (n, k) float32 cosine distances in [0, 2],
    ascending along each row; idx (n, k) int64 pool indices. Equal distances are ordered by pool
    index, lower first.

    exclude_self: with ``pool_emb=None``, drop each point itself from its own neighbours, by
      index, so an exact duplicate vector elsewhere in the pool is still found (at distance 0).
      Ignored when a separate pool is given (no query is in it).
    duplicate_pool: DS2's faithful pool (``load_embedding(..., duplicate=True)``): the pool holds
      every sample twice, so each point's neighbours include itself and its copy (distances ~0)
      and nothing is excluded (``exclude_self`` has no effect). Indices are mapped back to the
      un-duplicated pool (0..P-1), so a point's own index appears twice in its row. Ties go by
      index in the 2P pool: with exact duplicates in the data, all originals precede all copies.
    chunk_size: queries per similarity block; bounds memory, does not change the result.
    device: "auto" (CUDA if available), "cpu", "cuda", "cuda:N".
    dtype: matmul precision: "float32" (default), "float16" (DS2 computes in fp16; more ties),
      "bfloat16", "float64".
    """
    import torch

    f = "knn"
    k = check_int(f, "k", k, 1)
    chunk_size = check_int(f, "chunk_size", chunk_size, 1)
    check_choice(f, "dtype", dtype, _DTYPES)
    check_bool(f, "exclude_self", exclude_self)
    check_bool(f, "duplicate_pool", duplicate_pool)
    dev = _resolve_device(f, device)
    wide = dtype == "float64"
    q = _as_matrix(f, "query_emb", query_emb, wide)          # (n, d)
    self_pool = pool_emb is None
    p = q if self_pool else _as_matrix(f, "pool_emb", pool_emb, wide)   # (P, d)
    if p.shape[1] != q.shape[1]:
        raise ConfigError(f"The 'query_emb' and 'pool_emb' parameters of {f} must have the same "
                          f"width. Got {q.shape[1]} and {p.shape[1]}.")
    n, n_pool = q.shape[0], p.shape[0]
    drop_self = self_pool and exclude_self and not duplicate_pool
    reps = 2 if duplicate_pool else 1
    avail = reps * n_pool - (1 if drop_self else 0)
    if k > avail:
        raise ConfigError(f"The 'k' parameter of {f} must be at most the number of candidate "
                          f"neighbours ({avail}: pool of {n_pool}"
                          f"{', duplicated' if duplicate_pool else ''}"
                          f"{', minus self' if drop_self else ''}). Got {k}.")

    tdt = getattr(torch, dtype)
    pool = p.to(dev, tdt)
    if duplicate_pool:
        pool = torch.cat([pool, pool])                       # (2P, d): sample i at i and P+i
    dist = torch.empty((n, k), dtype=torch.float32)
    idx = torch.empty((n, k), dtype=torch.int64)
    with torch.no_grad():
        for s in range(0, n, chunk_size):
            e = min(s + chunk_size, n)
            sim = q[s:e].to(dev, tdt) @ pool.T               # (c, P·reps) cosine similarities
            if drop_self:
                r = torch.arange(e - s, device=dev)
                sim[r, r + s] = -torch.inf                   # the point itself, by index
            vals, cols = _topk_stable(sim, k)                # (c, k), (c, k)
            dist[s:e] = (1.0 - vals.float()).clamp_(0.0, 2.0).cpu()
            idx[s:e] = (cols % n_pool if duplicate_pool else cols).cpu()
    return dist.numpy(), idx.numpy()
