"""The Redis side of the aggregator: redis.asyncio calls and the Lua scripts, nothing else."""

from __future__ import annotations

import asyncio
import contextlib
import secrets
from collections.abc import AsyncIterator, Iterator, Sequence
from dataclasses import dataclass
from importlib import resources
from typing import Any, Literal, TypeAlias

import redis
import redis.asyncio as aioredis
from redis.exceptions import ConnectionError as RedisConnectionError
from redis.exceptions import NoScriptError, ResponseError
from redis.exceptions import TimeoutError as RedisTimeoutError

from aggregator.errors import AggregatorError
from aggregator.ingest import Accepted
from aggregator.keys import TaskKeys

__all__ = [
    "CommitOutcome",
    "CommitRequest",
    "Store",
    "StoreUnavailableError",
    "StoredState",
    "StreamEntry",
    "TaskStatus",
]

_INCOMING_TTL_MS = 600_000
"""An incoming payload key outlives any ingest call; only a failed one leaves it behind."""
_TIMEOUTS: dict[str, Any] = {
    "socket_connect_timeout": 5,
    "socket_timeout": 15,
    "health_check_interval": 30,
}
"""Client timeouts that never hang the service for long."""
_STORE_ERRORS = (RedisConnectionError, RedisTimeoutError, ResponseError, OSError)

CommitOutcome: TypeAlias = Literal["ok", "conflict", "fenced", "missing", "exists"]


class StoreUnavailableError(AggregatorError):
    """Redis could not be reached or answered with an error; ``.operation`` says where."""

    def __init__(self, operation: str, cause: BaseException) -> None:
        super().__init__(f"redis {operation} failed: {cause}")
        self.operation = operation
        self.cause = cause


@dataclass(frozen=True, kw_only=True, slots=True)
class StreamEntry:
    """One accepted, not yet committed update as listed in the task's stream."""

    stream_id: str
    update_id: bytes
    device_id: str
    base_version: int
    num_samples: int


@dataclass(frozen=True, kw_only=True, slots=True)
class StoredState:
    """The raw committed state: the state hash fields and the current release payload."""

    version: int
    release: bytes
    optimizer: bytes
    opened_at: float
    committed_at: float
    updates_total: int


@dataclass(frozen=True, kw_only=True, slots=True, eq=False)
class CommitRequest:
    """Everything the commit script writes; ``owner`` "" skips the lease check (rollback)."""

    expected_version: int
    release: bytes
    optimizer: bytes
    opened_at: float
    now: float
    owner: str
    folded: int
    consumed: Sequence[StreamEntry] = ()
    history: int = 10
    dedupe_cutoff: float = 0.0


@dataclass(frozen=True, kw_only=True, slots=True)
class TaskStatus:
    """What ``fedmq aggregator status`` shows for a task."""

    version: int
    updates_total: int
    pending: int
    dedupe_ids: int
    devices: int
    leader: str | None
    committed_at: float
    history: tuple[int, ...]


def _script(name: str) -> str:
    return resources.files("aggregator").joinpath(f"lua/{name}.lua").read_text()


def _text(value: Any) -> str:
    return value.decode() if isinstance(value, bytes) else str(value)


@contextlib.asynccontextmanager
async def _translated(operation: str) -> AsyncIterator[None]:
    try:
        yield
    except _STORE_ERRORS as exc:
        raise StoreUnavailableError(operation, exc) from exc


@contextlib.contextmanager
def _translated_blocking(operation: str) -> Iterator[None]:
    try:
        yield
    except _STORE_ERRORS as exc:
        raise StoreUnavailableError(operation, exc) from exc


