"""Update codecs: compact wire forms of a float32 delta (none, float16, int8, top-k)."""

from __future__ import annotations

import math
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any, Literal, TypeAlias

import numpy as np
from numpy.typing import NDArray

from serialization.arrays import (
    array_from_wire,
    array_to_wire,
    check_element_budget,
    shape_from_wire,
)
from serialization.errors import MalformedError, SerializationError
from serialization.limits import Limits
from serialization.msgpack_reader import Value

__all__ = [
    "CODEC_NAMES",
    "Codec",
    "CodecName",
    "EncodedTensor",
    "decode_delta",
    "encode_delta",
    "encode_tensor",
    "tensor_from_wire",
]

CodecName: TypeAlias = Literal["none", "float16", "int8", "topk"]
CODEC_NAMES: tuple[CodecName, ...] = ("none", "float16", "int8", "topk")
_FLOAT16_MAX = float(np.finfo(np.float16).max)
_INT8_MIN_SCALE = 2.0**-126
"""Smallest normal float32: a smaller scale would lose precision when decoded in float32."""
_INT8_MAX_SCALE = float(np.finfo(np.float32).max) / 128
"""(2 - 2**-23) * 2**120, exact in float32: no int8 value times the scale overflows float32."""


@dataclass(frozen=True, kw_only=True, slots=True)
class Codec:
    """Which codec a device uses, with its parameters.

    Error bounds of ``d = decode(encode(x))`` per element of a finite float32 ``x``:

    - none: exact.
    - float16: ``|x - d| <= max(2**-11 * |x|, 2**-25)`` for ``|x| <= 65504`` (round to
      nearest; 2**-25 is half the spacing of float16's subnormals); larger magnitudes are
      clipped to +-65504.
    - int8: ``scale = max(max|x| / 127, 2**-126)`` rounded to float32; ``|x - d| <=
      scale * (1/2 + 2**-16)`` with deterministic rounding and ``< scale * (1 + 2**-15)``
      with stochastic rounding (the 2**-16 and 2**-15 terms are float32 rounding).
    - topk: the ``k = min(n, ceil(topk_fraction * n))`` entries of largest magnitude are
      exact, the others decode to 0, so ``x - d`` is exactly the dropped residual that error
      feedback carries into the next update.
    """

    name: CodecName = "none"
    topk_fraction: float = 0.01
    stochastic: bool = False

    def __post_init__(self) -> None:
        if self.name not in CODEC_NAMES:
            raise SerializationError(f"unknown codec {self.name!r}; expected one of {CODEC_NAMES}")
        if not 0.0 < self.topk_fraction <= 1.0:
            raise SerializationError("topk_fraction must be in (0, 1]")


@dataclass(frozen=True, kw_only=True, slots=True, eq=False)
class EncodedTensor:
    """One tensor of a ModelUpdate in its codec's compact form."""

    shape: tuple[int, ...]
    values: NDArray[Any]
    """none: float32 of ``shape``; float16: float16 of ``shape``; int8: int8 of ``shape``;
    topk: float32 of length k."""
    scale: float | None = None
    """int8 only: dense = float32(values) * float32(scale)."""
    indices: NDArray[np.uint32] | None = None
    """topk only: strictly increasing flat (C-order) positions of ``values``."""

    @property
    def size(self) -> int:
        """Element count of the dense tensor."""
        return math.prod(self.shape)

    def to_dense(self) -> NDArray[np.float32]:
        """The dense float32 delta this tensor stands for (a new array)."""
        if self.indices is not None:
            dense = np.zeros(self.size, dtype=np.float32)
            dense[self.indices] = self.values
            return dense.reshape(self.shape)
        if self.scale is not None:
            return (self.values.astype(np.float32) * np.float32(self.scale)).reshape(self.shape)
        return self.values.astype(np.float32).reshape(self.shape)

    def to_wire(self) -> dict[str, object]:
        """The msgpack-ready map (see SPEC.md "Encoded tensor")."""
        wire: dict[str, object] = {"shape": list(self.shape), "values": array_to_wire(self.values)}
        if self.scale is not None:
            wire["scale"] = float(self.scale)
        if self.indices is not None:
            wire["indices"] = array_to_wire(self.indices)
        return wire


