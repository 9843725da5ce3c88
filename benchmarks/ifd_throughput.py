"""IFD throughput: thresher's batched scorer versus the reference approach, measured in one run.

The baseline is the reference implementations' approach (Cherry, Superfiltering): one sample per
forward pass, full-vocabulary logits at every position, then the response losses. Both compute the
same quantity on the same sequences (same response spans), so the max IFD difference is printed too.
Achieved GFLOP/s counts the model's useful forward FLOPs (decoder on every real token, output head on
scored tokens only, attention) and is set against the fp32 matrix-multiply peak measured in this run.

    python benchmarks/ifd_throughput.py                   # 256 ShareGPT pairs, CPU float32 + bfloat16
    python benchmarks/ifd_throughput.py --n 64 --skip-bf16
    python benchmarks/ifd_throughput.py --device cuda     # GPU: bfloat16 thresher vs naive loop

On a GPU machine without the bundled packages (the figure in the README came from one): copy config.json
and the tokenizer files of the converted bundled model (under $THRESHER_CACHE/models/) to DIR and a
ShareGPT-format slice to FILE, then
    python benchmarks/ifd_throughput.py --device cuda --random-init DIR --data FILE --n 600
Random weights of the same architecture cost the same FLOPs and kernels, so the speeds carry over; the
IFD values do not (the thresher/naive difference is still checked).
"""

from __future__ import annotations

import argparse
import sys
import tempfile
import time

import numpy as np
import torch

from thresher.data import bundled_sharegpt_path, load, split_turns
from thresher.data.templates import render
from thresher.engine.scoring import score_dataset
from thresher.data.spans import OK, build_spans
from thresher.scoring import make_scorer
from thresher.models.context import ModelContext


def matmul_peak(device, dtype, n=2048, reps=10) -> dict:
    """GFLOP/s of an n x n product by kernel: torch's default ("torch": MKL on a CPU) and, on a CPU, oneDNN
    with the weight packed ("onednn", thresher's CPU path; much faster on AMD Zen 4, where MKL takes a
    generic code path). The machine's peak is the best of them."""
    from thresher.models import cpu_gemm

    a = torch.randn(n, n, device=device, dtype=dtype)
    b = torch.randn(n, n, device=device, dtype=dtype)
    runs = {"torch": lambda: a @ b}
    if torch.device(device).type == "cpu" and cpu_gemm.available(torch):
        packed = torch.ops.mkldnn._reorder_linear_weight(b, None)
        runs["onednn"] = lambda: cpu_gemm.linear(a, packed)
    out = {}
    for name, f in runs.items():
        for _ in range(2):
            f()
        best = float("inf")
        for _ in range(reps):
            _sync(device)
            t = time.perf_counter()
            f()
            _sync(device)
            best = min(best, time.perf_counter() - t)
        out[name] = 2 * n**3 / best / 1e9
    return out


def _best(*peaks: dict) -> dict:
    return {k: max(p.get(k, 0.0) for p in peaks) for k in peaks[0]}


def _peak_text(p: dict) -> str:
    return ", ".join(f"{k} {v:.0f}" for k, v in p.items())


def _sync(device):
    if torch.device(device).type == "cuda":
        torch.cuda.synchronize()


def useful_flops(cfg, seq_lens, n_targets) -> float:
    """Forward FLOPs: 2 x (non-embedding linear params) per token, causal attention, head on targets."""
    d, L, ff, v = cfg.hidden_size, cfg.num_hidden_layers, cfg.intermediate_size, cfg.vocab_size
    kv = d * cfg.num_key_value_heads // cfg.num_attention_heads
    per_tok_linear = L * (2 * d * d + 2 * d * kv + 3 * d * ff)
    lens = np.asarray(seq_lens, dtype=np.float64)
    attn = L * 2 * d * (lens * (lens + 1)).sum()          # QK^T and AV over the causal half, x2 FLOPs/MAC
    return 2 * per_tok_linear * lens.sum() + attn + 2 * d * v * n_targets


def naive_ifd(lm, sp, idx) -> np.ndarray:
    """Reference approach: batch size 1, full logits, log-softmax over the vocabulary, torch's default
    kernels (``lm`` is loaded with cpu_gemm="torch")."""
    out = []
    with torch.inference_mode():
        for i in idx:
            means = []
            for ids, (s, e) in ((sp.cond_ids[i], sp.cond_span[i]), (sp.direct_ids[i], sp.direct_span[i])):
                x = torch.from_numpy(ids).unsqueeze(0).to(lm.device)
                logp = torch.log_softmax(lm.model(x).logits[0].float(), dim=-1)
                tgt = x[0, s:e]
                means.append(-logp[s - 1:e - 1].gather(1, tgt[:, None]).mean().item())
            out.append(means[0] / means[1])
    return np.array(out)


