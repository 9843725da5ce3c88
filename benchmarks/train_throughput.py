"""SFT throughput: thresher's training layer (TRL SFTTrainer + PEFT) versus a minimal PyTorch loop, one run.

Both train the same bundled model with the same LoRA config (same seed, so the same initial adapter), on
the same tokenised examples (thresher's templates and prompt masks) in the same batches and order, with
AdamW, a linear schedule, gradient clipping at 1.0, the same batch size and max_length. The plain loop is
what a user would write by hand: right padding, ``model(input_ids, attention_mask, labels).loss`` (full
logits at every position), backward, step. Timed: the training loop only (model loading excluded); the
layer saves no checkpoint here. The plain loop runs before and after the layer and its two rates are
averaged, so drift in a shared machine's load affects both sides alike.

    python benchmarks/train_throughput.py                      # 64 ShareGPT pairs, 12 steps, CPU
    python benchmarks/train_throughput.py --steps 24 --batch-size 8 --max-length 512 --threads 2
    python benchmarks/train_throughput.py --device cuda --dtype bfloat16
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

from thresher.data import bundled_sharegpt_path, load, split_turns
from thresher.models import bundled
from thresher.training import build_examples, train


def pairs(n: int):
    """n real ShareGPT rows whose first turn is a single user message (first turn trained)."""
    ds = load(bundled_sharegpt_path(), limit=max(400, 8 * n), lenient=True, on_invalid="skip")
    keep = [i for i, m in enumerate(ds.messages) if len(split_turns(m, "first")[0][0]) == 1]
    return ds.subset(keep[:n])


def plain_loop(order_ids, ids_of_row, ex, args, device) -> tuple[float, int, int, float]:
    """Returns (seconds, samples, real tokens, first loss) of a hand-written LoRA training loop."""
    from peft import LoraConfig, get_peft_model
    from transformers import AutoModelForCausalLM, get_linear_schedule_with_warmup, set_seed

    set_seed(args.seed)                           # same seed as the layer: same initial adapter
    dtype = getattr(torch, args.dtype) if args.dtype != "auto" else torch.float32
    model = AutoModelForCausalLM.from_pretrained(str(bundled.converted_model_dir()), dtype=dtype).to(device)
    model = get_peft_model(model, LoraConfig(r=8, lora_alpha=16, lora_dropout=0.05,
                                             target_modules=["q_proj", "v_proj"], task_type="CAUSAL_LM"))
    model.train()
    params = [p for p in model.parameters() if p.requires_grad]
    opt = torch.optim.AdamW(params, lr=args.lr, weight_decay=0.0, fused=True)
    sched = get_linear_schedule_with_warmup(opt, math.ceil(0.03 * args.steps), args.steps)
    pos = {r: i for i, r in enumerate(ids_of_row)}
    seq = [pos[r] for r in order_ids]
    pad = 0
    samples = tokens = 0
    first = None
    t = time.perf_counter()
    for s in range(args.steps):
        batch = [seq[(s * args.batch_size + j) % len(seq)] for j in range(args.batch_size)]
        width = max(len(ex.input_ids[i]) for i in batch)
        ids = torch.full((len(batch), width), pad, dtype=torch.long)      # (B, L) right padded
        lab = torch.full((len(batch), width), -100, dtype=torch.long)
        att = torch.zeros((len(batch), width), dtype=torch.long)
        for r, i in enumerate(batch):
            n = len(ex.input_ids[i])
            ids[r, :n], lab[r, :n], att[r, :n] = torch.from_numpy(ex.input_ids[i]), torch.from_numpy(ex.labels[i]), 1
        with torch.autocast(device.type, dtype=torch.bfloat16, enabled=args.dtype == "bfloat16"):
            loss = model(input_ids=ids.to(device), attention_mask=att.to(device), labels=lab.to(device)).loss
        loss.backward()
        torch.nn.utils.clip_grad_norm_(params, 1.0)
        opt.step()
        sched.step()
        opt.zero_grad(set_to_none=True)
        first = float(loss.detach()) if first is None else first
        samples += len(batch)
        tokens += int(att.sum())
    if device.type == "cuda":
        torch.cuda.synchronize()
    return time.perf_counter() - t, samples, tokens, first


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--n", type=int, default=64, help="rows of real ShareGPT data")
    ap.add_argument("--steps", type=int, default=12, help="optimiser steps (one batch each)")
    ap.add_argument("--batch-size", type=int, default=4)
    ap.add_argument("--max-length", type=int, default=256)
    ap.add_argument("--lr", type=float, default=2e-4)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--threads", type=int, default=0, help="torch CPU threads (0: leave torch's default)")
    ap.add_argument("--device", default="cpu", choices=["cpu", "cuda"])
    ap.add_argument("--dtype", default="float32", choices=["float32", "bfloat16"])
    args = ap.parse_args()
    logging.basicConfig(level=logging.WARNING)
    if args.threads:
        torch.set_num_threads(args.threads)
    device = torch.device(args.device)
    data = pairs(args.n)
    bundled.converted_model_dir()                 # convert once, outside any timing

    def plain(order, ids_of_row, ex):
        return plain_loop(order, ids_of_row, ex, args, device)

    with tempfile.TemporaryDirectory() as tmp:
        res = train(data, out=Path(tmp) / "run", turns="first", max_length=args.max_length,
                    batch_size=args.batch_size, grad_accum=1, max_steps=args.steps, save_steps=10**9,
                    lr=args.lr, lora_r=8, lora_alpha=16, lora_dropout=0.05, target_modules=["q_proj", "v_proj"],
                    logging_steps=10**6, seed=args.seed, device=args.device, dtype=args.dtype)
        ids_of_row = json.loads((res.out / "train_ids.json").read_text())["ids"]
        order = []
        for e in range(math.ceil(args.steps * args.batch_size / len(ids_of_row)) + 1):
            f = res.out / "epochs" / f"epoch-{e}.json"
            if f.exists():
                order += json.loads(f.read_text())["ids"]
        ex = build_examples(data.subset([data.ids.index(r) for r in ids_of_row]), res.tokenizer,
                            max_length=args.max_length, turns="first")
        lengths = np.array([len(x) for x in ex.input_ids])
        # The layer's real tokens: the same batches as the plain loop (its order, args.steps batches).
        pos = {r: i for i, r in enumerate(ids_of_row)}
        seq = [pos[r] for r in order][: args.steps * args.batch_size]
        layer_tokens = int(lengths[seq].sum())
        layer_s = res.runtime_s
        p1 = plain(order, ids_of_row, ex)
        p2 = plain(order, ids_of_row, ex)
    plain_s = (p1[0] + p2[0]) / 2
    n_samples = args.steps * args.batch_size
    print(f"data: {len(ids_of_row)} ShareGPT first turns, mean {lengths.mean():.0f} tokens "
          f"(max_length {args.max_length}); {args.steps} steps x batch {args.batch_size}; device {args.device} "
          f"{args.dtype}; torch threads {torch.get_num_threads()}")
    print(f"{'':18s}{'seconds':>10s}{'samples/s':>12s}{'tokens/s':>12s}")
    print(f"{'thresher (TRL)':18s}{layer_s:10.2f}{n_samples / layer_s:12.3f}{layer_tokens / layer_s:12.1f}")
    for name, p in (("plain loop, 1st", p1), ("plain loop, 2nd", p2)):
        print(f"{name:18s}{p[0]:10.2f}{p[1] / p[0]:12.3f}{p[2] / p[0]:12.1f}")
    print(f"ratio thresher / plain (samples/s): {plain_s / layer_s:.2f}  (>1 = the layer is faster)")
    first_layer = next(e["loss"] for e in res.log_history if "loss" in e)
    print(f"first-step loss: thresher {first_layer:.4f}, plain {p1[3]:.4f} (same batch, same initial adapter)")


if __name__ == "__main__":
    main()
