"""Operator actions on Redis state: init a task, roll back to an old version, read status."""

from __future__ import annotations

import logging
import os
import time
from collections.abc import Mapping

import aiomqtt

from aggregator.config import AggregatorConfig
from aggregator.errors import AggregatorError
from aggregator.keys import TaskKeys
from aggregator.release import committed_state, release_metadata, sign_release
from aggregator.state import carried_metadata
from aggregator.store import CommitRequest, Store, TaskStatus
from aggregator.tensors import Tensors
from serialization import Scalar, SigningKey, model_topic

__all__ = ["AdminError", "initialise_task", "publish_release", "rollback_task", "task_status"]

logger = logging.getLogger(__name__)


class AdminError(AggregatorError):
    """An operator action that cannot be done as asked; ``.reason`` is a short code."""

    def __init__(self, reason: str, message: str) -> None:
        super().__init__(message)
        self.reason = reason


async def initialise_task(
    config: AggregatorConfig,
    key: SigningKey,
    task: str,
    model: Tensors,
    metadata: Mapping[str, Scalar],
    *,
    force: bool = False,
) -> int:
    """Store ``model`` as the task's first version (or, with ``force``, as the next one,
    dropping pending updates); return the version."""
    keys = TaskKeys.of(task)
    store = Store.from_url(config.redis_url)
    try:
        current = await store.version(keys)
        if current and not force:
            raise AdminError("exists", f"task {task} is at v{current}; use --force to replace")
        version = current + 1
        now = time.time()
        release = sign_release(
            key=key,
            task=task,
            version=version,
            parent_version=current,
            model=model,
            update_count=0,
            created_at=now,
            metadata=dict(metadata),
        )
        outcome, detail = await store.initialise(
            keys, version=version, release=release, now=now, force=force
        )
        if outcome != "ok":
            raise AdminError(outcome, f"task {task}: init refused ({outcome} {detail})")
        return version
    finally:
        await store.aclose()


async def rollback_task(config: AggregatorConfig, key: SigningKey, task: str, to: int) -> bytes:
    """Commit a NEW version with the weights of version ``to``; return its signed payload.

    The optimizer state restarts from zero; pending updates stay and fold into the next
    version. Running leaders see the version move and rebuild.
    """
    keys = TaskKeys.of(task)
    store = Store.from_url(config.redis_url)
    try:
        stored = await store.load(keys)
        old = await store.stored_release(keys, to)
        if stored is None:
            raise AdminError("not_initialised", f"task {task} has no model")
        if old is None:
            raise AdminError("no_such_version", f"task {task}: v{to} is not in the history")
        current = committed_state(
            key=key,
            release=stored.release,
            optimizer=b"",
            opened_at=stored.opened_at,
            updates_total=0,
        )
        target = committed_state(
            key=key, release=old, optimizer=b"", opened_at=0.0, updates_total=0
        )
        now = time.time()
        facts: dict[str, Scalar] = {"rollback_of": to}
        release = sign_release(
            key=key,
            task=task,
            version=current.version + 1,
            parent_version=current.version,
            model=target.model,
            update_count=0,
            created_at=now,
            metadata=release_metadata(carried_metadata(target.metadata), facts),
        )
        outcome, detail = await store.commit(
            keys,
            CommitRequest(
                expected_version=current.version,
                release=release,
                optimizer=b"",
                opened_at=now,
                now=now,
                owner="",
                folded=0,
                history=config.history,
            ),
        )
        if outcome != "ok":
            raise AdminError(outcome, f"task {task}: rollback refused ({outcome} {detail})")
        return release
    finally:
        await store.aclose()


async def publish_release(config: AggregatorConfig, task: str, payload: bytes) -> None:
    """Publish ``payload`` retained on the task's model topic with a short-lived client."""
    settings = config.mqtt
    async with aiomqtt.Client(
        settings.host,
        settings.port,
        username=settings.username,
        password=settings.password,
        identifier=f"{config.replica_id}-admin-{os.getpid()}",
        protocol=aiomqtt.ProtocolVersion.V5,
        timeout=settings.publish_timeout_s,
    ) as client:
        await client.publish(model_topic(task, root=settings.root), payload, qos=1, retain=True)


async def task_status(config: AggregatorConfig, tasks: list[str]) -> dict[str, TaskStatus | None]:
    """The status of each named task (None for a task with no model)."""
    store = Store.from_url(config.redis_url)
    try:
        return {task: await store.status(TaskKeys.of(task), config.history) for task in tasks}
    finally:
        await store.aclose()
