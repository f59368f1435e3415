"""Aggregator ingest against the raw broker: updates/s, release latency and peak RSS.

(a) devices -> Mosquitto -> a bare paho subscriber that only counts; (b) the same devices
-> Mosquitto -> ``fedmq aggregator run`` with durable Redis (AOF, appendfsync always by
default) and Receipts. Both are paced alike: each device keeps at most WINDOW updates in
flight (a: until the broker's PUBACK, b: until the Receipt, as the device outbox does).
Each run measures (a) and then (b) back to back, and b/a is taken per run, so a change in
the machine's load between runs does not skew the ratio; the medians are printed. Broker
and devices set TCP_NODELAY here: without it every small packet waits ~40 ms (Nagle).
"""

from __future__ import annotations

import argparse
import multiprocessing as mp
import os
import resource
import socket
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import paho.mqtt.client as mqtt
from paho.mqtt.enums import CallbackAPIVersion

from fedmq.local_servers import LocalServer, start_mosquitto, start_redis
from serialization import (
    Codec,
    ModelRelease,
    ModelUpdate,
    Receipt,
    SigningKey,
    encode_delta,
    model_topic,
    new_update_id,
    receipt_topic,
    shared_update_subscription,
    update_topic,
)

__all__ = ["main"]

ROOT = Path(__file__).resolve().parent.parent
TASK = "bench"
DEVICES = 12
PROCESSES = 2
WINDOW = 8
GOAL_LARGE, GOAL_SMALL, GOAL_LATENCY_MS = 0.9, 0.6, 25.0
QUIET_S = 3.0
"""(a) stops waiting once the devices are done and nothing arrived for this long."""


def _client(name: str, password: str, port: int, client_id: str | None = None) -> mqtt.Client:
    client = mqtt.Client(
        CallbackAPIVersion.VERSION2, client_id=client_id or name, protocol=mqtt.MQTTv5
    )
    client.username_pw_set(name, password)
    client.max_inflight_messages_set(WINDOW)
    client.connect("127.0.0.1", port, keepalive=120)
    sock = client.socket()
    if isinstance(sock, socket.socket):
        sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
    return client


def _template(params: int) -> tuple[bytes, int]:
    """An update payload of ``params`` float32 values and the offset of its update id."""
    uid = new_update_id()
    delta = np.random.default_rng(0).standard_normal(params).astype(np.float32) * 1e-3
    payload = ModelUpdate(
        task=TASK,
        device_id="dev-00",
        update_id=uid,
        base_version=1,
        num_samples=1,
        codec="none",
        tensors=encode_delta({"w": delta}, Codec()),
    ).encode()
    return payload, payload.index(uid)


def _device_worker(
    names: list[str],
    *,
    passwords: dict[str, str],
    port: int,
    params: int,
    count: int,
    receipts: bool,
    start: Any,
    results: Any,
) -> None:
    """Publish ``count`` updates from each device in ``names``, WINDOW in flight each."""
    template, offset = _template(params)
    done_at = [0.0]
    accepted = [0]
    lock = threading.Lock()
    clients, outstanding = {}, {}
    for name in names:
        client = _client(name, passwords[name], port)
        outstanding[name] = threading.Semaphore(WINDOW)
        if receipts:

            def on_message(_c: mqtt.Client, _u: Any, msg: mqtt.MQTTMessage, n: str = name) -> None:
                if Receipt.decode(msg.payload).status in ("accepted", "duplicate"):
                    with lock:
                        accepted[0] += 1
                        done_at[0] = time.time()
                outstanding[n].release()

            client.on_message = on_message
            client.subscribe(receipt_topic(TASK, name), qos=1)
        else:
            client.on_publish = lambda *_a, n=name: outstanding[n].release()
        client.loop_start()
        clients[name] = client
    time.sleep(0.5)
    start.wait()
    cpu_began = _own_cpu_seconds()
    body = bytearray(template)
    for _ in range(count):
        for name, client in clients.items():
            outstanding[name].acquire()
            body[offset : offset + 16] = new_update_id()
            payload = bytes(body).replace(b"dev-00", name.encode(), 1)
            client.publish(update_topic(TASK, name), payload, qos=1)
    deadline = time.time() + 120
    while receipts and accepted[0] < count * len(names) and time.time() < deadline:
        time.sleep(0.01)
    results.put((accepted[0], done_at[0], _own_cpu_seconds() - cpu_began))
    for client in clients.values():
        client.loop_stop()
        client.disconnect()


