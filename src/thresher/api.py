"""The Python API: the CLI's commands as functions over paths and data held in memory.

    import thresher
    scored = thresher.score(records, "length", turns="first")     # records: a path, a list of dicts,
    subset = thresher.select(scored, "top_k", ratio=0.1)          #   a pandas DataFrame or a datasets.Dataset
    run = thresher.run("length", data=records, out="runs/length")  # a Run: .scores, .selected, .summary
    html = thresher.report(run)

Every function runs the same code as its command (thresher.pipeline: ``check_recipe`` and ``run_recipe``, the
selection of ``thresher select``), takes its options by the names the recipes and ``thresher ls`` use, and
raises the same ConfigError / DataError. Data in memory is checked record by record as a file is
(``thresher.data.load``) and gives the same ids, row hashes, score cache entries and scores as the same
records in a JSON Lines file.

Returned types: ``score`` and ``select`` give back the kind of object they were given (list of dicts, DataFrame,
datasets.Dataset), holding the rows thresher kept (all of them unless ``on_invalid='skip'`` or ``limit``),
in input order (``score``) or selection order (``select``); a path gives a pandas DataFrame of its records.
"""

from __future__ import annotations

import dataclasses
import json
import sys
import tempfile
from pathlib import Path

import numpy as np
import pandas as pd

from thresher import reporting
from thresher.data import readers
from thresher.data.table import Dataset, StreamedDataset
from thresher.engine.base import ExecutorConfig
from thresher.errors import ConfigError
from thresher.pipeline.config import RUN_OPTIONS, DataConfig, Recipe
from thresher.pipeline.recipe import PACKAGED, check_recipe, read_recipe, set_dotted, set_guard
from thresher.pipeline.export import data_path
from thresher.pipeline.run import run_recipe
from thresher.pipeline.select_run import choose_rows, run_main_column
from thresher.pipeline.stages import empty_selection, load_data
from thresher.scoring import SCORERS
from thresher.selection import SELECTORS
from thresher.selection.base import NOT_SCORES

__all__ = ["Run", "load", "report", "run", "score", "select"]

# Option names, as in recipes and `thresher ls`: where each keyword of score/run goes.
DATA_OPTIONS = tuple(f.name for f in dataclasses.fields(DataConfig) if f.name != "path")
EXECUTOR_OPTIONS = tuple(f.name for f in dataclasses.fields(ExecutorConfig))
SCORE_RUN_OPTIONS = (*RUN_OPTIONS, "judge")     # the Recipe fields `thresher score` takes as flags
RECIPE_KEYS = tuple(f.name for f in dataclasses.fields(Recipe))


# ---------------------------------------------------------------------------------------------------- load
def load(data, **options) -> Dataset:
    """``data`` (a path as ``thresher score`` takes it, a list of dicts, a DataFrame or a datasets.Dataset) read
    and checked into a ``thresher.data.Dataset`` (ids, conversations, raw records, load report).

    ``options``: the recipe's data keys (format, on_invalid, lenient, limit, split, max_record_chars)."""
    return _load(data, _pick(options, DATA_OPTIONS, "load"), stream=False)


def _load(data, data_options: dict, *, stream: bool) -> Dataset:
    cfg = dataclasses.replace(DataConfig(), **data_options)
    source = readers.data_source(str(data)) if _is_path(data) else data
    return readers.load(source, cfg.format, on_invalid=cfg.on_invalid, lenient=cfg.lenient, limit=cfg.limit,
                           split=cfg.split, max_record_chars=cfg.max_record_chars, stream=stream)


def _is_path(data) -> bool:
    return isinstance(data, (str, Path))


def _pick(options: dict, names, where: str) -> dict:
    unknown = [k for k in options if k not in names]
    if unknown:
        raise ConfigError(f"thresher.{where}() has no option {unknown[0]!r}; its options: {', '.join(names)}.")
    return dict(options)


