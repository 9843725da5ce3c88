"""``thresher bench noise``: how well each method catches noise planted into a sample of the user's own data.

Layout of ``out`` (an output folder of kind "bench"):
  planted.jsonl     the sample in the input's own record schema, cut to each row's first exchange: the clean
                    rows keep their ids, a corrupted row gets ``<id>~<kind>`` (thresher.data.corrupt)
  labels.jsonl      one line per row: {"id", "kind" ("clean" or the corruption), "of" (the original id),
                    "donor" (the id whose response was borrowed, or null)}
  runs/<name>/      one run folder per method (thresher.pipeline.run: the score cache is shared, so a rerun only
                    reads the cache): a recipe as packaged with its selection ratio set to ``ratio``; a scorer
                    as ``thresher score`` builds it (``runs/scorer-<name>``); the guard (``runs/guard``) and each
                    recipe with the guard (``runs/<recipe>-guard``) when the guard is installed
  bench.json        the sample's counts, and per method its AUROC overall and per kind, NaN count and the
                    corrupted share of what it keeps; ``format_table`` prints it

AUROC: the chance that a clean row ranks above a corrupted one by the method's own score in its own direction
(thresher.algorithms.auroc; NaN scores rank worst). Per kind: that kind's rows against all clean rows. Kept:
a recipe's own selection (its ``selected_ids.txt``); a scorer's or the guard's top ``ratio`` by its direction.
With the guard: the recipe run with ``guard`` set (the guard drops flagged rows before the selection); its
AUROC is the recipe's score with the guard's flagged rows ranked worst.
"""

from __future__ import annotations

import json
import logging
import math
import time
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pandas as pd

from thresher.algorithms.auroc import auroc
from thresher.data.corrupt import CLEAN, KINDS, MIN_WORDS, exchange_record, first_exchange, plant
from thresher.data.readers import data_source, load
from thresher.errors import ConfigError
from thresher.io import atomic_path, write_json
from thresher.outputs import claim_output_dir, output_lock
from thresher.pipeline.config import SelectConfig, safe_name
from thresher.pipeline.guard import guard_job
from thresher.pipeline.recipe import check_recipe, read_recipe
from thresher.pipeline.run import run_recipe
from thresher.pipeline.select_run import choose_rows
from thresher.scoring import get_scorer
from thresher.selection import SELECTORS

log = logging.getLogger(__name__)

KIND = "bench"
GUARD_RECIPE = "guard"              # the packaged recipe whose scores hold the guard's `suspect` and `flagged`
GUARD_BLOCK: dict = {"enabled": True}   # the recipe's `guard:` block that turns the guard on with its defaults
DIRECTIONS = {"higher": True, "lower": False}


@dataclass
class Method:
    """One method's scores over the planted rows (in planted order) and the rows it keeps."""

    name: str
    source: str                     # recipe | scorer | guard | recipe+guard | scorer+guard
    run: str
    column: str
    higher_is_better: bool
    scores: np.ndarray              # (N,) float64, NaN where the method gave none
    kept: np.ndarray                # (N,) bool
    flagged: np.ndarray | None = None   # (N,) bool, the guard's own: the rows it drops


def bench_noise(data, out, *, recipes=(), scorers=(), rate: float = 0.25, sample: int = 400, seed: int = 0,
                ratio: float = 0.25, guard: bool = True, load_options: dict | None = None,
                overrides: dict | None = None, cache_root=None, executor=None, argv=None) -> dict:
    """Plant, run every method, measure; writes ``out`` (see the module doc) and returns bench.json's content.

    ``recipes``: recipe names or files; ``scorers``: scorer names, ``NAME:higher``/``NAME:lower`` for a scorer
    without a fixed direction (perplexity); ``guard``: also run the guard and each recipe with it; ``load_options``: ``thresher.data.load`` keywords; ``overrides``: top-level recipe keys set on
    every run (model, device, judge, ...)."""
    _check_options(recipes, scorers, rate, sample, ratio)
    scorer_specs = [_scorer_spec(s) for s in scorers]
    out = claim_output_dir(out, KIND, inputs=[data])
    t0 = time.perf_counter()
    with output_lock(out):
        labels = plant_sample(data, out, rate=rate, sample=sample, seed=seed, load_options=load_options or {})
        runner = _Runner(out, overrides or {}, cache_root, executor, argv, ratio)
        methods = runner.methods(recipes, scorer_specs, labels, guard)
        result = summarise(labels, methods, data=str(data), seed=seed, rate=rate, ratio=ratio)
        result["notes"] = _notes(methods, guard)
        result["seconds"] = round(time.perf_counter() - t0, 1)
        write_json(out / "bench.json", result)
    return result


