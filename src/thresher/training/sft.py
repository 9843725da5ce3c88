"""Supervised fine-tuning: a thin layer over TRL's SFTTrainer and PEFT LoRA (or full fine-tuning).

What this layer adds to SFTTrainer, and nothing more:
  - tokenisation with the scoring code's templates and response spans (``examples.build_examples``), so
    the supervised tokens are exactly the tokens the IFD scorer scores; SFTTrainer receives the finished
    ``input_ids``/``labels`` and skips its own preparation (``skip_prepare_dataset``). Its own chat-template
    and completion-mask tokenisation would re-derive the prompt boundary differently (it tokenises the
    prompt alone and takes the common prefix), which is the off-by-one at BPE boundaries thresher avoids;
  - an epoch-sampler hook (``hooks.py``) for IterIT-style selection during training;
  - a run directory that records config, versions and the ids trained on, and checkpoints that carry
    the names of the optimizer's parameters next to Adam's moments (``checkpoints.load_adam_moments``);
  - resume from the last complete checkpoint, refusing a changed config or changed data.

Run directory ``out`` (its format and its one reader: ``thresher.models.runs``):
  config.json        resolved TrainConfig, preset, model identity
  manifest.json      argv, time, package versions (thresher.manifest) + trl/peft/accelerate/datasets
  train_ids.json     ids of the rows trained on (table order) and the dropped rows with their reason
  epochs/epoch-<e>.json   ids in the order epoch e trained them
  checkpoint-<step>/ adapter (or full) weights, optimizer.pt, scheduler.pt, rng_state.pth,
                     trainer_state.json, optimizer_params.json, sampler_state.json (when the sampler has one)
                     and, written last, thresher_complete.json (see ``checkpoints``: only a checkpoint
                     with it is resumed from; save_total_limit rotates only after it is written)
  final/             the trained adapter (LoRA) or model (full) and tokenizer; written atomically, only
                     when the run reached its last step
  summary.json       steps, losses, runtime, samples/s, tokens/s
"""

from __future__ import annotations

import logging
import os
import shutil
import time
import warnings
from dataclasses import dataclass, field
from importlib import metadata
from pathlib import Path

from thresher.data import load
from thresher.data.table import Dataset
from thresher.errors import ConfigError, as_option
from thresher.io import atomic_folder, write_json
from thresher.manifest import base_manifest
from thresher.models.checkpoints import list_checkpoints, step_of
from thresher.models.hf import HFCausalLM
from thresher.models.runs import FINAL, MANIFEST, SUMMARY, TrainingRunFolder, write_config, write_train_ids
from thresher.outputs import claim_output_dir, read_marker, refuse_special, write_marker
from thresher.training.config import TrainConfig, resolve_config
from thresher.training.examples import build_examples

log = logging.getLogger(__name__)

_EXTRA_VERSIONS = ("trl", "peft", "accelerate", "datasets")
RESUME_FREE = ("logging_steps", "save_total_limit")      # may change between a run and its resume


@dataclass
class TrainResult:
    out: Path
    final_dir: Path | None            # None when the run stopped before its last step
    global_step: int
    max_steps: int
    train_loss: float | None          # mean training loss of this call's steps
    runtime_s: float
    samples_per_s: float
    tokens_per_s: float
    n_examples: int
    n_skipped: int
    checkpoints: list[Path]
    log_history: list[dict]
    model: object = field(repr=False, default=None)       # the trained (PEFT) model, in memory
    tokenizer: object = field(repr=False, default=None)


