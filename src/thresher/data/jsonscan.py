"""Decoding JSON text files record by record, with exact positions in every error.

A JSON array file is parsed whole when every record is wanted (one C-speed ``json.loads``), and decoded
lazily record by record (``_ArrayScanner``, reading ``_CHUNK_CHARS`` at a time) when only the first
records are wanted or when the whole parse failed and the failure must be located. A JSON Lines file
is read line by line. Both recognise a file cut off at its end (``CutOff``: the complete records before
the cut can be kept) apart from one malformed in the middle (a ``DataError`` naming line and column).

Records are yielded as ``(index, line or None, record, position)``: ``position`` is where the record is in the
file, for reading it again without the rest (``thresher.data.sources``): the byte offset of its line in JSON
Lines, the byte span ``(start, end)`` of its text when a JSON array is decoded lazily, None when parsed whole.
"""

from __future__ import annotations

import json
import re
from pathlib import Path
from typing import Iterator

from thresher.errors import DataError, as_option

_CHUNK_CHARS = 1 << 22        # 4 Mi characters per read when a JSON array is decoded lazily
_WS = re.compile(r"[ \t\r\n]*")
_NUMBER_TAIL = re.compile(r"[.eE][eE+-]?")
_REFILL_SLACK = 64            # a decode error this close to the buffer's end may be a chunk cut
_DEEP_HINT = ("Flatten or remove that record: records nested more than a few hundred levels deep are not "
              "instruction data.")


class CutOff(Exception):
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
                         hint=f"Pass {as_option('lenient', True)} to keep the complete records, "
                              "or re-download the file.")


def type_name(value) -> str:
    """How a JSON value's type is named in messages: "null", "a boolean", "a number", "a string", ..."""
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

def iter_json_array(path: Path, *, lazy: bool,
                    lenient: bool = False) -> Iterator[tuple[int, None, object, tuple[int, int] | None]]:
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
        yield index, None, record, None


def _rescan(path: Path, text: str, lenient: bool):
    """Decodes a file that failed to parse whole, finding where it breaks before yielding.

    The whole file is wanted, so its own defect (cut off, malformed) is reported before any
    record's: fixing record 4 first would only lead to the same broken file.
    """
    complete, cut = [], None
    try:
        complete.extend(_ArrayScanner(path, None, text).records())
    except CutOff as err:
        if not lenient:
            raise
        cut = err
    yield from complete
    if cut is not None:
        raise cut


def _not_an_array(path, data) -> DataError:
    return DataError(path, f"the top level is {type_name(data)}, not an array of records.",
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
    error positions stay exact for a file of any size. Each record's byte span in the file is
    counted as it is decoded (each character's bytes once: ``_byte_at``).
    """

    def __init__(self, path: Path, more, text: str = ""):
        self.path, self.more, self.buf = path, more, text
        self.eof = more is None
        self.pos, self.n = 0, 0
        self.line_base, self.byte_base, self.col_base = 0, 0, 0
        self.mark_char, self.mark_byte = 0, 0       # a buffer position and its byte offset in the file
        self.span = (0, 0)                          # byte span of the record decoded last
        self.decoder = json.JSONDecoder()

    def records(self):
        try:
            if not self._open_bracket():
                return        # an empty file: the caller reports "no records"
            while True:
                record = self._next_record()
                if record is _END:
                    return
                yield self.n, None, record, self.span
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
        self.mark_char, self.mark_byte = 0, self.byte_base

    def _byte_at(self, pos: int) -> int:
        """Byte offset in the file of buffer position ``pos`` (positions asked for in increasing order)."""
        if self.buf.isascii():              # O(1) in CPython: one byte per character
            return self.byte_base + pos
        if pos < self.mark_char:
            self.mark_char, self.mark_byte = 0, self.byte_base
        self.mark_byte += len(self.buf[self.mark_char:pos].encode("utf-8"))
        self.mark_char = pos
        return self.mark_byte

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
            raise self._not_an_array_or_malformed(first)
        self.pos += 1
        return True

    def _not_an_array_or_malformed(self, first: str) -> DataError:
        """The error for a file whose first value is no array: named by its type when the file holds just
        that one JSON value (as a whole parse names it), else the position where it stops being an array."""
        while self._fill():
            pass
        try:
            value, end = self.decoder.raw_decode(self.buf, self.pos)
        except (json.JSONDecodeError, RecursionError):
            value, end = None, -1
        if end >= 0 and not self.buf[end:].strip(" \t\r\n"):
            return _not_an_array(self.path, value)
        return self._malformed(self.pos, f"expected '[' but found {first!r}")

    def _next_record(self):
        nxt = self._skip_ws()
        if nxt == "]":
            self.pos += 1
            self._check_trailing()
            return _END
        if self.n > 0:
            if nxt == "":
                raise CutOff(self.path, self.n, None, None)
            if nxt != ",":
                raise self._malformed(self.pos, f"expected ',' or ']' after record {self.n - 1}"
                                      f" but found {nxt!r}")
            self.pos += 1
            if self._skip_ws() == "":
                raise CutOff(self.path, self.n, None, None)
        elif nxt == "":
            raise CutOff(self.path, 0, None, None)
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
            self.span = (self._byte_at(start), self._byte_at(end))
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

    def _cut_off(self, start: int) -> CutOff:
        line, _ = self._line_col(start)
        byte = self.byte_base + len(self.buf[:start].encode("utf-8"))
        return CutOff(self.path, self.n, byte, line)

    def _malformed(self, pos: int, msg: str) -> DataError:
        line, col = self._line_col(pos)
        return DataError(self.path, f"is not valid JSON: {msg}.",
                         where=f"line {line}, column {col} (record {self.n})",
                         hint="Fix the JSON at that position; a cut-off file is only recognised "
                              "when the break is at the very end.")


_END = object()


# --------------------------------------------------------------------------------------------
# JSON Lines
# --------------------------------------------------------------------------------------------

def iter_jsonl(path: Path) -> Iterator[tuple[int, int, object, int]]:
    """One record per non-blank line; ``line`` is 1-based; ``position`` is the line's byte offset."""
    index, start = 0, 0
    with open(path, "rb") as fh:
        for number, raw in enumerate(fh, start=1):
            line = _JsonLine(path, raw, number, start, index)
            start += len(raw)
            text = line.decode()
            if text.strip():
                yield index, number, line.parse(text), line.start
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

    def _cut_off(self) -> CutOff:
        return CutOff(self.path, self.index, self.start, self.number, unit="line")

    def _hint(self) -> str:
        hint = "Fix or remove that line; each line must hold one complete JSON object."
        if Path(self.path).suffix.lower() == ".json":
            hint += (" This .json file starts with '{', so it was read as JSON Lines; a JSON "
                     "array of records starts with '['.")
        return hint
