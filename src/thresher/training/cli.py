"""``thresher train``: the flags and the handler, for thresher.cli to wire in.

    from thresher.training.cli import add_train_arguments, train_cli
    p = sub.add_parser("train", help="fine-tune a model on a (selected) dataset")
    add_train_arguments(p)            # every flag, data-loading ones included
    p.set_defaults(func=train_cli)

Flags left out fall back to the preset, then to TrainConfig's defaults.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

from thresher.errors import ConfigError
from thresher.training.config import PRESETS, SCHEDULERS

_CONFIG_FLAGS = ("model", "lora", "lora_r", "lora_alpha", "lora_dropout", "target_modules", "epochs",
                 "max_steps", "lr", "batch_size", "grad_accum", "warmup_ratio", "scheduler", "weight_decay",
                 "max_length", "template", "turns", "mask_prompt", "add_eos", "save_steps", "save_total_limit",
                 "logging_steps", "seed", "device", "dtype", "gradient_checkpointing")


def add_train_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("data", help="dataset to train on (.json/.jsonl/.parquet, HF dataset dir, hub name), "
                                "e.g. the file `thresher select` wrote")
    p.add_argument("--out", required=True, help="run directory (checkpoints, final/, config, ids)")
    p.add_argument("--preset", choices=sorted(PRESETS), help="a paper's hyper-parameters (flags override them)")
    p.add_argument("--cpu-small", action="store_true",
                   help="shrink to CPU scale: max_length 256, batch 4, no accumulation")
    p.add_argument("--model", help="hub id, local path, or 'bundled' (SmolLM2-135M-Instruct; default)")
    g = p.add_mutually_exclusive_group()
    g.add_argument("--lora", dest="lora", action="store_true", default=None, help="LoRA adapters (default)")
    g.add_argument("--full", dest="lora", action="store_false", help="full fine-tuning")
    p.add_argument("--lora-r", type=int)
    p.add_argument("--lora-alpha", type=int)
    p.add_argument("--lora-dropout", type=float)
    p.add_argument("--target-modules", help="comma-separated module names, e.g. q_proj,v_proj")
    p.add_argument("--epochs", type=float)
    p.add_argument("--max-steps", type=int, help="optimiser steps; > 0 overrides --epochs")
    p.add_argument("--lr", type=float)
    p.add_argument("--batch-size", type=int, help="sequences per device per forward")
    p.add_argument("--grad-accum", type=int, help="forwards per optimiser step")
    p.add_argument("--warmup-ratio", type=float)
    p.add_argument("--scheduler", choices=SCHEDULERS)
    p.add_argument("--weight-decay", type=float)
    p.add_argument("--max-length", type=int, help="tokens per sequence (prompt + response)")
    p.add_argument("--template", choices=["alpaca", "wiz", "vicuna", "none", "chat"],
                   help="prompt template, the same as scoring's (default alpaca)")
    p.add_argument("--turns", choices=["last", "first", "all"],
                   help="which assistant turns of a row are supervised (all: every reply, user/system text "
                        "masked, as FastChat trains on ShareGPT)")
    p.add_argument("--no-mask-prompt", dest="mask_prompt", action="store_false", default=None,
                   help="loss on the whole sequence, prompt included (CLUES)")
    p.add_argument("--no-eos", dest="add_eos", action="store_false", default=None,
                   help="do not append an end-of-sequence token after the response")
    p.add_argument("--save-steps", type=int, help="checkpoint every N optimiser steps (0: each epoch end)")
    p.add_argument("--save-total-limit", type=int, help="keep only the last N checkpoints (default: all)")
    p.add_argument("--logging-steps", type=int)
    p.add_argument("--seed", type=int)
    p.add_argument("--device", choices=["auto", "cpu", "cuda"])
    p.add_argument("--dtype", choices=["auto", "float32", "bfloat16", "float16"],
                   help="auto: float32 on CPU, bfloat16 mixed precision on GPU")
    p.add_argument("--gradient-checkpointing", action="store_true", default=None)
    p.add_argument("--ids", help="file with one row id per line: train only on these rows")
    p.add_argument("--merge", action="store_true",
                   help="after a LoRA run, also write OUT/merged: base + adapter merged into a plain model folder "
                        "that scorers and `thresher eval` load by path (e.g. Cherry's pre-experienced model)")
    p.add_argument("--no-resume", dest="resume", action="store_false",
                   help="refuse an --out that already holds checkpoints (default: continue from the last one)")
    p.add_argument("--format", choices=["auto", "alpaca", "sharegpt", "messages"])
    p.add_argument("--on-invalid", choices=["fail", "skip"])
    p.add_argument("--lenient", action="store_true", default=None)
    p.add_argument("--limit", type=int)
    p.add_argument("--split")


def train_cli(args: argparse.Namespace) -> int:
    """Handler of ``thresher train``; prints a one-line summary, returns the exit status."""
    from thresher.training.sft import train

    overrides = {k: getattr(args, k, None) for k in _CONFIG_FLAGS}
    if overrides["target_modules"] is not None:
        overrides["target_modules"] = [m.strip() for m in overrides["target_modules"].split(",") if m.strip()]
    load_options = {k: getattr(args, a) for k, a in (("fmt", "format"), ("on_invalid", "on_invalid"),
                                                     ("lenient", "lenient"), ("limit", "limit"), ("split", "split"))
                    if getattr(args, a, None) is not None}
    ids = _read_ids(args.ids) if getattr(args, "ids", None) else None
    result = train(args.data, out=args.out, preset=args.preset, cpu_small=args.cpu_small, resume=args.resume,
                   ids=ids, load_options=load_options, argv=list(getattr(args, "argv", None) or sys.argv),
                   **overrides)
    where = result.final_dir or f"{result.out} (stopped at step {result.global_step} of {result.max_steps})"
    loss = f"{result.train_loss:.4f}" if result.train_loss is not None else "n/a"
    print(f"trained {result.n_examples} rows ({result.n_skipped} skipped), step {result.global_step}/"
          f"{result.max_steps}, loss {loss}, {result.samples_per_s:.2f} samples/s -> {where}")
    if getattr(args, "merge", False) and result.final_dir:
        from thresher.training.export import export_merged
        print(f"merged model -> {export_merged(result.out)}")
    return 0


def _read_ids(path: str) -> list[str]:
    p = Path(path)
    if not p.is_file():
        raise ConfigError(f"--ids: {path} is not a file. Give a text file with one row id per line.")
    ids = [line.strip() for line in p.read_text(encoding="utf-8").splitlines() if line.strip()]
    if not ids:
        raise ConfigError(f"--ids: {path} holds no ids.")
    return ids
