"""Redis goes away under a running aggregator: it waits off the broker, then carries on."""

from __future__ import annotations

import logging
import time
from pathlib import Path

import numpy as np
import pytest

from tests.conftest import Broker, launch_redis
from tests.integration.aggregator_helpers import (
    Device,
    init_model,
    make_update,
    running_service,
    write_config,
)

pytestmark = pytest.mark.integration

_CONNECTED = "connected to mqtt://"


def _connects(caplog: pytest.LogCaptureFixture) -> int:
    return sum(1 for r in caplog.records if r.getMessage().startswith(_CONNECTED))


def test_aggregator_stays_off_the_broker_while_redis_is_down(
    broker: Broker, task: str, tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    """With Redis killed, an update cannot be stored: the service drops the MQTT connection
    (the update stays un-acked at the broker) and reconnects only once Redis answers, instead
    of reconnecting every backoff step to fail on the same redelivered update; afterwards
    the update is stored and receipted."""
    server = launch_redis(tmp_path / "redis")
    try:
        path = write_config(
            tmp_path,
            broker=broker,
            redis_url=f"redis://127.0.0.1:{server.port}/0",
            tasks=f'[[tasks]]\nname = "{task}"\nbuffer_size = 100\n',
            replica_id=f"agg-{task}",
        )
        init_model(path, task, {"w": np.zeros(4, dtype=np.float32)})
        caplog.set_level(logging.INFO, logger="aggregator.service")
        with running_service(path):
            device = Device(broker, "dev-a", task)
            try:
                server.kill()
                update = make_update(task, "dev-a", {"w": np.ones(4, dtype=np.float32)})
                device.publish(update.encode())
                time.sleep(4.0)  # the backoff (0.1 s doubling to 1 s) would reconnect ~6 times
                connects_while_down = _connects(caplog) - 1
                server.start()
                receipt = device.receipt(timeout=20)
            finally:
                device.close()
    finally:
        server.stop()
    assert connects_while_down == 0, f"{connects_while_down} reconnects while Redis was down"
    assert (receipt.update_id, receipt.status) == (update.update_id, "accepted")
