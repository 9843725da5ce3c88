"""Generic selectors over score arrays: arrays in, indices (or a mask) out.

Conventions shared by every function here:
* scores are a 1-D float array, one per row; NaN means "no score" and is never selected;
* a budget is exactly one of ``k`` (an int >= 0) or ``ratio`` (a float in (0, 1]); a ratio becomes
  ``int(ratio * base)`` (floor, as the reference scripts do), with ``base`` chosen per function;
* when fewer candidates exist than the budget, all candidates are returned (no error): the
  caller compares ``len(result)`` with the budget and reports the shortfall;
* ranking is a stable numpy sort over candidates taken in index order, so ties keep index order.

The recipe adapters of these rules (full, random, top_k, middle, threshold, superfiltering,
cherry_ifd; see ``thresher.selection.base``) are at the end of the file.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from thresher.checks import (check_bool, check_choice, check_int, check_real, float_array, is_int, is_real,
                             param_error)
from thresher.config import choice, option
from thresher.errors import ConfigError
from thresher.selection.base import Selector, column_values, direction_error

_BOUNDS = ("lt", "le", "gt", "ge")

# ---------------------------------------------------------------------------------------------
# budgets and ranking (shared with the other selection modules, the pipeline and IterIT)


def check_budget(owner: str, k, ratio) -> None:
    """Exactly one of k (int >= 0) and ratio (float in (0, 1])."""
    if (k is None) == (ratio is None):
        raise ConfigError(f"{owner} needs exactly one of the 'k' and 'ratio' parameters. "
                          f"Got k={k!r}, ratio={ratio!r}.")
    if k is not None and not (is_int(k) and k >= 0):
        raise param_error(owner, "k", "an int >= 0", k)
    if ratio is not None and not (is_real(ratio) and 0 < ratio <= 1):
        raise param_error(owner, "ratio", "a float in (0, 1]", ratio)


def budget(k, ratio, base: int) -> int:
    """k, or int(ratio * base): floor, like the reference scripts' int(len(data) * rate)."""
    return int(k) if k is not None else int(ratio * int(base))


def ranked(scores: np.ndarray, cand: np.ndarray, descending: bool) -> np.ndarray:
    """(C,) int64 indices of the candidate rows (``cand``: (N,) bool), best first; ties keep index
    order (stable sort)."""
    idx = np.flatnonzero(cand)                               # (C,) ascending row indices
    key = -scores[idx] if descending else scores[idx]
    return idx[np.argsort(key, kind="stable")].astype(np.int64, copy=False)


def first_unique(rows: np.ndarray) -> np.ndarray:
    """rows without repeats, keeping each value's first occurrence, order preserved."""
    _, first = np.unique(rows, return_index=True)
    return rows[np.sort(first)]


def check_base(owner: str, param: str, value, names) -> None:
    """A ratio's base: one of the ``names`` or a positive int."""
    if not ((isinstance(value, str) and value in names) or (is_int(value) and value > 0)):
        raise param_error(owner, param, "one of " + ", ".join(repr(c) for c in names) + " or a positive int",
                          value)


def _base(func: str, param: str, value, named: dict[str, int]) -> int:
    """Resolve a ratio base: one of the named sizes, or a positive int given as is."""
    check_base(func, param, value, named)
    return int(named[value]) if isinstance(value, str) else int(value)


def _mask(func: str, mask, n: int) -> np.ndarray:
    if mask is None:
        return np.ones(n, dtype=bool)
    m = np.asarray(mask)
    if m.dtype != bool or m.shape != (n,):
        raise ConfigError(f"The 'mask' parameter of {func} must be None or a boolean array of "
                          f"shape ({n},). Got an array of dtype {m.dtype} and shape {m.shape}.")
    return m


def _ordered(picked: np.ndarray, order: str) -> np.ndarray:
    return np.sort(picked) if order == "original" else picked


# ---------------------------------------------------------------------------------------------
# selectors


def threshold_mask(scores, *, lt=None, le=None, gt=None, ge=None) -> np.ndarray:
    """Boolean mask, True where every given bound holds (``scores < lt``, ``<= le``, ``> gt``,
    ``>= ge``). NaN scores are always False. At least one bound is required."""
    f = "threshold_mask"
    s = float_array(f, "scores", scores)
    given = {n: v for n, v in zip(_BOUNDS, (lt, le, gt, ge)) if v is not None}
    if not given:
        raise ConfigError(f"{f} needs at least one of the 'lt', 'le', 'gt' and 'ge' parameters. "
                          "Got none.")
    for name, v in given.items():
        check_real(f, name, v)
    ops = {"lt": np.less, "le": np.less_equal, "gt": np.greater, "ge": np.greater_equal}
    out = ~np.isnan(s)
    for name, v in given.items():
        out &= ops[name](s, v)
    return out


