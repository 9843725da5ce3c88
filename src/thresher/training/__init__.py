"""Supervised fine-tuning on (selected) data: TRL SFTTrainer + PEFT LoRA behind one ``train`` call.

``train`` tokenises with the scoring templates and response spans, trains, checkpoints with optimizer
state, and resumes; ``hooks`` documents the epoch-sampler hook that IterIT builds on; ``checkpoints``
(``thresher.models.checkpoints``) reads Adam's moments and learning rates back for the gradient-based scorers.

Names are imported on first use (PEP 562), so ``thresher.training.cli`` and ``.config`` load without
torch, transformers or TRL.
"""

from __future__ import annotations

import importlib

_WHERE = {
    "train": "sft", "TrainResult": "sft",
    "TrainConfig": "config", "PRESETS": "config", "CPU_SMALL": "config", "resolve_config": "config",
    "build_examples": "examples", "Examples": "examples", "IGNORE": "examples",
    "ShuffleAll": "hooks", "StopAtStep": "hooks", "TrainPlan": "hooks",
    "export_merged": "export", "fold_adapter": "export",
    "merge_runs": "merge", "merge_states": "merge",
    "IterITSampler": "iterit", "IterITCallback": "hooks", "IFDRescorer": "iterit",
}
__all__ = sorted(_WHERE)


def __getattr__(name: str):
    if name not in _WHERE:
        raise AttributeError(f"module 'thresher.training' has no attribute {name!r}")
    return getattr(importlib.import_module(f"thresher.training.{_WHERE[name]}"), name)
