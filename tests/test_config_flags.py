"""Flags generated from the config dataclasses (thresher.config.add_flags / given) and `thresher ls`.

Every case is generated from ``dataclasses.fields``: a field added to TrainConfig, EvalConfig, DataConfig
or JudgeConfig without a flag, or a flag whose type or choices drift from its field, fails here. No model is
loaded except one tiny random-weight model trained for one step (the max_grad_norm recipe case).
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import typing

import pytest
import yaml

from thresher import cli
from thresher.cli import main
from thresher.config import add_flags, build, describe, dest, given, option
from thresher.errors import ConfigError
from thresher.evaluation import EvalConfig, evaluate
from thresher.models.judges import JudgeConfig
from thresher.pipeline.config import RUN_OPTIONS
from thresher.pipeline.recipe import DataConfig, Recipe
from thresher.registry import Registry
from thresher.scoring.registry import SCORERS
from thresher.selection.registry import SELECTORS
from thresher.training.config import TrainConfig, resolve_config

from samples import ALPACA

# (command, dataclass, add_flags/given keywords): every group of generated flags the CLI has.
GROUPS = [
    ("train", TrainConfig, {}),
    ("train", DataConfig, {"exclude": ("path",)}),
    ("eval", EvalConfig, {}),
    ("eval", JudgeConfig, {"prefix": "judge"}),
    ("run", DataConfig, {"exclude": ("path",)}),
    ("run", JudgeConfig, {"prefix": "judge"}),
    ("run", Recipe, {"only": RUN_OPTIONS}),
    ("score", DataConfig, {"exclude": ("path",)}),
    ("score", Recipe, {"only": RUN_OPTIONS}),
]
IDS = [f"{c}-{cls.__name__}" for c, cls, _ in GROUPS]
# Values the generic rule below would pick but the dataclass's own check refuses.
SAMPLES = {(JudgeConfig, "kind"): "vllm", (JudgeConfig, "base_url"): "http://localhost:9/v1",
           (JudgeConfig, "api_key_env"): "MY_JUDGE_KEY", (EvalConfig, "temperature"): "mt-bench",
           (EvalConfig, "questions"): [81, "q2"]}


def subparser(command: str) -> argparse.ArgumentParser:
    ap = cli.build_parser()
    return next(a for a in ap._actions if isinstance(a, argparse._SubParsersAction)).choices[command]


def fields(cls, kw) -> list[dataclasses.Field]:
    only, exclude = kw.get("only"), kw.get("exclude", ())
    return [f for f in dataclasses.fields(cls) if (only is None or f.name in only) and f.name not in exclude]


def sample(cls, f: dataclasses.Field):
    """A value of field ``f`` other than its default, that the dataclass accepts."""
    if (cls, f.name) in SAMPLES:
        return SAMPLES[cls, f.name]
    default = f.default_factory() if f.default_factory is not dataclasses.MISSING else f.default
    tp = typing.get_type_hints(cls)[f.name]
    kinds = {a for a in typing.get_args(tp) if a is not type(None)} or {tp}
    if f.metadata.get("choices"):
        return next(c for c in f.metadata["choices"] if c != default)
    if bool in kinds:
        return not default
    if int in kinds:
        return (default or 0) + 3
    if float in kinds:
        return 0.5 if default != 0.5 else 0.25
    if list in kinds:
        return ["a_proj", "b_proj"]
    return "x"


def argv_for(cls, f: dataclasses.Field, value, prefix: str) -> list[str]:
    """The command-line words that set ``f`` to ``value`` (spelled as the field's metadata says)."""
    spellings = f.metadata.get("flags")
    if spellings is None:
        stem = f"{prefix}-{f.name}" if prefix else f.name
        stem = stem.replace("_", "-")
        spellings = {f"--{stem}": True, f"--no-{stem}": False} if isinstance(value, bool) else {f"--{stem}": str}
    for flag, how in spellings.items():
        if not callable(how) and how == value:
            return [flag]
    flag = [fl for fl, how in spellings.items() if callable(how)][-1]
    return [flag, ",".join(map(str, value)) if isinstance(value, list) else str(value)]


# ------------------------------------------------------------------------------ every field has a flag
@pytest.mark.parametrize("command,cls,kw", GROUPS, ids=IDS)
def test_every_field_has_a_flag_with_help(command, cls, kw):
    parser = subparser(command)
    dests = {a.dest for a in parser._actions}
    missing = [f.name for f in fields(cls, kw) if dest(f.name, kw.get("prefix", "")) not in dests]
    assert not missing, f"`thresher {command}` has no flag for {cls.__name__} field(s) {missing}"
    assert all(f.metadata.get("help") for f in fields(cls, kw)), f"{cls.__name__}: a field without help"


def test_the_cli_takes_every_field_of_the_four_configs():
    """Not a subset: all of TrainConfig, EvalConfig and JudgeConfig, and DataConfig less its path (the
    positional data argument, or run's --data)."""
    covered = {(cls, f.name) for _, cls, kw in GROUPS for f in fields(cls, kw)}
    for cls in (TrainConfig, EvalConfig, JudgeConfig, DataConfig):
        assert {f.name for f in dataclasses.fields(cls)} - {n for c, n in covered if c is cls} <= {"path"}


@pytest.mark.parametrize("command,cls,kw", GROUPS, ids=IDS)
def test_flags_default_to_none_so_the_dataclass_supplies_the_value(command, cls, kw):
    parser = subparser(command)
    for a in parser._actions:
        if a.dest in {dest(f.name, kw.get("prefix", "")) for f in fields(cls, kw)}:
            assert a.default is None, a.option_strings
    args = parser.parse_args(_required(command))
    assert given(args, cls, **kw) == {}


@pytest.mark.parametrize("command,cls,kw", GROUPS, ids=IDS)
def test_flags_round_trip_into_build(command, cls, kw):
    """Each field set on the command line to a non-default value comes back through given() and build()."""
    prefix = kw.get("prefix", "")
    want = {f.name: sample(cls, f) for f in fields(cls, kw)}
    argv = [w for f in fields(cls, kw) for w in argv_for(cls, f, want[f.name], prefix)]
    got = given(subparser(command).parse_args(_required(command) + argv), cls, **kw)
    assert got == want
    obj = build(cls, got, cls.__name__)
    assert {k: getattr(obj, k) for k in want} == want


@pytest.mark.parametrize("command,cls,kw", GROUPS, ids=IDS)
def test_choices_come_from_the_field_and_are_enforced(command, cls, kw, capsys):
    parser = subparser(command)
    by_dest = {a.dest: a for a in parser._actions if a.option_strings}
    for f in fields(cls, kw):
        if f.metadata.get("choices"):
            action = by_dest[dest(f.name, kw.get("prefix", ""))]
            assert tuple(action.choices) == f.metadata["choices"]
            with pytest.raises(SystemExit):
                parser.parse_args(_required(command) + [action.option_strings[0], "no-such-choice"])
            assert "invalid choice" in capsys.readouterr().err


def _required(command: str) -> list[str]:
    return {"train": ["d.jsonl", "--out", "o"], "eval": ["bundled", "--out", "o"], "run": ["recipe"],
            "score": ["d.jsonl", "--scorer", "ifd", "--out", "o"]}[command]


# ------------------------------------------------------------------------------ the spellings people use
def test_existing_flag_spellings_keep_working():
    train = subparser("train").parse_args(["d", "--out", "o", "--full", "--no-mask-prompt", "--no-eos",
                                           "--target-modules", "q_proj, k_proj", "--max-grad-norm", "0.5"])
    assert given(train, TrainConfig) == {"lora": False, "mask_prompt": False, "add_eos": False,
                                         "target_modules": ["q_proj", "k_proj"], "max_grad_norm": 0.5}
    ev = subparser("eval").parse_args(["m", "--out", "o", "--bootstrap", "50", "--question-ids", "81,82",
                                       "--no-single", "--temperature", "0.7", "--judge", "api",
                                       "--judge-model", "gpt-4o-mini", "--judge-allow-http"])
    assert given(ev, EvalConfig) == {"n_resamples": 50, "questions": [81, 82], "single": False, "temperature": 0.7}
    assert given(ev, JudgeConfig, prefix="judge") == {"kind": "api", "model": "gpt-4o-mini", "allow_http": True}
    assert given(subparser("eval").parse_args(["m", "--out", "o", "--questions", "3"]), EvalConfig) == {"questions": 3}


def test_temperature_takes_a_float_or_mt_bench_only(capsys):
    p = subparser("eval")
    assert p.parse_args(["m", "--out", "o", "--temperature", "mt-bench"]).temperature == "mt-bench"
    with pytest.raises(SystemExit):
        p.parse_args(["m", "--out", "o", "--temperature", "warm"])
    assert "expected a float or mt-bench; got 'warm'" in capsys.readouterr().err
    with pytest.raises(ConfigError, match="'temperature' parameter of evaluate must be a float, a mapping"):
        evaluate("bundled", out="unused", temperature="warm")


@pytest.mark.parametrize("command,flags", [
    ("train", ["--max-grad-norm", "--full", "--no-eos", "--no-mask-prompt", "--format", "--max-record-chars"]),
    ("eval", ["--bootstrap", "--question-ids", "--no-single", "--temperature", "--judge-allow-http"]),
    ("score", ["--max-length", "--span-rule", "--mode", "--judge-concurrency", "--max-failed-ratio"]),
    ("run", ["--data", "--on-invalid", "--lenient", "--shard-size", "--strict", "--judge-api-key-env"]),
])
def test_help_of_each_command_lists_its_generated_flags(command, flags, capsys):
    with pytest.raises(SystemExit) as e:
        main([command, "--help"])
    assert e.value.code == 0
    out = capsys.readouterr().out
    assert all(flag in out for flag in flags), [f for f in flags if f not in out]


def test_add_flags_refuses_a_field_type_it_cannot_parse():
    @dataclasses.dataclass
    class Odd:
        mapping: dict = option(default_factory=dict, help="no flag can spell this")

    with pytest.raises(TypeError, match="Odd.mapping: no flag for type dict"):
        add_flags(argparse.ArgumentParser(), Odd)


# ------------------------------------------------------------------------------ train() and evaluate()
def test_train_and_evaluate_reject_unknown_settings_before_any_work(tmp_path):
    from thresher.training.sft import train

    with pytest.raises(ConfigError, match="train has no parameter 'max_grad_nrom'. Did you mean 'max_grad_norm'"):
        train("no-such-data.jsonl", out=tmp_path / "run", max_grad_nrom=0.5)
    with pytest.raises(ConfigError, match="not both"):
        train("no-such-data.jsonl", out=tmp_path / "run", config=TrainConfig(), preset="cherry")
    with pytest.raises(ConfigError, match="evaluate has no parameter 'n_resample'. Did you mean 'n_resamples'"):
        evaluate("bundled", out=tmp_path / "eval", n_resample=10)
    assert not (tmp_path / "run").exists() and not (tmp_path / "eval").exists()


def test_a_train_config_is_the_base_that_overrides_change():
    cfg = resolve_config(None, {"seed": 7, "lr": None}, config=TrainConfig(lr=0.1, max_grad_norm=0.5))
    assert (cfg.lr, cfg.max_grad_norm, cfg.seed) == (0.1, 0.5, 7)
    with pytest.raises(ConfigError, match="must be a TrainConfig"):
        resolve_config(config={"lr": 0.1})


def test_train_keywords_and_train_config_fields_do_not_collide():
    import inspect

    from thresher.training.sft import train

    own = {n for n, p in inspect.signature(train).parameters.items() if p.kind is not p.VAR_KEYWORD}
    assert not own & {f.name for f in dataclasses.fields(TrainConfig)}


def test_max_grad_norm_in_a_recipe_passes_validate_and_reaches_the_trainer(tmp_path, capsys):
    """The bug: a TrainConfig field missing from train() passed `validate` and then failed with a TypeError
    after the earlier stages had run. Now the value reaches TRL's TrainingArguments."""
    import torch
    from tiny_model import save_tiny_llama

    model = save_tiny_llama(tmp_path / "tiny")
    data = tmp_path / "d.jsonl"
    data.write_text("".join(json.dumps(r) + "\n" for r in ALPACA[:4]), encoding="utf-8")
    params = {"max_grad_norm": 0.5, "max_steps": 1, "batch_size": 2, "max_length": 64, "lora": False,
              "add_eos": False, "device": "cpu", "dtype": "float32"}
    recipe = tmp_path / "r.yaml"
    recipe.write_text(yaml.safe_dump({"name": "clip", "model": str(model), "data": {"path": str(data)}, "stages": [
        {"name": "all", "select": {"selector": "full"}},
        {"name": "tune", "train": {"rows": "previous", "params": params}}]}), encoding="utf-8")
    assert main(["validate", str(recipe)]) == 0
    assert main(["run", str(recipe), "--out", str(tmp_path / "out"), "--cache-dir", str(tmp_path / "cache")]) == 0
    run = tmp_path / "out" / "tune"
    assert json.loads((run / "config.json").read_text())["config"]["max_grad_norm"] == 0.5
    args = torch.load(run / "checkpoint-1" / "training_args.bin", weights_only=False)
    assert args.max_grad_norm == 0.5


# ------------------------------------------------------------------------------ thresher ls
def test_ls_scorer_prints_its_parameters_from_the_params_dataclass(capsys):
    assert main(["ls", "scorers", "ifd"]) == 0
    out = capsys.readouterr().out
    row = next(line.split() for line in out.splitlines() if line.strip().startswith("max_length"))
    assert row[:3] == ["max_length", "int", "512"]
    assert "alpaca | wiz | vicuna | none | chat" in out and "offsets | cherry" in out
    assert main(["ls", "scorer", "ifd"]) == 0
    assert capsys.readouterr().out == out
    assert main(["ls", "scorers", "ifdd"]) == 2
    assert "Did you mean 'ifd'?" in capsys.readouterr().err


def test_ls_without_a_name_lists_as_before_and_presets_are_listed(capsys):
    assert main(["ls", "scorers"]) == 0
    out = capsys.readouterr().out
    assert out.startswith("scorers:") and "  ifd " in out and "parameter" not in out
    assert main(["ls", "presets"]) == 0
    out = capsys.readouterr().out
    assert "  cherry " in out and "lora=False" in out
    assert main(["ls", "templates", "alpaca"]) == 2


def test_ls_recipe_prints_its_description_and_stages(capsys):
    assert main(["ls", "recipes", "cherry"]) == 0
    out = capsys.readouterr().out
    assert "Cherry LLM" in out and "stage 'pre_train' (model bundled)" in out and "train: rows=previous" in out
    assert "score: ifd (variant=loss_ratio" in out and "select: cherry_ifd (ratio=0.06" in out
    assert main(["ls", "recipes", "chery"]) == 2 and "Did you mean 'cherry'?" in capsys.readouterr().err


@pytest.mark.parametrize("registry", [SCORERS, SELECTORS], ids=lambda r: r.kind)
def test_every_parameter_of_every_scorer_and_selector_has_help(registry):
    """Generated from the registries: a new scorer or selector whose Params field has no help fails here."""
    missing = [f"{registry.kind} {name}: {p.name}" for name in registry
               for p in describe(registry.get(name).Params) if not p.help.strip()]
    assert not missing, "declare these fields with thresher.config.option / choice (help=...): " + ", ".join(missing)
    for name in registry:                                   # and `thresher ls KIND NAME` shows the help
        shown = cli.format_params(registry, name)
        assert all(p.help in shown for p in describe(registry.get(name).Params)), name
        produces = getattr(registry.get(name), "produces", {})            # scorers: the columns they write
        rows = {line.split()[0] for line in shown.splitlines()[1:] if line.strip()}
        assert {f.name for f in dataclasses.fields(registry.get(name).Params)} <= rows, name   # every parameter
        assert set(produces) <= rows, name


def test_ls_scorer_lists_its_columns_and_marks_the_main_one(capsys):
    assert main(["ls", "scorers", "length"]) == 0
    out = capsys.readouterr().out.splitlines()
    assert any(line.split()[:1] == ["resp_tokens"] and "(main column; higher is better)" in line for line in out)
    assert any(line.split()[:1] == ["resp_chars"] and "main column" not in line for line in out)


@dataclasses.dataclass
class _WidgetParams:
    size: int = option(help="how big, >= 1")
    shape: str = option("round", choices=("round", "square"), help="outline")


class _Widget:
    """A made-up component: format_params works over any Registry whose entries have Params."""
    Params = _WidgetParams


def test_format_params_is_generic_over_a_registry():
    widgets = Registry("widget")
    widgets.register("w", "test_config_flags:_Widget")
    lines = cli.format_params(widgets, "w").splitlines()
    assert lines[0] == "widget w: A made-up component: format_params works over any Registry whose entries have Params."
    assert lines[2].split() == ["size", "int", "required", "how", "big,", ">=", "1"]
    assert lines[3].split()[:5] == ["shape", "str", "'round'", "round", "|"]
