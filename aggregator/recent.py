"""A bounded in-process cache of decoded updates between ingest and fold (one replica)."""

from __future__ import annotations

from collections import OrderedDict

from aggregator.strategies.base import DeviceUpdate

__all__ = ["RecentUpdates"]


class RecentUpdates:
    """Decoded updates this replica stored and has not folded yet, by update id.

    The leader takes them from here instead of reading and decoding the payload from
    Redis again. Bounded by bytes (new entries are refused when full); a miss only costs a
    Redis read,
    so memory stays O(bound) whatever the buffer size K. Not thread-safe: the leader guards
    it with its lock.
    """

    def __init__(self, max_bytes: int) -> None:
        """Keep at most ``max_bytes`` of delta arrays."""
        self._max_bytes = max_bytes
        self._bytes = 0
        self._items: OrderedDict[bytes, tuple[DeviceUpdate, int]] = OrderedDict()

    def put(self, update_id: bytes, update: DeviceUpdate) -> bool:
        """Remember ``update`` unless that would pass the bound; return whether it was kept.

        When the fold lags behind ingest the cache fills up; the fold consumes the oldest
        updates first, so it is the newest that must wait in Redis (evicting the oldest
        would make every later read a miss).
        """
        size = sum(array.nbytes for array in update.delta.values())
        if self._bytes + size > self._max_bytes:
            return False
        self._items[update_id] = (update, size)
        self._bytes += size
        return True

    def take(self, update_id: bytes) -> DeviceUpdate | None:
        """Remove and return the update, or None if it is not here."""
        item = self._items.pop(update_id, None)
        if item is None:
            return None
        self._bytes -= item[1]
        return item[0]

    def clear(self) -> None:
        """Forget everything (the replica is no longer the leader)."""
        self._items.clear()
        self._bytes = 0

    @property
    def nbytes(self) -> int:
        """Bytes of delta arrays held."""
        return self._bytes
