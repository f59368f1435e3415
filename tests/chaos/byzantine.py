"""Chaos scenario 5, Byzantine devices: plain FedBuff and its robust options under attack.

Every run is the real system (``fedmq.bench_system.BenchSystem``: Mosquitto, Redis, one
``fedmq aggregator run`` process) with the demo's fleet of real device daemons
(``fedmq.demo_fleet.Fleet``, time compressed by ``time_scale``) on the digits set split
non-IID (Dirichlet 0.5). The daemon offers no hook to transform its delta, so the Byzantine
devices are ``ByzantineDevice`` clients with their own accounts: on each release they train
honestly on their own share, corrupt the delta and publish it as a ModelUpdate, no more
often than the mean honest device (so they send about byzantine/devices of the updates).

The attacks are sized to hurt, not to be caught: every corrupted delta stays under the
task's ``max_norm`` (1000), so validation accepts it. Sign flip x10 and noise with 10 times
the norm of the attacker's own honest delta are the usual strengths in the Byzantine-robust
FL literature; scaling x100 is a boosted (model-replacement) update: a boost of K already
outweighs a whole buffer, and x100 of these deltas (norm <= ~200) still passes ``max_norm``.

Stopping rule, identical for every run: stop once release ``1 + releases`` is out (so every
run folds ``releases * buffer_size`` updates); the figure is the mean test accuracy of the
last ``last`` releases up to it.
"""

from __future__ import annotations

import asyncio
import logging
import time
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
from numpy.typing import NDArray

from aggregator.admin import initialise_task
from aggregator.config import load_config
from device.models import ModelSpec, accuracy
from device.training import train_local
from fedmq.bench_fleet import FleetScale
from fedmq.bench_system import TASK, BenchError, BenchSystem, total_counter
from fedmq.demo_fleet import device_names
from fedmq.digits import DigitsSplit, dirichlet_partition, load_digits_split
from fedmq.local_servers import LocalServer
from fedmq.reference_fedavg import LocalTraining, local_rng, reference_fedavg
from tests.chaos.byzantine_device import (
    ATTACK_KINDS,
    Attack,
    ByzantineDevice,
    global_norm,
)
from tests.chaos.report import ChaosReport
from tests.conftest import Broker

__all__ = ["FULL", "REDUCED", "ByzantineParams", "Defence", "RunResult", "run"]

logger = logging.getLogger(__name__)

_TICK = 0.05
_START_TIMEOUT = 60.0


@dataclass(frozen=True, kw_only=True)
class ByzantineParams:
    """Size of the scenario and strength of the attack."""

    devices: int
    byzantine: int
    """The last ``byzantine`` of the ``devices`` shares belong to attackers."""
    buffer_size: int = 10
    """FedBuff K of every run."""
    releases: int
    """Stopping rule: every run stops at release 1 + releases."""
    last: int = 10
    """Accuracy = mean over the last ``last`` releases up to the stop."""
    time_scale: float = 0.02
    """The demo fleet's durations (observe 30 s, outages) times this (FleetScale)."""
    flip_factor: float = 10.0
    noise_factor: float = 10.0
    """Noise with this many times the norm of the attacker's honest delta."""
    scale_factor: float = 100.0
    trim_fraction: float = 0.3
    """Trimmed mean: drop this fraction at each end (K = 10: the 3 lowest and 3 highest)."""
    run_timeout_s: float = 60.0
    """A run that has not reached the stop release by then is a failed figure."""
    max_gap: float = 0.02
    """Goal: the best robust option within this of clean."""
    min_harm: float = 0.05
    """Sanity goal: plain FedBuff under attack at least this far below clean."""
    clip_rounds: int = 10
    """Norm clipping bound: the median honest update norm after this many rounds of clean
    sync FedAvg (``honest_norm``)."""
    seed: int = 0

    def attacks(self) -> list[Attack]:
        """The attack of each Byzantine device: the three kinds in turn."""
        factors = {
            "sign_flip": self.flip_factor,
            "noise": self.noise_factor,
            "scale": self.scale_factor,
        }
        kinds = [ATTACK_KINDS[i % len(ATTACK_KINDS)] for i in range(self.byzantine)]
        return [Attack(kind=kind, factor=factors[kind]) for kind in kinds]


