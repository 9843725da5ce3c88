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
  alpagasus              column (rating), threshold | k | ratio, seed       rating >= 4.5, or a budget
  ds2_bucket             column (ds2_score), k | ratio                      buckets 5..0, rare breaks the last
  deita                  columns (product, default the main column), k | ratio, threshold (0.9), per_turn
  ds2_diversity          column, k, top, max_mean_distance                  DS2's inverted DEITA baseline
  facility_location      k | ratio, metric, where                           greedy FL on ``embedding``
  superfiltering_d       column (ifd), ifd_ratio | ifd_k, k | ratio, filter_below, metric
  opencs                 per_cluster, k, order                              needs the opencs_* columns
  global_threshold       rule (min | mean | quantile), q                    keep score >= tau, tau from the
                                                                            anchor set's scores (pooled over
                                                                            clients; thresher.pipeline.clients)
``where`` is a dict {column: {lt|le|gt|ge: value}} that restricts the candidates of top_k (e.g.
IFD below 1); with ``of: passing`` a ratio then counts only the rows that pass it.
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field

import numpy as np
import pandas as pd

from thresher import selection as S
from thresher.config import did_you_mean
from thresher.errors import ConfigError

SELECTOR_NAMES = ("full", "random", "top_k", "middle", "threshold", "superfiltering", "cherry_ifd",
                  "cherry_pre_experience", "alpagasus", "ds2_bucket", "deita", "ds2_diversity",
                  "facility_location", "superfiltering_d", "opencs", "global_threshold")

# Parameters of the selectors built on embeddings and judge columns (the others are read from the
# selection functions' signatures).
_PARAMS = {"alpagasus": {"threshold", "k", "ratio", "seed"}, "ds2_bucket": {"k", "ratio"},
           "deita": {"columns", "k", "ratio", "threshold", "per_turn"}, "ds2_diversity": {"k", "top", "max_mean_distance"},
           "facility_location": {"k", "ratio", "metric", "where"},
           "superfiltering_d": {"ifd_ratio", "ifd_k", "k", "ratio", "filter_below", "metric"},
           "opencs": {"per_cluster", "k", "order"}}


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
    if name == "global_threshold":
        raise ConfigError("Selector 'global_threshold' needs the anchor set's scores: it runs as the last stage "
                          "of a recipe with an anchor (thresher run ... --anchor FILE), not on a scores table alone.")
    if name == "random":
        return S.random_k(len(scores), **p)
    if name == "cherry_pre_experience":
        if "embedding" not in scores.columns:
            raise ConfigError("Selector 'cherry_pre_experience' needs an 'embedding' column: score with "
                              "perplexity mode=instruction pool=mean.")
        return S.cherry_pre_experience(_emb(scores, name), _col(scores, "ppl", None, name), **p)
    if name in _PARAMS:
        return _apply_embedding_selector(name, p, scores, cfg.column, default_column)
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


def _emb(scores: pd.DataFrame, selector: str) -> np.ndarray:
    from thresher.scoring.rareness import stack_embeddings

    if "embedding" not in scores.columns:
        raise ConfigError(f"Selector {selector!r} needs an 'embedding' column: add the 'embedding' scorer to the stage.")
    return stack_embeddings(scores, "embedding")


def _n(p: dict, n: int, selector: str) -> int:
    """k from k | ratio (exactly one), with the selection functions' own checks and rounding."""
    from thresher.selection.basic import _budget, _check_budget

    _check_budget(selector, p.get("k"), p.get("ratio"))
    return _budget(p.get("k"), p.get("ratio"), n)


