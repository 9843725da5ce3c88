"""IterIT inside real training: the bundled model is LoRA-trained for two tiny epochs with the IterIT sampler
and callback; the complexity score is thresher's IFD (perplexity ratio) computed on the live model.

Checked: epoch 0 scores the whole pool with the untrained model and equals the IFD scorer run separately on
the base model; after epoch 0 exactly the window (update_ratio x k first positions) is re-scored, with the
trained model (its scores move); each epoch trains the first k positions of the current order."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch

from thresher.engine.scoring import score_dataset
from thresher.scoring import make_scorer

pytestmark = pytest.mark.slow
KW = dict(max_length=96, turns="first", batch_size=2, grad_accum=1, epochs=2, lr=5e-3, logging_steps=1,
          device="cpu", dtype="float32", seed=0, template="chat", save_steps=1000)


@pytest.fixture(scope="module", autouse=True)
def _one_thread(one_thread):
    yield


def test_iterit_rescores_window_with_the_trained_model(sharegpt_short, ctx, tmp_path, cache_root):
    from thresher.training import IFDRescorer, IterITCallback, IterITSampler, train

    data = sharegpt_short.subset(range(12))
    sampler = IterITSampler(IFDRescorer(), k=3, update_ratio=2, score_type="BOTH", decay=0.1)
    res = train(data, out=tmp_path / "run", sampler=sampler, callbacks=[IterITCallback(sampler)], **KW)
    assert res.global_step == 4                                   # 2 epochs x 3 rows / batch 2 -> 2 steps each

    log0 = json.loads((tmp_path / "run" / "iterit" / "epoch-0.json").read_text())
    log1 = json.loads((tmp_path / "run" / "iterit" / "epoch-1.json").read_text())
    assert sorted(log0["rescored"]) == list(range(12))            # the whole pool at epoch 0
    base = score_dataset(data, make_scorer("ifd", variant="ppl_ratio", template="chat", max_length=96,
                                           turns="first"), ctx, cache_root=cache_root)
    s0 = np.array([np.nan if v is None else v for v in log0["rescored_scores"]])
    np.testing.assert_allclose(s0, base["ifd_ppl_ratio"].to_numpy()[log0["rescored"]], atol=1e-4)

    assert log1["rescored"] == log0["order"][:6]                  # exactly the window: 2 x k first positions
    before = dict(zip(log0["rescored"], s0))
    after = np.array([np.nan if v is None else v for v in log1["rescored_scores"]])
    moved = np.abs(after - np.array([before[r] for r in log1["rescored"]]))
    assert np.nanmax(moved) > 1e-3                                # re-scored with the trained model
    assert log1["selected"] == log1["order"][:3] and log0["selected"] == log0["order"][:3]
    trained = json.loads((tmp_path / "run" / "epochs" / "epoch-1.json").read_text())
    assert sorted(map(str, trained if isinstance(trained, list) else trained.get("ids", []))) == \
        sorted(map(str, log1["selected_ids"]))


def test_merged_export_scores_like_the_adapter_model(sharegpt_short, tmp_path, cache_root):
    """A LoRA run exported with export_merged loads as a plain model folder and gives the trained model's
    numbers: IFD from the merged folder equals IFD on the live PEFT model (which differs from the base)."""
    from thresher.models.hf import HFCausalLM
    from thresher.models.context import ModelContext
    from thresher.training import export_merged, train

    data = sharegpt_short.subset(range(8))
    res = train(data, out=tmp_path / "run", **{**KW, "epochs": 1, "template": "alpaca"})
    merged = export_merged(res.out)
    assert (merged / "config.json").exists() and list(merged.glob("*.safetensors"))
    scorer = lambda: make_scorer("ifd", template="alpaca", max_length=96, turns="first")
    from_folder = score_dataset(data, scorer(), ModelContext(str(merged), device="cpu", dtype="float32"),
                                cache_root=cache_root)
    live = ModelContext("live")
    live._lm = HFCausalLM.from_model(res.model.eval(), res.tokenizer, identity="merged-test")
    with torch.no_grad():
        from_live = score_dataset(data, scorer(), live, cache_root=tmp_path / "c")
    np.testing.assert_allclose(from_folder["ifd"], from_live["ifd"], atol=1e-4)
    base = score_dataset(data, scorer(), ModelContext("bundled", device="cpu", dtype="float32"), cache_root=cache_root)
    assert np.nanmax(np.abs(from_folder["ifd"] - base["ifd"])) > 1e-3
