"""Merging several clients' LoRA runs into one adapter: CLUES' collaborative step and one FedAvg round.

CLUES (METHODS.md 1.2 step 5) trains one LoRA adapter per client on its selected data, then loads all of
them into one PEFT model and combines them with ``add_weighted_adapter(..., combination_type="ties",
density=0.2)``, weights 1.0 each. ``merge_runs`` does the same combination directly on the adapters'
safetensors (no base model is loaded unless ``export_full``), checked for parity with PEFT 0.21 in
tests/test_merge.py, and writes a PEFT adapter folder that ``PeftModel.from_pretrained(base, OUT)`` loads.

Notation: client i has LoRA factors A_i (r, in) and B_i (out, r) in every adapted module, scaling
s_i = lora_alpha / r (alpha / sqrt(r) with rsLoRA), so its weight update is dW_i = s_i B_i A_i, and
w_i is its merge weight. What each method computes, per adapted module:

  ties    PEFT's "ties" on LoRA: it acts on A and on B SEPARATELY, never on the product dW. The factor
          c_i = sqrt(|w_i s_i|) is applied to both (the sign of w_i s_i only on A). For X = A, then B:
            trim:  keep the k = int(density * X.numel()) largest |X_i| entries of each client, zero the rest;
            elect: sign = +1 where sum_i trim(X_i) >= 0, else -1 (mass of the trimmed, UNweighted entries);
            merge: X = sum_i [sign(trim(X_i)) == sign] c_i trim(X_i) / max(1, number of agreeing clients)
          (a disjoint MEAN: dividing by the count of agreeing clients, not by the sum of weights). The new
          adapter has rank r and lora_alpha = r (scaling 1: s_i lives in c_i), so its update is B A, which
          carries cross terms B_i A_j: it is not a TIES merge of the dW_i. Default: density 0.2 and
          w_i = 1.0 for every client, as in CLUES' merging_eval_med.py.
  linear  PEFT's "linear" on LoRA: A = sum_i c_i A_i, B = sum_i c_i B_i, rank r, lora_alpha = r. With
          weights summing to 1 and identical clients this returns that client; in general B A =
          sum_ij c_i c_j B_i A_j (cross terms again). Default weights 1/n (PEFT has no default; 1.0 each
          would scale n identical clients' update by n^2).
  cat     PEFT's "cat": A = concat_i(w_i s_i A_i) along the rank, B = concat_i(B_i), rank sum_i r_i,
          lora_alpha = that rank. Exact: B A = sum_i w_i dW_i (no cross terms), at n times the rank. Default
          weights 1/n (the mean update).
  fedavg  One FedAvg server round as in FedIT (Zhang et al., 2024, federated instruction tuning):
          A = sum_i p_i A_i and B = sum_i p_i B_i with p_i = n_i / sum_j n_j, n_i = the client's number of
          training rows (RUN/train_ids.json), or the given weights normalised to sum 1. A and B are averaged
          SEPARATELY, so the update s B A is not the row-weighted mean of the dW_i (that would need "cat").
          Rank and lora_alpha stay those of the clients (they must all be equal), so the result can be sent
          back to the clients as the next round's starting adapter.

rsLoRA runs are merged with their true scaling alpha / sqrt(r) and written with use_rslora off (PEFT 0.21
keeps use_rslora on the merged adapter, which then scales by sqrt(r) instead of 1: peft issue #3761);
DoRA, lora_bias and per-module rank/alpha patterns are refused.

Not offered: PEFT's "svd"/"ties_svd"/"dare_*_svd" (they build every module's full (out, in) dW_i via
get_delta_weight, combine them with the plain sum / TIES / DARE, and re-factorise with a truncated SVD to
rank r), and "dare_*" (random pruning, not reproducible without a seed PEFT does not take).

Output folder ``out`` (written atomically: a temp folder next to it, then one rename):
  adapter_config.json, adapter_model.safetensors   the merged adapter, PEFT format
  tokenizer files                                 copied from the first run's final/
  merge.json                                      method, density, weights, runs with row counts, base model
  merged/                                         (export_full) base + merged adapter folded in, a plain
                                                  model folder for `thresher score --model` / `thresher eval`
"""

from __future__ import annotations

import argparse
import json
import logging
import math
import numbers
import sys
from dataclasses import dataclass
from pathlib import Path

