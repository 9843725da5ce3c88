"""Scorers: one file per signal. Look them up by name through ``get_scorer`` (lazy imports)."""

from thresher.scoring.registry import SCORERS, get_scorer, make_scorer

__all__ = ["SCORERS", "get_scorer", "make_scorer"]
