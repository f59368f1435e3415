"""Chaos scenario 3: one authenticated device floods its update topic with hostile payloads
while the honest demo fleet keeps learning against one ``fedmq aggregator run`` process."""

from __future__ import annotations

import logging
import time
import tomllib
import urllib.request
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import redis
from prometheus_client.parser import text_string_to_metric_families

from aggregator.keys import TaskKeys
from device.models import ModelSpec, accuracy
from fedmq.bench_fleet import FleetScale
from fedmq.bench_system import TASK, BenchSystem
from fedmq.demo_fleet import device_names
from fedmq.digits import DigitsSplit, dirichlet_partition, load_digits_split
from fedmq.local_servers import LocalServer, free_port
from tests.chaos.hostile_attacker import Attacker, AttackPlan
from tests.chaos.hostile_payloads import HostileFactory, contract_update_id
from tests.chaos.report import ChaosReport
from tests.conftest import Broker

__all__ = ["FULL", "REDUCED", "HostileInputParams", "run"]

logger = logging.getLogger(__name__)

ATTACKER = "mallory"
_PLATEAU_RELEASES = 10


@dataclass(frozen=True, kw_only=True)
class HostileInputParams:
    """Size of one run of the scenario."""

    payloads: int
    """Hostile payloads in the main phase (on the attacker's own update topic)."""
    devices: int
    """Honest daemons (the demo fleet, digits, Dirichlet 0.5)."""
    warmup_updates: int
    """Valid updates the attacker sends first: the templates of mutations and replays."""
    oversized: int
    """Payloads one byte over the broker's message_size_limit (4.5 MiB each)."""
    attack_seconds: float
    run_seconds: float
    """Each fleet run (clean and attacked) lasts at least this long."""
    time_scale: float = 0.2
    accuracy_tolerance: float = 0.02
    seed: int = 0


FULL = HostileInputParams(
    payloads=10_000, devices=20, warmup_updates=10, oversized=10,
    attack_seconds=75.0, run_seconds=80.0,
)  # fmt: skip
REDUCED = HostileInputParams(
    payloads=2_000, devices=8, warmup_updates=5, oversized=2,
    attack_seconds=14.0, run_seconds=16.0,
)  # fmt: skip


@dataclass(kw_only=True)
class _FleetOutcome:
    """What one fleet run left behind."""

    curve: list[tuple[int, float]] = field(default_factory=list)
    """(version, test accuracy) of every release after version 1."""
    honest_receipts: Counter[str] = field(default_factory=Counter)
    metrics: dict[tuple[str, str], float] = field(default_factory=dict)
    """(sample name, reason label or "") -> value, for task ``TASK``."""
    redis_devices: dict[str, int] = field(default_factory=dict)
    redis_seen: set[bytes] = field(default_factory=set)
    aggregator_pid: tuple[int, int] = (0, 0)
    aggregator_alive: bool = False
    releases_after_attack: int = 0
    broke_the_checks: int = 0
    attacker: Attacker | None = None
    names: list[str] = field(default_factory=list)
    task: dict[str, object] = field(default_factory=dict)
    """The aggregator's [[tasks]] table."""

    def plateau(self) -> float:
        """Mean accuracy of the last releases."""
        tail = [a for _, a in self.curve[-_PLATEAU_RELEASES:]]
        return float(np.mean(tail)) if tail else 0.0

    def best(self) -> float:
        """Best accuracy of any release."""
        return max((a for _, a in self.curve), default=0.0)


def _metrics(port: int) -> dict[tuple[str, str], float]:
    with urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=10) as response:
        text = response.read().decode()
    values: dict[tuple[str, str], float] = {}
    for family in text_string_to_metric_families(text):
        for sample in family.samples:
            if sample.labels.get("task") == TASK:
                values[(sample.name, sample.labels.get("reason", ""))] = sample.value
    return values


