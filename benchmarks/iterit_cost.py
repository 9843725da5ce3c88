"""IterIT's re-scoring cost per epoch as a fraction of the epoch's training time, one real run.

An IterIT run (METHODS.md 4) with thresher's training layer: the bundled SmolLM2-135M-Instruct with LoRA,
trained on real ShareGPT first turns (chat template), IterITSampler + IterITCallback with IFDRescorer
(IFD perplexity ratio on the live model), the paper's defaults otherwise: update_ratio 3, score_type BOTH,
diversity decay 0.1, cosine schedule, warmup 0.03.

Measured per epoch e:
  * rescoring s: wall seconds of the scoring round that chose epoch e's rows (epoch 0: the whole pool
    with the base model, before training; e >= 1: the window of floor(update_ratio * k) first positions
    with the model trained for e epochs). From the sampler's log ``iterit/epoch-<e>.json``
    (``rescore_seconds``, ``rescored_count``);
  * ordering s: wall seconds of that round's TF-IDF fit + greedy ordering (``order_seconds``);
  * training s: wall seconds between Trainer's on_epoch_begin and on_epoch_end for epoch e (a callback
    registered before IterITCallback, so its on_epoch_end is taken before the re-scoring that follows).
The reference's cost model (METHODS.md 4.6) counts passes: epoch 0 scores 2N forwards, epoch e >= 1
re-scores 2 * update_ratio * k forwards, training is k forward+backward passes per epoch. The script
prints those predictions next to the measured times, and a token-weighted version of them (the
conditioned pass reads the whole prompt + answer, the unconditioned one the answer alone; training
reads prompt + answer).

    python benchmarks/iterit_cost.py                                  # 200 rows, k >= 8, 3 epochs, CPU
    python benchmarks/iterit_cost.py --n 400 --ratio 0.05 --min-k 16 --threads 2
    python benchmarks/iterit_cost.py --device cuda --dtype bfloat16 --n 2000
"""

from __future__ import annotations

import argparse
import json
import logging
import math
import tempfile
import time
from pathlib import Path

import numpy as np
import torch
from transformers import TrainerCallback

from thresher.data import bundled_sharegpt_path, load, split_turns
from thresher.models import bundled
from thresher.training import IFDRescorer, IterITCallback, IterITSampler, build_examples, train

# Cost of one forward+backward pass in forward passes that the "training is cheap" reading of 4.6 implies
# for full fine-tuning (backward ~ 2 forwards). With LoRA the frozen weights need no weight gradients,
# so the backward is closer to one forward: the script prints the measured equivalent too.
FWD_BWD_IN_FWD = 3.0


class EpochClock(TrainerCallback):
    """Wall-clock span and optimiser steps of each training epoch (on_epoch_begin .. on_epoch_end)."""

    def __init__(self, device: str):
        self.sync = torch.cuda.synchronize if device == "cuda" and torch.cuda.is_available() else (lambda: None)
        self.begin: dict[int, float] = {}
        self.seconds: dict[int, float] = {}
        self.steps: dict[int, int] = {}
        self._step0 = 0

    def on_epoch_begin(self, args, state, control, **kw):
        e = round(state.epoch or 0)
        self.sync()
        self.begin[e], self._step0 = time.perf_counter(), state.global_step

    def on_epoch_end(self, args, state, control, **kw):
        self.sync()
        e = round(state.epoch or 0) - 1                # state.epoch is already e + 1 here
        self.seconds[e] = time.perf_counter() - self.begin[e]
        self.steps[e] = state.global_step - self._step0