class Store:
    """Durable task state in Redis; every state change is one Lua script call.

    The big writes (update payloads, releases) go through a synchronous client from a
    worker thread: redis.asyncio on Python 3.11 joins a whole pipeline into one buffer and
    copies it again into the transport, on the event loop; the blocking client sends each
    large value as it is, with the GIL released.
    """

    def __init__(self, client: aioredis.Redis, writer: redis.Redis) -> None:
        """Wrap a redis.asyncio client and a blocking client for the big writes, both on
        the same server and created with decode_responses=False."""
        self._redis = client
        self._writer = writer
        self._ingest = writer.register_script(_script("ingest"))
        self._ingest_async = client.register_script(_script("ingest"))
        self._commit = writer.register_script(_script("commit"))
        self._init = client.register_script(_script("init"))
        self._lease = client.register_script(_script("lease"))

    @classmethod
    def from_url(cls, url: str) -> Store:
        """A store on ``url`` with timeouts that never hang the service for long."""
        client = aioredis.Redis.from_url(url, decode_responses=False, **_TIMEOUTS)
        writer = redis.Redis.from_url(url, decode_responses=False, **_TIMEOUTS)
        return cls(client, writer)

    async def aclose(self) -> None:
        """Close the connection pools."""
        await self._redis.aclose()
        self._writer.close()

    async def ping(self) -> None:
        """Raise StoreUnavailableError unless Redis answers."""
        async with _translated("ping"):
            await self._redis.ping()

    async def ingest(
        self, keys: TaskKeys, updates: Sequence[Accepted], now: float
    ) -> tuple[int, list[str | None]]:
        """ingest_blocking() on the event loop, for small batches (no thread hop)."""
        pipe = self._redis.pipeline(transaction=False)
        script_keys, args = _queue_payloads(pipe, keys, updates, now)
        pipe.evalsha(self._ingest.sha, len(script_keys), *script_keys, *args)
        async with _translated("ingest"):
            reply = _script_reply(await pipe.execute(raise_on_error=False))
            if reply is None:
                reply = await self._ingest_async(keys=script_keys, args=args)
        return _ingest_reply(reply)

    def ingest_blocking(
        self, keys: TaskKeys, updates: Sequence[Accepted], now: float
    ) -> tuple[int, list[str | None]]:
        """Store a batch in one round trip; return the version and, per update, its stream
        id (new) or None (duplicate). Blocking: call it from a worker thread.

        Payloads are SET under short-lived incoming keys in the same pipeline and the
        script renames or drops them, so each payload is copied into Redis once and each
        payload object is sent as it is (no join into one buffer).
        """
        pipe = self._writer.pipeline(transaction=False)
        script_keys, args = _queue_payloads(pipe, keys, updates, now)
        pipe.evalsha(self._ingest.sha, len(script_keys), *script_keys, *args)
        with _translated_blocking("ingest"):
            reply = _script_reply(pipe.execute(raise_on_error=False))
            if reply is None:
                reply = self._ingest(keys=script_keys, args=args)
        return _ingest_reply(reply)

    async def load(self, keys: TaskKeys) -> StoredState | None:
        """The committed state, or None if the task was never initialised."""
        async with _translated("load"):
            pipe = self._redis.pipeline(transaction=True)
            pipe.hgetall(keys.state)
            pipe.get(keys.model)
            fields, release = await pipe.execute()
        if not fields or release is None:
            return None
        return StoredState(
            version=int(fields[b"version"]),
            release=bytes(release),
            optimizer=bytes(fields.get(b"optimizer", b"")),
            opened_at=float(fields.get(b"opened_at", 0.0)),
            committed_at=float(fields.get(b"committed_at", 0.0)),
            updates_total=int(fields.get(b"updates_total", 0)),
        )

    async def version(self, keys: TaskKeys) -> int:
        """The committed version (0 if none)."""
        async with _translated("version"):
            value = await self._redis.hget(keys.state, "version")
        return int(value) if value is not None else 0

    async def read_updates(
        self, keys: TaskKeys, after: str, count: int, block_ms: int | None
    ) -> list[StreamEntry]:
        """Stream entries after ``after`` ("0-0" for all), waiting up to ``block_ms``."""
        async with _translated("read_updates"):
            reply: Any = await self._redis.xread({keys.updates: after}, count=count, block=block_ms)
        entries: list[StreamEntry] = []
        for _stream, items in reply or []:
            for stream_id, fields in items:
                entries.append(
                    StreamEntry(
                        stream_id=_text(stream_id),
                        update_id=bytes(fields[b"u"]),
                        device_id=_text(fields[b"d"]),
                        base_version=int(fields[b"b"]),
                        num_samples=int(fields[b"n"]),
                    )
                )
        return entries

    async def payloads(self, keys: TaskKeys, update_ids: Sequence[bytes]) -> list[bytes | None]:
        """The stored payloads of ``update_ids`` (None where missing)."""
        if not update_ids:
            return []
        async with _translated("payloads"):
            values: Any = await self._redis.mget([keys.payload(u) for u in update_ids])
        return [None if v is None else bytes(v) for v in values]

    async def commit(self, keys: TaskKeys, request: CommitRequest) -> tuple[CommitOutcome, str]:
        """commit_blocking() in a worker thread."""
        return await asyncio.to_thread(self.commit_blocking, keys, request)

    def commit_blocking(self, keys: TaskKeys, request: CommitRequest) -> tuple[CommitOutcome, str]:
        """Run the commit script; return ("ok", new version) or why it refused.

        Blocking (call it from a worker thread): the release is sent as it is.
        """
        new_version = request.expected_version + 1
        expired = new_version - request.history
        args: list[Any] = [
            request.expected_version,
            new_version,
            request.owner,
            request.release,
            request.optimizer,
            repr(request.opened_at),
            repr(request.now),
            request.folded,
            repr(request.dedupe_cutoff),
            *(e.stream_id for e in request.consumed),
        ]
        script_keys = [
            keys.state,
            keys.model,
            keys.model_version(new_version),
            keys.model_version(expired) if expired >= 1 else keys.model_version(new_version),
            keys.updates,
            keys.leader,
            keys.seen,
            *(keys.payload(e.update_id) for e in request.consumed),
        ]
        with _translated_blocking("commit"):
            outcome, detail = self._commit(keys=script_keys, args=args)
        return _outcome(outcome), _text(detail)

    async def initialise(
        self, keys: TaskKeys, *, version: int, release: bytes, now: float, force: bool
    ) -> tuple[CommitOutcome, str]:
        """Create version 1, or with ``force`` replace the model by version current + 1."""
        pending = await self.read_updates(keys, "0-0", 1_000_000, None) if force else []
        async with _translated("initialise"):
            outcome, detail = await self._init(
                keys=[
                    keys.state,
                    keys.model,
                    keys.model_version(version),
                    keys.updates,
                    *(keys.payload(e.update_id) for e in pending),
                ],
                args=["1" if force else "0", version, release, repr(now)],
            )
        return _outcome(outcome), _text(detail)

    async def hold_lease(self, keys: TaskKeys, owner: str, ttl_s: float) -> bool:
        """Take or renew the fold lease of ``keys.task``; True while ``owner`` holds it."""
        async with _translated("lease"):
            held = await self._lease(keys=[keys.leader], args=[owner, int(ttl_s * 1000), "0"])
        return bool(held)

    async def release_lease(self, keys: TaskKeys, owner: str) -> None:
        """Give the lease up (graceful shutdown) so another replica takes over at once."""
        async with _translated("release_lease"):
            await self._lease(keys=[keys.leader], args=[owner, 0, "1"])

    async def stored_release(self, keys: TaskKeys, version: int) -> bytes | None:
        """The signed release of ``version`` if it is still in the history."""
        async with _translated("stored_release"):
            value: Any = await self._redis.get(keys.model_version(version))
        return None if value is None else bytes(value)

    async def status(self, keys: TaskKeys, history: int) -> TaskStatus | None:
        """A summary of the task's state (None if never initialised)."""
        async with _translated("status"):
            pipe = self._redis.pipeline(transaction=False)
            pipe.hgetall(keys.state)
            pipe.xlen(keys.updates)
            pipe.zcard(keys.seen)
            pipe.hlen(keys.devices)
            pipe.get(keys.leader)
            fields, pending, seen, devices, leader = await pipe.execute()
            if not fields:
                return None
            version = int(fields[b"version"])
            candidates = list(range(max(1, version - history + 1), version + 1))
            pipe = self._redis.pipeline(transaction=False)
            for v in candidates:
                pipe.exists(keys.model_version(v))
            present = await pipe.execute()
        return TaskStatus(
            version=version,
            updates_total=int(fields.get(b"updates_total", 0)),
            pending=int(pending),
            dedupe_ids=int(seen),
            devices=int(devices) // 2,
            leader=None if leader is None else _text(leader),
            committed_at=float(fields.get(b"committed_at", 0.0)),
            history=tuple(v for v, p in zip(candidates, present, strict=True) if p),
        )


