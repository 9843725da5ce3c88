"""Command line: thresher score | select | run | guard | train | merge | eval | validate | ls.

Only this module configures logging. Every user-facing error is a ThresherError (or an OSError the user
can act on: a full disk, a permission): one `thresher: error:` line, exit status 2. Anything else is an
internal error: one line, exit status 1. With -v the traceback is printed too.
"""

from __future__ import annotations

import argparse
import dataclasses
import errno
import json
import logging
import os
import re
import sys
import textwrap
import traceback
from pathlib import Path

import yaml

from thresher import __version__
from thresher.algorithms.guard import GuardParams
from thresher.config import add_flags, build, describe, given
from thresher.data.readers import BUNDLED_SHAREGPT
from thresher.data.templates import TEMPLATES
from thresher.engine.base import ExecutorConfig
from thresher.errors import ConfigError, ThresherError, surface
from thresher.evaluation import evaluate
from thresher.evaluation.config import EvalConfig
from thresher.io import is_disk_full
from thresher.models.judges import JudgeConfig
from thresher.pipeline.bench import bench_noise, format_table
from thresher.pipeline.config import RUN_OPTIONS, DataConfig, GuardConfig, Recipe
from thresher.pipeline.dry_run import format_plan, plan_run
from thresher.pipeline.export import destination, export_run
from thresher.pipeline.guard import guard_job
from thresher.pipeline.recipe import (PACKAGED, check_recipe, guard_stage, load_recipe, read_recipe,
                                      set_dotted, set_guard)
from thresher.pipeline.run import run_recipe
from thresher.pipeline.select_run import select_from_run
from thresher.pipeline.summary import failure_line, format_summary
from thresher.progress import MODES, default_mode as default_progress_mode, set_mode as set_progress_mode
from thresher.reporting import write_report
from thresher.scoring import SCORERS, get_scorer
from thresher.scoring.ifd import IFDParams
from thresher.scoring.perplexity import PerplexityParams
from thresher.selection import SELECTORS
from thresher.training.cli import add_train_arguments, train_cli
from thresher.training.config import PRESETS
from thresher.training.merge import add_merge_arguments, merge_cli

log = logging.getLogger("thresher")


# ------------------------------------------------------------------------------------------ helpers
def _kv(items: list[str] | None, flag: str) -> dict:
    out = {}
    for item in items or []:
        if "=" not in item:
            raise ConfigError(f"{flag} expects key=value. Got {item!r}.")
        k, v = item.split("=", 1)
        out[k.strip()] = yaml.safe_load(v)
    return out


def _common_args(p: argparse.ArgumentParser) -> None:
    """Flags of `run` and `score`: data loading, the run's model and batching, the LLM judge."""
    add_flags(p.add_argument_group("data loading (default: the recipe's, else these)"), DataConfig,
              exclude=("path",))
    g = p.add_argument_group("model and run (default: the recipe's, else these)")
    add_flags(g, Recipe, only=RUN_OPTIONS)
    g.add_argument("--cache-dir", default=None, help="score cache root (default $THRESHER_CACHE or ~/.cache/thresher)")
    p.add_argument("--dry-run", action="store_true",
                   help="load the data and print what would run: per stage the rows, shards cached and to compute, "
                        "judge requests and estimated cost, models; loads no model, writes nothing")
    add_flags(p.add_argument_group("where the shards run (the scores and the cache are the same either way)"),
              ExecutorConfig)
    _judge_args(p)


def _judge_args(p: argparse.ArgumentParser) -> None:
    add_flags(p.add_argument_group("LLM judge (judge, opencs_* scorers; eval)"), JudgeConfig, prefix="judge")


def _load_options(args) -> dict:
    """The data-loading flags given, as ``thresher.data.load`` keywords."""
    options = given(args, DataConfig, exclude=("path",))
    if "format" in options:
        options["fmt"] = options.pop("format")
    return options


def _apply_common(raw: dict, args) -> None:
    data = raw.setdefault("data", {})
    if getattr(args, "data", None):
        # A user's own file: strict by default, whatever the recipe's demo slice allowed.
        data.update({"path": args.data, "lenient": False, "on_invalid": "fail", "limit": None})
    data.update(given(args, DataConfig, exclude=("path",)))
    raw.update(given(args, Recipe, only=RUN_OPTIONS))
    judge = given(args, JudgeConfig, prefix="judge")
    if judge:
        raw.setdefault("judge", {}).update(judge)