def rows(n: int, max_length: int):
    """The first n real ShareGPT rows whose first turn is a single user message and that the training
    layer can train at max_length (its prompt leaves room for answer tokens), so the pool is N = n."""
    from thresher.models.hf import HFCausalLM

    ds = load(bundled_sharegpt_path(), limit=max(400, 8 * n), lenient=True, on_invalid="skip")
    ds = ds.subset([i for i, m in enumerate(ds.messages) if len(split_turns(m, "first")[0][0]) == 1])
    tok = HFCausalLM("bundled").tokenizer_only()
    ok = build_examples(ds, tok, template="chat", max_length=max_length, turns="first").rows
    if len(ok) < n:
        raise SystemExit(f"only {len(ok)} usable ShareGPT rows at max_length {max_length} in the first "
                         f"{max(400, 8 * n)} records; pass a smaller --n or a larger --max-length")
    return ds.subset(ok[:n].tolist())


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--n", type=int, default=200, help="pool size: rows of real ShareGPT data")
    ap.add_argument("--ratio", type=float, default=0.05, help="IterIT's per-epoch budget fraction")
    ap.add_argument("--min-k", type=int, default=8, help="k = max(min_k, floor(ratio * N)) rows per epoch")
    ap.add_argument("--update-ratio", type=float, default=3.0, help="window = floor(update_ratio * k)")
    ap.add_argument("--epochs", type=int, default=3)
    ap.add_argument("--max-length", type=int, default=256)
    ap.add_argument("--batch-size", type=int, default=4)
    ap.add_argument("--lr", type=float, default=2e-4)
    ap.add_argument("--seed", type=int, default=42)
    ap.add_argument("--threads", type=int, default=0, help="torch CPU threads (0: leave torch's default)")
    ap.add_argument("--device", default="cpu", choices=["cpu", "cuda"])
    ap.add_argument("--dtype", default="float32", choices=["float32", "bfloat16"])
    args = ap.parse_args()
    logging.basicConfig(level=logging.WARNING)
    if args.threads:
        torch.set_num_threads(args.threads)
    data = rows(args.n, args.max_length)
    bundled.converted_model_dir()                  # convert once, outside any timing
    import sklearn.feature_extraction.text  # noqa: F401  (the ordering's first call would time the import)
    k = max(args.min_k, math.floor(args.ratio * len(data)))
    clock = EpochClock(args.device)
    with tempfile.TemporaryDirectory() as tmp:
        out = Path(tmp) / "run"
        sampler = IterITSampler(IFDRescorer(), k=k, update_ratio=args.update_ratio, score_type="BOTH",
                                decay=0.1)
        res = train(data, out=out, sampler=sampler, callbacks=[clock, IterITCallback(sampler)],
                    template="chat", turns="first", max_length=args.max_length, batch_size=args.batch_size,
                    grad_accum=1, epochs=args.epochs, lr=args.lr, scheduler="cosine", warmup_ratio=0.03,
                    save_steps=10**9, logging_steps=10**6, seed=args.seed, device=args.device,
                    dtype=args.dtype)
        logs = [json.loads((out / "iterit" / f"epoch-{e}.json").read_text()) for e in range(args.epochs)]
        kept_ids = json.loads((out / "train_ids.json").read_text())["ids"]
    if kept_ids != list(data.ids):
        raise SystemExit("the training layer dropped rows the pre-filter kept; the pool is not N = --n")
    # Token counts by table position (the sampler's positions index the training table = data).
    ex = build_examples(data, res.tokenizer, template="chat", max_length=args.max_length, turns="first")
    whole = np.array([len(x) for x in ex.input_ids])                    # (N,) prompt + answer tokens
    answer = np.array([int((np.asarray(y) != -100).sum()) for y in ex.labels])   # (N,) supervised tokens
    n_pool = len(data)

    print(f"pool: N = {n_pool} ShareGPT first turns (mean {whole.mean():.0f} tokens, mean answer "
          f"{answer.mean():.0f}, max_length {args.max_length}); k = {k} rows/epoch (ratio {args.ratio}, "
          f"min {args.min_k}); "
          f"window floor({args.update_ratio:g} k) = {sampler.window}; {args.epochs} epochs x "
          f"{math.ceil(k / args.batch_size)} steps of batch {args.batch_size}; BOTH, decay 0.1; LoRA r=8; "
          f"device {args.device} {args.dtype}; torch threads {torch.get_num_threads()}")
    head = (f"{'epoch':>5s}{'re-scored':>10s}{'rescore s':>11s}{'order s':>9s}{'train s':>9s}{'steps':>6s}"
            f"{'rescore/train':>14s}{'s/row scored':>13s}{'s/row trained':>14s}")
    print(head)
    print("-" * len(head))
    for e, lg in enumerate(logs):
        t = clock.seconds[e]
        print(f"{e:5d}{lg['rescored_count']:10d}{lg['rescore_seconds']:11.2f}{lg['order_seconds']:9.3f}{t:9.2f}"
              f"{clock.steps[e]:6d}{lg['rescore_seconds'] / t:14.3f}"
              f"{lg['rescore_seconds'] / max(lg['rescored_count'], 1):13.3f}{t / k:14.3f}")
    later = logs[1:]
    train_mean = float(np.mean([clock.seconds[e] for e in range(args.epochs)]))
    print(f"epoch 0 full-pool scoring ({logs[0]['rescored_count']} rows): {logs[0]['rescore_seconds']:.2f} s "
          f"= {logs[0]['rescore_seconds'] / clock.seconds[0]:.2f} x epoch 0's training, "
          f"{logs[0]['rescore_seconds'] / train_mean:.2f} x the mean training epoch ({train_mean:.2f} s)")
    if later:
        r = sum(lg["rescore_seconds"] + lg["order_seconds"] for lg in later)
        tr = sum(clock.seconds[e] for e in range(1, args.epochs))
        print(f"epochs 1..{args.epochs - 1}: re-scoring + ordering {r:.2f} s over training {tr:.2f} s = {r / tr:.3f}")
    total_sel = sum(lg["rescore_seconds"] + lg["order_seconds"] for lg in logs)
    total_train = sum(clock.seconds.values())
    print(f"whole run: selection {total_sel:.2f} s, training {total_train:.2f} s "
          f"(selection = {total_sel / (total_sel + total_train):.1%} of the two)")

    # The reference's pass-counting model (METHODS.md 4.6) against the measurement.
    print("\ncost model (METHODS.md 4.6) vs measured:")
    u = args.update_ratio
    t_fwd_bwd = train_mean / k                      # s per trained row (fwd + bwd)
    for e, lg in enumerate(logs):
        fwd_pred = 2 * n_pool if e == 0 else 2 * min(n_pool, math.floor(u * k))
        fwd_done = 2 * lg["rescored_count"]
        pass_ratio = fwd_pred / (k * FWD_BWD_IN_FWD)
        # token-weighted: the scored rows' conditioned (whole) + unconditioned (answer) tokens against the
        # tokens the epoch trains (whole rows, forward + backward).
        rs = np.asarray(lg["rescored"], dtype=np.int64)
        sel = np.asarray(lg["selected"], dtype=np.int64)
        tok_ratio = (whole[rs].sum() + answer[rs].sum()) / (FWD_BWD_IN_FWD * whole[sel].sum())
        measured = lg["rescore_seconds"] / clock.seconds[e]
        fwd_equiv = t_fwd_bwd / (lg["rescore_seconds"] / max(fwd_done, 1))
        print(f"  epoch {e}: forwards predicted {fwd_pred} (2*{'N' if e == 0 else 'update_ratio*k'}), run "
              f"{fwd_done}; rescore/train predicted {pass_ratio:.2f} (passes, fwd+bwd = "
              f"{FWD_BWD_IN_FWD:g} fwd), {tok_ratio:.2f} (tokens); measured {measured:.2f}; one trained "
              f"row cost {fwd_equiv:.2f} scoring forwards")
    print(f"  epoch e >= 1 in general: 2*update_ratio*k / (k * {FWD_BWD_IN_FWD:g}) = 2*{u:g}/{FWD_BWD_IN_FWD:g} "
          f"= {2 * u / FWD_BWD_IN_FWD:.2f}, independent of k and N; epoch 0: 2N / ({FWD_BWD_IN_FWD:g} k) = "
          f"{2 / (FWD_BWD_IN_FWD * args.ratio):.1f} at ratio {args.ratio}")


if __name__ == "__main__":
    main()
