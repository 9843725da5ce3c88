"""The selectors by name (thresher.registry: a selector's module is imported when it is used).

Each name maps to an adapter class (``thresher.selection.base.Selector``) written next to the paper's
function it wraps, found by reading the package's source (``Registry.discover``: a top-level class with a literal
``name``): a new selector is one adapter class in this package; nothing else lists it. A recipe names one in
``select: {selector: <name>, column: ..., params: {...}}``.
"""

from __future__ import annotations

from thresher.registry import Registry
from thresher.selection.base import Selector

SELECTORS = Registry("selector", base=Selector, group="thresher.selectors")
SELECTORS.discover("thresher.selection")


def make_selector(name: str, column: str | None = None, params: dict | None = None) -> Selector:
    """The selector ``name`` with ``column`` and ``params`` checked (no data needed)."""
    return SELECTORS.get(name)(column, **(params or {}))
