"""The selectors by name (thresher.registry: a selector's module is imported when it is used).

Each name maps to an adapter class (``thresher.selection.base.Selector``) written next to the paper's
function it wraps. A recipe names one in ``select: {selector: <name>, column: ..., params: {...}}``.
"""

from __future__ import annotations

from thresher.registry import Registry
from thresher.selection.base import Selector

SELECTORS = Registry("selector")
SELECTORS.register("full", "thresher.selection.basic:FullSelector")
SELECTORS.register("random", "thresher.selection.basic:RandomSelector")
SELECTORS.register("top_k", "thresher.selection.basic:TopKSelector")
SELECTORS.register("middle", "thresher.selection.basic:MiddleSelector")
SELECTORS.register("threshold", "thresher.selection.basic:ThresholdSelector")
SELECTORS.register("superfiltering", "thresher.selection.basic:SuperfilteringSelector")
SELECTORS.register("cherry_ifd", "thresher.selection.basic:CherryIFDSelector")
SELECTORS.register("cherry_pre_experience", "thresher.selection.cherry:PreExperienceSelector")
SELECTORS.register("alpagasus", "thresher.selection.alpagasus:AlpagasusSelector")
SELECTORS.register("ds2_bucket", "thresher.selection.ds2:BucketSelector")
SELECTORS.register("deita", "thresher.selection.deita:DeitaSelector")
SELECTORS.register("ds2_diversity", "thresher.selection.ds2:DiversitySelector")
SELECTORS.register("facility_location", "thresher.selection.facility_location:FacilityLocationSelector")
SELECTORS.register("superfiltering_d", "thresher.selection.facility_location:SuperfilteringDSelector")
SELECTORS.register("opencs", "thresher.selection.opencs:OpenCSSelector")
SELECTORS.register("global_threshold", "thresher.selection.clients:GlobalThresholdSelector")


def make_selector(name: str, column: str | None = None, params: dict | None = None) -> Selector:
    """The selector ``name`` with ``column`` and ``params`` checked (no data needed)."""
    return SELECTORS.get(name)(column, **(params or {}))
