"""Per-sample gradient feature throughput: thresher's batched path versus the reference one-sample loop.

Both paths produce the same features for the same samples: LoRA gradient of the mean response NLL
(alpaca template, offsets spans), Adam-preconditioned with the warm-up optimizer's moments (LESS formula),
projected to d dimensions with the same seeded Rademacher projector.
  reference  one sample at a time (as LESS/CLUES collect_grad_reps): full-logit forward, loss.backward(),
             flatten the selected .grad tensors, precondition, project (R regenerated per call, as TRAK's
             BasicProjector does when R does not fit in memory)
  batched    thresher.gradients.gradient_features: length-sorted batches, one batched forward/backward with
             per-sample gradients from LoRA-layer hooks, output head on response tokens only, one
             projection per batch
The gradient step alone (no projection) is timed for both as well, so the two sources of the speed-up
are visible. Store bytes per sample are measured on disk at d = proj_dim.

    python benchmarks/grad_throughput.py                       # 32 ShareGPT pairs, reference on 8
    python benchmarks/grad_throughput.py --n 16 --n-ref 4 --notation q
"""

from __future__ import annotations

import argparse
import os
import tempfile
import time

import numpy as np
import torch

from thresher.data import bundled_sharegpt_path, load, split_turns
from thresher.data.templates import render
from thresher.gradients import (GradientStore, RademacherProjector, adam_precondition, flat_moments,
                                gradient_features, make_batch, select_parameters, write_store)
from thresher.models.checkpoints import trainer_param_order
from thresher.models.bundled import converted_model_dir
from thresher.data.spans import OK, build_spans


def load_units(n: int, max_chars: int):
    ds = load(bundled_sharegpt_path(), limit=3000, lenient=True, on_invalid="skip")
    units = []
    for msgs in ds.messages:
        context, resp = split_turns(msgs, "first")[0]
        if len(context) == 1 and 20 <= len(context[0]["content"]) <= max_chars and 40 <= len(resp) <= max_chars:
            q = context[0]["content"]
            units.append(render("alpaca", context, resp, {"instruction": q, "input": ""}))
        if len(units) == n:
            return units
    raise SystemExit(f"only {len(units)} pairs under {max_chars} characters")


def warm_model(units, tok, steps: int, lr: float):
    from peft import LoraConfig, get_peft_model
    from transformers import AutoModelForCausalLM

    torch.manual_seed(0)
    model = get_peft_model(AutoModelForCausalLM.from_pretrained(converted_model_dir(), dtype=torch.float32),
                           LoraConfig(r=8, lora_alpha=16, target_modules=["q_proj", "v_proj"], lora_dropout=0.0))
    params = dict(model.named_parameters())
    opt = torch.optim.AdamW([params[n] for n in trainer_param_order(model)], lr=lr)
    sp = build_spans(tok, units, 256)
    for step in range(steps):
        idx = [(4 * step + k) % len(units) for k in range(4)]
        b = make_batch([sp.cond_ids[i] for i in idx], [sp.cond_span[i] for i in idx], tok.pad_token_id or 0)
        logits = model(input_ids=b.input_ids, attention_mask=b.attention_mask).logits
        loss = torch.nn.functional.cross_entropy(logits[b.row, b.pos], b.target)
        opt.zero_grad()
        loss.backward()
        opt.step()
    model.eval()
    return model, opt


def reference_loop(model, sel, sp, idx, moments, projector):
    """One sample per forward/backward, full logits, .grad flattening: the reference approach."""
    params = dict(model.named_parameters())
    chosen = [params[n] for n in sel.names]
    out = []
    for i in idx:
        ids = torch.as_tensor(sp.cond_ids[i]).unsqueeze(0)
        s, e = sp.cond_span[i]
        model.zero_grad(set_to_none=True)
        logits = model(input_ids=ids).logits[0]
        torch.nn.functional.cross_entropy(logits[s - 1: e - 1], ids[0, s:e]).backward()
        g = torch.cat([p.grad.reshape(-1) for p in chosen]).unsqueeze(0)      # (1, P)
        if moments is not None:
            g = adam_precondition(g, *moments)
        if projector is not None:
            g = projector.project(g)
        out.append(g[0].detach().numpy())
    model.zero_grad(set_to_none=True)
    return np.stack(out)


