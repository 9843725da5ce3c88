"""Gradient scorers (less, clues, datainf) on one real tiny LoRA training run of the bundled model: each
equals a naive recomputation written here (gradient_features per checkpoint on a separately loaded PEFT
model, then the formulas of gradients/scores.py), the LESS pool store is reused across targets, CLUES
scores anchors on the same scale, DataInf's streamed passes equal the in-memory closed form, and bad runs
or data files give errors that name them."""

from __future__ import annotations

import json
import os
import shutil

import numpy as np
import pytest
import torch

from samples import ALPACA
from thresher.data import load, split_turns
from thresher.errors import ConfigError, DataError
from thresher.gradients import (RademacherProjector, adam_precondition, clues_scores, datainf_influence,
                                datainf_streamed, domain_means, flat_moments, gradient_features, less_scores,
                                select_parameters)
from thresher.models.checkpoints import checkpoint_learning_rate, load_adapter
from thresher.scoring.registry import make_scorer

MAX_LEN = 128
POOL, T1, T2, T3, ANCHOR = ALPACA[:6], ALPACA[6:8], ALPACA[8:10], ALPACA[10:12], ALPACA[12:14]
# One target file whose records name their task: two tasks from one file.
T3 = [{**r, "task": f"task-{k}"} for k, r in enumerate(T3)]
COMMON = dict(max_length=MAX_LEN, batch_size=4)


@pytest.fixture(scope="module", autouse=True)
def _one_thread(one_thread):
    yield


def write_jsonl(path, records):
    path.write_text("".join(json.dumps(r) + "\n" for r in records), encoding="utf-8")
    return str(path)


@pytest.fixture(scope="module")
def files(tmp_path_factory):
    d = tmp_path_factory.mktemp("gs-data")
    return {name: write_jsonl(d / f"{name}.jsonl", recs) for name, recs in
            [("train", ALPACA), ("pool", POOL), ("t1", T1), ("t2", T2), ("t3", T3), ("anchor", ANCHOR)]}


@pytest.fixture(scope="module")
def run_dir(files, tmp_path_factory):
    """One tiny LoRA run: r=4 on q,v, 4 steps of 4 rows, checkpoints at steps 2 and 4."""
    pytest.importorskip("peft")
    from thresher.training.sft import train

    out = tmp_path_factory.mktemp("gs-run") / "run"
    res = train(files["train"], out=out, lora_r=4, lora_alpha=16, lora_dropout=0.0, target_modules=["q_proj", "v_proj"],
                max_length=MAX_LEN, max_steps=4, save_steps=2, batch_size=4, logging_steps=1, lr=5e-3,
                device="cpu", dtype="float32", seed=0)
    assert [c.name for c in res.checkpoints] == ["checkpoint-2", "checkpoint-4"]
    return out


@pytest.fixture(scope="module")
def naive(run_dir, files):
    """Deliberately plain reference: a separately loaded PEFT model, raw SGD gradients of every row at every
    checkpoint (gradient_features), learning rates and Adam moments read directly from the checkpoint."""
    from peft import PeftModel
    from transformers import AutoModelForCausalLM, AutoTokenizer

    from thresher.data.templates import render
    from thresher.models.bundled import converted_model_dir
    from thresher.models.checkpoints import load_adam_moments

    src = converted_model_dir()
    tok = AutoTokenizer.from_pretrained(src)
    ck = [run_dir / "checkpoint-2", run_dir / "checkpoint-4"]
    model = PeftModel.from_pretrained(AutoModelForCausalLM.from_pretrained(src, dtype=torch.float32), str(ck[0]),
                                      is_trainable=True)
    model.eval()
    sel = select_parameters(model, "all")
    rows = {k: load(files[k]) for k in ("pool", "t1", "t2", "t3", "anchor")}
    order = list(rows)
    units = [render("alpaca", *split_turns(m, "last")[0], meta, tok)
             for k in order for m, meta in zip(rows[k].messages, rows[k].meta)]
    bounds = np.cumsum([0] + [len(rows[k]) for k in order])
    raw, moments = [], []
    for c in ck:
        load_adapter(c, model)
        g = gradient_features(model, tok, units, sel, max_length=MAX_LEN, batch_size=8)
        assert np.isfinite(g).all() and np.abs(g).max() > 0
        raw.append({k: g[bounds[i]: bounds[i + 1]] for i, k in enumerate(order)})
        state = {n: (d["exp_avg"], d["exp_avg_sq"]) for n, d in load_adam_moments(c).items()}
        moments.append(flat_moments(state, sel))
    lrs = [checkpoint_learning_rate(c) for c in ck]
    return {"raw": raw, "moments": moments, "lrs": lrs, "sel": sel,
            "pre": lambda c, k: adam_precondition(torch.as_tensor(raw[c][k]), *moments[c]).numpy()}


