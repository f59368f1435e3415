"""The durable outbox: encoded updates kept in SQLite until the aggregator's receipt."""

from __future__ import annotations

import logging
import sqlite3
from dataclasses import dataclass

from device.errors import UpdateTooLargeError
from device.state_db import StateDB

__all__ = ["Outbox", "OutboxEntry"]

logger = logging.getLogger(__name__)


@dataclass(frozen=True, kw_only=True, slots=True)
class OutboxEntry:
    """One queued update, without its payload."""

    seq: int
    update_id: bytes
    base_version: int
    num_samples: int
    size: int


class Outbox:
    """A bounded FIFO of update payloads in ``StateDB.outbox``.

    Policy when full (more than ``max_updates`` entries or ``max_bytes`` of payload): the
    oldest entries are dropped, counted (``outbox_dropped``) and logged at WARNING, because
    the newest update is trained from the newest model and is the least stale. An entry
    leaves otherwise only through ``remove`` (its receipt came) or ``discard`` (a permanent
    refusal).
    """

    def __init__(
        self, db: StateDB, *, max_updates: int, max_bytes: int, max_payload_bytes: int
    ) -> None:
        self._db = db
        self.max_updates = max_updates
        self.max_bytes = max_bytes
        self.max_payload_bytes = max_payload_bytes

    def check_size(self, payload: bytes) -> None:
        """Raise UpdateTooLargeError if ``payload`` could never be published."""
        limit = min(self.max_payload_bytes, self.max_bytes)
        if len(payload) > limit:
            raise UpdateTooLargeError(len(payload), limit)

    def put_in(
        self,
        conn: sqlite3.Connection,
        *,
        update_id: bytes,
        payload: bytes,
        base_version: int,
        num_samples: int,
        created_at: float,
    ) -> list[bytes]:
        """Queue an update inside the caller's transaction; return the ids dropped for room."""
        self.check_size(payload)
        conn.execute(
            "INSERT INTO outbox (update_id, base_version, num_samples, created_at, payload) "
            "VALUES (?, ?, ?, ?, ?)",
            (update_id, base_version, num_samples, created_at, payload),
        )
        dropped: list[bytes] = []
        while True:
            count, total = conn.execute(
                "SELECT COUNT(*), COALESCE(SUM(LENGTH(payload)), 0) FROM outbox"
            ).fetchone()
            if count <= self.max_updates and total <= self.max_bytes:
                break
            seq, oldest = conn.execute(
                "SELECT seq, update_id FROM outbox ORDER BY seq LIMIT 1"
            ).fetchone()
            conn.execute("DELETE FROM outbox WHERE seq = ?", (seq,))
            dropped.append(bytes(oldest))
        if dropped:
            self._db.bump("outbox_dropped", len(dropped))
            logger.warning(
                "outbox full (%d updates / %d bytes): dropped the %d oldest unreceipted updates",
                self.max_updates,
                self.max_bytes,
                len(dropped),
            )
        return dropped

    def entries(self, limit: int = -1) -> list[OutboxEntry]:
        """Queued updates in publishing order (oldest first)."""
        rows = self._db.query(
            "SELECT seq, update_id, base_version, num_samples, LENGTH(payload) "
            "FROM outbox ORDER BY seq LIMIT ?",
            (limit,),
        )
        return [
            OutboxEntry(seq=seq, update_id=bytes(uid), base_version=base, num_samples=n, size=size)
            for seq, uid, base, n, size in rows
        ]

    def payload(self, update_id: bytes) -> bytes | None:
        """The encoded ModelUpdate, or None if the entry is gone."""
        rows = self._db.query("SELECT payload FROM outbox WHERE update_id = ?", (update_id,))
        return bytes(rows[0][0]) if rows else None

    def remove(self, update_id: bytes) -> bool:
        """Delete an entry; False if it was not queued (already removed or dropped)."""
        with self._db.transaction() as conn:
            return conn.execute("DELETE FROM outbox WHERE update_id = ?", (update_id,)).rowcount > 0

    def __len__(self) -> int:
        return int(self._db.query("SELECT COUNT(*) FROM outbox")[0][0])
