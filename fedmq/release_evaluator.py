"""An MQTT subscriber that verifies every model release and scores it on a test set."""

from __future__ import annotations

import logging
import threading
import time
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import paho.mqtt.client as mqtt
from numpy.typing import NDArray
from paho.mqtt.enums import CallbackAPIVersion

from device.config import MqttVersion
from fedmq.watch import Dataset, ReleaseWatcher
from serialization import VerifyKey, model_topic

__all__ = ["ReleaseEvaluator", "ScoredRelease"]

logger = logging.getLogger(__name__)


@dataclass(frozen=True, kw_only=True, slots=True)
class ScoredRelease:
    """One verified release and its test accuracy."""

    version: int
    received_at: float
    """Seconds since the evaluator started."""
    accuracy: float
    update_count: int
    payload_bytes: int


class ReleaseEvaluator:
    """Subscribes to a task's retained model topic with its own account, verifies each
    release (ReleaseWatcher) and records its accuracy on ``x``/``y``; ``mqtt_version``
    "3.1.1" for a broker without MQTT 5 (the embedded one)."""

    def __init__(
        self,
        *,
        host: str,
        port: int,
        username: str,
        password: str,
        task: str,
        verify_key: VerifyKey,
        x: NDArray[np.float32],
        y: NDArray[np.int64],
        mqtt_version: MqttVersion = "5",
    ) -> None:
        self._watcher = ReleaseWatcher(
            task=task,
            verify_key=verify_key,
            dataset=Dataset(path=Path("<test split>"), x=x, y=y),
        )
        self._topic = model_topic(task)
        self._lock = threading.Lock()
        self.releases: list[ScoredRelease] = []
        self.refused = 0
        self._started = time.monotonic()
        self._client = mqtt.Client(
            CallbackAPIVersion.VERSION2,
            client_id=username,
            protocol=mqtt.MQTTv5 if mqtt_version == "5" else mqtt.MQTTv311,
        )
        self._client.username_pw_set(username, password)
        self._client.on_connect = lambda c, _u, _f, rc, _p: (
            c.subscribe(self._topic, qos=1) if not rc.is_failure else None
        )
        self._client.on_message = self._on_message
        self._client.connect_async(host, port)

    def start(self) -> None:
        """Connect in paho's thread."""
        self._started = time.monotonic()
        self._client.loop_start()

    def stop(self) -> None:
        """Disconnect."""
        self._client.disconnect()
        self._client.loop_stop()

    @property
    def latest(self) -> ScoredRelease | None:
        """The newest verified release, if any."""
        with self._lock:
            return self.releases[-1] if self.releases else None

    def _on_message(self, _c: mqtt.Client, _u: object, message: mqtt.MQTTMessage) -> None:
        payload = bytes(message.payload)
        seen = self._watcher.handle(payload)
        if seen.outcome == "refused":
            self.refused += 1
            logger.warning("evaluator refused a release: %s", seen.line)
            return
        if seen.outcome != "verified" or seen.release is None or seen.accuracy is None:
            return
        scored = ScoredRelease(
            version=seen.release.version,
            received_at=time.monotonic() - self._started,
            accuracy=seen.accuracy,
            update_count=seen.release.update_count,
            payload_bytes=len(payload),
        )
        with self._lock:
            self.releases.append(scored)
