"""Pure checks of named tensors: a device delta against the current model, and layout equality."""

from __future__ import annotations

import math
from enum import StrEnum

import numpy as np

from aggregator.errors import LayoutMismatchError
from aggregator.tensors import Tensors, global_norm

__all__ = ["RejectReason", "find_layout_mismatch", "require_same_layout", "validate_delta"]


class RejectReason(StrEnum):
    """Why an update is refused: short strings for Receipts and metric labels."""

    UNKNOWN_TENSOR = "unknown_tensor"
    MISSING_TENSOR = "missing_tensor"
    SHAPE_MISMATCH = "shape_mismatch"
    DTYPE_MISMATCH = "dtype_mismatch"
    NON_FINITE = "non_finite"
    NORM_EXCEEDED = "norm_exceeded"
    STALE = "stale"
    FUTURE_VERSION = "future_version"
    NO_SAMPLES = "no_samples"
    BUFFER_FULL = "buffer_full"


_FLOAT32 = np.dtype(np.float32)


def find_layout_mismatch(reference: Tensors, other: Tensors) -> tuple[RejectReason, str] | None:
    """Return the first (reason, tensor name) where ``other`` differs from ``reference``.

    Names are compared first (unknown, then missing, in sorted order), then shapes, then
    dtypes (both must be float32).
    """
    for name in sorted(other):
        if name not in reference:
            return RejectReason.UNKNOWN_TENSOR, name
    for name in sorted(reference):
        if name not in other:
            return RejectReason.MISSING_TENSOR, name
    for name in sorted(reference):
        if other[name].shape != reference[name].shape:
            return RejectReason.SHAPE_MISMATCH, name
    for name in sorted(reference):
        if other[name].dtype != _FLOAT32 or reference[name].dtype != _FLOAT32:
            return RejectReason.DTYPE_MISMATCH, name
    return None


def require_same_layout(reference: Tensors, other: Tensors) -> None:
    """Raise LayoutMismatchError unless ``other`` has exactly the names, shapes and dtypes."""
    mismatch = find_layout_mismatch(reference, other)
    if mismatch is not None:
        reason, name = mismatch
        raise LayoutMismatchError(reason, name)


def validate_delta(model: Tensors, delta: Tensors, max_norm: float | None) -> RejectReason | None:
    """Return why ``delta`` cannot be applied to ``model``, or None if it can.

    Checks, in order: tensor names, shapes, float32 dtype, finite values, and the global L2
    norm against ``max_norm`` (skipped when None). One float64 pass over the delta.
    """
    mismatch = find_layout_mismatch(model, delta)
    if mismatch is not None:
        return mismatch[0]
    norm = global_norm(delta)
    if not math.isfinite(norm):
        return RejectReason.NON_FINITE
    if max_norm is not None and norm > max_norm:
        return RejectReason.NORM_EXCEEDED
    return None
