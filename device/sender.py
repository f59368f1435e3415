"""Drains the outbox: in order, a bounded window in flight, republished until receipted."""

from __future__ import annotations

import logging
import math
from collections.abc import Callable, Iterable
from dataclasses import dataclass

from device.errors import UpdateTooLargeError
from device.outbox import Outbox
from device.state_db import StateDB
from serialization import Receipt

__all__ = ["NO_MATCHING_SUBSCRIBERS", "TRANSIENT_REFUSALS", "UpdateSender"]

logger = logging.getLogger(__name__)

NO_MATCHING_SUBSCRIBERS = 0x10
TRANSIENT_REFUSALS = frozenset({0x89, 0x97})
"""Server busy and quota exceeded: the same bytes may pass later. Every other PUBACK
reason >= 0x80 (too large, not authorised, topic or payload invalid, ...) would refuse the
same bytes again, so such an update is discarded, counted and logged."""


@dataclass(kw_only=True, slots=True)
class _Flight:
    update_id: bytes
    mid: int
    sent_at: float
    attempts: int
    acked: bool = False


class UpdateSender:
    """The in-flight window over the outbox; all methods run on the daemon thread.

    An update is published QoS 1; after its PUBACK it waits for the aggregator's Receipt,
    which is the only thing (besides a permanent refusal) that removes it from the outbox.
    Without a receipt it is republished, same bytes and update id, after
    ``receipt_timeout * 2**(attempts - 1)`` seconds (capped), and at once after a
    reconnect whose session the broker had lost (receipts queued in it are gone). paho
    itself resends what was not PUBACKed when the connection comes back.
    """

    def __init__(
        self,
        outbox: Outbox,
        db: StateDB,
        *,
        publish: Callable[[bytes], int],
        window: int,
        receipt_timeout: float,
        receipt_timeout_max: float,
    ) -> None:
        self._outbox = outbox
        self._db = db
        self._publish = publish
        self.window = window
        self.receipt_timeout = receipt_timeout
        self.receipt_timeout_max = receipt_timeout_max
        self.connected = False
        self._flights: dict[bytes, _Flight] = {}
        self._by_mid: dict[int, bytes] = {}
        self._dirty = True

    @property
    def in_flight(self) -> int:
        """Updates published and not yet receipted."""
        return len(self._flights)

    def notify(self) -> None:
        """The outbox changed (a new update): look at it on the next ``pump``."""
        self._dirty = True

    def on_connected(self, *, session_present: bool) -> None:
        """Resume sending; without the old session every waiting update is due now."""
        self.connected = True
        self._dirty = True
        if not session_present:
            for flight in self._flights.values():
                if flight.acked:
                    flight.sent_at = -math.inf

    def on_disconnected(self) -> None:
        """Stop publishing until the next ``on_connected``."""
        self.connected = False

    def forget(self, update_ids: Iterable[bytes]) -> None:
        """Updates that left the outbox another way (dropped when it was full)."""
        for update_id in update_ids:
            flight = self._flights.pop(update_id, None)
            if flight is not None:
                self._by_mid.pop(flight.mid, None)
        self._dirty = True

    def _deadline(self, flight: _Flight) -> float:
        wait = self.receipt_timeout * 2.0 ** min(flight.attempts - 1, 30)
        return flight.sent_at + min(wait, self.receipt_timeout_max)

    def next_deadline(self) -> float:
        """When ``pump`` next has a republish to do (inf: nothing scheduled)."""
        if not self.connected:
            return math.inf
        acked = [self._deadline(f) for f in self._flights.values() if f.acked]
        return min(acked, default=math.inf)

    def pump(self, now: float) -> int:
        """Publish due republishes and new updates up to the window; return how many."""
        if not self.connected:
            return 0
        sent = 0
        for flight in list(self._flights.values()):
            if flight.acked and now >= self._deadline(flight):
                logger.info("no receipt for update %s: publishing it again", flight.update_id.hex())
                sent += self._send(flight.update_id, now, flight.attempts + 1)
        if self._dirty and len(self._flights) < self.window:
            self._dirty = False
            for entry in self._outbox.entries(limit=self.window):
                if len(self._flights) >= self.window:
                    break
                if entry.update_id not in self._flights:
                    sent += self._send(entry.update_id, now, 1)
        return sent

    def _send(self, update_id: bytes, now: float, attempts: int) -> int:
        old = self._flights.pop(update_id, None)
        if old is not None:
            self._by_mid.pop(old.mid, None)
        payload = self._outbox.payload(update_id)
        if payload is None:
            return 0
        try:
            self._outbox.check_size(payload)
        except UpdateTooLargeError as exc:
            self._discard(update_id, "update_too_large", str(exc))
            return 0
        mid = self._publish(payload)
        self._db.bump("update_bytes_sent", len(payload))
        self._flights[update_id] = _Flight(
            update_id=update_id, mid=mid, sent_at=now, attempts=attempts
        )
        self._by_mid[mid] = update_id
        return 1

    def on_puback(self, mid: int, reason_code: int, reason: str, now: float) -> bool:
        """Handle a PUBACK; False if ``mid`` is not one of our updates."""
        update_id = self._by_mid.pop(mid, None)
        if update_id is None:
            return False
        flight = self._flights[update_id]
        if reason_code >= 0x80 and reason_code not in TRANSIENT_REFUSALS:
            self._discard(update_id, "update_refused_by_broker", f"{reason} (0x{reason_code:02x})")
            return True
        if reason_code >= 0x80:
            self._db.bump("update_refused_transient")
            logger.warning("broker refused update %s for now: %s", update_id.hex(), reason)
        elif reason_code == NO_MATCHING_SUBSCRIBERS:
            self._db.bump("update_no_subscribers")
            logger.info("no aggregator subscribed to update %s yet", update_id.hex())
        flight.acked = True
        flight.sent_at = now
        return True

    def _discard(self, update_id: bytes, counter: str, detail: str) -> None:
        with self._db.transaction():
            self._outbox.remove(update_id)
            self._db.bump(counter)
        self.forget([update_id])
        logger.warning("discarding update %s: %s", update_id.hex(), detail)

    def on_receipt(self, receipt: Receipt) -> None:
        """Remove the receipted update (accepted, duplicate or rejected) from the outbox."""
        with self._db.transaction():
            removed = self._outbox.remove(receipt.update_id)
            self._db.bump(f"receipts_{receipt.status}" if removed else "receipts_unknown")
        self.forget([receipt.update_id])
        if not removed:
            logger.debug("receipt for update %s that is not queued", receipt.update_id.hex())
            return
        if receipt.status == "rejected":
            logger.warning(
                "aggregator rejected update %s: %s", receipt.update_id.hex(), receipt.reason
            )
        else:
            logger.info("update %s %s", receipt.update_id.hex(), receipt.status)