def train(data, *, out, config: TrainConfig | None = None, preset: str | None = None, cpu_small: bool = False,
          resume: bool = True, callbacks: list | None = None, sampler=None, ids: list[str] | None = None,
          load_options: dict | None = None, argv: list[str] | None = None, **overrides) -> TrainResult:
    """Fine-tune a model on ``data`` (a thresher Dataset or a path ``thresher.data.load`` reads).

    The settings are a ``TrainConfig``: ``config``, or its defaults with ``preset`` (see ``config.PRESETS``)
    applied, then ``cpu_small``, then ``overrides``: keyword arguments named like TrainConfig's fields
    (``lr=1e-4, max_grad_norm=0.5``; None leaves a field as it is; an unknown name is a ConfigError).
    ``ids`` restricts training to those row ids; ``sampler`` is the epoch-sampler hook (``hooks.py``);
    ``callbacks`` are transformers ``TrainerCallback``s; ``load_options`` are ``thresher.data.load``'s
    keywords for a path. ``resume=True`` continues from the last complete checkpoint in ``out`` (the config
    and data must match the saved ones); ``resume=False`` refuses an ``out`` that already holds checkpoints.
    """
    cfg = resolve_config(preset, overrides, cpu_small=cpu_small, config=config)
    out = Path(out)
    _claim_run_dir(out, [x for x in (data, cfg.model) if isinstance(x, (str, os.PathLike))])
    table = _load_table(data, load_options)
    if ids is not None:
        table = _restrict(table, ids)

    backend = HFCausalLM(cfg.model)
    tokenizer = backend.tokenizer_only()
    if tokenizer.pad_token_id is None:
        tokenizer.pad_token = tokenizer.eos_token
    ex = build_examples(table, tokenizer, template=cfg.template, max_length=cfg.max_length,
                        mask_prompt=cfg.mask_prompt, add_eos=cfg.add_eos, turns=cfg.turns)
    if len(ex) == 0:
        raise ConfigError(f"No row of {getattr(table, 'source', 'the data')} can be trained on "
                          f"({_reasons(ex.skipped)}). Raise max_length or check the data.")
    kept = table.subset(ex.rows)
    skipped = {table.ids[r]: why for r, why in ex.skipped.items()}
    if skipped:
        log.warning("%d of %d rows cannot be trained on and are left out (%s)", len(skipped), len(table),
                    _reasons(ex.skipped))

    resume_from = _check_run_dir(out, cfg, kept.ids, resume)
    _write_run_records(out, cfg, preset, backend, kept.ids, skipped, argv)

    from thresher.training.hooks import EpochSampler, RunRecorder, ShuffleAll, TrainPlan, restore_sampler
    hook = sampler if sampler is not None else ShuffleAll(len(kept), cfg.seed)
    if hasattr(hook, "bind"):
        hook.bind(TrainPlan(kept, ex, tokenizer, cfg, out))
    if resume_from is not None:
        restore_sampler(hook, resume_from)
    recorder = RunRecorder(hook, ex.n_tokens() / len(ex), cfg.save_total_limit)
    with warnings.catch_warnings():
        # transformers 5.x deprecation notices raised from inside TRL/PEFT, not actionable by the user
        warnings.filterwarnings("ignore", message=".*deprecated and will be removed in v6.*", category=FutureWarning)
        trainer = _make_trainer(cfg, out, ex, backend, EpochSampler(hook, kept.ids, out), callbacks or [],
                                recorder)
        if resume_from is not None:
            log.info("resuming from %s", resume_from)
        t0 = time.perf_counter()                 # runtime = the training loop, not the model load
        output = trainer.train(resume_from_checkpoint=str(resume_from) if resume_from else None)
    runtime = time.perf_counter() - t0
    return _finish(trainer, output, cfg, out, ex, skipped, runtime, resume_from)


# ----------------------------------------------------------------------------------- data and run dir
def _claim_run_dir(out: Path, inputs) -> None:
    """Make ``out`` a training run folder before any work (engine.outputs): a new or empty folder, or an
    earlier training run (resumed); never a user's folder, the data, the model or a folder holding them."""
    refuse_special(out, "--out", inputs)
    if read_marker(out) is None and TrainingRunFolder(out).has_records:
        write_marker(out, "train")         # a training run written before output folders were marked
    claim_output_dir(out, "train", inputs=inputs)


def _load_table(data, load_options):
    if isinstance(data, Dataset):
        return data
    return load(data, **(load_options or {}))


def _restrict(table, ids):
    pos = {rid: i for i, rid in enumerate(table.ids)}
    missing = [i for i in ids if i not in pos]
    if missing:
        raise ConfigError(f"{len(missing)} of the {len(ids)} ids to train on are not in {table.source}, "
                          f"e.g. {missing[:3]}. Pass ids of this dataset (its 'id' field or content hash).")
    return table.subset([pos[i] for i in ids])


def _reasons(skipped: dict) -> str:
    counts: dict[str, int] = {}
    for why in skipped.values():
        counts[why] = counts.get(why, 0) + 1
    return ", ".join(f"{n} {why}" for why, n in sorted(counts.items())) or "none"


def _check_run_dir(out: Path, cfg: TrainConfig, ids, resume: bool):
    """The checkpoint to resume from, or None; refuses to mix runs in one directory."""
    found = list_checkpoints(out)
    if not found:
        return None
    if not resume:
        raise ConfigError(f"{out} already holds checkpoints ({found[-1].name}). Pass {as_option('resume', True)} to "
                          "continue that run, or choose an empty output directory.")
    run = TrainingRunFolder(out)
    diff = changed_settings(run.config, cfg.as_dict())
    if diff:
        raise ConfigError(f"Cannot resume {out}: these settings differ from the saved run: {', '.join(diff)}. "
                          "Use the same settings, or a new output directory.")
    saved_ids = run.ids
    if saved_ids != list(ids):
        raise ConfigError(f"Cannot resume {out}: the rows to train on differ from the saved run's "
                          f"({len(saved_ids)} saved, {len(ids)} now). Use the same data and ids, or a new "
                          "output directory.")
    return found[-1]


