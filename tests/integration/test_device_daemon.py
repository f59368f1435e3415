"""The device daemon in-process against the real Mosquitto: releases, updates, receipts."""

from __future__ import annotations

import json
import queue
import subprocess
import sys
import time
from collections.abc import Iterator
from functools import partial
from pathlib import Path

import msgpack
import numpy as np
import pytest

from device.daemon import DeviceDaemon
from device.model_store import ModelStore, read_held_model
from device.models import ModelSpec
from serialization import (
    Control,
    DeviceStatus,
    ModelRelease,
    ModelUpdate,
    Receipt,
    ReceiptStatus,
    SigningKey,
    control_topic,
)
from tests.conftest import Broker, launch_broker
from tests.integration.device_fixtures import (
    REPO,
    AggregatorClient,
    DeviceEnv,
    device_env,
    reference_predict,
    release_payload,
    softmax_params,
)

pytestmark = pytest.mark.integration

X = np.random.default_rng(7).normal(size=(20, 4)).astype(np.float32)


@pytest.fixture
def env(broker: Broker, task: str, tmp_path: Path) -> Iterator[DeviceEnv]:
    """This test's device world on the session broker."""
    yield from device_env(broker, task, tmp_path)


def held_version(daemon: DeviceDaemon) -> int | None:
    """The version the daemon holds (None: no model)."""
    held = daemon.held_model
    return held.version if held else None


def counted(daemon: DeviceDaemon, want: dict[str, int]) -> bool:
    """Whether the daemon's counters include ``want``."""
    counters = daemon.db.counters()
    return all(counters.get(k) == v for k, v in want.items())


def receipt(env: DeviceEnv, update_id: bytes, status: ReceiptStatus) -> bytes:
    """A Receipt payload for this device."""
    return Receipt(
        task=env.task, device_id=env.device, update_id=update_id, status=status, model_version=1
    ).encode()


def test_device_holds_retained_release_and_reports_online(env: DeviceEnv) -> None:
    """A release retained before the device connects is verified, stored on disk, serves."""
    params = softmax_params(1)
    aggregator = env.aggregator([env.status_topic])
    aggregator.publish(env.model_topic, env.release(3, params), retain=True)
    daemon = env.daemon()
    assert daemon.wait_until(lambda d: held_version(d) == 3, 10)
    np.testing.assert_array_equal(daemon.predict(X), reference_predict(params, X))
    on_disk = read_held_model(env.state_dir, task=env.task, verify_key=env.key.verify_key)
    assert on_disk is not None
    assert on_disk.version == 3
    np.testing.assert_array_equal(on_disk.params["W"], params["W"])
    online = DeviceStatus.decode(aggregator.expect(env.status_topic).payload)
    while online.model_version != 3:
        online = DeviceStatus.decode(aggregator.expect(env.status_topic).payload)
    assert (online.state, online.connections, online.device_id) == ("online", 1, env.device)


def test_device_refuses_bad_releases_and_keeps_serving(env: DeviceEnv) -> None:
    """Forged, garbage, unsigned, rolled-back and foreign releases are refused and counted."""
    params = softmax_params(2)
    aggregator = env.aggregator([])
    aggregator.publish(env.model_topic, env.release(2, params), retain=True)
    daemon = env.daemon()
    assert daemon.wait_until(lambda d: held_version(d) == 2, 10)
    body = msgpack.unpackb(env.release(9), raw=False)["body"]
    unsigned = msgpack.packb({"fedmq": 1, "type": "release", "body": body}, use_bin_type=True)
    zero_signed = msgpack.packb(
        {"fedmq": 1, "type": "release", "body": body, "signature": bytes(64)}, use_bin_type=True
    )
    attacks = [
        ("bad_signature", release_payload(SigningKey.generate(), env.task, 3)),
        ("malformed", b"\x00garbage\xff" * 10),
        ("bad_signature", unsigned),
        ("bad_signature", zero_signed),
        ("rollback", env.release(1)),
        ("rollback", env.release(2, seed=99)),
        ("wrong_task", release_payload(env.key, env.task + "x", 5)),
    ]
    expected: dict[str, int] = {}
    for reason, payload in attacks:
        expected[f"release_refused_{reason}"] = expected.get(f"release_refused_{reason}", 0) + 1
        aggregator.publish(env.model_topic, payload, retain=True)
        want = dict(expected)
        assert daemon.wait_until(partial(counted, want=want), 10), reason
        assert held_version(daemon) == 2
        np.testing.assert_array_equal(daemon.predict(X), reference_predict(params, X))
    assert daemon.db.counters()["releases_accepted"] == 1


