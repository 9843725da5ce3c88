"""Generic selectors over score arrays: arrays in, indices (or a mask) out.

Conventions shared by every function here:
* scores are a 1-D float array, one per row; NaN means "no score" and is never selected;
* a budget is exactly one of ``k`` (an int >= 0) or ``ratio`` (a float in (0, 1]); a ratio becomes
  ``int(ratio * base)`` (floor, as the reference scripts do), with ``base`` chosen per function;
* when fewer candidates exist than the budget, all candidates are returned (no error): the
  caller compares ``len(result)`` with the budget and reports the shortfall;
* ranking is a stable numpy sort over candidates taken in index order, so ties keep index order.
"""

from __future__ import annotations

import numbers

import numpy as np

from thresher.errors import ConfigError

# ---------------------------------------------------------------------------------------------
# validation helpers (shared with cherry.py)


def _fail(func: str, param: str, must: str, got) -> ConfigError:
    """scikit-learn style: "The 'ratio' parameter of top_k must be a float in (0, 1]. Got 1.5." """
    return ConfigError(f"The '{param}' parameter of {func} must be {must}. Got {got!r}.")


def _is_int(x) -> bool:
    return isinstance(x, (numbers.Integral, np.integer)) and not isinstance(x, (bool, np.bool_))


def _is_real(x) -> bool:
    """A non-NaN real number (bools excluded)."""
    return (isinstance(x, (numbers.Real, np.integer, np.floating))
            and not isinstance(x, (bool, np.bool_)) and not np.isnan(x))


def _check_choice(func: str, param: str, value, choices: tuple[str, ...]) -> None:
    if not isinstance(value, str) or value not in choices:
        raise _fail(func, param, "one of " + ", ".join(repr(c) for c in choices), value)


def _check_real(func: str, param: str, value) -> None:
    if not _is_real(value):
        raise _fail(func, param, "a real number (not NaN)", value)


def _float_array(func: str, param: str, x, ndim: int = 1) -> np.ndarray:
    """x as a float64 array of the given number of dimensions (None entries become NaN)."""
    try:
        a = np.asarray(x, dtype=np.float64)
    except (TypeError, ValueError):
        raise ConfigError(f"The '{param}' parameter of {func} must be a {ndim}-D array of numbers. "
                          f"Got values that cannot be read as numbers.") from None
    if a.ndim != ndim:
        raise ConfigError(f"The '{param}' parameter of {func} must be a {ndim}-D array of numbers. "
                          f"Got an array of shape {a.shape}.")
    return a


def _check_budget(func: str, k, ratio) -> None:
    """Exactly one of k (int >= 0) and ratio (float in (0, 1])."""
    if (k is None) == (ratio is None):
        raise ConfigError(f"{func} needs exactly one of the 'k' and 'ratio' parameters. "
                          f"Got k={k!r}, ratio={ratio!r}.")
    if k is not None and not (_is_int(k) and k >= 0):
        raise _fail(func, "k", "an int >= 0", k)
    if ratio is not None and not (_is_real(ratio) and 0 < ratio <= 1):
        raise _fail(func, "ratio", "a float in (0, 1]", ratio)


def _budget(k, ratio, base: int) -> int:
    """k, or int(ratio * base): floor, like the reference scripts' int(len(data) * rate)."""
    return int(k) if k is not None else int(ratio * int(base))


def _base(func: str, param: str, value, named: dict[str, int]) -> int:
    """Resolve a ratio base: one of the named choices, or a positive int given as is."""
    if isinstance(value, str) and value in named:
        return int(named[value])
    if _is_int(value) and value > 0:
        return int(value)
    raise _fail(func, param, "one of " + ", ".join(repr(c) for c in named) + " or a positive int",
                value)


def _mask(func: str, mask, n: int) -> np.ndarray:
    if mask is None:
        return np.ones(n, dtype=bool)
    m = np.asarray(mask)
    if m.dtype != bool or m.shape != (n,):
        raise ConfigError(f"The 'mask' parameter of {func} must be None or a boolean array of "
                          f"shape ({n},). Got an array of dtype {m.dtype} and shape {m.shape}.")
    return m


