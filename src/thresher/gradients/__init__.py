"""Per-sample gradient features (LoRA), Adam preconditioning, random projection, a resumable feature store,
and the gradient-based scores over stored features (LESS, CLUES, DataInf). METHODS.md 0.5, 1, 6.3, 6.4.
Training checkpoints (moments, learning rates, adapters) are read by ``thresher.models.checkpoints``."""

from thresher.gradients.adam import adam_precondition, flat_moments
from thresher.gradients.features import gradient_features, iter_gradients, write_gradient_store
from thresher.gradients.persample import (ParamSelection, make_batch, notation_patterns, per_sample_grads,
                                          select_parameters)
from thresher.gradients.pipeline import (Checkpoint, TrainingRun, adapted_model, checkpoint_moments,
                                         datainf_streamed, gradient_dots, group_means, open_run,
                                         store_batches, use_checkpoint)
from thresher.gradients.projection import RademacherProjector
from thresher.gradients.scores import (clues_domain_weights, clues_scores, datainf_influence, domain_means,
                                       less_scores, lr_weights, normalize_rows)
from thresher.gradients.store import GradientStore, StoreWriter, write_store

__all__ = [
    "adam_precondition", "flat_moments", "gradient_features", "write_gradient_store", "ParamSelection", "make_batch",
    "notation_patterns", "per_sample_grads", "select_parameters", "RademacherProjector", "clues_domain_weights",
    "clues_scores", "datainf_influence", "domain_means", "less_scores", "lr_weights",
    "normalize_rows", "GradientStore", "StoreWriter", "write_store", "iter_gradients",
    "Checkpoint", "TrainingRun", "adapted_model", "checkpoint_moments", "datainf_streamed",
    "gradient_dots", "group_means", "open_run", "store_batches", "use_checkpoint",
]
