"""Hook points of the SFT layer: which examples each epoch trains on, and what a run records.

The epoch-sampler hook (for IterIT and any curriculum). Pass ``train(..., sampler=obj)`` where ``obj`` has

    __len__() -> int                       samples trained per epoch; constant over the run, because the
                                           learning-rate schedule is built from it before training starts
    epoch_indices(epoch: int) -> ints      positions into ``plan.table`` (the rows that survived
                                           tokenisation) to train on in epoch ``epoch`` (0-based), in
                                           training order; exactly ``len(obj)`` of them
  optional:
    bind(plan: TrainPlan) -> None          called once before training: the table, the tokenised examples,
                                           the tokenizer and the resolved config (IterIT scores plan.table
                                           with the live model)
    state_dict() -> dict / load_state_dict(d)
                                           JSON-serialisable state written into every checkpoint
                                           (``sampler_state.json``) and restored on resume, so a resumed run
                                           trains the same rows as an uninterrupted one

``epoch_indices(e)`` is called when epoch ``e`` starts, after every callback's ``on_epoch_begin`` and after
the previous epoch's ``on_epoch_end``: a TrainerCallback that re-scores in ``on_epoch_end`` (it receives
``model``) and updates the sampler's state is how IterIT plugs in. Rules that make resume exact:
  - change the sampler's state only in ``on_epoch_end`` (a resumed run replays ``on_epoch_begin`` of the
    interrupted epoch, never ``on_epoch_end`` of a finished one); the state after ``on_epoch_end`` is
    what the epoch's last checkpoint records, even when that checkpoint was written a moment earlier;
  - ``epoch_indices`` must be a pure function of the state and ``e``: a resumed run calls it again for
    the interrupted epoch and skips the batches already trained;
  - ``bind`` runs again on resume, before ``load_state_dict``: keep it cheap (do an initial scoring pass
    lazily, e.g. in ``epoch_indices(0)`` when the state is empty);
  - a callback that runs the live model (re-scoring) switches it to ``model.eval()`` under
    ``torch.no_grad()`` and back to ``model.train()`` afterwards (LoRA dropout is active in training).
The default sampler (``ShuffleAll``) shuffles every row each epoch with seed ``seed + epoch``.
The ids each epoch trained on are written to ``OUT/epochs/epoch-<e>.json``.
"""

from __future__ import annotations

import contextlib
import json
import logging
import math
import time
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
from transformers import TrainerCallback

from thresher.io import write_json
from thresher.errors import ConfigError
from thresher.models.checkpoints import OPTIMIZER_PARAMS, SAMPLER_STATE, mark_complete, rotate
from thresher.models.runs import EPOCHS

log = logging.getLogger(__name__)


@dataclass
class TrainPlan:
    """What a hook may read: the trained rows, their tokenised examples, the tokenizer and config."""

    table: object                 # thresher Dataset of the rows that survived tokenisation
    examples: object              # thresher.training.examples.Examples aligned with ``table``
    tokenizer: object
    config: object                # TrainConfig
    out: Path


class ShuffleAll:
    """Default epoch sampler: every row once per epoch, shuffled with seed ``seed + epoch``."""

    def __init__(self, n: int, seed: int):
        self.n, self.seed = int(n), int(seed)

    def __len__(self) -> int:
        return self.n

    def epoch_indices(self, epoch: int) -> np.ndarray:
        return np.random.default_rng(self.seed + int(epoch)).permutation(self.n)


class EpochSampler(torch.utils.data.Sampler):
    """torch Sampler over a hook: accelerate calls ``set_epoch`` before each pass over the data."""

    def __init__(self, hook, ids: list[str], out: Path):
        self.hook, self.ids, self.out, self.epoch = hook, ids, Path(out), 0
        self.n = int(len(hook))
        if self.n < 1:
            raise ConfigError(f"The sampler must yield at least one sample per epoch; len(sampler) is {self.n}.")

    def __len__(self) -> int:
        return self.n

    def set_epoch(self, epoch: int) -> None:
        self.epoch = int(epoch)

    def __iter__(self):
        idx = np.asarray(self.hook.epoch_indices(self.epoch), dtype=np.int64).reshape(-1)
        if len(idx) != self.n or (len(idx) and (idx.min() < 0 or idx.max() >= len(self.ids))):
            raise ConfigError(f"The sampler's epoch_indices({self.epoch}) must return {self.n} positions in "
                              f"[0, {len(self.ids)}). Got {len(idx)} positions"
                              + (f" in [{idx.min()}, {idx.max()}]." if len(idx) else "."))
        write_json(self.out / EPOCHS / f"epoch-{self.epoch}.json",
                   {"epoch": self.epoch, "ids": [self.ids[i] for i in idx]})
        return iter(idx.tolist())