class Bench:
    """Private broker and Redis, device accounts, and the aggregator process."""

    def __init__(self, workdir: Path, appendfsync: str = "always") -> None:
        """Start Mosquitto in ``workdir``; each aggregator run gets a fresh Redis."""
        self.workdir = workdir
        self.appendfsync = appendfsync
        self.names = [f"dev-{i:02d}" for i in range(DEVICES)]
        self.passwords = {n: f"pw-{n}" for n in [*self.names, "aggregator", "watcher"]}
        self.broker = start_mosquitto(workdir / "mosquitto", accounts=self.passwords)
        # Small packets (PUBACKs, Receipts) otherwise wait ~40 ms on Nagle + delayed ACK.
        # (a) acks at once, so the devices can run ahead of the counter; the default queue
        # (1000) would then drop deliveries and (a) would wait for them in vain.
        conf = workdir / "mosquitto" / "mosquitto.conf"
        conf.write_text(conf.read_text() + "set_tcp_nodelay true\nmax_queued_messages 100000\n")
        self.broker.stop()
        self.broker.start()
        self.redis: LocalServer | None = None
        self.key = SigningKey.generate()
        (workdir / "key.pem").write_bytes(self.key.to_pem())

    def fresh_redis(self) -> str:
        """A new Redis (AOF, ``appendfsync``) for one aggregator run."""
        if self.redis is not None:
            self.redis.stop()
        self.redis = start_redis(
            self.workdir / f"redis-{time.monotonic_ns()}", appendfsync=self.appendfsync
        )
        return f"redis://127.0.0.1:{self.redis.port}/0"

    def aggregator(self, params: int, buffer_size: int) -> subprocess.Popen[bytes]:
        """Init a model of ``params`` values and start ``fedmq aggregator run``."""
        config = self.workdir / "aggregator.toml"
        config.write_text(
            f'replica_id = "aggregator"\nsigning_key = "{self.workdir / "key.pem"}"\n'
            f'[mqtt]\nurl = "mqtt://aggregator:pw-aggregator@127.0.0.1:{self.broker.port}"\n'
            f'[redis]\nurl = "{self.fresh_redis()}"\n'
            f'[[tasks]]\nname = "{TASK}"\nbuffer_size = {buffer_size}\n'
        )
        fedmq = [sys.executable, "-m", "fedmq.cli", "--log-level", "INFO", "aggregator"]
        subprocess.run(
            [
                *fedmq,
                "init",
                "--config",
                str(config),
                "--task",
                TASK,
                "--tensor",
                f"w={params}",
                "--force",
            ],
            check=True,
            cwd=ROOT,
            stdout=subprocess.DEVNULL,
        )
        with (self.workdir / "aggregator.log").open("ab") as log:
            process = subprocess.Popen(
                [*fedmq, "run", "--config", str(config)], cwd=ROOT, stdout=log, stderr=log
            )
        watcher = _client("watcher", self.passwords["watcher"], self.broker.port)
        got = threading.Event()
        watcher.on_message = lambda *_a: got.set()
        watcher.subscribe(model_topic(TASK), qos=1)
        watcher.loop_start()
        got.wait(30)
        watcher.loop_stop()
        watcher.disconnect()
        time.sleep(0.5)
        return process

    def load(
        self,
        params: int,
        count: int,
        *,
        receipts: bool,
        aggregator: subprocess.Popen[bytes] | None = None,
    ) -> Load:
        """Run the device load; return its rate and the CPU each party used meanwhile."""
        ctx = mp.get_context("fork")
        start, results = ctx.Event(), ctx.Queue()
        counter = _Counter(self.passwords["aggregator"], self.broker.port) if not receipts else None
        groups = [self.names[i::PROCESSES] for i in range(PROCESSES)]
        workers = [
            ctx.Process(
                target=_device_worker,
                args=(g,),
                kwargs={
                    "passwords": self.passwords,
                    "port": self.broker.port,
                    "params": params,
                    "count": count,
                    "receipts": receipts,
                    "start": start,
                    "results": results,
                },
            )
            for g in groups
        ]
        for worker in workers:
            worker.start()
        time.sleep(1.5)
        servers = {"mosquitto": self.broker.process, "aggregator": aggregator}
        if aggregator is not None and self.redis is not None:
            servers["redis"] = self.redis.process
        pids = {name: p.pid for name, p in servers.items() if p is not None}
        cpu_before = {name: _cpu_seconds(pid) for name, pid in pids.items()}
        own_before = _own_cpu_seconds()
        began = time.time()
        start.set()
        reports = [results.get(timeout=300) for _ in workers]
        for worker in workers:
            worker.join(30)
        total = count * len(self.names)
        if counter is not None:
            counter.wait(total, quiet_s=QUIET_S)
            finished, done = counter.last, counter.count
        else:
            finished, done = max(r[1] for r in reports), sum(r[0] for r in reports)
        cpu = {name: _cpu_seconds(pid) - cpu_before[name] for name, pid in pids.items()}
        cpu["devices"] = sum(r[2] for r in reports)
        if counter is not None:
            cpu["counter"] = _own_cpu_seconds() - own_before
        if done < total:
            print(f"  warning: only {done}/{total} completed", file=sys.stderr)
        return Load(rate=done / (finished - began), seconds=finished - began, done=done, cpu=cpu)