def _argv(args) -> list[str]:
    """The command line a manifest records: main()'s own argv when given one, else sys.argv."""
    return list(getattr(args, "argv", None) or sys.argv)


def _print_summary(summary: dict) -> int:
    """Print the summary; the exit status: 2 when more rows failed than max_failed_ratio allows."""
    print(format_summary(summary))
    failed = summary.get("failed") or {}
    if failed.get("exceeded"):
        print(f"thresher: error: {failure_line(failed)}", file=sys.stderr)
        return 2
    return 0


# ------------------------------------------------------------------------------------------ commands
def cmd_run(args) -> int:
    path, raw = read_recipe(args.recipe)
    _apply_common(raw, args)
    for flag in ("target", "anchor", "clients", "validation", "labels"):
        value = getattr(args, flag, None)
        if value:
            raw[flag] = value if flag == "labels" else (_existing(value, "--anchor") if flag == "anchor" else
                                                        [_existing(f, f"--{flag}") for f in value])
    if args.guard is not None:
        set_guard(raw, args.guard, str(path))
    for key, value in _kv(args.set, "--set").items():
        set_dotted(raw, key, value)
    recipe, data_cfg, stages = check_recipe(raw, str(path))
    if args.dry_run:
        return _dry_run(recipe, data_cfg, stages, args)
    out = Path(args.out or Path("runs") / (recipe.name or path.stem))
    summary = run_recipe(recipe, data_cfg, stages, out, argv=_argv(args), raw_recipe=raw, cache_root=args.cache_dir,
                         executor=given(args, ExecutorConfig))
    return _print_summary(summary)


def _existing(path: str, flag: str) -> str:
    if not Path(path).exists():
        raise ConfigError(f"{flag}: {path} does not exist. Give a data file (.json/.jsonl/.parquet) or a saved "
                          "Hugging Face dataset directory.")
    return str(Path(path).resolve())


# `thresher score` flags for scorer parameters: IFD's, and perplexity's own (the rest it shares with IFD).
_PERPLEXITY_ONLY = ("mode",)


def cmd_score(args) -> int:
    params = {**_kv(args.param, "--param"), **given(args, IFDParams),
              **given(args, PerplexityParams, only=_PERPLEXITY_ONLY)}
    stage = get_scorer(args.scorer).name            # a 'module:Class' scorer's stage folder is its own name
    raw = {"name": f"score-{stage}", "data": {"path": args.data},
           "stages": [{"name": stage, "score": [{"scorer": args.scorer, "params": params}]}]}
    _apply_common(raw, argparse.Namespace(**{**vars(args), "data": None}))
    recipe, data_cfg, stages = check_recipe(raw, "<command line>")
    if args.dry_run:
        return _dry_run(recipe, data_cfg, stages, args)
    summary = run_recipe(recipe, data_cfg, stages, Path(args.out), argv=_argv(args), raw_recipe=raw,
                         cache_root=args.cache_dir, executor=given(args, ExecutorConfig))
    return _print_summary(summary)


def cmd_guard(args) -> int:
    """`thresher guard DATA --out DIR`: the guard recipe's signals through run_recipe (cache, resume, progress,
    executor, dry run), then the verdict (thresher.pipeline.guard.guard_outputs)."""
    sets = _kv(args.set, "--set")
    path, raw = read_recipe(sets.get("guard.recipe", "guard"))     # the recipe scoring the signals
    _apply_common(raw, args)
    for key, value in sets.items():
        set_dotted(raw, key, value)
    recipe, data_cfg, stages, after = guard_job(raw, str(path), given(args, GuardParams))
    if args.dry_run:
        return _dry_run(recipe, data_cfg, stages, args)
    summary = run_recipe(recipe, data_cfg, stages, Path(args.out), argv=_argv(args), raw_recipe=raw,
                         cache_root=args.cache_dir, executor=given(args, ExecutorConfig), after=after)
    return _print_summary(summary)


def _dry_run(recipe, data_cfg, stages, args) -> int:
    guard = build(GuardConfig, recipe.guard, "guard")
    if guard.enabled:                     # the guard's signals are scored first (thresher.pipeline.guard)
        stages = [guard_stage(recipe, guard), *stages]
    print(format_plan(plan_run(recipe, data_cfg, stages, cache_root=args.cache_dir,
                               executor=given(args, ExecutorConfig))))
    return 0


