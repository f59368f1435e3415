"""Codecs: decode(encode(x)) within exactly the error bounds stated in Codec's docstring."""

from __future__ import annotations

import math
import struct
from typing import Any

import msgpack
import numpy as np
import pytest
from hypothesis import given
from hypothesis import strategies as st
from hypothesis.extra import numpy as hnp
from numpy.typing import NDArray

from serialization import (
    CODEC_NAMES,
    DEFAULT_LIMITS,
    Codec,
    CodecName,
    EncodedTensor,
    MalformedError,
    SerializationError,
    TooLargeError,
    decode_delta,
    encode_delta,
    encode_tensor,
)
from serialization.codecs import tensor_from_wire
from serialization.msgpack_reader import read_msgpack
from tests.unit.serialization.strategies import shapes

FLOAT32_MAX = float(np.finfo(np.float32).max)
F16_MAX = 65504.0

finite32 = st.floats(width=32, allow_nan=False, allow_infinity=False)
"""Every finite float32, subnormals and +-0 included."""
moderate32 = st.floats(width=32, min_value=-(2.0**100), max_value=2.0**100)


def float32_arrays(elements: st.SearchStrategy[float] = finite32) -> st.SearchStrategy[Any]:
    """float32 arrays of any shape (0-d and empty included)."""
    return hnp.arrays(np.float32, shapes, elements=elements)


def _wire_round_trip(tensor: EncodedTensor, codec: CodecName) -> EncodedTensor:
    payload = msgpack.packb(tensor.to_wire(), use_bin_type=True)
    limits = DEFAULT_LIMITS
    value = read_msgpack(payload, limits)
    return tensor_from_wire(value, codec, limits, limits.max_total_elements)


def _abs_error(x: NDArray[np.float32], decoded: NDArray[np.float32]) -> NDArray[np.float64]:
    error: NDArray[np.float64] = np.abs(x.astype(np.float64) - decoded.astype(np.float64))
    return error


@given(x=float32_arrays())
def test_codecs_none_is_exact(x: NDArray[np.float32]) -> None:
    """none: decode(encode(x)) == x bit for bit, through the wire."""
    decoded = _wire_round_trip(encode_tensor(x, Codec(name="none")), "none").to_dense()
    assert decoded.dtype == np.float32
    assert decoded.shape == x.shape
    assert decoded.tobytes() == x.tobytes()


@given(x=float32_arrays(st.floats(width=32, min_value=-F16_MAX, max_value=F16_MAX)))
def test_codecs_float16_error_within_bound(x: NDArray[np.float32]) -> None:
    """float16: |x - d| <= max(2**-11 |x|, 2**-25) for |x| <= 65504."""
    decoded = _wire_round_trip(encode_tensor(x, Codec(name="float16")), "float16").to_dense()
    bound = np.maximum(2.0**-11 * np.abs(x.astype(np.float64)), 2.0**-25)
    assert decoded.shape == x.shape
    assert np.all(_abs_error(x, decoded) <= bound)


def test_codecs_float16_bound_is_tight() -> None:
    """The float16 bound is reached: the bound is not looser than the codec."""
    halfway = np.array([1 + 2.0**-11, 2.0**-25], dtype=np.float32)
    decoded = encode_tensor(halfway, Codec(name="float16")).to_dense()
    assert decoded.tolist() == [1.0, 0.0]
    assert _abs_error(halfway, decoded).tolist() == [2.0**-11, 2.0**-25]


@given(x=float32_arrays())
def test_codecs_float16_clips_large_magnitudes(x: NDArray[np.float32]) -> None:
    """Values beyond +-65504 decode to +-65504 (never inf); smaller ones stay in bound."""
    decoded = encode_tensor(x, Codec(name="float16")).to_dense()
    big = np.abs(x) > F16_MAX
    assert np.array_equal(decoded[big], np.sign(x[big]) * np.float32(F16_MAX))
    assert np.all(np.isfinite(decoded))


def _int8_scale(x: NDArray[np.float32]) -> float:
    peak = float(np.max(np.abs(x))) if x.size else 0.0
    return float(np.float32(max(peak / 127, 2.0**-126)))


scalable32 = finite32.filter(lambda v: abs(v) <= FLOAT32_MAX * 127 / 128)
"""Finite float32 values the int8 codec can scale (all but the top 1/128 of the range)."""


@given(x=float32_arrays(scalable32))
def test_codecs_int8_deterministic_error_within_bound(x: NDArray[np.float32]) -> None:
    """int8: scale = max(max|x|/127, 2**-126) in float32 and |x - d| <= scale (1/2 + 2**-16)."""
    tensor = _wire_round_trip(encode_tensor(x, Codec(name="int8")), "int8")
    assert tensor.scale == _int8_scale(x)
    assert tensor.values.dtype == np.int8
    assert np.all(np.abs(tensor.values.astype(np.int16)) <= 127)
    decoded = tensor.to_dense()
    assert decoded.shape == x.shape
    assert np.all(_abs_error(x, decoded) <= tensor.scale * (0.5 + 2.0**-16))