# ---------------------------------------------------------------------------------------------------- score
def score(data, scorer: str, *, out=None, params: dict | None = None, **options):
    """Score every row of ``data`` with ``scorer`` as ``thresher score`` does; returns ``data``'s kind of object
    with the score columns added (those of the run's scores.parquet, named as ``thresher ls scorers NAME``
    lists them; an existing column of that name is replaced).

    ``data``: a path (file, save_to_disk folder, hub name, ``bundled:sharegpt``): a pandas DataFrame of its
    records comes back; a list of dicts: a new list of new dicts; a pandas DataFrame: a new DataFrame (the
    input's index kept); a datasets.Dataset (or DatasetDict: its ``split``): a datasets.Dataset.
    ``scorer``: a name from ``thresher ls scorers``.
    ``options``: the scorer's parameters (``thresher ls scorers NAME``), the run options model, device, dtype,
    max_batch_tokens, shard_size, strict, max_failed_ratio, judge (a JudgeConfig mapping), the data options
    format, on_invalid, lenient, limit, split, max_record_chars, the executor options executor, workers,
    devices, ray_address, threads_per_worker, and cache_dir (the score cache root). ``params``: scorer
    parameters whose names are also run options (the embedding scorer's ``model``).
    ``out``: keep the run folder there (as ``thresher score --out``); default a temporary folder, removed
    afterwards (the score cache, outside it, makes the same call again cheap).
    """
    data_opts = {k: options.pop(k) for k in DATA_OPTIONS if k in options}
    executor = {k: options.pop(k) for k in EXECUTOR_OPTIONS if k in options}
    cache_dir = options.pop("cache_dir", None)
    run_opts = {k: options.pop(k) for k in SCORE_RUN_OPTIONS if k in options}
    scorer_params = {**options, **(params or {})}
    raw = {"name": f"score-{scorer}", "data": {"path": str(data) if _is_path(data) else "<memory>", **data_opts},
           **run_opts, "stages": [{"name": scorer, "score": [{"scorer": scorer, "params": scorer_params}]}]}
    recipe, data_cfg, stages = check_recipe(raw, "<thresher.score>")
    data, ds, data_cfg = _in_memory(data, data_cfg)
    path = raw["data"]["path"] = data_cfg.path
    argv = _call("score", path, scorer, **{**data_opts, **run_opts, **scorer_params})
    with tempfile.TemporaryDirectory(prefix="thresher-score-") as tmp:
        folder = Path(out) if out is not None else Path(tmp) / "run"
        run_recipe(recipe, data_cfg, stages, folder, argv=argv, raw_recipe=raw, cache_root=cache_dir,
                   executor=executor or None, dataset=ds)
        table = pd.read_parquet(folder / "scores.parquet")
    if ds is None:                   # a path: its records, read once more, as a DataFrame
        ds = _load(data, data_opts, stream=False)
        _check_ids(ds, table, path)
        return _add_columns(pd.DataFrame(ds.raw), None, table)
    _check_ids(ds, table, path)
    return _add_columns(data, _positions(ds), table)


def _check_ids(ds: Dataset, table: pd.DataFrame, source: str) -> None:
    if list(ds.ids) != table["id"].tolist():
        raise ConfigError(f"The data {source} changed while it was scored (its ids differ from the scores'); "
                          "score it again.")


def _positions(ds: Dataset) -> np.ndarray:
    """(N,) int64: each kept row's position in the object it was loaded from."""
    if isinstance(ds, StreamedDataset):
        return np.asarray(ds.index, dtype=np.int64)
    return np.fromiter((m["index"] for m in ds.meta), dtype=np.int64, count=len(ds))


def _add_columns(data, positions: np.ndarray | None, table: pd.DataFrame):
    """The rows ``positions`` of ``data`` (None: all) with ``table``'s score columns (row-aligned) added."""
    columns = [c for c in table.columns if c not in NOT_SCORES]
    rows = _take(data, positions)
    if isinstance(rows, pd.DataFrame):
        rows = rows.copy()
        for c in columns:
            rows[c] = table[c].to_numpy()
        return rows
    if isinstance(rows, list):
        values = table[columns].to_dict(orient="records")
        return [{**r, **v} for r, v in zip(rows, values)]
    existing = [c for c in columns if c in rows.column_names]
    rows = rows.remove_columns(existing) if existing else rows
    for c in columns:
        rows = rows.add_column(c, table[c].tolist())
    return rows