from thresher.outputs import atomic_dir, claim_output_dir
from thresher.errors import ConfigError

log = logging.getLogger(__name__)

METHODS = ("ties", "linear", "cat", "fedavg")
ADAPTER_WEIGHTS = "adapter_model.safetensors"
ADAPTER_CONFIG = "adapter_config.json"


@dataclass
class _Run:
    path: Path
    base: str                 # the run's model spec (TrainConfig.model): "bundled", a path or a hub id
    lora: dict                # final/adapter_config.json
    rows: int | None          # rows trained on (train_ids.json), None when the file is absent

    @property
    def final(self) -> Path:
        return self.path / "final"

    @property
    def scaling(self) -> float:
        r, alpha = self.lora["r"], self.lora["lora_alpha"]
        return alpha / math.sqrt(r) if self.lora.get("use_rslora") else alpha / r


# ----------------------------------------------------------------------------------- public API
def merge_runs(run_dirs, out, *, method: str = "ties", density: float = 0.2, weights=None,
               export_full: bool = False, argv: list[str] | None = None) -> Path:
    """Merge the final LoRA adapters of ``run_dirs`` (``thresher train`` run directories) into ``out``.

    ``method``: "ties" (default, CLUES), "linear", "cat" or "fedavg" (see the module docstring).
    ``density``: fraction of each client's A/B entries TIES keeps, in (0, 1] (ties only).
    ``weights``: one per run; default 1.0 each (ties), 1/n (linear, cat), training-row counts (fedavg;
    fedavg normalises given weights too). ``export_full`` also writes ``out/merged``. Returns ``out``.
    """
    from safetensors.torch import load_file

    _check_params(method, density)
    runs = [_read_run(d) for d in run_dirs]
    if len(runs) < 2:
        raise ConfigError(f"merge_runs needs at least 2 run directories. Got {len(runs)}.")
    _check_compatible(runs, method)
    w = _resolve_weights(weights, runs, method)
    out = _check_out(out, runs)               # after the checks of the runs: a refused merge creates no folder
    states = [load_file(str(r.final / ADAPTER_WEIGHTS)) for r in runs]
    _check_keys(runs, states)
    merged = merge_states(states, w, method=method, density=density, scalings=[r.scaling for r in runs])
    config = _merged_config(runs, method, merged)
    record = {"method": method, "density": density if method == "ties" else None, "weights": w,
              "runs": [{"run": str(r.path.resolve()), "rows": r.rows, "lora_r": r.lora["r"],
                        "lora_alpha": r.lora["lora_alpha"]} for r in runs],
              "base_model": runs[0].base, "adapter": {"r": config["r"], "lora_alpha": config["lora_alpha"]},
              "merged_model": "merged" if export_full else None, "argv": list(argv) if argv is not None else None}
    _write(out, merged, config, record, runs, export_full)
    log.info("merged %d runs with %s into %s", len(runs), method, out)
    return out


def merge_states(states: list, weights: list[float], *, method: str = "ties", density: float = 0.2,
                 scalings: list[float] | None = None) -> dict:
    """Combine LoRA adapter state dicts (PEFT key -> tensor, as in adapter_model.safetensors).

    ``scalings``: each client's lora_alpha / r (default 1.0); folded in by ties, linear and cat, unused by
    fedavg (whose clients share one scaling). Returns a new state dict in the first client's dtype.
    """
    import torch

    _check_params(method, density)
    scalings = [1.0] * len(states) if scalings is None else list(scalings)
    ws = torch.tensor([w * s for w, s in zip(weights, scalings)], dtype=torch.float64)
    root = ws.abs().sqrt()                              # (n,) sqrt(|w_i s_i|) on both factors ...
    coef_a = (root * torch.where(ws >= 0, 1.0, -1.0)).float()   # ... and the sign on A only, as PEFT
    coef_b = root.float()
    p = torch.tensor(weights, dtype=torch.float64)
    p = (p / p.sum()).float() if method == "fedavg" else p.float()
    lin = ws.float()
    merged = {}
    for a_key, b_key in _factor_pairs(states[0]):
        if method == "cat":                                      # exact sum of w_i dW_i at rank sum_i r_i
            new_a = torch.cat([lin[i] * s[a_key].float() for i, s in enumerate(states)], dim=0)   # (sum r, in)
            new_b = torch.cat([s[b_key].float() for s in states], dim=1)                         # (out, sum r)
            merged[a_key], merged[b_key] = _cast(new_a, states[0][a_key]), _cast(new_b, states[0][b_key])
            continue
        a = torch.stack([s[a_key].float() for s in states])      # (n, r, in)
        b = torch.stack([s[b_key].float() for s in states])      # (n, out, r)
        if method == "ties":
            new_a, new_b = _ties(a, coef_a, density), _ties(b, coef_b, density)
        elif method == "linear":
            new_a, new_b = _weighted_sum(a, coef_a), _weighted_sum(b, coef_b)
        else:                                                    # fedavg
            new_a, new_b = _weighted_sum(a, p), _weighted_sum(b, p)
        merged[a_key], merged[b_key] = _cast(new_a, states[0][a_key]), _cast(new_b, states[0][b_key])
    return merged


