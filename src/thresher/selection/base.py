"""The selector contract.

A paper's selection rule is a plain numpy function (``top_k``, ``deita_repr_filter``, ...): arrays in,
row indices out. A recipe reaches it through a small adapter class registered by name in
``thresher.selection.registry.SELECTORS`` and written next to the function it wraps. An adapter declares:

  ``name``       the registry name, class level (``select: {selector: <name>}`` in a recipe);
  ``Params``     a dataclass of its parameters. ``thresher.config.build`` fills it from the recipe's
                 ``params``: an unknown key is an error with "Did you mean ...?", values are checked
                 against the field types and against ``config.choice`` choices; then ``Params.check(owner)``
                 checks the VALUES (ranges, exactly one of ``k`` | ``ratio``, rules between parameters)
                 with scikit-learn style messages;
  ``reads_main`` whether it ranks one score column: ``column`` when the recipe gives one, else the
                 stage's main column (the last scorer's ``main_column``), else ``default_column``;
  ``inputs(main)`` every score column it reads, given the stage's main column. ``thresher validate``
                 checks them against the columns the stage's scorers produce;
  ``needs_direction()`` whether it ranks by the stage's direction (``higher_is_better``) because its
                 parameters give none: ``thresher validate`` rejects it on a stage whose main scorer has no
                 fixed direction (perplexity, embedding, ...).

The constructor checks everything that needs no data, so a bad value fails at ``thresher validate``,
before any scoring. ``select(scores, main=, higher_is_better=)`` takes the stage's score table (a pandas
DataFrame: the ``id`` column and one column per score, one row per data row), the stage's main column and
its direction (None where the score has no fixed one), and returns (M,) int64 row positions, unique, in
[0, len(scores)), in the order the rule picks them (rank order; a few rules return dataset order and say
so). Ties are broken deterministically (by row position unless the rule's docstring says otherwise), and
randomness is always seeded. A missing input column is a ConfigError naming the column.

Adapters read the table's columns only through ``DataFrame.__getitem__`` / ``.to_numpy``: ``selection``
does not import pandas.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import ClassVar

import numpy as np

from thresher.config import build, did_you_mean

# Columns of a run's scores.parquet that are not scores: the join keys and the stage's selection
# (thresher.pipeline.stages.scores_table).
NOT_SCORES = ("id", "row", "selected", "rank")
from thresher.errors import ConfigError


@dataclass
class NoParams:
    """A selector without parameters."""


class Selector:
    name: ClassVar[str] = ""
    Params: ClassVar[type] = NoParams
    reads_main: ClassVar[bool] = True           # ranks one score column (``column`` or the stage's main one)
    default_column: ClassVar[str | None] = None  # used when neither ``column`` nor the stage names one

    def __init__(self, column: str | None = None, **params):
        if column is not None and not (isinstance(column, str) and column):
            raise ConfigError(f"The 'column' of selector {self.name!r} must be a score column name. Got {column!r}.")
        self.column = column
        self.params = build(self.Params, params, f"selector {self.name!r}")

    @classmethod
    def describe(cls) -> str:
        """The docstring's first line."""
        return (cls.__doc__ or "").strip().splitlines()[0]

    def main_column(self, main: str | None) -> str:
        """The score column this selector ranks: ``column``, else the stage's ``main``, else the default."""
        col = self.column or main or self.default_column
        if col is None:
            raise ConfigError(f"Selector {self.name!r} ranks a score column, and none is known: set the stage's "
                              "'column', or add a scorer to the stage.")
        return col

    def inputs(self, main: str | None = None) -> tuple[str, ...]:
        """The score columns ``select`` reads, given the stage's main column."""
        return (self.main_column(main),) if self.reads_main else ()

    def needs_direction(self) -> bool:
        """Whether ``select`` needs the stage's ``higher_is_better`` (False: the rule has its own direction)."""
        return False

    def select(self, scores, *, main: str | None = None, higher_is_better: bool | None = None) -> np.ndarray:
        """(M,) int64 positions of the selected rows of ``scores``, in selection order."""
        for col in self.inputs(main):
            require_column(scores, col, self.name)
        return self._select(scores, main, higher_is_better)

    def _select(self, scores, main: str | None, higher_is_better: bool | None) -> np.ndarray:
        raise NotImplementedError


def require_column(scores, name: str, selector: str) -> None:
    """ConfigError unless the score table has column ``name``."""
    if name not in scores.columns:
        have = [c for c in scores.columns if c not in NOT_SCORES]
        raise ConfigError(f"Selector {selector!r} needs score column {name!r}, which the scores do not have "
                          f"(columns: {', '.join(have) or 'none'}).{did_you_mean(name, have)}")


def direction_error(selector: str, column: str) -> ConfigError:
    """The error of a selector that ranks ``column`` and was told neither end to keep."""
    return ConfigError(f"Selector {selector!r} on column {column!r}: say which end to keep with "
                       "higher_is_better: true|false (this score has no fixed direction).")


def column_values(scores, name: str) -> np.ndarray:
    """(N,) float64 values of score column ``name``."""
    return scores[name].to_numpy(dtype=np.float64)