def test_device_update_stays_in_outbox_until_its_receipt(env: DeviceEnv) -> None:
    """Updates go out one at a time (window 1), in order; each leaves only on its receipt."""
    aggregator = env.aggregator([env.update_topic])
    aggregator.publish(env.model_topic, env.release(4), retain=True)
    daemon = env.daemon({"outbox": {"inflight": 1}})
    assert daemon.wait_until(lambda d: held_version(d) == 4, 10)
    y = np.arange(5) % 3
    daemon.observe(X[:5], y)
    first = ModelUpdate.decode(aggregator.expect(env.update_topic).payload)
    assert (first.device_id, first.task, first.base_version, first.num_samples) == (
        env.device,
        env.task,
        4,
        5,
    )
    daemon.observe(X[5:10], y)
    assert daemon.wait_until(lambda d: len(d.outbox) == 2, 10)
    with pytest.raises(queue.Empty):
        aggregator.messages.get(timeout=0.5)
    aggregator.publish(env.receipt_topic, receipt(env, first.update_id, "accepted"))
    second = ModelUpdate.decode(aggregator.expect(env.update_topic).payload)
    assert second.num_samples == 10
    assert second.update_id != first.update_id
    assert daemon.wait_until(lambda d: len(d.outbox) == 1, 10)
    assert [e.update_id for e in daemon.outbox.entries()] == [second.update_id]
    aggregator.publish(env.receipt_topic, receipt(env, second.update_id, "rejected"))
    assert daemon.wait_until(lambda d: len(d.outbox) == 0, 10)
    counters = daemon.db.counters()
    assert (counters["receipts_accepted"], counters["receipts_rejected"]) == (1, 1)


def test_device_republishes_update_without_receipt(env: DeviceEnv) -> None:
    """No receipt within the timeout: the same bytes go out again; a duplicate receipt ends it."""
    aggregator = env.aggregator([env.update_topic])
    aggregator.publish(env.model_topic, env.release(1), retain=True)
    daemon = env.daemon({"outbox": {"receipt_timeout": 0.3}})
    assert daemon.wait_until(lambda d: held_version(d) == 1, 10)
    daemon.observe(X[:5], np.zeros(5, dtype=np.int64))
    first = aggregator.expect(env.update_topic).payload
    again = aggregator.expect(env.update_topic, timeout=5).payload
    assert again == first
    aggregator.publish(
        env.receipt_topic, receipt(env, ModelUpdate.decode(first).update_id, "duplicate")
    )
    assert daemon.wait_until(lambda d: len(d.outbox) == 0, 10)
    assert daemon.db.counters()["receipts_duplicate"] == 1, daemon.db.counters()


def test_device_stop_publishes_offline_and_counts_connections(env: DeviceEnv) -> None:
    """A clean stop says offline itself; the connection counter survives a restart."""
    aggregator = env.aggregator([env.status_topic])
    daemon = env.daemon()
    assert DeviceStatus.decode(aggregator.expect(env.status_topic).payload).connections == 1
    daemon.stop()
    daemon.join(10)
    offline = DeviceStatus.decode(aggregator.expect(env.status_topic).payload)
    assert (offline.state, offline.connections) == ("offline", 1)
    daemon.close()
    restarted = env.daemon()
    online = DeviceStatus.decode(aggregator.expect(env.status_topic).payload)
    assert (online.state, online.connections) == ("online", 2)
    assert restarted.wait_until(lambda d: d.connections == 2, 5)


