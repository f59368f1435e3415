"""The hostile device of the hostile-input scenario: an authenticated account that sends
valid updates first, then hostile payloads at a steady rate, and collects its receipts."""

from __future__ import annotations

import logging
import queue
import threading
import time
from collections import Counter
from collections.abc import Callable
from dataclasses import dataclass

import numpy as np

from serialization import DEFAULT_LIMITS, Receipt, update_topic
from tests.chaos.hostile_payloads import KINDS, Hostile, HostileFactory
from tests.conftest import Broker
from tests.integration.aggregator_helpers import Device
from tests.integration.test_acl import RawClient

__all__ = ["AttackPlan", "Attacker"]

logger = logging.getLogger(__name__)

_WEIGHTS = {"bit_flip": 3, "random_bytes": 2, "truncation": 2}
"""Relative share of each kind in the plan (1 unless listed)."""


@dataclass(frozen=True, kw_only=True)
class AttackPlan:
    """How much the attacker sends, and how fast."""

    payloads: int
    warmup_updates: int
    oversized: int
    seconds: float
    """The main phase is spread evenly over this time."""
    seed: int


class Attacker(threading.Thread):
    """Runs the attack in its own thread; read the fields once ``finished`` is set."""

    def __init__(
        self,
        *,
        broker: Broker,
        factory: HostileFactory,
        plan: AttackPlan,
        version: Callable[[], int],
    ) -> None:
        """Prepare; ``version()`` gives the current model version (for stale bases)."""
        super().__init__(daemon=True, name="hostile-device")
        self.broker = broker
        self.factory = factory
        self.plan = plan
        self.version = version
        self.sent: list[Hostile] = []
        self.warmup_ids: list[bytes] = []
        self.receipts: list[Receipt] = []
        self.oversized_pubacks: Counter[int] = Counter()
        self.error: BaseException | None = None
        self.finished = threading.Event()
        self.main_phase_ended_at = 0.0

    def run(self) -> None:
        """Warm up, attack, send the oversized payloads, wait for the receipts."""
        device = Device(self.broker, self.factory.device, self.factory.task)
        try:
            self._warm_up(device)
            self._attack(device)
            self._oversized()
            self._await_receipts(device, timeout=60.0)
        except BaseException as exc:  # reported by the scenario
            self.error = exc
            logger.exception("the attacker failed")
        finally:
            device.close()
            self.finished.set()

    def _collect(self, device: Device, timeout: float = 0.0) -> None:
        try:
            self.receipts.append(device.receipts.get(timeout=timeout))
            while True:
                self.receipts.append(device.receipts.get_nowait())
        except queue.Empty:
            return

    def _warm_up(self, device: Device) -> None:
        pending: dict[bytes, bytes] = {}
        for _ in range(self.plan.warmup_updates):
            payload, uid = self.factory.valid(self.version())
            pending[uid] = payload
            device.publish(payload)
        deadline = time.monotonic() + 60.0
        while len(self.warmup_ids) < self.plan.warmup_updates:
            if time.monotonic() > deadline:
                raise TimeoutError(f"warm-up updates not accepted: {self.receipts}")
            self._collect(device, timeout=0.5)
            for receipt in self.receipts:
                if receipt.status == "accepted" and receipt.update_id in pending:
                    self.warmup_ids.append(receipt.update_id)
                    self.factory.accepted.append(pending.pop(receipt.update_id))
        self.receipts.clear()

    def _kinds(self) -> list[str]:
        weights = np.array([_WEIGHTS.get(k, 1) for k in KINDS], dtype=np.float64)
        counts = np.floor(weights / weights.sum() * self.plan.payloads).astype(int)
        counts[0] += self.plan.payloads - int(counts.sum())
        kinds = [k for k, n in zip(KINDS, counts, strict=True) for _ in range(n)]
        np.random.default_rng(self.plan.seed).shuffle(kinds)
        return kinds

    def _attack(self, device: Device) -> None:
        kinds = self._kinds()
        interval = self.plan.seconds / max(1, len(kinds))
        started = time.monotonic()
        for i, kind in enumerate(kinds):
            hostile = self.factory.make(kind, self.version())
            if hostile.foreign_topic_task is not None:
                topic = update_topic(hostile.foreign_topic_task, self.factory.device)
                device.client.publish(topic, hostile.payload, qos=1)
            else:
                device.publish(hostile.payload)
            self.sent.append(hostile)
            if i % 64 == 0:
                self._collect(device)
            delay = started + (i + 1) * interval - time.monotonic()
            if delay > 0:
                time.sleep(delay)
        self.main_phase_ended_at = time.monotonic()

    def _oversized(self) -> None:
        """Payloads one byte over the broker's message_size_limit, over a raw MQTT 5
        connection (paho 2.x cannot read the broker's 0x95 PUBACK)."""
        if not self.plan.oversized:
            return
        name = self.factory.device
        topic = update_topic(self.factory.task, name)
        size = DEFAULT_LIMITS.max_payload_bytes + 1
        with RawClient(
            self.broker.port, name, self.broker.passwords[name], client_id=f"{name}-raw"
        ) as raw:
            for _ in range(self.plan.oversized):
                payload = self.factory.rng.bytes(64) + bytes(size - 64)
                self.oversized_pubacks[raw.publish(topic, payload)] += 1
                self.sent.append(Hostile(kind="oversized", payload=b"", expect="no_receipt"))

    def expected_receipts(self) -> int:
        """Receipts a correct aggregator sends for what was sent."""
        return sum(1 for h in self.sent if h.expect != "no_receipt")

    def _await_receipts(self, device: Device, timeout: float) -> None:
        deadline = time.monotonic() + timeout
        while len(self.receipts) < self.expected_receipts() and time.monotonic() < deadline:
            self._collect(device, timeout=0.5)
        self._collect(device, timeout=1.0)  # anything beyond the expected count
