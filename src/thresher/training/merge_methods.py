"""The ways of combining clients' LoRA adapters, by name: ``MERGE_METHODS`` (a thresher.registry.Registry).

Notation: client i has LoRA factors A_i (r, in) and B_i (out, r) in every adapted module, scaling
s_i = lora_alpha / r (alpha / sqrt(r) with rsLoRA), so its weight update is dW_i = s_i B_i A_i, and
w_i is its merge weight. What each method computes, per adapted module:

  ties    PEFT's "ties" on LoRA: it acts on A and on B SEPARATELY, never on the product dW. The factor
          c_i = sqrt(|w_i s_i|) is applied to both (the sign of w_i s_i only on A). For X = A, then B:
            trim:  keep the k = int(density * X.numel()) largest |X_i| entries of each client, zero the rest;
            elect: sign = +1 where sum_i trim(X_i) >= 0, else -1 (mass of the trimmed, UNweighted entries);
            merge: X = sum_i [sign(trim(X_i)) == sign] c_i trim(X_i) / max(1, number of agreeing clients)
          (a disjoint MEAN: dividing by the count of agreeing clients, not by the sum of weights). The new
          adapter has rank r and lora_alpha = r (scaling 1: s_i lives in c_i), so its update is B A, which
          carries cross terms B_i A_j: it is not a TIES merge of the dW_i. Default: density 0.2 and
          w_i = 1.0 for every client, as in CLUES' merging_eval_med.py.
  linear  PEFT's "linear" on LoRA: A = sum_i c_i A_i, B = sum_i c_i B_i, rank r, lora_alpha = r. With
          weights summing to 1 and identical clients this returns that client; in general B A =
          sum_ij c_i c_j B_i A_j (cross terms again). Default weights 1/n (PEFT has no default; 1.0 each
          would scale n identical clients' update by n^2).
  cat     PEFT's "cat": A = concat_i(w_i s_i A_i) along the rank, B = concat_i(B_i), rank sum_i r_i,
          lora_alpha = that rank. Exact: B A = sum_i w_i dW_i (no cross terms), at n times the rank. Default
          weights 1/n (the mean update).
  fedavg  One FedAvg server round as in FedIT (Zhang et al., 2024, federated instruction tuning):
          A = sum_i p_i A_i and B = sum_i p_i B_i with p_i = n_i / sum_j n_j, n_i = the client's number of
          training rows (RUN/train_ids.json), or the given weights normalised to sum 1. A and B are averaged
          SEPARATELY, so the update s B A is not the row-weighted mean of the dW_i (that would need "cat").
          Rank and lora_alpha stay those of the clients (they must all be equal), so the result can be sent
          back to the clients as the next round's starting adapter.

Not offered: PEFT's "svd"/"ties_svd"/"dare_*_svd" (they build every module's full (out, in) dW_i via
get_delta_weight, combine them with the plain sum / TIES / DARE, and re-factorise with a truncated SVD to
rank r), and "dare_*" (random pruning, not reproducible without a seed PEFT does not take).

A method is a ``MergeMethod``: how one module's factors combine, and the few facts the merge around it
needs (whether density applies, whether ranks may differ, whether the clients' scalings are folded into
the factors or kept, how default weights are derived, whether weights are normalised). Adding a method is
one ``MergeMethod`` and one ``MERGE_METHODS.register`` line.

torch is imported inside the combine functions: this module is loaded to check a recipe or build the CLI
parser, which must not import torch.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

from thresher.errors import ConfigError
from thresher.models.runs import TRAIN_IDS
from thresher.registry import Registry


@dataclass(frozen=True)
class MergeMethod:
    """One merge method. ``combine(a, b, weights, scalings, density) -> (A, B)`` merges one adapted module:
    ``a`` = the clients' float32 A factors [(r_i, in)], ``b`` = their B factors [(out, r_i)], one weight and
    one scaling per client; it returns the merged (r', in) and (out, r') factors."""

    combine: Callable
    default_weights: Callable            # (runs) -> one weight per run (runs have .path and .rows, as
                                         # thresher.models.runs.TrainingRunFolder)
    uses_density: bool = False           # density (the fraction TIES keeps) applies
    same_rank: bool = True               # every client needs one LoRA rank
    folds_scaling: bool = True           # s_i goes into the factors and the merged adapter has scaling 1
                                         # (r = lora_alpha = the merged rank); False: the raw factors are
                                         # combined, so every client needs one scaling, and it is kept
    normalises_weights: bool = False     # weights must be >= 0 with a positive sum; they are divided by it


# ----------------------------------------------------------------------------------- default weights
def ones(runs) -> list[float]:
    """1.0 per run (CLUES' TIES merge)."""
    return [1.0] * len(runs)


def uniform(runs) -> list[float]:
    """1/n per run (the mean)."""
    return [1.0 / len(runs)] * len(runs)


def training_rows(runs) -> list[int]:
    """Each run's number of training rows (FedAvg; ``.rows``, read from its train_ids.json); an error naming
    the first run that does not record them."""
    missing = [str(r.path) for r in runs if not r.rows]
    if missing:
        raise ConfigError(f"fedavg weighs runs by their training rows, but {missing[0]} has no {TRAIN_IDS} "
                          "(or no rows in it). Pass weights explicitly.")
    return [r.rows for r in runs]


# ----------------------------------------------------------------------------------- the arithmetic
def peft_coefficients(weights, scalings):
    """PEFT's per-client factors: (n,) c_i = sqrt(|w_i s_i|) with the sign of w_i s_i for A, (n,) c_i for B."""
    import torch

    ws = torch.tensor([w * s for w, s in zip(weights, scalings)], dtype=torch.float64)
    root = ws.abs().sqrt()
    return (root * torch.where(ws >= 0, 1.0, -1.0)).float(), root.float()


def weighted_sum(x, coef):
    # x: (n, *shape), coef: (n,) -> (*shape)
    return (coef.view(-1, *([1] * (x.dim() - 1))) * x).sum(0)


def ties_factor(x, coef, density: float):
    """TIES on one LoRA factor of n clients, x: (n, rows, cols), coef: (n,) -> (rows, cols)."""
    import torch

    n = x.shape[0]
    flat = x.reshape(n, -1)                                      # (n, numel)
    k = int(density * flat.shape[1])                             # PEFT's count: int(density * numel)
    keep = torch.zeros_like(flat, dtype=torch.bool)
    if k > 0:
        keep.scatter_(1, flat.abs().topk(k, dim=1).indices, True)
    trimmed = torch.where(keep, flat, torch.zeros_like(flat))
    sign = torch.where(trimmed.sum(0) >= 0, 1.0, -1.0)           # (numel,) elected on unweighted mass
    agree = trimmed.sign() == sign                               # (n, numel); trimmed zeros never agree
    total = (trimmed * coef[:, None] * agree).sum(0)
    return (total / agree.sum(0).clamp(min=1)).reshape(x.shape[1:])


# ----------------------------------------------------------------------------------- combine, per method
def _ties_combine(a, b, weights, scalings, density):
    import torch

    coef_a, coef_b = peft_coefficients(weights, scalings)
    return ties_factor(torch.stack(a), coef_a, density), ties_factor(torch.stack(b), coef_b, density)


def _linear_combine(a, b, weights, scalings, density):
    import torch

    coef_a, coef_b = peft_coefficients(weights, scalings)
    return weighted_sum(torch.stack(a), coef_a), weighted_sum(torch.stack(b), coef_b)


def _cat_combine(a, b, weights, scalings, density):
    import torch

    lin = torch.tensor([w * s for w, s in zip(weights, scalings)], dtype=torch.float64).float()
    return (torch.cat([lin[i] * x for i, x in enumerate(a)], dim=0),       # (sum r, in)
            torch.cat(b, dim=1))                                           # (out, sum r)


def _fedavg_combine(a, b, weights, scalings, density):
    import torch

    p = torch.tensor(weights, dtype=torch.float64)
    p = (p / p.sum()).float()                                    # the clients share one scaling: unused
    return weighted_sum(torch.stack(a), p), weighted_sum(torch.stack(b), p)


TIES = MergeMethod(_ties_combine, ones, uses_density=True)
LINEAR = MergeMethod(_linear_combine, uniform)
CAT = MergeMethod(_cat_combine, uniform, same_rank=False)
FEDAVG = MergeMethod(_fedavg_combine, training_rows, folds_scaling=False, normalises_weights=True)

MERGE_METHODS = Registry("merge method")
MERGE_METHODS.register("ties", "thresher.training.merge_methods:TIES")
MERGE_METHODS.register("linear", "thresher.training.merge_methods:LINEAR")
MERGE_METHODS.register("cat", "thresher.training.merge_methods:CAT")
MERGE_METHODS.register("fedavg", "thresher.training.merge_methods:FEDAVG")
