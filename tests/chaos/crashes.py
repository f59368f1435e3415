"""Exactly-once under crashes: kill -9 the aggregator, Mosquitto and Redis during an oracle run."""

from __future__ import annotations

import logging
import queue
import random
import signal
import subprocess
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Literal

import numpy as np
import redis
from numpy.typing import NDArray

from aggregator.config import load_config
from aggregator.keys import TaskKeys
from fedmq.local_servers import LocalServer, start_redis
from serialization import ModelRelease, SerializationError, VerifyKey
from tests.chaos.report import ChaosReport
from tests.conftest import Broker, launch_broker
from tests.integration.aggregator_helpers import (
    Device,
    ServiceProcess,
    init_model,
    signing_key,
    write_config,
)
from tests.integration.oracle import ORACLE_TENSOR, Publisher, oracle_tasks, publishers

__all__ = ["FULL", "REDUCED", "CrashParams", "run"]

logger = logging.getLogger(__name__)

TASK = "chaos-crashes"
WATCHER = "watcher-crashes"
"""The device account whose fresh connections read the retained release, as a device would."""

Victim = Literal["aggregator", "broker", "redis"]
Event = Literal["aggregator", "broker", "redis", "snapshot"]


@dataclass(frozen=True, kw_only=True)
class CrashParams:
    """One run: the oracle stream, how often each process is SIGKILLed, and Redis's fsync."""

    updates: int
    devices: int
    aggregator_kills: int
    broker_kills: int
    redis_kills: int
    rate: float
    """Updates per second offered by the whole fleet (first sends; resends come on top)."""
    snapshots: int
    """Moments at which Mosquitto saves its persistence file (SIGUSR1, what its autosave
    does every 120 s) and Redis rewrites its AOF (BGREWRITEAOF), so that a broker restarts
    from a stale snapshot (old retained release, old sessions) and Redis is killed while
    it rewrites."""
    buffer_size: int = 10
    appendfsync: Literal["always", "everysec"] = "always"
    max_outage_s: float = 1.0
    """A killed broker or Redis stays down for a random time up to this long."""
    settle_s: float = 90.0
    """How long every device may take to get its last receipt after the last kill."""
    seed: int = 6

    def __post_init__(self) -> None:
        """The final version is exact only when K divides the stream."""
        if self.updates % self.buffer_size:
            raise ValueError(f"updates ({self.updates}) must be a multiple of K")


FULL = CrashParams(
    updates=5000,
    devices=50,
    aggregator_kills=20,
    broker_kills=5,
    redis_kills=5,
    rate=50.0,
    snapshots=20,
    settle_s=240.0,
)
REDUCED = CrashParams(
    updates=1500,
    devices=20,
    aggregator_kills=6,
    broker_kills=2,
    redis_kills=2,
    rate=50.0,
    snapshots=6,
)