def _enable_metrics(config: Path) -> tuple[int, dict[str, object]]:
    """Turn the stack's aggregator metrics endpoint on; return (port, the task's table)."""
    port = free_port()
    text = config.read_text()
    if "metrics_port = 0" not in text:
        raise RuntimeError(f"unexpected aggregator config: {text}")
    config.write_text(text.replace("metrics_port = 0", f"metrics_port = {port}"))
    task: dict[str, object] = tomllib.loads(text)["tasks"][0]
    return port, task


def _run_fleet(
    params: HostileInputParams,
    split: DigitsSplit,
    workdir: Path,
    *,
    attack: bool,
) -> _FleetOutcome:
    """One run of the honest fleet, with or without the attacker."""
    scale = FleetScale(time_scale=params.time_scale, seed=params.seed)
    names = device_names(params.devices)
    shares = dirichlet_partition(split.y_train, params.devices, seed=params.seed)
    system = BenchSystem(
        devices=[*names, ATTACKER],
        strategy="fedbuff",
        buffer_size=scale.buffer_size,
        workdir=workdir,
    )
    outcome = _FleetOutcome(names=names)
    with system:
        stack = system.running
        port, task = _enable_metrics(stack.aggregator_config)
        outcome.task = task
        spec = ModelSpec(kind="softmax", n_features=split.x_train.shape[1], n_classes=10)
        system.init_model(spec, spec.init())
        recorder = system.start_aggregator()
        system.wait_for_version(1, 60.0)
        assert stack.aggregator is not None
        first_pid = stack.aggregator.pid
        fleet = system.start_fleet(
            names, split, shares, scale.fleet_settings(scale.training("fedbuff"))
        )
        attacker: Attacker | None = None
        if attack:
            if not isinstance(stack.broker, LocalServer):
                raise RuntimeError("the scenario needs Mosquitto")
            max_staleness = int(task["max_staleness"])  # type: ignore[call-overload]
            factory = HostileFactory(
                task=TASK, device=ATTACKER, victims=names, shapes=spec.shapes(),
                max_staleness=max_staleness, seed=params.seed,
            )  # fmt: skip
            attacker = Attacker(
                broker=Broker(server=stack.broker, passwords=stack.passwords),
                factory=factory,
                plan=AttackPlan(
                    payloads=params.payloads,
                    warmup_updates=params.warmup_updates,
                    oversized=params.oversized,
                    seconds=params.attack_seconds,
                    seed=params.seed,
                ),
                version=lambda: max((r.version for r in recorder.releases), default=1),
            )
        started = previous = time.monotonic()
        fleet.start()
        if attacker is not None:
            attacker.start()
        cap = params.run_seconds + params.attack_seconds + 120.0
        while True:
            now = time.monotonic()
            fleet.tick(now, now - previous)
            previous = now
            system.check_aggregator()
            done = attacker is None or attacker.finished.is_set()
            if (done and now - started >= params.run_seconds) or now - started > cap:
                break
            time.sleep(0.1)
        for release in recorder.releases:
            if release.version > 1:
                acc = accuracy(release.params, split.x_test, split.y_test)
                outcome.curve.append((release.version, acc))
        if attacker is not None:
            outcome.attacker = attacker
            ended = attacker.main_phase_ended_at
            outcome.releases_after_attack = sum(1 for r in recorder.releases if r.at > ended > 0)
        for simulated in fleet.devices:
            simulated.daemon.stop()
        for simulated in fleet.devices:
            simulated.daemon.join(15)
            counters = simulated.daemon.db.counters()
            outcome.honest_receipts.update(
                {k: int(v) for k, v in counters.items() if k.startswith("receipts_")}
            )
        outcome.metrics = _metrics(port)
        keys = TaskKeys.of(TASK)
        with redis.Redis.from_url(stack.redis_url) as client:
            outcome.redis_devices = {
                k.decode(): int(v)
                for k, v in client.hgetall(keys.devices).items()
                if not k.endswith(b":seen")
            }
            outcome.redis_seen = set(client.zrange(keys.seen, 0, -1))
        outcome.aggregator_alive = stack.aggregator.poll() is None
        outcome.aggregator_pid = (first_pid, stack.aggregator.pid)
        log = stack.aggregator_log.read_text(errors="replace")
        outcome.broke_the_checks = log.count("broke the checks")
    return outcome