# ------------------------------------------------------------------------------------------------ LESS
def less_naive(naive, targets, tasks, dim=256, seed=0):
    proj = RademacherProjector(naive["sel"].dim, dim, seed=seed)
    train = [proj.project(torch.as_tensor(naive["pre"](c, "pool"))).numpy() for c in range(2)]
    tgt = [proj.project(torch.as_tensor(np.concatenate([naive["raw"][c][k] for k in targets]))).numpy()
           for c in range(2)]
    return less_scores(train, tgt, np.asarray(tasks), naive["lrs"], per_task=True)


def pool_shards(cache_root):
    return {str(p): p.stat().st_mtime_ns for p in (cache_root / "grads").glob("less-pool-*/shard-*.npy")}


@pytest.mark.slow
def test_less_equals_naive_and_reuses_the_pool_store(ctx, run_dir, files, naive, tmp_path):
    from thresher.engine.scoring import score_dataset

    pool = load(files["pool"])
    sc = make_scorer("less", checkpoints=str(run_dir), target=[files["t1"], files["t2"]], proj_dim=256, **COMMON)
    out = score_dataset(pool, sc, ctx, cache_root=tmp_path)
    ref = less_naive(naive, ["t1", "t2"], ["t1"] * 2 + ["t2"] * 2)
    np.testing.assert_allclose(out["less"], ref.max(axis=1), atol=2e-4)
    assert out["less_task"].tolist() == [["t1", "t2"][i] for i in ref.argmax(axis=1)]
    assert (out["status"] == "ok").all() and np.ptp(out["less"]) > 1e-3
    shards = pool_shards(tmp_path)
    assert len(shards) == 2                                   # one store per checkpoint

    # Another target (one file, tasks from the records' 'task' field): same pool store, untouched.
    sc2 = make_scorer("less", checkpoints=str(run_dir), target=[files["t3"]], proj_dim=256, **COMMON)
    out2 = score_dataset(pool, sc2, ctx, cache_root=tmp_path)
    assert out2.attrs["cache"]["computed"] == len(pool)      # a new scorer key: scores were computed ...
    assert pool_shards(tmp_path) == shards                    # ... from the stored pool features
    ref2 = less_naive(naive, ["t3"], ["task-0", "task-1"])
    np.testing.assert_allclose(out2["less"], ref2.max(axis=1), atol=2e-4)
    assert set(out2["less_task"]) <= {"task-0", "task-1"}
    assert not np.allclose(out2["less"], out["less"])

    # A shard lost (a run killed before writing it): the next run recomputes that shard only.
    lost = sorted(shards)[0]
    before = np.load(lost)
    os.remove(lost)
    sc3 = make_scorer("less", checkpoints=str(run_dir), target=[files["t1"]], proj_dim=256, **COMMON)
    out3 = score_dataset(pool, sc3, ctx, cache_root=tmp_path)
    after = pool_shards(tmp_path)
    assert set(after) == set(shards) and all(after[p] == shards[p] for p in shards if p != lost)
    np.testing.assert_allclose(np.load(lost), before, atol=1e-6)
    np.testing.assert_allclose(out3["less"], less_naive(naive, ["t1"], ["t1"] * 2).max(axis=1), atol=2e-4)


