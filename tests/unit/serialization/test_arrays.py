"""Arrays on the wire: every whitelisted dtype and shape round-trips, zero-copy, bounded."""

from __future__ import annotations

from typing import Any

import msgpack
import numpy as np
import pytest
from hypothesis import given
from hypothesis import strategies as st
from numpy.typing import NDArray

from serialization import (
    DEFAULT_LIMITS,
    Codec,
    Limits,
    MalformedError,
    ModelRelease,
    ModelUpdate,
    SerializationError,
    SigningKey,
    TooLargeError,
    encode_delta,
)
from serialization.arrays import DTYPES, array_from_wire, array_to_wire
from serialization.msgpack_reader import read_msgpack
from tests.unit.serialization.strategies import WIRE_DTYPES, wire_arrays

KEY = SigningKey.generate()


def _round_trip(array: NDArray[Any], limits: Limits = DEFAULT_LIMITS) -> NDArray[Any]:
    payload = msgpack.packb(array_to_wire(array), use_bin_type=True)
    return array_from_wire(read_msgpack(payload, limits), limits, budget=limits.max_total_elements)


def test_arrays_whitelist_is_the_ten_spec_dtypes() -> None:
    """The whitelist holds exactly SPEC.md's ten dtypes, all little-endian."""
    assert set(DTYPES) == {
        "float16", "float32", "float64", "int8", "int16", "int32", "int64",
        "uint8", "uint16", "uint32",
    }  # fmt: skip
    assert all(dtype.byteorder in "<|" for dtype in DTYPES.values())


@pytest.mark.parametrize("dtype", WIRE_DTYPES)
@given(data=st.data())
def test_arrays_round_trip_every_dtype_and_shape(dtype: str, data: st.DataObject) -> None:
    """decode(encode(x)) has x's dtype, shape and exact bytes (NaNs included)."""
    array = data.draw(wire_arrays(dtype))
    decoded = _round_trip(array)
    assert decoded.dtype == np.dtype(dtype)
    assert decoded.shape == array.shape
    assert decoded.tobytes() == array.astype(np.dtype(dtype).newbyteorder("<")).tobytes()


@given(array=wire_arrays())
def test_arrays_round_trip_through_a_signed_release(array: NDArray[Any]) -> None:
    """Release tensors of any dtype and shape come back bit-identical."""
    release = ModelRelease(task="t", version=1, parent_version=0, tensors={"x": array})
    decoded = ModelRelease.decode(release.encode(KEY), KEY.verify_key).tensors["x"]
    assert (decoded.dtype, decoded.shape) == (array.dtype, array.shape)
    assert decoded.tobytes() == array.tobytes()


def test_arrays_wire_bytes_are_little_endian() -> None:
    """A big-endian array is written little-endian and reads back equal."""
    array = np.array([1, 256, -2], dtype=">i4")
    wire = array_to_wire(array)
    assert wire["dtype"] == "int32"
    data = wire["data"]
    assert isinstance(data, memoryview)
    assert bytes(data) == bytes.fromhex("01000000 00010000 feffffff")
    assert _round_trip(array).tolist() == [1, 256, -2]


def test_arrays_non_contiguous_input_is_written_in_c_order() -> None:
    """A transposed view is serialised in C order of its logical shape."""
    array = np.arange(6, dtype=np.int16).reshape(2, 3).T
    decoded = _round_trip(array)
    assert decoded.shape == (3, 2)
    assert decoded.tolist() == [[0, 3], [1, 4], [2, 5]]


@pytest.mark.parametrize("dtype", [np.bool_, np.complex64, np.object_, np.uint64, np.datetime64])
def test_arrays_non_whitelisted_dtype_is_refused(dtype: type[np.generic]) -> None:
    """bool, complex, object, uint64 and datetime never reach the wire."""
    with pytest.raises(SerializationError, match="whitelist"):
        array_to_wire(np.zeros(2, dtype=dtype))


