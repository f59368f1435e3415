"""The device daemon and the aggregator over MQTT 3.1.1, against the embedded amqtt broker."""

from __future__ import annotations

import queue
import secrets
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import paho.mqtt.client as mqtt
import pytest
from paho.mqtt.enums import CallbackAPIVersion

from aggregator.config import load_config as load_aggregator_config
from aggregator.errors import InvalidConfigError
from device.config import BrokerSettings, load_config
from device.daemon import DeviceDaemon
from device.errors import ConfigError
from fedmq.embedded_broker import EmbeddedBroker, start_embedded_broker
from serialization import (
    DeviceStatus,
    ModelRelease,
    ModelUpdate,
    Receipt,
    SigningKey,
    model_topic,
    receipt_topic,
    status_topic,
    update_topic,
)
from tests.integration.aggregator_helpers import init_model, make_update, running_service
from tests.integration.device_fixtures import reference_predict, release_payload, softmax_params

pytestmark = pytest.mark.integration

TIMEOUT = 10.0
AGGREGATOR = "aggregator"
DEVICES = ("d311-a", "d311-b", "d311-c", "d311-d", "d311-e")
X = np.random.default_rng(11).normal(size=(12, 4)).astype(np.float32)
Y = np.arange(12, dtype=np.int64) % 3


@dataclass(frozen=True, kw_only=True)
class Embedded:
    """The module's embedded broker and the passwords of its accounts."""

    broker: EmbeddedBroker
    passwords: dict[str, str]


@pytest.fixture(scope="module")
def embedded(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Embedded]:
    """One amqtt broker (MQTT 3.1.1 only) with the shipped ACL, for this module."""
    passwords = {name: secrets.token_urlsafe(16) for name in (AGGREGATOR, *DEVICES)}
    broker = start_embedded_broker(tmp_path_factory.mktemp("amqtt311"), accounts=passwords)
    yield Embedded(broker=broker, passwords=passwords)
    broker.stop()


class Peer:
    """A paho MQTT 3.1.1 client for one account; deliveries are collected per topic."""

    def __init__(self, embedded: Embedded, username: str, topics: list[str]) -> None:
        self.messages: queue.Queue[mqtt.MQTTMessage] = queue.Queue()
        self.client = mqtt.Client(
            CallbackAPIVersion.VERSION2,
            client_id=username,
            protocol=mqtt.MQTTv311,
        )
        self.client.username_pw_set(username, embedded.passwords[username])
        subacks: queue.Queue[int] = queue.Queue()
        self.client.on_message = lambda _c, _u, message: self.messages.put(message)
        self.client.on_subscribe = lambda _c, _u, mid, _codes, _p: subacks.put(mid)
        self.client.connect("127.0.0.1", embedded.broker.port)
        self.client.loop_start()
        for topic in topics:
            _, mid = self.client.subscribe(topic, qos=1)
            assert subacks.get(timeout=TIMEOUT) == mid

    def publish(self, topic: str, payload: bytes, *, retain: bool = False) -> None:
        """QoS 1 publish, waiting for the PUBACK."""
        self.client.publish(topic, payload, qos=1, retain=retain).wait_for_publish(TIMEOUT)

    def expect(self, topic: str, timeout: float = TIMEOUT) -> bytes:
        """The payload of the next message on ``topic`` (others are skipped), or fail."""
        while True:
            try:
                message = self.messages.get(timeout=timeout)
            except queue.Empty:
                pytest.fail(f"no message on {topic} within {timeout}s")
            if message.topic == topic:
                return bytes(message.payload)

    def close(self) -> None:
        """Disconnect."""
        self.client.disconnect()
        self.client.loop_stop()


def _device(embedded: Embedded, name: str, task: str, key: SigningKey, tmp: Path) -> DeviceDaemon:
    """A started daemon configured from TOML with FL_BROKER_MQTT_VERSION=3.1.1."""
    key_path = tmp / "aggregator.pub.pem"
    key_path.write_bytes(key.verify_key.to_pem())
    toml = tmp / "device.toml"
    toml.write_text(
        f'device_id = "{name}"\ntask = "{task}"\nstate_dir = "state"\n'
        'aggregator_key = "aggregator.pub.pem"\n\n'
        f'[broker]\nport = {embedded.broker.port}\npassword = "{embedded.passwords[name]}"\n'
        "keepalive = 10\nreconnect_min = 0.1\nreconnect_max = 0.5\n\n"
        "[training]\nmin_new_samples = 6\nepochs = 1\nbatch_size = 4\n\n"
        "[samples]\nspool_poll = 0.05\n\n[outbox]\ninflight = 1\nreceipt_timeout = 60.0\n"
    )
    config = load_config(toml, environ={"FL_BROKER_MQTT_VERSION": "3.1.1"})
    assert config.broker.mqtt_version == "3.1.1"
    daemon = DeviceDaemon(config)
    daemon.start()
    return daemon


