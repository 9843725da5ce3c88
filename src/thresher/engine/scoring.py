"""Run a scorer over a dataset in shards: cached by content, checkpointed, resumable, on any executor.

Rows are cut into fixed-size shards (``shard_size``, the unit of resume). Each shard's scores are written
atomically to ``<cache>/scores/<scorer key>/<shard key>.parquet`` where the scorer key hashes the scorer
name, version and parameters with the model identity, and the shard key hashes the content of the shard's
rows (id, messages, instruction/input, and the earlier score columns the scorer reads). Once every shard of
a group of ``compact_rows`` rows (1024) is final, the group is merged into one file ``g<group key>.parquet``
(written before its shards are removed), so a million rows make under 1,000 cache files while a crash loses
at most one shard per worker. Shard and group boundaries depend only on the rows: every executor and every
run finds the same files. A killed run therefore resumes by skipping every shard or group already on disk,
an identical command reuses everything, and any change to the data, the parameters, the model or the
scorer version misses the cache. A shard in which the scorer reports transient failures
(``transient_failures`` grew: judge requests that got no answer after their retries) is returned but not
written: it is not final, so a rerun scores it again (the answers it did get come from the request cache).

The shards the cache lacks go to an executor (``thresher.engine.base``: this process, in threads for an
I/O-bound scorer; ``thresher.engine.ray_executor``: Ray actors); results come back to this process, which
alone writes the cache. A dataset-scope scorer runs here over the whole pool and sends its per-shard passes
through the executor's runner (``Scorer.map_shards``).

A cached file is trusted only after checks: it is written with fsync before its rename and records its key
in the Parquet metadata; on reading, the file must parse, carry that key (files from before the key was
recorded: score columns the scorer declares), and hold exactly the rows' ids in order. Anything else
(truncated, empty, swapped, from another slot) is a cache miss: logged, moved to
``<scorer folder>/quarantine/`` and recomputed. Temporary files of killed writers are removed. Progress
(rows done of all, cached rows counted apart from the rate; rows/s, tokens/s, ETA) goes to the reporter of
``thresher.progress``. The returned frame's ``attrs["compute"]`` is this call's compute ledger: seconds,
rows, computed_rows, cached_rows, tokens and model_passes (counted where the models run and sent back with
each shard's result, so the ray executor's workers count alike).
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
import time
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pandas as pd

from thresher.data.fingerprint import row_hashes
from thresher.data.table import Dataset
from thresher.errors import ConfigError, flag_note
from thresher.io import atomic_path, cache_dir, remove_stale_tmp_files, sha256_hex
from thresher.engine.base import LocalExecutor, ShardResult, Task, score_shard
from thresher.models.context import ModelContext
from thresher.progress import Reporter, reporter
from thresher.scoring.base import Scorer

log = logging.getLogger(__name__)
_KEY_META = b"thresher.shard_key"



def scorer_key(scorer: Scorer, ctx: ModelContext) -> str:
    params = json.dumps(scorer.param_dict(), sort_keys=True)
    return sha256_hex(scorer.name, scorer.version, params, scorer.model_identity(ctx))[:24]


def input_hashes(inputs: pd.DataFrame | None, columns: tuple[str, ...], n: int) -> list[str]:
    """Per-row hash of the score columns a scorer reads (empty strings when it reads none)."""
    if not columns:
        return [""] * n
    check_inputs(inputs, columns)
    return [sha256_hex(*(_value_text(v) for v in row)) for row in inputs[list(columns)].itertuples(index=False)]


def check_inputs(inputs: pd.DataFrame | None, columns: tuple[str, ...]) -> None:
    """The score columns a scorer reads must be among the earlier scorers' columns."""
    missing = [c for c in columns if inputs is None or c not in inputs.columns]
    if missing:
        have = ", ".join(c for c in (inputs.columns if inputs is not None else []) if c != "id") or "(none)"
        raise ConfigError(f"A scorer needs the score column(s) {', '.join(map(repr, missing))}, which no earlier "
                          f"scorer of this stage produced (columns so far: {have}). Put the scorer that "
                          "produces them earlier in the stage's 'score' list.")


def _value_text(v) -> str:
    if isinstance(v, np.ndarray):
        return v.dtype.str + ":" + hashlib.sha256(np.ascontiguousarray(v).tobytes()).hexdigest()
    return repr(v)


COMPACT_ROWS = 1024          # finished shards are merged into one file per this many rows (at most ~980 files
                             # per million rows), while a crash still loses at most one shard per worker


@dataclass
class Unit:
    """One shard: rows [a, b) of the dataset, its cache file, and the compacted group it belongs to."""
    index: int
    a: int
    b: int
    path: Path
    group: int


