"""The fold buffer: scaled deltas c_i = coef_i * delta_i as one running sum, or all kept."""

from __future__ import annotations

from collections.abc import Mapping

import numpy as np
from numpy.typing import NDArray

from aggregator.errors import AggregatorError, LayoutMismatchError, UpdateRejectedError
from aggregator.tensors import Model, Tensors
from aggregator.validation import RejectReason, require_same_layout

__all__ = ["UpdateBuffer"]

_FLOAT32 = np.dtype(np.float32)


class UpdateBuffer:
    """Scaled deltas of one model version.

    Summing (``keep_all=False``) holds one float32 array per tensor, whatever the number
    of folds: memory O(model). Keeping all (for median and trimmed mean) preallocates a
    ``(capacity, *shape)`` stack per tensor on the first fold: memory O(capacity * model).
    Arrays are allocated on the first fold and released by clear().
    """

    __slots__ = ("_arrays", "_capacity", "_count", "_keep_all", "_template")

    def __init__(self, *, keep_all: bool, capacity: int | None) -> None:
        """Create an empty buffer; ``capacity`` bounds the folds and is required to keep all."""
        if keep_all and capacity is None:
            raise AggregatorError("a buffer that keeps all updates needs a capacity")
        self._keep_all = keep_all
        self._capacity = capacity
        self._arrays: Model | None = None
        self._template: Model = {}
        self._count = 0

    @property
    def count(self) -> int:
        """Number of folded deltas."""
        return self._count

    @property
    def nbytes(self) -> int:
        """Bytes held by the buffer's arrays."""
        return 0 if self._arrays is None else sum(a.nbytes for a in self._arrays.values())

    def fold(self, delta: Tensors, coef: float) -> None:
        """Add ``coef * delta``; the delta is read, never kept. Layout is checked first."""
        if self._capacity is not None and self._count >= self._capacity:
            raise UpdateRejectedError(RejectReason.BUFFER_FULL)
        if self._arrays is None:
            self._arrays, self._template = self._allocate(delta)
        else:
            require_same_layout(self._template, delta)
        scale = np.float32(coef)
        for name, array in self._arrays.items():
            if self._keep_all:
                np.multiply(delta[name], scale, out=array[self._count])
            else:
                np.add(array, scale * delta[name], out=array)
        self._count += 1

    def total(self) -> Tensors:
        """The running sum (read-only by convention); only for a summing buffer."""
        if self._keep_all or self._arrays is None:
            raise AggregatorError("total() needs a summing buffer with at least one fold")
        return self._arrays

    def stacked(self) -> Mapping[str, NDArray[np.float32]]:
        """Views (count, *shape) of the kept deltas; only for a keep-all buffer."""
        if not self._keep_all or self._arrays is None:
            raise AggregatorError("stacked() needs a keep-all buffer with at least one fold")
        return {name: array[: self._count] for name, array in self._arrays.items()}

    def clear(self) -> None:
        """Forget every fold and release the arrays."""
        self._arrays = None
        self._template = {}
        self._count = 0

    def _allocate(self, delta: Tensors) -> tuple[Model, Model]:
        """Return zeroed arrays shaped for ``delta`` and per-tensor views of one delta's shape."""
        for name in sorted(delta):
            if delta[name].dtype != _FLOAT32:
                raise LayoutMismatchError(RejectReason.DTYPE_MISMATCH, name)
        stack = (self._capacity,) if self._keep_all and self._capacity is not None else ()
        arrays = {
            name: np.zeros((*stack, *delta[name].shape), dtype=np.float32) for name in sorted(delta)
        }
        template = {name: array[0] if stack else array for name, array in arrays.items()}
        return arrays, template
