"""Model-side orchestration of the gradient scorers: a training run's checkpoints, the base model wrapped
with the run's LoRA adapter, and reductions over batched per-sample gradients that never hold more than
one chunk of them (inner products with fixed directions, group means, DataInf's statistics).

A training run directory is what ``thresher.training.sft.train`` writes: ``checkpoint-<step>/`` with the
PEFT adapter, ``optimizer.pt``, ``trainer_state.json`` and ``optimizer_params.json``, read by
``thresher.models.checkpoints``. Each checkpoint provides its learning rate (``checkpoint_learning_rate``:
mean LR over the epoch before it), its Adam moments, and a content fingerprint (sha256 of the adapter
weights and of trainer_state.json), so a retrained run in the same directory misses every cache while a
copied run hits it.

The base model is shared with the other scorers of a run (``ModelContext.lm()``): ``adapted_model``
injects the run's LoRA layers into it for the duration of a ``with`` block and removes them afterwards
(PEFT ``unload``), restoring the base weights' ``requires_grad`` flags.
"""

from __future__ import annotations

import warnings
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch

from thresher.errors import ConfigError
from thresher.gradients.adam import flat_moments
from thresher.gradients.persample import ParamSelection
from thresher.io import sha256_hex
from thresher.models.checkpoints import (checkpoint_fingerprint, checkpoint_learning_rate, has_adapter,
                                         list_checkpoints, load_adam_moments, load_adapter, step_of)
from thresher.models.runs import ADAPTER_WEIGHTS

WHICH = ("all", "last")

Batches = Callable[[], Iterator[tuple[np.ndarray, torch.Tensor]]]   # a re-iterable stream of (idx, (b, P))


@dataclass(frozen=True)
class Checkpoint:
    path: Path
    step: int
    lr: float              # eta_c: mean learning rate of the epoch before the checkpoint
    fingerprint: str       # sha256 of the adapter weights + trainer_state.json


@dataclass(frozen=True)
class TrainingRun:
    path: Path
    checkpoints: tuple[Checkpoint, ...]

    @property
    def lrs(self) -> np.ndarray:
        return np.array([c.lr for c in self.checkpoints], dtype=np.float64)

    @property
    def fingerprint(self) -> str:
        """Steps and content of the checkpoints used (not the directory: a moved run keeps its caches)."""
        return sha256_hex(*(f"{c.step}:{c.fingerprint}" for c in self.checkpoints))[:32]


def open_run(path, which: str = "all", *, owner: str = "the scorer", param: str = "checkpoints") -> TrainingRun:
    """The complete LoRA checkpoints of a training run directory, oldest step first (``which="last"``: the
    newest only). A checkpoint cut off mid-save is skipped with a warning (thresher runs: no completion
    marker or a listed file missing or of another size; runs of another trainer: no readable
    trainer_state.json, see ``thresher.models.checkpoints``)."""
    if not isinstance(path, (str, Path)) or not str(path).strip():
        raise ConfigError(f"The {param!r} parameter of {owner} must be the path of a training run directory "
                          f"(the output of 'thresher train'). Got {path!r}.")
    if which not in WHICH:
        raise ConfigError(f"The 'which' parameter of {owner} must be one of {', '.join(map(repr, WHICH))}. "
                          f"Got {which!r}.")
    root = Path(path)
    if not root.is_dir():
        raise ConfigError(f"The {param!r} parameter of {owner} must be a training run directory; {str(root)!r} "
                          f"{'is not a directory' if root.exists() else 'does not exist'}.")
    found = [(step_of(d), d) for d in list_checkpoints(root, foreign=True) if has_adapter(d)]
    if not found:
        raise ConfigError(f"The {param!r} parameter of {owner}: {str(root)!r} holds no complete LoRA checkpoint "
                          f"(checkpoint-<step>/ with {ADAPTER_WEIGHTS}, adapter_config.json, optimizer.pt and "
                          "trainer_state.json, and for a run of thresher's trainer its thresher_complete.json). "
                          "Train with save_steps > 0 or one checkpoint per epoch, and "
                          "save_total_limit unset.")
    if which == "last":
        found = found[-1:]
    ckpts = tuple(Checkpoint(d, step, _learning_rate(d), checkpoint_fingerprint(d)) for step, d in found)
    return TrainingRun(root, ckpts)


def _learning_rate(ckpt_dir: Path) -> float:
    try:
        return checkpoint_learning_rate(ckpt_dir)
    except ConfigError as e:
        raise ConfigError(f"{ckpt_dir}: {e}") from None


