"""The canonical table every reader produces and every scorer consumes.

One row per record of the input file. ``messages`` is the conversation in OpenAI/Tulu form
(role in {"system", "user", "assistant"}, content a non-empty string); ``raw`` is the record
exactly as read, so that selected records are written back unchanged in the input's own format.

``StreamedDataset`` is the same table for a pool too large to hold: it keeps the ids, the row hashes and
where each row is in its source (``thresher.data.sources``), and ``subset`` reads just the rows it is asked
for, returning an ordinary ``Dataset``. Memory is then a few tens of bytes per row plus the id text.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np

from thresher.data.columns import HexDigests, Strings
from thresher.data.records import NORMALISERS
from thresher.data.sources import RowSource


@dataclass
class LoadReport:
    """What happened while reading a file: shown in run summaries and written to manifests."""

    path: str
    fmt: str                      # alpaca | sharegpt | messages
    container: str                # json | jsonl | parquet | hf
    n_read: int = 0               # records decoded from the file
    n_kept: int = 0               # rows in the returned Dataset
    skipped: dict[str, int] = field(default_factory=dict)   # reason -> count (on_invalid="skip")
    examples: list[str] = field(default_factory=list)       # first few skip messages, verbatim
    truncated: str | None = None  # set when a cut-off file was read leniently: where it breaks
    limit: int | None = None      # records requested by the caller (None = all)

    def as_dict(self) -> dict:
        return dict(self.__dict__)


@dataclass
class Dataset:
    ids: list[str]                          # record's own "id" field, else stable content hash
    messages: list[list[dict[str, str]]]    # canonical conversation per row
    raw: list[dict]                         # the record as read, unchanged
    meta: list[dict]                        # per row: {"index": record index in file, "line": int|None,
                                            #  and for alpaca rows "instruction", "input"}
    fmt: str                                # alpaca | sharegpt | messages
    container: str                          # json | jsonl | parquet | hf
    source: str                             # path or dataset name
    report: LoadReport

    def __len__(self) -> int:
        return len(self.ids)

    def subset(self, indices) -> "Dataset":
        idx = [int(i) for i in indices]
        return Dataset(
            ids=[self.ids[i] for i in idx],
            messages=[self.messages[i] for i in idx],
            raw=[self.raw[i] for i in idx],
            meta=[self.meta[i] for i in idx],
            fmt=self.fmt, container=self.container, source=self.source, report=self.report,
        )


class StreamedDataset(Dataset):
    """A ``Dataset`` whose records stay in their source until a shard asks for them.

    ``ids`` (``Strings``) and ``hashes`` (``HexDigests``: ``thresher.data.fingerprint.row_hashes``) are held
    for every row; ``index`` (int64) and ``line`` (int64, JSON Lines only, else None) are each row's
    ``meta["index"]`` and ``meta["line"]``; ``rows`` reads records back. ``subset(indices)`` returns a
    materialised, picklable ``Dataset`` of those rows. Reading ``messages``, ``raw`` or ``meta`` of the whole
    dataset reads every row once and keeps them (what small-data callers such as training need).
    """

    def __init__(self, ids: Strings, hashes: HexDigests, index: np.ndarray, line: np.ndarray | None,
                 rows: RowSource, fmt: str, container: str, source: str, report: LoadReport):
        self.ids, self.hashes, self.index, self.line, self.rows = ids, hashes, index, line, rows
        self.fmt, self.container, self.source, self.report = fmt, container, source, report
        self._whole: Dataset | None = None

    def subset(self, indices) -> Dataset:
        idx = np.asarray([int(i) for i in indices], dtype=np.int64)
        records = self.rows.records(idx)
        messages, meta = [], []
        for i, record in zip(idx.tolist(), records):
            msgs, extra = NORMALISERS[self.fmt](record)
            messages.append(msgs)
            meta.append({"index": int(self.index[i]),
                         "line": int(self.line[i]) if self.line is not None else None, **extra})
        return Dataset(ids=[self.ids[i] for i in idx.tolist()], messages=messages, raw=records, meta=meta,
                       fmt=self.fmt, container=self.container, source=self.source, report=self.report)

    def iter_records(self, indices, block: int = 4096):
        """The records of rows ``indices``, in that order, read ``block`` rows at a time (or all at once
        from a source without random access, so that it is passed over once)."""
        idx = np.asarray(indices, dtype=np.int64).reshape(-1)
        step = block if self.rows.random_access else max(len(idx), 1)
        for a in range(0, len(idx), step):
            yield from self.rows.records(idx[a:a + step])

    def materialised(self) -> Dataset:
        """Every row read into an ordinary ``Dataset`` (once; kept for later calls)."""
        if self._whole is None:
            self._whole = self.subset(range(len(self)))
        return self._whole

    messages = property(lambda self: self.materialised().messages)
    raw = property(lambda self: self.materialised().raw)
    meta = property(lambda self: self.materialised().meta)

    def __repr__(self) -> str:
        return (f"StreamedDataset({len(self)} rows of {self.source!r}, {self.fmt}, {self.container}, "
                f"read by {type(self.rows).__name__})")
