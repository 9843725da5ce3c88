"""A small resumable record store: one JSON object per line, rewritten atomically after each update.

Evaluation runs (answer generation, judging) save what they produced as it is produced; a rerun loads
the file and skips the finished records. The file is replaced by a fully written and fsync'ed temporary
file (``thresher.io.atomic_path``), so a killed run leaves either the old or the new file, never a
half-written line.
"""

from __future__ import annotations

import json
from pathlib import Path

from thresher.errors import DataError
from thresher.io import atomic_path


class JsonlStore:
    """Records keyed by ``key_fn(record)``; ``None`` path keeps them in memory only."""

    def __init__(self, path, key_fn):
        self.path = Path(path) if path is not None else None
        self.key_fn = key_fn
        self.records: dict[str, dict] = {}
        if self.path is not None and self.path.exists():
            for n, line in enumerate(self.path.read_text(encoding="utf-8").splitlines(), 1):
                if not line.strip():
                    continue
                try:
                    rec = json.loads(line)
                except json.JSONDecodeError as e:
                    raise DataError(self.path, f"not valid JSON: {e}", where=f"line {n}",
                                    hint="Delete the file to start this step again.") from None
                self.records[self.key_fn(rec)] = rec

    def get(self, key: str) -> dict | None:
        return self.records.get(key)

    def put(self, records: list[dict]) -> None:
        """Add or replace ``records`` and rewrite the file atomically."""
        for rec in records:
            self.records[self.key_fn(rec)] = rec
        if self.path is None:
            return
        with atomic_path(self.path, fsync=True) as tmp, open(tmp, "w", encoding="utf-8") as f:
            for rec in self.records.values():
                f.write(json.dumps(rec, ensure_ascii=False) + "\n")
