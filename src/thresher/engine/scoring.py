"""Run a scorer over a dataset in shards: cached by content, checkpointed, resumable.

Rows are cut into fixed-size shards. Each shard's scores are written atomically to
``<cache>/scores/<scorer key>/<shard key>.parquet`` where the scorer key hashes the scorer name,
version and parameters with the model identity, and the shard key hashes the scorer key with the
content of the shard's rows (id, messages, instruction/input). A killed run therefore resumes by
skipping every shard already on disk, an identical command reuses everything, and any change to the
data, the parameters, the model or the scorer version misses the cache. A shard in which the scorer
reports transient failures (``scorer.transient_failures`` grew: e.g. judge requests that got no answer
after their retries) is returned but not written: it is not final, so a rerun scores it again (the
answers it did get come from the request cache) and only the failed rows cost new requests.
A cached shard is trusted only after checks: it is written with fsync before its rename and records
its shard key in the Parquet metadata; on reading, the file must parse, carry that key (files from
before the key was recorded: score columns the scorer declares), and hold exactly the shard's ids in
order. Anything else (truncated, empty, swapped, from another slot) is a cache miss: logged, moved
to ``<scorer folder>/quarantine/`` and recomputed. Temporary files of killed writers are removed.
Progress (samples/s, tokens/s, ETA) is logged as shards finish.
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
import time
from pathlib import Path

import numpy as np
import pandas as pd

from thresher.data.fingerprint import row_hashes
from thresher.data.table import Dataset
from thresher.errors import ConfigError
from thresher.io import atomic_path, cache_dir, remove_stale_tmp_files, sha256_hex
from thresher.models.context import ModelContext
from thresher.scoring.base import Scorer

log = logging.getLogger(__name__)
_KEY_META = b"thresher.shard_key"





def scorer_key(scorer: Scorer, ctx: ModelContext) -> str:
    params = json.dumps(scorer.param_dict(), sort_keys=True)
    return sha256_hex(scorer.name, scorer.version, params, scorer.model_identity(ctx))[:24]


class Progress:
    def __init__(self, label: str, total: int):
        self.label, self.total, self.done, self.tokens = label, total, 0, 0
        self.t0 = time.perf_counter()
        self.computed = 0

    def update(self, n_rows: int, n_tokens: int, computed: bool) -> None:
        self.done += n_rows
        if computed:
            self.computed += n_rows
            self.tokens += n_tokens
        dt = max(time.perf_counter() - self.t0, 1e-9)
        rate = self.computed / dt
        left = self.total - self.done
        eta = f"{left / rate:.0f}s" if rate > 0 else "?"
        log.info("[%s] %d/%d rows (%.0f%%)  %.2f rows/s  %.0f tok/s  ETA %s", self.label, self.done,
                 self.total, 100.0 * self.done / max(self.total, 1), rate, self.tokens / dt, eta)


def input_hashes(inputs: pd.DataFrame | None, columns: tuple[str, ...], n: int) -> list[str]:
    """Per-row hash of the score columns a scorer reads (empty strings when it reads none)."""
    if not columns:
        return [""] * n
    missing = [c for c in columns if inputs is None or c not in inputs.columns]
    if missing:
        have = ", ".join(c for c in (inputs.columns if inputs is not None else []) if c != "id") or "(none)"
        raise ConfigError(f"A scorer needs the score column(s) {', '.join(map(repr, missing))}, which no earlier "
                          f"scorer of this stage produced (columns so far: {have}). Put the scorer that "
                          "produces them earlier in the stage's 'score' list.")
    out = []
    for row in inputs[list(columns)].itertuples(index=False):
        out.append(sha256_hex(*(_value_text(v) for v in row)))
    return out


def _value_text(v) -> str:
    if isinstance(v, np.ndarray):
        return v.dtype.str + ":" + hashlib.sha256(np.ascontiguousarray(v).tobytes()).hexdigest()
    return repr(v)


def score_dataset(ds: Dataset, scorer: Scorer, ctx: ModelContext, *, shard_size: int = 64,
                  cache_root: Path | None = None, label: str | None = None,
                  inputs: pd.DataFrame | None = None) -> pd.DataFrame:
    """Scores of every row, in dataset order, with an ``id`` column first.

    ``inputs``: earlier score columns aligned with ``ds`` (needed by scorers with required columns).
    """
    if isinstance(shard_size, bool) or not isinstance(shard_size, int) or shard_size < 1:
        raise ConfigError(f"The 'shard_size' parameter (rows per cached shard; CLI --shard-size) must be an int "
                          f">= 1. Got {shard_size!r}.")
    scorer.cache_root = Path(cache_root or cache_dir())    # where scorers keep intermediate stores
    scorer.setup(ctx)
    root = scorer.cache_root / "scores" / f"{scorer.name}-{scorer_key(scorer, ctx)}"
    if root.is_dir():
        remove_stale_tmp_files(root)
    need = tuple(scorer.required_columns())
    hashes = [a + b for a, b in zip(row_hashes(ds), input_hashes(inputs, need, len(ds)))]
    if scorer.scope == "dataset":
        shard_size = max(len(ds), 1)          # one unit: the scorer needs the whole pool at once
    prog = Progress(label or scorer.name, len(ds))
    frames, stats = [], {"cached": 0, "computed": 0, "rejected_shards": 0, "failed": 0}
    for a in range(0, len(ds), shard_size):
        b = min(a + shard_size, len(ds))
        path = root / f"{sha256_hex(*hashes[a:b])[:32]}.parquet"
        cached, rejected = read_shard(path, ds.ids[a:b], scorer)
        stats["rejected_shards"] += rejected
        if cached is not None:
            frames.append(cached)
            stats["cached"] += b - a
            prog.update(b - a, 0, computed=False)
            continue
        before, failed_before = scorer.tokens_processed, scorer.transient_failures
        rows = ds.subset(range(a, b))
        if need:
            cols = scorer.score_batch(rows, inputs.iloc[a:b].reset_index(drop=True))
        else:
            cols = scorer.score_batch(rows)
        frame = _frame(ds.ids[a:b], cols, scorer.name)
        failed = scorer.transient_failures - failed_before
        if failed:                            # not final: not cached, a rerun asks again
            stats["failed"] += failed
        else:
            write_shard(path, frame)
        frames.append(frame)
        stats["computed"] += b - a
        prog.update(b - a, scorer.tokens_processed - before, computed=True)
    out = pd.concat(frames, ignore_index=True) if frames else pd.DataFrame({"id": []})
    out.attrs["cache"] = {**stats, "dir": str(root)}
    return out


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
    import pyarrow.parquet as pq

    try:
        table = pq.read_table(path)
    except FileNotFoundError:
        return None, False
    except Exception as err:            # truncated, empty, not Parquet: pyarrow raises several types
        first = (str(err).splitlines() or [""])[0]
        return _quarantine(path, f"it is unreadable ({type(err).__name__}: {first})"), True
    frame = table.to_pandas()
    problem = _shard_problem(frame, (table.schema.metadata or {}).get(_KEY_META), path.stem, ids, scorer)
    return (frame, False) if problem is None else (_quarantine(path, problem), True)


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
