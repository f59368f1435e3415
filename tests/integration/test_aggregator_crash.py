"""Crash safety with the counting oracle: SIGKILLed aggregators count every update once."""

from __future__ import annotations

import random
import time
from pathlib import Path

import numpy as np
import pytest
import redis

from aggregator.config import load_config
from aggregator.keys import TaskKeys
from tests.conftest import Broker
from tests.integration.aggregator_helpers import (
    Device,
    ServiceProcess,
    init_model,
    service_account,
    signing_key,
    write_config,
)
from tests.integration.oracle import ORACLE_TENSOR, log_tail, oracle_tasks, publishers

pytestmark = [pytest.mark.integration, pytest.mark.chaos]

TOTAL = 2400
BUFFER = 8
DEVICES = ["dev-a", "dev-b", "dev-c", "dev-oracle-1"]


def _final_model(broker: Broker, task: str, config_path: Path, logs: list[Path]) -> np.ndarray:
    key = signing_key(load_config(config_path, {}))
    watcher = Device(broker, "dev-a", task)
    try:
        release = watcher.release(key, 1 + TOTAL // BUFFER, timeout=60)
    except Exception as exc:
        raise AssertionError("\n".join(log_tail(p) for p in logs)) from exc
    finally:
        watcher.close()
    assert release.version == 1 + TOTAL // BUFFER
    return np.asarray(release.tensors[ORACLE_TENSOR])


def _check_exactly_once(counts: np.ndarray, redis_url: str, task: str) -> None:
    lost = np.flatnonzero(counts == 0)
    doubled = np.flatnonzero(counts > 1)
    assert lost.size == 0, f"{lost.size} updates never counted, e.g. {lost[:10]}"
    assert doubled.size == 0, f"{doubled.size} updates counted twice, e.g. {doubled[:10]}"
    np.testing.assert_array_equal(counts, np.ones(TOTAL, dtype=np.float32))
    with redis.Redis.from_url(redis_url) as client:
        state = client.hgetall(TaskKeys.of(task).state)
        assert int(state[b"updates_total"]) == TOTAL
        assert client.xlen(TaskKeys.of(task).updates) == 0


def test_aggregator_sigkill_counts_every_update_exactly_once(
    broker: Broker, redis_url: str, task: str, tmp_path: Path
) -> None:
    """12 SIGKILLs at random moments while 4 devices stream 2400 updates (resending until a
    receipt): the final model counts each update exactly once."""
    path = write_config(
        tmp_path,
        broker=broker,
        redis_url=redis_url,
        tasks=oracle_tasks(task, BUFFER),
        replica_id=f"agg-{task}",
    )
    init_model(path, task, {ORACLE_TENSOR: np.zeros(TOTAL, dtype=np.float32)})
    service = ServiceProcess(path, tmp_path / "aggregator.log")
    senders = publishers(broker, task, DEVICES, total=TOTAL, buffer_size=BUFFER, rate=160.0)
    rng = random.Random(task)
    kills = 0
    service.start()
    try:
        for sender in senders:
            sender.start()
        while kills < 12:
            # Each kill strikes a process that has started leading (a slow start on a loaded
            # machine would otherwise be killed before it did anything).
            service.wait_for_log("leading from", kills + 1, timeout=60)
            time.sleep(rng.uniform(0.1, 1.7))
            service.kill()
            kills += 1
            service.start()
        for sender in senders:
            assert sender.done.wait(90), f"{len(sender.pending)} without receipt\n" + log_tail(
                service.log
            )
        counts = _final_model(broker, task, path, [service.log])
        service.wait_for_log("leading from", kills + 1, timeout=60)
        assert service.terminate() == 0
    finally:
        service.kill()
        for sender in senders:
            sender.close()
    assert sum(s.sends for s in senders) >= TOTAL
    _check_exactly_once(counts, redis_url, task)


def test_aggregator_two_replicas_one_killed_count_every_update_once(
    broker: Broker, redis_url: str, task: str, tmp_path: Path
) -> None:
    """Two replicas share the stream (shared subscription); the leader is SIGKILLed mid-run
    and restarted later; every update is still counted exactly once."""
    tasks = oracle_tasks(task, BUFFER)
    names = [f"agg{i}-{task}" for i in range(2)]
    for name in names:
        service_account(broker, name)
    paths = [
        write_config(
            tmp_path,
            broker=broker,
            redis_url=redis_url,
            tasks=tasks,
            replica_id=name,
            username=name,
        )
        for name in names
    ]
    init_model(paths[0], task, {ORACLE_TENSOR: np.zeros(TOTAL, dtype=np.float32)})
    replicas = [ServiceProcess(p, tmp_path / f"replica{i}.log") for i, p in enumerate(paths)]
    senders = publishers(broker, task, DEVICES, total=TOTAL, buffer_size=BUFFER, rate=240.0)
    leader_key = TaskKeys.of(task).leader
    try:
        for replica in replicas:
            replica.start()
        time.sleep(2.0)
        for sender in senders:
            sender.start()
        time.sleep(3.0)
        with redis.Redis.from_url(redis_url) as client:
            holder = client.get(leader_key)
        assert holder is not None, "no replica holds the lease"
        victim = next(
            r
            for r, p in zip(replicas, paths, strict=True)
            if load_config(p, {}).replica_id == holder.decode()
        )
        victim.kill()
        time.sleep(4.0)
        victim.start()
        for sender in senders:
            assert sender.done.wait(90), f"{len(sender.pending)} without receipt"
        counts = _final_model(broker, task, paths[0], [r.log for r in replicas])
        for replica in replicas:
            assert replica.terminate() == 0
    finally:
        for replica in replicas:
            replica.kill()
        for sender in senders:
            sender.close()
    _check_exactly_once(counts, redis_url, task)
    other = next(r for r in replicas if r is not victim)
    assert "leading from" in other.log.read_text(), "the survivor never took over"