def top_k(scores, *, k=None, ratio=None, of="all", mask=None, higher_is_better=True,
          nan="exclude", order="rank") -> np.ndarray:
    """Indices (int64) of the best ``k`` rows, or of the best ``int(ratio * base)`` rows.

    Candidates are the rows where ``mask`` is True (None: all rows) and the score is not NaN.
    ``of`` sets the ratio's base: "all" = len(scores); "passing" = the number of candidates
    (rows passing ``mask`` with a non-NaN score); a positive int = that number as given
    (Superfiltering hard-codes Alpaca's 52002). With fewer candidates than the budget, all
    candidates are returned. ``nan``: "exclude" leaves NaN rows out; "error" raises if any row
    passing ``mask`` has a NaN score. Ranking: score descending if ``higher_is_better`` else
    ascending, ties by lower index first either way. ``order``: "rank" (best first) or
    "original" (ascending index, i.e. dataset order).
    """
    f = "top_k"
    s = float_array(f, "scores", scores)
    m = _mask(f, mask, len(s))
    check_budget(f, k, ratio)
    check_choice(f, "nan", nan, ("exclude", "error"))
    check_choice(f, "order", order, ("rank", "original"))
    check_bool(f, "higher_is_better", higher_is_better)
    bad = np.flatnonzero(m & np.isnan(s))
    if nan == "error" and bad.size:
        raise ConfigError(f"{f} found NaN scores in {bad.size} candidate row(s) (first indices: "
                          f"{bad[:5].tolist()}) and the 'nan' parameter is 'error'. Fix those "
                          "scores, or pass nan='exclude' to leave those rows out.")
    cand = m & ~np.isnan(s)
    size = _base(f, "of", of, {"all": len(s), "passing": cand.sum()})
    return _ordered(ranked(s, cand, bool(higher_is_better))[:budget(k, ratio, size)], order)


def random_k(n, *, k=None, ratio=None, seed=0) -> np.ndarray:
    """``k`` (or ``int(ratio * n)``) row indices out of ``range(n)``, uniform without replacement:
    ``np.random.default_rng(seed).permutation(n)[:count]``, in that permutation order. A ``k``
    larger than ``n`` returns all ``n`` rows."""
    f = "random_k"
    if not (is_int(n) and n >= 0):
        raise param_error(f, "n", "an int >= 0", n)
    check_budget(f, k, ratio)
    if not (is_int(seed) and seed >= 0):
        raise param_error(f, "seed", "an int >= 0", seed)
    count = budget(k, ratio, n)
    return np.random.default_rng(seed).permutation(n)[:count].astype(np.int64, copy=False)


def superfiltering_select(ifd, *, ratio=None, k=None, base="pool", filter_below=1.0) -> np.ndarray:
    """Superfiltering's rule (``code_ifd/select_data.py``), indices in rank order.

    Candidates: numeric IFD strictly below ``filter_below`` (NaN never). Sorted by IFD
    descending, ties by lower index first (the reference's stable ``sorted(reverse=True)``).
    Takes ``k``, or ``int(ratio * B)`` with B = len(ifd) for base="pool", the candidate count
    for base="survivors", or the int given: base=52002 reproduces the reference, which
    hard-codes the Alpaca size whatever the input. Fewer candidates than that: all of them.
    """
    f = "superfiltering_select"
    s = float_array(f, "ifd", ifd)
    check_budget(f, k, ratio)
    check_real(f, "filter_below", filter_below)
    cand = s < filter_below                                  # NaN compares False
    size = _base(f, "base", base, {"pool": len(s), "survivors": cand.sum()})
    return ranked(s, cand, descending=True)[:budget(k, ratio, size)]


