"""The real system for learning benchmarks: servers, an aggregator process, daemons, a recorder."""

from __future__ import annotations

import logging
import secrets
import shutil
import tempfile
import threading
import time
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from types import TracebackType

import numpy as np
import paho.mqtt.client as mqtt
from numpy.typing import NDArray
from paho.mqtt.enums import CallbackAPIVersion

from device.config import BrokerSettings, DeviceConfig, SampleSettings, TrainingSettings
from device.daemon import DeviceDaemon
from device.models import ModelSpec, Params
from fedmq.broker_files import AclFile, AclRule
from fedmq.demo_fleet import Fleet, FleetSettings
from fedmq.demo_stack import DemoStack, choose_servers, start_stack
from fedmq.digits import DigitsSplit
from fedmq.local_servers import LocalServer
from fedmq.password_file import PasswordFile
from serialization import (
    DEFAULT_ROOT,
    Codec,
    ModelRelease,
    ModelUpdate,
    SerializationError,
    VerifyKey,
    model_topic,
)

__all__ = [
    "TASK",
    "BenchError",
    "BenchSystem",
    "ObservedRelease",
    "ReleaseRecorder",
    "SeenUpdate",
    "UpdateTap",
    "total_counter",
]

logger = logging.getLogger(__name__)

TASK = "digits"
_RECORDER = "recorder"
_TAP = "bench-tap"


class BenchError(RuntimeError):
    """A benchmark run could not complete; ``reason`` says why."""

    def __init__(self, reason: str) -> None:
        super().__init__(reason)
        self.reason = reason


@dataclass(frozen=True, kw_only=True, slots=True, eq=False)
class ObservedRelease:
    """A verified release as a subscriber saw it."""

    version: int
    at: float
    """``time.monotonic()`` when it arrived."""
    params: Params
    update_count: int


class _Subscriber:
    """One paho MQTT 5 client with its own account and one QoS 1 subscription."""

    def __init__(self, *, port: int, username: str, password: str, topic: str) -> None:
        self._topic = topic
        self._changed = threading.Condition()
        self._subscribed = threading.Event()
        self._client = mqtt.Client(
            CallbackAPIVersion.VERSION2, client_id=username, protocol=mqtt.MQTTv5
        )
        self._client.username_pw_set(username, password)
        self._client.on_connect = lambda c, _u, _f, rc, _p: (
            c.subscribe(self._topic, qos=1) if not rc.is_failure else None
        )
        self._client.on_subscribe = lambda _c, _u, _m, _rc, _p: self._subscribed.set()
        self._client.on_message = lambda _c, _u, m: self._handle(bytes(m.payload), time.monotonic())
        self._client.connect_async("127.0.0.1", port)

    def start(self, timeout: float = 30.0) -> None:
        """Connect in paho's thread and wait for the subscription (BenchError on timeout)."""
        self._client.loop_start()
        if not self._subscribed.wait(timeout):
            raise BenchError(f"could not subscribe to {self._topic} within {timeout:.0f} s")

    def stop(self) -> None:
        """Disconnect."""
        self._client.disconnect()
        self._client.loop_stop()

    def _handle(self, payload: bytes, at: float) -> None:
        raise NotImplementedError


class ReleaseRecorder(_Subscriber):
    """Subscribes to the task's model topic, verifies every release and keeps its tensors."""

    def __init__(
        self, *, port: int, username: str, password: str, task: str, verify_key: VerifyKey
    ) -> None:
        super().__init__(port=port, username=username, password=password, topic=model_topic(task))
        self._verify_key = verify_key
        self._releases: list[ObservedRelease] = []
        self.refused = 0

    @property
    def releases(self) -> list[ObservedRelease]:
        """Every release seen so far, in arrival order (a copy)."""
        with self._changed:
            return list(self._releases)

    def wait_for_version(self, version: int, timeout: float) -> bool:
        """Block until a release of at least ``version`` arrived, or ``timeout`` s passed."""
        with self._changed:
            return self._changed.wait_for(
                lambda: any(r.version >= version for r in self._releases), timeout
            )

    def _handle(self, payload: bytes, at: float) -> None:
        try:
            release = ModelRelease.decode(payload, self._verify_key)
        except SerializationError as exc:
            self.refused += 1
            logger.warning("recorder refused a release: %s", exc)
            return
        observed = ObservedRelease(
            version=release.version,
            at=at,
            params=release.float32_tensors(),
            update_count=release.update_count,
        )
        with self._changed:
            if all(r.version != observed.version for r in self._releases):
                self._releases.append(observed)
            self._changed.notify_all()


