"""The one reader of a `thresher train` run folder (thresher.models.runs), on folders built by hand (no
training): a LoRA run, a full run, a run without final/, a missing or damaged config.json; and the users
that read through it: merge's fedavg row weights, export and the pipeline's model folder, the resume checks,
and the gradient scorers' template/max_length/turns defaults."""

from __future__ import annotations

import json
import re
import shutil

import pytest

from thresher.errors import ConfigError
from thresher.models.runs import TrainingRunFolder, write_config, write_train_ids

SAVED = {"lora": True, "model": "bundled", "template": "chat", "max_length": 96, "turns": "first"}
A_KEY = "base_model.model.model.layers.0.self_attn.q_proj.lora_A.weight"


def _write(path, obj):
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(obj), encoding="utf-8")


def _run(path, *, final="lora", ids=("a", "b", "c"), config=None, seed=0):
    """A run folder as `thresher train` leaves it: config.json, train_ids.json, summary.json and final/
    ("lora": a tiny PEFT adapter with a tokenizer, "full": a plain model's config.json, None: no final/)."""
    write_config(path, {**SAVED, **(config or {})}, "default", "bundled:0123abcd")
    write_train_ids(path, ids, {"z": "prompt fills max_length"})
    _write(path / "summary.json", {"global_step": 2, "max_steps": 2, "n_examples": len(ids), "n_skipped": 1,
                                   "final": str(path / "final") if final else None})
    if final == "lora":
        _lora_final(path / "final", seed)
    elif final == "full":
        _write(path / "final" / "config.json", {"architectures": ["LlamaForCausalLM"]})
    return path


def _lora_final(final, seed):
    import torch
    from safetensors.torch import save_file

    from thresher.models.bundled import embedder_path

    final.mkdir(parents=True)
    g = torch.Generator().manual_seed(seed)
    save_file({A_KEY: torch.randn(2, 4, generator=g), A_KEY.replace("lora_A", "lora_B"): torch.randn(4, 2, generator=g)},
              str(final / "adapter_model.safetensors"))
    _write(final / "adapter_config.json", {"r": 2, "lora_alpha": 4, "target_modules": ["q_proj"],
                                           "peft_type": "LORA", "base_model_name_or_path": "bundled"})
    for name in ("tokenizer.json", "tokenizer_config.json", "special_tokens_map.json", "vocab.txt"):
        shutil.copy(embedder_path() / name, final / name)


# ------------------------------------------------------------------ the reader
def test_a_lora_run(tmp_path):
    run = TrainingRunFolder(_run(tmp_path / "run"))
    assert run.config == SAVED and run.preset == "default" and run.model_identity == "bundled:0123abcd"
    assert run.base_model == "bundled"
    assert run.ids == ["a", "b", "c"] and run.skipped == {"z": "prompt fills max_length"} and run.rows == 3
    assert run.summary["final"] == str(tmp_path / "run" / "final")
    assert run.has_records and run.finished and run.is_lora and not run.is_full
    assert run.adapter_config["r"] == 2 and run.final_dir == tmp_path / "run" / "final"
    assert run.model_dir is None                                  # an adapter is not a plain model folder
    _write(run.merged_dir / "config.json", {})
    assert run.has_merged and run.model_dir == tmp_path / "run" / "merged"
    assert run.iterit_selected_ids == []
    for e, ids in ((2, ["c", "a"]), (10, ["b"]), (1, ["a", "b", "c"])):        # epoch order, not name order
        _write(run.iterit_dir / f"epoch-{e}.json", {"epoch": e, "selected_ids": ids})
    assert run.iterit_selected_ids == ["b"]