def _ranked(scores: np.ndarray, cand: np.ndarray, descending: bool) -> np.ndarray:
    """Indices of the candidate rows, best first; ties keep index order (stable sort)."""
    idx = np.flatnonzero(cand)                               # (C,) ascending row indices
    key = -scores[idx] if descending else scores[idx]
    return idx[np.argsort(key, kind="stable")].astype(np.int64, copy=False)


def _ordered(picked: np.ndarray, order: str) -> np.ndarray:
    return np.sort(picked) if order == "original" else picked


# ---------------------------------------------------------------------------------------------
# selectors


def threshold_mask(scores, *, lt=None, le=None, gt=None, ge=None) -> np.ndarray:
    """Boolean mask, True where every given bound holds (``scores < lt``, ``<= le``, ``> gt``,
    ``>= ge``). NaN scores are always False. At least one bound is required."""
    f = "threshold_mask"
    s = _float_array(f, "scores", scores)
    given = {n: v for n, v in (("lt", lt), ("le", le), ("gt", gt), ("ge", ge)) if v is not None}
    if not given:
        raise ConfigError(f"{f} needs at least one of the 'lt', 'le', 'gt' and 'ge' parameters. "
                          "Got none.")
    for name, v in given.items():
        _check_real(f, name, v)
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
    s = _float_array(f, "scores", scores)
    m = _mask(f, mask, len(s))
    _check_budget(f, k, ratio)
    _check_choice(f, "nan", nan, ("exclude", "error"))
    _check_choice(f, "order", order, ("rank", "original"))
    if not isinstance(higher_is_better, (bool, np.bool_)):
        raise _fail(f, "higher_is_better", "a bool", higher_is_better)
    bad = np.flatnonzero(m & np.isnan(s))
    if nan == "error" and bad.size:
        raise ConfigError(f"{f} found NaN scores in {bad.size} candidate row(s) (first indices: "
                          f"{bad[:5].tolist()}) and the 'nan' parameter is 'error'. Fix those "
                          "scores, or pass nan='exclude' to leave those rows out.")
    cand = m & ~np.isnan(s)
    size = _base(f, "of", of, {"all": len(s), "passing": cand.sum()})
    return _ordered(_ranked(s, cand, bool(higher_is_better))[:_budget(k, ratio, size)], order)


def random_k(n, *, k=None, ratio=None, seed=0) -> np.ndarray:
    """``k`` (or ``int(ratio * n)``) row indices out of ``range(n)``, uniform without replacement:
    ``np.random.default_rng(seed).permutation(n)[:count]``, in that permutation order. A ``k``
    larger than ``n`` returns all ``n`` rows."""
    f = "random_k"
    if not (_is_int(n) and n >= 0):
        raise _fail(f, "n", "an int >= 0", n)
    _check_budget(f, k, ratio)
    if not (_is_int(seed) and seed >= 0):
        raise _fail(f, "seed", "an int >= 0", seed)
    count = _budget(k, ratio, n)
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
    s = _float_array(f, "ifd", ifd)
    _check_budget(f, k, ratio)
    _check_real(f, "filter_below", filter_below)
    cand = s < filter_below                                  # NaN compares False
    size = _base(f, "base", base, {"pool": len(s), "survivors": cand.sum()})
    return _ranked(s, cand, descending=True)[:_budget(k, ratio, size)]


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
    s = _float_array(f, "ifd", ifd)
    _check_budget(f, k, ratio)
    _check_real(f, "keep_max", keep_max)
    _check_choice(f, "order", order, ("original", "rank"))
    cand = s <= keep_max                                     # NaN compares False
    size = _base(f, "base", base, {"survivors": cand.sum(), "pool": len(s)})
    asc = _ranked(s, cand, descending=False)                 # sorted((ifd, idx)) of survivors
    count = min(_budget(k, ratio, size), len(asc))
    return _ordered(asc[len(asc) - count:][::-1], order)
