"""The embedded amqtt broker enforces our password file and ACL for MQTT 3.1.1 clients."""

from __future__ import annotations

import queue
import secrets
import socket
import struct
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import paho.mqtt.client as mqtt
import pytest
from paho.mqtt.enums import MQTTProtocolVersion

from fedmq.cli import main
from fedmq.embedded_broker import EmbeddedBroker, RunningBroker, start_embedded_broker
from fedmq.local_servers import ServerStartError
from serialization import ModelRelease, SigningKey
from serialization.topics import model_topic, status_topic, update_topic
from tests.conftest import Broker
from tests.integration.mqtt_peer import TIMEOUT, Peer, PeerFleet
from tests.integration.test_acl import (
    ACCOUNTS,
    READERS,
    TOPIC_KINDS,
    WRITERS,
    topic_of,
)

pytestmark = pytest.mark.integration

V311 = MQTTProtocolVersion.MQTTv311

QUIET = 0.3
"""How long to wait for a message that must not come, where no sentinel can bound it."""
NOT_AUTHORIZED = 0x87
BAD_CREDENTIALS = 0x86
UNSUPPORTED_PROTOCOL_VERSION = 0x84
ACCOUNT_NAMES = ("aggregator", "dev-a", "dev-b", "dev-c")


@dataclass(kw_only=True)
class Embedded:
    """The running embedded broker and its accounts' passwords."""

    broker: EmbeddedBroker
    passwords: dict[str, str]

    def peer(self, username: str, *, client_id: str | None = None) -> Peer:
        """A connected 3.1.1 Peer of a provisioned account."""
        peer = Peer(
            self.broker.port, username, self.passwords[username], client_id=client_id, protocol=V311
        )
        assert peer.connect() == 0
        return peer


@pytest.fixture(scope="module")
def embedded(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Embedded]:
    """One embedded broker for the module, with the shipped ACL and four accounts."""
    passwords = {name: secrets.token_urlsafe(16) for name in ACCOUNT_NAMES}
    broker = start_embedded_broker(tmp_path_factory.mktemp("amqtt"), accounts=passwords)
    yield Embedded(broker=broker, passwords=passwords)
    broker.stop()


@pytest.fixture(scope="module")
def fleet(embedded: Embedded) -> Iterator[PeerFleet]:
    """The matrix's three accounts, each subscribed to ``fl/v1/<task>/#`` and the sentinel."""
    task = f"emb{secrets.token_hex(4)}"
    sentinel_topic = model_topic(f"{task}s")
    peers = {name: embedded.peer(name) for name in ACCOUNTS}
    for peer in peers.values():
        assert peer.subscribe(f"fl/v1/{task}/#", sentinel_topic) == [1, 1]
    yield PeerFleet(peers=peers, task=task, sentinel_topic=sentinel_topic)
    for peer in peers.values():
        peer.close()


@pytest.mark.parametrize("kind", TOPIC_KINDS)
@pytest.mark.parametrize("publisher", ACCOUNTS)
def test_embedded_broker_acl_matrix_matches_mosquitto(
    fleet: PeerFleet, publisher: str, kind: str
) -> None:
    """test_acl.py's matrix (checked there on Mosquitto): who receives what each one sends."""
    payload = f"{publisher}->{kind}:{secrets.token_hex(4)}".encode()
    fleet.peers[publisher].publish(topic_of(kind, fleet.task), payload)
    allowed = publisher in WRITERS[kind]
    assert fleet.delivered(payload) == (READERS[kind] if allowed else set())


@pytest.mark.parametrize(
    ("username", "password"),
    [(None, None), ("dev-b", "not-dev-b's-password"), ("nobody", "x"), ("dev-b", None)],
)
def test_embedded_broker_refuses_anonymous_unknown_and_wrong_passwords(
    embedded: Embedded, fleet: PeerFleet, username: str | None, password: str | None
) -> None:
    """No login without the account's password; the real dev-b keeps working."""
    peer = Peer(embedded.broker.port, username, password, protocol=V311)
    assert peer.connect() in (BAD_CREDENTIALS, NOT_AUTHORIZED)
    payload = b"still-b-" + secrets.token_hex(4).encode()
    fleet.peers["dev-b"].publish(topic_of("update_b", fleet.task), payload)
    assert fleet.delivered(payload) == {"aggregator"}


