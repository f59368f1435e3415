"""Operations: the CLI (keygen, init, status, rollback), Prometheus endpoint, SIGTERM."""

from __future__ import annotations

import json
import time
import urllib.request
from pathlib import Path

import numpy as np
import pytest
import redis

from aggregator.config import load_config
from aggregator.keys import TaskKeys
from fedmq.cli import main
from fedmq.local_servers import free_port
from serialization import ModelRelease, SigningKey
from tests.conftest import Broker
from tests.integration.aggregator_helpers import (
    Device,
    ServiceProcess,
    make_update,
    running_service,
    signing_key,
    write_config,
)

pytestmark = pytest.mark.integration


def _initialised_k1(
    tmp_path: Path, broker: Broker, redis_url: str, task: str, *, size: int, extra: str = ""
) -> Path:
    """A config with one K=1 task whose model ``w`` (``size`` values) ``fedmq aggregator init``
    created."""
    path = write_config(
        tmp_path,
        broker=broker,
        redis_url=redis_url,
        extra=extra,
        tasks=f'[[tasks]]\nname = "{task}"\nbuffer_size = 1\n',
    )
    init = ["aggregator", "init", "--config", str(path), "--task", task, "--tensor", f"w={size}"]
    assert main(init) == 0
    return path


def test_aggregator_cli_keygen_init_status(
    broker: Broker, redis_url: str, task: str, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """keygen writes a usable 0600 key; init stores a softmax model; status reports it."""
    assert main(["aggregator", "keygen", "--out", str(tmp_path / "keys")]) == 0
    key_file = tmp_path / "keys" / "release_signing_key.pem"
    assert key_file.stat().st_mode & 0o777 == 0o600
    key = SigningKey.from_pem(key_file.read_bytes())
    path = write_config(
        tmp_path,
        broker=broker,
        redis_url=redis_url,
        tasks=f'[[tasks]]\nname = "{task}"\n',
        extra=f'signing_key = "{key_file}"',
    )
    path.write_text(
        path.read_text().replace(f'signing_key = "{tmp_path}/release_signing_key.pem"\n', "")
    )
    argv = [
        "aggregator",
        "init",
        "--config",
        str(path),
        "--task",
        task,
        "--model",
        "softmax",
        "--features",
        "6",
        "--classes",
        "3",
    ]
    assert main(argv) == 0
    assert main(argv) == 2, "a second init without --force must refuse"
    capsys.readouterr()
    assert main(["aggregator", "status", "--config", str(path), "--json"]) == 0
    report = json.loads(capsys.readouterr().out)[task]
    assert (report["version"], report["pending"], report["history"]) == (1, 0, [1])
    with redis.Redis.from_url(redis_url) as client:
        stored = client.get(TaskKeys.of(task).model)
    assert stored is not None
    release = ModelRelease.decode(stored, key.verify_key)
    assert {n: t.shape for n, t in release.tensors.items()} == {"W": (6, 3), "b": (3,)}
    assert release.metadata["model.kind"] == "softmax"


def test_aggregator_rollback_publishes_new_version_with_old_weights(
    broker: Broker, redis_url: str, task: str, tmp_path: Path
) -> None:
    """rollback --to 2 commits v4 = weights of v2; the running leader folds on from v4."""
    path = _initialised_k1(tmp_path, broker, redis_url, task, size=3)
    key = signing_key(load_config(path, {}))
    device = Device(broker, "dev-a", task)
    one = np.ones(3, dtype=np.float32)
    try:
        with running_service(path):
            for version in (1, 2):
                device.publish(
                    make_update(task, "dev-a", {"w": one}, base_version=version).encode()
                )
                assert device.release(key, version + 1).version == version + 1
            assert (
                main(["aggregator", "rollback", "--config", str(path), "--task", task, "--to", "2"])
                == 0
            )
            v4 = device.release(key, 4)
            device.publish(make_update(task, "dev-a", {"w": one}, base_version=4).encode())
            v5 = device.release(key, 5)
    finally:
        device.close()
    assert v4.metadata["rollback_of"] == 2
    np.testing.assert_array_equal(v4.tensors["w"], one)
    np.testing.assert_array_equal(v5.tensors["w"], 2 * one)
    assert (
        main(["aggregator", "rollback", "--config", str(path), "--task", task, "--to", "99"]) == 2
    )


def test_aggregator_metrics_endpoint_reports_versions_and_rejections(
    broker: Broker, redis_url: str, task: str, tmp_path: Path
) -> None:
    """The Prometheus endpoint serves the service's own registry."""
    port = free_port()
    path = _initialised_k1(
        tmp_path, broker, redis_url, task, size=2, extra=f"metrics_port = {port}"
    )
    device = Device(broker, "dev-b", task)
    try:
        with running_service(path):
            device.publish(b"garbage")
            assert device.receipt().reason == "malformed"
            device.publish(make_update(task, "dev-b", {"w": np.ones(2, np.float32)}).encode())
            device.release(signing_key(load_config(path, {})), 2)
            time.sleep(0.2)
            with urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=5) as reply:
                text = reply.read().decode()
    finally:
        device.close()
    assert f'fedmq_model_version{{task="{task}"}} 2.0' in text
    assert f'fedmq_updates_rejected_total{{reason="malformed",task="{task}"}} 1.0' in text
    assert f'fedmq_updates_folded_total{{task="{task}"}} 1.0' in text
    assert "fedmq_release_seconds_bucket" in text


def test_aggregator_sigterm_exits_cleanly_and_releases_the_lease(
    broker: Broker, redis_url: str, task: str, tmp_path: Path
) -> None:
    """SIGTERM finishes the work in hand, gives the lease up and exits 0."""
    path = _initialised_k1(tmp_path, broker, redis_url, task, size=2)
    process = ServiceProcess(path, tmp_path / "aggregator.log")
    device = Device(broker, "dev-c", task)
    key = signing_key(load_config(path, {}))
    try:
        process.start()
        device.release(key, 1)
        device.publish(make_update(task, "dev-c", {"w": np.ones(2, np.float32)}).encode())
        assert device.receipt().status == "accepted"
        device.release(key, 2)
        with redis.Redis.from_url(redis_url) as client:
            assert client.get(TaskKeys.of(task).leader) is not None
            assert process.terminate() == 0
            assert client.get(TaskKeys.of(task).leader) is None
    finally:
        process.kill()
        device.close()
