"""Device daemon footprint: idle RSS and CPU with a 100k-parameter model, and one training pass.

Run from the repository root: ``.venv/bin/python bench/device_daemon.py``.
It starts its own Mosquitto on a free port in a temp dir and a daemon as a child process,
and reads the child's /proc files. Each figure is printed beside its floor: RSS beside a
bare interpreter that only imports the daemon's libraries, the training pass beside one
full-batch gradient of the same FLOPs.
"""

from __future__ import annotations

import json
import os
import secrets
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path

import numpy as np
import paho.mqtt.client as mqtt
from paho.mqtt.enums import CallbackAPIVersion

from device.model_store import read_held_model
from device.models import ModelSpec, batch_loss_and_grad, check_samples
from device.training import train_local
from fedmq.local_servers import start_mosquitto
from serialization import ModelRelease, SigningKey, model_topic

__all__ = ["main"]

SPEC = ModelSpec(kind="mlp", n_features=100, n_classes=10, hidden=900)
SAMPLES = 1_000
IDLE_SECONDS = 10.0
RUNS = 7
RSS_GOAL_MB = 60.0
REPO = Path(__file__).resolve().parents[1]
_TICKS = os.sysconf("SC_CLK_TCK")


def rss_mb(pid: int) -> float:
    """Resident set size of ``pid`` in MiB (VmRSS)."""
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) / 1024
    raise RuntimeError(f"no VmRSS for {pid}")


def cpu_seconds(pid: int) -> float:
    """User + system CPU time of ``pid`` (all threads) in seconds."""
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / _TICKS


def median_seconds(action: Callable[[], object], runs: int = RUNS) -> float:
    """Median wall time of ``action`` after one warm-up call."""
    action()
    times = []
    for _ in range(runs):
        start = time.perf_counter()
        action()
        times.append(time.perf_counter() - start)
    return statistics.median(times)


def idle_profile(pid: int) -> tuple[float, float, float]:
    """(median RSS MiB, max RSS MiB, CPU %) of ``pid`` over IDLE_SECONDS."""
    rss = []
    cpu0, wall0 = cpu_seconds(pid), time.monotonic()
    while time.monotonic() - wall0 < IDLE_SECONDS:
        rss.append(rss_mb(pid))
        time.sleep(0.25)
    cpu = (cpu_seconds(pid) - cpu0) / (time.monotonic() - wall0) * 100
    return statistics.median(rss), max(rss), cpu


def floor_rss() -> float:
    """RSS of an interpreter that imports what the daemon imports and sleeps."""
    code = "import numpy, paho.mqtt.client, sqlite3, serialization, device, time; time.sleep(30)"
    child = subprocess.Popen([sys.executable, "-c", code], cwd=REPO)
    try:
        time.sleep(3.0)
        return rss_mb(child.pid)
    finally:
        child.kill()
        child.wait()


def publish_release(port: int, password: str, task: str, key: SigningKey) -> None:
    """Publish a retained signed release of a fresh SPEC model as the aggregator."""
    client = mqtt.Client(CallbackAPIVersion.VERSION2, client_id="bench-agg", protocol=mqtt.MQTTv5)
    client.username_pw_set("aggregator", password)
    client.connect("127.0.0.1", port)
    client.loop_start()
    release = ModelRelease(task=task, version=1, parent_version=0, tensors=SPEC.init())
    client.publish(model_topic(task), release.encode(key), qos=1, retain=True).wait_for_publish(10)
    client.disconnect()
    client.loop_stop()


def daemon_idle(work: Path) -> tuple[float, float, float]:
    """Start a broker and a daemon holding a SPEC model; profile the idle daemon."""
    passwords = {"aggregator": secrets.token_urlsafe(16), "dev-bench": secrets.token_urlsafe(16)}
    broker = start_mosquitto(work / "broker", accounts=passwords)
    key = SigningKey.generate()
    (work / "agg.pem").write_bytes(key.verify_key.to_pem())
    publish_release(broker.port, passwords["aggregator"], "bench", key)
    config = work / "device.toml"
    config.write_text(
        f'device_id = "dev-bench"\ntask = "bench"\nstate_dir = "{work / "state"}"\n'
        f'aggregator_key = "{work / "agg.pem"}"\n[broker]\nport = {broker.port}\n'
        f"password = {json.dumps(passwords['dev-bench'])}\n"
    )
    log = (work / "daemon.log").open("wb")
    daemon = subprocess.Popen(
        [sys.executable, "-m", "fedmq.cli", "device", "run", "--config", str(config)],
        stdout=log, stderr=subprocess.STDOUT, cwd=REPO,
    )  # fmt: skip
    try:
        deadline = time.monotonic() + 30
        while read_held_model(work / "state", task="bench", verify_key=key.verify_key) is None:
            if time.monotonic() > deadline or daemon.poll() is not None:
                raise RuntimeError(f"daemon did not get the model; see {work / 'daemon.log'}")
            time.sleep(0.1)
        time.sleep(1.0)
        return idle_profile(daemon.pid)
    finally:
        daemon.terminate()
        daemon.wait(10)
        log.close()
        broker.stop()


def training_pass() -> tuple[float, float]:
    """(median s of train_local, 1 epoch, batch 32, on SAMPLES; median s of the floor)."""
    rng = np.random.default_rng(0)
    params = SPEC.init(rng)
    x = rng.normal(size=(SAMPLES, SPEC.n_features)).astype(np.float32)
    y = rng.integers(0, SPEC.n_classes, size=SAMPLES)
    train = median_seconds(
        lambda: train_local(params, x, y, epochs=1, batch_size=32, lr=0.05, rng=rng)
    )
    xs, ys = check_samples(SPEC, x, y, np.dtype(np.float32))
    floor = median_seconds(lambda: batch_loss_and_grad(SPEC, params, xs, ys))
    return train, floor


def main() -> int:
    """Print the figures; exit 1 if the RSS goal is missed."""
    n_params = sum(int(np.prod(s)) for s in SPEC.shapes().values())
    print(f"model: {SPEC.kind} {SPEC.n_features}-{SPEC.hidden}-{SPEC.n_classes}, {n_params} params")
    with tempfile.TemporaryDirectory(prefix="fedmq-bench-") as tmp:
        rss_median, rss_max, cpu = daemon_idle(Path(tmp))
    floor = floor_rss()
    print(
        f"idle daemon RSS: median {rss_median:.1f} MiB, max {rss_max:.1f} MiB over "
        f"{IDLE_SECONDS:.0f} s (goal <= {RSS_GOAL_MB:.0f}); import floor {floor:.1f} MiB; "
        f"ratio {rss_median / floor:.2f}"
    )
    print(f"idle daemon CPU: {cpu:.2f} % of one core over {IDLE_SECONDS:.0f} s (goal ~0)")
    train, gradient = training_pass()
    print(
        f"training pass ({SAMPLES} samples, 1 epoch, batch 32): median {train * 1000:.1f} ms "
        f"of {RUNS}; full-batch gradient floor {gradient * 1000:.1f} ms; "
        f"ratio {train / gradient:.1f}"
    )
    return 0 if rss_max <= RSS_GOAL_MB else 1


if __name__ == "__main__":
    sys.exit(main())
