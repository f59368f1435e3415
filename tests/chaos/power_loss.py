"""Chaos scenario 2, device power loss: daemons SIGKILLed at random; stores and outboxes survive."""

from __future__ import annotations

import logging
import threading
import time
from collections import Counter
from dataclasses import dataclass
from pathlib import Path
from typing import cast

import numpy as np
import redis

from aggregator.config import load_config
from aggregator.keys import TaskKeys
from device.models import ModelSpec
from fedmq.local_servers import LocalServer
from serialization import VerifyKey
from tests.chaos.power_loss_fleet import (
    AIMS,
    BUILT,
    REJECTED,
    Drained,
    Fleet,
    Sections,
    Tally,
)
from tests.chaos.power_loss_stores import PHASES
from tests.chaos.report import ChaosReport
from tests.conftest import Broker, launch_broker, launch_redis
from tests.integration.aggregator_helpers import ServiceProcess, init_model, signing_key
from tests.integration.aggregator_helpers import write_config as write_aggregator_config

__all__ = ["FULL", "REDUCED", "PowerLossParams", "run"]

logger = logging.getLogger(__name__)

TASK = "powerloss"
FEATURES = 64
CLASSES = 10


@dataclass(frozen=True, kw_only=True)
class PowerLossParams:
    """Size and pace of the device power-loss scenario."""

    kills: int
    daemons: int
    hidden: int = 13_000
    """MLP width (64-hidden-10): each release is about 300 * hidden bytes (3.9 MB)."""
    buffer_size: int = 3
    """The aggregator's FedBuff K: one release every K updates, to every daemon."""
    max_samples: int = 64
    feed_every: float = 0.3
    feed_rows: int = 4
    run_for: tuple[float, float] = (0.2, 2.0)
    """An unaimed kill strikes this long (uniform, s) after the start."""
    aim_timeout: float = 4.0
    drain_timeout: float = 90.0
    seed: int = 6


FULL = PowerLossParams(kills=200, daemons=6)
REDUCED = PowerLossParams(kills=30, daemons=4)


def _training_sections(params: PowerLossParams) -> Sections:
    return {
        "training": {"trigger": "model", "epochs": 1, "batch_size": 32, "lr": 0.01},
        "codec": {"name": "topk", "topk_fraction": 0.05},
        "samples": {"max_samples": params.max_samples, "spool_poll": 0.05},
        "outbox": {"receipt_timeout": 10.0, "receipt_timeout_max": 20.0},
    }


def _drain_sections(params: PowerLossParams) -> Sections:
    """As in training, but no round is ever due: the final restart only sends."""
    sections = _training_sections(params)
    sections["training"] = {"trigger": "samples", "min_new_samples": 1_000_000}
    return sections


def _start_aggregator(
    workdir: Path, broker: Broker, redis_url: str, params: PowerLossParams
) -> tuple[ServiceProcess, VerifyKey]:
    tasks = (
        f'[[tasks]]\nname = "{TASK}"\nstrategy = "fedbuff"\nbuffer_size = {params.buffer_size}\n'
        "max_staleness = 1000000\nmax_norm = 1000000.0\n"
        'staleness = {name = "constant"}\nserver_optimizer = {name = "sgd", lr = 1.0}\n'
    )
    path = write_aggregator_config(
        workdir / "aggregator", broker=broker, redis_url=redis_url, tasks=tasks, extra="history = 2"
    )
    spec = ModelSpec(kind="mlp", n_features=FEATURES, n_classes=CLASSES, hidden=params.hidden)
    init_model(path, TASK, spec.init(np.random.default_rng(params.seed)))
    service = ServiceProcess(path, workdir / "aggregator.log")
    service.start()
    service.wait_for_log("connected to mqtt", 1, timeout=60)
    return service, signing_key(load_config(path, {})).verify_key


def run(params: PowerLossParams, workdir: Path) -> ChaosReport:
    """Kill -9 device daemons ``params.kills`` times, check their stores after each kill,
    then drain every outbox into the aggregator and count what arrived."""
    started = time.monotonic()
    report = ChaosReport(scenario="device power loss (issue 6.2)")
    broker = launch_broker(workdir / "mosquitto")
    servers: list[LocalServer] = [broker.server]
    service: ServiceProcess | None = None
    fleet: Fleet | None = None
    redis_client: redis.Redis | None = None
    stop_feed = threading.Event()
    try:
        redis_server = launch_redis(workdir / "redis")
        servers.append(redis_server)
        redis_url = f"redis://127.0.0.1:{redis_server.port}/0"
        keys = TaskKeys.of(TASK)
        redis_client = redis.Redis.from_url(redis_url)
        service, verify_key = _start_aggregator(workdir, broker, redis_url, params)
        key_path = workdir / "aggregator.pub.pem"
        key_path.write_bytes(verify_key.to_pem())
        fleet = Fleet(
            workdir / "devices",
            broker,
            size=params.daemons,
            task=TASK,
            key_path=key_path,
            verify_key=verify_key,
            features=FEATURES,
            classes=CLASSES,
            accepted=lambda update_id: redis_client.zscore(keys.seen, update_id) is not None,
        )
        fleet.configure(_training_sections(params))
        feeder = threading.Thread(
            target=fleet.feed,
            args=(params.feed_every, params.feed_rows, params.seed, stop_feed),
            daemon=True,
        )
        feeder.start()
        tally = fleet.kill_many(
            params.kills, run_for=params.run_for, aim_timeout=params.aim_timeout, seed=params.seed
        )
        chaos_time = time.monotonic() - started
        stop_feed.set()
        feeder.join()

        def version() -> int:
            return int(redis_client.hget(keys.state, "version") or 0)

        drained = fleet.drain(_drain_sections(params), params.drain_timeout, version)
        accepted = set(cast(list[bytes], redis_client.zrange(keys.seen, 0, -1)))
        per_device = cast(dict[bytes, bytes], redis_client.hgetall(keys.devices))
        devices = {k.decode(): int(v) for k, v in per_device.items() if b":" not in k}
        reached = version()
        folded = int(redis_client.hget(keys.state, "updates_total") or 0)
        pending = int(redis_client.xlen(keys.updates))
        _figures(
            report, params=params, tally=tally, fleet=fleet, accepted=accepted, devices=devices
        )
        report.figure("aggregator version reached", reached)
        report.figure(
            "updates folded into releases / pending in the stream", f"{folded} / {pending}"
        )
        _drain_goals(report, drained)
        report.figure("kill phase wall time", f"{chaos_time:.1f} s")
    finally:
        stop_feed.set()
        if fleet is not None:
            fleet.stop()
        if redis_client is not None:
            redis_client.close()
        if service is not None:
            service.kill()
        for server in servers:
            server.stop()
    report.figure("wall time", f"{time.monotonic() - started:.1f} s")
    return report