@dataclass(frozen=True, kw_only=True, slots=True)
class SeenUpdate:
    """One update publish as the broker delivered it to the tap."""

    device_id: str
    base_version: int
    codec: str
    nbytes: int
    """The MQTT payload (the encoded ModelUpdate)."""
    tensor_bytes: int
    """Of which the tensors' values, indices and scales: the part the codec compresses."""


class UpdateTap(_Subscriber):
    """A read-only account subscribed (not shared) to every device's update topic: it sees
    each publish the aggregator sees, resends included, and records its size."""

    def __init__(self, *, port: int, username: str, password: str, task: str) -> None:
        topic = f"{DEFAULT_ROOT}/{task}/dev/+/update"
        super().__init__(port=port, username=username, password=password, topic=topic)
        self._updates: list[SeenUpdate] = []

    @property
    def updates(self) -> list[SeenUpdate]:
        """Every update publish seen so far (a copy)."""
        with self._changed:
            return list(self._updates)

    def _handle(self, payload: bytes, at: float) -> None:
        try:
            update = ModelUpdate.decode(payload)
        except SerializationError as exc:
            logger.warning("tap could not decode an update: %s", exc)
            return
        seen = SeenUpdate(
            device_id=update.device_id,
            base_version=update.base_version,
            codec=update.codec,
            nbytes=len(payload),
            tensor_bytes=sum(
                t.values.nbytes
                + (t.indices.nbytes if t.indices is not None else 0)
                + (4 if t.scale is not None else 0)
                for t in update.tensors.values()
            ),
        )
        with self._changed:
            self._updates.append(seen)


