"""The Redis key schema of a task: every key in one constants block, `{task}` as hash tag."""

from __future__ import annotations

from dataclasses import dataclass

__all__ = ["KEY_PREFIX", "TaskKeys"]

KEY_PREFIX = "fl"

# Every key of task T starts with "fl:{T}:"; the braces make T the Redis Cluster hash tag,
# so all keys of one task live in one slot and one Lua script may touch them together.
_STATE = "{prefix}:{{{task}}}:state"
"""hash: version, optimizer (packed), opened_at, committed_at, updates_total, ..."""
_MODEL = "{prefix}:{{{task}}}:model"
"""string: the signed ModelRelease payload of the current version."""
_MODEL_VERSION = "{prefix}:{{{task}}}:model:{version}"
"""string: the signed ModelRelease payload of a recent version (rollback history)."""
_UPDATES = "{prefix}:{{{task}}}:updates"
"""stream: accepted, not yet committed updates (fields u, d, b, n; payload in _PAYLOAD)."""
_PAYLOAD = "{prefix}:{{{task}}}:payload:{update_id}"
"""string: the raw ModelUpdate payload of an update in _UPDATES (update id in hex)."""
_INCOMING = "{prefix}:{{{task}}}:incoming:{batch}:{index}"
"""string with TTL: a payload written just before the ingest script renames it to
_PAYLOAD (new update) or deletes it (duplicate); the TTL clears anything a failure left."""
_SEEN = "{prefix}:{{{task}}}:seen"
"""sorted set: update id -> unix time it was accepted (dedupe window)."""
_DEVICES = "{prefix}:{{{task}}}:devices"
"""hash: device id -> accepted updates; "<device id>:seen" -> last accepted unix time."""
_LEADER = "{prefix}:{{{task}}}:leader"
"""string with TTL: replica id of the replica that folds and commits (lease)."""


@dataclass(frozen=True, kw_only=True, slots=True)
class TaskKeys:
    """The concrete Redis keys of one task."""

    task: str
    prefix: str
    state: str
    model: str
    updates: str
    seen: str
    devices: str
    leader: str

    @classmethod
    def of(cls, task: str, *, prefix: str = KEY_PREFIX) -> TaskKeys:
        """The keys of ``task`` (a validated task identifier)."""
        return cls(
            task=task,
            prefix=prefix,
            state=_STATE.format(prefix=prefix, task=task),
            model=_MODEL.format(prefix=prefix, task=task),
            updates=_UPDATES.format(prefix=prefix, task=task),
            seen=_SEEN.format(prefix=prefix, task=task),
            devices=_DEVICES.format(prefix=prefix, task=task),
            leader=_LEADER.format(prefix=prefix, task=task),
        )

    def payload(self, update_id: bytes) -> str:
        """Key of the stored payload of ``update_id``."""
        return _PAYLOAD.format(prefix=self.prefix, task=self.task, update_id=update_id.hex())

    def incoming(self, batch: str, index: int) -> str:
        """Key of payload ``index`` of ingest batch ``batch`` before the script files it."""
        return _INCOMING.format(prefix=self.prefix, task=self.task, batch=batch, index=index)

    def model_version(self, version: int) -> str:
        """Key of the stored release of ``version``."""
        return _MODEL_VERSION.format(prefix=self.prefix, task=self.task, version=version)