@given(x=float32_arrays(scalable32), seed=st.integers(0, 2**32 - 1))
def test_codecs_int8_stochastic_error_within_bound(x: NDArray[np.float32], seed: int) -> None:
    """int8 stochastic rounding: |x - d| < scale (1 + 2**-15)."""
    codec = Codec(name="int8", stochastic=True)
    tensor = _wire_round_trip(encode_tensor(x, codec, np.random.default_rng(seed)), "int8")
    assert tensor.scale is not None
    assert np.all(_abs_error(x, tensor.to_dense()) < tensor.scale * (1 + 2.0**-15))


def test_codecs_int8_stochastic_rounding_is_unbiased() -> None:
    """Averaged over many draws, stochastic int8 decodes to x (deterministic does not)."""
    x = np.full(20_000, 0.3, dtype=np.float32)
    x[0] = 127.0
    rng = np.random.default_rng(3)
    stochastic = encode_tensor(x, Codec(name="int8", stochastic=True), rng).to_dense()
    deterministic = encode_tensor(x, Codec(name="int8")).to_dense()
    assert float(np.mean(stochastic[1:])) == pytest.approx(0.3, abs=0.01)
    assert float(deterministic[1]) == 0.0


def test_codecs_int8_needs_rng_for_stochastic_rounding() -> None:
    """Stochastic rounding without an rng is a SerializationError, not a silent default."""
    with pytest.raises(SerializationError, match="rng"):
        encode_tensor(np.ones(3, np.float32), Codec(name="int8", stochastic=True))


@pytest.mark.parametrize("bad", [np.inf, -np.inf, np.nan, FLOAT32_MAX])
def test_codecs_int8_refuses_values_it_cannot_scale(bad: float) -> None:
    """Non-finite values and |x| above 127/128 of float32's max raise SerializationError."""
    with pytest.raises(SerializationError):
        encode_tensor(np.array([1.0, bad], dtype=np.float32), Codec(name="int8"))


def test_codecs_int8_tiny_values_use_the_smallest_normal_scale() -> None:
    """Subnormal inputs get scale 2**-126 and stay within the bound."""
    x = np.array([1e-45, -3e-40, 0.0], dtype=np.float32)
    tensor = encode_tensor(x, Codec(name="int8"))
    assert tensor.scale == 2.0**-126
    assert np.all(_abs_error(x, tensor.to_dense()) <= 2.0**-127)


@given(
    x=float32_arrays(),
    fraction=st.one_of(st.floats(min_value=1e-6, max_value=1.0), st.sampled_from([0.01, 1.0])),
)
def test_codecs_topk_keeps_the_largest_and_the_residual_is_exact(
    x: NDArray[np.float32], fraction: float
) -> None:
    """topk: k = min(n, ceil(f n)) largest |x| exact, x - d is exactly the dropped residual."""
    tensor = _wire_round_trip(encode_tensor(x, Codec(name="topk", topk_fraction=fraction)), "topk")
    n = x.size
    k = min(n, math.ceil(fraction * n))
    assert tensor.indices is not None
    assert tensor.values.shape == tensor.indices.shape == (k,)
    assert np.all(np.diff(tensor.indices.astype(np.int64)) > 0)
    flat = x.reshape(-1)
    kept = np.zeros(n, dtype=bool)
    kept[tensor.indices] = True
    assert np.array_equal(tensor.values, flat[kept])
    if 0 < k < n:
        assert np.min(np.abs(flat[kept])) >= np.max(np.abs(flat[~kept]))
    decoded = tensor.to_dense()
    assert decoded.shape == x.shape
    residual = x - decoded
    expected = np.where(kept, np.float32(0), flat).reshape(x.shape)
    assert residual.tobytes() == expected.tobytes()
    assert np.array_equal(decoded + residual, x)


def test_codecs_topk_error_feedback_carries_every_dropped_value() -> None:
    """Adding each residual to the next delta transmits every coordinate within n rounds."""
    x = np.array([4.0, -3.0, 2.0, 1.0], dtype=np.float32)
    codec = Codec(name="topk", topk_fraction=0.25)
    residual = np.zeros_like(x)
    sent = np.zeros_like(x)
    for delta in (x, np.zeros_like(x), np.zeros_like(x), np.zeros_like(x)):
        corrected = delta + residual
        decoded = encode_tensor(corrected, codec).to_dense()
        residual = corrected - decoded
        sent += decoded
        assert np.count_nonzero(decoded) == 1
    assert sent.tolist() == [4.0, -3.0, 2.0, 1.0]
    assert residual.tolist() == [0.0, 0.0, 0.0, 0.0]