def cherry_ifd_select(ifd, *, ratio=None, k=None, base="survivors", keep_max=1.0,
                      order="original") -> np.ndarray:
    """Cherry's rule (``data_by_IFD.py``): the highest-IFD survivors.

    Survivors: numeric IFD <= ``keep_max`` (Cherry rejects only IFD > 1; IFD == 1 stays).
    They are sorted ascending by (IFD, index) and the last ``k`` taken, or the last
    ``int(B * ratio)`` with B = the survivor count for base="survivors" (``data_by_IFD.py``),
    len(ifd) for base="pool" (``select_from_ifd_json.py``), or the int given. Because the last
    rows of an (IFD, index) sort are taken, a tie at the cut keeps the *higher* index, as the
    reference does (``select_from_ifd_json.py``'s stable descending sort would keep the lower
    one; the two only differ on exactly equal IFDs). ``k=0`` selects nothing (the reference's
    ``[-0:]`` slice would select everything). ``order``: "original" (dataset order, as Cherry
    writes it) or "rank" (highest IFD first; on ties, higher index first).
    """
    f = "cherry_ifd_select"
    s = float_array(f, "ifd", ifd)
    check_budget(f, k, ratio)
    check_real(f, "keep_max", keep_max)
    check_choice(f, "order", order, ("original", "rank"))
    cand = s <= keep_max                                     # NaN compares False
    size = _base(f, "base", base, {"survivors": cand.sum(), "pool": len(s)})
    asc = ranked(s, cand, descending=False)                 # sorted((ifd, idx)) of survivors
    count = min(budget(k, ratio, size), len(asc))
    return _ordered(asc[len(asc) - count:][::-1], order)


# ---------------------------------------------------------------------------------------------
# recipe adapters (thresher.selection.base): score table in, row positions out


@dataclass
class BudgetParams:
    """Exactly one of ``k`` (rows, an int >= 0) and ``ratio`` (a float in (0, 1])."""
    k: int | None = option(None, help="rows to select, an int >= 0; give exactly one of k | ratio")
    ratio: float | None = option(None, help="rows to select as a fraction in (0, 1]: int(ratio * base) rows, the "
                                            "base being all rows unless an 'of' | 'base' parameter says otherwise")

    def check(self, owner: str) -> None:
        check_budget(owner, self.k, self.ratio)


def check_where(owner: str, where) -> None:
    """``where``: None or a mapping {column: {lt|le|gt|ge: number, ...}} restricting the candidates."""
    if where is None:
        return
    if not isinstance(where, dict):
        raise param_error(owner, "where", "a mapping of columns to bounds like {ifd: {lt: 1.0}}", where)
    for col, bounds in where.items():
        if not (isinstance(bounds, dict) and bounds and set(bounds) <= set(_BOUNDS)):
            raise ConfigError(f"The 'where' parameter of {owner} must map a column to bounds like {{lt: 1.0}} "
                              f"(lt, le, gt, ge). Got {col!r}: {bounds!r}.")
        for op, v in bounds.items():
            check_real(f"{owner} (where {col})", op, v)


def where_mask(scores, where: dict | None) -> np.ndarray | None:
    """(N,) bool: the rows of the score table passing every bound of ``where``; None without one."""
    if not where:
        return None
    mask = np.ones(len(scores), dtype=bool)
    for col, bounds in where.items():
        mask &= threshold_mask(column_values(scores, col), **bounds)
    return mask


class FullSelector(Selector):
    """Every row, in dataset order (no parameters)."""

    name = "full"
    reads_main = False

    def _select(self, scores, main, higher_is_better) -> np.ndarray:
        return np.arange(len(scores), dtype=np.int64)


@dataclass
class RandomParams(BudgetParams):
    seed: int = option(0, help="int >= 0 seeding the permutation (DS2's random baseline: 3)")

    def check(self, owner: str) -> None:
        super().check(owner)
        check_int(owner, "seed", self.seed, 0)


class RandomSelector(Selector):
    """k | ratio rows uniformly without replacement, seeded (random_k)."""

    name = "random"
    Params = RandomParams
    reads_main = False

    def _select(self, scores, main, higher_is_better) -> np.ndarray:
        p = self.params
        return random_k(len(scores), k=p.k, ratio=p.ratio, seed=p.seed)


@dataclass
class RankParams(BudgetParams):
    """top_k's options shared by ``top_k`` and ``middle``."""
    of: str | int = option("all", help="the ratio's base: all (rows), passing (candidate rows: non-NaN, passing "
                                      "'where') or a positive int taken as is")
    nan: str = choice("exclude", "exclude", "error", help="rows with a NaN score: left out, or an error")
    order: str = choice("rank", "rank", "original", help="order of the selected rows: best first, or dataset order")

    def check(self, owner: str) -> None:
        super().check(owner)
        check_base(owner, "of", self.of, ("all", "passing"))


@dataclass
class TopKParams(RankParams):
    higher_is_better: bool | None = option(None, help="true: keep the highest scores, false: the lowest; "
                                                      "null: the direction of the stage's main scorer")
    where: dict | None = option(None, help="restricts the candidates to rows passing every bound, "
                                           "{column: {lt|le|gt|ge: number}}, e.g. {ifd: {lt: 1.0}}")

    def check(self, owner: str) -> None:
        super().check(owner)
        check_where(owner, self.where)


