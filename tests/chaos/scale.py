"""Scale and soak (issue 6 parts 6 and 7): a swarm of devices on one Mosquitto, the counting
oracle, and optionally two aggregator replicas of which one is SIGKILLed and restarted.

Every device has its own account and connection and sends counting-oracle updates (update i
adds 1 to coordinate i of the model) at a steady aggregate rate, resending each until a
Receipt. Release latency of version v: arrival of release v at a subscriber minus the send
time of the last-sent update that v counted (the K-th update's publish; for an update sent
more than once, its latest send before the release arrived).
"""

from __future__ import annotations

import logging
import math
import multiprocessing
import secrets
import time
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any

import numpy as np
import redis

from aggregator.config import load_config
from aggregator.keys import TaskKeys
from fedmq.password_file import PasswordFile
from serialization import VerifyKey
from tests.chaos.release_watch import WATCHER, ReleaseWatcher, release_latencies
from tests.chaos.report import ChaosReport
from tests.chaos.swarm import (
    CONNECTED,
    RECEIPTED,
    ShardControl,
    ShardPlan,
    load_shard_results,
    run_shard,
)
from tests.conftest import SERVICE_ACCOUNT, Broker, launch_broker, launch_redis
from tests.integration.aggregator_helpers import (
    ServiceProcess,
    init_model,
    service_account,
    signing_key,
    write_config,
)
from tests.integration.oracle import ORACLE_TENSOR, oracle_tasks

logger = logging.getLogger(__name__)


@dataclass(frozen=True, kw_only=True)
class ScaleParams:
    """One scale run: fleet size, offered load, and the replica set-up."""

    devices: int
    duration_s: float  # the sending window
    rate: float  # offered updates/s, whole fleet (each device sends every devices/rate s)
    buffer_size: int  # FedBuff K; divides devices, so every release is complete at the end
    shards: int  # device processes
    warmup_s: float  # steady state starts this long after the first send
    resend_after_s: float
    connect_timeout_s: float
    drain_timeout_s: float
    replicas: int = 1
    kill_replica: bool = False
    kill_at_s: float = 0.0  # after the first send: SIGKILL the lease holder
    down_s: float = 0.0  # then restart it this much later


FULL = ScaleParams(
    devices=10_000, duration_s=600.0, rate=200.0, buffer_size=100, shards=4, warmup_s=60.0,
    resend_after_s=30.0, connect_timeout_s=600.0, drain_timeout_s=300.0,
)  # fmt: skip
REDUCED = ScaleParams(
    devices=500, duration_s=40.0, rate=100.0, buffer_size=50, shards=2, warmup_s=8.0,
    resend_after_s=5.0, connect_timeout_s=30.0, drain_timeout_s=20.0,
)  # fmt: skip
FULL_TWO_REPLICAS = replace(FULL, replicas=2, kill_replica=True, kill_at_s=240.0, down_s=40.0)
REDUCED_TWO_REPLICAS = replace(
    REDUCED, duration_s=25.0, warmup_s=5.0, replicas=2, kill_replica=True, kill_at_s=8.0,
    down_s=6.0,
)  # fmt: skip


def rss_mib(pid: int | None) -> float:
    """Resident set size of a live process in MiB (nan if it is gone)."""
    try:
        for line in Path(f"/proc/{pid}/status").read_text().splitlines():
            if line.startswith("VmRSS:"):
                return int(line.split()[1]) / 1024
    except (OSError, ValueError):
        pass
    return math.nan


@dataclass(kw_only=True)
class _Stack:
    broker: Broker
    redis_url: str
    task: str
    replicas: list[ServiceProcess]
    verify_key: VerifyKey


