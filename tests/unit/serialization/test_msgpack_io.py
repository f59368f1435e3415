"""The bounded msgpack reader and the splicing writer, against msgpack-python."""

from __future__ import annotations

import struct

import msgpack
import pytest
from hypothesis import given
from hypothesis import strategies as st

from serialization import DEFAULT_LIMITS, Limits, MalformedError, TooLargeError
from serialization.msgpack_reader import Value, read_msgpack
from serialization.msgpack_writer import SPLICE_MIN_BYTES, BinChunks, Chunk, pack_chunks, packb

_keys = st.text(max_size=10)
_leaves = st.one_of(
    st.none(),
    st.booleans(),
    st.integers(-(2**63), 2**64 - 1),
    st.floats(allow_nan=False),
    st.text(max_size=40),
    st.binary(max_size=300),
    st.integers(0, 70_000).map(lambda n: bytes(n % 251 for n in range(n))),
)
values = st.recursive(
    _leaves,
    lambda inner: st.lists(inner, max_size=5) | st.dictionaries(_keys, inner, max_size=5),
    max_leaves=12,
)
"""msgpack values of every family our messages use, nested up to the depth limit."""


def _plain(value: Value) -> object:
    if isinstance(value, memoryview):
        return bytes(value)
    if isinstance(value, list):
        return [_plain(v) for v in value]
    if isinstance(value, dict):
        return {k: _plain(v) for k, v in value.items()}
    return value


@given(value=values)
def test_msgpack_writer_matches_msgpack_python_byte_for_byte(value: object) -> None:
    """packb(v) is exactly msgpack.packb(v, use_bin_type=True), large bins included."""
    assert packb(value) == msgpack.packb(value, use_bin_type=True)


@given(value=values)
def test_msgpack_reader_agrees_with_msgpack_python(value: object) -> None:
    """read_msgpack decodes what msgpack-python encodes to the same value (bins as bytes)."""
    payload = msgpack.packb(value, use_bin_type=True)
    limits = Limits(max_depth=16, max_string_bytes=1000)
    assert _plain(read_msgpack(payload, limits)) == msgpack.unpackb(payload, strict_map_key=False)


def test_msgpack_writer_splices_large_bins_without_copying_them() -> None:
    """Bins of SPLICE_MIN_BYTES or more are the caller's own buffer in the chunk list."""
    big = memoryview(bytes(SPLICE_MIN_BYTES))
    small = b"x" * (SPLICE_MIN_BYTES - 1)
    out: list[Chunk] = []
    pack_chunks({"a": big, "b": small}, out, msgpack.Packer(use_bin_type=True))
    assert any(chunk is big for chunk in out)
    assert not any(chunk is small for chunk in out)
    assert b"".join(out) == msgpack.packb({"a": bytes(big), "b": small}, use_bin_type=True)