class RunRecorder(TrainerCallback):
    """Progress logging (loss, lr, rate, ETA) and thresher's files in each checkpoint.

    The trainer calls ``checkpoint_saved`` right after transformers wrote a checkpoint. Every checkpoint
    gets ``optimizer_params.json`` (the parameter names in the order of the optimizer's state ids:
    optimizer.pt keys its exp_avg / exp_avg_sq by position, not by name), the sampler state when the
    sampler has one, then the completion marker (``checkpoints.mark_complete``), and only then are older
    checkpoints rotated out (``save_total_limit``). A checkpoint written at an epoch's last step precedes
    ``on_epoch_end``, where hooks update their state for the next epoch (IterIT re-scores there); a run
    resumed from it starts that next epoch, so the sampler state and the marker wait for
    ``on_epoch_end`` (this callback runs after the user's: it is registered last). A kill before then
    leaves the checkpoint without its marker, and a resume takes the previous one.
    """

    def __init__(self, sampler_hook, n_tokens_per_sample: float, save_total_limit: int | None = None):
        self.hook, self.tokens_per_sample, self.limit = sampler_hook, n_tokens_per_sample, save_total_limit
        self.t0 = self.step0 = None
        self.names: list[list[str]] | None = None
        self.in_epoch = False            # between on_epoch_begin and on_epoch_end
        self.pending: Path | None = None     # a checkpoint waiting for on_epoch_end

    def on_train_begin(self, args, state, control, model=None, optimizer=None, **kw):
        self.t0, self.step0 = time.perf_counter(), state.global_step
        by_id = {id(p): n for n, p in model.named_parameters()}
        self.names = [[by_id.get(id(p), "?") for p in g["params"]] for g in optimizer.param_groups]
        if state.global_step:
            log.info("resumed at step %d of %d", state.global_step, state.max_steps)

    def on_log(self, args, state, control, logs=None, **kw):
        if not logs or "loss" not in logs or self.t0 is None:
            return
        done = state.global_step - self.step0
        dt = time.perf_counter() - self.t0
        rate = done / dt if dt > 0 else float("nan")
        samples = rate * args.per_device_train_batch_size * args.gradient_accumulation_steps
        eta = (state.max_steps - state.global_step) / rate if rate > 0 else float("nan")
        log.info("step %d/%d  loss %.4f  lr %.3g  %.2f samples/s  ~%.0f tokens/s  ETA %s",
                 state.global_step, state.max_steps, logs["loss"], logs.get("learning_rate", float("nan")),
                 samples, samples * self.tokens_per_sample, _fmt_seconds(eta))

    def on_epoch_begin(self, args, state, control, **kw):
        self.in_epoch = True

    def checkpoint_saved(self, ckpt: Path, state) -> None:
        """transformers has written ``ckpt``: add thresher's files and mark it (now or at epoch end)."""
        write_json(ckpt / OPTIMIZER_PARAMS, {"param_groups": self.names})
        if self.in_epoch and abs(state.epoch - round(state.epoch)) < 1e-9:
            self.pending = ckpt
        else:
            self._complete(ckpt)

    def on_epoch_end(self, args, state, control, **kw):
        self.in_epoch = False
        if self.pending is not None:
            ckpt, self.pending = self.pending, None
            self._complete(ckpt)

    def _complete(self, ckpt: Path) -> None:
        stateful = hasattr(self.hook, "state_dict")
        if stateful:
            write_json(ckpt / SAMPLER_STATE, self.hook.state_dict())
        mark_complete(ckpt, (SAMPLER_STATE,) if stateful else ())
        rotate(ckpt.parent, self.limit)


class StopAtStep(TrainerCallback):
    """Stop training after ``step`` optimiser steps (after that step's checkpoint is written)."""

    def __init__(self, step: int):
        self.step = int(step)

    def on_step_end(self, args, state, control, **kw):
        if state.global_step >= self.step:
            control.should_training_stop = True
        return control


def restore_sampler(hook, checkpoint: Path) -> None:
    """Load the sampler's state from a (complete) checkpoint; a stateful sampler never resumes without it."""
    if not hasattr(hook, "load_state_dict"):
        return
    f = Path(checkpoint) / SAMPLER_STATE
    if not f.is_file():
        raise ConfigError(f"{checkpoint} holds no {SAMPLER_STATE}: the run that wrote it had a sampler without "
                          f"a state, and this run's {type(hook).__name__} cannot resume from it. Resume with "
                          "the same sampler, or train into a new output directory.")
    hook.load_state_dict(json.loads(f.read_text(encoding="utf-8")))


def _fmt_seconds(s: float) -> str:
    if not math.isfinite(s):
        return "?"
    s = int(round(s))
    return f"{s // 3600}:{s // 60 % 60:02d}:{s % 60:02d}"


@contextlib.contextmanager
def _scoring_mode(model):
    """model.eval() under torch.no_grad(), training mode restored after (LoRA dropout off while scoring)."""
    was = getattr(model, "training", False)
    if model is not None:
        model.eval()
    try:
        with torch.no_grad():
            yield
    finally:
        if model is not None and was:
            model.train()


class IterITCallback(TrainerCallback):
    """Scores the pool at train begin; re-scores the window after each complete epoch but the last."""

    def __init__(self, sampler):           # a thresher.training.iterit.IterITSampler
        self.sampler = sampler

    def on_train_begin(self, args, state, control, model=None, **kw):
        with _scoring_mode(model):
            self.sampler.start(model)

    def on_epoch_end(self, args, state, control, model=None, **kw):
        # Trainer also calls on_epoch_end when training stops mid-epoch (state.epoch fractional);
        # re-scoring then would hand the unfinished epoch's checkpoint the next epoch's ordering.
        done = round(state.epoch or 0)
        if state.global_step < state.max_steps and abs(state.epoch - done) < 1e-9:
            with _scoring_mode(model):
                self.sampler.update(done, model)