def cmd_select(args) -> int:
    to, out = destination(args.to, args.out)
    result = select_from_run(Path(args.run), out, to=to, selector=args.selector, column=args.column,
                             k=args.top_k, ratio=args.top_ratio, of=args.ratio_of,
                             higher_is_better=args.higher_is_better, where=args.where,
                             params=_kv(args.param, "--param"), argv=_argv(args), strict=args.strict)
    print(result["message"])
    return 0


def cmd_report(args) -> int:
    print(write_report(args.runs, Path(args.out)))
    return 0


def cmd_export(args) -> int:
    to, out = destination(args.to, args.out)
    result = export_run(Path(args.run), to, out, stage=args.stage, with_scores=args.with_scores, chat=args.chat,
                        argv=_argv(args))
    print(result["message"])
    return 0


def cmd_eval(args) -> int:
    report = evaluate(args.model, against=args.against, judge=given(args, JudgeConfig, prefix="judge") or None,
                      out=Path(args.out), argv=_argv(args), **given(args, EvalConfig))
    print(json.dumps({k: v for k, v in report.items() if k in ("single", "pairwise", "accuracy", "judge")},
                     indent=1, default=str)[:4000])
    print(f"report: {Path(args.out) / 'report.json'}")
    return 0


def cmd_validate(args) -> int:
    recipe, data_cfg, stages = load_recipe(args.recipe, _kv(args.set, "--set"))

    if data_cfg.path not in BUNDLED_SHAREGPT and not Path(data_cfg.path).exists() \
            and "/" not in data_cfg.path:
        raise ConfigError(f"data.path {data_cfg.path!r} does not exist.")
    print(f"ok: recipe {recipe.name!r}, data {data_cfg.path}, {len(stages)} stage(s): " +
          "; ".join(f"{s.name} [train on {s.train.rows} rows{', iterit' if s.train.iterit else ''}] model {s.model}"
                    if s.is_train else f"{s.name} [{', '.join(sc.name for sc in s.scores) or '-'} -> "
                    f"{s.select.selector if s.select else 'no selection'}] model {s.model}" for s in stages))
    return 0


def cmd_bench(args) -> int:
    overrides = given(args, Recipe, only=RUN_OPTIONS)
    judge = given(args, JudgeConfig, prefix="judge")
    if judge:
        overrides["judge"] = judge
    result = bench_noise(args.data, Path(args.out), recipes=_names(args.recipes), scorers=_names(args.scorers),
                         rate=args.rate, sample=args.sample, seed=args.seed, ratio=args.ratio,
                         guard=not args.no_guard, load_options=_load_options(args),
                         overrides=overrides, cache_root=args.cache_dir, executor=given(args, ExecutorConfig),
                         argv=_argv(args))
    print(format_table(result))
    print(f"bench: {Path(args.out) / 'bench.json'}")
    return 0


def _names(text: str | None) -> list[str]:
    return [n.strip() for n in (text or "").split(",") if n.strip()]


def cmd_ls(args) -> int:
    what = _LS_PLURAL.get(args.what, args.what)
    if args.name is not None:
        return _ls_one(what, args.name)
    if what in ("all", "scorers"):
        print("scorers:")
        for name in sorted(SCORERS):
            print(f"  {name:16s} {get_scorer(name).describe()}")
    if what in ("all", "selectors"):
        print("selectors:")
        for name in SELECTORS:
            print(f"  {name:22s} {SELECTORS.get(name).describe()}")
    if what in ("all", "recipes"):
        print("recipes:")
        for p in sorted(PACKAGED.glob("*.yaml")):
            desc = re.split(r"(?<=[a-z0-9)])\. (?=[A-Z])", (yaml.safe_load(p.read_text()) or {}).get("description", "").strip())[0]
            print(f"  {p.stem:16s} {desc[:90]}")
    if what in ("all", "templates"):
        print("templates:\n  " + "\n  ".join(TEMPLATES))
    if what in ("all", "presets"):
        print("presets (thresher train --preset):")
        for name, values in PRESETS.items():
            print(f"  {name:16s} " + ", ".join(f"{k}={','.join(v) if isinstance(v, list) else v}"
                                               for k, v in values.items()))
    return 0


_LS_KINDS = ("all", "scorers", "selectors", "recipes", "templates", "presets")
_LS_PLURAL = {kind[:-1]: kind for kind in _LS_KINDS if kind.endswith("s")}


# The kinds `thresher ls KIND NAME` describes: registries whose entries declare a ``Params`` dataclass.
_LS_REGISTRIES = {"scorers": SCORERS, "selectors": SELECTORS}