def encode_tensor(
    x: NDArray[Any], codec: Codec, rng: np.random.Generator | None = None
) -> EncodedTensor:
    """Encode one dense delta; ``rng`` is needed only for stochastic int8 rounding."""
    dense = np.asarray(x, dtype=np.float32)
    shape = tuple(int(d) for d in dense.shape)
    if codec.name == "none":
        return EncodedTensor(shape=shape, values=dense)
    if codec.name == "float16":
        clipped = np.clip(dense, -_FLOAT16_MAX, _FLOAT16_MAX)
        return EncodedTensor(shape=shape, values=clipped.astype(np.float16))
    if codec.name == "int8":
        return _encode_int8(dense, shape, codec, rng)
    flat = dense.reshape(-1)
    k = min(flat.size, math.ceil(codec.topk_fraction * flat.size))
    if k == flat.size:
        indices = np.arange(flat.size, dtype=np.uint32)
    else:
        indices = np.sort(np.argpartition(np.abs(flat), flat.size - k)[flat.size - k :])
        indices = indices.astype(np.uint32)
    return EncodedTensor(shape=shape, values=flat[indices], indices=indices)


def _encode_int8(
    dense: NDArray[np.float32],
    shape: tuple[int, ...],
    codec: Codec,
    rng: np.random.Generator | None,
) -> EncodedTensor:
    peak = float(np.max(np.abs(dense))) if dense.size else 0.0
    if not math.isfinite(peak):
        raise SerializationError("int8 codec needs finite values")
    scale = float(np.float32(max(peak / 127.0, _INT8_MIN_SCALE)))
    if scale > _INT8_MAX_SCALE:
        raise SerializationError(f"int8 codec cannot scale values of magnitude {peak}")
    scaled = dense / np.float32(scale)
    if codec.stochastic:
        if rng is None:
            raise SerializationError("stochastic int8 rounding needs an rng")
        rounded = np.floor(scaled + rng.random(scaled.shape, dtype=np.float32))
    else:
        rounded = np.rint(scaled)
    quantised = np.clip(rounded, -127, 127).astype(np.int8)
    return EncodedTensor(shape=shape, values=quantised, scale=scale)


def encode_delta(
    delta: Mapping[str, NDArray[Any]], codec: Codec, rng: np.random.Generator | None = None
) -> dict[str, EncodedTensor]:
    """Encode every named tensor of ``delta`` with ``codec``."""
    return {name: encode_tensor(x, codec, rng) for name, x in delta.items()}


def decode_delta(tensors: Mapping[str, EncodedTensor]) -> dict[str, NDArray[np.float32]]:
    """The dense float32 delta of an update."""
    return {name: tensor.to_dense() for name, tensor in tensors.items()}


_VALUE_DTYPES: dict[CodecName, str] = {
    "none": "float32", "float16": "float16", "int8": "int8", "topk": "float32",
}  # fmt: skip


def tensor_from_wire(value: Value, codec: CodecName, limits: Limits, budget: int) -> EncodedTensor:
    """Decode and check one encoded tensor of ``codec``; ``budget`` bounds its dense size."""
    if not isinstance(value, dict):
        raise MalformedError("encoded tensor must be a map")
    shape = shape_from_wire(value.get("shape"), limits)
    size = check_element_budget(shape, budget, limits)
    # The inner arrays are views of the payload; only their consistency with shape matters.
    values = array_from_wire(value.get("values"), limits, budget=limits.max_total_elements)
    if values.dtype.name != _VALUE_DTYPES[codec]:
        raise MalformedError(f"codec {codec} needs {_VALUE_DTYPES[codec]} values")
    if codec == "topk":
        indices = array_from_wire(value.get("indices"), limits, budget=limits.max_total_elements)
        if indices.dtype.name != "uint32" or indices.ndim != 1 or values.shape != indices.shape:
            raise MalformedError("topk needs 1-d uint32 indices as long as its values")
        if indices.size and (int(indices[-1]) >= size or np.any(indices[1:] <= indices[:-1])):
            raise MalformedError("topk indices must be strictly increasing and inside the shape")
        return EncodedTensor(shape=shape, values=values, indices=indices)
    if values.shape != shape:
        raise MalformedError(f"values shape {values.shape} differs from tensor shape {shape}")
    if codec == "int8":
        scale = value.get("scale")
        if not isinstance(scale, float) or not 0.0 < scale <= _INT8_MAX_SCALE:
            raise MalformedError(f"int8 scale must be a float in (0, {_INT8_MAX_SCALE}]")
        return EncodedTensor(shape=shape, values=values, scale=scale)
    return EncodedTensor(shape=shape, values=values)