@contextmanager
def adapted_model(base_model: torch.nn.Module, run: TrainingRun) -> Iterator[torch.nn.Module]:
    """``base_model`` with the run's LoRA layers injected (trainable, weights of no checkpoint yet: call
    ``use_checkpoint``); the base model is restored on exit, so other scorers sharing it are unaffected."""
    from peft import LoraConfig, get_peft_model

    config = LoraConfig.from_pretrained(str(run.checkpoints[0].path))
    config.inference_mode = False                    # saved adapters say True, which freezes the LoRA weights
    flags = {n: p.requires_grad for n, p in base_model.named_parameters()}
    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", category=FutureWarning)     # transformers 5.x notices inside PEFT
        model = get_peft_model(base_model, config)
    try:
        model.eval()                                 # LoRA dropout off: deterministic gradients
        yield model
    finally:
        model.unload()
        for n, p in base_model.named_parameters():
            p.requires_grad_(flags.get(n, p.requires_grad))


def use_checkpoint(model: torch.nn.Module, ckpt: Checkpoint) -> None:
    """Load the checkpoint's adapter weights into the adapted model."""
    load_adapter(ckpt.path, model)


def checkpoint_moments(ckpt: Checkpoint, model: torch.nn.Module, sel: ParamSelection,
                       device: str | torch.device | None = None) -> tuple[torch.Tensor, torch.Tensor]:
    """Flat (P,) Adam moments (exp_avg, exp_avg_sq) of the selected parameters, on ``device`` (default: the
    model's; adam_precondition needs them next to the gradients).

    Names come from the checkpoint's optimizer_params.json (thresher's trainer); a checkpoint of a plain HF
    Trainer falls back to rebuilding the Trainer's parameter order from the model."""
    state = {n: (d["exp_avg"], d["exp_avg_sq"]) for n, d in load_adam_moments(ckpt.path, model).items()}
    dev = device if device is not None else next(model.parameters()).device
    m, v = flat_moments(state, sel)
    return m.to(dev), v.to(dev)


# ----------------------------------------------------------------------------------- streamed reductions
def gradient_dots(batches: Iterator[tuple[np.ndarray, torch.Tensor]], n: int, directions: np.ndarray) -> np.ndarray:
    """(n, K) float64 inner products <g_i, directions[:, k]> from a stream of (idx, (b, d)) gradient chunks;
    NaN rows for units the stream never yields (unscorable). directions: (d, K)."""
    out = np.full((n, directions.shape[1]), np.nan)
    dirs = None
    for idx, g in batches:
        if dirs is None:
            dirs = torch.as_tensor(directions, dtype=torch.float32, device=g.device)
        out[idx] = (g.float() @ dirs).double().cpu().numpy()             # (b, d) @ (d, K)
    return out


def group_sums(batches: Iterator[tuple[np.ndarray, torch.Tensor]], groups: np.ndarray, n_groups: int,
               dim: int) -> tuple[np.ndarray, np.ndarray]:
    """Summed gradient of each group from a stream: ((G, d) float64 sums, (G,) counts of scored units).
    groups: (n,) group index of each unit. Partial sums of disjoint streams add up to the whole's."""
    sums, counts = np.zeros((n_groups, dim)), np.zeros(n_groups, dtype=np.int64)
    for idx, g in batches:
        gi = torch.as_tensor(groups[idx], device=g.device)
        s = torch.zeros(n_groups, g.shape[1], dtype=torch.float64, device=g.device).index_add_(0, gi, g.double())
        sums += s.cpu().numpy()
        counts += np.bincount(groups[idx], minlength=n_groups)
    return sums, counts


def group_means(batches: Iterator[tuple[np.ndarray, torch.Tensor]], groups: np.ndarray, n_groups: int,
                dim: int) -> tuple[np.ndarray, np.ndarray]:
    """Mean gradient of each group from a stream: ((G, d) float64 means, (G,) counts of scored units).
    groups: (n,) group index of each unit. A group with no scored unit gets a NaN mean."""
    sums, counts = group_sums(batches, groups, n_groups, dim)
    with np.errstate(invalid="ignore", divide="ignore"):
        return sums / counts[:, None], counts


def layer_index(layers: list[slice], dim: int) -> torch.Tensor:
    """(dim,) long: the layer (index into ``layers``, contiguous slices) of each coordinate."""
    layer_of = torch.zeros(dim, dtype=torch.long)
    for l, sl in enumerate(layers):
        layer_of[sl] = l
    return layer_of


def datainf_layer_stats(batches: Iterator[tuple[np.ndarray, torch.Tensor]], n: int, val_mean: np.ndarray,
                        layers: list[slice]) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """DataInf pass 1 over a gradient stream: ((n, L) a_il = g_il . v_l, (n, L) s_il = |g_il|^2, (n,) bool
    seen); rows the stream never yields stay 0 and unseen. Shards of the units concatenate to the whole's."""
    v = torch.as_tensor(np.asarray(val_mean, dtype=np.float64))
    layer_of = layer_index(layers, v.shape[0])
    a, s2, seen = np.zeros((n, len(layers))), np.zeros((n, len(layers))), np.zeros(n, dtype=bool)
    for idx, g in batches:
        if v.device != g.device:
            v, layer_of = v.to(g.device), layer_of.to(g.device)
        g = g.double()
        zeros = torch.zeros(g.shape[0], len(layers), dtype=torch.float64, device=g.device)
        a[idx] = zeros.index_add(1, layer_of, g * v).cpu().numpy()
        s2[idx] = zeros.index_add(1, layer_of, g * g).cpu().numpy()
        seen[idx] = True
    return a, s2, seen


