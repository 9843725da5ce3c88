"""Parameter checks shared by every layer, with scikit-learn style messages.

One copy of the small checks that selectors, algorithm libraries, backends and the trainer run on
their arguments: "The 'ratio' parameter of top_k must be a float in (0, 1]. Got 1.5." The ``owner``
of a message is whatever the user recognises: a function name ("top_k"), a class ("OpenAIChat") or a
place in a recipe ("selector 'facility_location'").

bools are never ints or reals here (``True`` is not a budget of 1), NaN is never a real, and numpy
scalars count like the Python ones.
"""

from __future__ import annotations

import numbers

import numpy as np

from thresher.errors import ConfigError


def param_error(owner: str, param: str, must: str, got) -> ConfigError:
    """The error for a bad value: "The '<param>' parameter of <owner> must be <must>. Got <got!r>." """
    return ConfigError(f"The '{param}' parameter of {owner} must be {must}. Got {got!r}.")


def is_int(x) -> bool:
    """An integer (Python or numpy), bools excluded."""
    return isinstance(x, numbers.Integral) and not isinstance(x, bool)


def is_real(x) -> bool:
    """A real number that is not NaN (Python or numpy ints and floats), bools excluded."""
    return isinstance(x, numbers.Real) and not isinstance(x, bool) and x == x


def check_int(owner: str, param: str, value, low: int) -> int:
    """``value`` as an int, or the error "must be an int >= low"."""
    if not (is_int(value) and value >= low):
        raise param_error(owner, param, f"an int >= {low}", value)
    return int(value)


def check_real(owner: str, param: str, value) -> float:
    """``value`` as a float, or the error "must be a real number (not NaN)"."""
    if not is_real(value):
        raise param_error(owner, param, "a real number (not NaN)", value)
    return float(value)


def check_bool(owner: str, param: str, value) -> bool:
    """``value`` as a bool (Python or numpy), or the error "must be a bool"."""
    if not isinstance(value, (bool, np.bool_)):
        raise param_error(owner, param, "a bool", value)
    return bool(value)


def check_choice(owner: str, param: str, value, choices) -> None:
    """``value`` is one of the string ``choices``, or the error listing them."""
    if not isinstance(value, str) or value not in choices:
        raise param_error(owner, param, "one of " + ", ".join(repr(c) for c in choices), value)


def float_array(owner: str, param: str, x, ndim: int = 1) -> np.ndarray:
    """``x`` as a float64 array of ``ndim`` dimensions (None entries become NaN), or a ConfigError."""
    try:
        a = np.asarray(x, dtype=np.float64)
    except (TypeError, ValueError):
        raise ConfigError(f"The '{param}' parameter of {owner} must be a {ndim}-D array of numbers. "
                          f"Got values that cannot be read as numbers.") from None
    if a.ndim != ndim:
        raise ConfigError(f"The '{param}' parameter of {owner} must be a {ndim}-D array of numbers. "
                          f"Got an array of shape {a.shape}.")
    return a