def _take(data, positions):
    """Rows ``positions`` (in that order; None: all) of a list, a DataFrame or a datasets.Dataset."""
    if isinstance(data, (list, tuple)):
        return list(data) if positions is None else [data[i] for i in positions.tolist()]
    if isinstance(data, pd.DataFrame):
        return data if positions is None else data.iloc[positions]
    if positions is None or (len(positions) == len(data) and np.array_equal(positions, np.arange(len(data)))):
        return data
    return data.select(positions.tolist())


def _in_memory(data, data_cfg: DataConfig) -> tuple[object, Dataset | None, DataConfig]:
    """For data in memory: (the object, a DatasetDict's split, loaded and checked with ``data_cfg``'s options,
    ``data_cfg`` naming it by its source); a path: (data, None, data_cfg)."""
    if _is_path(data):
        return data, None, data_cfg
    datasets = sys.modules.get("datasets")
    if datasets is not None and isinstance(data, datasets.DatasetDict) and data_cfg.split in data:
        data = data[data_cfg.split]
    ds = _load(data, {k: getattr(data_cfg, k) for k in DATA_OPTIONS}, stream=True)
    return data, ds, dataclasses.replace(data_cfg, path=ds.source)


# ---------------------------------------------------------------------------------------------------- select
def select(scored, selector: str = "top_k", *, column: str | None = None, k: int | None = None,
           ratio: float | None = None, of="all", where=None, higher_is_better: bool | None = None,
           strict: bool = False, **params):
    """The rows ``thresher select`` keeps, in selection order, as the same kind of object as ``scored``.

    ``scored``: what ``score`` returned (list of dicts, DataFrame, datasets.Dataset), or a ``Run`` (or a run
    folder's path), whose last stage's scores are selected from again. ``selector``: a name from ``thresher ls
    selectors`` (e.g. top_k, superfiltering, threshold); a recipe's name that is not also a selector's (length,
    deita) is a ConfigError pointing at ``run``, which runs the recipe.
    The ranked column (``column``; default the main column: for a Run its last scorer's, else the last column
    of ``scored`` that is some scorer's main column, i.e. the score added last) and its direction follow
    ``thresher select``: another column needs ``higher_is_better``. ``where`` (top_k): None (the main column's
    default filter, ifd<1 for ifd), "none", ``"COLUMN<VALUE"`` strings or {column: {lt|le|gt|ge: number}}.
    ``k`` | ``ratio``, ``of`` and ``params``: the selector's parameters (``thresher ls selectors NAME``).
    A selection that keeps nothing is logged as a warning, or with ``strict`` a ConfigError.
    A Run's rows come back as its input object's kind when it ran on data in memory, else as a list of the
    records (dicts, as read from its data).
    """
    _check_selector(selector)
    if isinstance(scored, (str, Path)):
        scored = Run(scored)
    if isinstance(scored, Run):
        table = scored.scores
        main, main_hib = run_main_column(scored.manifest)
    else:
        table = _score_table(scored)
        main, main_hib = _main_column(table.columns)
    where = [where] if isinstance(where, str) else where
    idx, column, _, _ = choose_rows(table, main, main_hib, selector=selector, column=column, k=k, ratio=ratio,
                                    of=of, higher_is_better=higher_is_better, where=where, params=params)
    if not len(idx):
        empty_selection(f"the selection ({selector} on {column}) kept 0 of {len(table)} rows", strict, {})
    if isinstance(scored, Run):
        return scored.rows(idx)
    return _take(scored, np.asarray(idx, dtype=np.int64))


def _check_selector(name: str) -> None:
    """A recipe's name given as the selector: a ConfigError saying how to run the recipe, listing the selectors."""
    if name not in SELECTORS and (PACKAGED / f"{name}.yaml").is_file():
        raise ConfigError(f"{name!r} is a recipe, not a selector: thresher.run({name!r}, data=...) runs it (its "
                          f"scoring and selection). Selectors (thresher ls selectors): {', '.join(SELECTORS.names())}.")