def _random_model(folder: str) -> str:
    from transformers import AutoConfig, AutoModelForCausalLM, AutoTokenizer

    torch.manual_seed(0)
    model = AutoModelForCausalLM.from_config(AutoConfig.from_pretrained(folder))
    out = tempfile.mkdtemp(prefix="random-model-")
    model.save_pretrained(out)
    AutoTokenizer.from_pretrained(folder).save_pretrained(out)
    return out


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--n", type=int, default=256)
    ap.add_argument("--max-length", type=int, default=512)
    ap.add_argument("--device", default="cpu")
    ap.add_argument("--model", default="bundled")
    ap.add_argument("--max-batch-tokens", type=int, default=None)
    ap.add_argument("--max-batch-size", type=int, default=64)
    ap.add_argument("--skip-bf16", action="store_true")
    ap.add_argument("--reps", type=int, default=3,
                    help="alternate thresher and naive this many times; report median times and the median of "
                         "the per-rep ratios (a shared machine's load drifts between sequential timings)")
    ap.add_argument("--data", default=None, help="ShareGPT-format file (default: the bundled ShareGPT)")
    ap.add_argument("--random-init", metavar="DIR", default=None,
                    help="a folder with config.json + tokenizer: benchmark a random-weight model of that "
                         "architecture (speed only; for machines without the bundled model package)")
    args = ap.parse_args()
    if args.random_init:
        args.model = _random_model(args.random_init)

    ds = load(args.data or bundled_sharegpt_path(), limit=args.n, lenient=True, on_invalid="skip")
    dtype = "float32" if args.device == "cpu" else "bfloat16"
    ctx = ModelContext(args.model, device=args.device, dtype=dtype, max_batch_tokens=args.max_batch_tokens,
                       max_batch_size=args.max_batch_size)
    lm = ctx.lm().setup()
    ref_lm = lm
    if lm.cpu_gemm == "onednn":               # the reference runs the stock model: torch's default GEMMs
        from thresher.models.hf import HFCausalLM
        ref_lm = HFCausalLM(args.model, device=args.device, dtype=dtype, cpu_gemm="torch").setup()
    units = [render("alpaca", *split_turns(m, "first")[0], meta, lm.tokenizer) for m, meta in zip(ds.messages, ds.meta)]
    sp = build_spans(lm.tokenizer, units, args.max_length, "offsets", "alpaca")
    ok = [i for i, s in enumerate(sp.status) if s == OK]
    lens = [len(sp.cond_ids[i]) for i in ok] + [len(sp.direct_ids[i]) for i in ok]
    n_tgt = sum(e - s for i in ok for s, e in (sp.cond_span[i], sp.direct_span[i]))
    flops = useful_flops(lm.model.config, lens, n_tgt)
    print(f"device {args.device}, model {args.model}, {len(ds)} ShareGPT first-turn pairs, {len(ok)} scorable at "
          f"max_length {args.max_length}, {sum(lens)} tokens (both passes), torch threads {torch.get_num_threads()}, "
          f"thresher CPU GEMMs: {lm.cpu_gemm or 'n/a'}")

    peaks32 = matmul_peak(lm.device, torch.float32)
    peaks16 = matmul_peak(lm.device, torch.bfloat16)
    print(f"matmul GFLOP/s by kernel: float32 {_peak_text(peaks32)}; bfloat16 {_peak_text(peaks16)}")

    def thresher_run(c):
        with tempfile.TemporaryDirectory() as tmp:
            _sync(lm.device)
            t = time.perf_counter()
            s = score_dataset(ds, make_scorer("ifd", template="alpaca", turns="first", max_length=args.max_length),
                              c, shard_size=len(ds), cache_root=tmp)
            _sync(lm.device)
            return s["ifd"].to_numpy(), time.perf_counter() - t

    # Warm-up (kernel selection, allocator) outside the timings, for both contenders.
    with tempfile.TemporaryDirectory() as tmp:
        score_dataset(ds.subset(range(8)), make_scorer("ifd", template="alpaca", turns="first"), ctx, cache_root=tmp)
    naive_ifd(ref_lm, sp, ok[:2])
    thr_times, ref_times = [], []
    for _ in range(max(1, args.reps)):              # A B A B ...: both see the same drift in load
        ifd, t_thr = thresher_run(ctx)
        _sync(lm.device)
        t = time.perf_counter()
        ref = naive_ifd(ref_lm, sp, ok)
        _sync(lm.device)
        thr_times.append(t_thr), ref_times.append(time.perf_counter() - t)
    ratios = np.array(ref_times) / np.array(thr_times)
    t_thr, t_ref = float(np.median(thr_times)), float(np.median(ref_times))
    peaks32 = _best(peaks32, matmul_peak(lm.device, torch.float32))    # the best of before and after
    diff = np.nanmax(np.abs(ifd[ok] - ref))
    peaks = peaks32 if dtype == "float32" else peaks16
    peak = max(peaks.values())
    print(f"{dtype} matmul peak {peak:.0f} GFLOP/s (best of before and after, by kernel: {_peak_text(peaks)})")
    print(f"median of {len(ratios)} reps:")
    for name, secs in (("thresher", t_thr), ("naive loop", t_ref)):
        gf = flops / secs / 1e9
        by_kernel = ", ".join(f"{100 * gf / v:.0f}% of {k}'s" for k, v in peaks.items())
        print(f"{name:11s} {dtype}: {len(ok) / secs:6.2f} samples/s  {sum(lens) / secs:7.0f} tokens/s  "
              f"{gf:7.1f} useful GFLOP/s = {100 * gf / peak:.0f}% of the peak ({by_kernel})")
    print(f"speed ratio thresher / naive: median of {len(ratios)} alternating reps {np.median(ratios):.2f}x "
          f"(reps: {', '.join(f'{r:.2f}' for r in ratios)})   max |IFD difference|: {diff:.2e}")

    if not args.skip_bf16 and dtype == "float32":
        from scipy.stats import spearmanr
        ctx16 = ModelContext(args.model, device=args.device, dtype="bfloat16", max_batch_tokens=args.max_batch_tokens)
        ifd16, t16 = thresher_run(ctx16)
        m = np.isfinite(ifd) & np.isfinite(ifd16)
        rho = spearmanr(ifd[m], ifd16[m]).statistic
        print(f"thresher bfloat16: {len(ok) / t16:.2f} samples/s = {t_thr / t16:.2f}x float32; Spearman vs float32 "
              f"{rho:.4f}; max |IFD difference| {np.abs(ifd[m] - ifd16[m]).max():.3f} "
              f"({100 * flops / t16 / 1e9 / max(peaks16.values()):.0f}% of the bfloat16 peak)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