FULL = ByzantineParams(devices=50, byzantine=10, buffer_size=20, releases=100, run_timeout_s=300.0)
REDUCED = ByzantineParams(devices=20, byzantine=4, releases=80, max_gap=0.04)
"""CI size. After 800 folds of K = 10 with 4 of 20 devices attacking, the best robust option
lands 1-3 points below clean from run to run (median and trimmed mean are still climbing),
so CI checks 4 points; the issue's 2 points is the goal of FULL (bench/soak.py)."""


@dataclass(frozen=True, kw_only=True)
class Defence:
    """One aggregator configuration: the task's ``robust`` table and whether attackers run."""

    name: str
    robust: dict[str, str | float] = field(default_factory=dict)
    attacked: bool = True

    def task_options(self) -> str:
        """The TOML line for the aggregator's task table."""
        if not self.robust:
            return ""
        items = ", ".join(
            f'{k} = "{v}"' if isinstance(v, str) else f"{k} = {v!r}" for k, v in self.robust.items()
        )
        return f"robust = {{ {items} }}\n"


@dataclass(kw_only=True)
class RunResult:
    """What one run measured."""

    defence: Defence
    accuracy: float | None = None
    """Mean over the last releases up to the stop; None: the stop release never came."""
    releases: int = 0
    seconds: float = 0.0
    honest_accepted: int = 0
    honest_rejected: int = 0
    byzantine_sent: int = 0
    byzantine_accepted: int = 0
    byzantine_rejected: int = 0
    error: str | None = None
    curve: list[float] = field(default_factory=list)
    """Test accuracy of releases 2 .. the stop, in version order."""


def defences(params: ByzantineParams, clip_norm: float) -> list[Defence]:
    """Clean, plain FedBuff, then every robust option and the combinations with clipping."""
    trim: dict[str, str | float] = {"rule": "trimmed_mean", "trim_fraction": params.trim_fraction}
    clip: dict[str, str | float] = {"clip_norm": round(clip_norm, 4)}
    return [
        Defence(name="clean (no attackers, plain FedBuff)", attacked=False),
        Defence(name="plain FedBuff"),
        Defence(name="median", robust={"rule": "median"}),
        Defence(name=f"trimmed mean {params.trim_fraction:g}", robust=trim),
        Defence(name="norm clip", robust=clip),
        Defence(name="norm clip + median", robust={"rule": "median", **clip}),
        Defence(name=f"norm clip + trimmed mean {params.trim_fraction:g}", robust={**trim, **clip}),
    ]


def honest_norm(split: DigitsSplit, shares: list[NDArray[np.intp]], rounds: int) -> float:
    """Median L2 norm of the honest devices' local updates from the model that sync FedAvg
    over their shares reaches after ``rounds`` rounds (``fedmq.reference_fedavg``; the
    initial model for 0): the clip bound an operator reads off a clean fleet's updates."""
    spec = ModelSpec(kind="softmax", n_features=split.x_train.shape[1], n_classes=10)
    model = reference_fedavg(split, shares, rounds=rounds)[-1].params if rounds else spec.init()
    training = LocalTraining()
    norms = [
        global_norm(
            train_local(
                model,
                split.x_train[idx],
                split.y_train[idx],
                epochs=training.epochs,
                batch_size=training.batch_size,
                lr=training.lr,
                rng=local_rng(rounds, k),
            ).delta
        )
        for k, idx in enumerate(shares)
    ]
    return float(np.median(norms))


