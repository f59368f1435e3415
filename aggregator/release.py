"""Signed releases: build a new version's payload and read a committed one back (pure)."""

from __future__ import annotations

import math
from collections.abc import Mapping

from aggregator.errors import StateError
from aggregator.state import CommittedState, unpack_optimizer_state
from aggregator.tensors import Tensors
from serialization import (
    DEFAULT_LIMITS,
    Limits,
    ModelRelease,
    Scalar,
    SerializationError,
    SigningKey,
)

__all__ = ["committed_state", "release_metadata", "sign_release"]

_MAX_METADATA = DEFAULT_LIMITS.max_map_entries


def release_metadata(
    carried: Mapping[str, Scalar], facts: Mapping[str, Scalar]
) -> dict[str, Scalar]:
    """The carried ``model.*`` entries plus the step's facts that the wire format accepts."""
    merged: dict[str, Scalar] = dict(carried)
    for key, value in facts.items():
        if len(merged) >= _MAX_METADATA:
            break
        if isinstance(value, float) and not math.isfinite(value):
            continue
        if isinstance(value, str) and len(value.encode()) > DEFAULT_LIMITS.max_string_bytes:
            continue
        merged.setdefault(key, value)
    return merged


def sign_release(
    *,
    key: SigningKey,
    task: str,
    version: int,
    parent_version: int,
    model: Tensors,
    update_count: int,
    created_at: float,
    metadata: Mapping[str, Scalar],
) -> bytes:
    """The signed ModelRelease payload of ``version`` (CPU work: run it off the event loop)."""
    return ModelRelease(
        task=task,
        version=version,
        parent_version=parent_version,
        tensors=dict(model),
        update_count=update_count,
        created_at=created_at,
        metadata=dict(metadata),
    ).encode(key)


def committed_state(
    *,
    key: SigningKey,
    release: bytes,
    optimizer: bytes,
    opened_at: float,
    updates_total: int,
    limits: Limits = DEFAULT_LIMITS,
) -> CommittedState:
    """Decode and verify a stored release and optimizer state into a CommittedState."""
    try:
        decoded = ModelRelease.decode(release, key.verify_key, limits=limits)
    except SerializationError as exc:
        raise StateError("release", f"stored release does not decode: {exc}") from exc
    return CommittedState(
        version=decoded.version,
        release=release,
        model=decoded.float32_tensors(),
        optimizer=unpack_optimizer_state(optimizer),
        opened_at=opened_at,
        updates_total=updates_total,
        metadata=dict(decoded.metadata),
    )