@dataclass(kw_only=True)
class BenchSystem:
    """Mosquitto, Redis, keys and one ``fedmq aggregator run`` process in a temp dir, plus
    in-process device daemons and a release recorder; a context manager that stops all."""

    devices: list[str]
    strategy: str
    buffer_size: int
    deadline_s: float | None = None
    task_options: str = ""
    """TOML lines appended to the task's table (see ``start_stack``)."""
    workdir: Path = field(default_factory=lambda: Path(tempfile.mkdtemp(prefix="fedmq-bench-")))
    stack: DemoStack | None = None
    recorder: ReleaseRecorder | None = None
    tap: UpdateTap | None = None
    daemons: list[DeviceDaemon] = field(default_factory=list)

    def __enter__(self) -> BenchSystem:
        try:
            self.stack = start_stack(
                self.workdir,
                choose_servers(None, "mosquitto"),
                accounts=[*self.devices, _RECORDER],
                task=TASK,
                strategy=self.strategy,
                buffer_size=self.buffer_size,
                deadline_s=self.deadline_s,
                task_options=self.task_options,
            )
        except BaseException:
            shutil.rmtree(self.workdir, ignore_errors=True)
            raise
        return self

    def __exit__(
        self,
        _type: type[BaseException] | None,
        _exc: BaseException | None,
        _tb: TracebackType | None,
    ) -> None:
        self.close()

    @property
    def running(self) -> DemoStack:
        """The started stack (after ``__enter__``)."""
        if self.stack is None:
            raise RuntimeError("BenchSystem used outside its with block")
        return self.stack

    def init_model(self, spec: ModelSpec, params: Params) -> None:
        """Store ``params`` as version 1 with ``spec``'s ``model.*`` metadata: ``fedmq
        aggregator init --from`` a release signed with the stack's key."""
        stack = self.running
        release = ModelRelease(
            task=TASK, version=1, parent_version=0, tensors=params, metadata=spec.to_metadata()
        )
        path = self.workdir / "initial.release"
        path.write_bytes(release.encode(stack.signing_key))
        stack.run_admin("init", "--task", TASK, "--from", str(path))

    def start_aggregator(self) -> ReleaseRecorder:
        """Start the recorder, then the aggregator process (which publishes version 1)."""
        stack = self.running
        self.recorder = ReleaseRecorder(
            port=stack.broker.port,
            username=_RECORDER,
            password=stack.passwords[_RECORDER],
            task=TASK,
            verify_key=stack.signing_key.verify_key,
        )
        self.recorder.start()
        stack.start_aggregator()
        return self.recorder

    def start_tap(self) -> UpdateTap:
        """Provision a read-only account for ``.../dev/+/update`` (ACL block + password,
        SIGHUP) and start an UpdateTap with it."""
        stack = self.running
        password = secrets.token_urlsafe(24)
        rule = AclRule(access="read", topic=f"{DEFAULT_ROOT}/+/dev/+/update")
        AclFile(stack.broker.workdir / "acl").add_user(_TAP, [rule], comment="bench update tap")
        PasswordFile(stack.broker.workdir / "passwd").set(_TAP, password)
        if not isinstance(stack.broker, LocalServer):
            raise BenchError("the update tap needs Mosquitto (SIGHUP reloads its ACL)")
        stack.broker.reload()
        self.tap = UpdateTap(port=stack.broker.port, username=_TAP, password=password, task=TASK)
        self.tap.start()
        return self.tap

    def device_config(self, name: str, training: TrainingSettings, codec: Codec) -> DeviceConfig:
        """The configuration of device ``name`` in this system."""
        stack = self.running
        return DeviceConfig(
            device_id=name,
            task=TASK,
            state_dir=self.workdir / "devices" / name,
            aggregator_key=stack.verify_key_path,
            broker=BrokerSettings(
                port=stack.broker.port,
                password=stack.passwords[name],
                reconnect_min=0.2,
                reconnect_max=2.0,
            ),
            training=training,
            codec=codec,
            samples=SampleSettings(spool_poll=5.0),
        )

    def add_daemon(self, name: str, training: TrainingSettings, codec: Codec) -> DeviceDaemon:
        """Create (not start) a daemon that ``close()`` will stop."""
        daemon = DeviceDaemon(self.device_config(name, training, codec))
        self.daemons.append(daemon)
        return daemon

    def start_fleet(
        self,
        names: list[str],
        split: DigitsSplit,
        shares: Sequence[NDArray[np.intp]],
        settings: FleetSettings,
    ) -> Fleet:
        """Real daemons ``names``, each training on its share (indices into ``split``'s
        training set), built on this system and stopped with it; ``fleet.start()`` runs them."""
        stack = self.running
        fleet = Fleet(
            names=names,
            shares=[(split.x_train[i], split.y_train[i]) for i in shares],
            passwords=stack.passwords,
            broker_port=stack.broker.port,
            task=TASK,
            verify_key_path=stack.verify_key_path,
            state_root=self.workdir / "devices",
            settings=settings,
        )
        self.daemons.extend(d.daemon for d in fleet.devices)
        return fleet

    def check_aggregator(self) -> None:
        """Raise BenchError (with its log's tail) if the aggregator process is gone."""
        process = self.running.aggregator
        if process is None or process.poll() is None:
            return
        log = self.running.aggregator_log.read_text(errors="replace")[-2000:]
        raise BenchError(f"the aggregator exited with {process.returncode}:\n{log}")

    def wait_for_version(self, version: int, timeout: float) -> ObservedRelease:
        """Block until the recorder saw ``version``; BenchError on timeout or a dead aggregator."""
        if self.recorder is None:
            raise BenchError("the aggregator was not started")
        deadline = time.monotonic() + timeout
        while not self.recorder.wait_for_version(version, 0.5):
            self.check_aggregator()
            if time.monotonic() > deadline:
                raise BenchError(f"no release v{version} within {timeout:.0f} s")
        return next(r for r in self.recorder.releases if r.version >= version)

    def close(self) -> None:
        """Stop daemons, recorder, aggregator and servers; remove the temp dir."""
        try:
            for daemon in self.daemons:
                daemon.stop()
            for daemon in self.daemons:
                daemon.join(15)
                daemon.close()
            for subscriber in (self.recorder, self.tap):
                if subscriber is not None:
                    subscriber.stop()
            if self.stack is not None:
                self.stack.close()
        finally:
            shutil.rmtree(self.workdir, ignore_errors=True)


def total_counter(daemons: list[DeviceDaemon], name: str) -> int:
    """The sum of one counter over ``daemons``."""
    return sum(int(d.db.counters().get(name, 0)) for d in daemons)