def _init_model(system: BenchSystem, spec: ModelSpec) -> None:
    """Version 1 = ``spec.init()``, stored in-process (``BenchSystem.init_model`` runs the
    CLI in a fresh interpreter: seconds per run under load)."""
    stack = system.running
    config = load_config(stack.aggregator_config, {})
    metadata = spec.to_metadata()
    asyncio.run(initialise_task(config, stack.signing_key, TASK, spec.init(), metadata))


def _run_one(
    params: ByzantineParams,
    defence: Defence,
    split: DigitsSplit,
    shares: list[NDArray[np.intp]],
    workdir: Path,
) -> RunResult:
    """One run in its own BenchSystem under ``workdir`` (removed afterwards)."""
    workdir.mkdir(parents=True)
    system = BenchSystem(
        devices=device_names(params.devices),
        strategy="fedbuff",
        buffer_size=params.buffer_size,
        task_options=defence.task_options(),
        workdir=workdir,
    )
    with system:
        try:
            return _drive(params, defence, split, shares, system)
        except BenchError as exc:
            log = system.running.aggregator_log
            tail = log.read_text(errors="replace")[-1500:] if log.exists() else ""
            raise BenchError(f"{exc.reason}; aggregator log tail:\n{tail}") from exc


def _drive(
    params: ByzantineParams,
    defence: Defence,
    split: DigitsSplit,
    shares: list[NDArray[np.intp]],
    system: BenchSystem,
) -> RunResult:
    scale = FleetScale(
        time_scale=params.time_scale, buffer_size=params.buffer_size, seed=params.seed
    )
    names = device_names(params.devices)
    honest = params.devices - params.byzantine
    stack = system.running
    _init_model(system, ModelSpec(kind="softmax", n_features=split.x_train.shape[1], n_classes=10))
    recorder = system.start_aggregator()
    system.wait_for_version(1, _START_TIMEOUT)
    training = scale.training("fedbuff")
    fleet = system.start_fleet(
        names[:honest], split, shares[:honest], scale.fleet_settings(training)
    )
    if not isinstance(stack.broker, LocalServer):
        raise BenchError("the Byzantine devices need Mosquitto")
    broker = Broker(server=stack.broker, passwords=stack.passwords)
    attackers: list[ByzantineDevice] = []
    result = RunResult(defence=defence)
    try:
        for k, attack in enumerate(params.attacks() if defence.attacked else []):
            idx = shares[honest + k]
            attackers.append(
                ByzantineDevice(
                    broker=broker,
                    name=names[honest + k],
                    task=TASK,
                    verify_key=stack.signing_key.verify_key,
                    x=split.x_train[idx],
                    y=split.y_train[idx],
                    attack=attack,
                    training=training,
                    seed=params.seed * 1000 + k,
                )
            )
        stop = 1 + params.releases
        started = previous = time.monotonic()
        fleet.start()
        for attacker in attackers:
            attacker.start()
        while not recorder.wait_for_version(stop, 0.0):
            now = time.monotonic()
            fleet.tick(now, now - previous)
            previous = now
            # Paced at the mean honest device's count, phases spread so that the
            # attackers do not all send at the same moment.
            built = total_counter(system.daemons, "updates_built") / honest
            for k, attacker in enumerate(attackers):
                attacker.allowance = int(built + k / len(attackers))
            system.check_aggregator()
            if failed := [a for a in attackers if a.failed is not None]:
                raise BenchError(f"{failed[0].device_id} failed: {failed[0].failed!r}")
            if now - started > params.run_timeout_s:
                result.error = f"no release v{stop} within {params.run_timeout_s:.0f} s"
                break
            time.sleep(max(0.0, _TICK - (time.monotonic() - now)))
        result.seconds = time.monotonic() - started
        for attacker in attackers:
            attacker.count_receipts()
    finally:
        for attacker in attackers:
            attacker.close()
    releases = sorted(
        (r for r in recorder.releases if 1 < r.version <= stop), key=lambda r: r.version
    )
    result.releases = len(releases)
    result.curve = [accuracy(r.params, split.x_test, split.y_test) for r in releases]
    if result.error is None:
        result.accuracy = float(np.mean(result.curve[-params.last :]))
    result.honest_accepted = total_counter(system.daemons, "receipts_accepted")
    result.honest_rejected = total_counter(system.daemons, "receipts_rejected")
    result.byzantine_sent = sum(a.sent for a in attackers)
    result.byzantine_accepted = sum(a.receipts["accepted"] for a in attackers)
    result.byzantine_rejected = sum(a.receipts["rejected"] for a in attackers)
    return result