# ------------------------------------------------------------------------------------------------ CLUES
@pytest.mark.slow
def test_clues_equals_naive_for_pool_and_anchors(ctx, run_dir, files, naive, tmp_path):
    from thresher.engine.scoring import score_dataset

    sc = make_scorer("clues", checkpoints=str(run_dir), validation=[files["t1"], files["t2"]], own_domain=files["t2"],
                     scoring_weight=0.5, **COMMON)
    base = ctx.lm().model                                     # shared with every other scorer of a run
    probe = torch.tensor([[1, 2, 3, 4, 5]])
    with torch.no_grad():
        before = base(input_ids=probe).logits
    flags = [p.requires_grad for p in base.parameters()]
    dom = np.array(["t1"] * 2 + ["t2"] * 2)
    means = [domain_means(np.concatenate([naive["raw"][c]["t1"], naive["raw"][c]["t2"]]), dom)[1] for c in range(2)]
    for part in ("pool", "anchor"):                          # anchors: same instance, same scale
        out = score_dataset(load(files[part]), sc, ctx, cache_root=tmp_path)
        ref = clues_scores([naive["pre"](c, part) for c in range(2)], means, naive["lrs"], [0.5, 1.0])
        own = clues_scores([naive["pre"](c, part) for c in range(2)], means, naive["lrs"], [0.0, 1.0])
        np.testing.assert_allclose(out["clues"], ref, rtol=2e-4)
        np.testing.assert_allclose(out["clues_own"], own, rtol=2e-4)
    assert len(list((tmp_path / "grads").glob("clues-val-*.npy"))) == 2     # validation means, per checkpoint
    # SGD (no preconditioning) is a different score.
    sgd = make_scorer("clues", checkpoints=str(run_dir), validation=[files["t1"]], precondition="sgd", **COMMON)
    out = score_dataset(load(files["anchor"]), sgd, ctx, cache_root=tmp_path)
    ref = clues_scores([naive["raw"][c]["anchor"] for c in range(2)],
                       [naive["raw"][c]["t1"].mean(axis=0, keepdims=True) for c in range(2)], naive["lrs"], [1.0])
    np.testing.assert_allclose(out["clues"], ref, rtol=2e-4)
    # The LoRA layers are gone from the shared base model afterwards: same modules, flags and outputs.
    assert not any("lora" in n for n, _ in base.named_parameters())
    assert [p.requires_grad for p in base.parameters()] == flags
    with torch.no_grad():
        assert torch.equal(base(input_ids=probe).logits, before)


# ------------------------------------------------------------------------------------------------ DataInf
@pytest.mark.slow
@pytest.mark.parametrize("layers, gradients", [("per_param", "recompute"), ("single", "store")])
def test_datainf_equals_closed_form_on_full_gradients(ctx, run_dir, files, naive, tmp_path, layers, gradients):
    from thresher.engine.scoring import score_dataset

    sc = make_scorer("datainf", checkpoints=str(run_dir), validation=[files["t1"], files["t2"]], layers=layers,
                     gradients=gradients, **COMMON)
    out = score_dataset(load(files["pool"]), sc, ctx, cache_root=tmp_path)
    off = naive["sel"].offsets
    sl = [slice(int(a), int(b)) for a, b in zip(off[:-1], off[1:])] if layers == "per_param" else None
    val = np.concatenate([naive["raw"][1]["t1"], naive["raw"][1]["t2"]])    # last checkpoint, all validation rows
    ref = datainf_influence(naive["raw"][1]["pool"], val, sl)
    np.testing.assert_allclose(out["datainf_influence"], ref, rtol=1e-3, atol=1e-6 * np.abs(ref).max())
    np.testing.assert_array_equal(out["datainf"], -out["datainf_influence"])
    assert np.ptp(ref) > 0


