"""The scorers by name: every scorer class in thresher.scoring (a top-level class with a literal ``name``) is
found by reading the package's source (thresher.registry.Registry.discover); its module is imported only when the
scorer is used. A new scorer is one new file in this package; nothing else lists it. Scorers outside thresher:
"module:Class" names and the ``thresher.scorers`` entry-point group of installed plugins (thresher.registry)."""

from __future__ import annotations

from thresher.registry import Registry
from thresher.scoring.base import Scorer

SCORERS = Registry("scorer", base=Scorer, group="thresher.scorers")
SCORERS.discover("thresher.scoring")


def get_scorer(name: str):
    return SCORERS.get(name)


def make_scorer(name: str, **params):
    return get_scorer(name)(**params)
