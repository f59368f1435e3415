"""The aggregator service end to end on a real Mosquitto and Redis: math, receipts, dedupe."""

from __future__ import annotations

import math
import queue
from pathlib import Path

import numpy as np
import pytest

from aggregator.config import load_config
from serialization import ModelUpdate
from tests.conftest import Broker
from tests.integration.aggregator_helpers import (
    Device,
    init_model,
    make_update,
    running_service,
    signing_key,
    write_config,
)

pytestmark = pytest.mark.integration


def _devices(broker: Broker, task: str, names: tuple[str, ...]) -> list[Device]:
    return [Device(broker, name, task) for name in names]


def test_aggregator_fedavg_equals_hand_computed_weighted_average(
    broker: Broker, redis_url: str, task: str, tmp_path: Path
) -> None:
    """Three updates weighted 1, 2, 3 samples give x1 = x0 + (1 d_a + 2 d_b + 3 d_c) / 6."""
    tasks = f'[[tasks]]\nname = "{task}"\nstrategy = "fedavg"\nbuffer_size = 3\n'
    path = write_config(tmp_path, broker=broker, redis_url=redis_url, tasks=tasks)
    x0 = np.array([1.0, -2.0, 0.5, 4.0], dtype=np.float32)
    init_model(path, task, {"w": x0})
    deltas = {
        "dev-a": np.array([6.0, 0.0, 0.0, 12.0], dtype=np.float32),
        "dev-b": np.array([0.0, 3.0, 0.0, -6.0], dtype=np.float32),
        "dev-c": np.array([0.0, 0.0, 2.0, 6.0], dtype=np.float32),
    }
    samples = {"dev-a": 1, "dev-b": 2, "dev-c": 3}
    expected = x0 + np.array([1.0, 1.0, 1.0, 3.0], dtype=np.float32)  # hand-computed
    devices = _devices(broker, task, ("dev-a", "dev-b", "dev-c"))
    key = signing_key(load_config(path, {}))
    try:
        with running_service(path):
            assert devices[0].release(key, 1).version == 1
            for device in devices:
                update = make_update(
                    task, device.name, {"w": deltas[device.name]}, num_samples=samples[device.name]
                )
                device.publish(update.encode())
                receipt = device.receipt()
                assert (receipt.status, receipt.update_id) == ("accepted", update.update_id)
            release = devices[1].release(key, 2)
    finally:
        for device in devices:
            device.close()
    assert (release.version, release.parent_version, release.update_count) == (2, 1, 3)
    np.testing.assert_allclose(release.tensors["w"], expected, rtol=0, atol=1e-6)


def test_aggregator_fedbuff_matches_numpy_reference(
    broker: Broker, redis_url: str, task: str, tmp_path: Path
) -> None:
    """FedBuff K=2 with FedAvgM (lr 0.5, momentum 0.9) and s(tau) = 1/sqrt(1+tau) matches a
    plain numpy replay of the paper's server loop over two versions."""
    tasks = (
        f'[[tasks]]\nname = "{task}"\nstrategy = "fedbuff"\nbuffer_size = 2\n'
        'server_optimizer = {name = "fedavgm", lr = 0.5, momentum = 0.9}\n'
    )
    path = write_config(tmp_path, broker=broker, redis_url=redis_url, tasks=tasks)
    rng = np.random.default_rng(7)
    x = rng.standard_normal(5).astype(np.float32)
    init_model(path, task, {"w": x.copy()})
    deltas = [rng.standard_normal(5).astype(np.float32) for _ in range(4)]
    device = Device(broker, "dev-a", task)
    key = signing_key(load_config(path, {}))
    try:
        with running_service(path):
            for d in deltas[:2]:
                device.publish(make_update(task, "dev-a", {"w": d}, base_version=1).encode())
                assert device.receipt().status == "accepted"
            v2 = device.release(key, 2)
            for d in deltas[2:]:
                device.publish(make_update(task, "dev-a", {"w": d}, base_version=1).encode())
                assert device.receipt().status == "accepted"
            v3 = device.release(key, 3)
    finally:
        device.close()
    m = (deltas[0] + deltas[1]) / 2
    x2 = x + 0.5 * m
    m = 0.9 * m + (deltas[2] + deltas[3]) / math.sqrt(2.0) / 2
    x3 = x2 + 0.5 * m
    np.testing.assert_allclose(v2.tensors["w"], x2, rtol=1e-5, atol=1e-6)
    np.testing.assert_allclose(v3.tensors["w"], x3, rtol=1e-5, atol=1e-6)
    assert v3.metadata["staleness_mean"] == 1.0


