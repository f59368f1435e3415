"""The daemon's SQLite state file (WAL): schema, thread-safe transactions and counters."""

from __future__ import annotations

import logging
import sqlite3
import threading
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from pathlib import Path
from typing import Any

from device.errors import StateError

__all__ = ["STATE_FILE", "StateDB"]

logger = logging.getLogger(__name__)

STATE_FILE = "state.db"

_SCHEMA = """
CREATE TABLE IF NOT EXISTS meta (key TEXT PRIMARY KEY, value) WITHOUT ROWID;
CREATE TABLE IF NOT EXISTS samples (
    id INTEGER PRIMARY KEY AUTOINCREMENT,
    dim INTEGER NOT NULL,
    x BLOB NOT NULL,
    y INTEGER NOT NULL
);
CREATE TABLE IF NOT EXISTS spool_ingested (
    name TEXT NOT NULL, size INTEGER NOT NULL, mtime_ns INTEGER NOT NULL,
    PRIMARY KEY (name, size, mtime_ns)
) WITHOUT ROWID;
CREATE TABLE IF NOT EXISTS outbox (
    seq INTEGER PRIMARY KEY AUTOINCREMENT,
    update_id BLOB NOT NULL UNIQUE,
    base_version INTEGER NOT NULL,
    num_samples INTEGER NOT NULL,
    created_at REAL NOT NULL,
    payload BLOB NOT NULL
);
CREATE TABLE IF NOT EXISTS residual (
    name TEXT PRIMARY KEY, shape TEXT NOT NULL, data BLOB NOT NULL
) WITHOUT ROWID;
"""


class StateDB:
    """One SQLite connection shared by the daemon's threads behind a re-entrant lock.

    ``synchronous=FULL`` in WAL mode: a committed transaction survives a crash or power cut,
    an uncommitted one leaves no trace. Every store (samples, outbox, residual) writes
    through ``transaction()``, so several of them can commit together.
    """

    def __init__(self, path: Path) -> None:
        self.path = path
        self._lock = threading.RLock()
        self._depth = 0
        try:
            path.parent.mkdir(parents=True, exist_ok=True)
            self._conn = sqlite3.connect(path, isolation_level=None, check_same_thread=False)
            self._conn.execute("PRAGMA journal_mode=WAL")
            self._conn.execute("PRAGMA synchronous=FULL")
            self._conn.execute("PRAGMA busy_timeout=5000")
            (verdict,) = self._conn.execute("PRAGMA quick_check").fetchone()
            if verdict != "ok":
                raise StateError(str(path), f"integrity check failed: {verdict}")
            self._conn.executescript(_SCHEMA)
        except (sqlite3.Error, OSError) as exc:
            raise StateError(str(path), str(exc)) from exc

    @contextmanager
    def transaction(self) -> Iterator[sqlite3.Connection]:
        """Hold the lock and one write transaction; nested calls join the outer one."""
        with self._lock:
            if self._depth:
                self._depth += 1
                try:
                    yield self._conn
                finally:
                    self._depth -= 1
                return
            self._conn.execute("BEGIN IMMEDIATE")
            self._depth = 1
            try:
                yield self._conn
            except BaseException:
                self._conn.execute("ROLLBACK")
                raise
            else:
                self._conn.execute("COMMIT")
            finally:
                self._depth = 0

    def query(self, sql: str, params: Sequence[Any] = ()) -> list[Any]:
        """All rows of a read query."""
        with self._lock:
            return self._conn.execute(sql, params).fetchall()

    def bump(self, counter: str, by: int = 1) -> int:
        """Add ``by`` to a persistent counter and return its new value."""
        with self.transaction() as conn:
            conn.execute(
                "INSERT INTO meta (key, value) VALUES (?, ?) "
                "ON CONFLICT (key) DO UPDATE SET value = value + excluded.value",
                (f"count.{counter}", by),
            )
            value: int = conn.execute(
                "SELECT value FROM meta WHERE key = ?", (f"count.{counter}",)
            ).fetchone()[0]
        return value

    def counters(self) -> dict[str, int]:
        """Every persistent counter (refusals, drops, bad lines, ...)."""
        rows = self.query("SELECT key, value FROM meta WHERE key LIKE 'count.%' ORDER BY key")
        return {key.removeprefix("count."): int(value) for key, value in rows}

    def get(self, key: str, default: Any = None) -> Any:
        """A meta value (int, float, str or bytes)."""
        rows = self.query("SELECT value FROM meta WHERE key = ?", (key,))
        return rows[0][0] if rows else default

    def put(self, key: str, value: int | float | str | bytes) -> None:
        """Set a meta value."""
        with self.transaction() as conn:
            conn.execute("INSERT OR REPLACE INTO meta (key, value) VALUES (?, ?)", (key, value))

    def close(self) -> None:
        """Checkpoint the WAL and close."""
        with self._lock:
            try:
                self._conn.execute("PRAGMA wal_checkpoint(TRUNCATE)")
            except sqlite3.Error as exc:
                logger.warning("WAL checkpoint of %s failed: %s", self.path, exc)
            self._conn.close()
