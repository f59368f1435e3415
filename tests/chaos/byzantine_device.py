"""A Byzantine device: trains honestly on its own data from each release, then corrupts it."""

from __future__ import annotations

import logging
import math
import queue
import threading
from collections import Counter
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any, Literal, TypeAlias

import numpy as np
from numpy.typing import NDArray

from device.config import TrainingSettings
from device.models import Params
from device.training import train_local
from serialization import (
    Codec,
    ModelRelease,
    ModelUpdate,
    SerializationError,
    VerifyKey,
    encode_delta,
    new_update_id,
)
from tests.conftest import Broker
from tests.integration.aggregator_helpers import Device

__all__ = ["ATTACK_KINDS", "Attack", "AttackKind", "ByzantineDevice", "corrupt", "global_norm"]

logger = logging.getLogger(__name__)

AttackKind: TypeAlias = Literal["sign_flip", "noise", "scale"]
ATTACK_KINDS: tuple[AttackKind, ...] = ("sign_flip", "noise", "scale")


@dataclass(frozen=True, kw_only=True, slots=True)
class Attack:
    """How one Byzantine device corrupts its honest delta d.

    ``sign_flip``: -factor * d. ``scale``: factor * d (a boosted update, the model-replacement
    attack). ``noise``: Gaussian noise, d discarded, drawn with global L2 norm factor * |d|.
    """

    kind: AttackKind
    factor: float

    def __str__(self) -> str:
        return f"{self.kind} x{self.factor:g}"


def global_norm(tensors: Mapping[str, NDArray[Any]]) -> float:
    """L2 norm over every element of every tensor (float64 accumulation)."""
    return math.sqrt(sum(float(np.sum(np.square(t, dtype=np.float64))) for t in tensors.values()))


def corrupt(delta: Params, attack: Attack, rng: np.random.Generator) -> Params:
    """The delta ``attack`` sends in place of the honest ``delta``."""
    if attack.kind == "sign_flip":
        return {name: (-attack.factor * d).astype(np.float32) for name, d in delta.items()}
    if attack.kind == "scale":
        return {name: (attack.factor * d).astype(np.float32) for name, d in delta.items()}
    noise = {name: rng.standard_normal(d.shape) for name, d in delta.items()}
    factor = attack.factor * global_norm(delta) / max(global_norm(noise), 1e-12)
    return {name: (factor * z).astype(np.float32) for name, z in noise.items()}


class ByzantineDevice(threading.Thread):
    """A device account (own MQTT connection and credentials) that, for every newer signed
    release it receives, trains from it on its own share exactly as an honest daemon would,
    corrupts the delta with its ``attack`` and publishes it as a ModelUpdate, in its own
    thread (as a daemon trains in its own); ``close()`` stops it. It never sends more than
    ``allowance`` updates, which the scenario keeps at the mean honest device's count: an
    attacker that sent faster would be a flood, not 20% of the fleet."""

    def __init__(
        self,
        *,
        broker: Broker,
        name: str,
        task: str,
        verify_key: VerifyKey,
        x: NDArray[np.float32],
        y: NDArray[np.int64],
        attack: Attack,
        training: TrainingSettings,
        seed: int,
    ) -> None:
        """Connect and subscribe to the model and this device's receipts; start() runs it."""
        super().__init__(name=f"byzantine-{name}", daemon=True)
        self.device_id = name
        self.attack = attack
        self._task = task
        self._verify_key = verify_key
        self._x = x
        self._y = y
        self._training = training
        self._rng = np.random.default_rng(seed)
        self._held = 0
        self.sent = 0
        self.honest_norms: list[float] = []
        self.sent_norms: list[float] = []
        self.receipts: Counter[str] = Counter()
        self.allowance = 0
        """Updates it may have sent so far (set by the scenario: the honest mean)."""
        self.failed: BaseException | None = None
        self._stopping = threading.Event()
        self._device = Device(broker, name, task)

    def run(self) -> None:
        """Until close(): answer the newest release held whenever ``allowance`` permits."""
        pending: ModelRelease | None = None
        try:
            while not self._stopping.wait(0.02):
                pending = self._newest_release() or pending
                if pending is not None and self.sent < self.allowance:
                    self._send(pending)
                    pending = None
        except BaseException as exc:  # reported through ``failed``
            logger.exception("%s failed", self.device_id)
            self.failed = exc

    def count_receipts(self) -> None:
        """Move the receipts received so far into ``receipts`` (by status)."""
        while True:
            try:
                self.receipts[self._device.receipts.get_nowait().status] += 1
            except queue.Empty:
                return

    def _newest_release(self) -> ModelRelease | None:
        """The newest verified release received since the last call, if newer than held."""
        newest: ModelRelease | None = None
        while True:
            try:
                payload = self._device.releases.get_nowait()
            except queue.Empty:
                break
            try:
                release = ModelRelease.decode(payload, self._verify_key)
            except SerializationError as exc:
                logger.warning("%s refused a release: %s", self.device_id, exc)
                continue
            if release.version > self._held:
                newest = release
                self._held = release.version
        return newest

    def _send(self, release: ModelRelease) -> None:
        result = train_local(
            release.float32_tensors(),
            self._x,
            self._y,
            epochs=self._training.epochs,
            batch_size=self._training.batch_size,
            lr=self._training.lr,
            rng=self._rng,
        )
        delta = corrupt(result.delta, self.attack, self._rng)
        self.honest_norms.append(global_norm(result.delta))
        self.sent_norms.append(global_norm(delta))
        update = ModelUpdate(
            task=self._task,
            device_id=self.device_id,
            update_id=new_update_id(),
            base_version=release.version,
            num_samples=result.num_samples,
            codec="none",
            tensors=encode_delta(delta, Codec()),
            metrics={"loss": result.loss},
        )
        self._device.publish(update.encode())
        self.sent += 1

    def close(self) -> None:
        """Stop the thread (if started) and disconnect."""
        self._stopping.set()
        if self.is_alive():
            self.join(10)
        self._device.close()
