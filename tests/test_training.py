"""Supervised fine-tuning layer: prompt masks equal to the scorer's spans, LoRA steps on the bundled model,
optimizer state in checkpoints, exact resume, the epoch-sampler hook, presets."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
from transformers import TrainerCallback

from thresher.data import split_turns
from thresher.data.templates import render
from thresher.errors import ConfigError
from thresher.data.spans import build_spans
from thresher.models.checkpoints import MARKER, checkpoint_problem, last_checkpoint, learning_rates, load_adam_moments
from thresher.training import IGNORE, PRESETS, build_examples, resolve_config, train
from thresher.training.hooks import StopAtStep

MAX_LEN = 128
# The fixture's rows are short first turns of real ShareGPT conversations: train on the first turn.
# Training runs are kept tiny for a busy 2-core CPU: 4 steps of 2 x 2 sequences of at most 96 tokens.
TRAIN_LEN = 96
KW = dict(max_length=TRAIN_LEN, turns="first", batch_size=2, grad_accum=2, max_steps=4, save_steps=2,
          lr=5e-3, lora_dropout=0.05, logging_steps=1, device="cpu", dtype="float32", seed=0)


@pytest.fixture(scope="module", autouse=True)
def one_thread():
    """On a shared 2-core machine two intra-op threads spin against other processes: a LoRA step measured
    5-8x slower than with one thread. One thread keeps this module's runtime predictable."""
    n = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(n)


@pytest.fixture(scope="module")
def data(sharegpt_short):
    return sharegpt_short.subset(range(64))


@pytest.fixture(scope="module")
def tok(ctx):
    return ctx.lm().tokenizer


# ------------------------------------------------------------------ prompt mask == scorer's span
@pytest.mark.parametrize("template", ["alpaca", "chat"])
def test_labels_mask_exactly_the_scorers_prompt(data, tok, template):
    ex = build_examples(data, tok, template=template, max_length=MAX_LEN, turns="first", add_eos=False)
    # The IFD scorer's spans, computed here from the same rows with the scoring code.
    pairs = [split_turns(m, "first")[0] for m in data.messages]
    units = [render(template, c, r, meta, tok) for (c, r), meta in zip(pairs, data.meta)]
    sp = build_spans(tok, units, MAX_LEN)
    ok = [i for i, s in enumerate(sp.status) if s == "ok"]
    assert list(ex.rows) == ok and len(ok) >= 40
    assert set(ex.skipped) == set(range(len(data))) - set(ok)
    for j, i in enumerate(ok):
        s, e = sp.cond_span[i]
        np.testing.assert_array_equal(ex.input_ids[j], sp.cond_ids[i])
        supervised = np.flatnonzero(ex.labels[j] != IGNORE)
        np.testing.assert_array_equal(supervised, np.arange(s, e))
        np.testing.assert_array_equal(ex.labels[j][s:e], ex.input_ids[j][s:e])
        # Independent check on text: the prompt part decodes to a prefix of the rendered prompt and the
        # supervised part holds the response (offsets rule: a boundary-straddling token is response).
        head = tok.decode(ex.input_ids[j][:s])
        body = tok.decode(ex.input_ids[j][s:e])
        assert units[i].prompt.startswith(head)
        if e < MAX_LEN:
            assert units[i].response.strip() in body and len(body) - len(units[i].response) <= 2


def test_eos_is_supervised_after_untruncated_response(data, tok):
    plain = build_examples(data, tok, template="alpaca", max_length=MAX_LEN, turns="first", add_eos=False)
    eos = build_examples(data, tok, template="alpaca", max_length=MAX_LEN, turns="first", add_eos=True)
    for a_ids, b_ids, b_lab, (s, e) in zip(plain.input_ids, eos.input_ids, eos.labels, eos.span):
        if e < MAX_LEN:
            assert len(b_ids) == e + 1 and b_ids[-1] == tok.eos_token_id and b_lab[-1] == tok.eos_token_id
        else:                                     # response cut by max_length: no eos invented
            assert len(b_ids) == MAX_LEN
        np.testing.assert_array_equal(b_ids[:e], a_ids)
        assert (b_lab[:s] == IGNORE).all() and (b_lab[s:] != IGNORE).all()


