"""``fedmq bench learning`` (b): time to accuracy of sync FedAvg and FedBuff on a flaky fleet."""

from __future__ import annotations

import logging
import time
from collections.abc import Sequence
from dataclasses import dataclass, field

import numpy as np
from numpy.typing import NDArray

from device.config import TrainingSettings, TrainingTrigger
from device.models import ModelSpec, accuracy
from fedmq.bench_system import BenchSystem, total_counter
from fedmq.demo_fleet import FleetSettings, device_names
from fedmq.digits import DigitsSplit

__all__ = ["FleetRun", "FleetScale", "run_fleet"]

logger = logging.getLogger(__name__)

_TICK = 0.1


@dataclass(frozen=True, kw_only=True, slots=True)
class FleetScale:
    """The demo's fleet with time compressed by ``time_scale``: every duration of the demo
    (observe 30 s, outages 1/min of mean 8 s, FedAvg deadline 30 s, FedBuff device
    interval 5 s) is multiplied by it; the device speeds (lognormal 0.8) are unchanged."""

    time_scale: float = 0.2
    buffer_size: int = 5
    """FedBuff K (as in the demo)."""
    fedbuff_trigger: TrainingTrigger = "model"
    """The devices' trigger under FedBuff (FedAvg always uses ``model``)."""
    seed: int = 0

    def fleet_settings(self, training: TrainingSettings) -> FleetSettings:
        """The demo's FleetSettings, scaled, with ``training``."""
        return FleetSettings(
            observe_seconds=30.0 * self.time_scale,
            outages_per_minute=1.0 / self.time_scale,
            outage_seconds=8.0 * self.time_scale,
            training=training,
            seed=self.seed,
        )

    @property
    def deadline_s(self) -> float:
        """FedAvg's round deadline (the demo's 30 s, scaled)."""
        return 30.0 * self.time_scale

    def training(self, strategy: str) -> TrainingSettings:
        """Trigger ``model`` (one update per device per release it holds, on all its samples)
        for FedAvg, and for FedBuff unless ``fedbuff_trigger`` is ``samples``: the demo's
        rule (10 new samples, or every 5 s scaled with any new sample)."""
        trigger = "model" if strategy == "fedavg" else self.fedbuff_trigger
        return TrainingSettings(
            epochs=5,
            batch_size=16,
            lr=0.1,
            min_new_samples=10,
            interval=5.0 * self.time_scale,
            trigger=trigger,
        )


@dataclass(kw_only=True)
class FleetRun:
    """One strategy on the fleet: when each target accuracy was first reached."""

    strategy: str
    seconds_to: dict[float, float | None]
    releases: int = 0
    best_accuracy: float = 0.0
    final_accuracy: float = 0.0
    seconds: float = 0.0
    updates_accepted: int = 0
    updates_rejected: int = 0
    releases_refused: int = 0
    """Releases the devices refused (``release_refused_*``: e.g. older than the one held)."""
    outages: int = 0
    curve: list[tuple[float, float]] = field(default_factory=list)
    """(seconds since the fleet started, accuracy) of every release."""


def run_fleet(
    split: DigitsSplit,
    shares: Sequence[NDArray[np.intp]],
    *,
    strategy: str,
    scale: FleetScale,
    targets: Sequence[float],
    cap_seconds: float,
) -> FleetRun:
    """Run the fleet under ``strategy`` until every target is reached or ``cap_seconds``
    pass; times count from the moment the daemons start (version 1 is already out)."""
    names = device_names(len(shares))
    fedavg = strategy == "fedavg"
    system = BenchSystem(
        devices=names,
        strategy=strategy,
        buffer_size=len(shares) if fedavg else scale.buffer_size,
        deadline_s=scale.deadline_s if fedavg else None,
    )
    run = FleetRun(strategy=strategy, seconds_to=dict.fromkeys(targets))
    with system:
        spec = ModelSpec(kind="softmax", n_features=split.x_train.shape[1], n_classes=10)
        system.init_model(spec, spec.init())
        recorder = system.start_aggregator()
        system.wait_for_version(1, 60.0)
        fleet = system.start_fleet(
            names, split, shares, scale.fleet_settings(scale.training(strategy))
        )
        started = previous = time.monotonic()
        fleet.start()
        seen = 0
        while True:
            now = time.monotonic()
            # The elapsed time, not the nominal tick: a busy CPU must not slow the sensors.
            fleet.tick(now, now - previous)
            previous = now
            releases = [r for r in recorder.releases if r.version > 1]
            for release in releases[seen:]:
                acc = accuracy(release.params, split.x_test, split.y_test)
                at = release.at - started
                run.curve.append((round(at, 3), acc))
                for target, reached in run.seconds_to.items():
                    if reached is None and acc >= target:
                        run.seconds_to[target] = at
            seen = len(releases)
            system.check_aggregator()
            if all(v is not None for v in run.seconds_to.values()) or now - started > cap_seconds:
                break
            time.sleep(max(0.0, _TICK - (time.monotonic() - now)))
        run.seconds = time.monotonic() - started
        run.outages = fleet.outages
        run.updates_accepted = total_counter(system.daemons, "receipts_accepted")
        run.updates_rejected = total_counter(system.daemons, "receipts_rejected")
        run.releases_refused = sum(
            int(value)
            for daemon in system.daemons
            for name, value in daemon.db.counters().items()
            if name.startswith("release_refused_")
        )
    run.releases = len(run.curve)
    if run.curve:
        run.best_accuracy = max(a for _, a in run.curve)
        run.final_accuracy = run.curve[-1][1]
    return run
