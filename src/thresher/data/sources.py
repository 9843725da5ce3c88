"""Reading chosen records of a data file again, by the position each had when the file was loaded.

A streamed dataset (``thresher.data.table.StreamedDataset``) keeps no records, only where each kept row is in
its source, and reads a shard's rows when the shard is scored:

* ``JsonlRows``: byte offset of each row's line (one seek and one line read per row);
* ``JsonArrayRows``: byte span ``[start, end)`` of each record of a JSON array (one seek and read per row);
* ``ParquetRows``: row number in the file, read through a cursor over record batches of the row group (rows
  asked for in file order, as the engine's shards and a sorted selection ask, cost one pass over the file);
* ``HFRows``: row number in a Hugging Face ``datasets.Dataset`` (memory-mapped Arrow, random access).

``records(rows)`` returns the records of kept rows ``rows`` (any order, repeats allowed) in that order, each
decoded exactly as the loader decoded it. A file changed since it was loaded (size or modification time) is a
``DataError``: its positions no longer point at the rows that were validated.
"""

from __future__ import annotations

import json
import os
from pathlib import Path

import numpy as np

from thresher.errors import DataError

_PARQUET_BATCH = 1024         # rows per record batch when a Parquet file is read again (as the loader reads it)


class RowSource:
    """Records of the kept rows 0..n-1 of one loaded source."""

    random_access = True      # False: rows out of file order cost a pass each (read a selection at once)

    def __init__(self, path, locations: np.ndarray):
        self.path, self.locations = str(path), np.asarray(locations, dtype=np.int64)
        self._stamp = _stamp(self.path)

    def __len__(self) -> int:
        return len(self.locations)

    def records(self, rows) -> list:
        """Records of kept rows ``rows`` (ints in [0, n)), in the order given."""
        rows = np.asarray(rows, dtype=np.int64).reshape(-1)
        if not len(rows):
            return []
        self._check_unchanged()
        wanted, back = np.unique(rows, return_inverse=True)   # file order, each row once
        got = self._read_sorted(wanted)
        return [got[k] for k in back.tolist()]

    def _read_sorted(self, rows: np.ndarray) -> list:
        raise NotImplementedError

    def _check_unchanged(self) -> None:
        if self._stamp is not None and _stamp(self.path) != self._stamp:
            raise DataError(self.path, "changed since it was loaded (its size or modification time differs), so "
                            "the rows read now would not be the rows that were checked.",
                            hint="Do not modify the data file while thresher reads it; rerun the command.")


def _stamp(path: str):
    try:
        st = os.stat(path)
    except OSError:
        return None
    return (st.st_size, st.st_mtime_ns) if Path(path).is_file() else None


class JsonlRows(RowSource):
    """``locations``: byte offset of each kept row's line in a JSON Lines file."""

    def _read_sorted(self, rows: np.ndarray) -> list:
        out = []
        with open(self.path, "rb") as fh:
            for offset in self.locations[rows].tolist():
                fh.seek(offset)
                text = fh.readline().decode("utf-8")
                if offset == 0 and text.startswith("\ufeff"):
                    text = text[1:]
                out.append(json.loads(text.rstrip("\r\n")))
        return out


class JsonArrayRows(RowSource):
    """``locations``: byte offset where each kept record of a JSON array starts; ``ends``: where it ends."""

    def __init__(self, path, locations: np.ndarray, ends: np.ndarray):
        super().__init__(path, locations)
        self.ends = np.asarray(ends, dtype=np.int64)

    def _read_sorted(self, rows: np.ndarray) -> list:
        out = []
        with open(self.path, "rb") as fh:
            for start, end in zip(self.locations[rows].tolist(), self.ends[rows].tolist()):
                fh.seek(start)
                out.append(json.loads(fh.read(end - start).decode("utf-8")))
        return out


class ParquetRows(RowSource):
    """``locations``: row number in the Parquet file of each kept row."""

    random_access = False

    def __init__(self, path, locations: np.ndarray):
        super().__init__(path, locations)
        self._cursor = None

    def __getstate__(self) -> dict:
        return {**self.__dict__, "_cursor": None}       # an open file reader does not travel

    def _read_sorted(self, rows: np.ndarray) -> list:
        cursor = self._cursor
        file_rows = self.locations[rows]
        if cursor is None or file_rows[0] < cursor.batch_start:
            cursor = self._cursor = _ParquetCursor(self.path)
        return [cursor.record(r) for r in file_rows.tolist()]


class _ParquetCursor:
    """Walks a Parquet file forward batch by batch; ``record(r)`` for rows r in increasing order."""

    def __init__(self, path: str):
        import pyarrow.parquet as pq

        self.file = pq.ParquetFile(path)
        meta = self.file.metadata
        self.group_starts = np.cumsum([0] + [meta.row_group(g).num_rows for g in range(meta.num_row_groups)])
        self.group, self.batches = -1, iter(())
        self.batch, self.batch_start, self.rows = None, 0, []

    def record(self, r: int):
        group = int(np.searchsorted(self.group_starts, r, side="right")) - 1
        if group != self.group:
            self.group = group
            self.batches = self.file.iter_batches(batch_size=_PARQUET_BATCH, row_groups=[group])
            self.batch, self.batch_start = None, int(self.group_starts[group])
        while self.batch is None or r >= self.batch_start + self.batch.num_rows:
            if self.batch is not None:
                self.batch_start += self.batch.num_rows
            self.batch, self.rows = next(self.batches), []
        if not self.rows:
            self.rows = self.batch.to_pylist()
        return self.rows[r - self.batch_start]


class HFRows(RowSource):
    """``locations``: row number of each kept row in a Hugging Face ``datasets.Dataset`` (``table``)."""

    def __init__(self, table, locations: np.ndarray, name: str):
        self.table, self.path = table.with_format(None), name
        self.locations, self._stamp = np.asarray(locations, dtype=np.int64), None

    def _read_sorted(self, rows: np.ndarray) -> list:
        batch = self.table[self.locations[rows].tolist()]
        columns = list(batch)
        return [dict(zip(columns, values)) for values in zip(*(batch[c] for c in columns))]