def test_a_full_run(tmp_path):
    from thresher.pipeline.train_stage import trained_model_dir
    from thresher.training.export import export_merged

    run = TrainingRunFolder(_run(tmp_path / "run", final="full", config={"lora": False}))
    assert run.is_full and not run.is_lora and run.finished and run.model_dir == run.final_dir
    assert export_merged(run.path) == run.final_dir and trained_model_dir(run.path) == str(run.final_dir)
    with pytest.raises(ConfigError, match=re.escape("has no finished LoRA adapter (final/adapter_config.json is "
                                                    "missing)")):
        run.adapter_config


def test_a_run_without_final(tmp_path):
    from thresher.pipeline.train_stage import trained_model_dir
    from thresher.training.export import export_merged

    path = _run(tmp_path / "run", final=None)
    (path / "summary.json").unlink()                              # stopped before its last step, killed
    run = TrainingRunFolder(path)
    assert run.has_records and not run.finished and not run.is_lora and not run.is_full and run.model_dir is None
    assert run.config == SAVED and run.rows == 3                  # its records are there all the same
    with pytest.raises(ConfigError, match=re.escape(f"{path} has no summary.json: the run has not finished")):
        run.summary
    with pytest.raises(ConfigError, match="has no finished model in final/"):
        export_merged(path)
    with pytest.raises(ConfigError, match="holds no loadable model"):
        trained_model_dir(path)


@pytest.mark.parametrize("text,message", [
    (None, "is not a thresher training run (no config.json)"),
    ('{"config": {"lora": tr', "config.json cannot be read as JSON"),
    ('[1, 2]', "config.json must hold a JSON object. Got list"),
    ('{"architectures": ["LlamaForCausalLM"]}', "config.json must have a 'config' object. Got NoneType"),
])
def test_a_missing_or_damaged_config_is_a_clear_error(tmp_path, text, message):
    from thresher.training.merge import merge_runs

    good, bad = _run(tmp_path / "good"), _run(tmp_path / "bad", seed=1)
    (bad / "config.json").unlink()
    if text is not None:
        (bad / "config.json").write_text(text, encoding="utf-8")
    with pytest.raises(ConfigError, match=re.escape(message)) as err:
        TrainingRunFolder(bad).config
    assert str(bad) in str(err.value)
    with pytest.raises(ConfigError, match=re.escape(message)):
        merge_runs([good, bad], tmp_path / "out")
    assert not (tmp_path / "out").exists()


def test_records_of_another_program_and_bad_train_ids(tmp_path):
    other = tmp_path / "hf-run"
    _write(other / "config.json", {"architectures": ["LlamaForCausalLM"]})     # a model's config.json
    assert TrainingRunFolder(other).config_or_none() is None
    assert TrainingRunFolder(tmp_path / "nothing").config_or_none() is None
    assert not TrainingRunFolder(other).has_records and TrainingRunFolder(other).rows is None
    run = _run(tmp_path / "run", final=None)
    assert TrainingRunFolder(run).config_or_none() == SAVED
    _write(run / "train_ids.json", {"ids": "a,b"})
    with pytest.raises(ConfigError, match=re.escape("train_ids.json must have a 'ids' list. Got str")):
        TrainingRunFolder(run).rows


# ------------------------------------------------------------------ its users
def test_fedavg_weighs_runs_by_the_rows_their_train_ids_record(tmp_path):
    import torch
    from safetensors.torch import load_file

    from thresher.training.merge import merge_runs

    a = _run(tmp_path / "a", ids=[f"r{i}" for i in range(3)], seed=0)
    b = _run(tmp_path / "b", ids=["s0"], seed=1)
    out = merge_runs([a, b], tmp_path / "fed", method="fedavg")
    rec = json.loads((out / "merge.json").read_text())
    assert [r["rows"] for r in rec["runs"]] == [3, 1] and rec["weights"] == [0.75, 0.25]
    got, sa, sb = (load_file(str(p / "adapter_model.safetensors")) for p in (out, a / "final", b / "final"))
    assert torch.allclose(got[A_KEY], 0.75 * sa[A_KEY] + 0.25 * sb[A_KEY], atol=1e-7)

    _write(b / "train_ids.json", {"ids": [f"s{i}" for i in range(9)], "skipped": {}})
    rec = json.loads((merge_runs([a, b], tmp_path / "fed9", method="fedavg") / "merge.json").read_text())
    assert rec["weights"] == [0.25, 0.75]