def _ls_one(what: str, name: str) -> int:
    if what == "recipes":
        print(format_recipe(name))
        return 0
    if what not in _LS_REGISTRIES:
        raise ConfigError(f"`thresher ls {what} NAME` is not available; a name can follow "
                          f"{', '.join(_LS_REGISTRIES)} or recipes, e.g. `thresher ls scorers ifd`.")
    print(format_params(_LS_REGISTRIES[what], name))
    return 0


def format_recipe(spec: str) -> str:
    """What ``thresher ls recipes NAME`` prints: the recipe's description, then each stage with its model, its
    scorers and selector (or training) and the parameters the recipe sets (`thresher ls scorers NAME` shows
    every parameter with its default). The recipe is checked as `thresher validate` does; nothing is loaded."""
    path, raw = read_recipe(spec)
    recipe, data_cfg, stages = load_recipe(spec)
    raw = raw["stages"]
    lines = [f"recipe {recipe.name or path.stem} ({path}):",
             textwrap.fill(" ".join(recipe.description.split()), 110, initial_indent="  ", subsequent_indent="  ")]
    if recipe.reference:
        lines.append(f"  reference: {recipe.reference}")
    lines.append(f"  data: {data_cfg.path}; model: {recipe.model}")
    for st, given_stage in zip(stages, raw):
        lines.append(f"  stage {st.name!r} (model {st.model})" + (f": {st.note}" if st.note else ""))
        if st.is_train:
            lines.append(f"    train: {_kv_text(given_stage['train'])}")
            continue
        for sc in given_stage.get("score", []):
            lines.append(f"    score: {sc['scorer']}" + (f" ({_kv_text(sc['params'])})" if sc.get("params") else ""))
        if st.select is not None:
            column = f" on {st.select.column}" if st.select.column else ""
            lines.append(f"    select: {st.select.selector}{column}"
                         + (f" ({_kv_text(st.select.params)})" if st.select.params else ""))
    return "\n".join(lines)


def _kv_text(values: dict) -> str:
    return ", ".join(f"{k}={v}" for k, v in values.items())


def format_params(registry, name: str) -> str:
    """What ``thresher ls KIND NAME`` prints: the entry's one-line description and, from its ``Params``
    dataclass's field metadata, each parameter's name, type, default, choices and help."""
    obj = registry.get(name)
    doc = (obj.__doc__ or "").strip().splitlines()
    lines = [f"{registry.kind} {name}: {doc[0] if doc else registry.target(name)}"]
    params = getattr(obj, "Params", None)
    if params is None:
        return "\n".join([*lines, "  (declares no parameters)"])
    rows = [(p.name, p.type, "required" if p.default is dataclasses.MISSING else repr(p.default),
             " | ".join(map(str, p.choices)) if p.choices else "", p.help) for p in describe(params)]
    head = ("parameter", "type", "default", "choices", "help")
    widths = [max(len(r[i]) for r in [head, *rows]) for i in range(4)]
    for row in [head, *rows]:
        lines.append("  " + "  ".join(c.ljust(w) for c, w in zip(row[:4], widths)) + "  " + row[4])
    lines += _produced_columns(obj)
    return "\n".join(line.rstrip() for line in lines)


def _produced_columns(obj) -> list[str]:
    """The score columns a scorer writes (its ``produces``), the main one marked with its direction."""
    produces = getattr(obj, "produces", None)
    if not isinstance(produces, dict) or not produces:
        return []
    main, hib = getattr(obj, "main_column", ""), getattr(obj, "higher_is_better", None)
    way = {True: "higher is better", False: "lower is better", None: "direction set by the selection"}[hib]
    width = max(len(c) for c in [*produces, "column"])
    out = ["", f"  {'column'.ljust(width)}  meaning"]
    for col, meaning in produces.items():
        out.append(f"  {col.ljust(width)}  {meaning}" + (f" (main column; {way})" if col == main else ""))
    return out


