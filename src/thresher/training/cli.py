"""``thresher train``: the flags and the handler, for thresher.cli to wire in.

    from thresher.training.cli import add_train_arguments, train_cli
    p = sub.add_parser("train", help="fine-tune a model on a (selected) dataset")
    add_train_arguments(p)            # the run's flags and one flag per TrainConfig field
    p.set_defaults(func=train_cli)    # thresher.cli adds the data-loading flags and passes load_options

Flags left out fall back to the preset, then to TrainConfig's defaults.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

from thresher.config import add_flags, given
from thresher.errors import ConfigError
from thresher.training.config import PRESETS, TrainConfig
from thresher.training.export import export_merged
from thresher.training.sft import train


def add_train_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("data", help="dataset to train on (.json/.jsonl/.parquet, HF dataset dir, hub name), "
                                "e.g. the file `thresher select` wrote")
    p.add_argument("--out", required=True, help="run directory (checkpoints, final/, config, ids)")
    p.add_argument("--preset", choices=sorted(PRESETS), help="a paper's hyper-parameters (flags override them)")
    p.add_argument("--cpu-small", action="store_true",
                   help="shrink to CPU scale: max_length 256, batch 4, no accumulation")
    p.add_argument("--ids", help="file with one row id per line: train only on these rows")
    p.add_argument("--merge", action="store_true",
                   help="after a LoRA run, also write OUT/merged: base + adapter merged into a plain model folder "
                        "that scorers and `thresher eval` load by path (e.g. Cherry's pre-experienced model)")
    p.add_argument("--no-resume", dest="resume", action="store_false",
                   help="refuse an --out that already holds checkpoints (default: continue from the last one)")
    add_flags(p.add_argument_group("training configuration (TrainConfig; default: the preset's, else these)"),
              TrainConfig)


def train_cli(args: argparse.Namespace, load_options: dict | None = None) -> int:
    """Handler of ``thresher train``; prints a one-line summary, returns the exit status.
    ``load_options``: ``thresher.data.load`` keywords for reading ``args.data``."""

    ids = _read_ids(args.ids) if getattr(args, "ids", None) else None
    result = train(args.data, out=args.out, preset=args.preset, cpu_small=args.cpu_small, resume=args.resume,
                   ids=ids, load_options=load_options, argv=list(getattr(args, "argv", None) or sys.argv),
                   **given(args, TrainConfig))
    where = result.final_dir or f"{result.out} (stopped at step {result.global_step} of {result.max_steps})"
    loss = f"{result.train_loss:.4f}" if result.train_loss is not None else "n/a"
    print(f"trained {result.n_examples} rows ({result.n_skipped} skipped), step {result.global_step}/"
          f"{result.max_steps}, loss {loss}, {result.samples_per_s:.2f} samples/s -> {where}")
    if getattr(args, "merge", False) and result.final_dir:
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
