"""Arrays on the wire: ``{dtype, shape, data}`` with little-endian bytes, decoded zero-copy."""

from __future__ import annotations

import math
from typing import Any

import numpy as np
from numpy.typing import NDArray

from serialization.errors import MalformedError, SerializationError, TooLargeError
from serialization.limits import Limits
from serialization.msgpack_reader import Value

__all__ = ["DTYPES", "array_from_wire", "array_to_wire", "check_element_budget", "shape_from_wire"]

DTYPES: dict[str, np.dtype[Any]] = {
    name: np.dtype(name).newbyteorder("<")
    for name in (
        "float16", "float32", "float64",
        "int8", "int16", "int32", "int64",
        "uint8", "uint16", "uint32",
    )
}  # fmt: skip
"""The whitelist: wire name -> little-endian numpy dtype. Nothing else is ever decoded."""

_WIRE_NAMES = {dtype.newbyteorder("="): name for name, dtype in DTYPES.items()}


def array_to_wire(array: NDArray[Any]) -> dict[str, object]:
    """The msgpack-ready map of ``array``; its ``data`` is a view when no conversion is needed."""
    name = _WIRE_NAMES.get(array.dtype.newbyteorder("="))
    if name is None:
        raise SerializationError(f"dtype {array.dtype} is not in the wire whitelist")
    little = np.asarray(array, dtype=DTYPES[name], order="C")
    return {
        "dtype": name,
        "shape": list(little.shape),
        "data": little.reshape(-1).view(np.uint8).data,
    }


def check_element_budget(shape: tuple[int, ...], budget: int, limits: Limits) -> int:
    """Element count of ``shape``; raise TooLargeError above the per-tensor limit or ``budget``."""
    count = math.prod(shape)
    if count > limits.max_tensor_elements:
        raise TooLargeError("tensor elements", count, limits.max_tensor_elements)
    if count > budget:
        raise TooLargeError("total elements", count, budget)
    return count


def shape_from_wire(value: Value, limits: Limits) -> tuple[int, ...]:
    """A validated shape: a list of at most ``max_dims`` non-negative integers."""
    if not isinstance(value, list) or len(value) > limits.max_dims:
        raise MalformedError(f"shape must be a list of at most {limits.max_dims} integers")
    dims = tuple(value)
    if not all(type(d) is int and d >= 0 for d in dims):
        raise MalformedError("shape entries must be non-negative integers")
    return dims  # type: ignore[return-value]  # every entry checked to be int above


def array_from_wire(value: Value, limits: Limits, *, budget: int) -> NDArray[Any]:
    """Decode an array map without copying: the result is a read-only view of the payload."""
    if not isinstance(value, dict):
        raise MalformedError("array must be a map with dtype, shape and data")
    dtype = DTYPES.get(value.get("dtype"))  # type: ignore[arg-type]  # None or str: both fine
    if dtype is None:
        raise MalformedError(f"dtype {value.get('dtype')!r} is not in the wire whitelist")
    shape = shape_from_wire(value.get("shape"), limits)
    count = check_element_budget(shape, budget, limits)
    data = value.get("data")
    if not isinstance(data, memoryview):
        raise MalformedError("array data must be msgpack bin")
    if len(data) != count * dtype.itemsize:
        raise MalformedError(
            f"array data is {len(data)} bytes, shape {shape} of {dtype.name} needs "
            f"{count * dtype.itemsize}"
        )
    return np.frombuffer(data, dtype=dtype).reshape(shape)
