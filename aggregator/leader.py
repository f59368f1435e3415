"""The fold loop of the lease holder: stream -> strategy -> atomic commit -> release."""

from __future__ import annotations

import asyncio
import logging
import threading
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from typing import Protocol

from aggregator.config import LeaderSettings, TaskSettings
from aggregator.errors import AggregatorError
from aggregator.ingest import device_update
from aggregator.keys import TaskKeys
from aggregator.metrics import ServiceMetrics
from aggregator.recent import RecentUpdates
from aggregator.release import committed_state, release_metadata, sign_release
from aggregator.state import CommittedState, carried_metadata, pack_optimizer_state
from aggregator.store import (
    CommitOutcome,
    CommitRequest,
    Store,
    StoreUnavailableError,
    StreamEntry,
)
from aggregator.strategies.base import DeviceUpdate, Strategy
from aggregator.strategies.fedavg import FedAvg
from serialization import ModelUpdate, SerializationError, SigningKey

__all__ = ["Leader", "ReleaseSink", "load_committed_state"]

logger = logging.getLogger(__name__)

_FILING_WAIT_S = 0.5
"""How long the fold waits for in-flight ingests before reading a payload back."""


class ReleaseSink(Protocol):
    """Takes every release this leader must publish."""

    def __call__(self, task: str, version: int, payload: bytes, *, rebuilt: bool) -> None:
        """``rebuilt``: the committed release found in Redis when (re)building, which
        replaces whatever was queued, even a higher version."""


@dataclass(kw_only=True, slots=True)
class _Round:
    """What the leader holds between two commits."""

    state: CommittedState
    strategy: Strategy
    cursor: str = "0-0"
    consumed: list[StreamEntry]
    folded: int = 0


async def load_committed_state(
    store: Store, keys: TaskKeys, key: SigningKey
) -> CommittedState | None:
    """The task's committed state from Redis, its release verified off the event loop;
    None when the task has no model yet."""
    stored = await store.load(keys)
    if stored is None:
        return None
    return await asyncio.to_thread(
        committed_state,
        key=key,
        release=stored.release,
        optimizer=stored.optimizer,
        opened_at=stored.opened_at,
        updates_total=stored.updates_total,
    )