def _score_table(scored) -> pd.DataFrame:
    """The rows of ``scored`` as a DataFrame with a 0..N-1 index (what the selectors read)."""
    if isinstance(scored, pd.DataFrame):
        return scored.reset_index(drop=True)
    if isinstance(scored, (list, tuple)):
        return pd.DataFrame.from_records(list(scored))
    if hasattr(scored, "to_pandas"):
        return scored.to_pandas()
    raise ConfigError(f"thresher.select() selects from what thresher.score() returned (a list of dicts, a pandas "
                      f"DataFrame or a datasets.Dataset) or a Run; got a {type(scored).__name__}.")


def _main_column(columns) -> tuple[str | None, bool | None]:
    """The last of ``columns`` that is a registered scorer's main column, and that scorer's direction."""
    mains = {}
    for name in SCORERS.names():
        cls = SCORERS.get(name)
        mains.setdefault(cls.main_column, cls.higher_is_better)
    found = [c for c in columns if c in mains]
    return (found[-1], mains[found[-1]]) if found else (None, None)


# ---------------------------------------------------------------------------------------------------- run
def run(recipe, *, data=None, out=None, **overrides) -> Run:
    """Run a recipe (a packaged name, see ``thresher ls recipes``, or a YAML path) as ``thresher run`` does;
    returns its ``Run``.

    ``data``: the data to run on instead of the recipe's (loaded strictly, as ``--data``: no limit, no skipping,
    not lenient, unless ``overrides`` say so): a path, or a list of dicts, DataFrame or datasets.Dataset.
    ``out``: the run folder (default runs/<recipe name>). ``overrides``: recipe keys (model, shard_size, target,
    ...), data keys (limit, on_invalid, ...), dotted keys as ``--set`` takes them (pass them as
    ``**{"stages.0.select.params.ratio": 0.05}``), the executor options (executor, workers, ...) and cache_dir;
    ``guard=True`` / ``False`` turns the noise guard on or off as ``--guard`` / ``--no-guard`` do (its thresholds
    as dotted keys: ``**{"guard.z_cutoff": 4.0}``).
    """
    path, raw = read_recipe(recipe)
    if isinstance(overrides.get("guard"), bool):
        set_guard(raw, overrides.pop("guard"), str(path))
    executor = {k: overrides.pop(k) for k in EXECUTOR_OPTIONS if k in overrides}
    cache_dir = overrides.pop("cache_dir", None)
    section = raw.setdefault("data", {})
    if data is not None:
        section.update({"path": str(data) if _is_path(data) else "<memory>", "lenient": False,
                        "on_invalid": "fail", "limit": None})
    section.update({k: overrides.pop(k) for k in DATA_OPTIONS if k in overrides})
    for key, value in overrides.items():
        if "." in key:
            set_dotted(raw, key, value)
        else:
            raw[key] = value          # an unknown key is check_recipe's ConfigError
    recipe_cfg, data_cfg, stages = check_recipe(raw, str(path))
    data, ds, data_cfg = _in_memory(data, data_cfg) if data is not None else (None, None, data_cfg)
    section["path"] = data_cfg.path
    folder = Path(out) if out is not None else Path("runs") / (recipe_cfg.name or path.stem)
    run_recipe(recipe_cfg, data_cfg, stages, folder, argv=_call("run", str(recipe), data=data_cfg.path, **overrides),
               raw_recipe=raw, cache_root=cache_dir, executor=executor or None, dataset=ds)
    result = Run(folder)
    if ds is not None:
        result._memory = (data, _positions(ds))
    return result


def _call(fn: str, *args, **kwargs) -> list[str]:
    """The manifest's ``argv`` of an API call: ``["thresher.score(...)"]`` with the arguments' reprs."""
    parts = [repr(a) for a in args] + [f"{k}={v!r}" for k, v in kwargs.items()]
    return [f"thresher.{fn}({', '.join(parts)})"]


