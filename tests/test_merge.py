"""Merging clients' LoRA runs (CLUES step 5, one FedAvg round) on three tiny real runs of the bundled model:
fedavg == a hand-weighted mean of A and B, ties/linear/cat == PEFT add_weighted_adapter, ties == a naive
per-element TIES on one layer; the written adapter and the exported model load and change the logits;
every error names the run and the mismatch."""

from __future__ import annotations

import argparse
import json
import math
import re
import shutil

import pytest
import torch
from safetensors.torch import load_file

from thresher.errors import ConfigError
from thresher.training import train
from thresher.training.merge import add_merge_arguments, merge_cli, merge_runs

# transformers 5.x deprecation notice raised from inside PEFT's loader
pytestmark = pytest.mark.filterwarnings("ignore:.*deprecated and will be removed in v6:FutureWarning")

ROWS = (3, 1, 2)                       # training rows of the three clients
R, ALPHA = 4, 8                        # LoRA scaling s = 2, so the sqrt(w * s) factors are not all 1
# Two optimiser steps of one short sequence each, constant lr: enough to move B away from its zero init.
KW = dict(max_length=96, turns="first", batch_size=1, grad_accum=1, max_steps=2, save_steps=2, lr=5e-3,
          scheduler="constant", warmup_ratio=0.0, lora_r=R, lora_alpha=ALPHA, lora_dropout=0.0,
          logging_steps=1, device="cpu", dtype="float32")
A_KEY = "base_model.model.model.layers.0.self_attn.q_proj.lora_A.weight"
PROMPT = "Below is an instruction.\n\n### Instruction:\nName three rivers in Europe.\n\n### Response:\n"


@pytest.fixture(scope="module")
def runs(sharegpt_short, tmp_path_factory, one_thread):
    """Three finished LoRA runs on disjoint rows with different seeds (3, 1 and 2 rows)."""
    short = [i for i, m in enumerate(sharegpt_short.messages) if len(m[0]["content"]) <= 150]
    root = tmp_path_factory.mktemp("clients")
    dirs, start = [], 0
    for i, n in enumerate(ROWS):
        res = train(sharegpt_short.subset(short[start:start + n]), out=root / f"client{i}", seed=i, **KW)
        assert res.final_dir is not None and res.n_examples == n
        dirs.append(res.out)
        start += n
    return dirs


@pytest.fixture(scope="module")
def states(runs):
    return [load_file(str(r / "final" / "adapter_model.safetensors")) for r in runs]


@pytest.fixture(scope="module")
def base_dir():
    from thresher.models import bundled
    return bundled.converted_model_dir()


@pytest.fixture(scope="module")
def multi(runs, base_dir, one_thread):
    """One PEFT model with all three clients' adapters loaded (c0, c1, c2), as CLUES' merging script does."""
    from peft import PeftModel
    from transformers import AutoModelForCausalLM

    base = AutoModelForCausalLM.from_pretrained(str(base_dir), dtype="float32")
    model = PeftModel.from_pretrained(base, str(runs[0] / "final"), adapter_name="c0")
    for i, r in enumerate(runs[1:], 1):
        model.load_adapter(str(r / "final"), adapter_name=f"c{i}")
    return model.eval()


@pytest.fixture(scope="module")
def ties_out(runs, tmp_path_factory, one_thread):
    return merge_runs(runs, tmp_path_factory.mktemp("merge") / "ties", export_full=True)


@pytest.fixture(scope="module")
def ids(runs):
    from transformers import AutoTokenizer
    return AutoTokenizer.from_pretrained(str(runs[0] / "final"))(PROMPT, return_tensors="pt")["input_ids"]


def _adapter(out):
    return load_file(str(out / "adapter_model.safetensors")), json.loads((out / "adapter_config.json").read_text())