def test_embedded_broker_delivers_a_device_update_of_1_mb(embedded: Embedded, task: str) -> None:
    """A ~1 MB update from dev-a reaches the aggregator intact."""
    aggregator, device = embedded.peer("aggregator"), embedded.peer("dev-a")
    try:
        assert aggregator.subscribe(f"fl/v1/{task}/dev/+/update") == [1]
        payload = secrets.token_bytes(1_000_000)
        device.publish(update_topic(task, "dev-a"), payload)
        got = aggregator.messages.get(timeout=TIMEOUT)
        assert (got.topic, len(got.payload), got.payload == payload) == (
            update_topic(task, "dev-a"),
            1_000_000,
            True,
        )
    finally:
        aggregator.close()
        device.close()


def test_embedded_broker_retains_only_what_the_publisher_may_write(
    embedded: Embedded, task: str
) -> None:
    """The aggregator's retained model reaches a device that subscribes later; a device's
    retained "model" and another device's forged status are neither delivered nor kept."""
    aggregator, device = embedded.peer("aggregator"), embedded.peer("dev-b")
    aggregator.publish(model_topic(task), b"release-1", retain=True)
    device.publish(model_topic(task), b"forged-release", retain=True)
    device.publish(status_topic(task, "dev-a"), b"forged-status", retain=True)
    aggregator.close()
    device.close()
    late = embedded.peer("dev-c")
    try:
        assert late.subscribe(model_topic(task)) == [1]
        got = late.messages.get(timeout=TIMEOUT)
        assert (got.topic, got.payload, got.retain) == (model_topic(task), b"release-1", True)
        reader = embedded.peer("aggregator", client_id="aggregator-2")
        try:
            reader.subscribe(status_topic(task, "dev-a"))
            with pytest.raises(queue.Empty):
                reader.messages.get(timeout=QUIET)
        finally:
            reader.close()
    finally:
        late.close()


def test_embedded_broker_sends_retained_messages_only_to_readers(
    embedded: Embedded, task: str
) -> None:
    """dev-b subscribing to every status gets none of dev-a's (amqtt alone would send them),
    nor does a new client get retained messages of filters that others hold."""
    device_a = embedded.peer("dev-a")
    device_a.publish(status_topic(task, "dev-a"), b"online-a", retain=True)
    device_a.close()
    aggregator = embedded.peer("aggregator")
    try:
        assert aggregator.subscribe(f"fl/v1/{task}/dev/+/status") == [1]
        assert aggregator.messages.get(timeout=TIMEOUT).payload == b"online-a"
        device_b = embedded.peer("dev-b")
        try:
            assert device_b.subscribe(f"fl/v1/{task}/dev/+/status") == [1]
            sentinel_topic = model_topic(f"{task}s")
            assert device_b.subscribe(sentinel_topic) == [1]
            aggregator.publish(sentinel_topic, b"sentinel")
            assert device_b.received_before(b"sentinel") == []
        finally:
            device_b.close()
    finally:
        aggregator.close()


def _raw_connect(port: int, username: str, password: str, will: tuple[str, bytes]) -> socket.socket:
    """An MQTT 3.1.1 CONNECT with a retained QoS 1 will; returns the socket after CONNACK."""

    def string(value: bytes) -> bytes:
        return struct.pack("!H", len(value)) + value

    flags = 0x80 | 0x40 | 0x20 | 0x08 | 0x04 | 0x02  # user, password, will retain/QoS 1, clean
    body = string(b"MQTT") + bytes([4, flags]) + struct.pack("!H", 30)
    body += string(f"{username}-raw".encode()) + string(will[0].encode()) + string(will[1])
    body += string(username.encode()) + string(password.encode())
    sock = socket.create_connection(("127.0.0.1", port), timeout=TIMEOUT)
    sock.sendall(bytes([0x10, len(body)]) + body)
    assert sock.recv(4) == b"\x20\x02\x00\x00", "CONNACK refused"
    return sock


def _crash(sock: socket.socket) -> None:
    """Reset the connection without DISCONNECT, so that the broker sends the will."""
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
    sock.close()


def test_embedded_broker_sends_only_last_wills_the_device_may_write(
    embedded: Embedded, task: str
) -> None:
    """dev-c's will on its own status is published; its will on dev-a's status is dropped."""
    aggregator = embedded.peer("aggregator")
    try:
        assert aggregator.subscribe(f"fl/v1/{task}/dev/+/status") == [1]
        password = embedded.passwords["dev-c"]
        _crash(
            _raw_connect(
                embedded.broker.port, "dev-c", password, (status_topic(task, "dev-a"), b"fake")
            )
        )
        _crash(
            _raw_connect(
                embedded.broker.port, "dev-c", password, (status_topic(task, "dev-c"), b"gone")
            )
        )
        got = aggregator.messages.get(timeout=TIMEOUT)
        assert (got.topic, got.payload) == (status_topic(task, "dev-c"), b"gone")
        with pytest.raises(queue.Empty):
            aggregator.messages.get(timeout=QUIET)
    finally:
        aggregator.close()