@dataclass(kw_only=True)
class _Chaos:
    """Kills and restarts the three processes; restarts (and counts) aggregator exits that
    no kill caused."""

    service: ServiceProcess
    broker: LocalServer
    redis: LocalServer
    rng: random.Random
    max_outage_s: float
    events: dict[Event, int] = field(
        default_factory=lambda: {"aggregator": 0, "broker": 0, "redis": 0, "snapshot": 0}
    )
    unplanned_exits: list[int] = field(default_factory=list)

    def watch(self) -> None:
        """Restart the aggregator if it exited on its own."""
        process = self.service.process
        if process is not None and process.poll() is not None:
            logger.warning("aggregator exited on its own with %s", process.returncode)
            self.unplanned_exits.append(process.returncode)
            self.service.start()

    def wait(self, seconds: float, until: Callable[[], bool] = lambda: False) -> bool:
        """Watch for ``seconds`` or until ``until()``; return whether it came true."""
        deadline = time.monotonic() + seconds
        while time.monotonic() < deadline:
            self.watch()
            if until():
                return True
            time.sleep(0.1)
        return until()

    def kill(self, victim: Victim) -> None:
        """SIGKILL ``victim`` and start it again (a server after a random outage)."""
        logger.info("kill -9 %s", victim)
        self.events[victim] += 1
        if victim == "aggregator":
            self.watch()
            self.service.kill()
            self.service.start()
            return
        server = self.broker if victim == "broker" else self.redis
        server.kill()
        self.wait(self.rng.uniform(0.0, self.max_outage_s))
        server.start(timeout=60.0)

    def snapshot(self) -> None:
        """Have Mosquitto save its persistence file and Redis rewrite its AOF (if up)."""
        self.events["snapshot"] += 1
        if self.broker.process is not None and self.broker.running:
            self.broker.process.send_signal(signal.SIGUSR1)
        try:
            with redis.Redis(port=self.redis.port, socket_timeout=5) as client:
                client.bgrewriteaof()
        except redis.RedisError as exc:  # down, loading, or a rewrite already running
            logger.info("no AOF rewrite: %s", exc)

    def play(self, params: CrashParams, began: float) -> None:
        """Every kill and snapshot of ``params`` at a random moment of the sending phase."""
        counts: dict[Event, int] = {
            "aggregator": params.aggregator_kills,
            "broker": params.broker_kills,
            "redis": params.redis_kills,
            "snapshot": params.snapshots,
        }
        events = [event for event, count in counts.items() for _ in range(count)]
        self.rng.shuffle(events)
        span = params.updates / params.rate
        moments = sorted(self.rng.uniform(0.05 * span, span) for _ in events)
        for moment, event in zip(moments, events, strict=True):
            self.wait(began + moment - time.monotonic())
            if event == "snapshot":
                self.snapshot()
            else:
                self.kill(event)


def _committed(redis_url: str) -> tuple[int, int, int]:
    """(version, updates_total, stream length) of the task in Redis."""
    keys = TaskKeys.of(TASK)
    with redis.Redis.from_url(redis_url, socket_timeout=10) as client:
        state = client.hgetall(keys.state)
        pending = int(client.xlen(keys.updates))
    return int(state.get(b"version", 0)), int(state.get(b"updates_total", 0)), pending


def _retained_release(broker: Broker, verify_key: VerifyKey) -> ModelRelease | None:
    """The release a device that connects now receives first (the retained one), or None."""
    watcher = Device(broker, WATCHER, TASK)
    try:
        payload = watcher.releases.get(timeout=5.0)
    except queue.Empty:
        return None
    finally:
        watcher.close()
    try:
        return ModelRelease.decode(payload, verify_key)
    except SerializationError:
        logger.exception("the retained release does not verify")
        return None


def _final_release(
    chaos: _Chaos, broker: Broker, redis_url: str, verify_key: VerifyKey, expected: int
) -> ModelRelease | None:
    """Wait (bounded) for Redis to commit ``expected`` and the broker to retain it."""
    chaos.wait(30.0, lambda: _committed(redis_url)[0] >= expected)
    release = None
    deadline = time.monotonic() + 15.0
    while time.monotonic() < deadline:
        chaos.watch()
        release = _retained_release(broker, verify_key)
        if release is not None and release.version >= _committed(redis_url)[0]:
            break
        time.sleep(1.0)
    return release


def _aggregator_log(path: Path) -> str:
    """Process starts, MQTT connects and ERROR lines in the aggregator's log."""
    text = path.read_text(errors="replace") if path.exists() else ""
    starts = text.count(": loaded v")
    connects = text.count("aggregator.service: connected to mqtt://")
    errors = text.count(" ERROR ")
    return f"{starts} loaded / {connects} MQTT connects / {errors} ERROR lines"


def _report(
    params: CrashParams,
    report: ChaosReport,
    senders: list[Publisher],
    counts: NDArray[np.float32],
) -> None:
    """Figures and goals of the stream and the oracle counts."""
    distinct = sum(min(s.sends, len(s.updates)) for s in senders)
    unanswered = sum(len(s.pending) for s in senders)
    rejected = sum(v.count("rejected") for s in senders for v in s.statuses.values())
    lost = int(np.count_nonzero(counts == 0))
    twice = int(np.count_nonzero(counts > 1))
    report.figure("devices", params.devices)
    report.figure("updates sent (distinct)", distinct)
    report.figure("publishes (with resends)", sum(s.sends for s in senders))
    report.figure("rejected receipts", rejected)
    report.figure("counted once", int(np.count_nonzero(counts == 1)))
    report.goal("updates without receipt", "0", unanswered, unanswered == 0)
    report.goal("lost (counted 0)", "0", lost, lost == 0)
    report.goal("counted twice (>1)", "0", twice, twice == 0)


