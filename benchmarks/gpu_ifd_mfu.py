"""IFD on a 7B-class decoder on one GPU: model FLOP utilisation (MFU) against this device's bfloat16 matmul
peak, and the speed-up over the one-sample loop, all measured in one run (issue 15, part 7).

The model is built from a config with random weights (no download): Llama-2-7B's shapes by default, or
Qwen2.5-7B's (``--arch``), in bfloat16 with SDPA attention. Random weights cost the same FLOPs and kernels as
trained ones, so speeds carry over; IFD values do not. Text is real ShareGPT: the first turn of the first
``--rows`` valid records. Measured:
  1. the bf16 matmul peak: a loop of large square ``torch.matmul`` products (best of before and after);
  2. thresher's IFD (``IFDScorer.score_batch``: length-sorted batches under ``max_batch_tokens``, decoder once
     per batch, output head only on scored tokens) over shards of ``--shard-rows`` rows (64 = the engine's
     default shard) and over all rows in one call: rows/s, tokens/s (real tokens of both passes) and MFU;
  3. the one-sample loop (benchmarks/ifd_throughput.py's ``naive_ifd``: batch size 1, full-vocabulary logits,
     log-softmax in float32, one ``.item()`` per pass) on an evenly spaced subset, and the speed ratio;
  4. unless the run is float32: the same subset through thresher in float32 (the model converted in place),
     and the bfloat16 error of loss_cond / loss_direct / IFD against it.
MFU is printed two ways: the conventional 2 * N * tokens (N = every parameter, embedding and head included)
and "useful" FLOPs (2 x non-embedding linear parameters per token, causal attention, output head on the
scored tokens only: what IFD needs; ~10 % below 2 * N * tokens at 7B, far below it on the tiny model, whose
parameters are mostly embedding and head). Targets: MFU >= 50 %, >= 10x the one-sample loop (tokens/s).

    python benchmarks/gpu_ifd_mfu.py                          # CUDA: llama2-7b, bf16, bundled tokenizer + ShareGPT
    python benchmarks/gpu_ifd_mfu.py --tiny                   # CPU smoke run: 2 layers, hidden 128, float32 (auto
                                                              # when there is no CUDA device)
    python benchmarks/gpu_ifd_mfu.py --tokenizer benchmarks/data/smollm2-tokenizer \\
        --data benchmarks/data/sharegpt_first_turns.jsonl     # without the bundled packages (scripts/gpu_checks.sh)
    python benchmarks/gpu_ifd_mfu.py --export-data benchmarks/data   # how those two were made (bundled packages)

Token ids come from the bundled SmolLM2 tokenizer (49,152 ids). Llama-2's vocabulary is 32,000, so the
config's vocabulary is raised to the tokenizer's (printed; +140M embedding and head parameters) instead of
folding ids; Qwen2.5's 152,064 already holds every id.
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

import numpy as np
import torch

from ifd_throughput import naive_ifd, useful_flops
from thresher.data import load, split_turns
from thresher.data.spans import OK, build_spans
from thresher.data.templates import render
from thresher.models.context import ModelContext
from thresher.models.hf import HFCausalLM
from thresher.scoring import make_scorer

# Shapes of the published configs (non-shape fields left at the library's defaults).
ARCHS = {
    "llama2-7b": ("LlamaConfig", dict(hidden_size=4096, intermediate_size=11008, num_hidden_layers=32,
                                      num_attention_heads=32, num_key_value_heads=32, vocab_size=32000,
                                      max_position_embeddings=4096, rms_norm_eps=1e-5, tie_word_embeddings=False)),
    "qwen2.5-7b": ("Qwen2Config", dict(hidden_size=3584, intermediate_size=18944, num_hidden_layers=28,
                                       num_attention_heads=28, num_key_value_heads=4, vocab_size=152064,
                                       max_position_embeddings=32768, rms_norm_eps=1e-6, tie_word_embeddings=False)),
    "tiny": ("LlamaConfig", dict(hidden_size=128, intermediate_size=344, num_hidden_layers=2, num_attention_heads=4,
                                 num_key_value_heads=4, vocab_size=32000, max_position_embeddings=4096,
                                 tie_word_embeddings=False)),
}
TARGET_MFU, TARGET_RATIO = 0.50, 10.0
DATA_FILE, TOKENIZER_DIR = "sharegpt_first_turns.jsonl", "smollm2-tokenizer"


def _sync(device):
    if torch.device(device).type == "cuda":
        torch.cuda.synchronize()


def matmul_peak(device, dtype, n: int, reps: int) -> float:
    """TFLOP/s of ``reps`` back-to-back n x n x n products on random data, after three warm-ups."""
    a = torch.randn(n, n, device=device, dtype=dtype)
    b = torch.randn(n, n, device=device, dtype=dtype)
    for _ in range(3):
        a @ b
    _sync(device)
    t = time.perf_counter()
    for _ in range(reps):
        a @ b
    _sync(device)
    return 2 * n**3 * reps / (time.perf_counter() - t) / 1e12


def build_model(arch: str, vocab: int, device, dtype):
    """A random-weight decoder with ``arch``'s shapes and a vocabulary of at least ``vocab`` ids, built on
    ``device`` (a 7B model initialised on the GPU takes seconds, on a CPU minutes)."""
    import transformers

    cls, shapes = ARCHS[arch]
    cfg = getattr(transformers, cls)(**{**shapes, "vocab_size": max(shapes["vocab_size"], vocab)})
    torch.manual_seed(0)
    with torch.device(device):
        model = transformers.AutoModelForCausalLM.from_config(cfg, dtype=dtype, attn_implementation="sdpa")
    return model.eval()


def load_tokenizer(spec: str):
    from transformers import AutoTokenizer

    if spec == "bundled":
        from thresher.models import bundled
        spec = str(bundled.converted_model_dir())
    return AutoTokenizer.from_pretrained(spec)


def load_rows(spec: str, n: int):
    from thresher.data import bundled_sharegpt_path

    return load(bundled_sharegpt_path() if spec == "bundled" else spec, limit=n, lenient=True, on_invalid="skip")


def export_data(folder: Path, n: int) -> None:
    """Write the first turns of the first ``n`` valid bundled ShareGPT records (ShareGPT JSONL, text unchanged)
    and the bundled SmolLM2 tokenizer to ``folder``: what this benchmark reads on a machine without the
    bundled packages."""
    folder.mkdir(parents=True, exist_ok=True)
    ds = load_rows("bundled", n)
    role = {"user": "human", "assistant": "gpt", "system": "system"}
    with open(folder / DATA_FILE, "w", encoding="utf-8") as f:
        for rid, msgs in zip(ds.ids, ds.messages):
            context, resp = split_turns(msgs, "first")[0]
            conv = [{"from": role[m["role"]], "value": m["content"]} for m in context] + [{"from": "gpt", "value": resp}]
            f.write(json.dumps({"id": rid, "conversations": conv}, ensure_ascii=False) + "\n")
    load_tokenizer("bundled").save_pretrained(folder / TOKENIZER_DIR)
    print(f"wrote {len(ds)} rows to {folder / DATA_FILE} and the tokenizer to {folder / TOKENIZER_DIR}")


def thresher_ifd(lm, ds, shard_rows: int, max_length: int) -> tuple[dict, float, int]:
    """IFD columns of every row through the scorer, ``shard_rows`` rows per ``score_batch`` call (as the
    engine's shards); returns (columns, seconds, real tokens run through the model in both passes)."""
    scorer = make_scorer("ifd", template="alpaca", turns="first", max_length=max_length)
    scorer.setup(ModelContext.for_model(lm))
    _sync(lm.device)
    t = time.perf_counter()
    parts = [scorer.score_batch(ds.subset(range(a, min(a + shard_rows, len(ds)))))
             for a in range(0, len(ds), shard_rows)]
    _sync(lm.device)
    secs = time.perf_counter() - t
    cols = {k: np.concatenate([p[k] for p in parts]) for k in ("ifd", "loss_cond", "loss_direct")}
    return cols, secs, scorer.tokens_processed


class Flops:
    """FLOPs of one set of IFD sequences (both passes), counted two ways (module docstring)."""

    def __init__(self, model, sp, idx):
        lens = [len(sp.cond_ids[i]) for i in idx] + [len(sp.direct_ids[i]) for i in idx]
        n_targets = sum(e - s for i in idx for s, e in (sp.cond_span[i], sp.direct_span[i]))
        self.rows, self.tokens = idx, int(sum(lens))
        self.n_params = sum(p.numel() for p in model.parameters())
        self.brief = 2.0 * self.n_params * self.tokens
        self.useful = useful_flops(model.config, lens, n_targets)


def report_speed(name: str, rows: int, secs: float, flops: Flops, peak: float) -> float:
    """Print one contender's line (MFU both ways against ``peak`` TFLOP/s); returns rows/s."""
    mfu = {"2*N*tokens": flops.brief / secs / 1e12 / peak, "useful": flops.useful / secs / 1e12 / peak}
    met = " / ".join("met" if v >= TARGET_MFU else "NOT met" for v in mfu.values())
    print(f"{name:36s} {rows / secs:8.2f} rows/s {flops.tokens / secs:10.0f} tokens/s   MFU "
          + "  ".join(f"{100 * v:5.1f} % ({k})" for k, v in mfu.items())
          + f"  [target >= {100 * TARGET_MFU:.0f} %: {met}]", flush=True)
    return rows / secs


def parse_args(argv=None):
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--tiny", action="store_true", help="CPU smoke run: the 'tiny' arch, float32 (default when "
                                                        "no CUDA device is present)")
    ap.add_argument("--arch", choices=sorted(ARCHS), default=None, help="default: llama2-7b (tiny with --tiny)")
    ap.add_argument("--dtype", choices=["bfloat16", "float32", "float16"], default=None,
                    help="default: bfloat16 on CUDA, float32 with --tiny")
    ap.add_argument("--device", default=None, help="default: cuda, or cpu with --tiny")
    ap.add_argument("--rows", type=int, default=None, help="ShareGPT rows (default 400; 80 with --tiny)")
    ap.add_argument("--naive-rows", type=int, default=None, help="rows of the one-sample loop (default 48; 12 tiny)")
    ap.add_argument("--shard-rows", type=int, default=64, help="rows per score_batch call (the engine's shard)")
    ap.add_argument("--max-length", type=int, default=512, help="IFD max_length (tokens per sequence)")
    ap.add_argument("--max-batch-tokens", type=int, default=None, help="default: the library's (32768 on a GPU)")
    ap.add_argument("--max-batch-size", type=int, default=64)
    ap.add_argument("--peak-n", type=int, default=None, help="matmul size for the peak (8192; 1024 tiny)")
    ap.add_argument("--tokenizer", default="bundled", help="'bundled' or a tokenizer folder")
    ap.add_argument("--data", default="bundled", help="'bundled' (ShareGPT V3) or a ShareGPT-format file")
    ap.add_argument("--no-fp32-check", action="store_true", help="skip the float32 comparison (step 4)")
    ap.add_argument("--export-data", metavar="DIR", default=None, help="write the data file and tokenizer, exit")
    args = ap.parse_args(argv)
    args.tiny = args.tiny or (args.device is None and not torch.cuda.is_available())
    tiny = args.tiny
    args.arch = args.arch or ("tiny" if tiny else "llama2-7b")
    args.dtype = args.dtype or ("float32" if tiny else "bfloat16")
    args.device = args.device or ("cpu" if tiny else "cuda")
    args.rows = args.rows or (80 if tiny else 400)
    args.naive_rows = args.naive_rows or (12 if tiny else 48)
    args.peak_n = args.peak_n or (1024 if tiny else 8192)
    return args


def main(argv=None) -> int:
    args = parse_args(argv)
    if args.export_data:
        export_data(Path(args.export_data), 400)
        return 0
    if torch.device(args.device).type == "cuda" and not torch.cuda.is_available():
        print("--device cuda but torch sees no CUDA device; use --tiny for the CPU smoke run", file=sys.stderr)
        return 2
    if torch.device(args.device).type == "cpu" and args.arch != "tiny":
        print(f"--arch {args.arch} on the CPU would need tens of GB and hours (no CUDA device seen); "
              "use --arch tiny (--tiny) there", file=sys.stderr)
        return 2
    device, dtype = torch.device(args.device), getattr(torch, args.dtype)
    name = torch.cuda.get_device_name(device) if device.type == "cuda" else f"CPU, {torch.get_num_threads()} threads"
    print(f"device {name}; torch {torch.__version__}; arch {args.arch}; {args.dtype}; tokenizer {args.tokenizer}; "
          f"data {args.data}", flush=True)
    reps = 20 if device.type == "cuda" else 5
    peak = matmul_peak(device, dtype, args.peak_n, reps)
    print(f"{args.dtype} matmul {args.peak_n}^3: {peak:.4g} TFLOP/s (first measurement)", flush=True)
    lm = make_lm(args, device, dtype)
    ds, sp, ok = prepare_rows(args, lm.tokenizer)
    flops = Flops(lm.model, sp, ok)
    print(f"{len(ds)} ShareGPT first turns, {len(ok)} scorable at max_length {args.max_length}; {flops.tokens} "
          f"tokens in both passes; max_batch_tokens {lm.max_batch_tokens}, max_batch_size {lm.max_batch_size}", flush=True)
    runs, first = thresher_runs(lm, ds, args, flops.tokens)
    sub = ok[np.linspace(0, len(ok) - 1, min(args.naive_rows, len(ok))).round().astype(int)]   # evenly spaced
    naive, t_naive = naive_run(lm, sp, sub)
    peak = max(peak, matmul_peak(device, dtype, args.peak_n, reps))
    print(f"\n{args.dtype} matmul peak (best of before and after): {peak:.4g} TFLOP/s")
    if args.tiny:
        print("tiny run: the figures check the code path, not the hardware (a CPU peak from torch's default "
              "GEMM; the tiny model's N is mostly its embedding and head)")
    report(runs, (Flops(lm.model, sp, sub), t_naive), len(ok), flops, peak)
    ifd = runs[first][0]["ifd"]
    print(f"finite IFD on {np.isfinite(ifd[ok]).sum()} of {len(ok)} scorable rows; max |IFD thresher - one-sample "
          f"loop| on the loop's rows, both {args.dtype}: {np.abs(ifd[sub] - naive).max():.2e}")
    if args.dtype != "float32" and not args.no_fp32_check:
        fp32_check(lm, ds.subset(sub), runs[first][0], sub, args)
    return 0


def make_lm(args, device, dtype) -> HFCausalLM:
    """The random-weight model wrapped as thresher's backend (``HFCausalLM.from_model``: batching as loaded)."""
    tok = load_tokenizer(args.tokenizer)
    t = time.perf_counter()
    model = build_model(args.arch, len(tok), device, dtype)
    _sync(device)
    vocab, base = model.config.vocab_size, ARCHS[args.arch][1]["vocab_size"]
    note = f" (raised from {base} to the tokenizer's)" if vocab != base else ""
    print(f"model {args.arch}: {sum(p.numel() for p in model.parameters()) / 1e9:.2f}B parameters, vocabulary "
          f"{vocab}{note}, attention {model.config._attn_implementation}; random weights built in "
          f"{time.perf_counter() - t:.1f} s", flush=True)
    return HFCausalLM.from_model(model, tok, identity=f"random-{args.arch}-{args.dtype}",
                                 max_batch_tokens=args.max_batch_tokens, max_batch_size=args.max_batch_size)


def prepare_rows(args, tok):
    """The rows, their IFD spans (as the scorer builds them) and the indices of the scorable ones."""
    ds = load_rows(args.data, args.rows)
    units = [render("alpaca", *split_turns(m, "first")[0], meta, tok) for m, meta in zip(ds.messages, ds.meta)]
    sp = build_spans(tok, units, args.max_length, "offsets", "alpaca")
    return ds, sp, np.flatnonzero(np.array([s == OK for s in sp.status], dtype=bool))


def thresher_runs(lm, ds, args, tokens_expected: int) -> tuple[dict, int]:
    """Warm-up, then the scorer over shards of ``--shard-rows`` rows and over all rows in one call:
    {rows per call: (columns, seconds)} and the shard size."""
    thresher_ifd(lm, ds.subset(range(min(16, len(ds)))), args.shard_rows, args.max_length)
    first = min(args.shard_rows, len(ds))
    runs = {}
    for shard in sorted({first, len(ds)}):
        cols, secs, tokens = thresher_ifd(lm, ds, shard, args.max_length)
        if tokens != tokens_expected:
            raise RuntimeError(f"the scorer ran {tokens} tokens, the spans count {tokens_expected}")
        runs[shard] = (cols, secs)
    return runs, first


def naive_run(lm, sp, sub) -> tuple[np.ndarray, float]:
    """The one-sample loop on rows ``sub`` after a two-row warm-up: (IFD per row, seconds)."""
    naive_ifd(lm, sp, sub[:2])
    _sync(lm.device)
    t = time.perf_counter()
    out = naive_ifd(lm, sp, sub)
    _sync(lm.device)
    return out, time.perf_counter() - t


def report(runs: dict, naive: tuple, n_ok: int, flops: Flops, peak: float) -> None:
    """Speed and MFU of each contender, and the speed ratios: of tokens/s (judged against the target: it
    corrects for the loop's rows being a sample of the lengths) and of rows/s (scorable rows)."""
    naive_flops, t_naive = naive
    speeds = {shard: report_speed(f"thresher IFD, {shard} rows per call", n_ok, secs, flops, peak)
              for shard, (_, secs) in runs.items()}
    n_sub = len(naive_flops.rows)
    naive_speed = report_speed(f"one-sample loop ({n_sub} rows)", n_sub, t_naive, naive_flops, peak)
    for shard, speed in speeds.items():
        r = speed / naive_speed
        r_tok = (flops.tokens / runs[shard][1]) / (naive_flops.tokens / t_naive)
        print(f"speed ratio thresher ({shard} rows per call) / one-sample loop: {r_tok:.1f}x tokens/s ({r:.1f}x "
              f"rows/s)  [target >= {TARGET_RATIO:.0f}x: {'met' if r_tok >= TARGET_RATIO else 'NOT met'}]")


def fp32_check(lm, rows, low: dict, sub, args) -> None:
    """The rows through thresher in float32 (the same weights: the model is converted in place, so this runs
    last) and the low-precision run's error against it."""
    lm.model.float()
    lm32 = HFCausalLM.from_model(lm.model, lm.tokenizer, identity=f"random-{args.arch}-float32",
                                 max_batch_tokens=args.max_batch_tokens, max_batch_size=args.max_batch_size)
    ref, secs, _ = thresher_ifd(lm32, rows, args.shard_rows, args.max_length)
    errs = ", ".join(f"{k} max {np.abs(low[k][sub] - ref[k]).max():.4f} median {np.median(np.abs(low[k][sub] - ref[k])):.4f}"
                     for k in ("loss_cond", "loss_direct", "ifd"))
    print(f"{args.dtype} vs float32 on the loop's {len(rows)} rows ({secs:.1f} s in float32): {errs}")


if __name__ == "__main__":
    sys.exit(main())
