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
from thresher.selection.clients import global_threshold_select
from thresher.selection.diversity import (
    alpagasus_select,
    deita_repr_filter,
    ds2_diversity_filter,
    facility_location,
    opencs_select,
)
from thresher.selection.ds2 import ds2_bucket_select

# Name -> selector, for listing (e.g. `thresher ls`). "threshold" returns a mask, the rest indices.
SELECTORS = {
    "top_k": top_k,
    "threshold": threshold_mask,
    "random": random_k,
    "superfiltering": superfiltering_select,
    "cherry_ifd": cherry_ifd_select,
    "cherry_pre_experience": cherry_pre_experience,
    "alpagasus": alpagasus_select,
    "ds2_bucket": ds2_bucket_select,
    "deita": deita_repr_filter,
    "ds2_diversity": ds2_diversity_filter,
    "facility_location": facility_location,
    "opencs": opencs_select,
    "global_threshold": global_threshold_select,
}

__all__ = [
    "SELECTORS",
    "alpagasus_select",
    "deita_repr_filter",
    "ds2_bucket_select",
    "ds2_diversity_filter",
    "facility_location",
    "global_threshold_select",
    "opencs_select",
    "cherry_ifd_select",
    "cherry_pre_experience",
    "random_k",
    "superfiltering_select",
    "threshold_mask",
    "top_k",
]
