"""Jittered exponential reconnect backoff, so a fleet does not reconnect in lock-step."""

from __future__ import annotations

import random

__all__ = ["Backoff"]


class Backoff:
    """Attempt ``n`` (from 0) waits ``uniform(low, min(high, low * 2**n))`` seconds.

    "Full jitter" between the lower bound and the capped exponential: devices that lost
    the broker together spread over the whole window instead of retrying at the same
    instants, which paho's own backoff (deterministic doubling) would make them do.
    """

    def __init__(self, low: float, high: float, rng: random.Random | None = None) -> None:
        if not 0 < low <= high:
            raise ValueError("backoff needs 0 < low <= high")
        self.low = low
        self.high = high
        self.attempt = 0
        self._rng = rng or random.Random()

    def next_delay(self) -> float:
        """The wait before the next attempt; each call counts one attempt."""
        ceiling = min(self.high, self.low * 2.0 ** min(self.attempt, 62))
        self.attempt += 1
        return self._rng.uniform(self.low, ceiling)

    def reset(self) -> None:
        """After a successful connection: start again from the lower bound."""
        self.attempt = 0
