"""Compact per-row columns of a streamed dataset: a million rows cost tens of MB, not a list of objects each.

``Strings``: text per row (the ids) as one UTF-8 buffer plus int64 end offsets (8 bytes + the text per row,
against about 60 bytes + the text for a list of ``str``). ``HexDigests``: 32-byte SHA-256 digests as an
``(n, 32)`` uint8 array, read back as the 64-character hex strings ``thresher.io.sha256_hex`` returns.
Both are read-only sequences: ``len``, ``col[i]`` -> str (``i`` any integer, numpy's too), ``col[a:b]`` ->
``list[str]``, iteration in row order, and ``==`` against another sequence of strings.
"""

from __future__ import annotations

import operator
from array import array
from collections.abc import Sequence

import numpy as np

_ITER_BLOCK = 4096            # rows decoded at a time when a column is iterated


class _Column(Sequence):
    """Shared read-only sequence behaviour: ints and slices of rows, iteration in blocks."""

    def _one(self, i: int) -> str:
        raise NotImplementedError

    def _range(self, a: int, b: int) -> list[str]:
        raise NotImplementedError

    def __getitem__(self, key):
        if isinstance(key, slice):
            a, b, step = key.indices(len(self))
            return self._range(a, b) if step == 1 else [self._one(i) for i in range(a, b, step)]
        i = operator.index(key)
        if i < 0:
            i += len(self)
        if not 0 <= i < len(self):
            raise IndexError(f"row {key} out of range for {len(self)} rows")
        return self._one(i)

    def __iter__(self):
        for a in range(0, len(self), _ITER_BLOCK):
            yield from self._range(a, min(a + _ITER_BLOCK, len(self)))

    def __eq__(self, other) -> bool:
        if not isinstance(other, Sequence) or isinstance(other, str) or len(other) != len(self):
            return False
        return all(x == y for x, y in zip(self, other))

    __hash__ = None

    def __repr__(self) -> str:
        head = self[:3]
        return f"{type(self).__name__}({len(self)} rows: {head}{' ...' if len(self) > 3 else ''})"


class Strings(_Column):
    """Text per row: ``data`` (UTF-8 bytes of every row, concatenated) and ``ends`` (int64, row i is
    ``data[ends[i-1]:ends[i]]``, ``ends[-1]`` being 0)."""

    def __init__(self, data: bytes, ends: np.ndarray):
        self.data, self.ends = bytes(data), np.asarray(ends, dtype=np.int64)

    @classmethod
    def from_list(cls, texts) -> "Strings":
        builder = StringsBuilder()
        for text in texts:
            builder.append(text)
        return builder.build()

    def __len__(self) -> int:
        return len(self.ends)

    def _one(self, i: int) -> str:
        start = int(self.ends[i - 1]) if i else 0
        return self.data[start:int(self.ends[i])].decode("utf-8")

    def _range(self, a: int, b: int) -> list[str]:
        if a >= b:
            return []
        bounds = ([int(self.ends[a - 1])] if a else [0]) + self.ends[a:b].tolist()
        data = self.data
        return [data[s:e].decode("utf-8") for s, e in zip(bounds, bounds[1:])]

    def replaced(self, changes: dict[int, str]) -> "Strings":
        """A copy with row ``i`` set to ``changes[i]`` for each key (rows not named keep their text)."""
        if not changes:
            return self
        builder = StringsBuilder()
        for i, text in enumerate(self):
            builder.append(changes.get(i, text))
        return builder.build()


class StringsBuilder:
    """Appends texts one at a time into the buffers of a ``Strings`` (amortised O(1) per row)."""

    def __init__(self):
        self.data, self.ends = bytearray(), array("q")

    def __len__(self) -> int:
        return len(self.ends)

    def append(self, text: str) -> None:
        self.data += text.encode("utf-8")
        self.ends.append(len(self.data))

    def build(self) -> Strings:
        return Strings(bytes(self.data), np.frombuffer(self.ends, dtype=np.int64) if self.ends
                       else np.zeros(0, dtype=np.int64))


class HexDigests(_Column):
    """SHA-256 digests per row, ``digests`` of shape (n, 32) uint8; row i reads as its 64-char lower-case hex."""

    def __init__(self, digests: np.ndarray):
        self.digests = np.asarray(digests, dtype=np.uint8).reshape(-1, 32)

    def __len__(self) -> int:
        return len(self.digests)

    def _one(self, i: int) -> str:
        return self.digests[i].tobytes().hex()

    def _range(self, a: int, b: int) -> list[str]:
        text = self.digests[a:b].tobytes().hex()
        return [text[k:k + 64] for k in range(0, len(text), 64)]