def _cast(x, like):
    return x.to(like.dtype).contiguous()


# ----------------------------------------------------------------------------------- the arithmetic
def _weighted_sum(x, coef):
    # x: (n, *shape), coef: (n,) -> (*shape)
    return (coef.view(-1, *([1] * (x.dim() - 1))) * x).sum(0)


def _ties(x, coef, density: float):
    """TIES on one LoRA factor of n clients, x: (n, rows, cols), coef: (n,) -> (rows, cols)."""
    import torch

    n = x.shape[0]
    flat = x.reshape(n, -1)                                      # (n, numel)
    k = int(density * flat.shape[1])                             # PEFT's count: int(density * numel)
    keep = torch.zeros_like(flat, dtype=torch.bool)
    if k > 0:
        keep.scatter_(1, flat.abs().topk(k, dim=1).indices, True)
    trimmed = torch.where(keep, flat, torch.zeros_like(flat))
    sign = torch.where(trimmed.sum(0) >= 0, 1.0, -1.0)           # (numel,) elected on unweighted mass
    agree = trimmed.sign() == sign                               # (n, numel); trimmed zeros never agree
    total = (trimmed * coef[:, None] * agree).sum(0)
    return (total / agree.sum(0).clamp(min=1)).reshape(x.shape[1:])


def _factor_pairs(state: dict) -> list[tuple[str, str]]:
    """(lora_A key, lora_B key) of every adapted module, in key order."""
    pairs = []
    for key in sorted(state):
        if key.endswith(".lora_A.weight"):
            pairs.append((key, key[: -len("lora_A.weight")] + "lora_B.weight"))
    return pairs


# ----------------------------------------------------------------------------------- checks
def check_merge_options(method: str, density: float, weights=None) -> None:
    """Validate merge options before anything is trained (recipes' ``collaborate.merge``)."""
    _check_params(method, density)
    if weights is not None and (not isinstance(weights, (list, tuple)) or not _finite_numbers(weights)):
        raise ConfigError(f"The 'weights' parameter of merge_runs must be a list of finite numbers, one per "
                          f"client. Got {weights!r}.")


def _finite_numbers(values) -> bool:
    return all(isinstance(v, numbers.Real) and not isinstance(v, bool) and math.isfinite(v) for v in values)


def _check_params(method: str, density: float) -> None:
    if method not in METHODS:
        from thresher.config import did_you_mean
        raise ConfigError(f"The 'method' parameter of merge_runs must be one of {', '.join(METHODS)}. "
                          f"Got {method!r}.{did_you_mean(method, METHODS)}")
    if isinstance(density, bool) or not isinstance(density, numbers.Real) or not 0.0 < density <= 1.0:
        raise ConfigError(f"The 'density' parameter of merge_runs must be a float in (0, 1]. Got {density!r}.")


def _read_run(run_dir) -> _Run:
    path = Path(run_dir)
    if not (path / "config.json").is_file():
        raise ConfigError(f"{path} is not a thresher training run (no config.json). Pass the --out directories "
                          "of `thresher train` runs.")
    cfg = json.loads((path / "config.json").read_text(encoding="utf-8"))["config"]
    final = path / "final"
    if not (final / ADAPTER_CONFIG).is_file():
        if (final / "config.json").is_file() or not cfg.get("lora", True):
            raise ConfigError(f"Run {path} is a full fine-tune; only LoRA runs can be merged.")
        raise ConfigError(f"Run {path} has no finished adapter (final/{ADAPTER_CONFIG} is missing): it stopped "
                          "before its last step. Resume it with `thresher train` and the same arguments, or "
                          "leave it out.")
    lora = json.loads((final / ADAPTER_CONFIG).read_text(encoding="utf-8"))
    ids_file = path / "train_ids.json"
    rows = len(json.loads(ids_file.read_text(encoding="utf-8"))["ids"]) if ids_file.is_file() else None
    return _Run(path, cfg["model"], lora, rows)


