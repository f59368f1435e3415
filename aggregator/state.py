"""The committed state of a task as stored in Redis, and its pure byte encoding."""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass

import msgpack
import numpy as np

from aggregator.errors import StateError
from aggregator.server_optimizers import OptimizerState
from aggregator.tensors import Model
from serialization import Scalar

__all__ = [
    "MODEL_METADATA_PREFIX",
    "CommittedState",
    "carried_metadata",
    "pack_optimizer_state",
    "unpack_optimizer_state",
]

MODEL_METADATA_PREFIX = "model."
"""Release metadata under this prefix describes the architecture and is carried forward."""


@dataclass(frozen=True, kw_only=True, slots=True, eq=False)
class CommittedState:
    """What one commit made durable: the release and what the next step starts from."""

    version: int
    release: bytes
    """The signed ModelRelease payload of ``version`` (what is retained on the model topic)."""
    model: Model
    optimizer: OptimizerState | None
    opened_at: float
    """When the current round opened (FedAvg deadline)."""
    updates_total: int
    """Updates folded into all versions so far."""
    metadata: Mapping[str, Scalar]
    """The release metadata of ``version``."""


def carried_metadata(metadata: Mapping[str, Scalar]) -> dict[str, Scalar]:
    """The metadata entries every later release repeats (the architecture, ``model.*``)."""
    return {k: v for k, v in metadata.items() if k.startswith(MODEL_METADATA_PREFIX)}


def pack_optimizer_state(state: OptimizerState | None) -> bytes:
    """msgpack ``{step, arrays: {key: [shape, float32 little-endian bytes]}}``; b"" for None."""
    if state is None:
        return b""
    arrays, scalars = state.to_parts()
    packed: bytes = msgpack.packb(
        {
            "step": scalars["step"],
            "arrays": {
                key: [list(a.shape), np.ascontiguousarray(a, dtype="<f4").tobytes()]
                for key, a in arrays.items()
            },
        },
        use_bin_type=True,
    )
    return packed


def unpack_optimizer_state(data: bytes) -> OptimizerState | None:
    """Invert pack_optimizer_state; raise StateError on anything else."""
    if not data:
        return None
    try:
        decoded = msgpack.unpackb(data, raw=False)
        arrays = {
            key: np.frombuffer(raw, dtype="<f4").astype(np.float32).reshape(shape)
            for key, (shape, raw) in decoded["arrays"].items()
        }
        step = decoded["step"]
    except (ValueError, TypeError, KeyError, msgpack.UnpackException) as exc:
        raise StateError("optimizer", f"cannot decode stored state: {exc}") from exc
    return OptimizerState.from_parts(arrays, {"step": step})