@pytest.mark.parametrize(("username", "password_ok"), [("aggregator", False), ("dev-b", True)])
def test_embedded_broker_keeps_a_session_from_logins_of_others(
    embedded: Embedded, task: str, username: str, password_ok: bool
) -> None:
    """A wrong password, or another user, claiming the aggregator's client id is refused
    and leaves the aggregator's connection and subscriptions alone."""
    victim = embedded.peer("aggregator", client_id="agg-replica-1")
    try:
        assert victim.subscribe(f"fl/v1/{task}/dev/+/update") == [1]
        password = embedded.passwords[username] if password_ok else "wrong"
        intruder = Peer(
            embedded.broker.port, username, password, client_id="agg-replica-1", protocol=V311
        )
        assert intruder.connect() == NOT_AUTHORIZED
        device = embedded.peer("dev-a")
        device.publish(update_topic(task, "dev-a"), b"update-after-attack")
        device.close()
        assert victim.messages.get(timeout=TIMEOUT).payload == b"update-after-attack"
        assert victim.disconnects.empty()
    finally:
        victim.close()


def test_embedded_broker_refuses_mqtt5_and_shared_subscriptions(embedded: Embedded) -> None:
    """MQTT 5 gets CONNACK 0x84 at once; SUBSCRIBE $share/... gets SUBACK 0x80."""
    v5 = Peer(embedded.broker.port, "dev-a", embedded.passwords["dev-a"], protocol=mqtt.MQTTv5)
    assert v5.connect() == UNSUPPORTED_PROTOCOL_VERSION
    aggregator = embedded.peer("aggregator")
    try:
        assert aggregator.subscribe("$share/aggregators/fl/v1/t/dev/+/update") == [0x80]
    finally:
        aggregator.close()


def test_embedded_broker_serves_fedmq_watch_over_mqtt_311(
    embedded: Embedded, task: str, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """``fedmq watch --mqtt-version 3.1.1`` verifies a retained release; with MQTT 5 it is
    told at once to use 3.1.1."""
    key = SigningKey.generate()
    (tmp_path / "aggregator.pub").write_bytes(key.verify_key.to_pem())
    (tmp_path / "password").write_text(embedded.passwords["dev-c"] + "\n")
    release = ModelRelease(
        task=task, version=3, parent_version=2, tensors={"W": np.eye(2, dtype=np.float32)}
    )
    aggregator = embedded.peer("aggregator")
    aggregator.publish(model_topic(task), release.encode(key), retain=True)
    aggregator.close()
    argv = [
        "watch", "--port", str(embedded.broker.port), "--username", "dev-c",
        "--password-file", str(tmp_path / "password"), "--task", task,
        "--public-key", str(tmp_path / "aggregator.pub"), "--count", "1", "--timeout", "10",
    ]  # fmt: skip
    assert main(argv) == 2
    assert "Unsupported protocol version (try --mqtt-version 3.1.1)" in capsys.readouterr().err
    assert main([*argv, "--mqtt-version", "3.1.1"]) == 0
    assert capsys.readouterr().out.startswith(f"release task={task} version=3 parent=2 ")


def test_embedded_broker_stops_and_shares_the_protocol_of_mosquitto(
    tmp_path: Path, broker: Broker
) -> None:
    """Both kinds of broker satisfy RunningBroker; stop() frees the port; a taken port fails."""
    started = start_embedded_broker(tmp_path / "amqtt", accounts={"dev-a": "pw"})
    servers: list[RunningBroker] = [started, broker.server]
    assert [(s.name, s.running, s.workdir.is_dir()) for s in servers] == [
        ("amqtt", True, True),
        ("mosquitto", True, True),
    ]
    assert "amqtt" in started.origin
    with pytest.raises(ServerStartError, match="did not start"):
        start_embedded_broker(tmp_path / "second", accounts={}, port=started.port)
    started.stop()
    assert not started.running
    with pytest.raises(ConnectionRefusedError):
        socket.create_connection(("127.0.0.1", started.port), timeout=TIMEOUT).close()
