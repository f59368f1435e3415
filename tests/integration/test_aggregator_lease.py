"""The leader's own lease: a fold slower than the lease TTL does not fence its own commit."""

from __future__ import annotations

import logging
import time
from pathlib import Path
from typing import Any

import numpy as np
import pytest

from aggregator.config import load_config
from aggregator.leader import Leader
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


@pytest.fixture
def slow_ready_fold(monkeypatch: pytest.MonkeyPatch) -> list[float]:
    """Make the first fold that fills the buffer take ``delay[0]`` seconds longer; the list
    gets a second element once that happened."""
    fold = Leader._fold
    delay: list[float] = [0.0]

    def slow_fold(self: Leader, current: Any, *args: Any) -> int:
        stopped_at = fold(self, current, *args)
        if len(delay) == 1 and current.strategy.ready(time.time()):
            time.sleep(delay[0])
            delay.append(delay[0])
        return stopped_at

    monkeypatch.setattr(Leader, "_fold", slow_fold)
    return delay


def test_leader_renews_its_lease_before_committing_a_slow_fold(
    broker: Broker,
    redis_url: str,
    task: str,
    tmp_path: Path,
    *,
    slow_ready_fold: list[float],
    caplog: pytest.LogCaptureFixture,
) -> None:
    """A sole replica whose fold outlasts the lease TTL (a starved CPU: seen in the scale
    soak with 10,000 devices) commits at once instead of being fenced and re-folding."""
    tasks = f'[[tasks]]\nname = "{task}"\nstrategy = "fedbuff"\nbuffer_size = 2\n'
    path = write_config(tmp_path, broker=broker, redis_url=redis_url, tasks=tasks)
    slow_ready_fold[0] = 1.5 * load_config(path, {}).leader.lease_ttl_s
    init_model(path, task, {"w": np.zeros(3, dtype=np.float32)})
    device = Device(broker, "dev-a", task)
    key = signing_key(load_config(path, {}))
    try:
        with caplog.at_level(logging.INFO, logger="aggregator.leader"), running_service(path):
            for _ in range(2):
                device.publish(make_update(task, "dev-a", {"w": np.ones(3, np.float32)}).encode())
                assert device.receipt().status == "accepted"
            release = device.release(key, 2, timeout=30)
    finally:
        device.close()
    assert len(slow_ready_fold) == 2, "the buffer never filled"
    assert release.version == 2
    refused = [r.getMessage() for r in caplog.records if "refused" in r.getMessage()]
    assert not refused, refused
