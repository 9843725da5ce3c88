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
Progress (samples/s, tokens/s, ETA) is logged as shards finish.
"""

from __future__ import annotations

import hashlib
import json
import logging
import time
from pathlib import Path

import numpy as np
import pandas as pd

from thresher.data.table import Dataset
from thresher.engine.io import write_parquet
from thresher.errors import ConfigError
from thresher.models.bundled import cache_dir
from thresher.scoring.base import ModelContext, Scorer

log = logging.getLogger(__name__)


def _sha(*parts: str) -> str:
    h = hashlib.sha256()
    for p in parts:
        h.update(p.encode("utf-8"))
        h.update(b"\x00")
    return h.hexdigest()


def row_hashes(ds: Dataset) -> list[str]:
    """Content hash of each row: what any scorer may read of it."""
    return [_sha(json.dumps([i, m, meta.get("instruction"), meta.get("input")], ensure_ascii=False))
            for i, m, meta in zip(ds.ids, ds.messages, ds.meta)]


def scorer_key(scorer: Scorer, ctx: ModelContext) -> str:
    params = json.dumps(scorer.param_dict(), sort_keys=True)
    return _sha(scorer.name, scorer.version, params, scorer.model_identity(ctx))[:24]


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
        out.append(_sha(*(_value_text(v) for v in row)))
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
    scorer.cache_root = Path(cache_root or cache_dir())    # where scorers keep intermediate stores
    scorer.setup(ctx)
    root = scorer.cache_root / "scores" / f"{scorer.name}-{scorer_key(scorer, ctx)}"
    need = tuple(scorer.required_columns())
    hashes = [a + b for a, b in zip(row_hashes(ds), input_hashes(inputs, need, len(ds)))]
    if scorer.scope == "dataset":
        shard_size = max(len(ds), 1)          # one unit: the scorer needs the whole pool at once
    prog = Progress(label or scorer.name, len(ds))
    frames, stats = [], {"cached": 0, "computed": 0, "failed": 0}
    for a in range(0, len(ds), shard_size):
        b = min(a + shard_size, len(ds))
        path = root / f"{_sha(*hashes[a:b])[:32]}.parquet"
        if path.exists():
            frames.append(pd.read_parquet(path))
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
            write_parquet(path, frame)
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