@pytest.mark.parametrize("size", [0, 255, 256, 65535, 65536])
def test_msgpack_writer_bin_chunks_is_one_bin_of_the_joined_chunks(size: int) -> None:
    """BinChunks writes bin8/16/32 headers exactly as msgpack does for the joined bytes."""
    data = bytes(i % 7 for i in range(size))
    chunks = BinChunks((data[: size // 3], memoryview(data[size // 3 :])))
    assert chunks.nbytes == size
    assert packb({"b": chunks}) == msgpack.packb({"b": data}, use_bin_type=True)


@pytest.mark.parametrize(
    ("payload", "expected"),
    [
        (b"\x7f", 127), (b"\xe0", -32), (b"\xcc\xff", 255), (b"\xcd\xff\xff", 65535),
        (b"\xce\xff\xff\xff\xff", 2**32 - 1), (b"\xcf" + b"\xff" * 8, 2**64 - 1),
        (b"\xd0\x80", -128), (b"\xd1\x80\x00", -32768), (b"\xd2\x80\x00\x00\x00", -(2**31)),
        (b"\xd3\x80" + bytes(7), -(2**63)), (b"\xd0\x05", 5), (b"\xcf" + bytes(7) + b"\x05", 5),
        (b"\xca" + struct.pack(">f", 1.5), 1.5), (b"\xcb" + struct.pack(">d", -0.25), -0.25),
        (b"\xc0", None), (b"\xc2", False), (b"\xc3", True),
        (b"\xa1a", "a"), (b"\xd9\x01a", "a"), (b"\xda\x00\x01a", "a"),
        (b"\xdb\x00\x00\x00\x01a", "a"), (b"\xc4\x01z", b"z"), (b"\xc5\x00\x01z", b"z"),
        (b"\xc6\x00\x00\x00\x01z", b"z"), (b"\x91\x01", [1]), (b"\xdc\x00\x01\x01", [1]),
        (b"\xdd\x00\x00\x00\x01\x01", [1]), (b"\x81\xa1k\x01", {"k": 1}),
        (b"\xde\x00\x01\xa1k\x01", {"k": 1}), (b"\xdf\x00\x00\x00\x01\xa1k\x01", {"k": 1}),
    ],
)  # fmt: skip
def test_msgpack_reader_accepts_every_format_width(payload: bytes, expected: object) -> None:
    """Every int, float, str, bin, array and map format decodes, whatever its width."""
    assert _plain(read_msgpack(payload, DEFAULT_LIMITS)) == expected


@pytest.mark.parametrize(
    "payload",
    [
        b"", b"\xc1", b"\xd4\x01\x00", b"\xc7\x01\x01x", b"\xd9", b"\xcd\x01",
        b"\xc6\xff\xff\xff\xff", b"\xdb\x00\x00\x00\x05abc", b"\xdd\xff\xff\xff\xff",
        b"\xdf\xff\xff\xff\xff", b"\xdc\xff\xff\x01", b"\x82\xa1a\x01\xa1a\x02",
        b"\x81\x01\x01", b"\x81\xc4\x01a\x01", b"\xa2\xff\xfe", b"\x01\x02",
        b"\x91" * 6 + b"\x01",
    ],
    ids=[
        "empty", "never-used", "fixext", "ext8", "str8-no-length", "uint16-truncated",
        "bin32-huge", "str32-short", "array32-huge", "map32-huge", "array16-huge",
        "duplicate-key", "int-key", "bin-key", "bad-utf8", "trailing", "too-deep",
    ],
)  # fmt: skip
def test_msgpack_reader_refuses_bad_input_as_malformed(payload: bytes) -> None:
    """Ext types, truncation, overruns, bad keys, bad UTF-8, trailing bytes, depth: Malformed."""
    with pytest.raises(MalformedError):
        read_msgpack(payload, DEFAULT_LIMITS)


def test_msgpack_reader_depth_limit_is_exact() -> None:
    """max_depth = 5 nested containers are fine, the sixth is refused."""
    assert read_msgpack(b"\x91" * 5 + b"\x01", DEFAULT_LIMITS) == [[[[[1]]]]]


def test_msgpack_reader_string_limit() -> None:
    """A string of max_string_bytes is fine; one byte more is TooLargeError (even undecoded)."""
    assert read_msgpack(msgpack.packb("é" * 128), DEFAULT_LIMITS) == "é" * 128
    with pytest.raises(TooLargeError) as info:
        read_msgpack(b"\xdb\xff\xff\xff\xff", DEFAULT_LIMITS)
    assert (info.value.what, info.value.limit) == ("string length", 256)


def test_msgpack_reader_value_budget() -> None:
    """More than max_values values in one message is TooLargeError, checked per container."""
    limits = Limits(max_values=10)
    assert read_msgpack(msgpack.packb([0] * 9), limits) == [0] * 9
    with pytest.raises(TooLargeError) as info:
        read_msgpack(msgpack.packb([0] * 10), limits)
    assert info.value.what == "msgpack values"
    with pytest.raises(TooLargeError):
        read_msgpack(msgpack.packb([[0] * 5, [0] * 5]), limits)
    many_bins = msgpack.packb([b""] * 40_000, use_bin_type=True)
    with pytest.raises(TooLargeError):
        read_msgpack(many_bins, DEFAULT_LIMITS)


def test_msgpack_reader_bins_are_views_of_the_payload() -> None:
    """bin values are memoryviews into the payload object (no copy)."""
    payload = msgpack.packb({"b": b"abc"}, use_bin_type=True)
    value = read_msgpack(payload, DEFAULT_LIMITS)
    assert isinstance(value, dict)
    view = value["b"]
    assert isinstance(view, memoryview)
    assert view.obj is payload
    assert bytes(view) == b"abc"


def test_msgpack_reader_accepts_bytearray_and_memoryview() -> None:
    """Payloads may be bytes, bytearray or memoryview (also of another item format)."""
    packed = msgpack.packb({"k": [1, 2]})
    for payload in (bytearray(packed), memoryview(packed), memoryview(bytearray(packed)).cast("b")):
        assert read_msgpack(payload, DEFAULT_LIMITS) == {"k": [1, 2]}
