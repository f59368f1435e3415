"""The aggregator service: MQTT reconnect loop, batched durable ingest, receipts, releases."""

from __future__ import annotations

import asyncio
import logging
import random
import time
from collections.abc import Sequence
from dataclasses import dataclass, field, replace

import aiomqtt

from aggregator.config import AggregatorConfig, TaskSettings
from aggregator.errors import AggregatorError
from aggregator.ingest import (
    UNKNOWN_UPDATE_ID,
    Accepted,
    IngestContext,
    Rejected,
    Verdict,
    check_update,
)
from aggregator.keys import TaskKeys
from aggregator.leader import Leader, load_committed_state
from aggregator.metrics import ServiceMetrics
from aggregator.mqtt_session import MqttSession, keyed_share_group
from aggregator.store import Store, StoreUnavailableError
from serialization import (
    DEFAULT_LIMITS,
    Receipt,
    SerializationError,
    SigningKey,
    model_topic,
    parse_topic,
    receipt_topic,
)

__all__ = ["AggregatorService", "TaskNotInitializedError"]

logger = logging.getLogger(__name__)


class TaskNotInitializedError(AggregatorError):
    """A configured task has no model in Redis yet (run ``fedmq aggregator init``)."""

    def __init__(self, task: str) -> None:
        super().__init__(f"task {task!r} has no model; run: fedmq aggregator init --task {task}")
        self.task = task


@dataclass(kw_only=True, slots=True, eq=False)
class _TaskRuntime:
    settings: TaskSettings
    keys: TaskKeys
    context: IngestContext
    release: tuple[int, bytes] | None = None
    """The latest release this process must (re)publish: (version, payload)."""
    published: int = 0
    leader: Leader | None = field(default=None, repr=False)

    def observe_version(self, version: int) -> None:
        if version > self.context.version:
            self.context = replace(self.context, version=version)


@dataclass(frozen=True, kw_only=True, slots=True)
class _Filed:
    """What storing the accepted updates of one task in a batch returned."""

    version: int
    batch: list[tuple[int, Accepted]]
    """(index in the batch, update) of every accepted update of the task."""
    stream_ids: list[str | None]
    """Per update of ``batch``: its new stream id, or None for a duplicate."""