def _start_stack(params: ScaleParams, workdir: Path, model_size: int, started: list[Any]) -> _Stack:
    """Mosquitto, Redis and the replicas; each is added to ``started`` as soon as it runs."""
    broker = launch_broker(workdir / "mosquitto")
    started.append(broker.server)
    redis_server = launch_redis(workdir / "redis")
    started.append(redis_server)
    redis_url = f"redis://127.0.0.1:{redis_server.port}/0"
    task = f"scale{secrets.token_hex(3)}"
    names = [SERVICE_ACCOUNT] if params.replicas == 1 else []
    for i in range(len(names), params.replicas):
        names.append(f"agg{i}-{task}")
        service_account(broker, names[-1])
    paths = [
        write_config(workdir / "aggregator", broker=broker, redis_url=redis_url,
                     tasks=oracle_tasks(task, params.buffer_size), replica_id=f"agg{i}-{task}",
                     username=name)
        for i, name in enumerate(names)
    ]  # fmt: skip
    init_model(paths[0], task, {ORACLE_TENSOR: np.zeros(model_size, dtype=np.float32)})
    replicas = [ServiceProcess(p, workdir / f"replica{i}.log") for i, p in enumerate(paths)]
    started.extend(replicas)
    for replica in replicas:
        replica.start()
    for replica in replicas:
        replica.wait_for_log("connected to mqtt", 1, timeout=60)
    key = signing_key(load_config(paths[0], {})).verify_key
    return _Stack(broker=broker, redis_url=redis_url, task=task, replicas=replicas,
                  verify_key=key)  # fmt: skip


def _provision(broker: Broker, count: int) -> list[tuple[int, str, str]]:
    """``count`` device accounts written in one rewrite of the password file, plus reload."""
    fleet = [(d, f"sim-{d:05d}", secrets.token_urlsafe(24)) for d in range(count)]
    accounts = {name: password for _, name, password in fleet}
    accounts[WATCHER] = secrets.token_urlsafe(24)
    PasswordFile(broker.server.workdir / "passwd").set_many(accounts)
    broker.passwords.update(accounts)
    broker.server.reload()
    time.sleep(0.5)
    return fleet


def run(params: ScaleParams, workdir: Path) -> ChaosReport:
    """Run the scenario under ``workdir`` and return its figures and goals."""
    name = "scale" if params.replicas == 1 else f"scale, {params.replicas} replicas"
    report = ChaosReport(scenario=f"{name} ({params.devices} devices, {params.duration_s:.0f} s)")
    period = params.devices / params.rate
    rounds = max(1, math.ceil(params.duration_s / period))
    model_size = rounds * params.devices
    started: list[Any] = []
    shards: list[multiprocessing.process.BaseProcess] = []
    watcher: ReleaseWatcher | None = None
    context = multiprocessing.get_context("spawn")
    stop = context.Event()
    try:
        stack = _start_stack(params, workdir, model_size, started)
        began = time.monotonic()
        fleet = _provision(stack.broker, params.devices)
        report.figure(
            "provisioning (accounts, s)", f"{params.devices}, {time.monotonic() - began:.1f}"
        )
        watcher = ReleaseWatcher(stack.broker, stack.task, stack.verify_key)
        controls = [
            ShardControl(connected=context.Value("i", 0), phase=context.Value("i", 0),
                         start_at=context.Value("d", 0.0), stop=stop)
            for _ in range(params.shards)
        ]  # fmt: skip
        outs = [workdir / f"shard{k}.npz" for k in range(params.shards)]
        for k in range(params.shards):
            plan = ShardPlan(
                shard=k, host=stack.broker.host, port=stack.broker.port, task=stack.task,
                devices=fleet[k :: params.shards], fleet_size=params.devices, rounds=rounds,
                rate=params.rate, buffer_size=params.buffer_size,
                resend_after_s=params.resend_after_s, keepalive_s=120, out=outs[k],
            )  # fmt: skip
            shards.append(context.Process(target=run_shard, args=(plan, controls[k]), daemon=True))
            shards[-1].start()
        observed = _drive(
            params,
            report,
            stack=stack,
            controls=controls,
            shards=shards,
            watcher=watcher,
            model_size=model_size,
        )
        stop.set()
        for shard in shards:
            shard.join(60)
        results = load_shard_results(outs)
        _figures(
            params,
            report,
            stack=stack,
            watcher=watcher,
            results=results,
            seen=observed,
            model_size=model_size,
        )
        for i, replica in enumerate(stack.replicas):
            code = replica.terminate(timeout=60)
            report.figure(f"replica {i} exit code on SIGTERM", code)
    finally:
        stop.set()
        if watcher is not None:
            watcher.close()
        for shard in shards:
            shard.join(5)
            if shard.is_alive():
                shard.kill()
        for server in reversed(started):
            server.kill() if isinstance(server, ServiceProcess) else server.stop()
    return report


