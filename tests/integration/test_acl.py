"""The shipped ACL and limits, checked against the real Mosquitto by what it delivers."""

from __future__ import annotations

import secrets
import socket
import struct
from collections.abc import Iterator

import pytest

from serialization.limits import DEFAULT_LIMITS
from serialization.topics import (
    control_topic,
    model_topic,
    receipt_topic,
    status_topic,
    update_topic,
)
from tests.conftest import SERVICE_ACCOUNT, Broker
from tests.integration.mqtt_peer import TIMEOUT, Peer, PeerFleet
from tests.integration.mqtt_wire import utf8_string as _string
from tests.integration.mqtt_wire import varint as _varint

pytestmark = pytest.mark.integration

NOT_AUTHORIZED = 0x87
NO_MATCHING_SUBSCRIBERS = 0x10
PACKET_TOO_LARGE = 0x95


def connect_peer(broker: Broker, username: str) -> Peer:
    """A connected Peer for a provisioned account of ``broker``."""
    peer = Peer(broker.port, username, broker.passwords[username])
    assert peer.connect() == 0
    return peer


TOPIC_KINDS = (
    "update_a", "update_b", "status_a", "status_b", "receipt_a", "receipt_b", "model", "control",
)  # fmt: skip
ACCOUNTS = ("dev-a", "dev-b", SERVICE_ACCOUNT)
WRITERS = {
    "update_a": {"dev-a"},
    "update_b": {"dev-b"},
    "status_a": {"dev-a"},
    "status_b": {"dev-b"},
    "receipt_a": {SERVICE_ACCOUNT},
    "receipt_b": {SERVICE_ACCOUNT},
    "model": {SERVICE_ACCOUNT},
    "control": {SERVICE_ACCOUNT},
}
"""Who may publish on each topic type (DESIGN.md, Topics), written out by hand."""
READERS = {
    "update_a": {SERVICE_ACCOUNT},
    "update_b": {SERVICE_ACCOUNT},
    "status_a": {SERVICE_ACCOUNT},
    "status_b": {SERVICE_ACCOUNT},
    "receipt_a": {"dev-a"},
    "receipt_b": {"dev-b"},
    "model": set(ACCOUNTS),
    "control": set(ACCOUNTS),
}
"""Who receives a message published on each topic type."""


def topic_of(kind: str, task: str) -> str:
    """The concrete topic of a TOPIC_KINDS entry (``_a`` = dev-a, ``_b`` = dev-b)."""
    if kind == "model":
        return model_topic(task)
    if kind == "control":
        return control_topic(task)
    name, _, device = kind.partition("_")
    build = {"update": update_topic, "status": status_topic, "receipt": receipt_topic}[name]
    return build(task, f"dev-{device}")


@pytest.fixture(scope="module")
def fleet(broker: Broker) -> Iterator[PeerFleet]:
    """The three accounts of the matrix, each subscribed to ``fl/v1/<task>/#``."""
    task = f"acl{secrets.token_hex(4)}"
    sentinel_topic = model_topic(f"{task}s")
    peers = {name: connect_peer(broker, name) for name in ACCOUNTS}
    for peer in peers.values():
        peer.subscribe(f"fl/v1/{task}/#", sentinel_topic)
    yield PeerFleet(task=task, peers=peers, sentinel_topic=sentinel_topic)
    for peer in peers.values():
        peer.close()


@pytest.mark.parametrize("kind", TOPIC_KINDS)
@pytest.mark.parametrize("publisher", ACCOUNTS)
def test_acl_matrix_publish_and_delivery(fleet: PeerFleet, publisher: str, kind: str) -> None:
    """Each account publishes on each topic type: PUBACK code and who receives it."""
    payload = f"{publisher}->{kind}:{secrets.token_hex(4)}".encode()
    code = fleet.peers[publisher].publish(topic_of(kind, fleet.task), payload)
    allowed = publisher in WRITERS[kind]
    assert code == (0 if allowed else NOT_AUTHORIZED)
    assert fleet.delivered(payload) == (READERS[kind] if allowed else set())


@pytest.mark.parametrize(
    ("username", "password"),
    [(None, None), ("dev-b", "not-dev-b's-password"), ("nobody", "x"), ("dev-b", "")],
)
def test_acl_refuses_anonymous_unknown_and_wrong_passwords(
    fleet: PeerFleet, broker: Broker, username: str | None, password: str | None
) -> None:
    """No login without the account's password; the real dev-b stays connected."""
    peer = Peer(broker.port, username, password)
    assert peer.connect() in (0x86, NOT_AUTHORIZED)
    assert fleet.peers["dev-b"].connected
    payload = b"still-b-" + secrets.token_hex(4).encode()
    assert fleet.peers["dev-b"].publish(topic_of("update_b", fleet.task), payload) == 0
    assert fleet.delivered(payload) == {SERVICE_ACCOUNT}


def test_acl_rights_follow_the_username_not_the_client_id(fleet: PeerFleet, broker: Broker) -> None:
    """dev-c calling itself "dev-x" publishes, and leaves a will, only as dev-c.

    (That a device cannot take over another's session is the device listener's
    use_username_as_clientid: tested on mosquitto.conf in test_broker_cli.py.)
    """
    intruder = RawClient(
        broker.port,
        "dev-c",
        broker.passwords["dev-c"],
        client_id="dev-x",
        will=(status_topic(fleet.task, "dev-x"), b"fake-offline"),
    )
    forged = b"forged-" + secrets.token_hex(4).encode()
    assert intruder.publish(update_topic(fleet.task, "dev-x"), forged) == NOT_AUTHORIZED
    own = b"own-" + secrets.token_hex(4).encode()
    assert intruder.publish(update_topic(fleet.task, "dev-c"), own) == 0
    sentinel = fleet.sentinel()
    seen = fleet.peers[SERVICE_ACCOUNT].received_before(sentinel)
    assert [(m.topic, m.payload) for m in seen] == [(update_topic(fleet.task, "dev-c"), own)]
    intruder.kill()
    assert fleet.delivered(b"fake-offline") == set()


