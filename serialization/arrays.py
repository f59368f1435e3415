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
    """Element count of ``shape``; raise TooLargeError above the per-tensor limit or ``budget``.

    Zero-length axes count as 1 against the per-tensor limit, so that a shape such as
    ``[0, 2**40]`` (no elements, but no array library can represent it) is refused too.
    """
    extent = math.prod(max(d, 1) for d in shape)
    if extent > limits.max_tensor_elements:
        raise TooLargeError("tensor elements", extent, limits.max_tensor_elements)
    count = math.prod(shape)
    if count > budget:
        used = limits.max_total_elements - budget
        raise TooLargeError("total elements", used + count, limits.max_total_elements)
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
    """Decode an array map without copying: the result is a view of the payload's bytes
    (read-only when the payload is ``bytes``); ``budget`` bounds its element count."""
    if not isinstance(value, dict):
        raise MalformedError("array must be a map with dtype, shape and data")
    name = value.get("dtype")
    dtype = DTYPES.get(name) if isinstance(name, str) else None
    if dtype is None:
        raise MalformedError(f"dtype {name!r} is not in the wire whitelist")
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