def test_resume_refuses_a_changed_config_read_through_the_reader(tmp_path):
    from thresher.models.checkpoints import mark_complete
    from thresher.training.config import resolve_config
    from thresher.training.sft import _check_run_dir

    cfg = resolve_config(None, {"max_length": 96})
    run = _run(tmp_path / "run", final=None, config=cfg.as_dict())
    _checkpoint(run / "checkpoint-2")
    mark_complete(run / "checkpoint-2")
    assert _check_run_dir(run, cfg, ["a", "b", "c"], True) == run / "checkpoint-2"
    with pytest.raises(ConfigError, match=re.escape("these settings differ from the saved run: max_length (96 -> 64)")):
        _check_run_dir(run, resolve_config(None, {"max_length": 64}), ["a", "b", "c"], True)
    with pytest.raises(ConfigError, match="the rows to train on differ"):
        _check_run_dir(run, cfg, ["a", "b"], True)
    (run / "config.json").write_text("{", encoding="utf-8")
    with pytest.raises(ConfigError, match="config.json cannot be read as JSON"):
        _check_run_dir(run, cfg, ["a", "b", "c"], True)


def _checkpoint(d, lr=1e-4):
    """A complete-looking LoRA checkpoint (the files a gradient scorer's run listing reads, not real tensors)."""
    d.mkdir(parents=True)
    _write(d / "trainer_state.json", {"epoch": 1.0, "log_history": [{"step": 2, "epoch": 1.0, "learning_rate": lr}]})
    _write(d / "optimizer_params.json", {"param_groups": [[]]})
    _write(d / "adapter_config.json", {"r": 2, "lora_alpha": 4})
    (d / "adapter_model.safetensors").write_bytes(b"w" * 64)
    (d / "optimizer.pt").write_bytes(b"o" * 32)


@pytest.mark.parametrize("config,params,want", [
    ({"template": "chat", "max_length": 96, "turns": "first"}, {}, ("chat", 96, "first")),
    ({"template": "chat", "max_length": 96, "turns": "all"}, {}, ("chat", 96, "last")),   # per-sample gradient
    ({"template": "chat", "max_length": 96}, {"template": "alpaca", "max_length": 64}, ("alpaca", 64, "first")),
    (None, {}, ("alpaca", 512, "last")),                          # no thresher config.json: the defaults
])
def test_gradient_scorers_take_template_and_max_length_from_the_run(tmp_path, config, params, want):
    from thresher.models.checkpoints import mark_complete
    from thresher.scoring.registry import make_scorer

    run = tmp_path / "run"
    if config is None:
        _write(run / "config.json", {"architectures": ["LlamaForCausalLM"]})
    else:
        write_config(run, {**SAVED, **config}, None, "bundled:0123abcd")
    _checkpoint(run / "checkpoint-2")
    mark_complete(run / "checkpoint-2")
    sc = make_scorer("less", checkpoints=str(run), target=["unused.jsonl"], **params)
    sc.run()
    assert (sc.params.template, sc.params.max_length, sc.params.turns) == want


def test_gradient_scorer_names_a_damaged_config(tmp_path):
    from thresher.models.checkpoints import mark_complete
    from thresher.scoring.registry import make_scorer

    run = tmp_path / "run"
    _checkpoint(run / "checkpoint-2")
    mark_complete(run / "checkpoint-2")
    (run / "config.json").write_text('{"config": ', encoding="utf-8")
    with pytest.raises(ConfigError, match=re.escape(f"{run / 'config.json'} cannot be read as JSON")):
        make_scorer("clues", checkpoints=str(run), validation=["unused.jsonl"]).run()
