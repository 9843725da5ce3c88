"""Gradient features on the bundled real model with a warmed-up LoRA adapter (r=8 on q_proj, v_proj):
batched per-sample gradients vs a naive one-sample autograd reference, Adam preconditioning vs a hand
computation, the HF Trainer checkpoint loader, projection (JL, seed, chunking), store resume after
SIGKILL, DataInf/LESS/CLUES formulas, and a planted-defect CLUES case (swapped responses)."""

from __future__ import annotations

import json
import math
import signal
import subprocess
import sys
import time

import numpy as np
import pytest
import torch

from thresher.data.templates import render
from thresher.errors import ConfigError
from thresher.gradients import (GradientStore, RademacherProjector, adam_precondition, clues_scores,
                                datainf_influence, domain_means, flat_moments, gradient_features, less_scores,
                                lr_weights, make_batch, per_sample_grads, select_parameters, write_gradient_store,
                                write_store)
from thresher.models.checkpoints import (checkpoint_learning_rate, load_adam_moments, load_adapter,
                                         trainer_param_order)
from thresher.selection.clients import global_threshold, select_above, selection_metrics
from thresher.data.spans import build_spans

PAIRS = [
    ("Give three tips for staying healthy.", "Eat a balanced diet, exercise regularly, and get enough sleep."),
    ("What are the three primary colors?", "The three primary colors are red, blue, and yellow."),
    ("Describe the structure of an atom.", "An atom has a nucleus of protons and neutrons, surrounded by electrons."),
    ("Translate 'Where is the library?' into French.", "Où est la bibliothèque ?"),
    ("Convert 25 degrees Celsius to Fahrenheit.", "25 degrees Celsius is 77 degrees Fahrenheit."),
    ("Name the capital of Australia.", "The capital of Australia is Canberra."),
    ("Rewrite 'The cat chased the mouse.' in the passive voice.", "The mouse was chased by the cat."),
    ("Suggest a name for a coffee shop.", "The Daily Grind."),
    ("Classify the penguin as a mammal, bird, or reptile.", "A penguin is a bird."),
    ("Compute the sum 17 + 26.", "17 + 26 = 43."),
    ("Explain what a noun is.", "A noun is a word that names a person, place, thing, or idea."),
    ("Find the antonym of the word generous.", "The antonym of generous is stingy."),
    ("Generate a question about the water cycle.", "How does evaporation move water from oceans into the air?"),
    ("Sort the numbers 9, 2, 7, 4 in ascending order.", "2, 4, 7, 9"),
    ("What is the capital of France?", "The capital of France is Paris."),
    ("Name a fruit that is yellow.", "A banana is a yellow fruit."),
    ("How many days are in a week?", "There are seven days in a week."),
    ("What is the opposite of hot?", "The opposite of hot is cold."),
    ("Compute the product 6 times 7.", "6 times 7 is 42."),
    ("What color is the sky on a clear day?", "On a clear day the sky is blue."),
    ("Name the largest planet in the solar system.", "Jupiter is the largest planet in the solar system."),
    ("What do bees make?", "Bees make honey."),
    ("Translate 'thank you' into Spanish.", "Thank you in Spanish is gracias."),
    ("What is the boiling point of water in Celsius?", "Water boils at 100 degrees Celsius."),
]


def units_of(pairs):
    return [render("alpaca", [{"role": "user", "content": q}], a, {"instruction": q, "input": ""}) for q, a in pairs]


@pytest.fixture(scope="module")
def lora():
    pytest.importorskip("peft")
    return warm_lora(steps=8)