@dataclass(frozen=True, kw_only=True)
class Load:
    """One run of the device load: its rate and the CPU seconds each party spent."""

    rate: float
    seconds: float
    done: int
    cpu: dict[str, float]

    def cpu_ms_per_update(self) -> float:
        """CPU milliseconds, all parties together, per completed update."""
        return 1000 * sum(self.cpu.values()) / max(self.done, 1)

    def busy_cores(self) -> float:
        """Average number of cores the parties kept busy."""
        return sum(self.cpu.values()) / self.seconds

    def breakdown(self) -> str:
        """CPU ms per update of each party."""
        return ", ".join(
            f"{name} {1000 * seconds / max(self.done, 1):.2f}"
            for name, seconds in sorted(self.cpu.items())
        )


def _cpu_seconds(pid: int) -> float:
    """User + system CPU seconds of process ``pid`` so far (/proc/<pid>/stat)."""
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def _own_cpu_seconds() -> float:
    """User + system CPU seconds of this process, all threads."""
    usage = resource.getrusage(resource.RUSAGE_SELF)
    return usage.ru_utime + usage.ru_stime


class _Counter:
    """The bare subscriber of (a): counts deliveries, nothing else (auto-ack)."""

    def __init__(self, password: str, port: int) -> None:
        self.count = 0
        self.last = 0.0
        self.client = _client("aggregator", password, port)
        self.client.on_message = self._on_message
        self.client.subscribe(shared_update_subscription(TASK), qos=1)
        self.client.loop_start()

    def _on_message(self, *_args: Any) -> None:
        self.count += 1
        self.last = time.time()

    def wait(self, total: int, quiet_s: float) -> None:
        deadline = time.time() + 120
        while self.count < total and time.time() < deadline:
            if self.last and time.time() - self.last > quiet_s:
                break
            time.sleep(0.01)
        self.client.loop_stop()
        self.client.disconnect()


def _peak_rss_kib(pid: int) -> int:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmHWM:"):
            return int(line.split()[1])
    return 0