def _check_options(recipes, scorers, rate, sample, ratio) -> None:
    if not recipes and not scorers:
        raise ConfigError("bench noise needs at least one method: give --recipes a,b and/or --scorers x,y.")
    if not (isinstance(rate, (int, float)) and 0 < rate < 1):
        raise ConfigError(f"--rate must be a fraction in (0, 1) of the sample to corrupt. Got {rate!r}.")
    if not (isinstance(ratio, (int, float)) and 0 < ratio <= 1):
        raise ConfigError(f"--ratio must be a fraction in (0, 1] of the rows each method keeps. Got {ratio!r}.")
    if isinstance(sample, bool) or not isinstance(sample, int) or sample < 8:
        raise ConfigError(f"--sample must be an int >= 8 (rows drawn from the data). Got {sample!r}.")


def _scorer_spec(spec: str) -> tuple[str, bool]:
    """``NAME`` or ``NAME:higher|lower`` -> (scorer name, its direction: the one given, else the scorer's)."""
    head, _, tail = spec.rpartition(":")
    name, hib = (head, DIRECTIONS[tail]) if head and tail in DIRECTIONS else (spec, None)
    hib = get_scorer(name).higher_is_better if hib is None else hib
    if hib is None:
        raise ConfigError(f"--scorers {name}: this score has no fixed direction; write {name}:higher or "
                          f"{name}:lower to say which end is better.")
    return name, hib


# ---------------------------------------------------------------------------------------------- planting
def plant_sample(data, out: Path, *, rate: float, sample: int, seed: int, load_options: dict) -> pd.DataFrame:
    """Draws ``sample`` rows (seeded; responses of at least ``MIN_WORDS`` words), corrupts ``rate`` of them and
    writes planted.jsonl and labels.jsonl; returns the labels (id, kind, of, donor) in planted order."""
    ds = load(data_source(str(data)), stream=True, **load_options)
    rng = np.random.default_rng([seed, 0])            # the sample's stream; plant() has its own
    order, rows, ids = rng.permutation(len(ds)), [], []
    for a in range(0, len(order), sample):
        block = np.sort(order[a:a + sample])
        part = ds.subset(block)
        for rid, raw, msgs in zip(part.ids, part.raw, part.messages):
            turns, instruction, response = first_exchange(msgs)
            if len(response.split()) >= MIN_WORDS and len(rows) < sample:
                rows.append((raw, turns, instruction, response))
                ids.append(rid)
        if len(rows) >= sample:
            break
    if len(rows) < 8:
        raise ConfigError(f"--data {data}: only {len(rows)} rows have a response of at least {MIN_WORDS} words; "
                          "bench noise needs at least 8. Give more data.")
    if len(rows) < sample:
        log.warning("bench: the data has only %d usable rows; sampled all of them (asked for %d)", len(rows), sample)
    planted = plant([r[2] for r in rows], [r[3] for r in rows], rate, seed)
    records, labels = [], []
    for rid, (raw, turns, _, _), p in zip(ids, rows, planted):
        new_id = rid if p["kind"] == CLEAN else f"{rid}~{p['kind']}"
        records.append(exchange_record(raw, ds.fmt, turns, p["response"], new_id))
        labels.append({"id": new_id, "kind": p["kind"], "of": rid,
                       "donor": ids[p["donor"]] if p["donor"] is not None else None})
    _write_jsonl(out / "planted.jsonl", records)
    _write_jsonl(out / "labels.jsonl", labels)
    return pd.DataFrame(labels)


def _write_jsonl(path: Path, records) -> None:
    with atomic_path(path) as tmp, open(tmp, "w", encoding="utf-8") as fh:
        for record in records:
            fh.write(json.dumps(record, ensure_ascii=False, default=str) + "\n")