def changed_settings(saved: dict, now: dict) -> list[str]:
    """"name (saved -> now)" for each TrainConfig field of ``now`` whose value differs from a run's saved
    config (``TrainingRunFolder.config``), in name order; the RESUME_FREE fields are not compared."""
    diff = sorted(k for k in now if k not in RESUME_FREE and saved.get(k) != now[k])
    return [f"{k} ({saved.get(k)!r} -> {now[k]!r})" for k in diff]


def _write_run_records(out, cfg, preset, backend, ids, skipped, argv) -> None:
    manifest = base_manifest(argv)
    for name in _EXTRA_VERSIONS:
        try:
            manifest["versions"][name] = metadata.version(name)
        except metadata.PackageNotFoundError:
            manifest["versions"][name] = None
    write_config(out, cfg.as_dict(), preset, backend.identity())
    write_json(out / MANIFEST, manifest)
    write_train_ids(out, ids, skipped)


# ----------------------------------------------------------------------------------- trainer
def _precision(cfg: TrainConfig, cuda: bool):
    """(weights dtype of the frozen base or the full model, bf16 autocast, fp16 autocast)."""
    import torch
    mode = cfg.dtype if cfg.dtype != "auto" else ("bfloat16" if cuda else "float32")
    if mode == "float16" and not cuda:
        raise ConfigError("The 'dtype' parameter float16 needs a CUDA device (mixed precision with loss "
                          "scaling). Use float32 or bfloat16 on a CPU.")
    if mode == "float32":
        return torch.float32, False, False
    low = torch.bfloat16 if mode == "bfloat16" else torch.float16
    # LoRA: the frozen base is stored in low precision, the adapter (PEFT upcasts it) and Adam in fp32.
    # Full fine-tuning keeps fp32 master weights and runs the matmuls under autocast.
    return (low if cfg.lora else torch.float32), mode == "bfloat16", mode == "float16"


def _make_trainer(cfg: TrainConfig, out: Path, ex, backend, torch_sampler, callbacks, recorder):
    import datasets
    import torch
    from transformers import AutoModelForCausalLM, PrinterCallback
    from trl import SFTConfig

    cuda = torch.cuda.is_available() and cfg.device != "cpu"
    if cfg.device == "cuda" and not torch.cuda.is_available():
        raise ConfigError("The 'device' parameter is 'cuda' but no CUDA device is visible. Use 'auto' or 'cpu'.")
    weights_dtype, bf16, fp16 = _precision(cfg, cuda)
    src, kw = backend.source()                 # a hub id at the commit config.json records
    try:
        lm = AutoModelForCausalLM.from_pretrained(src, dtype=weights_dtype, **kw)
    except OSError as e:
        raise ConfigError(f"Could not load model {cfg.model!r}: {e}. Pass a local path, 'bundled', or a hub id "
                          "on a machine that can reach the hub.") from None

    peft_config = None
    if cfg.lora:
        from peft import LoraConfig
        peft_config = LoraConfig(r=cfg.lora_r, lora_alpha=cfg.lora_alpha, lora_dropout=cfg.lora_dropout,
                                 target_modules=list(cfg.target_modules), bias="none", task_type="CAUSAL_LM")
    args = SFTConfig(
        output_dir=str(out), per_device_train_batch_size=cfg.batch_size,
        gradient_accumulation_steps=cfg.grad_accum, learning_rate=cfg.lr, num_train_epochs=cfg.epochs,
        max_steps=cfg.max_steps, lr_scheduler_type=cfg.scheduler, warmup_steps=cfg.warmup_ratio,
        weight_decay=cfg.weight_decay, max_grad_norm=cfg.max_grad_norm,
        save_strategy="steps" if cfg.save_steps > 0 else "epoch", save_steps=max(cfg.save_steps, 1),
        save_total_limit=None, logging_steps=cfg.logging_steps, logging_first_step=True,
        seed=cfg.seed, data_seed=cfg.seed, use_cpu=not cuda, bf16=bf16, fp16=fp16,
        report_to="none", disable_tqdm=True, **_checkpointing_arg(SFTConfig, cfg.gradient_checkpointing),
        dataloader_pin_memory=cuda, max_length=cfg.max_length,
        dataset_kwargs={"skip_prepare_dataset": True}, remove_unused_columns=False,
    )
    train_ds = datasets.Dataset.from_dict({"input_ids": [x.tolist() for x in ex.input_ids],
                                           "labels": [x.tolist() for x in ex.labels]})
    # The recorder is the last callback (see RunRecorder) and rotates checkpoints itself, after their
    # marker: transformers' rotation (save_total_limit=None above) ran before thresher's files existed.
    trainer = _sft_class()(torch_sampler, cuda, recorder, model=lm, args=args, train_dataset=train_ds,
                           processing_class=backend.tokenizer, peft_config=peft_config,
                           callbacks=[*callbacks, recorder])
    trainer.remove_callback(PrinterCallback)        # RunRecorder logs progress through logging instead
    return trainer