def test_unmasked_labels_cover_everything_but_padding(data, tok):
    from trl.trainer.sft_trainer import DataCollatorForLanguageModeling

    ex = build_examples(data, tok, template="alpaca", max_length=MAX_LEN, turns="first", mask_prompt=False)
    for ids, lab in zip(ex.input_ids, ex.labels):
        np.testing.assert_array_equal(lab, ids)
    # Padded the way the trainer pads: padding, and only padding, carries no label.
    batch = DataCollatorForLanguageModeling(pad_token_id=tok.pad_token_id)(
        [{"input_ids": ex.input_ids[i].tolist(), "labels": ex.labels[i].tolist()} for i in range(8)])
    real = batch["attention_mask"].bool()
    assert (~real).any()                          # the batch has ragged lengths
    assert (batch["labels"][~real] == IGNORE).all()
    assert torch.equal(batch["labels"][real], batch["input_ids"][real])


def test_prompt_filling_max_length_is_skipped_with_reason(data, tok):
    ex = build_examples(data.subset([0]), tok, template="alpaca", max_length=8, turns="first")
    assert len(ex) == 0 and ex.skipped == {0: "prompt fills max_length"}


# ------------------------------------------------------------------ a sampler hook (IterIT's shape)
class RotatingSampler:
    """4 positions per epoch (one optimiser step); after each epoch the window rotates (the state changes
    only in on_epoch_end, as the hook contract asks)."""

    def __init__(self):
        self.order = None

    def bind(self, plan):
        self.n_rows = len(plan.table)
        if self.order is None:
            self.order = list(range(self.n_rows))

    def __len__(self):
        return 4

    def epoch_indices(self, epoch):
        return self.order[:4]

    def advance(self):
        self.order = self.order[4:] + self.order[:4]

    def state_dict(self):
        return {"order": self.order}

    def load_state_dict(self, d):
        self.order = list(d["order"])


class Advance(TrainerCallback):
    def __init__(self, sampler):
        self.sampler = sampler

    def on_epoch_end(self, args, state, control, **kw):
        self.sampler.advance()


def _run(data, out, stop=None):
    s = RotatingSampler()
    cbs = [Advance(s)] + ([StopAtStep(stop)] if stop else [])
    return train(data, out=out, sampler=s, callbacks=cbs, **KW)


@pytest.fixture(scope="module")
def runs(data, tmp_path_factory):
    root = tmp_path_factory.mktemp("sft")
    full = _run(data, root / "full")
    stopped = _run(data, root / "resumed", stop=2)           # an interruption right after checkpoint-2
    resumed = _run(data, root / "resumed")
    return full, stopped, resumed


def _masked_loss(model, ex, rows):
    from trl.trainer.sft_trainer import DataCollatorForLanguageModeling

    batch = DataCollatorForLanguageModeling(pad_token_id=0)(
        [{"input_ids": ex.input_ids[i].tolist(), "labels": ex.labels[i].tolist()} for i in rows])
    model.eval()
    with torch.no_grad():
        return float(model(**batch).loss)


def test_lora_steps_lower_the_loss_and_change_the_adapter(runs, data, tok):
    full, _, _ = runs
    ex = build_examples(data, tok, template="alpaca", max_length=TRAIN_LEN, turns="first")
    trained_rows = sorted({i for e in range(4) for i in
                           json.loads((full.out / "epochs" / f"epoch-{e}.json").read_text())["ids"]})
    rows = [data.ids[ex.rows[i]] for i in range(len(ex))]
    batch = [rows.index(r) for r in trained_rows]
    after = _masked_loss(full.model, ex, batch)
    with full.model.disable_adapter():
        before = _masked_loss(full.model, ex, batch)
    assert after < before - 0.05, (before, after)
    from safetensors.torch import load_file
    mid = load_file(full.out / "checkpoint-2" / "adapter_model.safetensors")
    end = load_file(full.final_dir / "adapter_model.safetensors")
    assert len(end) == 2 * 2 * full.model.config.num_hidden_layers        # A, B of q_proj, v_proj per layer
    for k, v in end.items():
        assert not torch.equal(v, mid[k]), k
        if "lora_B" in k:                                                   # PEFT starts B at exactly 0
            assert v.abs().max() > 0


