"""The numbers a report shows, vectorised over whole score columns: histograms with the kept share, the cut
value of a selection, example rows, and the comparison of runs (Spearman, Jaccard, disagreements)."""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import pandas as pd

BINS = 40


@dataclass
class Histogram:
    edges: np.ndarray        # (B+1,) bin edges over the finite values
    counts: np.ndarray       # (B,) rows per bin
    kept: np.ndarray         # (B,) kept rows per bin (zeros when the stage does not select)
    finite: int              # rows with a finite value (== counts.sum())
    nan: int                 # rows without one (NaN, +-inf)


def histogram(values: np.ndarray, kept: np.ndarray | None, bins: int = BINS) -> Histogram:
    """Histogram of the finite ``values`` (N,) and of the kept ones (``kept``: (N,) bool or None), same edges;
    an integer column with few distinct values gets one bin per integer."""
    v = np.asarray(values, dtype=np.float64)
    ok = np.isfinite(v)
    f = v[ok]
    if not f.size:
        return Histogram(np.array([0.0, 1.0]), np.zeros(1, np.int64), np.zeros(1, np.int64), 0, int(v.size))
    lo, hi = float(f.min()), float(f.max())
    if hi == lo:
        lo, hi = lo - 0.5, hi + 0.5
    if np.all(f == np.round(f)) and hi - lo + 1 <= bins:
        edges = np.arange(np.floor(lo) - 0.5, np.ceil(hi) + 1.0)
    else:
        edges = np.linspace(lo, hi, bins + 1)
    counts = np.histogram(f, edges)[0]
    kept_counts = np.histogram(v[ok & kept], edges)[0] if kept is not None else np.zeros_like(counts)
    return Histogram(edges, counts, kept_counts, int(f.size), int(v.size - f.size))


def cut_value(values: np.ndarray, kept: np.ndarray | None, higher_is_better: bool | None) -> float | None:
    """The boundary of the kept set in the selection's direction: the lowest kept finite value when higher is
    better, the highest when lower is; None without a selection, a direction or a kept finite value."""
    if kept is None or higher_is_better is None:
        return None
    v = np.asarray(values, dtype=np.float64)[kept]
    v = v[np.isfinite(v)]
    if not v.size:
        return None
    return float(v.min() if higher_is_better else v.max())


def order(values: np.ndarray, higher_is_better: bool | None) -> np.ndarray:
    """(N,) row positions best first (descending when higher is better or no direction is known, else
    ascending); NaN rows last; ties by row position."""
    v = np.asarray(values, dtype=np.float64)
    key = np.where(np.isfinite(v), -v if higher_is_better is not False else v, np.inf)
    return np.argsort(key, kind="stable")


def example_rows(values: np.ndarray, kept: np.ndarray | None, higher_is_better: bool | None,
                 n: int = 8, seed: int = 0) -> dict[str, np.ndarray]:
    """Row positions to show, by group: ``top`` and ``bottom`` (n each, of the finite values in the ranking's
    order), ``boundary`` (n around the last kept row in ranking order: half kept, half dropped; absent without
    a selection) and ``sample`` (n drawn uniformly, seeded, from the rest). At most 4n rows."""
    ranked = order(values, higher_is_better)
    finite = ranked[np.isfinite(np.asarray(values, dtype=np.float64)[ranked])]
    groups = {"top": finite[:n], "bottom": finite[-n:][::-1] if len(finite) > n else finite[:0]}
    if kept is not None and kept.any():
        pos = np.flatnonzero(kept[ranked])[-1]          # the last kept row in ranking order
        groups["boundary"] = ranked[max(pos - n // 2 + 1, 0):pos + n // 2 + 1]
    rest = np.setdiff1d(np.arange(len(values)), np.concatenate(list(groups.values())))
    groups["sample"] = np.sort(np.random.default_rng(seed).choice(rest, min(n, len(rest)), replace=False))
    return groups


def sample_rows(n_rows: int, at_most: int, seed: int = 0) -> np.ndarray:
    """Sorted row positions: all of them up to ``at_most``, else a seeded uniform sample of ``at_most``."""
    if n_rows <= at_most:
        return np.arange(n_rows)
    return np.sort(np.random.default_rng(seed).choice(n_rows, at_most, replace=False))


def spearman(a: np.ndarray, b: np.ndarray) -> tuple[float | None, int]:
    """Spearman's rho of the pairs where both are finite (average ranks for ties), and their count; None
    with fewer than 3 pairs or a constant side."""
    a, b = np.asarray(a, dtype=np.float64), np.asarray(b, dtype=np.float64)
    ok = np.isfinite(a) & np.isfinite(b)
    n = int(ok.sum())
    if n < 3:
        return None, n
    ra, rb = pd.Series(a[ok]).rank().to_numpy(), pd.Series(b[ok]).rank().to_numpy()
    if ra.std() == 0 or rb.std() == 0:
        return None, n
    return float(np.corrcoef(ra, rb)[0, 1]), n


def jaccard(a, b) -> float | None:
    """|A & B| / |A | B| of two id sets (None when both are empty)."""
    a, b = set(a), set(b)
    return len(a & b) / len(a | b) if a | b else None


def percentile_ranks(values: np.ndarray, higher_is_better: bool | None) -> np.ndarray:
    """(N,) position of each row in the ranking's order as a share in [0, 1] (0: best), NaN rows last."""
    n = len(values)
    pct = np.empty(n, dtype=np.float64)
    pct[order(values, higher_is_better)] = np.arange(n) / max(n - 1, 1)
    return pct


def disagreements(runs: list[dict], limit: int = 20) -> pd.DataFrame:
    """The rows where methods disagree most. ``runs``: per run {"label", "ids" (N,), "values" (N,) or None,
    "higher_is_better", "kept" (set of ids)}. Over the ids every run scored: rows kept by some runs and
    dropped by others, ordered by the spread of their percentile ranks (max - min over runs with a score,
    0 when fewer than two have one) descending; ``limit`` rows. Columns: id, spread, then per run
    ``<label>:score``, ``<label>:rank%``, ``<label>:kept``."""
    common = pd.Index(runs[0]["ids"])
    for r in runs[1:]:
        common = common.intersection(pd.Index(r["ids"]), sort=False)
    table = pd.DataFrame({"id": np.asarray(common, dtype=object)})
    ranks = []
    for r in runs:
        pos = pd.Index(r["ids"]).get_indexer(common)
        table[f"{r['label']}:kept"] = table["id"].isin(r["kept"]).to_numpy()
        if r["values"] is not None:
            v = np.asarray(r["values"], dtype=np.float64)
            table[f"{r['label']}:score"] = v[pos]
            table[f"{r['label']}:rank%"] = percentile_ranks(v, r["higher_is_better"])[pos] * 100
            ranks.append(table[f"{r['label']}:rank%"].to_numpy())
    kept = table[[f"{r['label']}:kept" for r in runs]].to_numpy()
    split = kept.any(axis=1) & ~kept.all(axis=1)
    table["spread"] = np.ptp(np.stack(ranks), axis=0) if len(ranks) >= 2 else 0.0
    table = table[split].sort_values("spread", ascending=False, kind="stable").head(limit)
    return table[["id", "spread", *[c for c in table.columns if ":" in c]]].reset_index(drop=True)