def test_device_predicts_and_learns_with_broker_stopped(env: DeviceEnv) -> None:
    """Broker down: the Python API and the CLI predict from disk and training queues its
    update, which is delivered once the broker is back."""
    private = launch_broker(env.dir / "broker")
    try:
        private.add_account(env.device, env.account.password)
        params = softmax_params(3)
        env.aggregator([], on=private).publish(env.model_topic, env.release(6, params), retain=True)
        daemon = env.daemon({"outbox": {"receipt_timeout": 0.5}}, on=private)
        assert daemon.wait_until(lambda d: held_version(d) == 6 and d.connected, 10)
        private.server.stop()
        assert daemon.wait_until(lambda d: not d.connected, 10)
        np.testing.assert_array_equal(daemon.predict(X), reference_predict(params, X))
        daemon.observe(X[:6], np.arange(6) % 3)
        assert daemon.wait_until(lambda d: len(d.outbox) == 1, 10)
        (env.dir / "x.json").write_text(json.dumps(X.tolist()))
        cli = subprocess.run(
            [sys.executable, "-m", "fedmq.cli", "device", "predict",
             "--config", str(env.config_path), "--input", str(env.dir / "x.json")],
            capture_output=True, cwd=REPO, timeout=60, check=False,
        )  # fmt: skip
        assert cli.returncode == 0, cli.stderr
        assert json.loads(cli.stdout)["labels"] == reference_predict(params, X).tolist()
        private.server.start()
        aggregator = AggregatorClient(private, [env.update_topic])
        try:
            update = ModelUpdate.decode(aggregator.expect(env.update_topic).payload)
        finally:
            aggregator.close()
        assert (update.base_version, update.num_samples) == (6, 6)
    finally:
        private.server.stop()