# ------------------------------------------------------------------------------------------ parser
def build_parser() -> argparse.ArgumentParser:
    ap = argparse.ArgumentParser(prog="thresher", description="Score and select instruction-tuning data.")
    _global_flags(ap, default=True)
    ap.add_argument("--version", action="version", version=f"thresher {__version__}")
    sub = ap.add_subparsers(dest="command", required=True, parser_class=_SubcommandParser)

    p = sub.add_parser("run", help="run a recipe (a YAML file or a packaged recipe name)",
                       description="Run a recipe. --data replaces the recipe's data with your file and makes "
                                   "loading strict (no --limit, no skipping, no lenient) unless you pass those flags.")
    p.add_argument("recipe", help="path to a recipe YAML, or a packaged name: see `thresher ls recipes`")
    p.add_argument("--data", help="dataset file/dir/hub name (overrides the recipe's data.path)")
    p.add_argument("--out", help="run directory (default runs/<recipe name>)")
    p.add_argument("--set", action="append", metavar="KEY=VALUE",
                   help="override a recipe value, e.g. stages.0.select.params.ratio=0.05 (repeatable)")
    p.add_argument("--target", nargs="+", metavar="FILE",
                   help="target-task examples for less/datainf: one file per task (a 'task' field in the records "
                        "overrides)")
    p.add_argument("--clients", nargs="+", metavar="FILE",
                   help="private client datasets (clues): the stages run once per client in OUT/clients/<name>/")
    p.add_argument("--anchor", metavar="FILE",
                   help="trusted anchor set (clues): scored by every client; only its scores set the global threshold")
    p.add_argument("--validation", nargs="+", metavar="FILE",
                   help="validation sets (clues; one domain per file); default: the anchor set doubles as validation")
    p.add_argument("--labels", metavar="FIELD",
                   help="record field holding a ground-truth 1 (good) / 0 (bad) label: report precision, recall "
                        "and F1 of the selection")
    g = p.add_mutually_exclusive_group()
    g.add_argument("--guard", dest="guard", action="store_const", const=True, default=None,
                   help="run the noise guard first (`thresher guard`'s signals, same cache) and leave the rows it "
                        "flags out of every selection; RUN/guard/ holds its verdict (thresholds: --set guard.KEY=V, "
                        "see `thresher guard --help`). Off by default: packaged recipes reproduce their papers")
    g.add_argument("--no-guard", dest="guard", action="store_const", const=False,
                   help="turn off a guard the recipe enables (guard.enabled)")
    _common_args(p)
    p.set_defaults(func=cmd_run)

    p = sub.add_parser("guard", help="flag mismatched, garbled, cut-off, refused, copied ... rows, with a reason each",
                       description="Score the noise guard's signals (the packaged guard recipe: guard_lm with the "
                                   "model, guard_text, guard_embed; cached and resumable like any run) and judge "
                                   "every row: DIR/scores.parquet (id, row, signals, flagged, flags, reason, "
                                   "suspect, suspect_<kind>), DIR/flagged.jsonl (the flagged records unchanged, "
                                   "plus _guard_flags, _guard_reason, _guard_suspect), summary.json (guard: "
                                   "counts by kind with example ids). Thresholds come from the data's own "
                                   "median/MAD unless a quantity has a meaning (IFD >= 1).")
    p.add_argument("data", help="dataset file (.json/.jsonl/.parquet), saved HF dataset dir, hub name, or bundled:sharegpt")
    p.add_argument("--out", required=True, help="output directory")
    p.add_argument("--set", action="append", metavar="KEY=VALUE",
                   help="override a value of the guard recipe, e.g. stages.0.score.0.params.max_length=256")
    add_flags(p.add_argument_group("verdict (GuardParams; a recipe's guard: block takes the same keys)"),
              GuardParams)
    _common_args(p)
    p.set_defaults(func=cmd_guard)

    p = sub.add_parser("score", help="score a dataset with one scorer; writes OUT/scores.parquet and a manifest")
    p.add_argument("data", help="dataset file (.json/.jsonl/.parquet), saved HF dataset dir, hub name, or bundled:sharegpt")
    p.add_argument("--scorer", required=True, help="scorer name: see `thresher ls scorers`")
    p.add_argument("--out", required=True, help="run directory")
    g = p.add_argument_group("scorer parameters (ifd's; --mode: perplexity's; see `thresher ls scorers NAME`)")
    add_flags(g, IFDParams)
    add_flags(g, PerplexityParams, only=_PERPLEXITY_ONLY)
    g.add_argument("--param", action="append", metavar="KEY=VALUE", help="any other scorer parameter")
    _common_args(p)
    p.set_defaults(func=cmd_score)

    p = sub.add_parser("select", help="select rows from a scored run and write them in the input's format",
                       description="Select from RUN/scores.parquet and write the selected records, unchanged, "
                                   "to --out FILE (format by its suffix) or --to FORMAT PATH (--to hf DIR: a "
                                   "datasets save_to_disk folder with a dataset card). For the ifd column the "
                                   "default candidate filter is ifd<1 (as Cherry and Superfiltering); --where none "
                                   "disables it.")
    p.add_argument("run", help="a run directory written by `thresher score` or `thresher run`")
    p.add_argument("--out", help="output file: .json, .jsonl or .parquet")
    p.add_argument("--to", nargs="+", metavar=("FORMAT", "PATH"),
                   help="output format hf|parquet|jsonl|json and its path (or the path by --out), e.g. --to hf DIR")
    g = p.add_mutually_exclusive_group()
    g.add_argument("--top-k", type=int, help="keep this many rows")
    g.add_argument("--top-ratio", type=float, help="keep this fraction")
    p.add_argument("--ratio-of", default="all", help="base of --top-ratio: all (every row, default) or passing "
                   "(rows passing --where and not NaN)")
    p.add_argument("--column", help="score column to rank by (default: the scorer's main column)")
    d = p.add_mutually_exclusive_group()
    d.add_argument("--higher-is-better", dest="higher_is_better", action="store_true", default=None)
    d.add_argument("--lower-is-better", dest="higher_is_better", action="store_false")
    p.add_argument("--where", action="append", metavar="COND",
                   help="candidate filter like 'ifd<1' (repeatable), or 'none'")
    p.add_argument("--selector", default="top_k", help="selector name (see `thresher ls selectors`); default top_k")
    p.add_argument("--strict", action="store_true", help="a selection that keeps no row is an error (exit 2)")
    p.add_argument("--param", action="append", metavar="KEY=VALUE", help="other selector parameters")
    p.set_defaults(func=cmd_select)

    p = sub.add_parser("report", help="write one self-contained HTML report of run folders (compared when several)",
                       description="Histograms with the cut, NaN reasons, score against length, examples, cost "
                                   "per stage; for several runs their Spearman correlation, kept-id overlap and "
                                   "the rows they disagree on. Opens offline; dataset text is shown as text.")
    p.add_argument("runs", nargs="+", metavar="RUN", help="run folders written by `thresher run` or `thresher score`")
    p.add_argument("--out", required=True, help="the HTML file to write (replaced only if thresher wrote it)")
    p.set_defaults(func=cmd_report)

    p = sub.add_parser("export", help="write a run's selected records as a datasets folder, parquet or JSONL",
                       description="Write the records a run selected (its last selecting stage, or --stage), "
                                   "unchanged and in selection order, as a datasets save_to_disk folder with a "
                                   "dataset card (--to hf: datasets.load_from_disk(PATH)) or a .parquet, .jsonl or "
                                   ".json file. Consumers: TRL's SFTTrainer takes datasets.load_from_disk(PATH) as "
                                   "train_dataset; with --chat it trains on the 'messages' column (conversational "
                                   "data, the model's chat template). "
                                   "LLaMA-Factory reads a .jsonl/.json file: alpaca records as they are "
                                   "(formatting alpaca), or with --chat as formatting sharegpt with columns "
                                   "{messages: messages} and tags {role_tag: role, content_tag: content, user_tag: "
                                   "user, assistant_tag: assistant, system_tag: system} in its dataset_info.json.")
    p.add_argument("run", help="a run directory written by `thresher run` (a recipe whose stage selects)")
    p.add_argument("--to", nargs="+", required=True, metavar=("FORMAT", "PATH"),
                   help="hf (a folder), parquet, jsonl or json, and the path (or the path by --out)")
    p.add_argument("--out", help="output folder (hf) or file (its suffix must match --to)")
    p.add_argument("--stage", help="the stage whose selection to export (default: the last one that selects)")
    p.add_argument("--with-scores", action="store_true",
                   help="add the stage's score columns and rank (1 = first selected) to every record")
    p.add_argument("--chat", action="store_true",
                   help="add a 'messages' column: the conversation as OpenAI chat messages [{role, content}] "
                        "(system/user/assistant), for SFTTrainer and LLaMA-Factory (see above)")
    p.set_defaults(func=cmd_export)

    p = sub.add_parser("train", help="fine-tune a model on a (selected) dataset: LoRA or full, TRL SFTTrainer",
                       description="Supervised fine-tuning with the same prompt templates and response spans as "
                                   "scoring (loss on response tokens only unless --no-mask-prompt). Checkpoints keep "
                                   "the adapter, the optimizer state (Adam moments) and the learning rates; a rerun "
                                   "resumes from the last complete checkpoint.")
    add_train_arguments(p)
    add_flags(p.add_argument_group("data loading"), DataConfig, exclude=("path",))
    p.set_defaults(func=lambda args: train_cli(args, _load_options(args)))

    p = sub.add_parser("merge", help="merge several clients' LoRA training runs into one adapter (TIES, FedAvg)",
                       description="Combine the final LoRA adapters of `thresher train` runs (CLUES's collaborative "
                                   "step: TIES, density 0.2, weights 1.0; or linear, cat, or one FedAvg round "
                                   "weighted by training rows) into a PEFT adapter folder; --full also folds it into "
                                   "the base model as OUT/merged, loadable by every scorer and `thresher eval`.")
    add_merge_arguments(p)
    p.set_defaults(func=merge_cli)

    p = sub.add_parser("eval", help="answer a benchmark's questions with a model and grade them with an LLM judge",
                       description="MT-Bench single-answer grading (1-10, two turns), optional pairwise comparison "
                                   "against another model (position-swapped, winning score) and reference-accuracy "
                                   "judging, with bootstrap confidence intervals. Resumable: answers and judgments "
                                   "are saved as they come.")
    p.add_argument("model", help="model folder, hub id, or 'bundled'")
    p.add_argument("--against", help="a baseline model to compare with pairwise")
    p.add_argument("--out", required=True, help="report directory")
    add_flags(p.add_argument_group("evaluation (EvalConfig)"), EvalConfig)
    _judge_args(p)
    p.set_defaults(func=cmd_eval)

    p = sub.add_parser("bench", help="benchmarks on your own data: `bench noise` plants corruptions and measures "
                                     "how well each method catches them")
    bench = p.add_subparsers(dest="bench", required=True, parser_class=_SubcommandParser)
    p = bench.add_parser("noise", help="plant corrupted rows into a sample of --data, run recipes/scorers on it, "
                                       "report AUROC per kind and the corrupted share each method keeps",
                         description="Draws --sample rows of --data (seeded), corrupts --rate of them (other row's "
                                     "response, truncated, shuffled words, refusal, instruction copied, loop, "
                                     "another script, junk tail; the kinds evenly), writes OUT/planted.jsonl and "
                                     "OUT/labels.jsonl, runs each method into OUT/runs/ (score cache shared) and "
                                     "writes OUT/bench.json and a table: AUROC of clean above corrupted overall and "
                                     "per kind, and the corrupted share of what each method keeps at --ratio. With "
                                     "the guard installed, also the guard itself and each recipe with --guard.")
    p.add_argument("--data", required=True, help="dataset file/dir/hub name, or bundled:sharegpt")
    p.add_argument("--recipes", help="comma-separated recipe names or files, e.g. superfiltering,length,alpagasus")
    p.add_argument("--scorers", help="comma-separated scorer names; NAME:higher or NAME:lower for a score without a "
                                     "fixed direction (perplexity:lower)")
    p.add_argument("--rate", type=float, default=0.25, help="share of the sample to corrupt, in (0, 1)")
    p.add_argument("--sample", type=int, default=400, help="rows drawn from --data (responses of >= 4 words)")
    p.add_argument("--seed", type=int, default=0, help="seeds the sample and the corruptions")
    p.add_argument("--ratio", type=float, default=0.25, help="share of the rows each method keeps")
    p.add_argument("--no-guard", action="store_true", help="do not run the guard even when it is installed")
    p.add_argument("--out", required=True, help="output folder")
    add_flags(p.add_argument_group("data loading"), DataConfig, exclude=("path",))
    g = p.add_argument_group("model and run (every method's runs)")
    add_flags(g, Recipe, only=RUN_OPTIONS)
    g.add_argument("--cache-dir", default=None, help="score cache root (default $THRESHER_CACHE or ~/.cache/thresher)")
    add_flags(p.add_argument_group("where the shards run"), ExecutorConfig)
    _judge_args(p)
    p.set_defaults(func=cmd_bench)

    p = sub.add_parser("validate", help="check a recipe without loading any model")
    p.add_argument("recipe")
    p.add_argument("--set", action="append", metavar="KEY=VALUE")
    p.set_defaults(func=cmd_validate)

    p = sub.add_parser("ls", help="list scorers, selectors, recipes, templates and training presets; "
                                  "`ls scorers NAME` shows a scorer's parameters")
    p.add_argument("what", nargs="?", default="all", choices=[*_LS_KINDS, *_LS_PLURAL])
    p.add_argument("name", nargs="?", help="a scorer name: print its parameters (type, default, choices, help)")
    p.set_defaults(func=cmd_ls)
    return ap


