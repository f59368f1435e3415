"""Helpers for the aggregator integration tests: configs, updates, devices, service runners."""

from __future__ import annotations

import asyncio
import os
import queue
import subprocess
import sys
import threading
import time
from collections.abc import Iterator, Mapping
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import numpy as np
import paho.mqtt.client as mqtt
from numpy.typing import NDArray
from paho.mqtt.enums import CallbackAPIVersion

from aggregator.admin import initialise_task
from aggregator.config import AggregatorConfig, load_config
from aggregator.service import AggregatorService
from fedmq.broker_files import AccountKind, ConfigDir
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
    update_topic,
)
from tests.conftest import SERVICE_ACCOUNT, Broker

ROOT = Path(__file__).resolve().parents[2]


def write_config(
    directory: Path,
    *,
    broker: Broker,
    redis_url: str,
    tasks: str,
    replica_id: str = "agg-0",
    username: str = SERVICE_ACCOUNT,
    extra: str = "",
) -> Path:
    """An aggregator.toml for the test servers, with a fresh signing key beside it."""
    directory.mkdir(parents=True, exist_ok=True)
    key_path = directory / "release_signing_key.pem"
    if not key_path.exists():
        key_path.write_bytes(SigningKey.generate().to_pem())
    path = directory / f"{replica_id}.toml"
    path.write_text(
        f'replica_id = "{replica_id}"\n'
        f'signing_key = "{key_path}"\n'
        f"{extra}\n"
        "[mqtt]\n"
        f'url = "mqtt://{username}@{broker.host}:{broker.port}"\n'
        f'password = "{broker.passwords[username]}"\n'
        "reconnect_min_s = 0.1\nreconnect_max_s = 1.0\n"
        f'[redis]\nurl = "{redis_url}"\n'
        "[leader]\nlease_ttl_s = 2.0\nblock_s = 0.2\n"
        f"{tasks}\n"
    )
    return path


def service_account(broker: Broker, name: str) -> None:
    """Provision another account with the aggregator's ACL rights (one per replica: the
    shipped broker sets client id := username, so replicas need distinct usernames)."""
    if name in broker.passwords:
        return
    secret = ConfigDir(broker.server.workdir).add(name, AccountKind.SERVICE)
    broker.passwords[name] = secret
    broker.server.reload()
    time.sleep(0.2)


def signing_key(config: AggregatorConfig) -> SigningKey:
    """The key the config points at."""
    return SigningKey.from_pem(config.signing_key_path.read_bytes())


def init_model(config_path: Path, task: str, model: Mapping[str, NDArray[np.float32]]) -> None:
    """Store ``model`` as version 1 of ``task``."""
    config = load_config(config_path, {})
    asyncio.run(initialise_task(config, signing_key(config), task, model, {}))


def make_update(
    task: str,
    device: str,
    delta: Mapping[str, NDArray[np.float32]],
    *,
    base_version: int = 1,
    num_samples: int = 1,
    codec: Codec | None = None,
    update_id: bytes | None = None,
) -> ModelUpdate:
    """A ModelUpdate carrying ``delta``."""
    return ModelUpdate(
        task=task,
        device_id=device,
        update_id=update_id or new_update_id(),
        base_version=base_version,
        num_samples=num_samples,
        codec=(codec or Codec()).name,
        tensors=encode_delta(delta, codec or Codec()),
    )


class Device:
    """A paho MQTT 5 client for one device account: publishes updates, collects receipts
    and releases."""

    def __init__(self, broker: Broker, name: str, task: str) -> None:
        """Connect and subscribe to the receipt and model topics."""
        self.name = name
        self.task = task
        self.receipts: queue.Queue[Receipt] = queue.Queue()
        self.releases: queue.Queue[bytes] = queue.Queue()
        self._subscribed = threading.Event()
        self.client = mqtt.Client(CallbackAPIVersion.VERSION2, client_id=name, protocol=mqtt.MQTTv5)
        self.client.username_pw_set(name, broker.passwords[name])
        self.client.max_inflight_messages_set(100)
        self.client.on_message = self._on_message
        self.client.on_connect = self._on_connect
        self.client.on_subscribe = lambda *_args: self._subscribed.set()
        self.client.connect(broker.host, broker.port)
        self.client.loop_start()
        if not self._subscribed.wait(10):
            raise TimeoutError(f"{name} did not subscribe")

    def _on_connect(self, client: mqtt.Client, *_args: Any) -> None:
        client.subscribe([(receipt_topic(self.task, self.name), 1), (model_topic(self.task), 1)])

    def _on_message(self, _client: mqtt.Client, _userdata: Any, message: mqtt.MQTTMessage) -> None:
        if message.topic.endswith("/receipt"):
            self.receipts.put(Receipt.decode(message.payload))
        else:
            self.releases.put(bytes(message.payload))

    def publish(self, payload: bytes) -> None:
        """Publish raw bytes on this device's update topic (QoS 1)."""
        self.client.publish(update_topic(self.task, self.name), payload, qos=1)

    def receipt(self, timeout: float = 10.0) -> Receipt:
        """The next receipt."""
        return self.receipts.get(timeout=timeout)

    def release(self, key: SigningKey, version: int, timeout: float = 15.0) -> ModelRelease:
        """Wait for the release of ``version`` (skipping older ones)."""
        deadline = time.monotonic() + timeout
        while True:
            payload = self.releases.get(timeout=max(0.01, deadline - time.monotonic()))
            decoded = ModelRelease.decode(payload, key.verify_key)
            if decoded.version >= version:
                return decoded

    def close(self) -> None:
        """Disconnect."""
        self.client.loop_stop()
        self.client.disconnect()


