"""The fixtures' Mosquitto and Redis are real and answer."""

from __future__ import annotations

import queue

import paho.mqtt.client as mqtt
import pytest
import redis
from paho.mqtt.enums import CallbackAPIVersion

from serialization.topics import model_topic
from tests.conftest import SERVICE_ACCOUNT, Broker

pytestmark = pytest.mark.integration


def _client(broker: Broker, username: str, password: str | None = None) -> mqtt.Client:
    client = mqtt.Client(CallbackAPIVersion.VERSION2, client_id=username, protocol=mqtt.MQTTv5)
    client.username_pw_set(username, password or broker.passwords[username])
    return client


def test_broker_publish_subscribe_round_trip(broker: Broker, task: str) -> None:
    """A message the aggregator publishes on a model topic reaches a subscribed device."""
    received: queue.Queue[bytes] = queue.Queue()
    device = _client(broker, "dev-a")
    device.on_message = lambda _c, _u, msg: received.put(bytes(msg.payload))
    device.connect(broker.host, broker.port)
    device.loop_start()
    aggregator = _client(broker, SERVICE_ACCOUNT)
    aggregator.connect(broker.host, broker.port)
    aggregator.loop_start()
    try:
        subscribed = device.subscribe(model_topic(task), qos=1)
        assert subscribed[0] == mqtt.MQTT_ERR_SUCCESS
        aggregator.publish(model_topic(task), b"hello", qos=1, retain=True).wait_for_publish(5)
        assert received.get(timeout=5) == b"hello"
    finally:
        for client in (device, aggregator):
            client.loop_stop()
            client.disconnect()


def test_broker_refuses_wrong_password(broker: Broker) -> None:
    """The shipped config refuses a wrong password (MQTT 5: 0x86 bad credentials or 0x87)."""
    codes: queue.Queue[int] = queue.Queue()
    client = _client(broker, "dev-a", "not-the-password")
    client.on_connect = lambda _c, _u, _f, rc, _p: codes.put(rc.value)
    client.connect(broker.host, broker.port)
    client.loop_start()
    try:
        assert codes.get(timeout=5) in (0x86, 0x87)
    finally:
        client.loop_stop()


def test_redis_set_get(redis_url: str) -> None:
    """The fixtures' Redis stores and returns bytes, and the test's database starts empty."""
    with redis.Redis.from_url(redis_url) as client:
        assert client.dbsize() == 0
        client.set(b"k", b"\x00\x01")
        assert client.get(b"k") == b"\x00\x01"