def test_checkpoints_keep_adam_moments_and_learning_rates(runs):
    full, _, _ = runs
    ck = last_checkpoint(full.out)
    assert ck.name == "checkpoint-4"
    moments = load_adam_moments(ck)
    from safetensors.torch import load_file
    weights = load_file(full.final_dir / "adapter_model.safetensors")
    assert len(moments) == len(weights) == 120
    for name, m in moments.items():
        # names line up with state ids: q_proj's B is (576, 8), v_proj's B (192, 8) in SmolLM2-135M
        stored = name.replace(".default.weight", ".weight")
        assert stored in weights and m["exp_avg"].shape == weights[stored].shape, name
        assert (m["exp_avg_sq"] >= 0).all() and m["exp_avg_sq"].abs().sum() > 0
        assert int(m["step"]) == 4
    # linear schedule, 4 steps, warm-up ceil(0.03 * 4) = 1 step: 0, lr, 2/3 lr, 1/3 lr
    lrs = learning_rates(ck)
    assert sorted(lrs) == [1, 2, 3, 4]
    np.testing.assert_allclose([lrs[s] for s in (1, 2, 3, 4)], [0, 5e-3, 5e-3 * 2 / 3, 5e-3 / 3], rtol=1e-6)


def test_resume_continues_from_the_saved_step_and_matches(runs):
    full, stopped, resumed = runs
    assert stopped.global_step == 2 and stopped.final_dir is None
    summary = json.loads((resumed.out / "summary.json").read_text())
    assert summary["resumed_from"].endswith("checkpoint-2")
    steps = [e["step"] for e in resumed.log_history if "loss" in e]
    assert steps == [1, 2, 3, 4]          # 1, 2 restored from the checkpoint, 3, 4 trained now
    assert resumed.global_step == 4
    # the sampler state came back: every epoch trained the same ids as the uninterrupted run
    for e in range(4):
        a = json.loads((full.out / "epochs" / f"epoch-{e}.json").read_text())["ids"]
        b = json.loads((resumed.out / "epochs" / f"epoch-{e}.json").read_text())["ids"]
        assert a == b and len(a) == 4
    assert json.loads((full.out / "epochs" / "epoch-1.json").read_text())["ids"] != \
        json.loads((full.out / "epochs" / "epoch-0.json").read_text())["ids"]
    # same data order, RNG (LoRA dropout) and optimizer state: the same final weights, bit for bit on CPU
    from safetensors.torch import load_file
    a = load_file(full.final_dir / "adapter_model.safetensors")
    b = load_file(resumed.final_dir / "adapter_model.safetensors")
    for k in a:
        torch.testing.assert_close(a[k], b[k], rtol=0, atol=1e-7)


def test_run_directory_records_config_versions_and_ids(runs, data):
    full, _, _ = runs
    cfg = json.loads((full.out / "config.json").read_text())
    assert cfg["config"]["lr"] == 5e-3 and cfg["config"]["mask_prompt"] is True
    assert cfg["model"].startswith("bundled:smollm2")
    versions = json.loads((full.out / "manifest.json").read_text())["versions"]
    assert versions["trl"] and versions["peft"] and versions["transformers"]
    ids = json.loads((full.out / "train_ids.json").read_text())
    assert len(ids["ids"]) + len(ids["skipped"]) == len(data)
    assert set(ids["skipped"].values()) <= {"prompt fills max_length", "empty response span"}


def test_resume_refuses_other_settings_or_fresh_start(runs, data):
    full, _, _ = runs
    with pytest.raises(ConfigError, match="lr"):
        train(data, out=full.out, **{**KW, "lr": 1e-3})
    with pytest.raises(ConfigError, match="already holds checkpoints"):
        train(data, out=full.out, resume=False, **KW)
    with pytest.raises(ConfigError, match="not in"):
        train(data, out=full.out / "x", ids=["no-such-id"], **KW)