def _apply_embedding_selector(name: str, p: dict, scores: pd.DataFrame, column, default_column) -> np.ndarray:
    from thresher.selection import diversity as D
    from thresher.selection.ds2 import ds2_bucket_select

    if name == "alpagasus":
        return D.alpagasus_select(_col(scores, column, default_column, name), **p)
    if name == "ds2_bucket":
        return ds2_bucket_select(_col(scores, column, default_column or "ds2_score", name),
                                 _col(scores, "rare", None, name), **p)
    if name == "deita":
        cols = p.pop("columns", None) or [column or default_column]
        if p.pop("per_turn", False):
            score = deita_turn_score(scores, cols)
        else:
            score = np.prod([_col(scores, c, None, name) for c in cols], axis=0)
        return D.deita_repr_filter(score, _emb(scores, name), **p)
    if name == "ds2_diversity":
        return D.ds2_diversity_filter(_col(scores, column, default_column, name), _emb(scores, name), **p)
    if name == "facility_location":
        mask = _where_mask(scores, p.pop("where", None))
        cand = None if mask is None else np.flatnonzero(mask)
        k = _n(p, len(scores), name)
        return D.facility_location(_emb(scores, name), k=k, candidates=cand, metric=p.get("metric", "euclidean"))
    if name == "superfiltering_d":
        # Superfiltering.D: keep IFD < filter_below, the top ifd_ratio by IFD, then facility location.
        ifd = _col(scores, column, default_column or "ifd", name)
        first = {"k": p["ifd_k"]} if "ifd_k" in p else {"ratio": p.get("ifd_ratio", 0.2)}
        pool = S.superfiltering_select(ifd, filter_below=p.get("filter_below", 1.0), base="pool", **first)
        k = _n({x: p[x] for x in ("k", "ratio") if x in p}, len(scores), name)
        return D.facility_location(_emb(scores, name), k=k, candidates=np.sort(pool), metric=p.get("metric", "euclidean"))
    # opencs
    from thresher.scoring.opencs import clusters_from_columns
    for c in ("label_set", "opencs_rank", "opencs_cluster_scores"):
        _col_exists(scores, c, name)
    members = clusters_from_columns(scores["label_set"], scores["opencs_rank"])
    per_row = [json.loads(x) for x in scores["opencs_cluster_scores"]]
    per_cluster = {c: np.array([per_row[i].get(str(c), np.nan) for i in m]) for c, m in members.items()}
    return D.opencs_select(per_cluster, members, **p)


def deita_turn_score(scores: pd.DataFrame, cols: list[str]) -> np.ndarray:
    """DEITA's multi-turn score: sum over turns of the product of the columns' per-turn values
    (complexity_t x quality_t), from the ``<column>_turns`` lists of judges run with turns: all."""
    for c in cols:
        _col_exists(scores, f"{c}_turns", "deita")
    per = [scores[f"{c}_turns"].to_numpy() for c in cols]
    out = np.empty(len(scores))
    for r in range(len(scores)):            # rows of ragged turn lists; a cheap selection-time pass
        prod = np.prod([np.asarray(v[r], dtype=np.float64) for v in per], axis=0)
        out[r] = prod.sum() if len(prod) else np.nan
    return out


def _col_exists(scores: pd.DataFrame, col: str, selector: str) -> None:
    if col not in scores.columns:
        raise ConfigError(f"Selector {selector!r} needs column {col!r}, which the scores do not have: run the "
                          "scorer that produces it in the stage first (opencs_* scorers for opencs; judges with "
                          "turns: all for deita per_turn).")


_SIGNATURE_OF = {"random": S.random_k, "top_k": S.top_k, "middle": S.top_k, "threshold": S.threshold_mask,
                 "superfiltering": S.superfiltering_select, "cherry_ifd": S.cherry_ifd_select,
                 "cherry_pre_experience": S.cherry_pre_experience}
_NOT_SETTABLE = {"scores", "ifd", "embeddings", "ppl", "n", "mask"}


def check_params(cfg: SelectConfig, owner: str) -> None:
    """Reject parameters the selector does not take (run by ``thresher validate``, no data needed)."""
    import inspect

    if cfg.selector == "global_threshold":
        from thresher.pipeline.clients import check_global_threshold
        return check_global_threshold(cfg.params, owner)
    if cfg.selector == "full":
        allowed = set()
    elif cfg.selector in _PARAMS:
        allowed = set(_PARAMS[cfg.selector])
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