def timed(f):
    t = time.perf_counter()
    r = f()
    return r, time.perf_counter() - t


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--n", type=int, default=32, help="samples for the batched path")
    ap.add_argument("--n-ref", type=int, default=8, help="samples for the reference loop (first n-ref)")
    ap.add_argument("--batch-size", type=int, default=4, help="samples per forward/backward")
    ap.add_argument("--project-batch", type=int, default=64, help="samples per projection")
    ap.add_argument("--proj-dim", type=int, default=8192)
    ap.add_argument("--notation", default="all")
    ap.add_argument("--max-chars", type=int, default=600)
    ap.add_argument("--warmup-steps", type=int, default=4)
    a = ap.parse_args()
    from transformers import AutoTokenizer

    torch.set_num_threads(os.cpu_count() or 1)
    tok = AutoTokenizer.from_pretrained(converted_model_dir())
    units = load_units(a.n, a.max_chars)
    model, opt = warm_model(units, tok, a.warmup_steps, 1e-3)
    sel = select_parameters(model, a.notation)
    params = dict(model.named_parameters())
    moments = flat_moments({n: (opt.state[params[n]]["exp_avg"], opt.state[params[n]]["exp_avg_sq"])
                            for n in sel.names}, sel)
    proj = RademacherProjector(sel.dim, a.proj_dim, seed=0)
    sp = build_spans(tok, units, 512)
    assert all(s == OK for s in sp.status)
    lens = [len(x) for x in sp.cond_ids]
    print(f"model bundled SmolLM2-135M + LoRA r=8 q,v; notation {a.notation!r}: P = {sel.dim:,} values; "
          f"d = {a.proj_dim}; {a.n} ShareGPT pairs, mean {np.mean(lens):.0f} tokens; threads {torch.get_num_threads()}")
    # Reference samples spread evenly over the length distribution, so both rates see similar lengths.
    ref_idx = [int(i) for i in np.argsort(lens)[np.linspace(0, a.n - 1, a.n_ref).round().astype(int)]]
    print(f"reference loop on {a.n_ref} samples, mean {np.mean([lens[i] for i in ref_idx]):.0f} tokens; "
          f"batched path on all {a.n}: forward/backward batch {a.batch_size}, projection batch {a.project_batch}")
    kw = dict(max_length=512, batch_size=a.batch_size, project_batch=a.project_batch, moments=moments)
    rows = []
    for label, p in (("grad+precond only", None), ("grad+precond+project", proj)):
        ref, t_ref = timed(lambda: reference_loop(model, sel, sp, ref_idx, moments, p))
        bat, t_bat = timed(lambda: gradient_features(model, tok, units, sel, projector=p, **kw))
        err = np.linalg.norm(bat[ref_idx] - ref) / np.linalg.norm(ref)
        r_ref, r_bat = a.n_ref / t_ref, a.n / t_bat
        rows.append((label, r_ref, r_bat, err))
        print(f"{label:22s} reference {r_ref:7.3f} samples/s   batched {r_bat:7.3f} samples/s   "
              f"speed-up {r_bat / r_ref:5.2f}x   rel. feature difference {err:.1e}", flush=True)
    with tempfile.TemporaryDirectory() as d:
        for dtype in ("float32", "float16"):
            path = write_store(os.path.join(d, dtype), [f"s{i}" for i in range(a.n)], lambda r: bat[r],
                               a.proj_dim, shard_size=a.n, dtype=dtype, meta={"seed": 0})
            size = sum(f.stat().st_size for f in path.iterdir())
            st = GradientStore(path)
            gib = st.bytes_per_sample * 1e5 / 2**30
            print(f"store {dtype}: {size / a.n:,.0f} bytes/sample on disk incl. manifest "
                  f"({st.bytes_per_sample:,.0f} feature bytes); 100k samples = {gib:.2f} GiB")


if __name__ == "__main__":
    main()