def _checkpointing_arg(config_cls, on: bool) -> dict:
    # transformers 5.x renamed gradient_checkpointing to activation_checkpointing (the old name warns).
    if "activation_checkpointing" in config_cls.__dataclass_fields__:
        return {"activation_checkpointing": on, "gradient_checkpointing": None}
    return {"gradient_checkpointing": on}


def _sft_class():
    from transformers import Trainer
    from trl import SFTTrainer

    class SFTWithSampler(SFTTrainer):
        """SFTTrainer whose training order comes from thresher's epoch sampler (hooks.EpochSampler).

        Loss: on CUDA, TRL's fused LM head (log-probabilities of the labelled positions only, in tiles; it
        saves the (B, L, vocab) logits' memory). On a CPU that kernel measured about 25 % slower per step
        than the model's own loss on the bundled model, so there the model computes the same token-mean
        cross-entropy itself (transformers' Trainer.compute_loss; both divide by the labelled tokens of the
        whole accumulated batch).
        """

        def __init__(self, torch_sampler, fused_head: bool, recorder, **kw):
            self._thresher_sampler, self._fused_head, self._recorder = torch_sampler, fused_head, recorder
            self.tokens_trained = 0                       # real (unpadded) tokens of this train() call
            super().__init__(**kw)

        def _get_train_sampler(self, train_dataset=None):
            return self._thresher_sampler

        def _save_checkpoint(self, model, trial):
            ckpt = Path(self._get_output_dir(trial=trial)) / f"checkpoint-{self.state.global_step}"
            if ckpt.exists():      # a save of this step cut off by a kill; the resume started before it
                log.warning("replacing %s, left incomplete by an earlier save of this step", ckpt)
                shutil.rmtree(ckpt)
            super()._save_checkpoint(model, trial)
            self._recorder.checkpoint_saved(ckpt, self.state)

        def compute_loss(self, model, inputs, return_outputs=False, num_items_in_batch=None):
            if model.training:
                self.tokens_trained += int(inputs["attention_mask"].sum())
            if self._fused_head:
                return super().compute_loss(model, inputs, return_outputs=return_outputs,
                                            num_items_in_batch=num_items_in_batch)
            inputs["use_cache"] = False
            return Trainer.compute_loss(self, model, inputs, return_outputs=return_outputs,
                                        num_items_in_batch=num_items_in_batch)

    return SFTWithSampler


# ----------------------------------------------------------------------------------- results
def _finish(trainer, output, cfg, out: Path, ex, skipped, runtime, resume_from) -> TrainResult:
    state = trainer.state
    final_dir = None
    if state.global_step >= state.max_steps:
        final_dir = out / FINAL
        with atomic_folder(final_dir, replace=True) as tmp:   # a half-written final model is never left in place
            trainer.save_model(str(tmp))
    else:
        log.warning("training stopped at step %d of %d; no final model written (resume continues the run)",
                    state.global_step, state.max_steps)
    history = [dict(e) for e in state.log_history]
    done = state.global_step - (step_of(resume_from) if resume_from else 0)
    samples = done * cfg.batch_size * cfg.grad_accum
    tokens = trainer.tokens_trained
    result = TrainResult(
        out=out, final_dir=final_dir, global_step=state.global_step, max_steps=state.max_steps,
        train_loss=float(output.training_loss) if done else None, runtime_s=runtime,
        samples_per_s=samples / runtime if runtime > 0 else float("nan"),
        tokens_per_s=tokens / runtime if runtime > 0 else float("nan"),
        n_examples=len(ex), n_skipped=len(skipped), checkpoints=list_checkpoints(out, warn=False), log_history=history,
        model=trainer.model, tokenizer=trainer.processing_class)
    write_json(out / SUMMARY, {
        "global_step": result.global_step, "max_steps": result.max_steps, "train_loss": result.train_loss,
        "runtime_s": runtime, "samples_per_s": result.samples_per_s, "tokens_per_s": result.tokens_per_s,
        "n_examples": result.n_examples, "n_skipped": result.n_skipped,
        "resumed_from": str(resume_from) if resume_from else None,
        "final": str(final_dir) if final_dir else None,
        "checkpoints": [p.name for p in result.checkpoints]})
    log.info("trained %d steps in %.1f s (%.2f samples/s); run directory %s", done, runtime,
             result.samples_per_s, out)
    return result
