"""Selection: plain functions over numpy arrays (scores in, row indices or a mask out), one module per
paper, and the registry of their recipe adapters (``SELECTORS``; the contract is ``selection.base``).

Pure and cheap, so a subset can be re-selected at another budget without a model. Imports only numpy
(scikit-learn lazily, inside ``cherry_pre_experience``); the adapters read a pandas score table without
importing pandas.
"""

from __future__ import annotations

from thresher.selection.alpagasus import alpagasus_select
from thresher.selection.basic import cherry_ifd_select, random_k, superfiltering_select, threshold_mask, top_k
from thresher.selection.cherry import cherry_pre_experience
from thresher.selection.clients import global_threshold_select
from thresher.selection.deita import deita_repr_filter
from thresher.selection.ds2 import ds2_bucket_select, ds2_diversity_filter
from thresher.selection.facility_location import facility_location
from thresher.selection.opencs import opencs_select
from thresher.selection.registry import SELECTORS, make_selector

__all__ = [
    "SELECTORS",
    "alpagasus_select",
    "cherry_ifd_select",
    "cherry_pre_experience",
    "deita_repr_filter",
    "ds2_bucket_select",
    "ds2_diversity_filter",
    "facility_location",
    "global_threshold_select",
    "make_selector",
    "opencs_select",
    "random_k",
    "superfiltering_select",
    "threshold_mask",
    "top_k",
]
