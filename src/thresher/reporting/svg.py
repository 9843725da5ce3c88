"""Inline SVG charts, drawn here (no plotting library): a histogram with the kept share and the cut line,
and a scatter of score against response length. Every label is escaped; numbers are formatted here."""

from __future__ import annotations

import math
from html import escape

import numpy as np

from thresher.reporting.stats import Histogram

W, H = 420, 190                       # the drawing, in SVG units (it scales with the page)
L, R, T, B = 46, 18, 10, 34           # margins: left axis labels, right, top, bottom axis labels


def fmt(x: float) -> str:
    """A number in at most 4 significant digits (integers as integers)."""
    if x is None or not math.isfinite(x):
        return "n/a"
    return f"{int(x)}" if float(x).is_integer() and abs(x) < 1e7 else f"{x:.4g}"


def _axis(x0: float, x1: float, y0: float, y1: float, x_label: str, y_label: str, x_ticks=None) -> list[str]:
    """Axes over [x0, x1] x [y0, y1], 5 ticks on each, and the labels; ``x_ticks``: (value, text) pairs
    instead of even ones."""
    out = [f'<line class="ax" x1="{L}" y1="{H - B}" x2="{W - R}" y2="{H - B}"/>',
           f'<line class="ax" x1="{L}" y1="{T}" x2="{L}" y2="{H - B}"/>']
    even = [x0 + (x1 - x0) * i / 4 for i in range(5)]
    ticks = x_ticks if x_ticks is not None else [(v, fmt(v)) for v in even]
    for v, text in ticks:
        x = _sx(v, x0, x1)
        out.append(f'<text x="{x:.1f}" y="{H - B + 13}" text-anchor="middle">{escape(text)}</text>')
    for i in range(5):
        y = H - B - (H - B - T) * i / 4
        out.append(f'<text x="{L - 4}" y="{y + 3:.1f}" text-anchor="end">{fmt(y0 + (y1 - y0) * i / 4)}</text>')
    out.append(f'<text x="{(L + W - R) / 2}" y="{H - 4}" text-anchor="middle">{escape(x_label)}</text>')
    out.append(f'<text x="10" y="{(T + H - B) / 2}" text-anchor="middle" '
               f'transform="rotate(-90 10 {(T + H - B) / 2})">{escape(y_label)}</text>')
    return out


def _sx(v: float, x0: float, x1: float) -> float:
    return L + (W - L - R) * (v - x0) / ((x1 - x0) or 1.0)


def _sy(v: float, y_max: float) -> float:
    return H - B - (H - B - T) * v / (y_max or 1.0)


def histogram_svg(h: Histogram, column: str, cut: float | None, title: str) -> str:
    """Bars of all rows, the kept rows' bars over them, and a dashed line at ``cut``."""
    x0, x1 = float(h.edges[0]), float(h.edges[-1])
    y_max = float(4 * math.ceil(max(h.counts.max(), 1) / 4))      # whole-number ticks
    parts = [f'<svg class="hist" viewBox="0 0 {W} {H}" role="img"><title>{escape(title)}</title>']
    parts += _axis(x0, x1, 0.0, y_max, column, "rows")
    for lo, hi, n, k in zip(h.edges[:-1], h.edges[1:], h.counts, h.kept):
        xa, width = _sx(lo, x0, x1), max(_sx(hi, x0, x1) - _sx(lo, x0, x1) - 0.5, 0.5)
        if n:
            parts.append(f'<rect class="all" x="{xa:.1f}" y="{_sy(n, y_max):.1f}" width="{width:.1f}" '
                         f'height="{_sy(0, y_max) - _sy(n, y_max):.1f}"><title>{fmt(lo)} to {fmt(hi)}: {n} rows, '
                         f'{k} kept</title></rect>')
        if k:
            parts.append(f'<rect class="kept" x="{xa:.1f}" y="{_sy(k, y_max):.1f}" width="{width:.1f}" '
                         f'height="{_sy(0, y_max) - _sy(k, y_max):.1f}"/>')
    if cut is not None and x0 <= cut <= x1:
        x = _sx(cut, x0, x1)
        parts.append(f'<line class="cut" x1="{x:.1f}" y1="{T}" x2="{x:.1f}" y2="{H - B}"/>'
                     f'<text class="cut" x="{x + 3:.1f}" y="{T + 9}">cut {fmt(cut)}</text>')
    return "".join(parts) + "</svg>"


def scatter_svg(length: np.ndarray, score: np.ndarray, kept: np.ndarray | None, column: str, title: str) -> str:
    """Score (y) against response length in characters (x, log scale), kept rows highlighted; rows with a
    non-finite score are left out (they are counted in the NaN table)."""
    ok = np.isfinite(score)
    x, y = np.log10(1.0 + np.asarray(length, dtype=np.float64)[ok]), np.asarray(score, dtype=np.float64)[ok]
    k = kept[ok] if kept is not None else np.zeros(len(x), dtype=bool)
    parts = [f'<svg class="scatter" viewBox="0 0 {W} {H}" role="img"><title>{escape(title)}</title>']
    if not len(x):
        return "".join(parts) + f'<text x="{W / 2}" y="{H / 2}" text-anchor="middle">no finite scores</text></svg>'
    x0, x1 = 0.0, max(float(x.max()), 1.0)
    y0, y1 = float(y.min()), float(y.max())
    y1 = y1 if y1 > y0 else y0 + 1.0
    ticks = [(e, f"{10 ** e:g}") for e in range(0, int(math.floor(x1)) + 1)]
    parts += _axis(x0, x1, y0, y1, "response characters (log scale)", column, ticks)
    sx = L + (W - L - R) * (x - x0) / (x1 - x0)
    sy = H - B - (H - B - T) * (y - y0) / (y1 - y0)
    for cls, sel in (("dot", ~k), ("dot kept", k)):
        parts.extend(f'<circle class="{cls}" cx="{a:.1f}" cy="{b:.1f}" r="2"/>' for a, b in zip(sx[sel], sy[sel]))
    return "".join(parts) + "</svg>"