def _queue_payloads(
    pipe: Any, keys: TaskKeys, updates: Sequence[Accepted], now: float
) -> tuple[list[Any], list[Any]]:
    """Queue the SET of each payload under an incoming key; return the ingest script's
    keys and arguments."""
    batch = secrets.token_hex(8)
    script_keys: list[Any] = [keys.seen, keys.updates, keys.devices, keys.state]
    args: list[Any] = [repr(now)]
    for index, u in enumerate(updates):
        incoming = keys.incoming(batch, index)
        pipe.set(incoming, u.payload, px=_INCOMING_TTL_MS)
        script_keys += [incoming, keys.payload(u.update_id)]
        args += [u.update_id, u.device_id, u.base_version, u.num_samples]
    return script_keys, args


def _script_reply(replies: Sequence[Any]) -> Any:
    """The reply of the EVALSHA that ends a pipeline; None if Redis lacks the script.

    redis-py would ask SCRIPT EXISTS before every pipeline holding a Script (one more round
    trip); here a NOSCRIPT reply (a restarted server) makes the caller run the script once
    more on its own: the SETs before it have run by then. Any other error is raised.
    """
    for reply in replies[:-1]:
        if isinstance(reply, Exception):
            raise reply
    last = replies[-1]
    if isinstance(last, NoScriptError):
        return None
    if isinstance(last, Exception):
        raise last
    return last


def _ingest_reply(reply: Any) -> tuple[int, list[str | None]]:
    statuses = [_text(s) for s in reply[1:]]
    return int(reply[0]), [None if s == "dup" else s for s in statuses]


_OUTCOMES: dict[str, CommitOutcome] = {
    name: name for name in ("ok", "conflict", "fenced", "missing", "exists")
}


def _outcome(value: Any) -> CommitOutcome:
    text = _text(value)
    if text in _OUTCOMES:
        return _OUTCOMES[text]
    raise StoreUnavailableError("script", ValueError(f"unexpected reply {text!r}"))