# ------------------------------------------------------------------ fedavg
def test_fedavg_is_the_row_weighted_mean_of_A_and_B(runs, states, tmp_path):
    out = merge_runs(runs[:2], tmp_path / "fed", method="fedavg")
    got, cfg = _adapter(out)
    rec = json.loads((out / "merge.json").read_text())
    assert [r["rows"] for r in rec["runs"]] == [3, 1] and rec["weights"] == [0.75, 0.25]
    assert (cfg["r"], cfg["lora_alpha"]) == (R, ALPHA)            # the clients' scaling is kept
    assert set(got) == set(states[0]) and len(got) == 2 * 2 * 30  # q_proj, v_proj x A, B x 30 layers
    for key in states[0]:
        naive = (3 * states[0][key] + 1 * states[1][key]) / 4
        assert (got[key] - naive).abs().max() <= 1e-6

    # Planted: client 1 claims 9 training rows -> weights 0.25 / 0.75, a different adapter.
    planted = _copy(runs[1], tmp_path / "client1-9rows")
    ids_file = planted / "train_ids.json"
    rec_ids = json.loads(ids_file.read_text())
    rec_ids["ids"] = [f"row{i}" for i in range(9)]
    ids_file.write_text(json.dumps(rec_ids))
    got9, _ = _adapter(merge_runs([runs[0], planted], tmp_path / "fed9", method="fedavg"))
    for key in states[0]:
        assert (got9[key] - (3 * states[0][key] + 9 * states[1][key]) / 12).abs().max() <= 1e-6
    b_key = A_KEY.replace("lora_A", "lora_B")
    assert (got9[b_key] - got[b_key]).abs().max() > 1e-3


# ------------------------------------------------------------------ parity with PEFT add_weighted_adapter
@pytest.mark.parametrize("method,density,weights", [
    ("ties", 0.2, None),                  # CLUES: density 0.2, weights 1.0 each
    ("ties", 0.5, [1.0, 0.5, 2.0]),
    ("linear", 0.2, [0.5, 0.3, 0.2]),
    ("cat", 0.2, [0.5, 0.3, 0.2]),
])
def test_matches_peft_add_weighted_adapter(runs, multi, tmp_path, method, density, weights):
    from peft import get_peft_model_state_dict

    out = merge_runs(runs, tmp_path / method, method=method, density=density, weights=weights)
    got, cfg = _adapter(out)
    name = f"{method}_{int(density * 10)}_{'w' if weights else 'ones'}"
    multi.add_weighted_adapter(["c0", "c1", "c2"], weights or [1.0, 1.0, 1.0], adapter_name=name,
                               combination_type=method, density=density)
    ref = get_peft_model_state_dict(multi, adapter_name=name)
    assert set(got) == set(ref)
    for key in ref:
        assert got[key].shape == ref[key].shape
        assert (got[key] - ref[key]).abs().max() <= 1e-6, key
    assert (cfg["r"], cfg["lora_alpha"]) == (multi.peft_config[name].r, multi.peft_config[name].lora_alpha)


def test_cat_is_the_exact_weighted_sum_of_updates(runs, states, tmp_path):
    w = [0.5, 0.3, 0.2]
    got, cfg = _adapter(merge_runs(runs, tmp_path / "cat", method="cat", weights=w))
    assert cfg["r"] == cfg["lora_alpha"] == 3 * R
    b_key = A_KEY.replace("lora_A", "lora_B")
    naive = sum(wi * (ALPHA / R) * s[b_key] @ s[A_KEY] for wi, s in zip(w, states))   # (576, 576)
    assert (got[b_key] @ got[A_KEY] - naive).abs().max() <= 1e-6