def test_aggregator_duplicate_and_replayed_update_counts_once(
    broker: Broker, redis_url: str, task: str, tmp_path: Path
) -> None:
    """An update sent twice, and replayed after the next release, is folded exactly once."""
    tasks = f'[[tasks]]\nname = "{task}"\nbuffer_size = 2\nstaleness = {{name = "constant"}}\n'
    path = write_config(tmp_path, broker=broker, redis_url=redis_url, tasks=tasks)
    init_model(path, task, {"w": np.zeros(3, dtype=np.float32)})
    device = Device(broker, "dev-b", task)
    key = signing_key(load_config(path, {}))
    first = make_update(task, "dev-b", {"w": np.array([2.0, 0, 0], dtype=np.float32)})
    second = make_update(task, "dev-b", {"w": np.array([0, 2.0, 0], dtype=np.float32)})
    third = make_update(task, "dev-b", {"w": np.array([0, 0, 2.0], dtype=np.float32)})
    try:
        with running_service(path) as service:
            device.publish(first.encode())
            device.publish(first.encode())
            statuses = sorted(device.receipt().status for _ in range(2))
            assert statuses == ["accepted", "duplicate"]
            device.publish(second.encode())
            assert device.receipt().status == "accepted"
            v2 = device.release(key, 2)
            device.publish(first.encode())
            assert device.receipt().status == "duplicate"
            device.publish(third.encode())
            device.publish(second.encode())
            assert sorted(device.receipt().status for _ in range(2)) == ["accepted", "duplicate"]
            device.publish(
                make_update(task, "dev-b", {"w": np.zeros(3, np.float32)}, base_version=2).encode()
            )
            v3 = device.release(key, 3)
            assert service.metric("fedmq_updates_duplicate_total", {"task": task}) == 3
            assert service.metric("fedmq_updates_accepted_total", {"task": task}) == 4
    finally:
        device.close()
    np.testing.assert_array_equal(v2.tensors["w"], [1.0, 1.0, 0.0])
    np.testing.assert_array_equal(v3.tensors["w"], [1.0, 1.0, 1.0])


def test_aggregator_rejects_bad_updates_with_reasons_and_keeps_going(
    broker: Broker, redis_url: str, task: str, tmp_path: Path
) -> None:
    """Malformed, oversized, wrong-shape, NaN, over-norm, stale, future and impersonating
    updates are refused with the right reason in the Receipt and the metrics."""
    tasks = (
        f'[[tasks]]\nname = "{task}"\nbuffer_size = 1\nmax_staleness = 0\n'
        "max_norm = 10.0\nmax_update_bytes = 4096\n"
    )
    path = write_config(tmp_path, broker=broker, redis_url=redis_url, tasks=tasks)
    init_model(path, task, {"w": np.zeros(4, dtype=np.float32)})
    device = Device(broker, "dev-c", task)
    good = np.ones(4, dtype=np.float32)
    cases: dict[str, bytes | ModelUpdate] = {
        "malformed": b"\x93not msgpack at all",
        "too_large": make_update(task, "dev-c", {"w": good, "pad": np.zeros(2000, np.float32)}),
        "shape_mismatch": make_update(task, "dev-c", {"w": np.ones(5, np.float32)}),
        "unknown_tensor": make_update(task, "dev-c", {"w": good, "extra": good}),
        "non_finite": make_update(task, "dev-c", {"w": np.array([1, np.nan, 0, 0], np.float32)}),
        "norm_exceeded": make_update(task, "dev-c", {"w": np.full(4, 6.0, np.float32)}),
        "stale": make_update(task, "dev-c", {"w": good}, base_version=0),
        "future_version": make_update(task, "dev-c", {"w": good}, base_version=9),
        "device_mismatch": make_update(task, "dev-a", {"w": good}),
    }
    try:
        with running_service(path) as service:
            for reason, case in cases.items():
                payload = case if isinstance(case, bytes) else case.encode()
                device.publish(payload)
                receipt = device.receipt()
                assert (receipt.status, receipt.reason) == ("rejected", reason)
                assert receipt.model_version == 1
                if isinstance(case, ModelUpdate) and reason != "too_large":
                    assert receipt.update_id == case.update_id
                labels = {"task": task, "reason": reason}
                assert service.metric("fedmq_updates_rejected_total", labels) == 1
            device.publish(make_update(task, "dev-c", {"w": good}).encode())
            assert device.receipt().status == "accepted"
            release = device.release(signing_key(service.config), 2)
    finally:
        device.close()
    np.testing.assert_array_equal(release.tensors["w"], good)


def test_aggregator_session_survives_restart(
    broker: Broker, redis_url: str, task: str, tmp_path: Path
) -> None:
    """An update published while the aggregator is down is delivered when it reconnects
    (clean_start=False + session expiry): the broker kept the persistent session."""
    tasks = f'[[tasks]]\nname = "{task}"\nbuffer_size = 5\n'
    path = write_config(
        tmp_path, broker=broker, redis_url=redis_url, tasks=tasks, replica_id=f"agg-{task}"
    )
    init_model(path, task, {"w": np.zeros(2, dtype=np.float32)})
    device = Device(broker, "dev-a", task)
    update = make_update(task, "dev-a", {"w": np.ones(2, dtype=np.float32)})
    try:
        with running_service(path):
            device.release(signing_key(load_config(path, {})), 1)
        device.publish(update.encode())
        with pytest.raises(queue.Empty):
            device.receipt(timeout=1.0)
        with running_service(path) as service:
            receipt = device.receipt()
            assert (receipt.status, receipt.update_id) == ("accepted", update.update_id)
            assert service.metric("fedmq_updates_received_total", {"task": task}) == 1
    finally:
        device.close()