def _rss(stack: _Stack) -> tuple[dict[int, float], float]:
    """RSS of each live replica process (by pid) and of the broker."""
    pids = [r.process.pid for r in stack.replicas if r.process and r.process.poll() is None]
    assert stack.broker.server.process is not None
    return {p: rss_mib(p) for p in pids}, rss_mib(stack.broker.server.process.pid)


def _drive(
    params: ScaleParams,
    report: ChaosReport,
    *,
    stack: _Stack,
    controls: list[ShardControl],
    shards: list[multiprocessing.process.BaseProcess],
    watcher: ReleaseWatcher,
    model_size: int,
) -> dict[str, Any]:
    """Connect the fleet, run the schedule (killing a replica if asked), drain; return what
    was sampled along the way."""
    seen: dict[str, Any] = {"peak": 0}
    began = time.monotonic()

    def sample() -> int:
        watcher.drain()
        connected = sum(c.connected.value for c in controls)
        seen["peak"] = max(seen["peak"], connected)
        if not all(s.is_alive() for s in shards):
            raise RuntimeError("a device shard died; see its stderr")
        return connected

    while not all(c.phase.value >= CONNECTED for c in controls):
        if time.monotonic() - began > params.connect_timeout_s:
            break
        sample()
        time.sleep(0.2)
    sample()
    report.figure("connect phase (s)", f"{time.monotonic() - began:.1f}")
    start = time.monotonic() + 0.5
    for control in controls:
        control.start_at.value = start
    send_end = start + model_size / params.rate
    victim: ServiceProcess | None = None
    rss: list[tuple[float, dict[int, float], float]] = seen.setdefault("rss", [])
    while (now := time.monotonic()) < send_end:
        sample()
        if now >= start + params.warmup_s and (not rss or now - rss[-1][0] >= 1.0):
            rss.append((now, *_rss(stack)))
        if params.kill_replica and victim is None and now >= start + params.kill_at_s:
            victim = _kill_leader(stack)
            seen["killed_at"] = now - start
        restart_at = start + params.kill_at_s + params.down_s
        if victim is not None and "restarted_at" not in seen and now >= restart_at:
            victim.start()
            seen["restarted_at"] = now - start
        time.sleep(0.2)
    seen["end_connected"] = sample()
    seen["start"], seen["send_end"] = start, send_end
    final = 1 + model_size // params.buffer_size
    deadline = time.monotonic() + params.drain_timeout_s
    while time.monotonic() < deadline:
        sample()
        if all(c.phase.value == RECEIPTED for c in controls) and watcher.version >= final:
            break
        time.sleep(0.2)
    seen["drained_after"] = time.monotonic() - send_end
    seen["final"] = final
    return seen


def _kill_leader(stack: _Stack) -> ServiceProcess:
    with redis.Redis.from_url(stack.redis_url) as client:
        holder = client.get(TaskKeys.of(stack.task).leader)
    index = 0
    if holder is not None:
        replica_ids = [f"agg{i}-{stack.task}" for i in range(len(stack.replicas))]
        index = replica_ids.index(holder.decode()) if holder.decode() in replica_ids else 0
    logger.info("SIGKILL replica %d (lease holder %r)", index, holder)
    stack.replicas[index].kill()
    return stack.replicas[index]


