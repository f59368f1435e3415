"""Helpers for the device integration tests: an aggregator stand-in, configs, daemon processes."""

from __future__ import annotations

import json
import os
import queue
import secrets
import signal
import subprocess
import sys
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import paho.mqtt.client as mqtt
import pytest
from numpy.typing import NDArray
from paho.mqtt.enums import CallbackAPIVersion

from device.config import load_config
from device.daemon import DeviceDaemon
from device.models import ModelSpec, Params
from serialization import (
    ModelRelease,
    SigningKey,
    model_topic,
    receipt_topic,
    status_topic,
    update_topic,
)
from tests.conftest import SERVICE_ACCOUNT, Broker

__all__ = [
    "REPO",
    "SPEC",
    "AggregatorClient",
    "DaemonProcess",
    "DeviceAccount",
    "DeviceEnv",
    "device_env",
    "reference_predict",
    "release_payload",
    "softmax_params",
    "wait_for",
    "write_config",
    "write_spool_file",
]

REPO = Path(__file__).resolve().parents[2]
SPEC = ModelSpec(kind="softmax", n_features=4, n_classes=3)


def softmax_params(seed: int) -> Params:
    """Random float32 softmax weights for SPEC."""
    rng = np.random.default_rng(seed)
    return {
        name: rng.normal(0.0, 1.0, size=shape).astype(np.float32)
        for name, shape in SPEC.shapes().items()
    }


def reference_predict(params: Params, x: NDArray[np.float32]) -> NDArray[np.int64]:
    """argmax(x W + b), computed here independently of device.models."""
    logits = x.astype(np.float64) @ params["W"].astype(np.float64) + params["b"]
    labels: NDArray[np.int64] = np.argmax(logits, axis=1).astype(np.int64)
    return labels


def release_payload(
    key: SigningKey, task: str, version: int, params: Params | None = None, *, seed: int = 0
) -> bytes:
    """A signed release of ``task`` (random softmax weights unless ``params`` is given)."""
    return ModelRelease(
        task=task,
        version=version,
        parent_version=version - 1,
        tensors=params if params is not None else softmax_params(seed),
        metadata=SPEC.to_metadata(),
    ).encode(key)


@dataclass(frozen=True, kw_only=True)
class DeviceAccount:
    """A broker account for one test's device."""

    name: str
    password: str


def write_config(
    path: Path,
    *,
    broker: Broker,
    account: DeviceAccount,
    task: str,
    state_dir: Path,
    key_path: Path,
    sections: dict[str, dict[str, object]] | None = None,
) -> Path:
    """A device TOML file; ``sections`` adds or overrides keys per table ("" = top level)."""
    tables: dict[str, dict[str, object]] = {
        "broker": {
            "host": broker.host,
            "port": broker.port,
            "password": account.password,
            "keepalive": 10,
            "reconnect_min": 0.1,
            "reconnect_max": 0.5,
        },
        "training": {"min_new_samples": 5, "epochs": 2, "batch_size": 4},
        "samples": {"spool_poll": 0.05},
        "outbox": {"receipt_timeout": 30.0},
    }
    top: dict[str, object] = {
        "device_id": account.name,
        "task": task,
        "state_dir": str(state_dir),
        "aggregator_key": str(key_path),
    }
    for name, values in (sections or {}).items():
        (top if name == "" else tables.setdefault(name, {})).update(values)
    lines = [f"{k} = {json.dumps(v)}" for k, v in top.items()]
    for name, values in tables.items():
        lines.append(f"\n[{name}]")
        lines.extend(f"{k} = {json.dumps(v)}" for k, v in values.items())
    path.write_text("\n".join(lines) + "\n")
    return path


def write_spool_file(spool: Path, name: str, x: NDArray[np.float32], y: NDArray[np.int64]) -> None:
    """Write samples the way a sensor program must: temp file, then atomic rename."""
    spool.mkdir(parents=True, exist_ok=True)
    tmp = spool / f"{name}.tmp"
    lines = [
        json.dumps({"x": row.tolist(), "y": int(label)}) for row, label in zip(x, y, strict=True)
    ]
    tmp.write_text("\n".join(lines) + "\n")
    os.replace(tmp, spool / f"{name}.jsonl")


def wait_for(predicate: Callable[[], bool], timeout: float, what: str) -> None:
    """Poll ``predicate`` (for state in another process) every 20 ms, or fail."""
    deadline = time.monotonic() + timeout
    while not predicate():
        if time.monotonic() > deadline:
            pytest.fail(f"timed out after {timeout}s waiting for {what}")
        time.sleep(0.02)


class AggregatorClient:
    """The test's aggregator: the "aggregator" account over paho, collecting messages."""

    def __init__(self, broker: Broker, topics: list[str]) -> None:
        self.messages: queue.Queue[mqtt.MQTTMessage] = queue.Queue()
        self._client = mqtt.Client(
            CallbackAPIVersion.VERSION2,
            client_id=f"agg-test-{secrets.token_hex(4)}",
            protocol=mqtt.MQTTv5,
        )
        self._client.username_pw_set(SERVICE_ACCOUNT, broker.passwords[SERVICE_ACCOUNT])
        subacks: queue.Queue[int] = queue.Queue()
        self._client.on_message = lambda _c, _u, msg: self.messages.put(msg)
        self._client.on_subscribe = lambda _c, _u, mid, _codes, _p: subacks.put(mid)
        self._client.connect(broker.host, broker.port)
        self._client.loop_start()
        for topic in topics:
            _, mid = self._client.subscribe(topic, qos=1)
            assert subacks.get(timeout=5) == mid

    def publish(self, topic: str, payload: bytes, *, retain: bool = False) -> None:
        """QoS 1 publish, waiting for the broker's PUBACK."""
        self._client.publish(topic, payload, qos=1, retain=retain).wait_for_publish(5)

    def expect(self, topic: str, timeout: float = 10.0) -> mqtt.MQTTMessage:
        """The next message on ``topic`` (others are skipped), or fail."""
        deadline = time.monotonic() + timeout
        while True:
            remaining = deadline - time.monotonic()
            try:
                message = self.messages.get(timeout=max(remaining, 0.0))
            except queue.Empty:
                pytest.fail(f"no message on {topic} within {timeout}s")
            if message.topic == topic:
                return message

    def close(self) -> None:
        """Disconnect."""
        self._client.disconnect()
        self._client.loop_stop()


