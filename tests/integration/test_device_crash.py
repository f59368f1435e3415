"""The daemon as a real process, killed with SIGKILL: last will, outbox and model survive."""

from __future__ import annotations

import sqlite3
import time
from collections.abc import Iterator
from functools import partial
from pathlib import Path

import numpy as np
import pytest

from device.model_store import MODEL_FILE, HeldModel, read_held_model
from device.models import ModelSpec
from device.state_db import STATE_FILE
from serialization import DeviceStatus, ModelRelease, ModelUpdate, Receipt
from tests.conftest import Broker
from tests.integration.device_fixtures import (
    DeviceEnv,
    device_env,
    softmax_params,
    wait_for,
    write_spool_file,
)

pytestmark = pytest.mark.integration

BIG = ModelSpec(kind="mlp", n_features=4, n_classes=3, hidden=120_000)


@pytest.fixture
def env(broker: Broker, task: str, tmp_path: Path) -> Iterator[DeviceEnv]:
    """This test's device world on the session broker."""
    yield from device_env(broker, task, tmp_path)


def held(env: DeviceEnv) -> HeldModel | None:
    """The model on disk, verified as the daemon would at start."""
    return read_held_model(env.state_dir, task=env.task, verify_key=env.key.verify_key)


def outbox_ids(env: DeviceEnv) -> list[bytes]:
    """Update ids in the daemon's outbox, oldest first (read beside the daemon)."""
    with sqlite3.connect(env.state_dir / STATE_FILE, timeout=5) as db:
        return [bytes(r[0]) for r in db.execute("SELECT update_id FROM outbox ORDER BY seq")]


def outbox_is(env: DeviceEnv, expected: list[bytes]) -> bool:
    """Whether the outbox holds exactly ``expected``, in order."""
    return outbox_ids(env) == expected


def samples(n: int, seed: int) -> tuple[np.typing.NDArray[np.float32], np.typing.NDArray[np.int64]]:
    """n random samples for the 4-feature, 3-class task."""
    rng = np.random.default_rng(seed)
    return rng.normal(size=(n, 4)).astype(np.float32), np.arange(n, dtype=np.int64) % 3


def test_device_will_marks_offline_on_sigkill(env: DeviceEnv) -> None:
    """Connected after a retained release: stores it; SIGKILL: the will says offline."""
    params = softmax_params(5)
    aggregator = env.aggregator([env.status_topic])
    aggregator.publish(env.model_topic, env.release(1, params), retain=True)
    daemon = env.process()
    daemon.start()
    online = DeviceStatus.decode(aggregator.expect(env.status_topic, 20).payload)
    while online.model_version != 1:
        online = DeviceStatus.decode(aggregator.expect(env.status_topic).payload)
    assert (online.state, online.connections) == ("online", 1)
    stored = held(env)
    assert stored is not None
    np.testing.assert_array_equal(stored.params["W"], params["W"])
    daemon.kill()
    will = aggregator.expect(env.status_topic)
    offline = DeviceStatus.decode(will.payload)
    # The will was registered at CONNECT, before the release arrived: it names that model.
    assert (offline.state, offline.connections, offline.model_version) == ("offline", 1, 0)
    late = env.aggregator([env.status_topic]).expect(env.status_topic)
    assert late.retain
    assert DeviceStatus.decode(late.payload).state == "offline"


def test_device_sigkill_keeps_outbox_and_model_intact(env: DeviceEnv) -> None:
    """SIGKILL with two updates outboxed and a 4 MB release being written: after restart the
    state is intact, the newer model is held, and each update leaves only on its receipt."""
    aggregator = env.aggregator([env.update_topic])
    aggregator.publish(env.model_topic, env.release(1), retain=True)
    daemon = env.process({"outbox": {"receipt_timeout": 60.0}})
    daemon.start()
    wait_for(lambda: held(env) is not None, 20, "the first model on disk")
    sent = []
    for name, seed in (("a", 1), ("b", 2)):
        write_spool_file(env.state_dir / "spool", name, *samples(6, seed))
        sent.append(ModelUpdate.decode(aggregator.expect(env.update_topic, 20).payload))
    assert [u.num_samples for u in sent] == [6, 12]
    ids = [u.update_id for u in sent]
    wait_for(lambda: outbox_ids(env) == ids, 10, "both updates in the outbox")

    big = ModelRelease(task=env.task, version=2, parent_version=1, tensors=BIG.init())
    aggregator.publish(env.model_topic, big.encode(env.key), retain=True)
    temp = env.state_dir / (MODEL_FILE + ".tmp")
    deadline = time.monotonic() + 20
    while not temp.exists() and time.monotonic() < deadline:
        if (env.state_dir / MODEL_FILE).stat().st_size > 1_000_000:
            break
    mid_write = temp.exists()
    daemon.kill()

    with sqlite3.connect(env.state_dir / STATE_FILE) as db:
        assert db.execute("PRAGMA integrity_check").fetchone() == ("ok",)
    assert outbox_ids(env) == ids
    survivor = held(env)
    assert survivor is not None
    assert survivor.version == 1 if mid_write else survivor.version in (1, 2)

    daemon.start()
    resent = [ModelUpdate.decode(aggregator.expect(env.update_topic, 20).payload) for _ in ids]
    assert [u.update_id for u in resent] == ids
    wait_for(lambda: (held(env) or survivor).version == 2, 20, "the 4 MB release held")
    assert not temp.exists()
    assert outbox_ids(env) == ids
    for index, update_id in enumerate(ids):
        receipt = Receipt(
            task=env.task,
            device_id=env.device,
            update_id=update_id,
            status="accepted",
            model_version=1,
        )
        aggregator.publish(env.receipt_topic, receipt.encode())
        wait_for(partial(outbox_is, env, ids[index + 1 :]), 10, f"receipt {index} handled")
    assert daemon.terminate() == 0
    assert "Traceback" not in daemon.output()
