"""The demo's fleet: real device daemons fed samples over time, at skewed speeds, with outages."""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
from numpy.typing import NDArray

from device.config import (
    BrokerSettings,
    DeviceConfig,
    MqttVersion,
    SampleSettings,
    TrainingSettings,
)
from device.daemon import DeviceDaemon
from serialization import Codec

__all__ = ["Fleet", "FleetSettings", "FleetStats", "SimulatedDevice", "device_names"]


def device_names(count: int) -> list[str]:
    """``dev-000``, ``dev-001``, ... (MQTT usernames and client ids)."""
    return [f"dev-{i:03d}" for i in range(count)]


@dataclass(frozen=True, kw_only=True, slots=True)
class FleetSettings:
    """How the simulated sensors behave."""

    observe_seconds: float = 30.0
    """A device of median speed observes its whole share of the data in this time."""
    speed_sigma: float = 0.8
    """Speeds are lognormal(0, sigma): most devices near 1, a long tail of slow ones."""
    outages_per_minute: float = 1.0
    """Mean rate at which an online device loses its link."""
    outage_seconds: float = 8.0
    """Mean length of an outage (exponential)."""
    training: TrainingSettings = field(
        default_factory=lambda: TrainingSettings(
            epochs=5, batch_size=16, lr=0.1, min_new_samples=10, interval=5.0
        )
    )
    codec: Codec = field(default_factory=Codec)
    seed: int = 0


@dataclass(kw_only=True)
class SimulatedDevice:
    """One daemon and the sensor that feeds it its share of the data, in its own order."""

    daemon: DeviceDaemon
    x: NDArray[np.float32]
    y: NDArray[np.int64]
    speed: float
    rate: float
    """Samples observed per second."""
    observed: int = 0
    owed: float = 0.0
    offline_until: float | None = None


@dataclass(frozen=True, kw_only=True, slots=True)
class FleetStats:
    """Totals over the fleet, read from each daemon's counters."""

    devices: int
    online: int
    samples_observed: int
    samples_total: int
    updates_built: int
    receipts_accepted: int
    receipts_rejected: int
    bytes_up: int
    bytes_down: int
    outages: int


class Fleet:
    """Starts one real DeviceDaemon per share (own MQTT connection, credentials and state
    directory) and, on every ``tick``, feeds samples and switches links on and off."""

    def __init__(
        self,
        *,
        names: list[str],
        shares: list[tuple[NDArray[np.float32], NDArray[np.int64]]],
        passwords: dict[str, str],
        broker_port: int,
        mqtt_version: MqttVersion = "5",
        task: str,
        verify_key_path: Path,
        state_root: Path,
        settings: FleetSettings,
    ) -> None:
        self.settings = settings
        self._rng = np.random.default_rng(settings.seed)
        self.outages = 0
        self.devices: list[SimulatedDevice] = []
        for name, (x, y) in zip(names, shares, strict=True):
            config = DeviceConfig(
                device_id=name,
                task=task,
                state_dir=state_root / name,
                aggregator_key=verify_key_path,
                broker=BrokerSettings(
                    port=broker_port,
                    mqtt_version=mqtt_version,
                    password=passwords[name],
                    reconnect_min=0.2,
                    reconnect_max=2.0,
                ),
                training=settings.training,
                codec=settings.codec,
                samples=SampleSettings(spool_poll=5.0),
            )
            order = self._rng.permutation(len(y))
            speed = float(self._rng.lognormal(0.0, settings.speed_sigma))
            self.devices.append(
                SimulatedDevice(
                    daemon=DeviceDaemon(config),
                    x=x[order],
                    y=y[order],
                    speed=speed,
                    rate=speed * len(y) / settings.observe_seconds,
                )
            )

    def start(self) -> None:
        """Start every daemon (each connects and fetches the retained model)."""
        for device in self.devices:
            device.daemon.start()

    def tick(self, now: float, dt: float) -> None:
        """Advance the sensors by ``dt`` seconds at monotonic time ``now``."""
        outage_probability = 1.0 - math.exp(-self.settings.outages_per_minute * dt / 60.0)
        for device in self.devices:
            self._switch_link(device, now, outage_probability)
            if device.daemon.held_model is None or device.observed >= len(device.y):
                continue
            device.owed += device.rate * dt
            count = min(int(device.owed), len(device.y) - device.observed)
            if count:
                device.owed -= count
                rows = slice(device.observed, device.observed + count)
                device.daemon.observe(device.x[rows], device.y[rows])
                device.observed += count

    def _switch_link(self, device: SimulatedDevice, now: float, probability: float) -> None:
        if device.offline_until is not None:
            if now >= device.offline_until:
                device.offline_until = None
                device.daemon.set_online(True)
        elif self._rng.random() < probability:
            device.offline_until = now + float(self._rng.exponential(self.settings.outage_seconds))
            device.daemon.set_online(False)
            self.outages += 1

    def stats(self) -> FleetStats:
        """Current totals."""
        counters = [d.daemon.db.counters() for d in self.devices]

        def total(name: str) -> int:
            return sum(int(c.get(name, 0)) for c in counters)

        return FleetStats(
            devices=len(self.devices),
            online=sum(d.daemon.connected for d in self.devices),
            samples_observed=sum(d.observed for d in self.devices),
            samples_total=sum(len(d.y) for d in self.devices),
            updates_built=total("updates_built"),
            receipts_accepted=total("receipts_accepted"),
            receipts_rejected=total("receipts_rejected"),
            bytes_up=total("update_bytes_sent"),
            bytes_down=total("release_bytes_received"),
            outages=self.outages,
        )

    def close(self) -> None:
        """Stop every daemon cleanly (offline status, disconnect) and close its state."""
        for device in self.devices:
            device.daemon.stop()
        for device in self.devices:
            device.daemon.join(15)
            device.daemon.close()
