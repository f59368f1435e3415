"""The MQTT link (paho-mqtt 2.x, MQTT 5 or 3.1.1): persistent session, will, jittered reconnects.

paho runs its network loop in its own thread; every callback only turns what happened
into a ``LinkEvent`` on a queue that the daemon thread consumes, so no state is touched
from the network thread. Incoming messages are acknowledged by the daemon after it has
handled them (manual ack): a release or receipt that arrives just before a crash is
delivered again by the broker from the persistent session.
"""

from __future__ import annotations

import logging
import queue
import socket
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any, TypeAlias

import paho.mqtt.client as mqtt
from paho.mqtt.enums import CallbackAPIVersion, MQTTErrorCode
from paho.mqtt.packettypes import PacketTypes
from paho.mqtt.properties import Properties
from paho.mqtt.reasoncodes import ReasonCode
from paho.mqtt.subscribeoptions import SubscribeOptions

from device.backoff import Backoff
from device.config import DeviceConfig
from device.errors import ConfigError
from serialization import status_topic

__all__ = [
    "ConnectRefused",
    "Connected",
    "Disconnected",
    "LinkEvent",
    "LinkSwitch",
    "MqttLink",
    "Published",
    "Received",
    "SubscribeRefused",
    "Wakeup",
]

logger = logging.getLogger(__name__)


@dataclass(frozen=True, slots=True)
class Connected:
    """CONNACK success; ``connections`` counts successful connects over the device's life."""

    connections: int
    session_present: bool


@dataclass(frozen=True, slots=True)
class ConnectRefused:
    """CONNACK with a failure reason (bad credentials, not authorised, server busy)."""

    reason: str


@dataclass(frozen=True, slots=True)
class Disconnected:
    """The connection ended (network loss, broker restart, our own disconnect)."""

    reason: str


@dataclass(frozen=True, slots=True)
class Received:
    """A message on one of our subscriptions; ``MqttLink.ack`` it once it is handled."""

    topic: str
    payload: bytes
    mid: int
    qos: int
    connection: int


@dataclass(frozen=True, slots=True)
class Published:
    """The PUBACK of our QoS 1 publish ``mid``; ``reason_code`` >= 0x80 is a refusal.

    MQTT 3.1.1 has no reason codes: paho reports every 3.1.1 PUBACK as 0 (success).
    """

    mid: int
    reason_code: int
    reason: str


@dataclass(frozen=True, slots=True)
class SubscribeRefused:
    """A SUBACK with a failure reason code."""

    reason: str


@dataclass(frozen=True, slots=True)
class Wakeup:
    """Posted by another thread so that the daemon loop looks at its state now."""


@dataclass(frozen=True, slots=True)
class LinkSwitch:
    """Posted by another thread to take the network away or give it back (simulations)."""

    online: bool


LinkEvent: TypeAlias = (
    Connected
    | ConnectRefused
    | Disconnected
    | LinkSwitch
    | Received
    | Published
    | SubscribeRefused
    | Wakeup
)


def _drop_not_connected(record: logging.LogRecord) -> bool:
    # paho 2.2 logs "Client is not connected" at ERROR on every loop turn without a socket
    # (each failed reconnect, and after a clean disconnect); our own logs say it better.
    return not str(record.msg).startswith("Client is not connected")


def _send_without_delay(_client: mqtt.Client, _userdata: Any, sock: Any) -> None:
    # Receipts and PUBACKs are small: without TCP_NODELAY, Nagle's algorithm holds them back
    # for tens of milliseconds on every round trip.
    if isinstance(sock, socket.socket):
        sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)