def datainf_coefficients(a: np.ndarray, s2: np.ndarray, seen: np.ndarray, layers: list[slice],
                         lambda_const_param: float) -> tuple[np.ndarray, np.ndarray, int]:
    """From pass 1's statistics of every unit: ((n, L) c_il = a_il / (lambda_l + s_il), (L,) lambda_l =
    sum_i s_il / (m P_l) / lambda_const_param, m = the number of scored units)."""
    m = int(seen.sum())
    if m == 0:
        raise ConfigError("DataInf: no training sample could be scored (every span was empty or truncated).")
    sizes = np.array([sl.stop - sl.start for sl in layers], dtype=np.float64)
    lam = s2[seen].sum(axis=0) / (m * sizes) / lambda_const_param
    if (lam <= 0).any():
        raise ConfigError("A DataInf layer has all-zero training gradients (a fresh LoRA adapter has B = 0 and "
                          "zero A-gradients); use a warmed-up adapter (a later checkpoint).")
    return a / (lam + s2), lam, m


def datainf_weighted_sum(batches: Iterator[tuple[np.ndarray, torch.Tensor]], c: np.ndarray, layers: list[slice],
                         dim: int) -> np.ndarray:
    """DataInf pass 2 over a gradient stream: (dim,) float64 S = sum_i c_i(layer) * g_i, c: (n, L) the
    stream's units' coefficients. Partial sums of disjoint streams add up to the whole's."""
    layer_of = layer_index(layers, dim)
    S = torch.zeros(dim, dtype=torch.float64)
    for idx, g in batches:
        layer_of = layer_of.to(g.device)                                         # once: a no-op afterwards
        ci = torch.as_tensor(c[idx], device=g.device)                            # (b, L)
        S += (ci[:, layer_of] * g.double()).sum(dim=0).cpu()
    return S.numpy()


def datainf_direction(val_mean: np.ndarray, S: np.ndarray, m: int, lam: np.ndarray,
                      layers: list[slice]) -> np.ndarray:
    """(P,) float64 h_l = (v_l - S_l / m) / lambda_l, from the whole stream's S."""
    v = np.asarray(val_mean, dtype=np.float64)
    return (v - S / m) / lam[layer_index(layers, v.shape[0]).numpy()]


def datainf_dots(batches: Iterator[tuple[np.ndarray, torch.Tensor]], n: int, h: np.ndarray) -> np.ndarray:
    """DataInf pass 3 over a gradient stream: (n,) I_k = -h . g_k (float64); NaN for units never yielded."""
    out = np.full(n, np.nan)
    hh = torch.as_tensor(np.asarray(h, dtype=np.float64))
    for idx, g in batches:
        hh = hh.to(g.device)
        out[idx] = -(g.double() @ hh).cpu().numpy()
    return out


def datainf_streamed(batches: Batches, n: int, val_mean: np.ndarray, layers: list[slice],
                     lambda_const_param: float = 10.0) -> np.ndarray:
    """DataInf (METHODS.md 6.4) in three passes over a re-iterable gradient stream, O(P) memory:

      pass 1: a_il = g_il . v_l and s_il = |g_il|^2 for every sample i and layer l          (n, L)
              -> lambda_l = sum_i s_il / (n P_l) / lambda_const_param,  c_il = a_il / (lambda_l + s_il)
      pass 2: S_l = sum_i c_il g_il                                                           (P,)
              -> h_l = (v_l - S_l / n) / lambda_l
      pass 3: I_k = -sum_l h_l . g_kl = -h . g_k
    Equal to ``scores.datainf_influence`` on the same gradients (which needs all of them in memory).
    ``batches()`` yields (idx, (b, P)) chunks, each sample once; samples never yielded get NaN and do not
    count in n. Returns (n,) I: more negative = more beneficial. Each pass is a function of its own
    (datainf_layer_stats, datainf_weighted_sum, datainf_dots) that a sharded run applies to row shards.
    """
    a, s2, seen = datainf_layer_stats(batches(), n, val_mean, layers)
    c, lam, m = datainf_coefficients(a, s2, seen, layers, lambda_const_param)
    S = datainf_weighted_sum(batches(), c, layers, len(val_mean))
    return datainf_dots(batches(), n, datainf_direction(val_mean, S, m, lam, layers))


def store_batches(store) -> Batches:
    """A re-iterable stream over a GradientStore's shards: (row indices, (rows, d) float32 CPU tensor);
    NaN rows (unscorable units) are skipped."""
    def gen():
        for start, x in store.iter_chunks():
            x = np.asarray(x, dtype=np.float32)
            ok = np.isfinite(x).all(axis=1)
            if ok.any():
                yield start + np.flatnonzero(ok), torch.from_numpy(x[ok])
    return gen