def _stop(daemon: DeviceDaemon) -> None:
    daemon.stop()
    daemon.join(10)
    daemon.close()


def test_mqtt311_config_selects_the_protocol_and_refuses_mqtt5_only_settings(
    tmp_path: Path,
) -> None:
    """Both configs default to MQTT 5, take 3.1.1 from the environment, refuse the rest."""
    assert BrokerSettings().mqtt_version == "5"
    assert BrokerSettings(mqtt_version="3.1.1").mqtt_version == "3.1.1"
    with pytest.raises(ConfigError, match=r"broker\.mqtt_version"):
        BrokerSettings(mqtt_version="4")  # type: ignore[arg-type]
    with pytest.raises(ConfigError, match=r"broker\.will_delay"):
        BrokerSettings(mqtt_version="3.1.1", will_delay=30)
    toml = tmp_path / "aggregator.toml"
    toml.write_text('[mqtt]\nprotocol = "5"\n')
    assert load_aggregator_config(toml, {}).mqtt.protocol == "5"
    assert load_aggregator_config(toml, {"FL_MQTT_PROTOCOL": "3.1.1"}).mqtt.protocol == "3.1.1"
    with pytest.raises(InvalidConfigError, match=r"mqtt\.protocol"):
        load_aggregator_config(toml, {"FL_MQTT_PROTOCOL": "3"})


def test_mqtt311_device_holds_release_and_sends_update_until_its_receipt(
    embedded: Embedded, task: str, tmp_path: Path
) -> None:
    """Over 3.1.1 the daemon takes the retained release, reports online, sends an update of
    the samples it observed, and keeps it in its outbox until the Receipt arrives."""
    name = DEVICES[0]
    key = SigningKey.generate()
    params = softmax_params(5)
    aggregator = Peer(embedded, AGGREGATOR, [update_topic(task, name), status_topic(task, name)])
    aggregator.publish(model_topic(task), release_payload(key, task, 3, params), retain=True)
    daemon = _device(embedded, name, task, key, tmp_path)
    try:
        assert daemon.wait_until(lambda d: d.held_model is not None, TIMEOUT)
        held = daemon.held_model
        assert held is not None
        assert held.version == 3
        np.testing.assert_array_equal(daemon.predict(X), reference_predict(params, X))
        online = DeviceStatus.decode(aggregator.expect(status_topic(task, name)))
        assert (online.state, online.connections, online.device_id) == ("online", 1, name)
        daemon.observe(X[:6], Y[:6])
        update = ModelUpdate.decode(aggregator.expect(update_topic(task, name)))
        assert (update.device_id, update.task, update.base_version, update.num_samples) == (
            name,
            task,
            3,
            6,
        )
        assert [entry.update_id for entry in daemon.outbox.entries()] == [update.update_id]
        receipt = Receipt(
            task=task,
            device_id=name,
            update_id=update.update_id,
            status="accepted",
            model_version=3,
        )
        aggregator.publish(receipt_topic(task, name), receipt.encode())
        assert daemon.wait_until(lambda d: len(d.outbox) == 0, TIMEOUT)
        assert daemon.db.counters().get("receipts_accepted") == 1
    finally:
        _stop(daemon)
        aggregator.close()


