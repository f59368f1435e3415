"""The I/O-free core of ingest: one MQTT payload in, an accept/reject verdict out."""

from __future__ import annotations

from dataclasses import dataclass

from aggregator.strategies.base import DeviceUpdate, Strategy
from aggregator.tensors import Tensors
from aggregator.validation import validate_delta
from serialization import (
    UPDATE_ID_BYTES,
    Limits,
    ModelUpdate,
    SerializationError,
    decode_delta,
)

__all__ = [
    "DEVICE_MISMATCH",
    "TASK_MISMATCH",
    "TOO_LARGE",
    "UNKNOWN_UPDATE_ID",
    "Accepted",
    "IngestContext",
    "Rejected",
    "Verdict",
    "check_update",
    "device_update",
]

TASK_MISMATCH = "task_mismatch"
"""The payload names another task than the topic it was published on."""
DEVICE_MISMATCH = "device_mismatch"
"""The payload names another device than the (authenticated) topic it was published on."""
TOO_LARGE = "too_large"
UNKNOWN_UPDATE_ID = bytes(UPDATE_ID_BYTES)
"""Update id of the Receipt for a payload too broken to carry one (16 zero bytes)."""


@dataclass(frozen=True, kw_only=True, slots=True, eq=False)
class IngestContext:
    """What checking an update of one task needs; replaced whenever the version moves."""

    task: str
    layout: Tensors
    """The current model: names, shapes and dtypes that every delta must match."""
    version: int
    admission: Strategy
    """A strategy instance used only for admit() (never folded into)."""
    max_norm: float | None
    max_update_bytes: int
    limits: Limits


@dataclass(frozen=True, kw_only=True, slots=True, eq=False)
class Accepted:
    """An update that passed every check and may be stored."""

    device_id: str
    update_id: bytes
    base_version: int
    num_samples: int
    payload: bytes
    update: DeviceUpdate | None = None
    """The decoded update, so the fold need not decode the payload again."""


@dataclass(frozen=True, kw_only=True, slots=True)
class Rejected:
    """An update refused with a short machine-readable ``reason``."""

    device_id: str
    update_id: bytes
    reason: str
    detail: str = ""


Verdict = Accepted | Rejected


def device_update(update: ModelUpdate) -> DeviceUpdate:
    """The strategy's view of a decoded update (dense float32 delta)."""
    return DeviceUpdate(
        delta=decode_delta(update.tensors),
        base_version=update.base_version,
        num_samples=update.num_samples,
    )


def check_update(context: IngestContext, device_id: str, payload: bytes) -> Verdict:
    """Decode and validate one payload published by ``device_id`` (from the topic).

    Never raises for anything a device can send: every problem becomes a Rejected.
    """
    if len(payload) > context.max_update_bytes:
        return Rejected(
            device_id=device_id,
            update_id=UNKNOWN_UPDATE_ID,
            reason=TOO_LARGE,
            detail=f"{len(payload)} bytes > {context.max_update_bytes}",
        )
    try:
        update = ModelUpdate.decode(payload, limits=context.limits)
        candidate = device_update(update)
    except SerializationError as exc:
        return Rejected(
            device_id=device_id, update_id=UNKNOWN_UPDATE_ID, reason=exc.reason, detail=str(exc)
        )
    if update.task != context.task:
        return _reject(device_id, update, TASK_MISMATCH, f"payload task {update.task!r}")
    if update.device_id != device_id:
        return _reject(device_id, update, DEVICE_MISMATCH, f"payload device {update.device_id!r}")
    reason = validate_delta(context.layout, candidate.delta, context.max_norm)
    if reason is None:
        reason = context.admission.admit(candidate, context.version)
    if reason is not None:
        return _reject(device_id, update, str(reason), f"base version {update.base_version}")
    return Accepted(
        device_id=device_id,
        update_id=update.update_id,
        base_version=update.base_version,
        num_samples=update.num_samples,
        payload=payload,
        update=candidate,
    )


def _reject(device_id: str, update: ModelUpdate, reason: str, detail: str) -> Rejected:
    return Rejected(device_id=device_id, update_id=update.update_id, reason=reason, detail=detail)