class Run:
    """A run folder written by ``thresher run`` / ``thresher score`` (or ``run`` / ``score`` here).

    ``path``; ``summary`` and ``manifest`` (dicts of summary.json and manifest.json); ``scores`` (the last
    scoring stage's scores.parquet as a DataFrame; ``stage_scores(name)`` for another stage);
    ``selected_ids`` (list of str, in selection order); ``selected`` (the selected rows: of the input object,
    in its kind, when this Run was made by ``run`` on data in memory, else a list of the records as the run
    wrote them to selected.<ext>, unchanged). In Jupyter a Run shows as its HTML report.
    """

    def __init__(self, path):
        self.path = Path(path)
        if not (self.path / "manifest.json").is_file():
            raise ConfigError(f"{str(path)!r} is not a complete run folder (no manifest.json): give a folder "
                              "written by `thresher run` or `thresher score` that finished.")
        self.manifest = _read_json(self.path / "manifest.json")
        self.summary = _read_json(self.path / "summary.json")
        self._memory = None               # (the input object, (N,) its position of each kept row)

    @property
    def scores(self) -> pd.DataFrame:
        return self._parquet(self.path / "scores.parquet", "scores")

    def stage_scores(self, name: str) -> pd.DataFrame:
        """Stage ``name``'s scores.parquet (``id``, then its score columns)."""
        stages = [s["name"] for s in self.manifest.get("stages", [])]
        if name not in stages:
            raise ConfigError(f"Run {str(self.path)!r} has no stage {name!r}; its stages: {', '.join(stages)}.")
        return self._parquet(self.path / name / "scores.parquet", f"stage {name!r}'s scores")

    def _parquet(self, p: Path, what: str) -> pd.DataFrame:
        if not p.is_file():
            raise ConfigError(f"Run {str(self.path)!r} has no {what} ({p.name} is missing): its stage trains "
                              "rather than scores.")
        return pd.read_parquet(p)

    @property
    def selected_ids(self) -> list[str]:
        p = self.path / "selected_ids.txt"
        if not p.is_file():
            raise ConfigError(f"Run {str(self.path)!r} selected nothing (no selected_ids.txt: it scored without a "
                              "selection); select with thresher.select(run, ...).")
        return p.read_text(encoding="utf-8").splitlines()

    @property
    def selected(self):
        ids = self.selected_ids
        if self._memory is not None:
            return self.rows(pd.Index(self.scores["id"]).get_indexer(ids))
        if not ids:
            return []
        files = [f for f in self.path.glob("selected.*") if f.suffix in (".json", ".jsonl", ".parquet")]
        data = self.manifest["data"]
        return readers.load(files[0], data.get("format", "auto"), max_record_chars=None).raw

    def rows(self, idx) -> object:
        """Rows ``idx`` (positions in the run's scores, i.e. its kept rows) of the run's data: of the input
        object when the run was given one in memory, else a list of records read from the data's file."""
        idx = np.asarray(idx, dtype=np.int64)
        if self._memory is not None:
            data, positions = self._memory
            return _take(data, positions[idx])
        recorded = self.manifest["data"]
        cfg = {k: v for k, v in recorded.items() if k in DataConfig.__dataclass_fields__}
        ds = load_data(DataConfig(**dict(cfg, path=data_path(self.path, recorded))))
        _check_ids(ds, self.scores, cfg["path"])
        return ds.subset(idx).raw

    def __repr__(self) -> str:
        stages = ", ".join(s.get("name", "?") for s in self.summary.get("stages", []))
        kept = [s["selected"] for s in self.summary.get("stages", []) if "selected" in s]
        sel = f", selected {kept[-1]}" if kept else ""
        return (f"Run({str(self.path)!r}: {self.summary.get('recipe', '?')}, {self.summary.get('rows', '?')} rows, "
                f"stages {stages}{sel})")

    def _repr_html_(self) -> str:
        return reporting.render([self.path], fragment=True)


def _read_json(p: Path) -> dict:
    return json.loads(p.read_text(encoding="utf-8")) if p.is_file() else {}


# ---------------------------------------------------------------------------------------------------- report
def report(runs, out=None):
    """The HTML report of ``runs`` (a Run or a run folder, or a list of them; several are compared): written to
    ``out`` (thresher.reporting.write_report; returns its Path), else returned as one HTML string."""
    items = runs if isinstance(runs, (list, tuple)) else [runs]
    paths = [r.path if isinstance(r, Run) else Path(r) for r in items]
    return reporting.render(paths) if out is None else reporting.write_report(paths, out)