@dataclass(kw_only=True)
class _Verdicts:
    """The attacker's receipts judged against the contract."""

    wrongly_accepted: int = 0
    """Accepted receipts of an id that no sent payload may have accepted, or accepted twice."""
    legit_accepted: int = 0
    """Accepted receipts of a bit-flipped payload that is a valid update by the contract."""
    legit_candidates: set[bytes] = field(default_factory=set)
    """Ids of bit-flipped payloads valid by the contract at some version (staleness aside)."""


def _judge(attacker: Attacker, task: dict[str, object], last_version: int) -> _Verdicts:
    factory = attacker.factory
    verdicts = _Verdicts()
    accepted = [r for r in attacker.receipts if r.status == "accepted"]
    versions = {r.update_id: r.model_version for r in accepted}
    max_norm = float(task["max_norm"])  # type: ignore[arg-type]
    max_staleness = int(task["max_staleness"])  # type: ignore[call-overload]
    legit: set[bytes] = set()
    for hostile in attacker.sent:
        if hostile.kind != "bit_flip":
            continue

        def check(payload: bytes, staleness: int, version: int) -> bytes | None:
            return contract_update_id(
                payload, task=TASK, device=ATTACKER, shapes=factory.shapes,
                max_norm=max_norm, max_staleness=staleness, version=version,
            )  # fmt: skip

        loose = check(hostile.payload, last_version, last_version)
        if loose is None or loose in attacker.warmup_ids:
            continue
        verdicts.legit_candidates.add(loose)
        if loose in versions and check(hostile.payload, max_staleness, versions[loose]):
            legit.add(loose)
    counts = Counter(r.update_id for r in accepted)
    for uid, times in counts.items():
        if uid in legit:
            verdicts.legit_accepted += 1
            verdicts.wrongly_accepted += times - 1
        else:
            verdicts.wrongly_accepted += times
    return verdicts


def _aggregator_side(attacker: Attacker, outcome: _FleetOutcome, verdicts: _Verdicts) -> int:
    """Hostile payloads the aggregator stored although it should not have, from Redis alone:
    ids of payloads that must be refused found in the dedupe set, the attacker's accepted
    count beyond its warm-up and contract-valid mutations, and counts under device ids that
    are no account of this run."""
    must_refuse = {
        h.update_id
        for h in attacker.sent
        if h.update_id is not None and h.expect in ("rejected", "no_receipt")
    }
    stored_refused = len(must_refuse & outcome.redis_seen)
    allowed = len(attacker.warmup_ids) + len(verdicts.legit_candidates & outcome.redis_seen)
    excess = max(0, outcome.redis_devices.get(ATTACKER, 0) - allowed)
    known = {*outcome.names, ATTACKER}
    ghosts = sum(n for d, n in outcome.redis_devices.items() if d not in known)
    return stored_refused + excess + ghosts