def warm_lora(steps: int):
    """Bundled SmolLM2 + LoRA r=8 on q,v, warmed up by a few plain AdamW steps on the clean pairs (a fresh
    adapter has B = 0, so every A-gradient would be zero). Returns (model, tokenizer, optimizer)."""
    from peft import LoraConfig, get_peft_model
    from transformers import AutoModelForCausalLM, AutoTokenizer

    from thresher.models.bundled import converted_model_dir

    torch.manual_seed(0)
    d = converted_model_dir()
    tok = AutoTokenizer.from_pretrained(d)
    model = get_peft_model(AutoModelForCausalLM.from_pretrained(d, dtype=torch.float32),
                           LoraConfig(r=8, lora_alpha=16, target_modules=["q_proj", "v_proj"], lora_dropout=0.0))
    names = trainer_param_order(model)
    params = dict(model.named_parameters())
    # Trainer-style groups (decay, no-decay) so optimizer.state_dict() has HF Trainer's numbering.
    opt = torch.optim.AdamW([{"params": [params[n] for n in names], "weight_decay": 0.0},
                             {"params": [], "weight_decay": 0.0}], lr=2e-3)
    sp = build_spans(tok, units_of(PAIRS), 128)
    for step in range(steps):
        idx = [(4 * step + k) % len(PAIRS) for k in range(4)]
        b = make_batch([sp.cond_ids[i] for i in idx], [sp.cond_span[i] for i in idx], tok.pad_token_id or 0)
        logits = model(input_ids=b.input_ids, attention_mask=b.attention_mask).logits
        loss = torch.nn.functional.cross_entropy(logits[b.row, b.pos], b.target)
        opt.zero_grad()
        loss.backward()
        opt.step()
    model.eval()
    return model, tok, opt


def naive_grad(model, sel, ids, span):
    """Deliberately plain reference: one sample, full model forward, autograd of the mean response NLL."""
    params = dict(model.named_parameters())
    x = torch.as_tensor(ids[: span[1]]).unsqueeze(0)
    logits = model(input_ids=x).logits[0]
    tgt = x[0, span[0]: span[1]]
    loss = torch.nn.functional.cross_entropy(logits[span[0] - 1: span[1] - 1], tgt)
    grads = torch.autograd.grad(loss, [params[n] for n in sel.names])
    return torch.cat([g.reshape(-1) for g in grads])


@pytest.mark.slow
def test_batched_per_sample_grads_match_one_sample_autograd(lora):
    model, tok, _ = lora
    sel = select_parameters(model, "all")
    assert sel.dim == 30 * (8 * 576 + 576 * 8 + 8 * 576 + 192 * 8)      # 460,800 LoRA values
    sp = build_spans(tok, units_of(PAIRS[:5]), 128)
    batch = make_batch(sp.cond_ids, sp.cond_span, tok.pad_token_id or 0)
    assert len({len(x) for x in sp.cond_ids}) > 1                          # real padding happens
    g = per_sample_grads(model, sel, batch)
    for i in range(5):
        ref = naive_grad(model, sel, sp.cond_ids[i], sp.cond_span[i])
        assert ref.abs().max() > 0
        assert torch.linalg.norm(g[i] - ref) <= 1e-4 * torch.linalg.norm(ref)
    # A-gradients are non-zero after warm-up.
    a = np.concatenate([np.arange(sel.offsets[k], sel.offsets[k + 1]) for k, n in enumerate(sel.names)
                        if "lora_A" in n])
    assert g[:, a].abs().max() > 0


@pytest.mark.slow
def test_notation_selects_the_named_subset(lora):
    model, tok, _ = lora
    full = select_parameters(model, "all")
    for notation, must, n_params in [("q", "q_proj", 60), ("v", "v_proj", 60), ("A", "lora_A", 60),
                                     ("B", "lora_B", 60), ("layers.1", "layers.1.", 4), ("layers.29", "layers.29.", 4)]:
        sel = select_parameters(model, notation)
        assert len(sel.names) == n_params and all(must in n for n in sel.names), notation
    with pytest.raises(ConfigError, match="matches no trainable parameter"):
        select_parameters(model, "layers.31")       # the reference silently fell back to all params
    # A subset's per-sample gradients are the matching columns of the full gradient.
    sp = build_spans(tok, units_of(PAIRS[:2]), 128)
    batch = make_batch(sp.cond_ids, sp.cond_span, tok.pad_token_id or 0)
    g_all, sel_b = per_sample_grads(model, full, batch), select_parameters(model, "B")
    g_b = per_sample_grads(model, sel_b, batch)
    cols = np.concatenate([np.arange(full.offsets[k], full.offsets[k + 1]) for k, n in enumerate(full.names)
                           if "lora_B" in n])
    torch.testing.assert_close(g_b, g_all[:, cols], rtol=1e-4, atol=1e-7)