def _check_out(out, runs: list[_Run]) -> Path:
    out = Path(out)
    target = out.resolve()
    for r in runs:
        run = r.path.resolve()
        if run == target or run.is_relative_to(target) or target.is_relative_to(run / "final"):
            raise ConfigError(f"The output directory {out} would overwrite run {r.path}. Choose a directory "
                              "outside the runs being merged.")
    claim_output_dir(out, "merge")            # before the work: a user's folder is refused, never replaced
    return out


def _check_compatible(runs: list[_Run], method: str) -> None:
    first = runs[0]
    for r in runs:
        if r.lora.get("use_dora"):
            raise ConfigError(f"Run {r.path} uses use_dora; only plain LoRA adapters can be merged.")
        if r.lora.get("rank_pattern") or r.lora.get("alpha_pattern"):
            raise ConfigError(f"Run {r.path} has a per-module rank_pattern/alpha_pattern; only adapters with one "
                              "rank and alpha can be merged.")
    for r in runs[1:]:
        where = f"Run {r.path} does not match run {first.path}"
        if r.base != first.base:
            raise ConfigError(f"{where}: base model {r.base!r} vs {first.base!r}. Merge only runs of the same "
                              "base model.")
        if _modules(r.lora) != _modules(first.lora):
            raise ConfigError(f"{where}: target_modules {_modules(r.lora)} vs {_modules(first.lora)}. Merge only "
                              "runs that adapt the same modules.")
        if method != "cat" and r.lora["r"] != first.lora["r"]:
            raise ConfigError(f"{where}: LoRA r {r.lora['r']} vs {first.lora['r']}. Method {method!r} needs one "
                              "rank for all runs (method 'cat' accepts different ranks).")
        if method == "fedavg" and r.scaling != first.scaling:
            raise ConfigError(f"{where}: LoRA scaling (lora_alpha {r.lora['lora_alpha']}, r {r.lora['r']}) vs "
                              f"(lora_alpha {first.lora['lora_alpha']}, r {first.lora['r']}). FedAvg averages the "
                              "raw A and B, so every run needs the same lora_alpha and r.")


def _modules(lora: dict):
    tm = lora.get("target_modules")
    return sorted(tm) if isinstance(tm, (list, tuple, set)) else tm


def _check_keys(runs: list[_Run], states: list[dict]) -> None:
    first = set(states[0])
    odd = sorted(k for k in first if not k.endswith((".lora_A.weight", ".lora_B.weight")))
    if odd:
        raise ConfigError(f"Run {runs[0].path} has adapter tensors other than LoRA A/B matrices (e.g. {odd[0]!r}); "
                          "these cannot be merged.")
    for r, s in zip(runs[1:], states[1:]):
        if set(s) != first:
            diff = sorted(first ^ set(s))
            raise ConfigError(f"Run {r.path} adapts different layers than run {runs[0].path} (e.g. {diff[0]!r}). "
                              "Merge only runs trained with the same LoRA layout.")


def _resolve_weights(weights, runs: list[_Run], method: str) -> list[float]:
    n = len(runs)
    if weights is None:
        if method == "ties":
            return [1.0] * n                                     # CLUES: weights all 1.0
        if method != "fedavg":
            return [1.0 / n] * n
        missing = [str(r.path) for r in runs if not r.rows]
        if missing:
            raise ConfigError(f"fedavg weighs runs by their training rows, but {missing[0]} has no train_ids.json "
                              "(or no rows in it). Pass weights explicitly.")
        weights = [r.rows for r in runs]
    weights = list(weights)
    if len(weights) != n:
        raise ConfigError(f"The 'weights' parameter of merge_runs must hold one weight per run ({n} runs). "
                          f"Got {len(weights)} weights.")
    if not _finite_numbers(weights):
        raise ConfigError(f"The 'weights' parameter of merge_runs must hold finite numbers. Got {weights!r}.")
    if method == "fedavg":
        if any(w < 0 for w in weights) or sum(weights) <= 0:
            raise ConfigError(f"The 'weights' parameter of merge_runs must be >= 0 with a positive sum for "
                              f"method 'fedavg'. Got {weights!r}.")
        return [float(w) / sum(weights) for w in weights]
    return [float(w) for w in weights]


