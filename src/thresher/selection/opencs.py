"""OpenCS selection (``src/data_quality_SFT/src/sorted_1000.py``; METHODS.md 5.5): per-cluster top-20
in ascending cluster size, or a global top-k, over the contrastive pair scores of
``thresher.algorithms.opencs_tags``. Arrays in, row indices (int64) out, in selection order.
"""

from __future__ import annotations

import json
from collections.abc import Mapping, Sequence
from dataclasses import dataclass

import numpy as np

from thresher.algorithms.opencs_tags import clusters_from_columns
from thresher.checks import check_choice, check_int, check_real, float_array, is_int, param_error
from thresher.config import choice, option
from thresher.errors import ConfigError
from thresher.selection.base import Selector
from thresher.selection.basic import first_unique

ORDERS = ("ascending_size", "global")
_EMPTY = np.empty(0, dtype=np.int64)


def _check_params(owner: str, per_cluster, k, order, max_score) -> None:
    check_choice(owner, "order", order, ORDERS)
    check_int(owner, "per_cluster", per_cluster, 1)
    if k is not None and not (is_int(k) and k >= 0):
        raise param_error(owner, "k", "None or an int >= 0", k)
    if order == "global" and k is None:
        raise ConfigError(f"{owner} with order='global' needs the 'k' parameter (OpenCS: 1000). "
                          "Got k=None.")
    if max_score is not None:
        check_real(owner, "max_score", max_score)


def _clusters(func: str, clusters) -> tuple[list, list[np.ndarray]]:
    """(keys, member arrays) from a mapping id -> rows or a sequence of row arrays."""
    if isinstance(clusters, Mapping):
        keys, groups = list(clusters.keys()), list(clusters.values())
    elif isinstance(clusters, Sequence) and not isinstance(clusters, str):
        keys, groups = list(range(len(clusters))), list(clusters)
    else:
        raise param_error(func, "clusters", "a mapping cluster id -> row indices or a list of row "
                    "index arrays", type(clusters).__name__)
    out = []
    for key, g in zip(keys, groups):
        a = np.asarray(g)
        if not (a.ndim == 1 and (a.size == 0 or np.issubdtype(a.dtype, np.integer))
                and np.all(a >= 0)):
            raise ConfigError(f"The 'clusters' parameter of {func} must hold 1-D arrays of row "
                              f"indices >= 0. Got {a!r} for cluster {key!r}.")
        out.append(a.astype(np.int64))
    return keys, out


def _cluster_scores(func: str, scores, keys: list, members: list[np.ndarray]) -> list[np.ndarray]:
    """Per-cluster score arrays aligned with ``members``: from per-row scores (N,), or from a
    mapping / list of per-cluster arrays (OpenCS's pair scores differ per cluster)."""
    per_cluster = isinstance(scores, Mapping) or (
        isinstance(scores, (list, tuple)) and len(scores) > 0
        and all(np.ndim(x) == 1 for x in scores))
    if not per_cluster:
        s = float_array(func, "scores", scores)
        top = max((int(m.max()) for m in members if m.size), default=-1)
        if top >= len(s):
            raise ConfigError(f"The 'clusters' parameter of {func} refers to row {top}, but "
                              f"'scores' has only {len(s)} rows.")
        return [s[m] for m in members]
    if isinstance(scores, Mapping):
        if set(scores.keys()) != set(keys):
            raise ConfigError(f"The 'scores' mapping of {func} must have the same cluster ids "
                              "as 'clusters'.")
        groups = [scores[key] for key in keys]
    else:
        if len(scores) != len(keys):
            raise ConfigError(f"The 'scores' parameter of {func} must have one array per "
                              f"cluster ({len(keys)}). Got {len(scores)}.")
        groups = list(scores)
    out = []
    for key, g, m in zip(keys, groups, members):
        a = float_array(func, "scores", g)
        if len(a) != len(m):
            raise ConfigError(f"The scores of cluster {key!r} in {func} must align with its "
                              f"{len(m)} members. Got {len(a)} scores.")
        out.append(a)
    return out