def run(params: CrashParams, workdir: Path) -> ChaosReport:
    """Stream oracle updates from many devices while SIGKILLing the aggregator, Mosquitto
    (persistence on) and Redis (AOF) at random moments; count what the final release holds."""
    began = time.monotonic()
    workdir.mkdir(parents=True, exist_ok=True)
    report = ChaosReport(scenario="exactly-once under crashes")
    broker = launch_broker(workdir / "mosquitto")
    started: list[LocalServer] = [broker.server]
    service: ServiceProcess | None = None
    senders: list[Publisher] = []
    try:
        redis_server = start_redis(workdir / "redis", appendfsync=params.appendfsync)
        started.append(redis_server)
        redis_url = f"redis://127.0.0.1:{redis_server.port}/0"
        config = write_config(
            workdir / "aggregator",
            broker=broker,
            redis_url=redis_url,
            tasks=oracle_tasks(TASK, params.buffer_size),
            replica_id="agg-crashes",
        )
        init_model(config, TASK, {ORACLE_TENSOR: np.zeros(params.updates, dtype=np.float32)})
        verify_key = signing_key(load_config(config, {})).verify_key
        service = ServiceProcess(config, workdir / "aggregator.log")
        service.start()
        broker.add_account(WATCHER)
        names = [f"dev-{i:03d}" for i in range(params.devices)]
        senders = publishers(
            broker,
            TASK,
            names,
            total=params.updates,
            buffer_size=params.buffer_size,
            rate=params.rate,
        )
        chaos = _Chaos(
            service=service,
            broker=broker.server,
            redis=redis_server,
            rng=random.Random(params.seed),
            max_outage_s=params.max_outage_s,
        )
        streaming = time.monotonic()
        for sender in senders:
            sender.start()
        chaos.play(params, streaming)
        logger.info("all kills done after %.0f s; waiting for receipts", time.monotonic() - began)
        chaos.wait(params.settle_s, lambda: all(s.done.is_set() for s in senders))
        for sender in senders:
            sender.stop()
        expected = 1 + params.updates // params.buffer_size
        release = _final_release(chaos, broker, redis_url, verify_key, expected)
        version, updates_total, pending = _committed(redis_url)
        try:
            exit_code: int | None = service.terminate(30.0)
        except subprocess.TimeoutExpired:
            exit_code = None
    finally:
        for sender in senders:
            sender.stop()
            sender.close()
        if service is not None:
            service.kill()
        for server in started:
            server.stop()
    counts = (
        np.zeros(params.updates, dtype=np.float32)
        if release is None
        else np.asarray(release.tensors[ORACLE_TENSOR], dtype=np.float32)
    )
    _report(params, report, senders, counts)
    retained = 0 if release is None else release.version
    report.figure("kills of the aggregator", chaos.events["aggregator"])
    report.figure("kills of the broker", chaos.events["broker"])
    report.figure("kills of Redis", chaos.events["redis"])
    report.figure("broker saves + Redis AOF rewrites", chaos.events["snapshot"])
    report.figure("aggregator log", _aggregator_log(service.log))
    report.figure("Redis appendfsync", params.appendfsync)
    report.figure("committed version in Redis", f"{version} (updates_total {updates_total})")
    report.figure("updates left in the stream", pending)
    report.goal(
        "final version retained on the model topic",
        f"v{expected}",
        f"v{retained}",
        retained == expected == version,
    )
    report.goal(
        "aggregator exits nobody caused",
        "0",
        f"{len(chaos.unplanned_exits)} {chaos.unplanned_exits or ''}".strip(),
        not chaos.unplanned_exits,
    )
    report.goal("aggregator exit code on SIGTERM", "0", exit_code, exit_code == 0)
    report.figure("wall time", f"{time.monotonic() - began:.1f} s")
    return report
