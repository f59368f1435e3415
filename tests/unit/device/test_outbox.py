"""Unit tests of device.outbox and device.sender: order, bounds, window, receipts, resends."""

from __future__ import annotations

from pathlib import Path

import pytest

from device.errors import UpdateTooLargeError
from device.outbox import Outbox
from device.sender import UpdateSender
from device.state_db import StateDB
from serialization import Receipt, ReceiptStatus


def uid(n: int) -> bytes:
    """A 16-byte update id."""
    return n.to_bytes(16, "big")


def put(db: StateDB, outbox: Outbox, n: int, size: int = 10) -> list[bytes]:
    """Queue update ``n`` with a ``size``-byte payload; return the dropped ids."""
    with db.transaction() as conn:
        return outbox.put_in(
            conn,
            update_id=uid(n),
            payload=bytes([n]) * size,
            base_version=1,
            num_samples=n,
            created_at=0.0,
        )


def ids(outbox: Outbox) -> list[int]:
    """Queued update numbers in order."""
    return [int.from_bytes(e.update_id, "big") for e in outbox.entries()]


def make_outbox(db: StateDB, max_updates: int = 10, max_bytes: int = 10_000) -> Outbox:
    """An outbox with the given bounds and a 1 KiB payload limit."""
    return Outbox(db, max_updates=max_updates, max_bytes=max_bytes, max_payload_bytes=1024)


def test_outbox_keeps_insertion_order_and_survives_reopen(db: StateDB, tmp_path: Path) -> None:
    """Entries come back oldest first, also after removals and a reopen of the file."""
    outbox = make_outbox(db)
    for n in (5, 3, 9, 1):
        put(db, outbox, n)
    assert outbox.remove(uid(3))
    assert not outbox.remove(uid(3))
    assert ids(outbox) == [5, 9, 1]
    db.close()
    reopened = StateDB(tmp_path / "state.db")
    again = make_outbox(reopened)
    assert ids(again) == [5, 9, 1]
    assert again.payload(uid(9)) == bytes([9]) * 10
    reopened.close()


def test_outbox_drops_oldest_when_count_bound_hit(db: StateDB) -> None:
    """Beyond max_updates the oldest entries go, are returned and counted."""
    outbox = make_outbox(db, max_updates=3)
    dropped = [d for n in range(1, 6) for d in put(db, outbox, n)]
    assert dropped == [uid(1), uid(2)]
    assert ids(outbox) == [3, 4, 5]
    assert db.counters()["outbox_dropped"] == 2


def test_outbox_drops_oldest_when_byte_bound_hit(db: StateDB) -> None:
    """Beyond max_bytes of payload the oldest entries go until the new one fits."""
    outbox = make_outbox(db, max_bytes=250)
    put(db, outbox, 1, 100)
    put(db, outbox, 2, 100)
    assert put(db, outbox, 3, 100) == [uid(1)]
    assert ids(outbox) == [2, 3]


def test_outbox_refuses_payload_above_limit(db: StateDB) -> None:
    """A payload above the payload limit is a permanent error and is not stored."""
    outbox = make_outbox(db)
    with pytest.raises(UpdateTooLargeError) as error:
        put(db, outbox, 1, 1025)
    assert (error.value.size, error.value.limit) == (1025, 1024)
    assert len(outbox) == 0


class Recorder:
    """Stands in for MqttLink.publish: records payloads and hands out mids."""

    def __init__(self) -> None:
        self.sent: list[bytes] = []

    def __call__(self, payload: bytes) -> int:
        self.sent.append(payload)
        return len(self.sent)

    def numbers(self) -> list[int]:
        """The update numbers published, in order."""
        return [p[0] for p in self.sent]


def make_sender(db: StateDB, outbox: Outbox, window: int = 2) -> tuple[UpdateSender, Recorder]:
    """A connected sender with a 10 s receipt timeout capped at 25 s."""
    recorder = Recorder()
    sender = UpdateSender(
        outbox,
        db,
        publish=recorder,
        window=window,
        receipt_timeout=10.0,
        receipt_timeout_max=25.0,
    )
    sender.on_connected(session_present=True)
    return sender, recorder