# ------------------------------------------------------------------ presets
def test_presets_and_overrides():
    c = resolve_config("clues")
    assert (c.mask_prompt, c.lora_r, c.lora_alpha, c.max_steps, c.save_steps, c.batch_size * c.grad_accum) == \
        (False, 16, 16, 260, 65, 16)
    c = resolve_config("less_warmup", {"max_length": 128}, cpu_small=True)
    assert (c.lora_r, c.lora_alpha, c.epochs, c.max_length, c.batch_size) == (128, 512, 4.0, 128, 4)
    assert resolve_config("ds2").epochs == 5.0 and resolve_config("iterit").scheduler == "cosine"
    assert set(PRESETS) == {"cherry", "alpaca", "ds2", "clues", "less_warmup", "iterit"}
    with pytest.raises(ConfigError, match="Did you mean 'clues'"):
        resolve_config("clue")
    with pytest.raises(ConfigError, match="'lora_dropout' parameter of train must be a float in"):
        resolve_config(None, {"lora_dropout": 1.5})
    with pytest.raises(ConfigError, match="'scheduler' parameter of train must be one of"):
        resolve_config(None, {"scheduler": "step"})


# ------------------------------------------------------------------ CLI handler
def test_train_cli_preset_with_flag_overrides(tmp_path, capsys):
    import argparse

    from samples import ALPACA
    from thresher.training.cli import add_train_arguments, train_cli

    src = tmp_path / "sel.jsonl"
    src.write_text("\n".join(json.dumps(r) for r in ALPACA[:6]) + "\n", encoding="utf-8")
    p = argparse.ArgumentParser()
    add_train_arguments(p)
    args = p.parse_args([str(src), "--out", str(tmp_path / "run"), "--preset", "clues", "--cpu-small",
                         "--max-steps", "1", "--max-length", "64", "--batch-size", "2", "--device", "cpu",
                         "--target-modules", "q_proj,k_proj"])
    assert train_cli(args) == 0
    cfg = json.loads((tmp_path / "run" / "config.json").read_text())["config"]
    # preset (clues) < cpu_small < flags
    assert (cfg["mask_prompt"], cfg["lora_r"], cfg["max_length"], cfg["batch_size"], cfg["grad_accum"]) == \
        (False, 16, 64, 2, 1)
    assert cfg["target_modules"] == ["q_proj", "k_proj"]
    assert (tmp_path / "run" / "final" / "adapter_model.safetensors").is_file()
    assert "step 1/1" in capsys.readouterr().out


# ------------------------------------------------------------------ checkpoint completeness
def test_every_checkpoint_of_a_run_carries_thresher_files_and_its_marker(runs):
    full, stopped, resumed = runs
    assert [c.name for c in stopped.checkpoints] == ["checkpoint-2"]
    for res in (full, resumed):             # the stopped run's directory is the resumed run's
        assert [c.name for c in res.checkpoints] == ["checkpoint-2", "checkpoint-4"]
        assert sorted(d.name for d in res.out.glob("checkpoint-*")) == ["checkpoint-2", "checkpoint-4"]
        for ck in res.checkpoints:
            marker = json.loads((ck / MARKER).read_text())
            assert {"optimizer_params.json", "sampler_state.json", "trainer_state.json", "optimizer.pt",
                    "adapter_model.safetensors"} <= set(marker["files"]) <= {p.name for p in ck.iterdir()}
            assert all((ck / f).stat().st_size == n for f, n in marker["files"].items())
            assert checkpoint_problem(ck) is None
    # checkpoint-2 closes epoch 1: its sampler state is the one after that epoch's on_epoch_end (the window
    # advanced twice), because the marker waited for on_epoch_end
    order = json.loads((full.out / "checkpoint-2" / "sampler_state.json").read_text())["order"]
    rows = json.loads((full.out / "epochs" / "epoch-2.json").read_text())["ids"]
    assert [json.loads((full.out / "train_ids.json").read_text())["ids"][i] for i in order[:4]] == rows


def _fake_checkpoint(d: Path, sampler: bool = True) -> Path:
    d.mkdir(parents=True)
    for name, data in (("adapter_model.safetensors", b"w" * 64), ("optimizer.pt", b"o" * 32),
                       ("trainer_state.json", b'{"log_history": []}'),
                       ("optimizer_params.json", b'{"param_groups": [[]]}')):
        (d / name).write_bytes(data)
    if sampler:
        (d / "sampler_state.json").write_text('{"order": [1, 2, 3, 4]}')
    return d