# ----------------------------------------------------------------------------------- writing
def _merged_config(runs: list[_Run], method: str, merged: dict) -> dict:
    config = dict(runs[0].lora)
    if method != "fedavg":
        # Scaling 1: each client's s_i is folded into the merged factors (as PEFT's add_weighted_adapter).
        a_key = _factor_pairs(merged)[0][0]
        rank = int(merged[a_key].shape[0])
        config.update(r=rank, lora_alpha=rank, use_rslora=False, rank_pattern={}, alpha_pattern={})
    return config


def _write(out: Path, merged: dict, config: dict, record: dict, runs: list[_Run], export_full: bool) -> None:
    from safetensors.torch import save_file
    from transformers import AutoTokenizer

    with atomic_dir(out, "merge") as tmp:     # a half-written merge is never left in place
        save_file(merged, str(tmp / ADAPTER_WEIGHTS), metadata={"format": "pt"})
        (tmp / ADAPTER_CONFIG).write_text(json.dumps(config, indent=2) + "\n", encoding="utf-8")
        tokenizer = AutoTokenizer.from_pretrained(str(runs[0].final))
        tokenizer.save_pretrained(tmp)
        if export_full:
            from thresher.training.export import fold_adapter
            fold_adapter(runs[0].base, tmp, tmp / "merged")
        (tmp / "merge.json").write_text(json.dumps(record, indent=2) + "\n", encoding="utf-8")


# ----------------------------------------------------------------------------------- CLI
def add_merge_arguments(p: argparse.ArgumentParser) -> None:
    """Flags of ``thresher merge`` (wire with ``p.set_defaults(func=merge_cli)``)."""
    p.add_argument("runs", nargs="+", metavar="RUN", help="run directories of `thresher train` (LoRA, finished)")
    p.add_argument("--out", required=True, help="output folder: merged PEFT adapter, tokenizer, merge.json")
    p.add_argument("--method", choices=METHODS, default="ties",
                   help="ties (CLUES default), linear, cat, or fedavg (row-weighted mean of A and B)")
    p.add_argument("--density", type=float, default=0.2,
                   help="fraction of each client's LoRA entries TIES keeps, in (0, 1] (ties only; default 0.2)")
    p.add_argument("--weights", help="comma-separated weights, one per RUN (default: 1.0 each for ties, "
                                     "1/n for linear and cat, training-row counts for fedavg)")
    p.add_argument("--full", action="store_true",
                   help="also write OUT/merged: the base model with the merged adapter folded in, a plain model "
                        "folder that `thresher score --model` and `thresher eval` load")


def merge_cli(args: argparse.Namespace) -> int:
    """Handler of ``thresher merge``; prints a short summary, returns the exit status."""
    weights = _parse_weights(args.weights) if getattr(args, "weights", None) else None
    out = merge_runs(args.runs, args.out, method=args.method, density=args.density, weights=weights,
                     export_full=args.full, argv=list(getattr(args, "argv", None) or sys.argv))
    record = json.loads((out / "merge.json").read_text(encoding="utf-8"))
    rows = ", ".join(str(r["rows"]) for r in record["runs"])
    dens = f", density {record['density']:g}" if record["density"] is not None else ""
    print(f"merged {len(record['runs'])} runs ({args.method}{dens}, weights "
          f"{', '.join(f'{w:.4g}' for w in record['weights'])}; training rows {rows}) -> {out} "
          f"(rank {record['adapter']['r']})")
    if record["merged_model"]:
        print(f"merged model -> {out / record['merged_model']}")
    return 0


def _parse_weights(text: str) -> list[float]:
    parts = [t.strip() for t in text.split(",") if t.strip()]
    try:
        return [float(t) for t in parts]
    except ValueError:
        raise ConfigError(f"--weights must be comma-separated numbers, one per run, e.g. 1,0.5. "
                          f"Got {text!r}.") from None