@given(x=float32_arrays(moderate32))
def test_codecs_every_codec_decodes_to_float32_of_the_shape(x: NDArray[np.float32]) -> None:
    """decode_delta gives float32 arrays of the input shapes for every codec."""
    for name in CODEC_NAMES:
        encoded = encode_delta({"a": x}, Codec(name=name), np.random.default_rng(0))
        dense = decode_delta(encoded)["a"]
        assert dense.dtype == np.float32
        assert dense.shape == x.shape


@pytest.mark.parametrize(
    ("kwargs", "match"),
    [
        ({"name": "zstd"}, "unknown codec"),
        ({"topk_fraction": 0.0}, "topk_fraction"),
        ({"topk_fraction": 1.5}, "topk_fraction"),
    ],
)
def test_codecs_bad_parameters_are_refused(kwargs: dict[str, Any], match: str) -> None:
    """Unknown codec names and fractions outside (0, 1] raise SerializationError."""
    with pytest.raises(SerializationError, match=match):
        Codec(**kwargs)


def _topk_wire(shape: list[int], indices: list[int], values: list[float]) -> dict[str, Any]:
    return {
        "shape": shape,
        "values": {
            "dtype": "float32",
            "shape": [len(values)],
            "data": np.array(values, np.float32).tobytes(),
        },
        "indices": {
            "dtype": "uint32",
            "shape": [len(indices)],
            "data": np.array(indices, np.uint32).tobytes(),
        },
    }


def _int8_wire(scale: object) -> dict[str, Any]:
    return {
        "shape": [1],
        "scale": scale,
        "values": {"dtype": "int8", "shape": [1], "data": b"\x80"},
    }


@pytest.mark.parametrize(
    ("codec", "wire", "error"),
    [
        ("topk", _topk_wire([4], [1, 1], [1.0, 2.0]), MalformedError),
        ("topk", _topk_wire([4], [2, 1], [1.0, 2.0]), MalformedError),
        ("topk", _topk_wire([4], [4], [1.0]), MalformedError),
        ("topk", _topk_wire([4], [0, 1], [1.0]), MalformedError),
        ("topk", _topk_wire([2**22 + 1], [0], [1.0]), TooLargeError),
        ("topk", _topk_wire([2**11, 2**11, 2], [0], [1.0]), TooLargeError),
        ("topk", dict(_topk_wire([4], [0], [1.0]), indices=None), MalformedError),
        ("int8", _int8_wire(0.0), MalformedError),
        ("int8", _int8_wire(-1.0), MalformedError),
        ("int8", _int8_wire(1), MalformedError),
        ("int8", _int8_wire(float("nan")), MalformedError),
        ("int8", _int8_wire(FLOAT32_MAX / 127), MalformedError),
        ("int8", dict(_int8_wire(1.0), scale=None), MalformedError),
        ("float16", _topk_wire([1], [0], [1.0]), MalformedError),
        (
            "none",
            {"shape": [2], "values": {"dtype": "float32", "shape": [1], "data": bytes(4)}},
            MalformedError,
        ),
    ],
)
def test_codecs_bad_encoded_tensors_raise_typed_errors(
    codec: CodecName, wire: dict[str, Any], error: type[Exception]
) -> None:
    """Index order/range, giant dense shapes, int8 scale range and value dtypes are checked."""
    limits = DEFAULT_LIMITS
    value = read_msgpack(msgpack.packb(wire, use_bin_type=True), limits)
    with pytest.raises(error):
        tensor_from_wire(value, codec, limits, limits.max_total_elements)


def test_codecs_int8_largest_scale_decodes_without_overflow() -> None:
    """Scale (2 - 2**-23) * 2**120 times -128 is exactly -float32 max, not -inf."""
    limits = DEFAULT_LIMITS
    wire = _int8_wire((2 - 2.0**-23) * 2.0**120)
    value = read_msgpack(msgpack.packb(wire, use_bin_type=True), limits)
    tensor = tensor_from_wire(value, "int8", limits, limits.max_total_elements)
    assert tensor.to_dense().tolist() == [-FLOAT32_MAX]


def test_codecs_int8_scale_may_arrive_as_float32() -> None:
    """A scale written in msgpack's float32 format (0xca) decodes like float64."""
    limits = DEFAULT_LIMITS
    packed = msgpack.packb(_int8_wire(0.5), use_bin_type=True)
    as_float32 = packed.replace(b"\xcb" + struct.pack(">d", 0.5), b"\xca" + struct.pack(">f", 0.5))
    assert len(as_float32) == len(packed) - 4
    tensor = tensor_from_wire(read_msgpack(as_float32, limits), "int8", limits, 10)
    assert tensor.to_dense().tolist() == [-64.0]
