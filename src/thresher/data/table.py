"""The canonical table every reader produces and every scorer consumes.

One row per record of the input file. ``messages`` is the conversation in OpenAI/Tulu form
(role in {"system", "user", "assistant"}, content a non-empty string); ``raw`` is the record
exactly as read, so that selected records are written back unchanged in the input's own format.
"""

from __future__ import annotations

from dataclasses import dataclass, field


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