def run(params: ByzantineParams, workdir: Path) -> ChaosReport:
    """Run clean, plain FedBuff under attack and each robust option under attack."""
    split = load_digits_split()
    shares = dirichlet_partition(split.y_train, params.devices, alpha=0.5, seed=params.seed)
    clip_norm = honest_norm(split, shares[: params.devices - params.byzantine], params.clip_rounds)
    report = ChaosReport(scenario="Byzantine devices (issue 6 part 5)")
    report.figure(
        "devices",
        f"{params.devices} ({params.byzantine} Byzantine: "
        f"{', '.join(str(a) for a in params.attacks())})",
    )
    report.figure(
        "stopping rule",
        f"release v{1 + params.releases} "
        f"({params.releases * params.buffer_size} updates folded, K = "
        f"{params.buffer_size}); accuracy = mean of the last {params.last} releases",
    )
    report.figure(
        "clip_norm",
        f"{clip_norm:.4f} (median honest update norm after "
        f"{params.clip_rounds} rounds of clean sync FedAvg)",
    )
    results: list[RunResult] = []
    for i, defence in enumerate(defences(params, clip_norm)):
        try:
            result = _run_one(params, defence, split, shares, workdir / f"run-{i}")
        except BenchError as exc:
            result = RunResult(defence=defence, error=exc.reason)
        logger.info("byzantine: %s -> %s", defence.name, result)
        results.append(result)
        acc = "n/a" if result.accuracy is None else f"{result.accuracy:.4f}"
        report.figure(
            f"accuracy: {defence.name}",
            f"{acc}; {result.releases} releases in {result.seconds:.1f} s; honest updates "
            f"accepted {result.honest_accepted} rejected {result.honest_rejected}; Byzantine "
            f"sent {result.byzantine_sent} accepted {result.byzantine_accepted} rejected "
            f"{result.byzantine_rejected}" + (f"; ERROR {result.error}" if result.error else ""),
        )
    _goals(report, params, results)
    return report


def _goals(report: ChaosReport, params: ByzantineParams, results: list[RunResult]) -> None:
    clean, plain, robust = results[0], results[1], results[2:]
    scored = [r for r in robust if r.accuracy is not None]
    best = max(scored, key=lambda r: r.accuracy or 0.0, default=None)
    if clean.accuracy is None or best is None or best.accuracy is None:
        report.goal(
            "best robust option vs clean",
            f"<= {params.max_gap * 100:g} points below",
            "a run did not finish",
            held=False,
        )
    else:
        gap = clean.accuracy - best.accuracy
        report.goal(
            "best robust option vs clean",
            f"<= {params.max_gap * 100:g} points below",
            f"{best.defence.name}: {gap * 100:+.1f} points below clean",
            held=gap <= params.max_gap,
        )
    if clean.accuracy is None or plain.accuracy is None:
        report.goal(
            "attack hurts plain FedBuff",
            f">= {params.min_harm * 100:g} points below clean (else the attack is too weak)",
            "a run did not finish",
            held=False,
        )
    else:
        harm = clean.accuracy - plain.accuracy
        report.goal(
            "attack hurts plain FedBuff",
            f">= {params.min_harm * 100:g} points below clean (else the attack is too weak)",
            f"{harm * 100:.1f} points below clean",
            held=harm >= params.min_harm,
        )