class ServiceThread:
    """An AggregatorService running on its own event loop in a thread."""

    def __init__(self, config_path: Path) -> None:
        """Start the service."""
        self.config = load_config(config_path, {})
        self.service: AggregatorService | None = None
        self.error: BaseException | None = None
        self._loop: asyncio.AbstractEventLoop | None = None
        self._ready = threading.Event()
        self._thread = threading.Thread(target=self._main, daemon=True)
        self._thread.start()
        if not self._ready.wait(10):
            raise TimeoutError("service thread did not start")
        deadline = time.monotonic() + 10
        while not self._subscribed():
            if self.error is not None or time.monotonic() > deadline:
                raise TimeoutError(f"service did not subscribe: {self.error!r}")
            time.sleep(0.01)

    def _subscribed(self) -> bool:
        return self.service is not None and self.service.subscribed.is_set()

    def _main(self) -> None:
        async def main() -> None:
            self._loop = asyncio.get_running_loop()
            self.service = AggregatorService(self.config, signing_key(self.config))
            self._ready.set()
            await self.service.run()

        try:
            asyncio.run(main())
        except BaseException as exc:  # reported by stop()
            self.error = exc
            self._ready.set()

    def stop(self) -> None:
        """Stop gracefully and re-raise anything the service raised."""
        if self._loop is not None and self.service is not None:
            self._loop.call_soon_threadsafe(self.service.stop)
        self._thread.join(15)
        assert not self._thread.is_alive(), "service did not stop"
        if self.error is not None:
            raise self.error

    def metric(self, name: str, labels: Mapping[str, str]) -> float:
        """Current value of a sample of the service's registry (0 if absent)."""
        assert self.service is not None
        value = self.service.metrics.registry.get_sample_value(name, dict(labels))
        return 0.0 if value is None else value


@contextmanager
def running_service(config_path: Path) -> Iterator[ServiceThread]:
    """A ServiceThread stopped on exit."""
    service = ServiceThread(config_path)
    try:
        yield service
    finally:
        service.stop()


class ServiceProcess:
    """``fedmq aggregator run`` as a subprocess (for SIGKILL tests)."""

    def __init__(self, config_path: Path, log: Path) -> None:
        """Remember how to start it."""
        self.config_path = config_path
        self.log = log
        self.process: subprocess.Popen[bytes] | None = None

    def start(self) -> None:
        """Start (again)."""
        with self.log.open("ab") as log:
            self.process = subprocess.Popen(
                [
                    sys.executable,
                    "-m",
                    "fedmq.cli",
                    "--log-level",
                    "INFO",
                    "aggregator",
                    "run",
                    "--config",
                    str(self.config_path),
                ],
                stdout=log,
                stderr=subprocess.STDOUT,
                cwd=ROOT,
                env={**os.environ, "PYTHONPATH": str(ROOT)},
            )

    def wait_for_log(self, text: str, occurrences: int, timeout: float = 20.0) -> None:
        """Wait until ``text`` appears ``occurrences`` times in the log."""
        deadline = time.monotonic() + timeout
        while self.log.read_text(errors="replace").count(text) < occurrences:
            assert time.monotonic() < deadline, f"{text!r} not logged {occurrences} times"
            time.sleep(0.05)

    def kill(self) -> None:
        """SIGKILL, as a crash would."""
        if self.process is not None and self.process.poll() is None:
            self.process.kill()
            self.process.wait()

    def terminate(self, timeout: float = 15.0) -> int:
        """SIGTERM and wait; return the exit code."""
        assert self.process is not None
        self.process.terminate()
        return self.process.wait(timeout)
