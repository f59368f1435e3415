"""A subscriber of a task's model topic that times each release and keeps which counting-
oracle coordinates it counted, for release latency and exactly-once checks."""

from __future__ import annotations

import queue
import time
from typing import Any

import numpy as np
import paho.mqtt.client as mqtt
from numpy.typing import NDArray

from serialization import ModelRelease, VerifyKey
from tests.conftest import Broker
from tests.integration.aggregator_helpers import Device
from tests.integration.oracle import ORACLE_TENSOR

WATCHER = "scale-watcher"
"""The watcher's device account (it only reads the model topic)."""


class ReleaseWatcher(Device):
    """A subscriber of the model topic that stamps each release on arrival and keeps, per
    version, which oracle coordinates it counted (its difference to the previous one)."""

    def __init__(self, broker: Broker, task: str, verify_key: VerifyKey) -> None:
        """Connect and subscribe (the retained release arrives first)."""
        self.arrivals: queue.Queue[tuple[float, bytes]] = queue.Queue()
        self.verify_key = verify_key
        self.version = 0
        self.model: NDArray[np.float32] | None = None
        self.counted: list[tuple[float, NDArray[np.int64]]] = []  # (arrival, indices)
        super().__init__(broker, WATCHER, task)

    def _on_message(self, _client: mqtt.Client, _userdata: Any, message: mqtt.MQTTMessage) -> None:
        if message.topic.endswith("/model"):
            self.arrivals.put((time.monotonic(), bytes(message.payload)))

    def drain(self) -> None:
        """Decode what arrived; a version repeated after a restart is skipped."""
        while not self.arrivals.empty():
            arrived, payload = self.arrivals.get_nowait()
            release = ModelRelease.decode(payload, self.verify_key)
            if release.version <= self.version:
                continue
            model = np.array(release.tensors[ORACLE_TENSOR], dtype=np.float32)
            if self.model is not None and release.version == self.version + 1:
                self.counted.append((arrived, np.flatnonzero(model != self.model)))
            self.version, self.model = release.version, model


def release_latencies(
    watcher: ReleaseWatcher, results: dict[str, Any], since: float, until: float
) -> NDArray[np.float64]:
    """Latency of every release that arrived in [since, until]: its arrival minus the send time
    of the last-sent update it counted (for an update sent more than once, its latest send
    before the release arrived)."""
    first, last = results["first_sent"], results["last_sent"]
    latencies = []
    for arrived, indices in watcher.counted:
        if since <= arrived <= until and indices.size:
            sent = np.where(last[indices] <= arrived, last[indices], first[indices])
            latencies.append(arrived - float(sent.max()))
    return np.array(latencies)
