"""Merging several clients' LoRA runs into one adapter: CLUES' collaborative step and one FedAvg round.

CLUES (METHODS.md 1.2 step 5) trains one LoRA adapter per client on its selected data, then loads all of
them into one PEFT model and combines them with ``add_weighted_adapter(..., combination_type="ties",
density=0.2)``, weights 1.0 each. ``merge_runs`` does the same combination directly on the adapters'
safetensors (no base model is loaded unless ``export_full``), checked for parity with PEFT 0.21 in
tests/test_merge.py, and writes a PEFT adapter folder that ``PeftModel.from_pretrained(base, OUT)`` loads.

The methods (ties, linear, cat, fedavg: what each computes, its default weights and the adapter it
writes) are registered in ``thresher.training.merge_methods.MERGE_METHODS``.

rsLoRA runs are merged with their true scaling alpha / sqrt(r) and written with use_rslora off (PEFT 0.21
keeps use_rslora on the merged adapter, which then scales by sqrt(r) instead of 1: peft issue #3761);
DoRA, lora_bias and per-module rank/alpha patterns are refused.

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

from thresher.config import did_you_mean
from thresher.errors import ConfigError
from thresher.models.runs import ADAPTER_CONFIG, ADAPTER_WEIGHTS, FINAL, TrainingRunFolder
from thresher.outputs import atomic_dir, claim_output_dir
from thresher.training.export import fold_adapter
from thresher.training.merge_methods import MERGE_METHODS

log = logging.getLogger(__name__)


@dataclass
class _Run:
    path: Path
    final: Path               # the run's final/: its adapter and tokenizer
    base: str                 # the run's model spec (TrainConfig.model): "bundled", a path or a hub id
    lora: dict                # final/adapter_config.json
    rows: int | None          # rows trained on (train_ids.json), None when the file is absent

    @property
    def scaling(self) -> float:
        r, alpha = self.lora["r"], self.lora["lora_alpha"]
        return alpha / math.sqrt(r) if self.lora.get("use_rslora") else alpha / r


# ----------------------------------------------------------------------------------- public API
def merge_runs(run_dirs, out, *, method: str = "ties", density: float = 0.2, weights=None,
               export_full: bool = False, argv: list[str] | None = None) -> Path:
    """Merge the final LoRA adapters of ``run_dirs`` (``thresher train`` run directories) into ``out``.

    ``method``: "ties" (default, CLUES), "linear", "cat" or "fedavg" (see thresher.training.merge_methods).
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
    uses_density = MERGE_METHODS.get(method).uses_density
    record = {"method": method, "density": density if uses_density else None, "weights": w,
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

    ``scalings``: each client's lora_alpha / r (default 1.0); folded in by the methods with ``folds_scaling``
    (ties, linear, cat), unused by fedavg (whose clients share one scaling). Returns a new state dict in the
    first client's dtype.
    """
    _check_params(method, density)
    combine = MERGE_METHODS.get(method).combine
    scalings = [1.0] * len(states) if scalings is None else list(scalings)
    merged = {}
    for a_key, b_key in _factor_pairs(states[0]):
        a = [s[a_key].float() for s in states]                  # n x (r_i, in)
        b = [s[b_key].float() for s in states]                  # n x (out, r_i)
        new_a, new_b = combine(a, b, weights, scalings, density)
        merged[a_key], merged[b_key] = _cast(new_a, states[0][a_key]), _cast(new_b, states[0][b_key])
    return merged


def _cast(x, like):
    return x.to(like.dtype).contiguous()


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
    if method not in MERGE_METHODS:
        names = MERGE_METHODS.names()
        raise ConfigError(f"The 'method' parameter of merge_runs must be one of {', '.join(names)}. "
                          f"Got {method!r}.{did_you_mean(method, names)}")
    if isinstance(density, bool) or not isinstance(density, numbers.Real) or not 0.0 < density <= 1.0:
        raise ConfigError(f"The 'density' parameter of merge_runs must be a float in (0, 1]. Got {density!r}.")


def _read_run(run_dir) -> _Run:
    run = TrainingRunFolder(run_dir)
    cfg = run.config                          # a folder without config.json: "is not a thresher training run"
    if not run.is_lora:
        if run.is_full or not cfg.get("lora", True):
            raise ConfigError(f"Run {run.path} is a full fine-tune; only LoRA runs can be merged.")
        raise ConfigError(f"Run {run.path} has no finished adapter ({FINAL}/{ADAPTER_CONFIG} is missing): it "
                          "stopped before its last step. Resume it with `thresher train` and the same arguments, "
                          "or leave it out.")
    return _Run(run.path, run.final_dir, run.base_model, run.adapter_config, run.rows)


def _check_out(out, runs: list[_Run]) -> Path:
    out = Path(out)
    target = out.resolve()
    for r in runs:
        run = r.path.resolve()
        if run == target or run.is_relative_to(target) or target.is_relative_to(run / FINAL):
            raise ConfigError(f"The output directory {out} would overwrite run {r.path}. Choose a directory "
                              "outside the runs being merged.")
    claim_output_dir(out, "merge")            # before the work: a user's folder is refused, never replaced
    return out


def _check_compatible(runs: list[_Run], method: str) -> None:
    m, first = MERGE_METHODS.get(method), runs[0]
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
        if m.same_rank and r.lora["r"] != first.lora["r"]:
            raise ConfigError(f"{where}: LoRA r {r.lora['r']} vs {first.lora['r']}. Method {method!r} needs one "
                              f"rank for all runs; methods that accept different ranks: {_any_rank()}.")
        if not m.folds_scaling and r.scaling != first.scaling:
            raise ConfigError(f"{where}: LoRA scaling (lora_alpha {r.lora['lora_alpha']}, r {r.lora['r']}) vs "
                              f"(lora_alpha {first.lora['lora_alpha']}, r {first.lora['r']}). Method {method!r} "
                              "combines the raw A and B, so every run needs the same lora_alpha and r.")


def _any_rank() -> str:
    """The methods that merge runs of different ranks, for an error message."""
    names = [n for n in MERGE_METHODS.names() if not MERGE_METHODS.get(n).same_rank]
    return ", ".join(map(repr, names)) or "none"


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
    """One weight per run: the given ones, or the method's default; normalised to sum 1 where the method says."""
    m, n = MERGE_METHODS.get(method), len(runs)
    weights = list(m.default_weights(runs) if weights is None else weights)
    if len(weights) != n:
        raise ConfigError(f"The 'weights' parameter of merge_runs must hold one weight per run ({n} runs). "
                          f"Got {len(weights)} weights.")
    if not _finite_numbers(weights):
        raise ConfigError(f"The 'weights' parameter of merge_runs must hold finite numbers. Got {weights!r}.")
    if m.normalises_weights:
        if any(w < 0 for w in weights) or sum(weights) <= 0:
            raise ConfigError(f"The 'weights' parameter of merge_runs must be >= 0 with a positive sum for "
                              f"method {method!r}. Got {weights!r}.")
        return [float(w) / sum(weights) for w in weights]
    return [float(w) for w in weights]


# ----------------------------------------------------------------------------------- writing
def _merged_config(runs: list[_Run], method: str, merged: dict) -> dict:
    config = dict(runs[0].lora)
    if MERGE_METHODS.get(method).folds_scaling:
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
            fold_adapter(runs[0].base, tmp, tmp / "merged")
        (tmp / "merge.json").write_text(json.dumps(record, indent=2) + "\n", encoding="utf-8")


# ----------------------------------------------------------------------------------- CLI
def add_merge_arguments(p: argparse.ArgumentParser) -> None:
    """Flags of ``thresher merge`` (wire with ``p.set_defaults(func=merge_cli)``)."""
    p.add_argument("runs", nargs="+", metavar="RUN", help="run directories of `thresher train` (LoRA, finished)")
    p.add_argument("--out", required=True, help="output folder: merged PEFT adapter, tokenizer, merge.json")
    p.add_argument("--method", choices=MERGE_METHODS.names(), default="ties",
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
