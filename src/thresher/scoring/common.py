"""Shared pieces of the language-model scorers: aggregating per-token losses of units back to rows
(rows are rendered into units by ``thresher.data.templates.render_units``)."""

from __future__ import annotations

import numpy as np


def row_mean_loss(nll: list[np.ndarray], ok: np.ndarray, owner: np.ndarray, n_rows: int):
    """Token-weighted mean loss per row over its scorable units; NaN where a row has none.

    Returns (mean_loss, n_tokens) arrays of length n_rows.
    """
    sums = np.array([x.sum() for x in nll], dtype=np.float64) * ok
    counts = np.array([len(x) for x in nll], dtype=np.float64) * ok
    tot = np.bincount(owner, weights=sums, minlength=n_rows)
    cnt = np.bincount(owner, weights=counts, minlength=n_rows)
    with np.errstate(invalid="ignore", divide="ignore"):
        mean = np.where(cnt > 0, tot / np.where(cnt > 0, cnt, 1), np.nan)
    return mean, cnt.astype(np.int64)


def row_status(status: list[str], owner: np.ndarray, n_rows: int) -> np.ndarray:
    """'ok' if any unit of the row was scored, else the first unit's reason."""
    out = np.full(n_rows, None, dtype=object)
    for s, r in zip(status, owner):
        if s == "ok" or out[r] is None:
            out[r] = s if out[r] != "ok" else "ok"
    out[np.equal(out, None)] = "no scorable turn"
    return out.astype(str)
