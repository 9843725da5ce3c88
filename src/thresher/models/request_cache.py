"""Per-request on-disk cache for chat (judge) backends, so a crashed 100k-request run resumes.

One SQLite file in WAL mode; a row per successful request, keyed by
``ChatRequest.key(backend.identity())`` (a SHA-256 of model identity, messages and sampling
parameters; never a credential). Only successful results are stored: a failed request is
retried on the next run.

Durability: every ``put`` is its own committed transaction (autocommit), with
``synchronous=NORMAL``. In WAL mode a committed transaction survives the process being killed
(``kill -9``); only an operating-system crash or power loss can drop the last few commits. A
killed run therefore loses at most the requests that were in flight.

Thread safety: one connection per process, guarded by a lock (SQLite serialises writers
anyway). Several processes may share one file: WAL lets readers and a writer work at once and
``busy_timeout`` makes a second writer wait instead of failing.
"""

from __future__ import annotations

import errno
import os
import sqlite3
import threading
import time
from contextlib import contextmanager
from pathlib import Path

from thresher.errors import ConfigError
from thresher.models.chat import ChatResult

SCHEMA_VERSION = 1
_CHUNK = 500            # keys per SELECT ... IN (...): below SQLite's bound-variable limit


class RequestCache:
    """Maps request keys to successful ``ChatResult``s (text and token counts).

    ``get_many(keys) -> {key: ChatResult(cached=True)}`` for the keys present;
    ``put(key, result)`` stores a successful result and commits at once.
    """

    def __init__(self, path):
        self.path = Path(path)
        self._lock = threading.Lock()
        self._conn = None
        self._pid = None
        self._connect()

    # ------------------------------------------------------------------ connection
    def _connect(self) -> None:
        try:
            self.path.parent.mkdir(parents=True, exist_ok=True)
            # isolation_level=None: autocommit, so every INSERT is committed when it returns.
            conn = sqlite3.connect(str(self.path), timeout=30.0, check_same_thread=False,
                                   isolation_level=None)
            conn.execute("PRAGMA journal_mode=WAL")
            conn.execute("PRAGMA synchronous=NORMAL")
            version = conn.execute("PRAGMA user_version").fetchone()[0]
            tables = {r[0] for r in conn.execute("SELECT name FROM sqlite_master WHERE type='table'")}
            if tables and (version != SCHEMA_VERSION or "results" not in tables):
                conn.close()
                raise ConfigError(f"{self.path} is not a thresher request cache (schema version "
                                  f"{SCHEMA_VERSION}). Delete it or choose another 'cache_path'.")
            conn.execute("CREATE TABLE IF NOT EXISTS results (key TEXT PRIMARY KEY, text TEXT NOT NULL, "
                         "prompt_tokens INTEGER NOT NULL, completion_tokens INTEGER NOT NULL, "
                         "created REAL NOT NULL)")
            conn.execute(f"PRAGMA user_version={SCHEMA_VERSION}")
        except sqlite3.Error as e:
            raise self._error(e) from None
        except OSError as e:
            raise ConfigError(f"The request cache {self.path} cannot be opened ({e}). Check that its "
                              f"directory is writable, or choose another 'cache_path'.") from None
        self._conn, self._pid = conn, os.getpid()

    def _error(self, e: sqlite3.Error) -> Exception:
        """The error to raise for a failed SQLite call: a full disk, a busy, damaged or unusable file."""
        text = str(e)
        if "disk is full" in text:
            return OSError(errno.ENOSPC, os.strerror(errno.ENOSPC), str(self.path))
        if "locked" in text or "busy" in text:
            return ConfigError(f"The request cache {self.path} stayed locked by another process for 30 s "
                               f"({text}). Wait for that run to finish, or choose another 'cache_path'.")
        if "malformed" in text or "not a database" in text or not isinstance(e, sqlite3.OperationalError):
            return ConfigError(f"The request cache {self.path} is damaged ({text}). It holds only cached "
                               f"answers: delete it (with its -wal and -shm files) and the requests are sent "
                               f"again, or choose another 'cache_path'.")
        return ConfigError(f"The request cache {self.path} cannot be used ({text}). Check that it and its "
                           f"directory are writable, or delete the file or choose another 'cache_path'.")

    @contextmanager
    def _guard(self):
        """Hold the lock and turn SQLite errors into errors a user can act on."""
        with self._lock:
            try:
                yield self._db()
            except sqlite3.Error as e:
                raise self._error(e) from None

    def _db(self) -> sqlite3.Connection:
        # A connection must not cross fork(): a worker process opens its own.
        if self._conn is None or self._pid != os.getpid():
            self._connect()
        return self._conn

    def close(self) -> None:
        with self._lock:
            if self._conn is not None and self._pid == os.getpid():
                self._conn.close()
            self._conn = None

    def __enter__(self) -> "RequestCache":
        return self

    def __exit__(self, *exc) -> None:
        self.close()

    def __len__(self) -> int:
        with self._guard() as db:
            return db.execute("SELECT COUNT(*) FROM results").fetchone()[0]

    # ------------------------------------------------------------------ access
    def get_many(self, keys) -> dict[str, ChatResult]:
        """The cached results among ``keys`` (absent keys are simply missing from the dict)."""
        keys = list(dict.fromkeys(keys))
        found: dict[str, ChatResult] = {}
        with self._guard() as db:
            for i in range(0, len(keys), _CHUNK):
                chunk = keys[i:i + _CHUNK]
                rows = db.execute("SELECT key, text, prompt_tokens, completion_tokens FROM results "
                                  f"WHERE key IN ({','.join('?' * len(chunk))})", chunk)
                for key, text, pt, ct in rows:
                    found[key] = ChatResult(text, prompt_tokens=pt, completion_tokens=ct, cached=True)
        return found

    def put(self, key: str, result: ChatResult) -> None:
        """Store a successful result (committed before returning). Failed results are refused."""
        if result.text is None:
            raise ValueError(f"RequestCache.put got a failed result (error: {result.error}); only "
                             f"successful results are cached so that failures are retried.")
        with self._guard() as db:
            db.execute("INSERT OR REPLACE INTO results VALUES (?, ?, ?, ?, ?)",
                               (key, result.text, int(result.prompt_tokens),
                                int(result.completion_tokens), time.time()))