def _wire(dtype: object = "float32", shape: object = (2,), data: object = bytes(8)) -> bytes:
    packed: bytes = msgpack.packb({"dtype": dtype, "shape": shape, "data": data})
    return packed


@pytest.mark.parametrize(
    ("payload", "error"),
    [
        (_wire(dtype="complex64"), MalformedError),
        (_wire(dtype=["float32"]), MalformedError),
        (_wire(dtype=b"float32"), MalformedError),
        (_wire(shape=[-1]), MalformedError),
        (_wire(shape=[2.0]), MalformedError),
        (_wire(shape=[True, 2]), MalformedError),
        (_wire(shape=[1] * 9, data=bytes(4)), MalformedError),
        (_wire(data=bytes(7)), MalformedError),
        (_wire(data="x" * 8), MalformedError),
        (_wire(shape=[0, 2**40], data=b""), TooLargeError),
        (_wire(shape=[0, 2**63, 2**63], data=b""), TooLargeError),
        (_wire(shape=[2**22 + 1], data=b""), TooLargeError),
        (msgpack.packb([1, 2]), MalformedError),
    ],
)
def test_arrays_bad_wire_maps_raise_typed_errors(payload: bytes, error: type[Exception]) -> None:
    """Bad dtype, shape, data length or dimension count raise the documented class."""
    with pytest.raises(error):
        _round_trip_payload(payload)


def _round_trip_payload(payload: bytes) -> NDArray[Any]:
    limits = DEFAULT_LIMITS
    return array_from_wire(read_msgpack(payload, limits), limits, budget=limits.max_total_elements)


def test_arrays_empty_axis_within_the_extent_limit_decodes() -> None:
    """[0, 2**22] is allowed: zero-length axes count as 1 against max_tensor_elements."""
    decoded = _round_trip_payload(_wire(shape=[0, 2**22], data=b""))
    assert decoded.shape == (0, 2**22)


def test_arrays_element_budget_counts_the_whole_message() -> None:
    """A tensor that fits alone but not in the remaining budget raises TooLargeError."""
    limits = Limits(max_total_elements=10)
    payload = msgpack.packb(array_to_wire(np.zeros(6, np.float32)))
    with pytest.raises(TooLargeError) as info:
        array_from_wire(read_msgpack(payload, limits), limits, budget=4)
    assert (info.value.what, info.value.size, info.value.limit) == ("total elements", 12, 10)


def test_arrays_update_decode_is_zero_copy() -> None:
    """Decoded update values are read-only views of the payload bytes, not copies."""
    delta = {"w": np.arange(1000, dtype=np.float32)}
    for name in ("none", "float16", "int8", "topk"):
        update = ModelUpdate(
            task="t",
            device_id="d",
            update_id=bytes(16),
            base_version=0,
            num_samples=1,
            codec=name,
            tensors=encode_delta(delta, Codec(name=name, topk_fraction=0.5)),
        )
        payload = update.encode()
        tensor = ModelUpdate.decode(payload).tensors["w"]
        whole = np.frombuffer(payload, dtype=np.uint8)
        assert np.shares_memory(tensor.values, whole), name
        assert not tensor.values.flags.writeable
        if tensor.indices is not None:
            assert np.shares_memory(tensor.indices, whole)


def test_arrays_release_decode_is_zero_copy() -> None:
    """Release tensors are views of the payload: the base chain ends at the payload object."""
    payload = ModelRelease(
        task="t", version=1, parent_version=0, tensors={"w": np.ones((100, 10), np.float32)}
    ).encode(KEY)
    tensor = ModelRelease.decode(payload, KEY.verify_key).tensors["w"]
    assert np.shares_memory(tensor, np.frombuffer(payload, dtype=np.uint8))
    base: object = tensor
    while isinstance(base, np.ndarray):
        base = base.base
    assert isinstance(base, memoryview)
    assert base.obj is payload