@pytest.mark.slow
def test_adam_precondition_equals_hand_computation(lora):
    # Scalar hand check: g=2, m=1, v=3 -> m'=0.9+0.2=1.1, v'=2.997+0.004=3.001, 1.1/sqrt(3.001+1e-8).
    out = adam_precondition(torch.tensor([[2.0]]), torch.tensor([1.0]), torch.tensor([3.0]))
    assert out.item() == pytest.approx(1.1 / math.sqrt(3.001 + 1e-8), rel=1e-6)
    model, tok, opt = lora
    sel = select_parameters(model, "v")
    params = dict(model.named_parameters())
    state = {n: (opt.state[params[n]]["exp_avg"], opt.state[params[n]]["exp_avg_sq"]) for n in sel.names}
    m, v = flat_moments(state, sel)
    sp = build_spans(tok, units_of(PAIRS[:2]), 128)
    g = per_sample_grads(model, sel, make_batch(sp.cond_ids, sp.cond_span, 0))
    got = adam_precondition(g, m, v).double().numpy()
    gn, mn, vn = g.double().numpy(), m.double().numpy(), v.double().numpy()
    hand = (0.9 * mn + 0.1 * gn) / np.sqrt(0.999 * vn + 0.001 * gn ** 2 + 1e-8)   # no bias correction
    np.testing.assert_allclose(got, hand, rtol=1e-4, atol=1e-6)
    assert not np.allclose(got, gn)


@pytest.mark.slow
def test_trainer_checkpoint_loader_and_learning_rate(lora, tmp_path):
    model, _, opt = lora
    torch.save(opt.state_dict(), tmp_path / "optimizer.pt")
    state = load_adam_moments(tmp_path, model)
    params = dict(model.named_parameters())
    for n in trainer_param_order(model)[::17]:
        assert torch.equal(state[n]["exp_avg"], opt.state[params[n]]["exp_avg"])
        assert torch.equal(state[n]["exp_avg_sq"], opt.state[params[n]]["exp_avg_sq"])
    model.save_pretrained(tmp_path)                                   # adapter_model.safetensors
    name = "base_model.model.model.layers.3.self_attn.v_proj.lora_B.default.weight"
    saved = params[name].detach().clone()
    with torch.no_grad():
        params[name].zero_()
    load_adapter(tmp_path, model)
    assert saved.abs().max() > 0 and torch.equal(params[name], saved)
    log = [{"epoch": 0.5, "learning_rate": 4e-5, "loss": 1.0}, {"epoch": 1.0, "learning_rate": 3e-5, "loss": 1.0},
           {"epoch": 1.0, "eval_loss": 0.9},                          # eval entry: no learning_rate (CLUES KeyError)
           {"epoch": 1.5, "learning_rate": 2e-5, "loss": 1.0}, {"epoch": 2.0, "learning_rate": 1e-5, "loss": 1.0},
           {"epoch": 2.0, "eval_loss": 0.8}]
    (tmp_path / "trainer_state.json").write_text(json.dumps({"epoch": 2.0, "log_history": log}))
    assert checkpoint_learning_rate(tmp_path) == pytest.approx(1.5e-5)     # entries with epoch in (1, 2]
    assert checkpoint_learning_rate({"epoch": 1.0, "log_history": log}) == pytest.approx(3.5e-5)


def test_projection_jl_seed_and_chunking():
    rng = np.random.default_rng(0)
    P, d = 3000, 8192
    x = torch.as_tensor(rng.standard_normal((12, P)), dtype=torch.float32)
    proj = RademacherProjector(P, d, seed=7, chunk_rows=1024)
    y = proj.project(x)
    ip, ip_hat = (x @ x.T).double(), (y @ y.T).double()
    norms = torch.sqrt(torch.diag(ip))
    err = (ip_hat - ip) / torch.outer(norms, norms)               # relative to |x||y|, sd ~ 1/sqrt(d)
    assert err.abs().max() < 5 / math.sqrt(d)
    assert 0.3 / d < (err ** 2).mean() < 3 / d                     # the spread JL predicts, not just small
    assert torch.equal(RademacherProjector(P, d, seed=7, chunk_rows=1024).project(x), y)   # reproducible
    torch.testing.assert_close(RademacherProjector(P, d, seed=7, chunk_rows=512).project(x), y, rtol=1e-5, atol=1e-4)
    torch.testing.assert_close(proj.project(x[3:5]), y[3:5], rtol=1e-5, atol=1e-4)        # batch independent
    assert not torch.allclose(RademacherProjector(P, d, seed=8).project(x), y)