class TopKSelector(Selector):
    """The best k | ratio rows of a score column, optionally among the rows passing 'where' (top_k)."""

    name = "top_k"
    Params = TopKParams

    def inputs(self, main=None) -> tuple[str, ...]:
        return (*super().inputs(main), *(self.params.where or ()))

    def needs_direction(self) -> bool:
        return self.params.higher_is_better is None

    def _select(self, scores, main, higher_is_better) -> np.ndarray:
        p, col = self.params, self.main_column(main)
        hib = higher_is_better if self.needs_direction() else p.higher_is_better
        if hib is None:
            raise direction_error(self.name, col)
        return top_k(column_values(scores, col), k=p.k, ratio=p.ratio, of=p.of, mask=where_mask(scores, p.where),
                     higher_is_better=hib, nan=p.nan, order=p.order)


class MiddleSelector(Selector):
    """The k | ratio rows closest to the score column's median (top_k on |score - median|)."""

    name = "middle"
    Params = RankParams

    def _select(self, scores, main, higher_is_better) -> np.ndarray:
        p, col = self.params, column_values(scores, self.main_column(main))
        dist = np.abs(col - np.nanmedian(col)) if (~np.isnan(col)).any() else col   # all NaN: none kept
        return top_k(dist, k=p.k, ratio=p.ratio, of=p.of, higher_is_better=False, nan=p.nan, order=p.order)


@dataclass
class ThresholdParams:
    lt: float | None = option(None, help="keep score < lt (give at least one of lt | le | gt | ge)")
    le: float | None = option(None, help="keep score <= le")
    gt: float | None = option(None, help="keep score > gt")
    ge: float | None = option(None, help="keep score >= ge (AlpaGasus: rating >= 4.5)")

    def check(self, owner: str) -> None:
        given = {op: getattr(self, op) for op in _BOUNDS if getattr(self, op) is not None}
        if not given:
            raise ConfigError(f"{owner} needs at least one of the 'lt', 'le', 'gt' and 'ge' parameters. Got none.")
        for op, v in given.items():
            check_real(owner, op, v)


class ThresholdSelector(Selector):
    """Every row whose score passes the bounds lt | le | gt | ge, in dataset order (threshold_mask)."""

    name = "threshold"
    Params = ThresholdParams

    def _select(self, scores, main, higher_is_better) -> np.ndarray:
        bounds = {op: getattr(self.params, op) for op in _BOUNDS}
        mask = threshold_mask(column_values(scores, self.main_column(main)), **bounds)
        return np.flatnonzero(mask).astype(np.int64)


@dataclass
class SuperfilteringParams(BudgetParams):
    base: str | int = option("pool", help="the ratio's base: pool (all rows), survivors (IFD < filter_below) or "
                                          "a positive int (Superfiltering hard-codes Alpaca's 52002)")
    filter_below: float = option(1.0, help="candidates have IFD strictly below this (Superfiltering: 1.0)")

    def check(self, owner: str) -> None:
        super().check(owner)
        check_base(owner, "base", self.base, ("pool", "survivors"))
        check_real(owner, "filter_below", self.filter_below)


class SuperfilteringSelector(Selector):
    """Superfiltering: the highest IFD below filter_below, k | ratio of them (superfiltering_select)."""

    name = "superfiltering"
    Params = SuperfilteringParams

    def _select(self, scores, main, higher_is_better) -> np.ndarray:
        p = self.params
        return superfiltering_select(column_values(scores, self.main_column(main)), k=p.k, ratio=p.ratio,
                                     base=p.base, filter_below=p.filter_below)


@dataclass
class CherryIFDParams(BudgetParams):
    base: str | int = option("survivors", help="the ratio's base: survivors (IFD <= keep_max; Cherry's "
                                               "data_by_IFD.py), pool (all rows) or a positive int")
    keep_max: float = option(1.0, help="candidates have IFD <= keep_max (Cherry discards IFD > 1)")
    order: str = choice("original", "original", "rank",
                        help="order of the selected rows: dataset order (as Cherry writes them) or highest IFD first")

    def check(self, owner: str) -> None:
        super().check(owner)
        check_base(owner, "base", self.base, ("survivors", "pool"))
        check_real(owner, "keep_max", self.keep_max)


class CherryIFDSelector(Selector):
    """Cherry: the highest-IFD rows with IFD <= keep_max, k | ratio of them (cherry_ifd_select)."""

    name = "cherry_ifd"
    Params = CherryIFDParams

    def _select(self, scores, main, higher_is_better) -> np.ndarray:
        p = self.params
        return cherry_ifd_select(column_values(scores, self.main_column(main)), k=p.k, ratio=p.ratio,
                                 base=p.base, keep_max=p.keep_max, order=p.order)