@dataclass
class Group:
    """Consecutive shards whose finished scores are merged into one file (``path``; None: never merged)."""
    units: list[Unit]
    path: Path | None

    @property
    def a(self) -> int:
        return self.units[0].a

    @property
    def b(self) -> int:
        return self.units[-1].b


def plan_shards(n: int, shard_size: int, compact_rows: int, root: Path, hashes) -> list[Group]:
    """Shards of ``shard_size`` rows, grouped by ``compact_rows // shard_size`` from row 0 (deterministic:
    any executor, any run, the same files). ``hashes(a, b)``: the per-row content hashes of rows a..b.
    A trailing group with fewer shards than a full one is never merged (its shards stay single files)."""
    per_group = max(1, compact_rows // shard_size)
    groups: list[Group] = []
    starts = list(range(0, n, shard_size))
    for g0 in range(0, len(starts), per_group):
        units = []
        for i in range(g0, min(g0 + per_group, len(starts))):
            a, b = starts[i], min(starts[i] + shard_size, n)
            units.append(Unit(i, a, b, root / f"{sha256_hex(*hashes(a, b))[:32]}.parquet", len(groups)))
        full = per_group > 1 and len(units) == per_group
        key = sha256_hex("group", *(u.path.stem for u in units))[:32] if full else None
        groups.append(Group(units, root / f"g{key}.parquet" if key else None))
    return groups


def score_dataset(ds: Dataset, scorer: Scorer, ctx: ModelContext, *, shard_size: int = 64,
                  cache_root: Path | None = None, label: str | None = None,
                  inputs: pd.DataFrame | None = None, executor=None,
                  compact_rows: int = COMPACT_ROWS) -> pd.DataFrame:
    """Scores of every row, in dataset order, with an ``id`` column first.

    ``inputs``: earlier score columns aligned with ``ds`` (needed by scorers with required columns).
    ``executor``: where shards are scored (``thresher.engine.executors``; default: this process). Only
    this process reads and writes the cache: each finished shard is written here exactly once.
    """
    _check_shard_size(shard_size)
    t0 = time.perf_counter()
    executor = executor or LocalExecutor()
    scorer.cache_root = Path(cache_root or cache_dir())    # where scorers keep intermediate stores
    key = scorer_key(scorer, ctx)
    scorer.runner = executor.runner(scorer, ctx, key)
    scorer.setup(ctx)
    root = scorer_root(scorer, key)
    if root.is_dir():
        remove_stale_tmp_files(root)
    need = tuple(scorer.required_columns())
    groups = _groups(ds, scorer, root, shard_size, compact_rows, inputs, need)
    with reporter(label or scorer.name, len(ds), unit="rows") as progress:
        run = _Run(ds, scorer, groups, progress)
        todo = run.read_cached()
        if scorer.scope == "dataset":
            for unit in todo:                 # on the driver, over the whole (streamed) pool: it reads the rows it
                run.finish(unit, score_shard(scorer, ds, _part(inputs, need, unit)))   # needs; passes: the runner
        elif todo:
            tasks = (Task(u, ds.subset(range(u.a, u.b)), _part(inputs, need, u)) for u in todo)
            for task, result in executor.run(scorer, ctx, key, tasks, shard_size):
                run.finish(task.unit, result)
    out = run.frame()
    out.attrs["cache"] = {**run.stats, "dir": str(root)}
    out.attrs["compute"] = {"seconds": round(time.perf_counter() - t0, 3), "rows": len(ds),
                            "computed_rows": run.stats["computed"], "cached_rows": run.stats["cached"],
                            "tokens": run.tokens, "model_passes": run.passes}
    return out


def _check_shard_size(shard_size) -> None:
    if isinstance(shard_size, bool) or not isinstance(shard_size, int) or shard_size < 1:
        raise ConfigError(f"The 'shard_size' parameter{flag_note('shard_size')} (rows per cached shard) must be an "
                          f"int >= 1. Got {shard_size!r}.")


def scorer_root(scorer: Scorer, key: str) -> Path:
    """The cache folder of one scorer key (``scorer.cache_root`` set)."""
    return scorer.cache_root / "scores" / f"{scorer.name}-{key}"


def _groups(ds: Dataset, scorer: Scorer, root: Path, shard_size: int, compact_rows: int,
            inputs: pd.DataFrame | None, need: tuple) -> list[Group]:
    """The shard plan of ``scorer`` over ``ds`` (a dataset-scope scorer: one unit of every row); the keys hash
    the rows and the earlier score columns ``need`` it reads from ``inputs``."""
    rh = row_hashes(ds)
    check_inputs(inputs, need)                             # the missing-column error before any work

    def hashes(a: int, b: int) -> list[str]:
        part = inputs.iloc[a:b] if need else None
        return [x + y for x, y in zip(rh[a:b], input_hashes(part, need, b - a))]

    if scorer.scope == "dataset":
        shard_size = max(len(ds), 1)          # one unit: the scorer needs the whole pool at once
    return plan_shards(len(ds), shard_size, compact_rows, root, hashes)


def cache_lookup(groups: list[Group], read):
    """Yields, per group in dataset order, ``(group, merged, units)``: ``merged`` the frame of the group's
    merged file (then ``units`` is empty), else None and ``units`` each shard with its cached frame or None.
    ``read(path, a, b)``: the trusted frame of rows a..b at path, or None."""
    for g in groups:
        merged = read(g.path, g.a, g.b) if g.path is not None else None
        yield g, merged, ([] if merged is not None else [(u, read(u.path, u.a, u.b)) for u in g.units])


@dataclass
class ShardPlan:
    """What ``score_dataset`` with the same arguments would do, found without scoring or writing: the scorer
    key, its cache folder, the shards it would read from the cache and those it would score."""
    key: str
    root: Path
    cached: list[Unit]
    todo: list[Unit]
    frames: list[pd.DataFrame]             # the cached scores, in row order (with ``keep_frames``; else empty)


def plan_scoring(ds: Dataset, scorer: Scorer, ctx: ModelContext, *, shard_size: int = 64,
                 cache_root: Path | None = None, inputs: pd.DataFrame | None = None,
                 compact_rows: int = COMPACT_ROWS, keep_frames: bool = False) -> ShardPlan:
    """The shard plan and cache lookup of ``score_dataset`` (same key, same shards, same trust checks), read
    only: the scorer is not set up (no weights load: the key needs the model's identity only), nothing is
    written, moved or removed (an untrusted cached file counts as to compute, as the run would recompute it)."""
    _check_shard_size(shard_size)
    scorer.cache_root = Path(cache_root or cache_dir())
    key = scorer_key(scorer, ctx)
    root = scorer_root(scorer, key)
    groups = _groups(ds, scorer, root, shard_size, compact_rows, inputs, tuple(scorer.required_columns()))
    cached, todo, frames = [], [], []

    def read(path: Path, a: int, b: int) -> pd.DataFrame | None:
        return _load_shard(path, ds.ids[a:b], scorer)[0]

    for g, merged, units in cache_lookup(groups, read):
        cached += g.units if merged is not None else [u for u, frame in units if frame is not None]
        todo += [u for u, frame in units if frame is None]
        if keep_frames:
            frames += [merged] if merged is not None else [frame for _, frame in units if frame is not None]
    return ShardPlan(key, root, cached, todo, frames)


def _part(inputs: pd.DataFrame | None, need: tuple, unit: Unit) -> pd.DataFrame | None:
    return inputs.iloc[unit.a:unit.b].reset_index(drop=True) if need else None


class _Run:
    """The shards of one score_dataset call: what is cached, what finished, merging finished groups."""

    def __init__(self, ds: Dataset, scorer: Scorer, groups: list[Group], progress: Reporter):
        self.ds, self.scorer, self.groups = ds, scorer, groups
        self.frames: dict[int, pd.DataFrame] = {}          # first row -> frame (a shard or a merged group)
        self.final: dict[int, bool] = {}                     # shard index -> its scores are final (cacheable)
        self.stats = {"cached": 0, "computed": 0, "rejected_shards": 0, "failed": 0}
        self.tokens = self.passes = 0                        # model work of the computed shards
        self.progress = progress

    def read_cached(self) -> list[Unit]:
        """Cached frames in; returns the shards left to score, in dataset order."""
        todo = []
        for g, merged, units in cache_lookup(self.groups, self._read):
            if merged is not None:
                self.frames[g.a] = merged
                self._cached(g.b - g.a)
                for u in g.units:                            # leftovers of a run killed while merging
                    u.path.unlink(missing_ok=True)
                continue
            for u, frame in units:
                if frame is None:
                    todo.append(u)
                    continue
                self.frames[u.a], self.final[u.index] = frame, True
                self._cached(u.b - u.a)
            self._merge(g)                                   # every shard cached but not yet merged
        return todo

    def _read(self, path: Path, a: int, b: int) -> pd.DataFrame | None:
        frame, rejected = read_shard(path, self.ds.ids[a:b], self.scorer)
        self.stats["rejected_shards"] += rejected
        return frame

    def _cached(self, n: int) -> None:
        self.stats["cached"] += n
        self.progress.update(n, cached=True)

    def finish(self, unit: Unit, result: "ShardResult") -> None:
        """A scored shard: written (once, here) unless some rows failed transiently, then merged if its
        group is complete."""
        frame = _frame(self.ds.ids[unit.a:unit.b], result.cols, self.scorer.name)
        if result.failures:                  # not final: not cached, a rerun asks again
            self.stats["failed"] += result.failures
        else:
            write_shard(unit.path, frame)
        self.frames[unit.a], self.final[unit.index] = frame, not result.failures
        self.stats["computed"] += unit.b - unit.a
        self.scorer.tokens_processed += result.tokens
        self.scorer.transient_failures += result.failures
        self.tokens += result.tokens
        self.passes += result.passes
        self.progress.update(unit.b - unit.a, tokens=result.tokens)
        self._merge(self.groups[unit.group])

    def _merge(self, g: Group) -> None:
        """Replace a complete group's shard files by one file (written before the shards are removed)."""
        if g.path is None or not all(self.final.get(u.index) for u in g.units):
            return
        frame = pd.concat([self.frames.pop(u.a) for u in g.units], ignore_index=True)
        write_shard(g.path, frame)
        for u in g.units:
            u.path.unlink(missing_ok=True)
            self.final.pop(u.index)
        self.frames[g.a] = frame

    def frame(self) -> pd.DataFrame:
        frames = [self.frames[a] for a in sorted(self.frames)]
        return pd.concat(frames, ignore_index=True) if frames else pd.DataFrame({"id": []})


def _frame(ids: list[str], cols: dict, name: str) -> pd.DataFrame:
    data = {"id": ids}
    for k, v in cols.items():
        if len(v) != len(ids):
            raise RuntimeError(f"scorer {name!r} returned {len(v)} values for column {k!r}, expected {len(ids)}")
        data[k] = list(v) if (len(v) and isinstance(v[0], np.ndarray)) else v
    return pd.DataFrame(data)


def write_shard(path: Path, frame: pd.DataFrame) -> None:
    """Write one shard atomically and durably, its key (the file's stem) in the Parquet metadata."""
    import pyarrow as pa
    import pyarrow.parquet as pq

    table = pa.Table.from_pandas(frame, preserve_index=False)
    table = table.replace_schema_metadata({**(table.schema.metadata or {}), _KEY_META: path.stem.encode()})
    with atomic_path(path, fsync=True) as tmp:
        pq.write_table(table, tmp)


def read_shard(path: Path, ids: list[str], scorer: Scorer) -> tuple[pd.DataFrame | None, bool]:
    """(cached scores of the rows ``ids`` at ``path`` or None for a miss, whether a file there was rejected).

    A file that cannot be trusted is logged and moved into ``quarantine/`` beside it, so that it is
    recomputed and can still be inspected.
    """
    frame, problem = _load_shard(path, ids, scorer)
    return (frame, False) if problem is None else (_quarantine(path, problem), True)


def _load_shard(path: Path, ids: list[str], scorer: Scorer) -> tuple[pd.DataFrame | None, str | None]:
    """(the trusted scores at ``path`` or None, why the file there cannot be trusted or None); reads only."""
    import pyarrow.parquet as pq

    try:
        table = pq.read_table(path)
    except FileNotFoundError:
        return None, None
    except Exception as err:            # truncated, empty, not Parquet: pyarrow raises several types
        first = (str(err).splitlines() or [""])[0]
        return None, f"it is unreadable ({type(err).__name__}: {first})"
    frame = table.to_pandas()
    problem = _shard_problem(frame, (table.schema.metadata or {}).get(_KEY_META), path.stem, ids, scorer)
    return (frame, None) if problem is None else (None, problem)


def _shard_problem(frame: pd.DataFrame, key: bytes | None, want_key: str, ids: list[str],
                   scorer: Scorer) -> str | None:
    """Why a readable shard does not hold the scores of ``ids`` (None when it does)."""
    if key is not None and key.decode(errors="replace") != want_key:
        return f"it holds shard {key.decode(errors='replace')!r}, not this one"
    if "id" not in frame.columns or len(frame.columns) < 2:
        return f"it lacks the id or score columns (has {list(frame.columns)})"
    if len(frame) != len(ids):
        return f"it has {len(frame)} rows where this shard has {len(ids)}"
    if frame["id"].tolist() != list(ids):
        return "its ids are not this shard's rows"
    declared = set(scorer.produced_columns())
    if key is None and declared and not set(frame.columns[1:]) <= declared:
        return f"its columns {list(frame.columns[1:])} are not among {scorer.name!r}'s {sorted(declared)}"
    return None


def _quarantine(path: Path, problem: str) -> None:
    """Move an untrusted shard aside (evidence is kept, not deleted) and report a cache miss."""
    dest = path.parent / "quarantine" / f"{path.name}.bad-{time.strftime('%Y%m%dT%H%M%S')}-{os.getpid()}"
    try:
        dest.parent.mkdir(exist_ok=True)
        os.replace(path, dest)
        where = f"moved to {dest}"
    except OSError as err:
        where = f"left in place to be overwritten (could not move it aside: {err.strerror or err})"
    log.warning("cached shard %s is not usable: %s; %s, recomputing it", path, problem, where)
    return None