STORE_SCRIPT = """
import sys, time, numpy as np, torch
from thresher.gradients import RademacherProjector, write_store
proj = RademacherProjector(600, 64, seed=3)
def compute(rows):
    time.sleep(float(sys.argv[2]))
    x = torch.as_tensor(np.sin(np.outer(rows + 1, np.arange(600) + 1.0)), dtype=torch.float32)
    return proj.project(x).numpy()
write_store(sys.argv[1], [f"s{i}" for i in range(30)], compute, 64, shard_size=4, meta={"seed": 3})
"""


def test_store_resume_after_kill_gives_identical_features(tmp_path):
    script = tmp_path / "w.py"
    script.write_text(STORE_SCRIPT)
    killed, fresh = tmp_path / "killed", tmp_path / "fresh"
    p = subprocess.Popen([sys.executable, str(script), str(killed), "0.4"])
    deadline = time.time() + 60
    while len(list(killed.glob("shard-*.npy"))) < 2 and time.time() < deadline:
        time.sleep(0.05)
    p.send_signal(signal.SIGKILL)
    p.wait()
    done = sorted(f.name for f in killed.glob("shard-*.npy"))
    assert 2 <= len(done) < 8 and not GradientStore(killed).complete
    subprocess.run([sys.executable, str(script), str(killed), "0"], check=True)
    subprocess.run([sys.executable, str(script), str(fresh), "0"], check=True)
    a, b = GradientStore(killed), GradientStore(fresh)
    assert a.complete and a.ids == b.ids and a.meta == {"seed": 3}
    np.testing.assert_array_equal(a.to_array(), b.to_array())
    np.testing.assert_array_equal(a.rows([29, 0, 5]), b.to_array()[[29, 0, 5]])
    assert a.bytes_per_sample == 64 * 4
    with pytest.raises(ConfigError, match="differs in: meta"):
        write_store(killed, a.ids, lambda r: np.zeros((len(r), 64)), 64, shard_size=4, meta={"seed": 4})


def naive_datainf(g, v, layers, c=10.0):
    """Plain loops over layers and samples, straight from METHODS.md 6.4."""
    out = np.zeros(len(g))
    for sl in layers:
        lam = np.mean([np.mean(gi[sl] ** 2) for gi in g]) / c
        h = sum(v[sl] - (v[sl] @ gi[sl]) / (lam + gi[sl] @ gi[sl]) * gi[sl] for gi in g) / (len(g) * lam)
        for k in range(len(g)):
            out[k] -= h @ g[k][sl]
    return out


def test_datainf_single_gradient_and_naive_parity():
    g = np.array([[0.5, -1.0, 2.0, 0.25]])
    lam = 0.1 * np.mean(g ** 2)
    n2 = float((g ** 2).sum())
    assert datainf_influence(g, g[0])[0] == pytest.approx(-n2 / (lam + n2), rel=1e-12)    # METHODS.md 8.2
    rng = np.random.default_rng(1)
    G, V = rng.standard_normal((7, 10)), rng.standard_normal((3, 10))
    layers = [slice(0, 4), slice(4, 10)]
    np.testing.assert_allclose(datainf_influence(G, V, layers), naive_datainf(G, V.mean(0), layers), rtol=1e-10)
    assert not np.allclose(datainf_influence(G, V), datainf_influence(G, V, layers))       # single "layer" differs
    with pytest.raises(ConfigError, match="all-zero"):
        datainf_influence(np.zeros((2, 3)), np.ones(3))


def test_less_scores_hand_case_and_weight_renormalisation():
    assert lr_weights([2e-5, 1e-5, 1e-5]).tolist() == pytest.approx([0.5, 0.25, 0.25])
    train = [np.array([[1.0, 0.0], [0.0, 2.0]]), np.array([[1.0, 1.0], [0.0, 1.0]])]
    target = [np.array([[1.0, 0.0], [0.0, 1.0], [1.0, 1.0]])] * 2
    task = np.array(["a", "a", "b"])
    s = less_scores(train, target, task, [3.0, 1.0], per_task=True)
    c = 1 / math.sqrt(2)
    # sample 0: ckpt0 cos to targets (1, 0, c), ckpt1 (c, c, 1); task a = mean of first two, b = third.
    exp0 = [0.75 * 0.5 + 0.25 * c, 0.75 * c + 0.25 * 1.0]
    exp1 = [0.75 * 0.5 + 0.25 * 0.5, 0.75 * c + 0.25 * c]
    np.testing.assert_allclose(s, [exp0, exp1], rtol=1e-6)
    np.testing.assert_allclose(less_scores(train, target, task, [30.0, 10.0]), s.max(axis=1), rtol=1e-6)