class Leader:
    """Folds a task's update stream and commits each version while holding the lease.

    Correctness never depends on the lease: the commit script checks the expected version
    (and that every consumed entry is still in the stream), so a deposed leader's commit
    fails and it rebuilds. The lease only keeps replicas from doing the same work twice.
    """

    def __init__(
        self,
        *,
        task: TaskSettings,
        store: Store,
        signing_key: SigningKey,
        replica_id: str,
        settings: LeaderSettings,
        history: int,
        dedupe_window_s: float,
        metrics: ServiceMetrics,
        on_release: ReleaseSink,
        on_version: Callable[[int], None],
        recent_bytes: int = 64 << 20,
    ) -> None:
        """Wire the loop; nothing runs until run()."""
        self._task = task
        self._keys = TaskKeys.of(task.name)
        self._store = store
        self._key = signing_key
        self._owner = replica_id
        self._settings = settings
        self._history = history
        self._dedupe_window_s = dedupe_window_s
        self._metrics = metrics
        self._on_release = on_release
        self._on_version = on_version
        self._round: _Round | None = None
        self._lease_renewed = 0.0
        self._recent = RecentUpdates(recent_bytes)
        self._recent_lock = threading.Lock()
        """remember() runs in ingest worker threads, take() and clear() on the event loop."""
        self._filing = 0
        self._filed = asyncio.Event()

    def remember(self, update_id: bytes, update: DeviceUpdate) -> None:
        """Keep a just-stored update for the fold, if this replica is the leader and there
        is room (called from ingest worker threads)."""
        if self._round is None:
            return
        with self._recent_lock:
            self._recent.put(update_id, update)

    async def run(self, stop: asyncio.Event) -> None:
        """Hold the lease and fold until ``stop``; then give the lease up."""
        backoff = self._settings.block_s
        while not stop.is_set():
            try:
                if not await self._hold_lease():
                    await _wait(stop, self._settings.lease_ttl_s / 3)
                    continue
                if self._round is None:
                    self._round = await self._rebuild()
                await self._cycle()
                backoff = self._settings.block_s
            except StoreUnavailableError as exc:
                logger.warning("task %s: redis unavailable (%s); retrying", self._task.name, exc)
                self._round = None
                await _wait(stop, backoff)
                backoff = min(backoff * 2, 10.0)
            except AggregatorError:
                logger.exception("task %s: fold or commit failed; rebuilding", self._task.name)
                self._round = None
                await _wait(stop, backoff)
                backoff = min(backoff * 2, 10.0)
        self._metrics.leader.labels(self._task.name).set(0)
        try:
            await self._store.release_lease(self._keys, self._owner)
        except StoreUnavailableError:
            logger.warning("task %s: could not release the lease", self._task.name)

    async def _hold_lease(self) -> bool:
        now = time.monotonic()
        if self._round is not None and now - self._lease_renewed < self._settings.lease_ttl_s / 3:
            return True
        held = await self._store.hold_lease(self._keys, self._owner, self._settings.lease_ttl_s)
        self._metrics.leader.labels(self._task.name).set(1 if held else 0)
        if held:
            self._lease_renewed = now
        elif self._round is not None:
            logger.info("task %s: lease lost to another replica", self._task.name)
            self._round = None
            with self._recent_lock:
                self._recent.clear()
        return held

    async def _rebuild(self) -> _Round:
        """Start over from the committed state and every update still in the stream."""
        state = await load_committed_state(self._store, self._keys, self._key)
        if state is None:
            raise StoreUnavailableError("load", LookupError(f"task {self._task.name} has no model"))
        opened_at = state.opened_at or time.time()
        strategy = self._task.strategy.build(state=state.optimizer, opened_at=opened_at)
        logger.info("task %s: leading from v%d", self._task.name, state.version)
        self._metrics.model_version.labels(self._task.name).set(state.version)
        self._metrics.buffer_fill.labels(self._task.name).set(0)
        self._on_version(state.version)
        self._on_release(self._task.name, state.version, state.release, rebuilt=True)
        return _Round(state=state, strategy=strategy, consumed=[])

    async def _cycle(self) -> None:
        current = self._round
        if current is None:
            return
        entries = await self._store.read_updates(
            self._keys,
            current.cursor,
            self._settings.read_count,
            int(self._settings.block_s * 1000),
        )
        if not entries:
            if current.strategy.pending and current.strategy.ready(time.time()):
                await self._release(current)
            elif await self._store.version(self._keys) != current.state.version:
                logger.info("task %s: version moved elsewhere; rebuilding", self._task.name)
                self._round = None
            return
        current.cursor = entries[-1].stream_id
        prepared = await self._prepared(entries)
        missing = [e.update_id for e, u in zip(entries, prepared, strict=True) if u is None]
        fetched = dict(zip(missing, await self._store.payloads(self._keys, missing), strict=True))
        start = 0
        while start < len(entries) and self._round is current:
            began = time.perf_counter()
            start = await asyncio.to_thread(self._fold, current, entries, prepared, fetched, start)
            self._metrics.fold_seconds.labels(self._task.name).observe(time.perf_counter() - began)
            self._metrics.buffer_fill.labels(self._task.name).set(current.strategy.pending)
            if current.strategy.pending and current.strategy.ready(time.time()):
                await self._release(current)

    async def _prepared(self, entries: Sequence[StreamEntry]) -> list[DeviceUpdate | None]:
        """The decoded updates of ``entries`` this replica remembered (None: read it back).

        Redis answers our ingest and the leader's stream read in the same pass, so an entry
        of ours may be read just before its ingest thread has remembered it: while ingests
        are in flight, wait for them (bounded) rather than read 4 MB back and decode it.
        """
        with self._recent_lock:
            prepared = [self._recent.take(e.update_id) for e in entries]
        deadline = time.monotonic() + _FILING_WAIT_S
        while self._filing and any(u is None for u in prepared):
            self._filed.clear()
            try:
                await asyncio.wait_for(self._filed.wait(), deadline - time.monotonic())
            except TimeoutError:
                break
            with self._recent_lock:
                prepared = [
                    u if u is not None else self._recent.take(e.update_id)
                    for e, u in zip(entries, prepared, strict=True)
                ]
        return prepared

    def filing(self) -> None:
        """An ingest of this replica started (event loop)."""
        self._filing += 1

    def filed(self) -> None:
        """An ingest of this replica ended, stored or failed (event loop)."""
        self._filing -= 1
        self._filed.set()

    def _fold(
        self,
        current: _Round,
        entries: Sequence[StreamEntry],
        prepared: Sequence[DeviceUpdate | None],
        fetched: Mapping[bytes, bytes | None],
        start: int,
    ) -> int:
        """Fold entries from ``start`` until the strategy is ready; return where it stopped.

        Runs in a worker thread. Entries the strategy refuses now (e.g. too stale by the
        time they are folded) are consumed without being folded and counted as dropped.
        """
        version = current.state.version
        task = self._task.name
        for index in range(start, len(entries)):
            entry = entries[index]
            current.consumed.append(entry)
            update = prepared[index]
            if update is None:
                payload = fetched.get(entry.update_id)
                if payload is None:
                    self._metrics.dropped.labels(task, "missing_payload").inc()
                    continue
                try:
                    update = device_update(ModelUpdate.decode(payload))
                except SerializationError as exc:
                    self._metrics.dropped.labels(task, exc.reason).inc()
                    continue
            reason = current.strategy.admit(update, version)
            if reason is not None:
                self._metrics.dropped.labels(task, str(reason)).inc()
                continue
            current.strategy.fold(update, version)
            current.folded += 1
            self._metrics.folded.labels(task).inc()
            self._metrics.staleness.labels(task).observe(version - update.base_version)
            if current.strategy.ready(time.time()):
                return index + 1
        return len(entries)

    def _step(self, current: _Round, now: float) -> tuple[CommittedState, CommitRequest]:
        """Step the strategy and sign the release (worker thread)."""
        state = current.state
        result = current.strategy.step(state.model, state.version, now)
        facts = {k: v for k, v in result.metadata.items()}
        release = sign_release(
            key=self._key,
            task=self._task.name,
            version=result.new_version,
            parent_version=state.version,
            model=result.new_model,
            update_count=result.consumed_count,
            created_at=now,
            metadata=release_metadata(carried_metadata(state.metadata), facts),
        )
        strategy = current.strategy
        opened_at = strategy.opened_at if isinstance(strategy, FedAvg) else now
        new_state = CommittedState(
            version=result.new_version,
            release=release,
            model=result.new_model,
            optimizer=result.new_state,
            opened_at=opened_at,
            updates_total=state.updates_total + current.folded,
            metadata=release_metadata(carried_metadata(state.metadata), facts),
        )
        request = CommitRequest(
            expected_version=state.version,
            release=release,
            optimizer=pack_optimizer_state(result.new_state),
            opened_at=opened_at,
            now=now,
            owner=self._owner,
            folded=current.folded,
            consumed=tuple(current.consumed),
            history=self._history,
            dedupe_cutoff=now - self._dedupe_window_s,
        )
        return new_state, request

    def _step_and_commit(
        self, current: _Round, now: float
    ) -> tuple[CommittedState, CommitRequest, CommitOutcome, str]:
        """Step, sign and commit in one worker-thread hop (the release never passes through
        the event loop on its way to Redis)."""
        new_state, request = self._step(current, now)
        outcome, detail = self._store.commit_blocking(self._keys, request)
        return new_state, request, outcome, detail

    async def _release(self, current: _Round) -> None:
        # A fold that outlasted the lease (a slow machine, a long read-back) must not get
        # its own commit fenced: renew first (lost to another replica: _round is reset).
        if not await self._hold_lease():
            return
        began = time.perf_counter()
        new_state, request, outcome, detail = await asyncio.to_thread(
            self._step_and_commit, current, time.time()
        )
        task = self._task.name
        if outcome != "ok":
            logger.warning(
                "task %s: commit of v%d refused (%s %s); rebuilding",
                task,
                new_state.version,
                outcome,
                detail,
            )
            self._round = None
            return
        elapsed = time.perf_counter() - began
        self._metrics.release_seconds.labels(task).observe(elapsed)
        self._metrics.model_version.labels(task).set(new_state.version)
        self._metrics.buffer_fill.labels(task).set(0)
        current.state = new_state
        current.consumed = []
        current.folded = 0
        self._on_version(new_state.version)
        self._on_release(task, new_state.version, new_state.release, rebuilt=False)
        logger.info(
            "task %s: released v%d from %d updates (%d consumed, staleness mean %s) in %.1f ms",
            task,
            new_state.version,
            request.folded,
            len(request.consumed),
            new_state.metadata.get("staleness_mean", "-"),
            elapsed * 1000,
        )


async def _wait(stop: asyncio.Event, seconds: float) -> None:
    try:
        await asyncio.wait_for(stop.wait(), timeout=seconds)
    except TimeoutError:
        return
