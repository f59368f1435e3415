"""A paho test client whose callbacks feed queues: the ACL and embedded-broker tests' peer."""

from __future__ import annotations

import queue
import secrets
import ssl
from dataclasses import dataclass

import paho.mqtt.client as mqtt
import pytest
from paho.mqtt.enums import CallbackAPIVersion, MQTTProtocolVersion
from paho.mqtt.properties import Properties
from paho.mqtt.reasoncodes import ReasonCode

TIMEOUT = 5.0
"""Upper bound for anything that should happen; only a failing test waits this long."""


@dataclass(frozen=True, kw_only=True, slots=True)
class Received:
    """One delivered message."""

    topic: str
    payload: bytes
    retain: bool


class Peer:
    """A paho client (MQTT 5 unless told) whose callbacks feed queues the test reads with
    timeouts."""

    def __init__(
        self,
        port: int,
        username: str | None,
        password: str | None,
        *,
        client_id: str | None = None,
        tls: ssl.SSLContext | None = None,
        protocol: MQTTProtocolVersion = MQTTProtocolVersion.MQTTv5,
    ) -> None:
        self.port = port
        self.name = username or "<anonymous>"
        self.client = mqtt.Client(
            CallbackAPIVersion.VERSION2,
            client_id=client_id or username or "",
            protocol=protocol,
            reconnect_on_failure=False,
        )
        if username is not None:
            self.client.username_pw_set(username, password)
        if tls is not None:
            self.client.tls_set_context(tls)
        self.messages: queue.Queue[Received] = queue.Queue()
        self.connacks: queue.Queue[int] = queue.Queue()
        self.disconnects: queue.Queue[int] = queue.Queue()
        self.subacks: queue.Queue[list[int]] = queue.Queue()
        self.pubacks: dict[int, int] = {}
        self.client.on_connect = self._on_connect
        self.client.on_disconnect = self._on_disconnect
        self.client.on_message = self._on_message
        self.client.on_publish = self._on_publish
        self.client.on_subscribe = self._on_subscribe

    def _on_connect(
        self, _c: mqtt.Client, _u: object, _f: object, rc: ReasonCode, _p: Properties | None
    ) -> None:
        self.connacks.put(rc.value)

    def _on_disconnect(
        self, _c: mqtt.Client, _u: object, _f: object, rc: ReasonCode, _p: Properties | None
    ) -> None:
        self.disconnects.put(rc.value)

    def _on_message(self, _c: mqtt.Client, _u: object, message: mqtt.MQTTMessage) -> None:
        self.messages.put(
            Received(topic=message.topic, payload=bytes(message.payload), retain=message.retain)
        )

    def _on_publish(
        self, _c: mqtt.Client, _u: object, mid: int, rc: ReasonCode, _p: Properties
    ) -> None:
        self.pubacks[mid] = rc.value

    def _on_subscribe(
        self, _c: mqtt.Client, _u: object, _mid: int, codes: list[ReasonCode], _p: Properties
    ) -> None:
        self.subacks.put([code.value for code in codes])

    def connect(self) -> int:
        """Connect and return the CONNACK reason code (0 = accepted)."""
        self.client.connect("127.0.0.1", self.port, keepalive=30)
        self.client.loop_start()
        try:
            code = self.connacks.get(timeout=TIMEOUT)
        except queue.Empty:
            pytest.fail(f"no CONNACK for {self.name!r}")
        if code != 0:
            self.client.loop_stop()
        return code

    def subscribe(self, *filters: str) -> list[int]:
        """Subscribe with QoS 1; return the SUBACK codes."""
        self.client.subscribe([(f, 1) for f in filters])
        return self.subacks.get(timeout=TIMEOUT)

    def publish(self, topic: str, payload: bytes, *, retain: bool = False) -> int:
        """Publish with QoS 1 and return the PUBACK reason code."""
        info = self.client.publish(topic, payload, qos=1, retain=retain)
        info.wait_for_publish(TIMEOUT)
        return self.pubacks[info.mid]

    def received_before(self, sentinel: bytes) -> list[Received]:
        """Everything delivered before ``sentinel``; fails if the sentinel does not come."""
        seen: list[Received] = []
        while True:
            try:
                message = self.messages.get(timeout=TIMEOUT)
            except queue.Empty:
                pytest.fail(f"sentinel {sentinel!r} never reached {self.name!r}")
            if message.payload == sentinel:
                return seen
            seen.append(message)

    def next_message(self) -> Received:
        """The next delivered message; fails after the timeout."""
        try:
            return self.messages.get(timeout=TIMEOUT)
        except queue.Empty:
            pytest.fail("no message was delivered")

    @property
    def connected(self) -> bool:
        """Whether the broker still holds this connection (no disconnect was seen)."""
        return self.client.is_connected() and self.disconnects.empty()

    def close(self) -> None:
        """Disconnect cleanly (no last will) and stop the network thread."""
        self.client.disconnect()
        self.client.loop_stop()


@dataclass(kw_only=True)
class PeerFleet:
    """Peers (the aggregator among them) subscribed to all of one task, plus a sentinel topic
    that every account may read, to tell what was delivered and what was not."""

    task: str
    peers: dict[str, Peer]
    sentinel_topic: str
    publisher: str = "aggregator"
    """The account that publishes sentinels (allowed to write the model topic)."""

    def sentinel(self) -> bytes:
        """Have ``publisher`` publish a message everyone may read; return its payload."""
        payload = b"sentinel-" + secrets.token_hex(8).encode()
        assert self.peers[self.publisher].publish(self.sentinel_topic, payload) == 0
        return payload

    def delivered(self, payload: bytes) -> set[str]:
        """Which peers got ``payload`` before the next sentinel."""
        sentinel = self.sentinel()
        return {
            name
            for name, peer in self.peers.items()
            if payload in [m.payload for m in peer.received_before(sentinel)]
        }