def test_acl_retained_release_reaches_a_device_that_connects_later(
    broker: Broker, fleet: PeerFleet, task: str
) -> None:
    """A device that subscribes after the aggregator released a model gets that release."""
    release = b"release-" + secrets.token_hex(8).encode()
    aggregator = fleet.peers[SERVICE_ACCOUNT]
    assert aggregator.publish(model_topic(task), release, retain=True) == NO_MATCHING_SUBSCRIBERS
    late = connect_peer(broker, "dev-c")
    try:
        late.subscribe(model_topic(task))
        got = late.next_message()
        assert (got.topic, got.payload, got.retain) == (model_topic(task), release, True)
    finally:
        late.close()


def test_acl_last_will_marks_a_device_offline(broker: Broker, fleet: PeerFleet, task: str) -> None:
    """Killing a device's socket publishes its retained "offline" will to the aggregator."""
    status = status_topic(task, "dev-c")
    aggregator = fleet.peers[SERVICE_ACCOUNT]
    aggregator.subscribe(status)
    device = RawClient(broker.port, "dev-c", broker.passwords["dev-c"], will=(status, b"offline"))
    assert device.publish(status, b"online") == 0
    assert aggregator.next_message().payload == b"online"
    device.kill()
    got = aggregator.next_message()
    assert (got.topic, got.payload) == (status, b"offline")
    aggregator.client.unsubscribe(status)
    aggregator.subscribe(status)
    retained = aggregator.next_message()
    assert (retained.payload, retained.retain) == (b"offline", True)


def test_broker_limits_refuse_a_payload_above_max_payload_bytes(
    broker: Broker, fleet: PeerFleet
) -> None:
    """max_payload_bytes passes; one byte more gets PUBACK 0x95 and is not delivered.

    A raw client reads the reason code: paho-mqtt 2.x rejects 0x95 in a PUBACK as a
    malformed packet, then reconnects and resends the same message forever.
    """
    topic, limit = update_topic(fleet.task, "dev-c"), DEFAULT_LIMITS.max_payload_bytes
    with RawClient(broker.port, "dev-c", broker.passwords["dev-c"]) as device:
        largest = secrets.token_bytes(8) + bytes(limit - 8)
        assert device.publish(topic, largest) == 0
        assert fleet.delivered(largest) == {SERVICE_ACCOUNT}
        too_large = secrets.token_bytes(8) + bytes(limit - 7)
        assert device.publish(topic, too_large) == PACKET_TOO_LARGE
        assert fleet.delivered(too_large) == set()
        small = b"after-" + secrets.token_hex(4).encode()
        assert device.publish(topic, small) == 0
        assert fleet.delivered(small) == {SERVICE_ACCOUNT}


class RawClient:
    """Just enough MQTT 5 over a socket to read CONNACK and PUBACK reason codes as sent."""

    def __init__(
        self,
        port: int,
        username: str,
        password: str,
        *,
        client_id: str | None = None,
        will: tuple[str, bytes] | None = None,
    ) -> None:
        self.sock = socket.create_connection(("127.0.0.1", port), timeout=TIMEOUT)
        flags = 0xC2 | (0x2C if will else 0)  # user, password, clean start; will: QoS 1, retained
        header = _string("MQTT") + bytes([5, flags]) + struct.pack("!H", 30) + b"\x00"
        body = header + _string(client_id or username)
        if will is not None:
            body += b"\x00" + _string(will[0]) + struct.pack("!H", len(will[1])) + will[1]
        body += _string(username) + _string(password)
        self.sock.sendall(b"\x10" + _varint(len(body)) + body)
        kind, packet = self._read()
        assert (kind, packet[1]) == (0x20, 0), "CONNACK refused"
        self.packet_id = 0

    def _read_exactly(self, size: int) -> bytes:
        data = b""
        while len(data) < size:
            chunk = self.sock.recv(size - len(data))
            assert chunk, "the broker closed the connection"
            data += chunk
        return data

    def _read(self) -> tuple[int, bytes]:
        kind = self._read_exactly(1)[0] & 0xF0
        length, shift = 0, 0
        while True:
            digit = self._read_exactly(1)[0]
            length |= (digit & 0x7F) << shift
            shift += 7
            if not digit & 0x80:
                return kind, self._read_exactly(length)

    def publish(self, topic: str, payload: bytes) -> int:
        """QoS 1 PUBLISH; return the PUBACK reason code."""
        self.packet_id += 1
        body = _string(topic) + struct.pack("!H", self.packet_id) + b"\x00" + payload
        self.sock.sendall(b"\x32" + _varint(len(body)) + body)
        kind, packet = self._read()
        assert kind == 0x40
        assert struct.unpack("!H", packet[:2])[0] == self.packet_id
        return packet[2] if len(packet) > 2 else 0

    def kill(self) -> None:
        """Reset the TCP connection without an MQTT DISCONNECT, as a crash or dead link would."""
        self.sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
        self.sock.close()

    def __enter__(self) -> RawClient:
        return self

    def __exit__(self, *_exc: object) -> None:
        if self.sock.fileno() != -1:
            self.sock.sendall(b"\xe0\x00")
            self.sock.close()