# ---------------------------------------------------------------------------------------------- running
class _Runner:
    """Runs the methods on planted.jsonl into out/runs and reads back their scores and selections."""

    def __init__(self, out: Path, overrides: dict, cache_root, executor, argv, ratio: float):
        self.out, self.overrides, self.cache_root = Path(out), overrides, cache_root
        self.executor, self.argv, self.ratio = executor, argv, ratio
        self.data = {"path": str(self.out / "planted.jsonl"), "format": "auto", "lenient": False,
                     "on_invalid": "fail", "limit": None}

    def methods(self, recipes, scorers, labels: pd.DataFrame, use_guard: bool) -> list[Method]:
        ids = labels["id"].tolist()
        guard = self.guard(ids) if use_guard else None
        found = []
        for spec in recipes:
            found.append(self.recipe(spec, ids))
            if guard is not None:
                found.append(self.recipe(spec, ids, guard=guard))
        for name, hib in scorers:
            found.append(self.scorer(name, hib, ids))
            if guard is not None:
                found.append(_guarded(found[-1], guard, self.ratio))
        return found + ([guard] if guard is not None else [])

    def _run(self, raw: dict, folder: str, label: str, *, guard: bool = False) -> Path:
        """Run recipe ``raw`` on the planted data into runs/<folder>; ``guard``: as `thresher guard` runs the
        guard recipe (its stage, then the verdict)."""
        judge = {**(raw.get("judge") or {}), **self.overrides.get("judge", {})}
        raw = {**raw, **self.overrides, "data": {**raw.get("data", {}), **self.data},
               **({"judge": judge} if judge else {})}
        if guard:
            recipe, data_cfg, stages, after = guard_job(raw, label)
        else:
            (recipe, data_cfg, stages), after = check_recipe(raw, label), None
        run = self.out / "runs" / folder
        log.info("bench: %s -> %s", label, run)
        run_recipe(recipe, data_cfg, stages, run, argv=self.argv, raw_recipe=raw, cache_root=self.cache_root,
                   executor=self.executor, after=after)
        return run

    def recipe(self, spec: str, ids: list[str], guard: Method | None = None) -> Method:
        path, raw = read_recipe(spec)
        _set_ratio(raw, self.ratio, str(path))
        name = path.stem + ("+guard" if guard is not None else "")
        if guard is not None:
            raw["guard"] = dict(GUARD_BLOCK)
        run = self._run(raw, safe_name(name.replace("+", "-")), f"recipe {name}")
        column, hib = _run_direction(run, name)
        scores = _scores(run, column, ids)
        if guard is not None:                 # flagged rows never reach the selector: they rank worst
            scores = np.where(guard.flagged, np.nan, scores)
        return Method(name, "recipe+guard" if guard is not None else "recipe", str(run), column, hib, scores,
                      np.isin(ids, _selected(run)))

    def scorer(self, name: str, hib: bool, ids: list[str]) -> Method:
        cls = get_scorer(name)
        stage = cls.name
        raw = {"name": f"score-{stage}", "stages": [{"name": stage, "score": [{"scorer": name, "params": {}}]}]}
        run = self._run(raw, f"scorer-{safe_name(stage)}", f"scorer {name}")
        column = cls.main_column
        scores = _scores(run, column, ids)
        return Method(f"scorer:{stage}", "scorer", str(run), column, hib, scores,
                      _top_ratio(scores, hib, self.ratio))

    def guard(self, ids: list[str]) -> Method:
        _, raw = read_recipe(GUARD_RECIPE)
        run = self._run(raw, "guard", "the guard", guard=True)
        scores = _scores(run, "suspect", ids)
        flagged = np.nan_to_num(_scores(run, "flagged", ids), nan=0.0) > 0
        return Method("guard", "guard", str(run), "suspect", False, scores, _top_ratio(scores, False, self.ratio),
                      flagged)


def _guarded(method: Method, guard: Method, ratio: float) -> Method:
    """A scorer with the guard in front: flagged rows rank worst and are never kept."""
    scores = np.where(guard.flagged, np.nan, method.scores)
    return Method(f"{method.name}+guard", "scorer+guard", method.run, method.column, method.higher_is_better,
                  scores, _top_ratio(scores, method.higher_is_better, ratio))


def _set_ratio(raw: dict, ratio: float, where: str) -> None:
    """The recipe's last selection keeps ``ratio`` of the rows (its k or ratio replaced); ConfigError when its
    selector has no ratio."""
    stages = [s for s in raw.get("stages") or [] if isinstance(s, dict) and s.get("select")]
    if not stages:
        raise ConfigError(f"recipe {where}: no stage selects, so it keeps nothing to measure; give it as a "
                          "scorer (--scorers) instead.")
    select = stages[-1]["select"]
    if "ratio" not in SELECTORS.get(select.get("selector", "top_k")).Params.__dataclass_fields__:
        raise ConfigError(f"recipe {where}: its selector {select.get('selector')!r} takes no ratio, so --ratio "
                          "cannot be applied; give its scorer with --scorers instead.")
    params = {k: v for k, v in (select.get("params") or {}).items() if k not in ("k", "threshold")}
    select["params"] = {**params, "ratio": ratio}


def _run_direction(run: Path, name: str) -> tuple[str, bool]:
    """The column a run's last stage selects by and its direction (the selector's own, else its scorer's)."""
    stage = json.loads((run / "manifest.json").read_text(encoding="utf-8"))["stages"][-1]
    info = stage.get("scorers") or []
    select = SelectConfig(**stage["select"])
    column = select.make().main_column(info[-1]["main_column"] if info else None)
    hib = select.params.get("higher_is_better")
    if hib is None:
        hib = {rec["main_column"]: rec["higher_is_better"] for rec in info}.get(column)
    if hib is None:
        raise ConfigError(f"recipe {name}: the direction of column {column!r} is unknown (no higher_is_better in "
                          "its selection, none fixed by its scorer); set one in the recipe's select.params.")
    return column, bool(hib)


