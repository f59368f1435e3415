"""The device-side messages: ModelUpdate, Receipt, DeviceStatus and Control."""

from __future__ import annotations

import secrets
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Literal, TypeAlias

from serialization.codecs import CODEC_NAMES, CodecName, EncodedTensor, tensor_from_wire
from serialization.fields import Scalar, named_tensors, open_message, pack_message
from serialization.limits import DEFAULT_LIMITS, Limits

__all__ = [
    "UPDATE_ID_BYTES",
    "Control",
    "DeviceState",
    "DeviceStatus",
    "ModelUpdate",
    "Receipt",
    "ReceiptStatus",
    "new_update_id",
]

UPDATE_ID_BYTES = 16
ReceiptStatus: TypeAlias = Literal["accepted", "duplicate", "rejected"]
DeviceState: TypeAlias = Literal["online", "offline"]
_RECEIPT_STATUSES: tuple[ReceiptStatus, ...] = ("accepted", "duplicate", "rejected")
_DEVICE_STATES: tuple[DeviceState, ...] = ("online", "offline")

Payload: TypeAlias = bytes | bytearray | memoryview


def new_update_id() -> bytes:
    """A random 16-byte update id (the dedupe key of an update)."""
    return secrets.token_bytes(UPDATE_ID_BYTES)


@dataclass(frozen=True, kw_only=True, slots=True, eq=False)
class ModelUpdate:
    """A device's weight delta (local - base), trained from model ``base_version``."""

    task: str
    device_id: str
    update_id: bytes
    base_version: int
    num_samples: int
    codec: CodecName
    tensors: Mapping[str, EncodedTensor]
    metrics: Mapping[str, Scalar] = field(default_factory=dict)
    created_at: float = 0.0

    def encode(self) -> bytes:
        """The msgpack payload (SPEC.md "ModelUpdate")."""
        return pack_message(
            "update",
            {
                "task": self.task,
                "device": self.device_id,
                "update_id": self.update_id,
                "base_version": self.base_version,
                "num_samples": self.num_samples,
                "codec": self.codec,
                "tensors": {name: t.to_wire() for name, t in self.tensors.items()},
                "metrics": dict(self.metrics),
                "created_at": float(self.created_at),
            },
        )

    @classmethod
    def decode(cls, payload: Payload, *, limits: Limits = DEFAULT_LIMITS) -> ModelUpdate:
        """Decode and check a payload; tensor values are views of ``payload`` (no copy)."""
        fields = open_message(payload, "update", limits)
        codec = fields.choice("codec", CODEC_NAMES)
        return cls(
            task=fields.identifier("task"),
            device_id=fields.identifier("device"),
            update_id=bytes(fields.binary("update_id", length=UPDATE_ID_BYTES)),
            base_version=fields.integer("base_version"),
            num_samples=fields.integer("num_samples"),
            codec=codec,
            tensors=named_tensors(
                fields, "tensors", lambda v, budget: tensor_from_wire(v, codec, limits, budget)
            ),
            metrics=fields.scalars("metrics"),
            created_at=fields.number("created_at"),
        )


@dataclass(frozen=True, kw_only=True, slots=True)
class Receipt:
    """The aggregator's answer to one update, sent only once the update is durable."""

    task: str
    device_id: str
    update_id: bytes
    status: ReceiptStatus
    model_version: int
    reason: str = ""

    def encode(self) -> bytes:
        """The msgpack payload (SPEC.md "Receipt")."""
        return pack_message(
            "receipt",
            {
                "task": self.task,
                "device": self.device_id,
                "update_id": self.update_id,
                "status": self.status,
                "reason": self.reason,
                "model_version": self.model_version,
            },
        )

    @classmethod
    def decode(cls, payload: Payload, *, limits: Limits = DEFAULT_LIMITS) -> Receipt:
        """Decode and check a payload."""
        fields = open_message(payload, "receipt", limits)
        return cls(
            task=fields.identifier("task"),
            device_id=fields.identifier("device"),
            update_id=bytes(fields.binary("update_id", length=UPDATE_ID_BYTES)),
            status=fields.choice("status", _RECEIPT_STATUSES),
            reason=fields.text("reason"),
            model_version=fields.integer("model_version"),
        )


@dataclass(frozen=True, kw_only=True, slots=True)
class DeviceStatus:
    """A device's retained presence: online with its connection count, or offline (will)."""

    task: str
    device_id: str
    state: DeviceState
    connections: int
    model_version: int
    at: float

    def encode(self) -> bytes:
        """The msgpack payload (SPEC.md "DeviceStatus")."""
        return pack_message(
            "status",
            {
                "task": self.task,
                "device": self.device_id,
                "state": self.state,
                "connections": self.connections,
                "model_version": self.model_version,
                "at": float(self.at),
            },
        )

    @classmethod
    def decode(cls, payload: Payload, *, limits: Limits = DEFAULT_LIMITS) -> DeviceStatus:
        """Decode and check a payload."""
        fields = open_message(payload, "status", limits)
        return cls(
            task=fields.identifier("task"),
            device_id=fields.identifier("device"),
            state=fields.choice("state", _DEVICE_STATES),
            connections=fields.integer("connections"),
            model_version=fields.integer("model_version"),
            at=fields.number("at"),
        )


@dataclass(frozen=True, kw_only=True, slots=True)
class Control:
    """Pace steering for a task's devices: participation and training settings."""

    task: str
    seq: int
    participation: float = 1.0
    settings: Mapping[str, Scalar] = field(default_factory=dict)
    issued_at: float = 0.0

    def encode(self) -> bytes:
        """The msgpack payload (SPEC.md "Control")."""
        return pack_message(
            "control",
            {
                "task": self.task,
                "seq": self.seq,
                "participation": float(self.participation),
                "settings": dict(self.settings),
                "issued_at": float(self.issued_at),
            },
        )

    @classmethod
    def decode(cls, payload: Payload, *, limits: Limits = DEFAULT_LIMITS) -> Control:
        """Decode and check a payload."""
        fields = open_message(payload, "control", limits)
        return cls(
            task=fields.identifier("task"),
            seq=fields.integer("seq"),
            participation=fields.number("participation", minimum=0.0, maximum=1.0),
            settings=fields.scalars("settings"),
            issued_at=fields.number("issued_at"),
        )
