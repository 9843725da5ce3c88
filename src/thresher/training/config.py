"""Typed fine-tuning configuration and the papers' hyper-parameters as named presets.

``resolve_config(preset, overrides)`` starts from the defaults, applies a preset, then ``cpu_small``
(when asked), then the caller's overrides; unknown keys and bad values are ConfigErrors.
Batch sizes in presets are for ONE device: ``batch_size`` x ``grad_accum`` = the paper's global batch.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass

from thresher.config import build, choice, did_you_mean, option
from thresher.data import TURNS
from thresher.data.templates import TEMPLATES
from thresher.errors import ConfigError
from thresher.models.hf import DTYPES

SCHEDULERS = ("linear", "cosine", "constant", "constant_with_warmup")
ATTN_QKVO = ["q_proj", "k_proj", "v_proj", "o_proj"]
ALL_LINEAR = ATTN_QKVO + ["gate_proj", "up_proj", "down_proj"]


@dataclass
class TrainConfig:
    model: str = option("bundled", help="hub id, local path, or 'bundled' (SmolLM2-135M-Instruct)")
    template: str = choice("alpaca", *TEMPLATES, help="prompt template, the same as scoring's")
    turns: str = choice("last", *TURNS, help="which assistant turns of a row are supervised (all: every reply, "
                        "user/system text masked, as FastChat trains on ShareGPT)")
    max_length: int = option(512, help="tokens per sequence (prompt + response)")
    mask_prompt: bool = option(True, help="loss on the response tokens only (false: on the whole sequence, "
                               "prompt included, as CLUES)")
    add_eos: bool = option(True, help="append an end-of-sequence token after the response",
                           flags={"--add-eos": True, "--no-eos": False})
    lora: bool = option(True, help="train LoRA adapters (false: full fine-tuning)",
                        flags={"--lora": True, "--full": False})
    lora_r: int = option(8, help="LoRA rank")
    lora_alpha: int = option(16, help="LoRA scaling numerator (scale = alpha / r)")
    lora_dropout: float = option(0.05, help="dropout on the LoRA input, in [0, 1)")
    target_modules: list = option(default_factory=lambda: ["q_proj", "v_proj"],
                                  help="module names that get LoRA adapters, comma-separated on the command line")
    epochs: float = option(1.0, help="passes over the data (ignored when max_steps > 0)")
    max_steps: int = option(-1, help="optimiser steps; > 0 overrides epochs")
    lr: float = option(2e-4, help="peak learning rate")
    batch_size: int = option(4, help="sequences per device per forward")
    grad_accum: int = option(1, help="forwards per optimiser step")
    warmup_ratio: float = option(0.03, help="share of the steps spent warming up the learning rate, in [0, 1)")
    scheduler: str = choice("linear", *SCHEDULERS, help="learning-rate schedule after the warm-up")
    weight_decay: float = option(0.0, help="AdamW weight decay")
    max_grad_norm: float = option(1.0, help="clip the gradient to this global L2 norm")
    save_steps: int = option(0, help="checkpoint every N optimiser steps (0: at each epoch end)")
    save_total_limit: int | None = option(None, help="keep only the last N checkpoints (default: all; "
                                          "gradient methods read them all)")
    logging_steps: int = option(10, help="log the loss every N optimiser steps")
    seed: int = option(42, help="seed of the shuffling, the LoRA initialisation and dropout")
    device: str = choice("auto", "auto", "cpu", "cuda", help="auto: CUDA when visible, else the CPU")
    dtype: str = choice("auto", *DTYPES, help="auto: float32 on CPU, bfloat16 mixed precision on GPU")
    gradient_checkpointing: bool = option(False, help="recompute activations in the backward pass (less memory, "
                                          "slower)")

    def check(self, owner: str) -> None:
        ints = {"max_length": 8, "lora_r": 1, "lora_alpha": 1, "batch_size": 1, "grad_accum": 1,
                "logging_steps": 1}
        for key, low in ints.items():
            if getattr(self, key) < low:
                raise ConfigError(f"The {key!r} parameter of {owner} must be an int >= {low}. "
                                  f"Got {getattr(self, key)!r}.")
        if not 0.0 <= self.lora_dropout < 1.0:
            raise ConfigError(f"The 'lora_dropout' parameter of {owner} must be a float in [0, 1). "
                              f"Got {self.lora_dropout!r}.")
        if not 0.0 <= self.warmup_ratio < 1.0:
            raise ConfigError(f"The 'warmup_ratio' parameter of {owner} must be a float in [0, 1). "
                              f"Got {self.warmup_ratio!r}.")
        if self.lr <= 0:
            raise ConfigError(f"The 'lr' parameter of {owner} must be a float > 0. Got {self.lr!r}.")
        if self.max_steps <= 0 and self.epochs <= 0:
            raise ConfigError(f"{owner} needs 'epochs' > 0 or 'max_steps' > 0. Got epochs={self.epochs!r}, "
                              f"max_steps={self.max_steps!r}.")
        if self.save_steps < 0:
            raise ConfigError(f"The 'save_steps' parameter of {owner} must be an int >= 0. Got {self.save_steps!r}.")
        if self.lora and (not self.target_modules or not all(isinstance(m, str) for m in self.target_modules)):
            raise ConfigError(f"The 'target_modules' parameter of {owner} must be a non-empty list of module "
                              f"names such as ['q_proj', 'v_proj']. Got {self.target_modules!r}.")

    def as_dict(self) -> dict:
        return dataclasses.asdict(self)


# Sources: METHODS.md 3.3 (Cherry), 2.5 (DS2), 1.2 step 1 (CLUES), 6.3 step 1 (LESS), 4.2 (IterIT).
PRESETS: dict[str, dict] = {
    # Stanford-Alpaca recipe that Cherry's final training follows: full fine-tuning, global batch 128.
    "alpaca": dict(lora=False, template="alpaca", lr=2e-5, epochs=3.0, batch_size=4, grad_accum=32,
                   max_length=512, weight_decay=0.0, warmup_ratio=0.03, scheduler="cosine"),
    "cherry": dict(lora=False, template="alpaca", lr=2e-5, epochs=3.0, batch_size=4, grad_accum=32,
                   max_length=512, weight_decay=0.0, warmup_ratio=0.03, scheduler="cosine"),
    # open-instruct LoRA fine-tuning (targets: every linear projection, open-instruct's default).
    "ds2": dict(lora=True, lora_r=64, lora_alpha=16, lora_dropout=0.1, target_modules=ALL_LINEAR,
                template="chat", lr=1e-4, epochs=5.0, batch_size=4, grad_accum=32, max_length=2048,
                weight_decay=0.0, warmup_ratio=0.03, scheduler="linear"),
    # finetune.sh: unmasked full-sequence loss, 260 steps of 16 samples, checkpoints 65/130/195/260.
    "clues": dict(lora=True, lora_r=16, lora_alpha=16, lora_dropout=0.05, target_modules=["q_proj", "v_proj"],
                  template="alpaca", mask_prompt=False, lr=2e-5, max_steps=260, save_steps=65,
                  batch_size=2, grad_accum=8, max_length=2048, warmup_ratio=0.03, scheduler="linear",
                  weight_decay=0.0),
    # LESS warm-up on a 5 % random subset; checkpoint every epoch (save_steps=0).
    "less_warmup": dict(lora=True, lora_r=128, lora_alpha=512, lora_dropout=0.1, target_modules=ATTN_QKVO,
                        template="chat", lr=2e-5, epochs=4.0, batch_size=1, grad_accum=32, max_length=2048,
                        warmup_ratio=0.03, scheduler="linear", weight_decay=0.0, save_steps=0),
    # train_IterIT.sh: full fine-tuning, chat template, cosine, seed 42.
    "iterit": dict(lora=False, template="chat", lr=2e-5, epochs=3.0, batch_size=1, grad_accum=32,
                   max_length=2048, warmup_ratio=0.03, scheduler="cosine", weight_decay=0.0, seed=42),
}

# Laptop/CI scale: short sequences and small batches, same optimiser, schedule and masking.
CPU_SMALL = dict(max_length=256, batch_size=4, grad_accum=1, logging_steps=1)


def resolve_config(preset: str | None = None, overrides: dict | None = None, *, cpu_small: bool = False,
                   config: TrainConfig | None = None) -> TrainConfig:
    """(``config``, or the defaults <- preset) <- CPU_SMALL (if ``cpu_small``) <- overrides (None values are
    ignored). Overrides are TrainConfig fields: an unknown name is a ConfigError with a did-you-mean."""
    if config is not None and not isinstance(config, TrainConfig):
        raise ConfigError(f"The 'config' parameter of train must be a TrainConfig. Got {type(config).__name__}; "
                          "pass its fields as keyword arguments instead.")
    if config is not None and preset is not None:
        raise ConfigError(f"train takes a TrainConfig or a preset, not both (got preset {preset!r}): start from "
                          "the preset and pass the changes as keyword arguments.")
    values: dict = config.as_dict() if config is not None else {}
    if preset is not None:
        if preset not in PRESETS:
            raise ConfigError(f"The 'preset' parameter of train must be one of {', '.join(PRESETS)}. "
                              f"Got {preset!r}.{did_you_mean(preset, PRESETS)}")
        values.update(PRESETS[preset])
    if cpu_small:
        values.update(CPU_SMALL)
    values.update({k: v for k, v in (overrides or {}).items() if v is not None})
    if isinstance(values.get("target_modules"), tuple):
        values["target_modules"] = list(values["target_modules"])
    return build(TrainConfig, values, "train")