class DaemonProcess:
    """``python -m fedmq.cli device run`` as a real child process."""

    def __init__(self, config: Path, log: Path) -> None:
        self.config = config
        self.log = log
        self.process: subprocess.Popen[bytes] | None = None

    def start(self) -> None:
        """Start the daemon (DEBUG logs to ``log``)."""
        with self.log.open("ab") as log:
            self.process = subprocess.Popen(
                [sys.executable, "-m", "fedmq.cli", "--log-level", "DEBUG", "device", "run",
                 "--config", str(self.config)],
                stdout=log, stderr=subprocess.STDOUT, cwd=REPO,
            )  # fmt: skip

    @property
    def pid(self) -> int:
        """The child's pid."""
        assert self.process is not None
        return self.process.pid

    def kill(self) -> None:
        """SIGKILL: a crash or a power cut, as far as the process is concerned."""
        assert self.process is not None
        self.process.kill()
        self.process.wait(10)

    def terminate(self, timeout: float = 10.0) -> int:
        """SIGTERM and wait for the exit code."""
        assert self.process is not None
        self.process.send_signal(signal.SIGTERM)
        return self.process.wait(timeout)

    def ensure_stopped(self) -> None:
        """Kill the child if a failing test left it running."""
        if self.process is not None and self.process.poll() is None:
            self.process.kill()
            self.process.wait(10)

    def output(self) -> str:
        """Everything the daemon logged so far."""
        return self.log.read_text(errors="replace")


class DeviceEnv:
    """One test's world: the broker, a fresh device account, a task, the aggregator key,
    and the daemons and aggregator clients the test starts (all stopped at the end)."""

    def __init__(self, broker: Broker, task: str, directory: Path) -> None:
        self.broker = broker
        self.task = task
        self.dir = directory
        name = f"dev-{secrets.token_hex(4)}"
        self.account = DeviceAccount(name=name, password=broker.add_account(name))
        self.key = SigningKey.generate()
        self.key_path = directory / "aggregator.pub.pem"
        self.key_path.write_bytes(self.key.verify_key.to_pem())
        self.state_dir = directory / "state"
        self.config_path = directory / "device.toml"
        self._daemons: list[DeviceDaemon] = []
        self._clients: list[AggregatorClient] = []
        self._processes: list[DaemonProcess] = []

    @property
    def device(self) -> str:
        """The device id (= MQTT username = client id)."""
        return self.account.name

    @property
    def model_topic(self) -> str:
        """The task's model topic."""
        return model_topic(self.task)

    @property
    def update_topic(self) -> str:
        """The device's update topic."""
        return update_topic(self.task, self.device)

    @property
    def receipt_topic(self) -> str:
        """The device's receipt topic."""
        return receipt_topic(self.task, self.device)

    @property
    def status_topic(self) -> str:
        """The device's status topic."""
        return status_topic(self.task, self.device)

    def release(self, version: int, params: Params | None = None, *, seed: int = 0) -> bytes:
        """A release of this task signed with the aggregator key."""
        return release_payload(self.key, self.task, version, params, seed=seed)

    def write_config(
        self, sections: dict[str, dict[str, object]] | None = None, on: Broker | None = None
    ) -> Path:
        """(Re)write device.toml for this device."""
        return write_config(
            self.config_path,
            broker=on or self.broker,
            account=self.account,
            task=self.task,
            state_dir=self.state_dir,
            key_path=self.key_path,
            sections=sections,
        )

    def daemon(
        self, sections: dict[str, dict[str, object]] | None = None, on: Broker | None = None
    ) -> DeviceDaemon:
        """An in-process daemon, started."""
        daemon = DeviceDaemon(load_config(self.write_config(sections, on), environ={}))
        daemon.start()
        self._daemons.append(daemon)
        return daemon

    def process(self, sections: dict[str, dict[str, object]] | None = None) -> DaemonProcess:
        """A daemon child process (not started yet)."""
        self.write_config(sections)
        process = DaemonProcess(self.config_path, self.dir / "daemon.log")
        self._processes.append(process)
        return process

    def aggregator(self, topics: list[str], on: Broker | None = None) -> AggregatorClient:
        """An aggregator client subscribed to ``topics``."""
        client = AggregatorClient(on or self.broker, topics)
        self._clients.append(client)
        return client

    def close(self) -> None:
        """Stop everything the test started."""
        for daemon in self._daemons:
            daemon.stop()
            daemon.join(10)
            daemon.close()
        for process in self._processes:
            process.ensure_stopped()
        for client in self._clients:
            client.close()


def device_env(broker: Broker, task: str, tmp_path: Path) -> Iterator[DeviceEnv]:
    """Body of each test module's ``env`` fixture: a DeviceEnv, closed afterwards."""
    world = DeviceEnv(broker, task, tmp_path)
    try:
        yield world
    finally:
        world.close()
