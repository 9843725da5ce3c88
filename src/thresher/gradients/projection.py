"""Seeded Rademacher random projection (P -> d), generated block by block, never materialised whole.

R is a (P, d) matrix of +-1 entries; project(x) = x @ R / sqrt(d), so E[<Rx, Ry>/d] = <x, y> and the
Johnson-Lindenstrauss bound gives inner products and norms within about 1/sqrt(d) relative error
(d = 8192: ~1 %). Rows of R come in fixed blocks of ``BLOCK_ROWS`` rows; block k is drawn from a torch
generator seeded with (seed, k), so R depends only on (seed, P, d): not on the chunk size, the batch, or
which process computes it. Entries are the sign bits of random bytes (8 entries per int64 draw), about
10x cheaper than a float Gaussian. Memory at any time: ``chunk_rows x d`` floats (default 4096 x 8192 x 4
bytes = 128 MiB). fp32 accumulation. R is always drawn on the CPU (then moved to the input's device), so
it is the same on every device.

Cost note: a dense P x d projection of a batch costs one pass of R generation (P*d entries) plus a
(B, P) @ (P, d) matmul, so projecting a batch at once amortises generation over its samples; a
one-sample loop pays generation once per sample.
"""

from __future__ import annotations

import numpy as np
import torch

from thresher.errors import ConfigError

BLOCK_ROWS = 512


def _block_seed(seed: int, block: int) -> int:
    a, b = np.random.SeedSequence([seed, block]).generate_state(2, dtype=np.uint32)
    return int((int(a) << 31) ^ int(b))


def rademacher_block(seed: int, block: int, rows: int, d: int) -> torch.Tensor:
    """(rows, d) float32 of +-1: rows [block*BLOCK_ROWS, ...) of R."""
    g = torch.Generator().manual_seed(_block_seed(seed, block))
    raw = torch.randint(-2**63, 2**63 - 1, (rows, (d + 7) // 8), generator=g, dtype=torch.int64)
    bytes_ = raw.view(torch.int8)[:, :d]                    # (rows, d) uniform random bytes
    return ((bytes_ >> 7) * 2 + 1).to(torch.float32)       # sign bit -> -1 or +1


class RademacherProjector:
    """Project (B, P) vectors to (B, d). Reproducible from ``seed``; chunk size does not change R."""

    def __init__(self, in_dim: int, out_dim: int = 8192, seed: int = 0, chunk_rows: int = 4096):
        if not isinstance(out_dim, int) or out_dim < 1:
            raise ConfigError(f"The 'proj_dim' parameter must be an int >= 1. Got {out_dim!r}.")
        if not isinstance(chunk_rows, int) or chunk_rows < 1:
            raise ConfigError(f"The 'chunk_rows' parameter must be an int >= 1. Got {chunk_rows!r}.")
        self.in_dim, self.out_dim, self.seed = int(in_dim), out_dim, int(seed)
        self.blocks_per_chunk = max(1, chunk_rows // BLOCK_ROWS)

    def project(self, x: torch.Tensor) -> torch.Tensor:
        if x.ndim != 2 or x.shape[1] != self.in_dim:
            raise ConfigError(f"The projector expects (B, {self.in_dim}) inputs. Got {tuple(x.shape)}.")
        x = x.float()
        out = torch.zeros(x.shape[0], self.out_dim, device=x.device)
        n_blocks = -(-self.in_dim // BLOCK_ROWS)
        for b0 in range(0, n_blocks, self.blocks_per_chunk):        # loop over chunks of R, not samples
            blocks = range(b0, min(b0 + self.blocks_per_chunk, n_blocks))
            r = torch.cat([rademacher_block(self.seed, k, min(BLOCK_ROWS, self.in_dim - k * BLOCK_ROWS),
                                            self.out_dim) for k in blocks]).to(x.device)
            start = b0 * BLOCK_ROWS
            out += x[:, start: start + r.shape[0]] @ r                # (B, rows) @ (rows, d)
        return out / self.out_dim ** 0.5