def _drain_goals(report: ChaosReport, drained: Drained) -> None:
    report.goal("daemons that did not drain their outbox", "0", drained.undrained,
                drained.undrained == 0)  # fmt: skip
    report.goal("daemons not holding the newest release at the end", "0", drained.stale,
                drained.stale == 0)  # fmt: skip
    report.goal("daemons that did not stop cleanly (SIGTERM)", "0", drained.unclean,
                drained.unclean == 0)  # fmt: skip


def _figures(
    report: ChaosReport,
    *,
    params: PowerLossParams,
    tally: Tally,
    fleet: Fleet,
    accepted: set[bytes],
    devices: dict[str, int],
) -> None:
    """The issue's figures and goals from what the daemons logged, left and Redis holds."""
    slots = fleet.slots
    traced = {s.name: s.logged_ids(BUILT) | s.outboxed for s in slots}
    written: set[bytes] = set().union(*traced.values())
    outboxed: set[bytes] = set().union(*(s.outboxed for s in slots))
    rejected: set[bytes] = set().union(*(s.logged_ids(REJECTED) for s in slots))
    counters: Counter[str] = sum((s.counters() for s in slots), Counter())
    lost = written - accepted
    # Each acceptance adds 1 to its device's count in Redis; the dedupe set holds each id once.
    twice = sum(devices.values()) - len(accepted)
    phases = ", ".join(f"{p} {tally.phases[p]}" for p in PHASES)
    report.figure("release source", f"the real aggregator (FedBuff K={params.buffer_size})")
    report.figure("daemons in parallel", params.daemons)
    size = f"{300 * params.hidden / 1e6:.1f} MB"
    report.figure("model, updates", f"{size} releases; top-k 5 % updates + {size} residual")
    report.figure("kills (by where they landed)", f"{tally.kills} ({phases})")
    report.figure("kills by aim", ", ".join(f"{a} {tally.aims[a]}" for a in AIMS))
    report.figure("releases written to model stores", counters["releases_accepted"])
    report.figure("updates written to an outbox (distinct)", len(written))
    report.figure("  of which seen in an outbox right after a kill", len(outboxed))
    report.figure("updates accepted by the aggregator", len(accepted))
    second = counters["receipts_duplicate"] + counters["receipts_unknown"]
    report.figure("second receipts (an update resent, deduplicated)", second)
    report.figure(
        "lost updates by known cause",
        f"rejected by the aggregator {len(lost & rejected)}, "
        f"dropped by a full outbox {counters['outbox_dropped']}",
    )
    report.figure("accepted but never traced to an outbox", len(accepted - written))
    report.figure("daemon internal errors", counters["internal_errors"])
    errors = f" (harness errors: {tally.harness_errors})" if tally.harness_errors else ""
    report.goal("kills", f">= {params.kills}", f"{tally.kills}{errors}",
                tally.kills >= params.kills and not errors)  # fmt: skip
    hits = {
        "model write": tally.phases["model write"],
        "training": tally.phases["training"],
        "publish (outboxed, no receipt)": tally.phases["publish"] + tally.phases["receipt"],
    }
    missing = [phase for phase, count in hits.items() if count == 0]
    report.goal(
        "kill phases never hit",
        f"none of {', '.join(hits)}",
        ", ".join(missing) or "none",
        not missing,
    )
    failed = tally.restart_failures
    first = f" (first: {failed[0]})" if failed else ""
    report.goal("restarts that failed", "0", f"{len(failed)}{first}", not failed)
    first = f" (first: {tally.faults[0]})" if tally.faults else ""
    report.goal("corrupt stores", "0", f"{len(tally.faults)}{first}", not tally.faults)
    report.goal("spool samples stored twice (seen after a kill)", "0", tally.samples_twice,
                tally.samples_twice == 0)  # fmt: skip
    # Every sample fed is stored, dropped by the store's bound (counted) or still spooled.
    fed = sum(s.fed for s in slots)
    kept = counters["samples_stored"] + counters["samples_dropped"] + counters["spool_bad_lines"]
    spooled = sum(s.samples_in_spool() for s in slots)
    report.figure(
        "spool samples fed: stored + dropped by the bound + not ingested yet",
        f"{fed}: {counters['samples_stored']} + {counters['samples_dropped']} + {spooled}",
    )
    unbalanced = kept + spooled - fed
    report.goal("spool samples lost (< 0) or ingested twice (> 0)", "0", unbalanced,
                unbalanced == 0)  # fmt: skip
    report.goal("updates lost after they were written to the outbox", "0", len(lost), not lost)
    report.goal("updates counted twice by the aggregator", "0", twice, twice == 0)