class MqttLink:
    """One paho client for one device: username = client id = device id.

    The session survives disconnects (MQTT 5: clean_start False and SessionExpiryInterval;
    3.1.1: clean_session False, the broker decides when it expires), the will
    is a retained offline DeviceStatus built fresh before every connect, and reconnects
    wait ``Backoff`` delays (full jitter) instead of paho's deterministic doubling.
    """

    def __init__(
        self,
        config: DeviceConfig,
        events: queue.Queue[LinkEvent],
        *,
        connections: int,
        offline_status: Callable[[int], bytes],
    ) -> None:
        self._config = config
        self._events = events
        self._connections = connections
        self._attempt = connections + 1
        self._offline_status = offline_status
        broker = config.broker
        self._v5 = broker.mqtt_version == "5"
        self._backoff = Backoff(broker.reconnect_min, broker.reconnect_max)
        client = mqtt.Client(
            CallbackAPIVersion.VERSION2,
            client_id=config.device_id,
            protocol=mqtt.MQTTv5 if self._v5 else mqtt.MQTTv311,
            clean_session=None if self._v5 else False,
            reconnect_on_failure=True,
            manual_ack=True,
        )
        client.username_pw_set(config.device_id, broker.password or None)
        if broker.tls_ca is not None:
            try:
                client.tls_set(
                    ca_certs=str(broker.tls_ca),
                    certfile=str(broker.tls_cert) if broker.tls_cert else None,
                    keyfile=str(broker.tls_key) if broker.tls_key else None,
                )
            except (OSError, ValueError) as exc:
                raise ConfigError("broker.tls_ca", f"cannot set up TLS: {exc}") from exc
        client.max_inflight_messages_set(config.outbox.inflight + 4)
        client.suppress_exceptions = True
        paho_logger = logging.getLogger(f"{__name__}.paho")
        paho_logger.addFilter(_drop_not_connected)
        client.enable_logger(paho_logger)
        client.on_pre_connect = self._on_pre_connect
        client.on_connect = self._on_connect
        client.on_connect_fail = self._on_connect_fail
        client.on_disconnect = self._on_disconnect
        client.on_message = self._on_message
        client.on_publish = self._on_publish
        client.on_subscribe = self._on_subscribe
        client.on_socket_open = _send_without_delay
        self._client = client
        self.status_topic = status_topic(config.task, config.device_id, root=config.topic_root)

    def start(self) -> None:
        """Begin connecting in paho's thread; a broker that is down is retried forever."""
        broker = self._config.broker
        self._set_delay(self._backoff.next_delay())
        if self._v5:
            properties = Properties(PacketTypes.CONNECT)  # type: ignore[no-untyped-call]
            properties.SessionExpiryInterval = broker.session_expiry
            self._client.connect_async(
                broker.host,
                broker.port,
                keepalive=broker.keepalive,
                clean_start=False,
                properties=properties,
            )
        else:
            self._client.connect_async(broker.host, broker.port, keepalive=broker.keepalive)
        self._client.loop_start()

    def publish(self, topic: str, payload: bytes, *, retain: bool = False) -> int:
        """Queue a QoS 1 publish and return its mid; its PUBACK arrives as ``Published``."""
        info = self._client.publish(topic, payload, qos=1, retain=retain)
        if info.rc not in (MQTTErrorCode.MQTT_ERR_SUCCESS, MQTTErrorCode.MQTT_ERR_NO_CONN):
            logger.warning("paho refused to queue a publish on %s: %s", topic, info.rc)
        return info.mid

    def publish_and_wait(self, topic: str, payload: bytes, *, retain: bool, timeout: float) -> bool:
        """Publish QoS 1 and wait up to ``timeout`` s for the PUBACK; True if it came."""
        info = self._client.publish(topic, payload, qos=1, retain=retain)
        if info.rc != MQTTErrorCode.MQTT_ERR_SUCCESS:
            return False
        try:
            info.wait_for_publish(timeout)
        except (RuntimeError, ValueError):
            return False
        return info.is_published()

    def subscribe(self, topics: list[tuple[str, int, int]]) -> None:
        """Subscribe to each (topic, QoS, MQTT 5 retain handling 0|1|2).

        MQTT 3.1.1 has no retain handling: the broker sends the retained message again on
        every subscribe, and the daemon ignores a release it already holds.
        """
        if not self._v5:
            self._client.subscribe([(topic, qos) for topic, qos, _ in topics])
            return
        self._client.subscribe(
            [(topic, SubscribeOptions(qos=qos, retainHandling=rh)) for topic, qos, rh in topics]
        )

    def ack(self, event: Received) -> None:
        """PUBACK a handled message, unless it came on an earlier connection (the broker
        then delivers it again, and the daemon handles that copy idempotently)."""
        if event.qos > 0 and event.connection == self._connections:
            self._client.ack(event.mid, event.qos)

    def stop(self) -> None:
        """Disconnect cleanly (the broker then discards the will) and end paho's thread."""
        self._client.disconnect()
        self._client.loop_stop()

    def _set_delay(self, delay: float) -> None:
        # paho annotates the bounds as int but waits with float arithmetic; min == max
        # makes its next wait exactly our jittered delay.
        self._client.reconnect_delay_set(min_delay=delay, max_delay=delay)  # type: ignore[arg-type]

    def _on_pre_connect(self, client: mqtt.Client, _userdata: Any) -> None:
        self._attempt = self._connections + 1
        will_properties = None
        if self._config.broker.will_delay:
            will_properties = Properties(PacketTypes.WILLMESSAGE)  # type: ignore[no-untyped-call]
            will_properties.WillDelayInterval = self._config.broker.will_delay
        client.will_set(
            self.status_topic,
            self._offline_status(self._attempt),
            qos=1,
            retain=True,
            properties=will_properties,
        )

    def _on_connect(
        self,
        _client: mqtt.Client,
        _userdata: Any,
        flags: mqtt.ConnectFlags,
        reason_code: ReasonCode,
        _properties: Properties | None,
    ) -> None:
        if reason_code.is_failure:
            self._events.put(ConnectRefused(str(reason_code)))
            return
        self._connections = self._attempt
        self._backoff.reset()
        self._events.put(Connected(self._connections, bool(flags.session_present)))

    def _on_connect_fail(self, _client: mqtt.Client, _userdata: Any) -> None:
        delay = self._backoff.next_delay()
        self._set_delay(delay)
        logger.info("cannot reach the broker; next attempt in %.2f s", delay)

    def _on_disconnect(
        self,
        _client: mqtt.Client,
        _userdata: Any,
        _flags: mqtt.DisconnectFlags,
        reason_code: ReasonCode,
        _properties: Properties | None,
    ) -> None:
        self._set_delay(self._backoff.next_delay())
        self._events.put(Disconnected(str(reason_code)))

    def _on_message(self, _client: mqtt.Client, _userdata: Any, message: mqtt.MQTTMessage) -> None:
        self._events.put(
            Received(
                message.topic, bytes(message.payload), message.mid, message.qos, self._connections
            )
        )

    def _on_publish(
        self,
        _client: mqtt.Client,
        _userdata: Any,
        mid: int,
        reason_code: ReasonCode,
        _properties: Properties,
    ) -> None:
        self._events.put(Published(mid, reason_code.value, str(reason_code)))

    def _on_subscribe(
        self,
        _client: mqtt.Client,
        _userdata: Any,
        _mid: int,
        reason_codes: list[ReasonCode],
        _properties: Properties,
    ) -> None:
        for code in reason_codes:
            if code.is_failure:
                self._events.put(SubscribeRefused(str(code)))