def throughput(bench: Bench, params: int, count: int, runs: int, goal: float) -> None:
    """Print (a), (b) and b/a for updates of ``params`` float32 values: medians over runs,
    each ratio taken within one run."""
    raw, durable, ratios, bounds = [], [], [], []
    loads: list[tuple[Load, Load]] = []
    for _ in range(runs):
        bare = bench.load(params, count, receipts=False)
        process = bench.aggregator(params, buffer_size=10)
        try:
            full = bench.load(params, count, receipts=True, aggregator=process)
        finally:
            process.terminate()
            process.wait(30)
        raw.append(bare.rate)
        durable.append(full.rate)
        ratios.append(full.rate / bare.rate)
        bounds.append(bare.cpu_ms_per_update() / full.cpu_ms_per_update())
        loads.append((bare, full))
    a, b, ratio = (statistics.median(x) for x in (raw, durable, ratios))
    bare, full = loads[ratios.index(sorted(ratios)[len(ratios) // 2])]
    size = params * 4 / 1024
    verdict = "met" if ratio >= goal else "NOT met"
    print(
        f"updates of {params} float32 ({size:.1f} KiB), {count * DEVICES} per run:\n"
        f"  (a) broker -> bare counter   {a:8.0f} updates/s   runs {[round(x) for x in raw]}\n"
        f"  (b) aggregator, durable +    {b:8.0f} updates/s   runs {[round(x) for x in durable]}\n"
        f"      Receipts (publish -> Receipt at the device)\n"
        f"  b/a (median of per-run ratios) {ratio:.2f}   goal >= {goal}: {verdict}"
        f"   runs {[round(x, 2) for x in ratios]}\n"
        f"  CPU ms per update (run with the median ratio): (a) {bare.cpu_ms_per_update():.2f} "
        f"[{bare.breakdown()}], {bare.busy_cores():.2f} cores busy; "
        f"(b) {full.cpu_ms_per_update():.2f} [{full.breakdown()}], "
        f"{full.busy_cores():.2f} cores busy\n"
        f"  CPU bound on b/a when (a) keeps the machine's {os.cpu_count()} cores busy: "
        f"(a) CPU per update / (b) CPU per update = {statistics.median(bounds):.2f}"
        f" (median over runs)"
    )


def release_latency(bench: Bench, params: int, buffer_size: int, releases: int) -> None:
    """p50/p99 from the K-th update to the release arriving at a subscriber, counted from
    the update's publish and from its delivery by the broker (the issue's definition: an
    observer subscribed to the update topic gets it when the aggregator does)."""
    process = bench.aggregator(params, buffer_size)
    device = bench.names[0]
    client = _client(device, bench.passwords[device], bench.broker.port)
    observer = _client("aggregator", bench.passwords["aggregator"], bench.broker.port, "observer")
    delivered: list[float] = []
    observer.on_message = lambda *_a: delivered.append(time.perf_counter())
    observer.subscribe(update_topic(TASK, device), qos=0)
    observer.loop_start()
    events: dict[str, Any] = {"receipts": 0, "release": None}
    got_release, got_receipt = threading.Event(), threading.Event()

    def on_message(_c: mqtt.Client, _u: Any, msg: mqtt.MQTTMessage) -> None:
        if msg.topic.endswith("/receipt"):
            got_receipt.set()
        else:
            events["release"] = (time.perf_counter(), bytes(msg.payload))
            got_release.set()

    client.on_message = on_message
    client.subscribe([(receipt_topic(TASK, device), 1), (model_topic(TASK), 1)])
    client.loop_start()
    template, offset = _template(params)
    body = bytearray(template.replace(b"dev-00", device.encode(), 1))
    latencies, from_delivery = [], []
    try:
        got_release.wait(30)
        for version in range(1, releases + 1):
            delivered.clear()
            for i in range(buffer_size):
                body[offset : offset + 16] = new_update_id()
                body_bytes = bytes(body)
                got_receipt.clear()
                got_release.clear()
                sent = time.perf_counter()
                client.publish(update_topic(TASK, device), body_bytes, qos=1)
                if i < buffer_size - 1:
                    got_receipt.wait(30)
            got_release.wait(30)
            arrived, payload = events["release"]
            if ModelRelease.decode(payload, bench.key.verify_key).version == version + 1:
                latencies.append((arrived - sent) * 1000)
                if len(delivered) == buffer_size:
                    from_delivery.append((arrived - delivered[-1]) * 1000)
    finally:
        for peer in (client, observer):
            peer.loop_stop()
            peer.disconnect()
        process.terminate()
        process.wait(30)
    p50, p99 = _percentiles(latencies)
    d50, d99 = _percentiles(from_delivery)
    verdict = "met" if d50 <= GOAL_LATENCY_MS else "NOT met"
    print(
        f"release latency, {params} params ({params * 4 / 1e6:.0f} MB), K={buffer_size} "
        f"({len(from_delivery)} releases):\n"
        f"  K-th update delivered by the broker -> release at a subscriber: "
        f"p50 {d50:.1f} ms  p99 {d99:.1f} ms   goal p50 <= {GOAL_LATENCY_MS:.0f} ms: {verdict}\n"
        f"  K-th update published by the device -> release at a subscriber: "
        f"p50 {p50:.1f} ms  p99 {p99:.1f} ms"
    )


def _percentiles(values: list[float]) -> tuple[float, float]:
    """(p50, p99) of ``values`` (nan when empty)."""
    if not values:
        return float("nan"), float("nan")
    ordered = sorted(values)
    return statistics.median(ordered), ordered[min(len(ordered) - 1, int(0.99 * len(ordered)))]


def peak_rss(bench: Bench, params: int, buffer_size: int, count: int) -> int:
    """Aggregator VmHWM (KiB) after ``count`` updates per device with buffer ``buffer_size``."""
    process = bench.aggregator(params, buffer_size)
    try:
        bench.load(params, count, receipts=True)
        return _peak_rss_kib(process.pid)
    finally:
        process.terminate()
        process.wait(30)


def main(argv: list[str] | None = None) -> None:
    """Run every measurement; --quick for a smoke run."""
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--runs", type=int, default=3)
    parser.add_argument("--quick", action="store_true")
    parser.add_argument(
        "--only", choices=("throughput", "latency", "rss"), help="run one measurement"
    )
    parser.add_argument(
        "--appendfsync",
        choices=("always", "everysec"),
        default="always",
        help="Redis AOF fsync policy (README: what each one guarantees)",
    )
    args = parser.parse_args(argv)
    scale = 0.2 if args.quick else 1.0
    with tempfile.TemporaryDirectory(prefix="fedmq-bench-") as tmp:
        bench = Bench(Path(tmp), appendfsync=args.appendfsync)
        try:
            print(
                f"{DEVICES} device connections in {PROCESSES} processes, window {WINDOW}; "
                f"Redis AOF appendfsync {args.appendfsync}; {args.runs} runs, medians"
            )
            if args.only in (None, "throughput"):
                throughput(bench, 100_000, int(60 * scale) or 2, args.runs, GOAL_LARGE)
                throughput(bench, 650, int(600 * scale) or 10, args.runs, GOAL_SMALL)
            if args.only in (None, "latency"):
                release_latency(bench, 1_000_000, 10, int(20 * scale) or 3)
            if args.only in (None, "rss"):
                small, large = (
                    peak_rss(bench, 100_000, k, int(40 * scale) or 10) for k in (10, 100)
                )
                print(
                    f"aggregator peak RSS, 100k params: K=10 {small / 1024:.0f} MiB, "
                    f"K=100 {large / 1024:.0f} MiB (ratio {large / small:.2f}; goal: flat in K)"
                )
        finally:
            bench.broker.stop()
            if bench.redis is not None:
                bench.redis.stop()


if __name__ == "__main__":
    main()