def test_mqtt311_device_session_keeps_a_receipt_sent_while_offline(
    embedded: Embedded, task: str, tmp_path: Path
) -> None:
    """clean_session=False: a Receipt published while the device is offline is queued by
    the broker and delivered when it reconnects; the update then leaves the outbox."""
    name = DEVICES[1]
    key = SigningKey.generate()
    aggregator = Peer(embedded, AGGREGATOR, [update_topic(task, name)])
    aggregator.publish(model_topic(task), release_payload(key, task, 2), retain=True)
    daemon = _device(embedded, name, task, key, tmp_path)
    try:
        assert daemon.wait_until(lambda d: d.held_model is not None, TIMEOUT)
        daemon.observe(X[:6], Y[:6])
        update = ModelUpdate.decode(aggregator.expect(update_topic(task, name)))
        daemon.set_online(False)
        assert daemon.wait_until(lambda d: not d.connected, TIMEOUT)
        receipt = Receipt(
            task=task, device_id=name, update_id=update.update_id, status="accepted",
            model_version=2,
        )  # fmt: skip
        aggregator.publish(receipt_topic(task, name), receipt.encode())
        assert len(daemon.outbox) == 1
        daemon.set_online(True)
        assert daemon.wait_until(lambda d: len(d.outbox) == 0, TIMEOUT)
        assert daemon.connections == 2
        assert daemon.db.counters().get("receipts_accepted") == 1
    finally:
        _stop(daemon)
        aggregator.close()


def _aggregator_toml(embedded: Embedded, tmp: Path, task: str, redis_url: str) -> Path:
    key_path = tmp / "release_signing_key.pem"
    key_path.write_bytes(SigningKey.generate().to_pem())
    path = tmp / "aggregator.toml"
    path.write_text(
        f'replica_id = "agg-311"\nsigning_key = "{key_path}"\n\n'
        f'[mqtt]\nurl = "mqtt://{AGGREGATOR}@127.0.0.1:{embedded.broker.port}"\n'
        f'password = "{embedded.passwords[AGGREGATOR]}"\nprotocol = "3.1.1"\n'
        "reconnect_min_s = 0.1\nreconnect_max_s = 1.0\n\n"
        f'[redis]\nurl = "{redis_url}"\n\n'
        "[leader]\nlease_ttl_s = 2.0\nblock_s = 0.2\n\n"
        f'[[tasks]]\nname = "{task}"\nstrategy = "fedavg"\nbuffer_size = 2\n'
    )
    return path


def test_mqtt311_aggregator_accepts_updates_sends_receipts_and_releases(
    embedded: Embedded, redis_url: str, task: str, tmp_path: Path
) -> None:
    """Over 3.1.1 (direct subscription, no $share) the aggregator receipts each update
    (accepted, then duplicate for a resend), keeps its session across a restart, and
    releases x0 + (1 d_a + 3 d_b) / 4."""
    path = _aggregator_toml(embedded, tmp_path, task, redis_url)
    config = load_aggregator_config(path, {})
    key = SigningKey.from_pem(config.signing_key_path.read_bytes())
    x0 = np.array([1.0, -2.0, 0.5, 4.0], dtype=np.float32)
    init_model(path, task, {"w": x0})
    a, b = DEVICES[2], DEVICES[3]
    d_a = np.array([4.0, 0.0, -4.0, 8.0], dtype=np.float32)
    d_b = np.array([0.0, 4.0, 4.0, -8.0], dtype=np.float32)
    expected = x0 + np.array([1.0, 3.0, 2.0, -4.0], dtype=np.float32)  # (1 d_a + 3 d_b) / 4
    peers = {
        name: Peer(embedded, name, [receipt_topic(task, name), model_topic(task)])
        for name in (a, b)
    }
    try:
        update_a = make_update(task, a, {"w": d_a}, num_samples=1)
        with running_service(path):
            first = ModelRelease.decode(peers[a].expect(model_topic(task)), key.verify_key)
            assert first.version == 1
            for _ in range(2):
                peers[a].publish(update_topic(task, a), update_a.encode())
            receipts = [Receipt.decode(peers[a].expect(receipt_topic(task, a))) for _ in (1, 2)]
            assert [(r.update_id, r.status) for r in receipts] == [
                (update_a.update_id, "accepted"),
                (update_a.update_id, "duplicate"),
            ]
        update_b = make_update(task, b, {"w": d_b}, num_samples=3)
        peers[b].publish(update_topic(task, b), update_b.encode())
        with running_service(path):
            receipt_b = Receipt.decode(peers[b].expect(receipt_topic(task, b)))
            assert (receipt_b.update_id, receipt_b.status) == (update_b.update_id, "accepted")
            release = ModelRelease.decode(peers[b].expect(model_topic(task)), key.verify_key)
            while release.version < 2:
                release = ModelRelease.decode(peers[b].expect(model_topic(task)), key.verify_key)
    finally:
        for peer in peers.values():
            peer.close()
    assert (release.version, release.parent_version, release.update_count) == (2, 1, 2)
    np.testing.assert_allclose(release.tensors["w"], expected, rtol=0, atol=1e-6)
