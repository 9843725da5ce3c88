"""oneDNN-packed linear layers (thresher.models.cpu_gemm): the bundled model gives the same NLL as with
torch's default GEMMs; a packed layer falls back to F.linear when gradients are needed, follows in-place
weight updates, survives deepcopy; the choice is validated."""

from __future__ import annotations

import copy

import numpy as np
import pytest
import torch

from thresher.data import split_turns
from thresher.data.templates import render
from thresher.errors import ConfigError
from thresher.models import cpu_gemm
from thresher.models.hf import HFCausalLM
from thresher.data.spans import OK, build_spans

needs_onednn = pytest.mark.skipif(not cpu_gemm.available(torch), reason="torch build without oneDNN linear kernels")


@needs_onednn
def test_bundled_model_nll_matches_torch_gemms(ctx, sharegpt_short):
    """Real pairs through the packed model (ctx's, CPU default) vs the same weights with torch's GEMMs."""
    lm = ctx.lm().setup()
    assert lm.cpu_gemm == "onednn"
    plain = HFCausalLM("bundled", cpu_gemm="torch").setup()
    assert plain.cpu_gemm == "torch" and not hasattr(plain.model.lm_head, "_thresher_packed")
    units = [render("alpaca", *split_turns(m, "first")[0], {}, lm.tokenizer) for m in sharegpt_short.messages[:12]]
    sp = build_spans(lm.tokenizer, units, 256, "offsets", "alpaca")
    ok = [i for i, s in enumerate(sp.status) if s == OK]
    seqs = [sp.cond_ids[i] for i in ok] + [sp.direct_ids[i] for i in ok]
    spans = [sp.cond_span[i] for i in ok] + [sp.direct_span[i] for i in ok]
    a, b = lm.token_nll(seqs, spans).nll, plain.token_nll(seqs, spans).nll
    diff = max(np.abs(x - y).max() for x, y in zip(a, b))
    assert 0 < diff < 2e-4                    # different kernels (rounding differs), same numbers
    means = np.array([x.mean() for x in a])
    assert np.abs(means - np.array([y.mean() for y in b])).max() < 2e-5 and means.std() > 0.1


def _tiny_linear(seed=0, bias=True):
    torch.manual_seed(seed)
    lin = torch.nn.Linear(48, 40, bias=bias)
    model = torch.nn.Sequential(lin, torch.nn.ReLU(), torch.nn.Linear(40, 8))
    return model, lin


@needs_onednn
@pytest.mark.parametrize("bias", [True, False])
def test_packed_forward_matches_and_falls_back_for_gradients(bias):
    """Tiny layers: only the GEMM path is under test. 3-D inputs, no_grad and inference mode use the packed
    weight; with gradients the plain F.linear runs and backward works."""
    model, lin = _tiny_linear(bias=bias)
    x = torch.randn(3, 5, 48)
    with torch.no_grad():
        ref = model(x)
    assert cpu_gemm.pack_linears(model) == 2 and cpu_gemm.pack_linears(model) == 0     # idempotent
    with torch.inference_mode():
        got = model(x)
    torch.testing.assert_close(got, ref, atol=1e-5, rtol=1e-5)
    assert lin._thresher_packed.cache.parts is not None                # the packed path ran
    xg = x.clone().requires_grad_(True)
    out = model(xg)                                                    # grad mode: plain F.linear
    out.sum().backward()
    assert xg.grad is not None and lin.weight.grad is not None and lin.weight.grad.abs().sum() > 0
    torch.testing.assert_close(out.detach(), ref, atol=1e-5, rtol=1e-5)


@needs_onednn
def test_in_place_weight_update_repacks_and_deepcopy_works():
    model, lin = _tiny_linear()
    cpu_gemm.pack_linears(model)
    x = torch.randn(7, 48)
    with torch.no_grad():
        before = model(x)
        lin.weight.mul_(-2.0)                                           # in place: version counter moves
        after = model(x)
        lin.weight.div_(-2.0)
        expected = torch.nn.functional.linear(x, lin.weight * -2.0, lin.bias)
    assert not torch.allclose(before, after)
    with torch.no_grad():
        torch.testing.assert_close(lin(x), torch.nn.functional.linear(x, lin.weight, lin.bias), atol=1e-5, rtol=1e-5)
        lin.weight.mul_(-2.0)
        torch.testing.assert_close(lin(x), expected, atol=1e-5, rtol=1e-5)
        twin = copy.deepcopy(model)                                     # the copy packs its own weights
        twin[0].weight.zero_()
        torch.testing.assert_close(twin[0](x), twin[0].bias.expand(7, 40), atol=0, rtol=0)
        torch.testing.assert_close(lin(x), expected, atol=1e-5, rtol=1e-5)   # the original is untouched


def test_choice_is_validated(monkeypatch):
    with pytest.raises(ConfigError, match="'cpu_gemm' parameter must be one of auto, onednn, torch. Got 'mkl'"):
        HFCausalLM("bundled", cpu_gemm="mkl")
    monkeypatch.setenv(cpu_gemm.ENV, "fast")
    with pytest.raises(ConfigError, match=r"\$THRESHER_CPU_GEMM\) must be one of"):
        cpu_gemm.choose(None, torch)
    monkeypatch.setenv(cpu_gemm.ENV, "torch")
    assert cpu_gemm.choose(None, torch) == "torch" and cpu_gemm.choose("auto", torch) in ("onednn", "torch")
