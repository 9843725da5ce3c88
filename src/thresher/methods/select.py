"""Apply a named selector to a scores table: the bridge from columns to the pure array selectors.

Selectors (``SelectConfig.selector``) and their parameters:
  full                   every row (no parameters)
  random                 k | ratio, seed                      uniform without replacement
  top_k                  column, k | ratio, of, higher_is_better, where, nan
  middle                 column, k | ratio                    rows closest to the column's median
  threshold              column, lt | le | gt | ge            every row passing the bounds
  superfiltering         column (ifd), k | ratio, base, filter_below
  cherry_ifd             column (ifd), k | ratio, base, keep_max
  cherry_pre_experience  n_clusters, per_cluster, low_pct, high_pct, seed  (columns ppl, embedding)
``where`` is a dict {column: {lt|le|gt|ge: value}} that restricts the candidates of top_k (e.g.
IFD below 1); with ``of: passing`` a ratio then counts only the rows that pass it.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np
import pandas as pd

from thresher import selection as S
from thresher.config import did_you_mean
from thresher.errors import ConfigError

SELECTOR_NAMES = ("full", "random", "top_k", "middle", "threshold", "superfiltering", "cherry_ifd",
                  "cherry_pre_experience")


@dataclass
class SelectConfig:
    selector: str = "top_k"
    column: str | None = None
    params: dict = field(default_factory=dict)

    def check(self, owner):
        if self.selector not in SELECTOR_NAMES:
            raise ConfigError(f"{owner}: unknown selector {self.selector!r}.{did_you_mean(self.selector, SELECTOR_NAMES)}"
                              f" Known selectors: {', '.join(SELECTOR_NAMES)}.")


def _col(scores: pd.DataFrame, name: str | None, default: str | None, selector: str) -> np.ndarray:
    name = name or default
    if name is None or name not in scores.columns:
        raise ConfigError(f"Selector {selector!r} needs score column {name!r}, which the scores do not have "
                          f"(columns: {', '.join(c for c in scores.columns if c != 'id')}).{did_you_mean(name, scores.columns)}")
    return scores[name].to_numpy(dtype=np.float64)


def _where_mask(scores: pd.DataFrame, where: dict | None) -> np.ndarray | None:
    if not where:
        return None
    mask = np.ones(len(scores), dtype=bool)
    for col, bounds in where.items():
        if not isinstance(bounds, dict):
            raise ConfigError(f"'where' must map a column to bounds like {{lt: 1.0}}. Got {col!r}: {bounds!r}.")
        mask &= S.threshold_mask(_col(scores, col, None, "where"), **bounds)
    return mask


def apply_selector(cfg: SelectConfig, scores: pd.DataFrame, *, default_column: str | None = None,
                   higher_is_better: bool | None = None) -> np.ndarray:
    """Row indices selected by ``cfg`` (rank order where the selector ranks)."""
    p, name = dict(cfg.params), cfg.selector
    if name == "full":
        return np.arange(len(scores), dtype=np.int64)
    if name == "random":
        return S.random_k(len(scores), **p)
    if name == "cherry_pre_experience":
        emb = np.stack(scores["embedding"].to_numpy()) if "embedding" in scores.columns else None
        if emb is None:
            raise ConfigError("Selector 'cherry_pre_experience' needs an 'embedding' column: score with "
                              "perplexity mode=instruction pool=mean.")
        return S.cherry_pre_experience(emb, _col(scores, "ppl", None, name), **p)
    col = _col(scores, cfg.column, default_column, name)
    if name == "superfiltering":
        return S.superfiltering_select(col, **p)
    if name == "cherry_ifd":
        return S.cherry_ifd_select(col, **p)
    if name == "threshold":
        return np.flatnonzero(S.threshold_mask(col, **p)).astype(np.int64)
    if name == "middle":
        dist = np.abs(col - np.nanmedian(col))
        return S.top_k(dist, higher_is_better=False, **p)
    where = p.pop("where", None)
    if "higher_is_better" not in p:
        if higher_is_better is None:
            raise ConfigError(f"Selector 'top_k' on column {cfg.column or default_column!r}: say which end to keep "
                              "with higher_is_better: true|false (this score has no fixed direction).")
        p["higher_is_better"] = higher_is_better
    return S.top_k(col, mask=_where_mask(scores, where), **p)


_SIGNATURE_OF = {"random": S.random_k, "top_k": S.top_k, "middle": S.top_k, "threshold": S.threshold_mask,
                 "superfiltering": S.superfiltering_select, "cherry_ifd": S.cherry_ifd_select,
                 "cherry_pre_experience": S.cherry_pre_experience}
_NOT_SETTABLE = {"scores", "ifd", "embeddings", "ppl", "n", "mask"}


def check_params(cfg: SelectConfig, owner: str) -> None:
    """Reject parameters the selector does not take (run by ``thresher validate``, no data needed)."""
    import inspect

    if cfg.selector == "full":
        allowed = set()
    else:
        allowed = set(inspect.signature(_SIGNATURE_OF[cfg.selector]).parameters) - _NOT_SETTABLE
        if cfg.selector == "top_k":
            allowed.add("where")
        if cfg.selector == "middle":
            allowed -= {"higher_is_better"}
    for key in cfg.params:
        if key not in allowed:
            raise ConfigError(f"{owner}: selector {cfg.selector!r} has no parameter {key!r}.{did_you_mean(key, allowed)}"
                              f" Its parameters: {', '.join(sorted(allowed)) or '(none)'}.")
    _check_values(cfg, owner)


def _check_values(cfg: SelectConfig, owner: str) -> None:
    """Check the parameter values too (ranges, exactly one of k and ratio, choices) by running the
    selector on zero rows: a bad value then fails before any scoring, not after it."""
    p, name = dict(cfg.params), cfg.selector
    empty = np.zeros(0)
    try:
        if name == "random":
            S.random_k(0, **p)
        elif name == "cherry_pre_experience":
            S.cherry_pre_experience(np.zeros((0, 1)), empty, **p)
        elif name == "threshold":
            S.threshold_mask(empty, **p)
        elif name in ("top_k", "middle"):
            p.pop("where", None)
            p.setdefault("higher_is_better", True)
            S.top_k(empty, **p)
        elif name in ("superfiltering", "cherry_ifd"):
            _SIGNATURE_OF[name](empty, **p)
    except ConfigError as e:
        raise ConfigError(f"{owner}: {e}") from None
