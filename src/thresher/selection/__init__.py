"""Selection: plain functions over numpy arrays (scores in, row indices or a mask out).

Pure and cheap, so a subset can be re-selected at another budget without a model. Imports only
numpy (scikit-learn lazily, inside ``cherry_pre_experience``).
"""

from __future__ import annotations

from thresher.selection.basic import (
    cherry_ifd_select,
    random_k,
    superfiltering_select,
    threshold_mask,
    top_k,
)
from thresher.selection.cherry import cherry_pre_experience

# Name -> selector, for listing (e.g. `thresher ls`). "threshold" returns a mask, the rest indices.
SELECTORS = {
    "top_k": top_k,
    "threshold": threshold_mask,
    "random": random_k,
    "superfiltering": superfiltering_select,
    "cherry_ifd": cherry_ifd_select,
    "cherry_pre_experience": cherry_pre_experience,
}

__all__ = [
    "SELECTORS",
    "cherry_ifd_select",
    "cherry_pre_experience",
    "random_k",
    "superfiltering_select",
    "threshold_mask",
    "top_k",
]