class AggregatorService:
    """Runs every configured task of one replica until stop() (or SIGTERM via the CLI)."""

    def __init__(self, config: AggregatorConfig, signing_key: SigningKey) -> None:
        """Prepare; connections are made in run()."""
        self.config = config
        self.metrics = ServiceMetrics()
        self._key = signing_key
        self._share_group = config.mqtt.share_group or keyed_share_group(signing_key)
        self._stop = asyncio.Event()
        self._releases_pending = asyncio.Event()
        self._tasks: dict[str, _TaskRuntime] = {}
        self._store: Store | None = None
        self.subscribed = asyncio.Event()
        """Set once the update subscriptions of the first connection are in place."""

    def stop(self) -> None:
        """Finish the batch and commit in progress, then disconnect and return from run()."""
        self._stop.set()

    async def run(self) -> None:
        """Serve until stop(); raise TaskNotInitializedError for a task without a model."""
        self._store = Store.from_url(self.config.redis_url)
        try:
            await self._load_tasks(self._store)
            if self.config.metrics_port:
                self.metrics.serve(self.config.metrics_host, self.config.metrics_port)
            async with asyncio.TaskGroup() as group:
                group.create_task(self._mqtt_loop(self._store))
                for runtime in self._tasks.values():
                    if runtime.leader is not None:
                        group.create_task(runtime.leader.run(self._stop))
        finally:
            self.metrics.close()
            await self._store.aclose()

    async def _load_tasks(self, store: Store) -> None:
        backoff = self.config.mqtt.reconnect_min_s
        while True:
            try:
                for settings in self.config.tasks:
                    self._tasks[settings.name] = await self._load_task(store, settings)
                return
            except StoreUnavailableError as exc:
                if self._stop.is_set():
                    raise
                logger.warning("redis unavailable at start (%s); retrying", exc)
                await asyncio.sleep(backoff)
                backoff = min(backoff * 2, self.config.mqtt.reconnect_max_s)

    async def _load_task(self, store: Store, settings: TaskSettings) -> _TaskRuntime:
        keys = TaskKeys.of(settings.name)
        state = await load_committed_state(store, keys, self._key)
        if state is None:
            raise TaskNotInitializedError(settings.name)
        context = IngestContext(
            task=settings.name,
            layout=state.model,
            version=state.version,
            admission=settings.strategy.build(state=None, opened_at=time.time()),
            max_norm=settings.max_norm,
            max_update_bytes=settings.max_update_bytes,
            limits=DEFAULT_LIMITS,
        )
        runtime = _TaskRuntime(settings=settings, keys=keys, context=context)
        runtime.leader = Leader(
            task=settings,
            store=store,
            signing_key=self._key,
            replica_id=self.config.replica_id,
            settings=self.config.leader,
            history=self.config.history,
            dedupe_window_s=self.config.ingest.dedupe_window_s,
            metrics=self.metrics,
            on_release=self._queue_release,
            on_version=runtime.observe_version,
        )
        self.metrics.model_version.labels(settings.name).set(state.version)
        logger.info(
            "task %s: loaded v%d (%s)", settings.name, state.version, settings.strategy.name
        )
        return runtime

    def _queue_release(self, task: str, version: int, payload: bytes, *, rebuilt: bool) -> None:
        """Queue a release for (re)publishing. A leader's rebuild is what Redis holds, so it
        wins even over a higher version queued or published before (Redis lost the tail of
        its AOF: possible under appendfsync everysec)."""
        runtime = self._tasks[task]
        if rebuilt or runtime.release is None or version >= runtime.release[0]:
            if version < runtime.published:
                runtime.published = 0
            runtime.release = (version, payload)
            self._releases_pending.set()

    async def _mqtt_loop(self, store: Store) -> None:
        settings = self.config.mqtt
        session = MqttSession(settings, share_group=self._share_group)
        backoff = settings.reconnect_min_s
        while not self._stop.is_set():
            try:
                async with session:
                    logger.info(
                        "connected to mqtt://%s:%d as %s",
                        settings.host,
                        settings.port,
                        settings.client_id,
                    )
                    backoff = settings.reconnect_min_s
                    for runtime in self._tasks.values():
                        runtime.published = 0
                        await session.subscribe(session.update_filter(runtime.settings.name))
                    self.subscribed.set()
                    self._releases_pending.set()
                    async with asyncio.TaskGroup() as group:
                        publisher = group.create_task(self._publish_releases(session))
                        await self._consume(session, store)
                        publisher.cancel()
            except* aiomqtt.MqttError as errors:
                logger.warning("mqtt connection lost: %s", errors.exceptions[0])
            except* StoreUnavailableError as errors:
                logger.warning("redis unavailable, updates left un-acked: %s", errors.exceptions[0])
                await self._wait_for_redis(store)
            if self._stop.is_set():
                break
            delay = backoff * random.uniform(0.5, 1.5)
            await _sleep_unless(self._stop, delay)
            backoff = min(backoff * 2, settings.reconnect_max_s)

    async def _wait_for_redis(self, store: Store) -> None:
        """Stay off the broker until Redis answers again: each reconnect would take a window
        of redelivered updates that cannot be stored, then drop the connection again."""
        delay = self.config.mqtt.reconnect_min_s
        while not self._stop.is_set():
            try:
                await store.ping()
            except StoreUnavailableError:
                await _sleep_unless(self._stop, delay * random.uniform(0.5, 1.5))
                delay = min(delay * 2, self.config.mqtt.reconnect_max_s)
            else:
                return

    async def _publish_releases(self, session: MqttSession) -> None:
        while True:
            await self._releases_pending.wait()
            self._releases_pending.clear()
            for runtime in self._tasks.values():
                if runtime.release is None or runtime.release[0] <= runtime.published:
                    continue
                version, payload = runtime.release
                await session.publish_retained(
                    model_topic(runtime.settings.name, root=self.config.mqtt.root), payload
                )
                runtime.published = version

    async def _consume(self, session: MqttSession, store: Store) -> None:
        """Batch messages and ingest up to ``pipeline_depth`` batches at once, so checking
        the next batch overlaps Redis storing the previous one."""
        limits = self.config.ingest
        slots = asyncio.Semaphore(limits.pipeline_depth)

        async def ingest(batch: list[aiomqtt.Message]) -> None:
            try:
                await self._ingest(session, store, batch)
            finally:
                slots.release()

        async with asyncio.TaskGroup() as group:
            while True:
                await slots.acquire()
                first = await session.next_message(self._stop)
                if first is None:
                    slots.release()
                    return
                drained = session.drain(limits.batch_max_messages - 1, limits.batch_max_bytes)
                group.create_task(ingest([first, *drained]))

    async def _ingest(
        self, session: MqttSession, store: Store, messages: Sequence[aiomqtt.Message]
    ) -> None:
        began = time.perf_counter()
        leaders = [r.leader for r in self._tasks.values() if r.leader is not None]
        for leader in leaders:
            leader.filing()
        size = sum(len(m.payload) for m in messages if isinstance(m.payload, bytes))
        try:
            if size >= self.config.ingest.offload_bytes:
                verdicts, stored = await asyncio.to_thread(self._check_and_store, store, messages)
            else:
                verdicts, stored = await self._check_and_store_here(store, messages)
        finally:
            for leader in leaders:
                leader.filed()
        statuses: dict[int, str] = {}
        for task, filed in stored.items():
            runtime = self._tasks[task]
            runtime.observe_version(filed.version)
            for (i, _), stream_id in zip(filed.batch, filed.stream_ids, strict=True):
                statuses[i] = "accepted" if stream_id is not None else "duplicate"
        for message in messages:
            session.ack(message)
        for i, (task, verdict) in enumerate(verdicts):
            self._answer(session, task, verdict, statuses.get(i))
        self.metrics.ingest_seconds.observe(time.perf_counter() - began)

    def _check_and_store(
        self, store: Store, messages: Sequence[aiomqtt.Message]
    ) -> tuple[list[tuple[str, Verdict | None]], dict[str, _Filed]]:
        """Decode, validate and durably store a big batch (worker thread, off the event
        loop): one Redis round trip per task, each payload sent as the bytes received."""
        verdicts = self._check_all(messages)
        now = time.time()
        stored: dict[str, _Filed] = {}
        for runtime, batch in self._accepted(verdicts):
            version, ids = store.ingest_blocking(runtime.keys, [a for _, a in batch], now)
            stored[runtime.settings.name] = _remember(runtime, batch, version, ids)
        return verdicts, stored

    async def _check_and_store_here(
        self, store: Store, messages: Sequence[aiomqtt.Message]
    ) -> tuple[list[tuple[str, Verdict | None]], dict[str, _Filed]]:
        """_check_and_store() on the event loop, for small batches (a thread hop and the
        GIL hand-over would cost more than the copies they save)."""
        verdicts = self._check_all(messages)
        now = time.time()
        stored: dict[str, _Filed] = {}
        for runtime, batch in self._accepted(verdicts):
            version, ids = await store.ingest(runtime.keys, [a for _, a in batch], now)
            stored[runtime.settings.name] = _remember(runtime, batch, version, ids)
        return verdicts, stored

    def _accepted(
        self, verdicts: Sequence[tuple[str, Verdict | None]]
    ) -> list[tuple[_TaskRuntime, list[tuple[int, Accepted]]]]:
        """Per task with accepted updates: (index in the batch, update) of each."""
        found = []
        for name, runtime in self._tasks.items():
            batch = [
                (i, v)
                for i, (task, v) in enumerate(verdicts)
                if task == name and isinstance(v, Accepted)
            ]
            if batch:
                found.append((runtime, batch))
        return found

    def _check_all(self, messages: Sequence[aiomqtt.Message]) -> list[tuple[str, Verdict | None]]:
        """Decode and validate every message."""
        return [self._check(m) for m in messages]

    def _check(self, message: aiomqtt.Message) -> tuple[str, Verdict | None]:
        try:
            parsed = parse_topic(message.topic.value, root=self.config.mqtt.root)
        except SerializationError:
            logger.warning("ignoring message on unexpected topic %r", message.topic.value)
            return "", None
        runtime = self._tasks.get(parsed.task)
        if runtime is None or parsed.kind != "update" or parsed.device_id is None:
            logger.warning("ignoring message on unexpected topic %r", message.topic.value)
            return "", None
        payload = message.payload if isinstance(message.payload, bytes) else b""
        self.metrics.received.labels(parsed.task).inc()
        self.metrics.bytes_in.labels(parsed.task).inc(len(payload))
        try:
            return parsed.task, check_update(runtime.context, parsed.device_id, payload)
        except Exception as exc:
            logger.exception(
                "task %s: update from %s broke the checks", parsed.task, parsed.device_id
            )
            return parsed.task, Rejected(
                device_id=parsed.device_id,
                update_id=UNKNOWN_UPDATE_ID,
                reason="malformed",
                detail=type(exc).__name__,
            )

    def _answer(
        self, session: MqttSession, task: str, verdict: Verdict | None, status: str | None
    ) -> None:
        if verdict is None:
            return
        runtime = self._tasks[task]
        if isinstance(verdict, Rejected):
            self.metrics.rejected.labels(task, verdict.reason).inc()
            logger.warning(
                "task %s: rejected update from %s: %s (%s)",
                task,
                verdict.device_id,
                verdict.reason,
                verdict.detail,
            )
            receipt = Receipt(
                task=task,
                device_id=verdict.device_id,
                update_id=verdict.update_id,
                status="rejected",
                reason=verdict.reason,
                model_version=runtime.context.version,
            )
        else:
            duplicate = status == "duplicate"
            (self.metrics.duplicates if duplicate else self.metrics.accepted).labels(task).inc()
            receipt = Receipt(
                task=task,
                device_id=verdict.device_id,
                update_id=verdict.update_id,
                status="duplicate" if duplicate else "accepted",
                model_version=runtime.context.version,
            )
        topic = receipt_topic(task, verdict.device_id, root=self.config.mqtt.root)
        session.publish_nowait(topic, receipt.encode())


def _remember(
    runtime: _TaskRuntime, batch: list[tuple[int, Accepted]], version: int, ids: list[str | None]
) -> _Filed:
    """Hand the newly stored updates to the leader as soon as Redis has replied (in the
    ingest worker thread for big batches), so that it almost always has the decoded update
    when it reads the stream entry instead of reading the payload back and decoding it."""
    if runtime.leader is not None:
        for (_, accepted), stream_id in zip(batch, ids, strict=True):
            if stream_id is not None and accepted.update is not None:
                runtime.leader.remember(accepted.update_id, accepted.update)
    return _Filed(version=version, batch=batch, stream_ids=ids)


async def _sleep_unless(stop: asyncio.Event, seconds: float) -> None:
    try:
        await asyncio.wait_for(stop.wait(), timeout=seconds)
    except TimeoutError:
        return