def test_device_follows_control_and_refuses_garbage(env: DeviceEnv) -> None:
    """A retained Control switches the trigger and codec; garbage control/receipts are counted."""
    aggregator = env.aggregator([env.update_topic])
    aggregator.publish(env.model_topic, env.release(2), retain=True)
    control = Control(
        task=env.task, seq=1, settings={"min_new_samples": 2, "codec": "topk", "topk_fraction": 0.5}
    )
    aggregator.publish(control_topic(env.task), control.encode(), retain=True)
    daemon = env.daemon()
    assert daemon.wait_until(lambda d: held_version(d) == 2 and d.pace.seq == 1, 10)
    daemon.observe(X[:2], [0, 1])
    update = ModelUpdate.decode(aggregator.expect(env.update_topic).payload)
    assert (update.codec, update.num_samples) == ("topk", 2)
    assert all(t.values.size == (t.size + 1) // 2 for t in update.tensors.values())
    aggregator.publish(control_topic(env.task), b"junk", retain=True)
    aggregator.publish(env.receipt_topic, b"junk")
    want = {"control_refused": 1, "receipts_malformed": 1}
    assert daemon.wait_until(partial(counted, want=want), 10)
    assert daemon.pace.training.min_new_samples == 2


def test_device_never_publishes_an_update_above_the_limit(env: DeviceEnv) -> None:
    """A 4.8 MB update (above Mosquitto's message_size_limit, which would make the broker
    and paho drop the connection and paho resend it forever) is refused on the device."""
    spec = ModelSpec(kind="mlp", n_features=4, n_classes=3, hidden=150_000)
    half = {name: value.astype(np.float16) for name, value in spec.init().items()}
    big = ModelRelease(task=env.task, version=1, parent_version=0, tensors=half)
    aggregator = env.aggregator([env.update_topic])
    aggregator.publish(env.model_topic, big.encode(env.key), retain=True)
    daemon = env.daemon()
    assert daemon.wait_until(lambda d: held_version(d) == 1, 20)
    daemon.observe(X[:5], np.arange(5) % 3)
    want = {"training_failed_update_too_large": 1}
    assert daemon.wait_until(partial(counted, want=want), 20)
    assert len(daemon.outbox) == 0
    assert "updates_built" not in daemon.db.counters()
    with pytest.raises(queue.Empty):
        aggregator.messages.get(timeout=0.3)
    assert daemon.connections == 1


def test_device_discards_update_the_broker_refuses(env: DeviceEnv) -> None:
    """PUBACK >= 0x80 from the real broker (0x87: the ACL does not cover this topic root):
    the update is dropped and counted, not resent; the refused status is counted too."""
    release = ModelRelease(
        task=env.task, version=1, parent_version=0, tensors=softmax_params(4)
    ).encode(env.key)
    store = ModelStore(env.state_dir, task=env.task, verify_key=env.key.verify_key)
    assert store.offer(release) is not None
    daemon = env.daemon({"": {"topic_root": "fl/v9"}, "outbox": {"receipt_timeout": 0.2}})
    assert daemon.wait_until(partial(counted, want={"status_refused_by_broker": 1}), 10)
    daemon.observe(X[:5], np.arange(5) % 3)
    assert daemon.wait_until(partial(counted, want={"update_refused_by_broker": 1}), 10)
    assert len(daemon.outbox) == 0
    assert daemon.sender.in_flight == 0


def test_device_learns_offline_and_delivers_after_the_link_returns(env: DeviceEnv) -> None:
    """set_online(False) disconnects; training goes on into the outbox; on set_online(True)
    the device reconnects (a new connection) and publishes what it made offline."""
    aggregator = env.aggregator([env.update_topic])
    release = env.release(2)
    aggregator.publish(env.model_topic, release, retain=True)
    daemon = env.daemon({"outbox": {"inflight": 4}})
    assert daemon.wait_until(lambda d: held_version(d) == 2 and d.connected, 10)
    connections = daemon.connections
    daemon.set_online(False)
    assert daemon.wait_until(lambda d: not d.connected, 10)
    daemon.observe(X[:6], np.arange(6) % 3)
    assert daemon.wait_until(lambda d: len(d.outbox) == 1, 10)
    with pytest.raises(queue.Empty):
        aggregator.messages.get(timeout=0.5)
    daemon.set_online(True)
    payload = aggregator.expect(env.update_topic).payload
    update = ModelUpdate.decode(payload)
    assert (update.base_version, update.num_samples) == (2, 6)
    assert daemon.connected
    assert daemon.connections == connections + 1
    counters = daemon.db.counters()
    assert counters["update_bytes_sent"] == len(payload)
    assert daemon.wait_until(
        partial(counted, want={"release_bytes_received": 2 * len(release)}), 10
    ), "every connect brings the retained release once"


def test_device_offline_is_queued_no_stale_releases(env: DeviceEnv) -> None:
    """Releases published while the device is offline are not queued for it: on reconnect
    it downloads the retained latest one only (model subscription QoS 0, retain handling 0)."""
    aggregator = env.aggregator([])
    first = env.release(2)
    aggregator.publish(env.model_topic, first, retain=True)
    daemon = env.daemon()
    assert daemon.wait_until(lambda d: held_version(d) == 2 and d.connected, 10)
    daemon.set_online(False)
    assert daemon.wait_until(lambda d: not d.connected, 10)
    missed = [env.release(version, seed=version) for version in range(3, 8)]
    for payload in missed:
        aggregator.publish(env.model_topic, payload, retain=True)
    daemon.set_online(True)
    assert daemon.wait_until(lambda d: held_version(d) == 7, 10)
    time.sleep(1.0)  # room for any queued copy to arrive
    counters = daemon.db.counters()
    assert counters["release_bytes_received"] == len(first) + len(missed[-1])
    assert counters["releases_accepted"] == 2
    assert "release_refused_rollback" not in counters