def _naive_ties(mats, weights, density, scaling, signed):
    """TIES on one LoRA factor, one element at a time: trim each client to its top int(density * numel)
    magnitudes, elect the sign of the summed trimmed values, average the agreeing weighted values."""
    flat = [m.flatten().tolist() for m in mats]
    numel = len(flat[0])
    k = int(density * numel)
    trimmed = []
    for f in flat:
        keep = set(sorted(range(numel), key=lambda j: -abs(f[j]))[:k])
        trimmed.append([f[j] if j in keep else 0.0 for j in range(numel)])
    coefs = [math.sqrt(abs(w * scaling)) * (math.copysign(1, w) if signed else 1) for w in weights]
    out = []
    for j in range(numel):
        elected = 1 if sum(t[j] for t in trimmed) >= 0 else -1
        vals = [c * t[j] for c, t in zip(coefs, trimmed) if t[j] != 0 and math.copysign(1, t[j]) == elected]
        out.append(sum(vals) / len(vals) if vals else 0.0)
    return torch.tensor(out).reshape(mats[0].shape)


def test_ties_equals_a_naive_per_element_ties_on_one_layer(runs, states, tmp_path):
    w = [1.0, 0.5, 2.0]
    got, _ = _adapter(merge_runs(runs, tmp_path / "ties", method="ties", density=0.2, weights=w))
    b_key = A_KEY.replace("lora_A", "lora_B")
    # On LoRA, TIES runs on A and on B separately; the sign of each weight goes to A only.
    naive_a = _naive_ties([s[A_KEY] for s in states], w, 0.2, ALPHA / R, signed=True)    # (4, 576)
    naive_b = _naive_ties([s[b_key] for s in states], w, 0.2, ALPHA / R, signed=False)   # (576, 4)
    assert (got[A_KEY] - naive_a).abs().max() <= 1e-6
    assert (got[b_key] - naive_b).abs().max() <= 1e-6
    # The trim really trims: at most 3 x 20 % of the entries survive, at least the largest client share.
    assert 0.4 < (got[A_KEY] == 0).float().mean() < 0.8


# ------------------------------------------------------------------ the written folders load
def test_merged_adapter_loads_and_changes_the_logits(runs, multi, ties_out, ids, base_dir):
    from peft import PeftModel
    from transformers import AutoModelForCausalLM

    rec = json.loads((ties_out / "merge.json").read_text())
    assert rec["method"] == "ties" and rec["density"] == 0.2 and rec["weights"] == [1.0, 1.0, 1.0]
    assert [r["rows"] for r in rec["runs"]] == list(ROWS) and rec["base_model"] == "bundled"
    assert [r["run"] for r in rec["runs"]] == [str(r.resolve()) for r in runs]

    with torch.no_grad():
        model = PeftModel.from_pretrained(
            AutoModelForCausalLM.from_pretrained(str(base_dir), dtype="float32"), str(ties_out)).eval()
        merged = model(ids).logits[0]                                           # (L, vocab)
        with multi.disable_adapter():
            base = multi(ids).logits[0]
        clients = []
        for name in ("c0", "c1", "c2"):
            multi.set_adapter(name)
            clients.append(multi(ids).logits[0])
        assert (merged - base).abs().max() > 1e-2
        for c in clients:
            assert (merged - c).abs().max() > 1e-2
        full = AutoModelForCausalLM.from_pretrained(str(ties_out / "merged"), dtype="float32").eval()
        assert (full(ids).logits[0] - merged).abs().max() <= 1e-4
    assert (ties_out / "merged" / "config.json").is_file() and (ties_out / "tokenizer_config.json").is_file()


# ------------------------------------------------------------------ errors
def _copy(run, dst):
    return shutil.copytree(run, dst, ignore=shutil.ignore_patterns("checkpoint-*"))


def _edit(path, **changes):
    d = json.loads(path.read_text())
    target = d["config"] if "config" in d else d
    target.update(changes)
    path.write_text(json.dumps(d))


def _unfinished(run):
    shutil.rmtree(run / "final")


def _full_finetune(run):
    (run / "final" / "adapter_config.json").unlink()
    (run / "final" / "config.json").write_text("{}")


