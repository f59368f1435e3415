"""The Redis store against a real Redis: batched dedupe ingest, fenced atomic commits."""

from __future__ import annotations

import asyncio

import pytest

from aggregator.ingest import Accepted
from aggregator.keys import TaskKeys
from aggregator.store import CommitRequest, Store

pytestmark = pytest.mark.integration


def _accepted(uid: bytes, device: str = "dev-a") -> Accepted:
    return Accepted(
        device_id=device, update_id=uid, base_version=1, num_samples=3, payload=b"payload-" + uid
    )


async def _initialised(store: Store, keys: TaskKeys) -> None:
    outcome, _ = await store.initialise(keys, version=1, release=b"v1", now=1.0, force=False)
    assert outcome == "ok"


def test_store_ingest_dedupes_within_and_across_batches(redis_url: str, task: str) -> None:
    """A batch is one call; repeated ids (same batch or later) come back as duplicates."""

    async def scenario() -> None:
        store, keys = Store.from_url(redis_url), TaskKeys.of(task)
        try:
            await _initialised(store, keys)
            a, b = b"a" * 16, b"b" * 16
            version, ids = await store.ingest(keys, [_accepted(a), _accepted(b), _accepted(a)], 5.0)
            assert version == 1
            assert ids[0] is not None
            assert ids[1] is not None
            assert ids[2] is None
            _, again = await store.ingest(keys, [_accepted(b), _accepted(b"c" * 16)], 6.0)
            assert again[0] is None
            assert again[1] is not None
            entries = await store.read_updates(keys, "0-0", 100, None)
            assert [e.update_id for e in entries] == [a, b, b"c" * 16]
            assert [e.num_samples for e in entries] == [3, 3, 3]
            assert await store.payloads(keys, [b]) == [b"payload-" + b]
        finally:
            await store.aclose()

    asyncio.run(scenario())


def test_store_commit_consumes_atomically_and_fences(redis_url: str, task: str) -> None:
    """A commit needs the expected version, the lease and every consumed entry; it removes
    exactly the consumed entries and keeps the history."""

    async def scenario() -> None:
        store, keys = Store.from_url(redis_url), TaskKeys.of(task)
        try:
            await _initialised(store, keys)
            uids = [bytes([i]) * 16 for i in range(3)]
            await store.ingest(keys, [_accepted(u) for u in uids], 5.0)
            entries = await store.read_updates(keys, "0-0", 100, None)
            assert await store.hold_lease(keys, "agg-0", 5.0)
            assert not await store.hold_lease(keys, "agg-1", 5.0)

            def request(expected: int, owner: str) -> CommitRequest:
                return CommitRequest(
                    expected_version=expected,
                    release=b"v2",
                    optimizer=b"",
                    opened_at=1.0,
                    now=7.0,
                    owner=owner,
                    folded=2,
                    consumed=entries[:2],
                )

            assert (await store.commit(keys, request(2, "agg-0")))[0] == "conflict"
            assert (await store.commit(keys, request(1, "agg-1")))[0] == "fenced"
            assert await store.commit(keys, request(1, "agg-0")) == ("ok", "2")
            assert (await store.commit(keys, request(2, "agg-0")))[0] == "missing"
            left = await store.read_updates(keys, "0-0", 100, None)
            assert [e.update_id for e in left] == [uids[2]]
            assert await store.payloads(keys, uids) == [None, None, b"payload-" + uids[2]]
            state = await store.load(keys)
            assert state is not None
            assert (state.version, state.release, state.updates_total) == (2, b"v2", 2)
            assert await store.stored_release(keys, 1) == b"v1"
            assert await store.stored_release(keys, 2) == b"v2"
        finally:
            await store.aclose()

    asyncio.run(scenario())


def test_store_initialise_refuses_existing_task_unless_forced(redis_url: str, task: str) -> None:
    """init creates v1 once; force replaces the model by the next version, dropping pending."""

    async def scenario() -> None:
        store, keys = Store.from_url(redis_url), TaskKeys.of(task)
        try:
            await _initialised(store, keys)
            await store.ingest(keys, [_accepted(b"x" * 16)], 2.0)
            again = await store.initialise(keys, version=1, release=b"v1", now=2.0, force=False)
            assert again == ("exists", "1")
            forced = await store.initialise(keys, version=2, release=b"n", now=3.0, force=True)
            assert forced == ("ok", "2")
            assert await store.read_updates(keys, "0-0", 10, None) == []
            status = await store.status(keys, history=5)
            assert status is not None
            assert (status.version, status.pending, status.history) == (2, 0, (1, 2))
        finally:
            await store.aclose()

    asyncio.run(scenario())