def receipt(n: int, status: ReceiptStatus) -> Receipt:
    """A receipt for update ``n``."""
    return Receipt(task="t", device_id="d", update_id=uid(n), status=status, model_version=1)


def test_sender_publishes_in_order_within_the_window(db: StateDB) -> None:
    """At most ``window`` updates wait for receipts; the next goes once one is receipted."""
    outbox = make_outbox(db)
    for n in (1, 2, 3):
        put(db, outbox, n)
    sender, recorder = make_sender(db, outbox)
    assert sender.pump(0.0) == 2
    assert sender.pump(1.0) == 0
    assert recorder.numbers() == [1, 2]
    sender.on_receipt(receipt(1, "accepted"))
    assert sender.pump(2.0) == 1
    assert recorder.numbers() == [1, 2, 3]
    assert ids(outbox) == [2, 3]
    assert db.counters()["receipts_accepted"] == 1


def test_sender_republishes_after_receipt_timeout_with_doubling(db: StateDB) -> None:
    """After the PUBACK, no receipt: resend at +10 s, then +20 s, then capped at +25 s."""
    outbox = make_outbox(db)
    put(db, outbox, 7)
    sender, recorder = make_sender(db, outbox)
    sender.pump(0.0)
    assert sender.next_deadline() == float("inf")
    assert sender.on_puback(1, 0, "Success", 0.0)
    assert sender.next_deadline() == 10.0
    assert sender.pump(9.9) == 0
    assert sender.pump(10.0) == 1
    assert sender.on_puback(2, 0, "Success", 10.0)
    assert sender.next_deadline() == 30.0
    assert sender.pump(30.0) == 1
    assert sender.on_puback(3, 0, "Success", 30.0)
    assert sender.next_deadline() == 55.0
    assert recorder.sent == [bytes([7]) * 10] * 3
    sender.on_receipt(receipt(7, "duplicate"))
    assert len(outbox) == 0
    assert sender.next_deadline() == float("inf")


def test_sender_discards_on_permanent_broker_refusal(db: StateDB) -> None:
    """PUBACK 0x95 (too large) removes the update and counts it; 0x97 (quota) keeps it."""
    outbox = make_outbox(db)
    put(db, outbox, 1)
    put(db, outbox, 2)
    sender, recorder = make_sender(db, outbox)
    sender.pump(0.0)
    assert sender.on_puback(1, 0x95, "Packet too large", 0.0)
    assert sender.on_puback(2, 0x97, "Quota exceeded", 0.0)
    assert ids(outbox) == [2]
    assert sender.pump(10.0) == 1
    assert recorder.numbers() == [1, 2, 2]
    counters = db.counters()
    assert (counters["update_refused_by_broker"], counters["update_refused_transient"]) == (1, 1)
    assert not sender.on_puback(99, 0x87, "Not authorized", 0.0)


def test_sender_resends_at_once_when_the_session_was_lost(db: StateDB) -> None:
    """Reconnecting without the old session (receipts lost): waiting updates go out now."""
    outbox = make_outbox(db)
    put(db, outbox, 4)
    sender, recorder = make_sender(db, outbox)
    sender.pump(0.0)
    sender.on_puback(1, 0, "Success", 0.0)
    sender.on_disconnected()
    assert sender.pump(100.0) == 0
    sender.on_connected(session_present=True)
    sender.on_disconnected()
    sender.on_connected(session_present=False)
    assert sender.pump(1.0) == 1
    assert recorder.numbers() == [4, 4]


def test_sender_rejected_receipt_removes_and_counts(db: StateDB) -> None:
    """A rejected update leaves the outbox (resending it would be rejected again)."""
    outbox = make_outbox(db)
    put(db, outbox, 1)
    sender, _ = make_sender(db, outbox)
    sender.pump(0.0)
    sender.on_receipt(receipt(1, "rejected"))
    sender.on_receipt(receipt(1, "accepted"))
    assert len(outbox) == 0
    counters = db.counters()
    assert (counters["receipts_rejected"], counters["receipts_unknown"]) == (1, 1)
    assert "receipts_accepted" not in counters