def opencs_select(scores, clusters, *, per_cluster=20, k=None, order="ascending_size",
                  max_score=100.0) -> np.ndarray:
    """OpenCS selection (``src/data_quality_SFT/src/sorted_1000.py``, METHODS.md 5.5): indices in
    selection order.

    ``clusters``: mapping cluster id -> row indices, or a list of row-index arrays. ``scores``:
    one score per row (N,), or per-cluster arrays aligned with the members (a mapping with the
    same ids, or a list), since a row's pairwise score depends on the partner it was paired with
    in each cluster (see ``thresher.algorithms.opencs_tags.scored_members``). Scores are the judge's
    0-100 totals; NaN (unparsed) and scores above ``max_score`` (100; None: no cap) are skipped.

    order="ascending_size" (the code): clusters visited by ascending size, the number of
    entries given for the cluster (ties: the order given; ``scored_members`` gives only paired
    members, which is what the reference counts); from each, up to ``per_cluster`` (20)
    not-yet-selected members by score descending (ties: member order);
    ``k`` optionally caps the total. 50 clusters x 20 = 1,000.
    order="global" (the overview figure): the ``k`` best (cluster, member) scores overall,
    each row once; ``k`` is required.
    """
    f = "opencs_select"
    _check_params(f, per_cluster, k, order, max_score)
    keys, members = _clusters(f, clusters)
    sc = _cluster_scores(f, scores, keys, members)
    cap = np.inf if max_score is None else max_score
    # each cluster's usable members, best first (stable: ties keep member order)
    best_first = []
    for m, s in zip(members, sc):
        pos = np.flatnonzero(~np.isnan(s) & (s <= cap))
        pos = pos[np.argsort(-s[pos], kind="stable")]
        best_first.append((m[pos], s[pos]))
    limit = np.inf if k is None else int(k)
    if order == "global":
        rows = np.concatenate([r for r, _ in best_first] + [_EMPTY])
        vals = np.concatenate([v for _, v in best_first] + [np.empty(0)])
        best = first_unique(rows[np.argsort(-vals, kind="stable")])
        return best[:int(limit)].astype(np.int64)
    picked: list[np.ndarray] = []
    taken = np.zeros(1 + max((int(m.max()) for m in members if m.size), default=-1), dtype=bool)
    total = 0
    for c in np.argsort([len(m) for m in members], kind="stable"):
        if total >= limit:
            break
        rows = first_unique(best_first[c][0])
        new = rows[~taken[rows]][:int(min(per_cluster, limit - total))]
        taken[new] = True
        picked.append(new)
        total += len(new)
    return np.concatenate(picked + [_EMPTY]).astype(np.int64)


# ---------------------------------------------------------------------------------------------
# recipe adapter (thresher.selection.base)


@dataclass
class OpenCSParams:
    per_cluster: int = option(20, help="best members taken per cluster with order ascending_size, an int >= 1 "
                                       "(OpenCS: 20; 50 clusters x 20 = 1,000)")
    k: int | None = option(None, help="cap on the rows selected, an int >= 0; required with order global "
                                      "(OpenCS: 1000)")
    order: str = choice("ascending_size", *ORDERS,
                        help="ascending_size: clusters from the smallest, per_cluster each (OpenCS's code); "
                             "global: the k best pair scores overall (its overview figure)")

    def check(self, owner: str) -> None:
        _check_params(owner, self.per_cluster, self.k, self.order, None)


class OpenCSSelector(Selector):
    """OpenCS: per tag cluster in ascending size, the best contrastive pair scores (or a global top-k)."""

    name = "opencs"
    Params = OpenCSParams
    reads_main = False
    # the columns of the opencs_clusters and opencs_pairs scorers
    COLUMNS = ("label_set", "opencs_rank", "opencs_cluster_scores")

    def inputs(self, main=None) -> tuple[str, ...]:
        return self.COLUMNS

    def _select(self, scores, main, higher_is_better) -> np.ndarray:
        p = self.params
        members = clusters_from_columns(scores["label_set"], scores["opencs_rank"])
        per_row = [json.loads(x) for x in scores["opencs_cluster_scores"]]      # {cluster id: score}
        per_cluster = {c: np.array([per_row[i].get(str(c), np.nan) for i in m]) for c, m in members.items()}
        return opencs_select(per_cluster, members, per_cluster=p.per_cluster, k=p.k, order=p.order)