def _scores(run: Path, column: str, ids: list[str]) -> np.ndarray:
    """(N,) float64 values of ``column`` of the run's scores.parquet in the order of ``ids`` (NaN where missing)."""
    table = pd.read_parquet(run / "scores.parquet")
    if column not in table.columns:
        raise ConfigError(f"{run}/scores.parquet has no column {column!r} (columns: {', '.join(table.columns)}).")
    values = pd.to_numeric(table[column], errors="coerce").astype("float64")
    return pd.Series(values.to_numpy(), index=table["id"].astype(str)).reindex(ids).to_numpy(dtype=np.float64)


def _selected(run: Path) -> list[str]:
    path = run / "selected_ids.txt"
    return path.read_text(encoding="utf-8").splitlines() if path.is_file() else []


def _top_ratio(scores: np.ndarray, hib: bool, ratio: float) -> np.ndarray:
    """(N,) bool: the rows ``thresher select --top-ratio ratio --where none`` keeps (NaN rows never)."""
    table = pd.DataFrame({"id": np.arange(len(scores)).astype(str), "score": scores})
    idx, *_ = choose_rows(table, "score", hib, ratio=ratio, where=["none"])
    kept = np.zeros(len(scores), dtype=bool)
    kept[idx] = True
    return kept


# ---------------------------------------------------------------------------------------------- metrics
def noise_metrics(scores, higher_is_better: bool, kinds, kept) -> dict:
    """One method's figures: AUROC of clean above corrupted overall and per kind (that kind against all clean
    rows; NaN scores rank worst), the NaN count, and how many kept rows are corrupted."""
    kinds = np.asarray(kinds)
    s = np.asarray(scores, dtype=np.float64)
    clean = kinds == CLEAN
    kept = np.asarray(kept, dtype=bool)
    by_kind = {}
    for kind in KINDS:
        rows = clean | (kinds == kind)
        if (kinds == kind).any():
            by_kind[kind] = _round(auroc(s[rows], clean[rows], higher_is_better))
    n_kept, bad = int(kept.sum()), int((kept & ~clean).sum())
    return {"auroc": _round(auroc(s, clean, higher_is_better)), "auroc_by_kind": by_kind,
            "nan": int(np.isnan(s).sum()),
            "kept": {"rows": n_kept, "corrupted": bad, "share": _round(bad / n_kept) if n_kept else None}}


def _round(x: float) -> float | None:
    return None if x is None or math.isnan(x) else round(float(x), 4)


def summarise(labels: pd.DataFrame, methods: list[Method], **setup) -> dict:
    """bench.json's content: the setup, the sample's counts and every method's figures."""
    kinds = labels["kind"].to_numpy()
    counts = labels["kind"].value_counts()
    n, bad = len(labels), int((kinds != CLEAN).sum())
    return {**setup, "sample": {"rows": n, "clean": n - bad, "corrupted": bad,
                                "by_kind": {k: int(counts.get(k, 0)) for k in KINDS}},
            "base_rate": _round(bad / n),
            "methods": {m.name: {"source": m.source, "run": m.run, "column": m.column,
                                 "higher_is_better": m.higher_is_better,
                                 **noise_metrics(m.scores, m.higher_is_better, kinds, m.kept)} for m in methods}}


def _notes(methods: list[Method], use_guard: bool) -> list[str]:
    notes = ["AUROC: clean above corrupted in the method's own direction; NaN scores rank worst (counted in 'nan')."]
    if not use_guard:
        notes.append("guard: not run (turned off).")
    return notes


_SHORT = {"other_response": "other", "truncated": "trunc", "shuffled": "shuffle", "refusal": "refuse",
          "copy": "copy", "loop": "loop", "other_language": "lang", "junk_tail": "junk"}


def format_table(result: dict) -> str:
    """The printed table: one row per method, AUROC overall and per kind, kept-corrupted share, base rate."""
    head = ["method", "AUROC", *(_SHORT[k] for k in KINDS), "kept_bad", "base", "nan"]
    rows = []
    for name, m in result["methods"].items():
        rows.append([name, _fmt(m["auroc"]), *(_fmt(m["auroc_by_kind"].get(k)) for k in KINDS),
                     _fmt(m["kept"]["share"]), _fmt(result["base_rate"]), str(m["nan"])])
    width = max(len(r[0]) for r in [head, *rows])
    lines = ["  ".join([r[0].ljust(width), *(c.rjust(7) for c in r[1:])]) for r in [head, *rows]]
    s = result["sample"]
    lines.insert(0, f"bench noise: {s['rows']} rows, {s['corrupted']} corrupted (base rate {result['base_rate']}), "
                    f"seed {result['seed']}, kept ratio {result['ratio']}")
    return "\n".join(lines + [f"note: {n}" for n in result.get("notes", [])])


def _fmt(x) -> str:
    return "-" if x is None else f"{x:.3f}"