def _figures(report: ChaosReport, clean: _FleetOutcome, hostile: _FleetOutcome) -> None:
    attacker = hostile.attacker
    assert attacker is not None
    if attacker.error is not None:
        report.figure("attacker error", repr(attacker.error))
    last_version = max((v for v, _ in hostile.curve), default=1)
    verdicts = _judge(attacker, hostile.task, last_version)
    sent = Counter(h.kind for h in attacker.sent)
    statuses = Counter(r.status for r in attacker.receipts)
    reasons = Counter(r.reason for r in attacker.receipts if r.status == "rejected")
    metric_reasons = {
        reason: int(value)
        for (name, reason), value in sorted(hostile.metrics.items())
        if name == "fedmq_updates_rejected_total"
    }
    honest_accepted = hostile.honest_receipts["receipts_accepted"]
    metric_accepted = int(hostile.metrics.get(("fedmq_updates_accepted_total", ""), 0))
    report.figure("hostile payloads sent", sum(sent.values()))
    report.figure("  by kind", dict(sorted(sent.items())))
    report.figure("valid warm-up updates of the attacker", len(attacker.warmup_ids))
    report.figure("receipts to the attacker by status", dict(sorted(statuses.items())))
    report.figure("  rejected, by reason (receipts)", dict(sorted(reasons.items())))
    report.figure("rejected by reason (aggregator metrics)", metric_reasons)
    report.figure(
        "oversized: broker PUBACK codes", {hex(k): v for k, v in attacker.oversized_pubacks.items()}
    )
    report.figure("bit flips valid by the contract, accepted", verdicts.legit_accepted)
    report.figure(
        "accepted (metrics) - honest accepted receipts",
        f"{metric_accepted - honest_accepted} (attacker's legit: "
        f"{len(attacker.warmup_ids) + verdicts.legit_accepted})",
    )
    report.figure("attacker's accepted count in Redis", hostile.redis_devices.get(ATTACKER, 0))
    report.figure(
        "honest accuracy clean: plateau / best", f"{clean.plateau():.3f} / {clean.best():.3f}"
    )
    report.figure(
        "honest accuracy attacked: plateau / best",
        f"{hostile.plateau():.3f} / {hostile.best():.3f}",
    )
    report.figure("releases clean / attacked", f"{len(clean.curve)} / {len(hostile.curve)}")
    report.figure("releases after the attack ended", hostile.releases_after_attack)
    wrong_redis = _aggregator_side(attacker, hostile, verdicts)
    report.goal(
        "hostile payloads accepted that should not be (receipts)", "0",
        verdicts.wrongly_accepted, verdicts.wrongly_accepted == 0,
    )  # fmt: skip
    report.goal(
        "hostile payloads stored that should not be (Redis)", "0", wrong_redis, wrong_redis == 0
    )
    unanswered = max(0, attacker.expected_receipts() - len(attacker.receipts))
    report.goal("hostile payloads left without a receipt", "0", unanswered, unanswered == 0)
    refused = attacker.oversized_pubacks.get(0x95, 0)
    report.goal(
        "oversized payloads the broker let through", "0",
        params_oversized := sum(attacker.oversized_pubacks.values()) - refused,
        params_oversized == 0,
    )  # fmt: skip
    report.goal("payloads that broke the aggregator's checks", "0", hostile.broke_the_checks,
                hostile.broke_the_checks == 0)  # fmt: skip
    pids = hostile.aggregator_pid
    restarts = 0 if hostile.aggregator_alive and pids[0] == pids[1] else 1
    report.goal(
        "aggregator restarts", "0",
        f"{restarts} (pid {pids[0]} -> {pids[1]}, alive at the end: {hostile.aggregator_alive})",
        restarts == 0,
    )  # fmt: skip
    report.goal("aggregator kept releasing after the attack", ">= 1 release",
                hostile.releases_after_attack, hostile.releases_after_attack >= 1)  # fmt: skip


def run(params: HostileInputParams, workdir: Path) -> ChaosReport:
    """A clean run of the honest fleet, then the same fleet with the attacker."""
    report = ChaosReport(scenario="3. hostile input through the broker")
    split = load_digits_split()
    clean = _run_fleet(params, split, workdir / "clean", attack=False)
    logger.info("clean run: %d releases, plateau %.3f", len(clean.curve), clean.plateau())
    hostile = _run_fleet(params, split, workdir / "attacked", attack=True)
    _figures(report, clean, hostile)
    gap = clean.plateau() - hostile.plateau()
    report.goal(
        "honest accuracy: clean plateau - attacked plateau",
        f"<= {params.accuracy_tolerance:.2f}",
        f"{gap:+.3f}",
        gap <= params.accuracy_tolerance,
    )
    return report