def test_an_incomplete_checkpoint_is_skipped_with_a_warning_and_never_rotated_in(tmp_path, caplog):
    """The folders a kill leaves: transformers' files without thresher's (the old window: rotation had
    already run), a marker whose listed file is cut short or gone; resume takes the last complete one."""
    from thresher.models.checkpoints import mark_complete, require_complete, rotate

    (tmp_path / "train_ids.json").write_text('{"ids": []}')                   # a thresher run directory
    mark_complete(_fake_checkpoint(tmp_path / "checkpoint-2"), ("sampler_state.json",))
    _fake_checkpoint(tmp_path / "checkpoint-4", sampler=False)               # killed before its files
    cut = _fake_checkpoint(tmp_path / "checkpoint-6")
    mark_complete(cut, ("sampler_state.json",))
    (cut / "sampler_state.json").write_text('{"order": [1')                  # cut short after marking
    gone = _fake_checkpoint(tmp_path / "checkpoint-8")
    mark_complete(gone, ("sampler_state.json",))
    (gone / "optimizer.pt").unlink()
    with caplog.at_level("WARNING", logger="thresher.models.checkpoints"):
        assert last_checkpoint(tmp_path).name == "checkpoint-2"
    warned = "\n".join(r.getMessage() for r in caplog.records)
    assert "checkpoint-4: incomplete checkpoint (no thresher_complete.json" in warned
    assert "checkpoint-6: incomplete checkpoint (sampler_state.json has 12 bytes, thresher_complete.json says 23" in warned
    assert "checkpoint-8: incomplete checkpoint (optimizer.pt is missing)" in warned
    for d in ("checkpoint-4", "checkpoint-6", "checkpoint-8"):              # every reader refuses them
        with pytest.raises(ConfigError, match=f"{d} is an incomplete checkpoint"):
            require_complete(tmp_path / d)
        with pytest.raises(ConfigError, match="incomplete checkpoint"):
            learning_rates(tmp_path / d)
    with pytest.raises(ConfigError, match="incomplete checkpoint"):
        load_adam_moments(tmp_path / "checkpoint-4")
    from thresher.models.checkpoints import checkpoint_learning_rate
    with pytest.raises(ConfigError, match="incomplete checkpoint"):
        checkpoint_learning_rate(tmp_path / "checkpoint-6")
    # save_total_limit=1 keeps the last complete checkpoint however many incomplete ones follow it
    assert rotate(tmp_path, 1) == [] and (tmp_path / "checkpoint-2").is_dir()
    mark_complete(_fake_checkpoint(tmp_path / "checkpoint-10"), ("sampler_state.json",))
    assert rotate(tmp_path, 1) == [tmp_path / "checkpoint-2"]
    assert last_checkpoint(tmp_path).name == "checkpoint-10" and (tmp_path / "checkpoint-4").is_dir()
    assert last_checkpoint(tmp_path / "missing") is None


def test_a_stateful_sampler_never_resumes_without_its_state(tmp_path):
    from thresher.training import IterITSampler
    from thresher.models.checkpoints import mark_complete
    from thresher.training.hooks import restore_sampler

    ck = _fake_checkpoint(tmp_path / "checkpoint-2", sampler=False)          # a run with a stateless sampler
    mark_complete(ck)
    sampler = IterITSampler(lambda rows, **kw: np.zeros(len(rows)), k=1, responses=["a", "b"])
    with pytest.raises(ConfigError, match="checkpoint-2 holds no sampler_state.json.*IterITSampler"):
        restore_sampler(sampler, ck)