def test_clues_formula_threshold_and_metrics():
    train = [np.array([[1.0, 0.0], [0.0, 1.0]]), np.array([[2.0, 0.0], [0.0, 0.0]])]
    vals = [np.array([[1.0, 1.0], [1.0, -1.0]]), np.array([[1.0, 0.0], [0.0, 1.0]])]
    s = clues_scores(train, vals, [1e-4, 2e-4], [1.0, 0.5])
    # ckpt0 direction 1e-4*(1.5, 0.5); ckpt1 2e-4*(1, 0.5); mean over 2 checkpoints.
    np.testing.assert_allclose(s, [(1.5e-4 + 4e-4) / 2, (0.5e-4 + 0) / 2])
    doms, means = domain_means(np.array([[1.0, 0], [3, 0], [0, 2]]), np.array(["x", "x", "y"]))
    assert doms.tolist() == ["x", "y"] and means.tolist() == [[2, 0], [0, 2]]
    a = np.array([1.0, 2.0, 3.0, 4.0, np.nan])
    assert global_threshold(a, "min") == 1 and global_threshold(a, "mean") == 2.5
    assert global_threshold(a, "quantile", q=0.5) == 2.5
    with pytest.raises(ConfigError, match="'q' parameter"):
        global_threshold(a, "quantile")
    keep = select_above(np.array([0.5, 2.0, np.nan, 3.0]), 1.0)
    assert keep.tolist() == [False, True, False, True]
    m = selection_metrics(keep, np.array([True, True, True, False]))
    assert m["precision"] == 0.5 and m["recall"] == pytest.approx(1 / 3) and m["f1"] == pytest.approx(0.4)


@pytest.mark.slow
def test_planted_defect_clues_rejects_swapped_responses(lora, tmp_path):
    """Clean anchors define the mean validation gradient and the threshold; pool samples whose response
    was swapped with another question's should score lower than clean ones."""
    model, tok, opt = lora
    sel = select_parameters(model, "all")
    params = dict(model.named_parameters())
    moments = flat_moments({n: (opt.state[params[n]]["exp_avg"], opt.state[params[n]]["exp_avg_sq"])
                            for n in sel.names}, sel)
    val, anchors, pool = PAIRS[:4], PAIRS[4:8], PAIRS[8:]
    bad = np.arange(len(pool)) % 2 == 1                          # every second pool sample corrupted
    answers = [a for _, a in pool]
    swapped = [(q, answers[(i + 5) % len(pool)] if bad[i] else a) for i, (q, a) in enumerate(pool)]
    raw = gradient_features(model, tok, units_of(val + anchors), sel, max_length=128, batch_size=8)  # SGD
    vmean = raw[:4].mean(axis=0, keepdims=True)                   # mean validation gradient, one domain
    anchor_pre = adam_precondition(torch.as_tensor(raw[4:]), *moments).numpy()
    store = write_gradient_store(tmp_path / "pool", [f"p{i}" for i in range(len(pool))], model, tok,
                                 units_of(swapped), sel, shard_size=8, max_length=128, batch_size=8, moments=moments)
    feats = GradientStore(store).to_array()                       # Adam-preconditioned pool features
    s_pool = clues_scores([feats], [vmean], [2e-3], [1.0])
    s_anchor = clues_scores([anchor_pre], [vmean], [2e-3], [1.0])  # same checkpoint, lr and weights
    tau = global_threshold(s_anchor, "min")
    keep = select_above(s_pool, tau)
    m = selection_metrics(keep, ~bad)
    print(f"\nCLUES planted defect: clean {np.round(s_pool[~bad], 4)} swapped {np.round(s_pool[bad], 4)} "
          f"tau {tau:.4f} precision {m['precision']:.2f} recall {m['recall']:.2f} f1 {m['f1']:.2f}")
    assert np.median(s_pool[~bad]) > np.median(s_pool[bad])
    assert keep.any() and m["precision"] > 0.5 + 1e-9          # better than the 50 % base rate