@pytest.mark.parametrize("plant,method,message", [
    (_unfinished, "ties", "has no finished adapter (final/adapter_config.json is missing)"),
    (_full_finetune, "ties", "is a full fine-tune; only LoRA runs can be merged"),
    (lambda r: _edit(r / "config.json", model="/elsewhere/llama"), "ties",
     "base model '/elsewhere/llama' vs 'bundled'"),
    (lambda r: _edit(r / "final" / "adapter_config.json", r=8), "ties", "LoRA r 8 vs 4. Method 'ties' needs"),
    (lambda r: _edit(r / "final" / "adapter_config.json", target_modules=["q_proj"]), "linear",
     "target_modules ['q_proj'] vs ['q_proj', 'v_proj']"),
    (lambda r: _edit(r / "final" / "adapter_config.json", lora_alpha=16), "fedavg",
     "LoRA scaling (lora_alpha 16, r 4) vs (lora_alpha 8, r 4)"),
])
def test_incompatible_runs_are_named(runs, tmp_path, plant, method, message):
    bad = _copy(runs[1], tmp_path / "bad-run")
    plant(bad)
    with pytest.raises(ConfigError, match=re.escape(message)) as err:
        merge_runs([runs[0], bad], tmp_path / "out", method=method)
    assert "bad-run" in str(err.value)
    assert not (tmp_path / "out").exists()


@pytest.mark.parametrize("kwargs,message", [
    (dict(density=0.0), "The 'density' parameter of merge_runs must be a float in (0, 1]. Got 0.0."),
    (dict(density=1.5), "The 'density' parameter of merge_runs must be a float in (0, 1]. Got 1.5."),
    (dict(method="tie"), "must be one of ties, linear, cat, fedavg. Got 'tie'. Did you mean 'ties'?"),
    (dict(weights=[1.0]), "must hold one weight per run (2 runs). Got 1 weights."),
    (dict(method="fedavg", weights=[1.0, -1.0]), "must be >= 0 with a positive sum for method 'fedavg'"),
    (dict(weights=[1.0, float("nan")]), "must hold finite numbers"),
])
def test_bad_parameters_are_named(runs, tmp_path, kwargs, message):
    with pytest.raises(ConfigError, match=re.escape(message)):
        merge_runs(runs[:2], tmp_path / "out", **kwargs)
    assert not (tmp_path / "out").exists()


def test_run_count_not_a_run_and_out_over_a_run(runs, tmp_path):
    with pytest.raises(ConfigError, match=re.escape("needs at least 2 run directories. Got 1.")):
        merge_runs(runs[:1], tmp_path / "out")
    (tmp_path / "empty").mkdir()
    with pytest.raises(ConfigError, match="empty is not a thresher training run"):
        merge_runs([runs[0], tmp_path / "empty"], tmp_path / "out")
    with pytest.raises(ConfigError, match="would overwrite run"):
        merge_runs(runs[:2], runs[1])
    with pytest.raises(ConfigError, match="would overwrite run"):
        merge_runs(runs[:2], runs[1].parent)
    assert (runs[1] / "final" / "adapter_config.json").is_file()


# ------------------------------------------------------------------ CLI handler
def test_cli_merges_with_given_weights_and_prints_a_summary(runs, states, tmp_path, capsys):
    p = argparse.ArgumentParser()
    add_merge_arguments(p)
    args = p.parse_args([str(runs[0]), str(runs[2]), "--out", str(tmp_path / "m"), "--method", "fedavg",
                         "--weights", "1,3"])
    assert merge_cli(args) == 0
    line = capsys.readouterr().out
    assert "merged 2 runs (fedavg, weights 0.25, 0.75; training rows 3, 2)" in line and "rank 4" in line
    got, _ = _adapter(tmp_path / "m")
    assert (got[A_KEY] - (states[0][A_KEY] + 3 * states[2][A_KEY]) / 4).abs().max() <= 1e-6
    bad = p.parse_args([str(runs[0]), str(runs[2]), "--out", str(tmp_path / "n"), "--weights", "1,x"])
    with pytest.raises(ConfigError, match="--weights must be comma-separated numbers"):
        merge_cli(bad)