def test_a_plain_trainer_run_is_still_read_without_markers(tmp_path):
    from thresher.models.checkpoints import list_checkpoints, require_complete

    for step, state in ((2, "{}"), (3, '{"log_hist'), (10, "{}")):
        d = tmp_path / f"checkpoint-{step}"
        d.mkdir()
        (d / "trainer_state.json").write_text(state)
        (d / "adapter_model.safetensors").write_bytes(b"x")
        if step != 10:                                   # 10: the optimizer state was never written
            (d / "optimizer.pt").write_bytes(b"x")
    assert [d.name for d in list_checkpoints(tmp_path, foreign=True)] == ["checkpoint-2"]
    assert list_checkpoints(tmp_path) == []              # thresher's own runs need the marker
    require_complete(tmp_path / "checkpoint-2")          # a foreign checkpoint is read as it is


# ------------------------------------------------------------------ a real kill inside the save window
TINY_KW = dict(lora=False, max_length=64, template="alpaca", add_eos=False, batch_size=2, grad_accum=2,
               max_steps=4, save_steps=1, save_total_limit=1, lr=1e-3, logging_steps=1, device="cpu",
               dtype="float32", seed=0)


class KillAt(TrainerCallback):
    """SIGKILL in on_epoch_end after optimiser step ``step``: transformers has written checkpoint-<step>
    and the sampler has advanced; thresher's recorder (the last callback) has not written the sampler
    state and the marker yet. Before the fix, rotation had already deleted the previous checkpoint."""

    def __init__(self, step: int):
        self.step = step

    def on_epoch_end(self, args, state, control, **kw):
        if state.global_step == self.step:
            os.kill(os.getpid(), signal.SIGKILL)


def tiny_run(model, data, out, kill_at=None):
    s = RotatingSampler()
    cbs = [Advance(s)] + ([KillAt(int(kill_at))] if kill_at else [])
    return train(str(data), out=out, model=str(model), sampler=s, callbacks=cbs, **TINY_KW)


def test_a_run_killed_while_saving_resumes_from_the_last_complete_checkpoint(tmp_path, caplog):
    from samples import ALPACA
    from tiny_model import save_tiny_llama

    model = save_tiny_llama(tmp_path / "tiny")
    data = tmp_path / "d.jsonl"
    data.write_text("".join(json.dumps(r) + "\n" for r in ALPACA[:12]), encoding="utf-8")
    code = ("import sys, torch; torch.set_num_threads(1); sys.path.insert(0, sys.argv[1]); "
            "import test_training as t; t.tiny_run(*sys.argv[2:5], kill_at=2)")
    proc = subprocess.run([sys.executable, "-c", code, str(Path(__file__).parent), str(model), str(data),
                           str(tmp_path / "killed")], capture_output=True, text=True, timeout=300,
                          env={**os.environ, "PYTHONPATH": os.pathsep.join(sys.path)})
    assert proc.returncode == -signal.SIGKILL, proc.stderr[-2000:]
    killed = tmp_path / "killed"
    assert not (killed / "checkpoint-2" / MARKER).exists()
    assert (killed / "checkpoint-2" / "optimizer.pt").is_file()                # transformers' part is there
    assert last_checkpoint(killed).name == "checkpoint-1"                       # kept despite the limit of 1

    with caplog.at_level("WARNING", logger="thresher.training"):
        resumed = tiny_run(model, data, killed)
    warned = "\n".join(r.getMessage() for r in caplog.records)
    assert "checkpoint-2: incomplete checkpoint" in warned and "replacing" in warned
    assert json.loads((killed / "summary.json").read_text())["resumed_from"].endswith("checkpoint-1")
    reference = tiny_run(model, data, tmp_path / "reference")
    for e in range(4):                      # the sampler state came back: the same rows every epoch
        a = json.loads((reference.out / "epochs" / f"epoch-{e}.json").read_text())["ids"]
        assert a == json.loads((killed / "epochs" / f"epoch-{e}.json").read_text())["ids"]
    from safetensors.torch import load_file
    a = load_file(reference.final_dir / "model.safetensors")
    b = load_file(resumed.final_dir / "model.safetensors")
    for k in a:
        torch.testing.assert_close(a[k], b[k], rtol=0, atol=1e-7)
    for res in (resumed, reference):        # save_total_limit=1: only the last one left, and complete
        assert [p.name for p in res.out.glob("checkpoint-*")] == ["checkpoint-4"]
        assert checkpoint_problem(res.out / "checkpoint-4") is None