def test_streamed_datainf_equals_in_memory_closed_form():
    rng = np.random.default_rng(0)
    g, v = rng.standard_normal((9, 12)), rng.standard_normal((4, 12))
    layers = [slice(0, 5), slice(5, 6), slice(6, 12)]
    order = rng.permutation(9)

    def batches():                        # unordered chunks of 4, as a length-sorted stream yields them
        for s in range(0, 9, 4):
            idx = order[s: s + 4]
            yield idx, torch.as_tensor(g[idx], dtype=torch.float64)
    np.testing.assert_allclose(datainf_streamed(batches, 9, v.mean(0), layers), datainf_influence(g, v, layers),
                               rtol=1e-10)
    np.testing.assert_allclose(datainf_streamed(batches, 9, v.mean(0), [slice(0, 12)]), datainf_influence(g, v),
                               rtol=1e-10)

    def skip_two():                       # samples never yielded (unscorable): NaN, and not counted in n
        for idx, x in batches():
            keep = idx >= 2
            yield idx[keep], x[torch.as_tensor(keep)]
    got = datainf_streamed(skip_two, 9, v.mean(0), layers)
    assert np.isnan(got[:2]).all()
    np.testing.assert_allclose(got[2:], datainf_influence(g[2:], v, layers), rtol=1e-10)


# ------------------------------------------------------------------------------------------------ errors
@pytest.mark.slow
def test_clear_errors_for_bad_runs_and_data(ctx, run_dir, files, tmp_path):
    with pytest.raises(ConfigError, match="'checkpoints' parameter of scorer 'less'"):
        make_scorer("less", target=[files["t1"]])
    with pytest.raises(ConfigError, match="'target' parameter of scorer 'less' must be a non-empty list"):
        make_scorer("less", checkpoints=str(run_dir), target=[])
    missing = tmp_path / "no-such-run"
    with pytest.raises(ConfigError, match="'checkpoints' parameter.*no-such-run.*does not exist"):
        make_scorer("clues", checkpoints=str(missing), validation=[files["t1"]]).setup(ctx)
    empty_run = tmp_path / "empty-run"
    (empty_run / "checkpoint-2").mkdir(parents=True)          # a checkpoint cut off before its files
    (empty_run / "config.json").write_text("{}")
    with pytest.raises(ConfigError, match="holds no complete LoRA checkpoint"):
        make_scorer("datainf", checkpoints=str(empty_run), validation=[files["t1"]]).setup(ctx)
    empty = tmp_path / "empty.jsonl"
    empty.write_text("")
    with pytest.raises(DataError, match="empty.jsonl"):
        make_scorer("less", checkpoints=str(run_dir), target=[files["t1"], str(empty)]).setup(ctx)
    with pytest.raises(ConfigError, match="'validation' parameter of scorer 'clues' names .*gone.jsonl.*not exist"):
        make_scorer("clues", checkpoints=str(run_dir), validation=[str(tmp_path / "gone.jsonl")]).setup(ctx)
    with pytest.raises(ConfigError, match="'own_domain' parameter"):
        make_scorer("clues", checkpoints=str(run_dir), validation=[files["t1"]], own_domain="t9").setup(ctx)


@pytest.mark.slow
def test_model_identity_follows_checkpoint_content(ctx, run_dir, files, tmp_path):
    from safetensors.torch import load_file, save_file

    copy = tmp_path / "run"
    for name in ("checkpoint-2", "checkpoint-4"):
        shutil.copytree(run_dir / name, copy / name)

    def identity(which="all"):
        sc = make_scorer("clues", checkpoints=str(copy), validation=[files["t1"]], which=which)
        sc.setup(ctx)
        return sc.model_identity(ctx)
    first, last = identity(), identity("last")
    assert first != last
    adapter = copy / "checkpoint-2" / "adapter_model.safetensors"
    os.utime(adapter, ns=(1, 1))                              # touched, same bytes: content fingerprint unchanged
    assert identity() == first
    w = load_file(str(adapter))
    k = next(iter(w))
    w[k] = w[k] + 1e-3
    save_file(w, str(adapter))                                # a retrained checkpoint: new identity
    from thresher.models.checkpoints import mark_complete
    mark_complete(adapter.parent)                             # ... marked complete, as the trainer does
    assert identity() != first and identity("last") == last