def _figures(
    params: ScaleParams,
    report: ChaosReport,
    *,
    stack: _Stack,
    watcher: ReleaseWatcher,
    results: dict[str, Any],
    seen: dict[str, Any],
    model_size: int,
) -> None:
    """Turn the shards' records, the watcher's releases and the samples into the report."""
    fig = report.figure
    start, send_end = seen["start"], seen["send_end"]
    receipted = results["receipted"]
    steady_from = start + params.warmup_s
    steady = np.count_nonzero((receipted >= steady_from) & (receipted <= send_end))
    rate = steady / max(1e-9, send_end - steady_from)
    fig("devices connected (peak / at end of sending)", f"{seen['peak']} / {seen['end_connected']}")
    reconnects, failures = results["counters"]
    fig("device reconnects / failed connect attempts", f"{reconnects} / {failures}")
    fig("updates planned / sends (incl. resends)", f"{model_size} / {int(results['sends'].sum())}")
    fig("receipts accepted / duplicate / rejected",
        f"{int(results['accepted'].sum())} / {int(results['duplicate'].sum())} / "
        f"{int(results['rejected'].sum())}")  # fmt: skip
    fig("updates/s accepted, steady state (offered)", f"{rate:.1f} ({params.rate:.0f})")
    latencies = release_latencies(watcher, results, steady_from, send_end)
    if latencies.size:
        p50, p99 = np.percentile(latencies, [50, 99]) * 1e3
        fig("release latency p50 / p99, ms", f"{p50:.0f} / {p99:.0f} ({latencies.size} releases)")
    else:
        fig("release latency p50 / p99, ms", "no release in the steady window")
    if "killed_at" in seen:
        fig("leader SIGKILLed / restarted at (s)",
            f"{seen['killed_at']:.1f} / {seen.get('restarted_at', math.nan):.1f}")  # fmt: skip
    samples = seen["rss"]
    kept = [p for p in samples[0][1] if p in samples[-1][1]]
    span = max(5.0, 0.1 * (samples[-1][0] - samples[0][0]))

    def medians(since: float, until: float) -> tuple[float, float]:
        part = [(sum(a.get(p, math.nan) for p in kept), b) for t, a, b in samples
                if since <= t <= until]  # fmt: skip
        agg_mib, broker_mib = np.median(np.array(part), axis=0)
        return float(agg_mib), float(broker_mib)

    (agg_start, broker_start) = medians(samples[0][0], samples[0][0] + span)
    (agg_end, broker_end) = medians(samples[-1][0] - span, samples[-1][0])
    agg = agg_start, agg_end
    fig(f"aggregator RSS start / end, MiB (medians of first/last {span:.0f} s; alive throughout)",
        f"{agg_start:.0f} / {agg_end:.0f} (peak {max(sum(a.values()) for _, a, _ in samples):.0f},"
        f" all replicas)")  # fmt: skip
    fifth = (samples[-1][0] - samples[0][0]) / 5
    fig("aggregator RSS, median of each fifth of the window, MiB",
        " / ".join(f"{medians(samples[0][0] + k * fifth, samples[0][0] + (k + 1) * fifth)[0]:.0f}"
                   for k in range(5)))  # fmt: skip
    restarted = [r for p, r in samples[-1][1].items() if p not in samples[0][1]]
    if restarted:
        fig("restarted replica RSS at end, MiB", f"{sum(restarted):.0f}")
    fig("broker RSS start / end, MiB", f"{broker_start:.0f} / {broker_end:.0f}")
    fig("drain after sending (s); final version (expected)",
        f"{seen['drained_after']:.1f}; v{watcher.version} (v{seen['final']})")  # fmt: skip
    counts = watcher.model if watcher.model is not None else np.zeros(model_size, np.float32)
    lost, twice = int(np.count_nonzero(counts == 0)), int(np.count_nonzero(counts > 1))
    fig("updates without a receipt at the end", int(np.count_nonzero(receipted == 0)))
    with redis.Redis.from_url(stack.redis_url) as client:
        total = client.hget(TaskKeys.of(stack.task).state, "updates_total")
    fig("updates_total in Redis", int(total or 0))
    report.goal("devices connected", f"{params.devices}", seen["peak"],
                seen["peak"] >= params.devices)  # fmt: skip
    for what, (before, after) in (("aggregator", agg), ("broker", (broker_start, broker_end))):
        growth = after / before - 1
        report.goal(f"{what} RSS growth", "<= 10%", f"{growth * 100:+.1f}%", growth <= 0.10)
    reached = watcher.version >= seen["final"]
    unknown = f"unknown: drain timed out at v{watcher.version}, {lost} not yet counted"
    report.goal("lost updates", "0", lost if reached else unknown, reached and lost == 0)
    report.goal("updates counted twice", "0", twice, twice == 0)
