"""Typed fine-tuning configuration and the papers' hyper-parameters as named presets.

``resolve_config(preset, overrides)`` starts from the defaults, applies a preset, then ``cpu_small``
(when asked), then the caller's overrides; unknown keys and bad values are ConfigErrors.
Batch sizes in presets are for ONE device: ``batch_size`` x ``grad_accum`` = the paper's global batch.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass

from thresher.config import build, choice
from thresher.errors import ConfigError

SCHEDULERS = ("linear", "cosine", "constant", "constant_with_warmup")
ATTN_QKVO = ["q_proj", "k_proj", "v_proj", "o_proj"]
ALL_LINEAR = ATTN_QKVO + ["gate_proj", "up_proj", "down_proj"]


@dataclass
class TrainConfig:
    model: str = "bundled"                 # hub id, local path, or "bundled" (SmolLM2-135M-Instruct)
    template: str = choice("alpaca", "alpaca", "wiz", "vicuna", "none", "chat")
    turns: str = choice("last", "last", "first", "all")   # all: every assistant reply supervised
    max_length: int = 512
    mask_prompt: bool = True               # False = loss on the whole sequence (CLUES)
    add_eos: bool = True
    lora: bool = True                      # False = full fine-tuning
    lora_r: int = 8
    lora_alpha: int = 16
    lora_dropout: float = 0.05
    target_modules: list = dataclasses.field(default_factory=lambda: ["q_proj", "v_proj"])
    epochs: float = 1.0
    max_steps: int = -1                    # > 0 overrides epochs
    lr: float = 2e-4
    batch_size: int = 4                    # per device
    grad_accum: int = 1
    warmup_ratio: float = 0.03
    scheduler: str = choice("linear", *SCHEDULERS)
    weight_decay: float = 0.0
    max_grad_norm: float = 1.0
    save_steps: int = 0                    # > 0: checkpoint every N optimiser steps; 0: at each epoch end
    save_total_limit: int | None = None    # None keeps every checkpoint (gradient methods read them all)
    logging_steps: int = 10
    seed: int = 42
    device: str = choice("auto", "auto", "cpu", "cuda")
    dtype: str = choice("auto", "auto", "float32", "bfloat16", "float16")
    gradient_checkpointing: bool = False

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


def resolve_config(preset: str | None = None, overrides: dict | None = None, *,
                   cpu_small: bool = False) -> TrainConfig:
    """Defaults <- preset <- CPU_SMALL (if ``cpu_small``) <- overrides (None values are ignored)."""
    values: dict = {}
    if preset is not None:
        if preset not in PRESETS:
            from thresher.config import did_you_mean
            raise ConfigError(f"The 'preset' parameter of train must be one of {', '.join(PRESETS)}. "
                              f"Got {preset!r}.{did_you_mean(preset, PRESETS)}")
        values.update(PRESETS[preset])
    if cpu_small:
        values.update(CPU_SMALL)
    values.update({k: v for k, v in (overrides or {}).items() if v is not None})
    if isinstance(values.get("target_modules"), tuple):
        values["target_modules"] = list(values["target_modules"])
    return build(TrainConfig, values, "train")
