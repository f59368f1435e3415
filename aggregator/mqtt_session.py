"""The aiomqtt 2.x connection: persistent MQTT 5 (or 3.1.1) session, manual PUBACK, batching.

aiomqtt 2.x has no public manual-ack or non-blocking receive, so this module (and only this
module) reaches into the client's paho instance and message queue (aiomqtt#345).
"""

from __future__ import annotations

import asyncio
import hashlib
import logging
import socket
from types import TracebackType
from typing import Self

import aiomqtt
from paho.mqtt.client import MQTT_CLEAN_START_FIRST_ONLY
from paho.mqtt.packettypes import PacketTypes
from paho.mqtt.properties import Properties

from aggregator.config import MqttSettings
from serialization import SigningKey, shared_update_subscription, validate_identifier

__all__ = ["MqttSession", "keyed_share_group"]

logger = logging.getLogger(__name__)


def keyed_share_group(key: SigningKey) -> str:
    """The replicas' share group, derived from the release signing key they all hold: a
    device cannot guess it, so it cannot join the group and take a turn of the updates."""
    digest = hashlib.sha256(b"fedmq/v1/share-group\0" + key.to_pem()).hexdigest()
    return f"aggregators-{digest[:24]}"


def _payload_size(message: aiomqtt.Message) -> int:
    payload = message.payload
    return len(payload) if isinstance(payload, bytes | bytearray) else 0


def _code_value(code: object) -> int:
    value = getattr(code, "value", code)
    return value if isinstance(value, int) else 0


class MqttSession:
    """One broker connection with a stable client id; reusable across reconnects.

    ``clean_start=False`` plus a SessionExpiryInterval keep the broker-side session (its
    subscriptions and every un-acked or queued update) across reconnects and restarts:
    aiomqtt's default would start clean on every ``async with``. PUBACKs are sent by
    ack() only, after the update is durable; ReceiveMaximum bounds un-acked deliveries.
    With MQTT 3.1.1, ``clean_session=False`` keeps the session for as long as the broker
    chooses, and there is neither ReceiveMaximum nor a shared subscription.
    """

    def __init__(self, settings: MqttSettings, *, share_group: str) -> None:
        """Build the client (needs a running event loop); ``share_group`` is the MQTT 5
        share group of the update subscriptions."""
        self.settings = settings
        self.share_group = share_group
        v5 = settings.protocol == "5"
        properties = None
        if v5:
            properties = Properties(PacketTypes.CONNECT)  # type: ignore[no-untyped-call]
            properties.SessionExpiryInterval = settings.session_expiry_s
            properties.ReceiveMaximum = settings.receive_maximum
        else:
            logger.info(
                "MQTT 3.1.1: no shared subscription, so every replica would receive every "
                "update; run a single aggregator replica against this broker"
            )
        self.client = aiomqtt.Client(
            settings.host,
            settings.port,
            username=settings.username,
            password=settings.password,
            identifier=settings.client_id,
            protocol=aiomqtt.ProtocolVersion.V5 if v5 else aiomqtt.ProtocolVersion.V311,
            clean_session=None if v5 else False,
            clean_start=False if v5 else MQTT_CLEAN_START_FIRST_ONLY,
            properties=properties,
            keepalive=settings.keepalive,
            timeout=settings.publish_timeout_s,
            max_inflight_messages=settings.max_inflight_out,
            # Small packets (PUBACKs, Receipts) must not wait for Nagle's algorithm.
            socket_options=[(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)],
        )
        self.client.pending_calls_threshold = 1 << 30
        self._paho = self.client._client
        self._paho.manual_ack_set(True)
        self._queue: asyncio.Queue[aiomqtt.Message] = self.client._queue

    async def __aenter__(self) -> Self:
        """Connect; messages left from an earlier connection are dropped unacked (their
        message ids belong to that connection; the broker redelivers them)."""
        while not self._queue.empty():
            self._queue.get_nowait()
        await self.client.__aenter__()
        return self

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        """Disconnect (un-acked messages stay in the broker session)."""
        await self.client.__aexit__(exc_type, exc, tb)

    def update_filter(self, task: str) -> str:
        """The filter to receive ``task``'s updates: the replicas' shared subscription on
        MQTT 5, every device's update topic directly on 3.1.1 (which has no ``$share``)."""
        if self.settings.protocol == "5":
            return shared_update_subscription(task, root=self.settings.root, group=self.share_group)
        return f"{self.settings.root}/{validate_identifier(task, 'task')}/dev/+/update"

    async def subscribe(self, topic: str) -> None:
        """Subscribe at QoS 1; raise aiomqtt.MqttError if the broker refuses."""
        codes = await self.client.subscribe(topic, qos=1)
        _raise_dropped_cancellation()
        if any(_code_value(code) >= 0x80 for code in codes or ()):
            raise aiomqtt.MqttError(f"subscription to {topic} refused: {codes}")

    async def next_message(self, stop: asyncio.Event) -> aiomqtt.Message | None:
        """The next update message, or None once ``stop`` is set."""
        if stop.is_set():
            return None
        if not self._queue.empty():
            return self._queue.get_nowait()
        receive = asyncio.ensure_future(anext(self.client.messages))
        stopped = asyncio.ensure_future(stop.wait())
        try:
            done, _ = await asyncio.wait({receive, stopped}, return_when=asyncio.FIRST_COMPLETED)
        finally:
            stopped.cancel()
            # Also when we are cancelled: a receiver left pending would take the next
            # delivery off the queue, and nobody would ack or answer it.
            if not receive.done():
                receive.cancel()
        if receive in done:
            return receive.result()
        return None

    def drain(self, max_messages: int, max_bytes: int) -> list[aiomqtt.Message]:
        """Messages already queued, without waiting, within the batch limits."""
        batch: list[aiomqtt.Message] = []
        size = 0
        while len(batch) < max_messages and size < max_bytes and not self._queue.empty():
            message = self._queue.get_nowait()
            batch.append(message)
            size += _payload_size(message)
        return batch

    def ack(self, message: aiomqtt.Message) -> None:
        """Send the PUBACK of a QoS 1 delivery (only once its update is durable)."""
        if message.qos > 0:
            self._paho.ack(message.mid, message.qos)

    def publish_nowait(self, topic: str, payload: bytes) -> bool:
        """Queue a QoS 1 publish without waiting for its PUBACK; False if not connected."""
        info = self._paho.publish(topic, payload, qos=1)
        return info.rc == 0

    async def publish_retained(self, topic: str, payload: bytes) -> None:
        """Publish retained at QoS 1 and wait for the broker's PUBACK."""
        await self.client.publish(topic, payload, qos=1, retain=True)
        _raise_dropped_cancellation()


def _raise_dropped_cancellation() -> None:
    """Re-raise a cancellation that aiomqtt's wait swallowed.

    aiomqtt awaits acknowledgements with asyncio.wait_for, which on Python 3.11 returns the
    result and drops a cancellation that arrives in the same loop turn; the cancelled task
    would then run on (and a shutdown wait forever). Called after every such await.
    """
    task = asyncio.current_task()
    if task is not None and task.cancelling():
        raise asyncio.CancelledError