def _global_flags(p: argparse.ArgumentParser, default: bool) -> None:
    """-q, -v and --progress: on the top-level parser with their defaults, and on every subcommand with
    SUPPRESS defaults, so that `thresher -v run x` and `thresher run x -v` both work (a flag given after the
    subcommand overrides the same flag given before it)."""
    d = (lambda v: v) if default else (lambda v: argparse.SUPPRESS)
    p.add_argument("-q", "--quiet", action="store_true", default=d(False), help="only warnings and errors on stderr")
    p.add_argument("-v", "--verbose", action="store_true", default=d(False),
                   help="debug logging; also the progress bars and retry warnings of Hugging Face downloads and "
                        "of the bundled model's one-time conversion")
    p.add_argument("--progress", choices=MODES, default=d(None),
                   help="how long passes show progress: bar (on a terminal: rows/s, tokens/s, ETA), log (a line "
                        "at most every 10 s with the smoothed rate and ETA) or none; default: bar when stderr is "
                        "a terminal, else log")


class _SubcommandParser(argparse.ArgumentParser):
    """A subcommand's parser: it accepts the global flags too (``_global_flags``)."""

    def __init__(self, *a, **kw):
        super().__init__(*a, **kw)
        _global_flags(self, default=False)


def _configure_logging(args) -> None:
    """Log level from -q/-v, the progress mode from --progress; third-party chatter (transformers, the hub's
    retry warnings, download bars, the GGUF conversion's tqdm bar) only with -v."""
    level = logging.WARNING if args.quiet else logging.DEBUG if args.verbose else logging.INFO
    logging.basicConfig(level=level, format="%(message)s", stream=sys.stderr)
    set_progress_mode(args.progress or default_progress_mode(sys.stderr))
    noisy = ("transformers", "sentence_transformers", "urllib3", "httpx", "huggingface_hub", "filelock")
    for name in noisy:
        logging.getLogger(name).setLevel(logging.WARNING if args.verbose else logging.ERROR)
    if not args.verbose:
        os.environ.setdefault("HF_HUB_DISABLE_PROGRESS_BARS", "1")
        os.environ.setdefault("TQDM_DISABLE", "1")     # bars of other libraries; thresher's own pass disable=False
    try:
        from transformers.utils import logging as tlog
        if args.verbose:
            tlog.set_verbosity_warning()
        else:
            tlog.set_verbosity_error()
            tlog.disable_progress_bar()
    except ImportError:
        pass


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    args.argv = ["thresher", *argv] if argv is not None else list(sys.argv)
    _configure_logging(args)
    try:
        with surface("cli"):                 # messages name options as flags (--on-invalid skip)
            return args.func(args)
    except ThresherError as e:
        return _fail(args, str(e), 2)
    except KeyboardInterrupt:
        print("thresher: interrupted; finished shards are kept and a re-run resumes from them", file=sys.stderr)
        return 130
    except BrokenPipeError:          # the reader of our output went away (`thresher ls | head`): stop quietly
        os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())
        return 141
    except OSError as e:
        message = _os_error_message(e)
        if message is None:
            return _fail(args, _internal(e), 1)
        return _fail(args, message, 2)
    except Exception as e:     # a bug, not the user's doing: one line, the traceback with -v
        return _fail(args, _internal(e), 1)


def _fail(args, message: str, status: int) -> int:
    """One `thresher: error:` line on stderr (the traceback before it with -v); returns the exit status."""
    if getattr(args, "verbose", False):
        traceback.print_exc()
    print(f"thresher: error: {message}", file=sys.stderr)
    return status


def _internal(e: BaseException) -> str:
    return f"internal error: {type(e).__name__}: {e} (run with -v for the traceback)"


_USER_ERRNOS = {errno.EACCES: "permission denied", errno.EPERM: "operation not permitted",
                errno.EROFS: "read-only file system"}


def _os_error_message(e: OSError) -> str | None:
    """The message of an OSError the user can act on (a full disk, a permission), else None."""

    where = f" while writing {e.filename}" if e.filename else ""
    if is_disk_full(e) or e.errno == getattr(errno, "EDQUOT", None):
        what = "no space left on device" if is_disk_full(e) else "disk quota exceeded"
        return f"{what}{where}; free space or point --out/--cache-dir elsewhere."
    if e.errno in _USER_ERRNOS and e.filename:
        return f"{_USER_ERRNOS[e.errno]}: {e.filename}; check its permissions or choose another path."
    return None
