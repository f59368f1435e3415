"""Hand-built vector payloads: invalid messages, and valid ones in non-canonical formats."""

from __future__ import annotations

import struct
from dataclasses import dataclass
from typing import Any

import msgpack

__all__ = ["Invalid", "foreign_receipt", "foreign_status", "invalid_cases"]

MALFORMED = "MalformedError"
TOO_LARGE = "TooLargeError"


@dataclass(frozen=True, kw_only=True, slots=True)
class Invalid:
    """A payload that a decoder of ``message`` must refuse with the class named ``error``."""

    message: str
    name: str
    description: str
    payload: bytes
    error: str = MALFORMED


def _pk(value: object) -> bytes:
    packed: bytes = msgpack.packb(value, use_bin_type=True)
    return packed


def _str8(text: str) -> bytes:
    data = text.encode()
    return struct.pack(">BB", 0xD9, len(data)) + data


def _str16(text: str) -> bytes:
    data = text.encode()
    return struct.pack(">BH", 0xDA, len(data)) + data


def foreign_receipt() -> bytes:
    """receipt_accepted's values in map16, str8/str16, bin32, uint64 and int64 formats, keys
    in reverse order, after an unknown key ``x-future``."""
    return b"".join([
        struct.pack(">BH", 0xDE, 9),
        _str8("x-future"), bytes([0x92, 0xC0, 0x80]),
        _str16("model_version"), struct.pack(">BQ", 0xCF, 7),
        _str8("update_id"), struct.pack(">BI", 0xC6, 16) + bytes(range(16)),
        _str16("status"), _str16("accepted"),
        _str8("reason"), _str16(""),
        _str8("device"), _str8("d1"),
        _str8("task"), _str16("t1"),
        _str8("type"), _str8("receipt"),
        _str8("fedmq"), struct.pack(">Bq", 0xD3, 1),
    ])  # fmt: skip


def foreign_status() -> bytes:
    """status_online's values with a float32 ``at`` and int16 / uint32 / uint8 integers."""
    return b"".join([
        bytes([0x88]),
        _str8("at"), struct.pack(">Bf", 0xCA, 1_700_000_000.0),
        _pk("connections"), struct.pack(">Bh", 0xD1, 3),
        _pk("model_version"), struct.pack(">BI", 0xCE, 9),
        _pk("state"), _pk("online"),
        _pk("device"), _pk("d1"),
        _pk("task"), _pk("t1"),
        _pk("type"), _pk("status"),
        _pk("fedmq"), struct.pack(">BB", 0xCC, 1),
    ])  # fmt: skip


def invalid_cases(receipt: bytes, update: bytes, status: bytes, control: bytes) -> list[Invalid]:
    """Invalid payloads derived from valid ones (``update`` must use the topk codec and hold
    a tensor ``layer1.weight`` with three kept values)."""
    r: dict[str, Any] = msgpack.unpackb(receipt)
    u: dict[str, Any] = msgpack.unpackb(update)
    weight = u["tensors"]["layer1.weight"]
    giant = {"w": dict(weight, shape=[65536, 65536])}
    unsorted = {"w": dict(weight, indices=dict(weight["indices"], data=bytes(12)))}
    complex64 = {"w": dict(weight, values=dict(weight["values"], dtype="complex64"))}
    head = _pk(r)
    at = head.index(b"\xc4\x10")
    unversioned = _pk({k: v for k, v in r.items() if k != "fedmq"})

    def receipt_case(name: str, what: str, payload: bytes, error: str = MALFORMED) -> Invalid:
        return Invalid(message="Receipt", name=name, description=what, payload=payload, error=error)

    def update_case(name: str, what: str, payload: bytes, error: str = MALFORMED) -> Invalid:
        return Invalid(
            message="ModelUpdate", name=name, description=what, payload=payload, error=error
        )

    return [
        receipt_case("version_2", "fedmq = 2.", _pk({**r, "fedmq": 2}), "UnsupportedVersionError"),
        receipt_case("no_version", "No fedmq key.", unversioned),
        receipt_case("wrong_type", "type 'status'.", _pk({**r, "type": "status"})),
        receipt_case("duplicate_key", "The key 'task' twice.",
                     bytes([head[0] + 1]) + head[1:] + _pk("task") + _pk("t2")),
        receipt_case("trailing_byte", "One byte after the map.", head + b"\xc0"),
        receipt_case("truncated", "Last byte missing.", head[:-1]),
        receipt_case("short_update_id", "A 15-byte update_id.", _pk({**r, "update_id": bytes(15)})),
        receipt_case("device_with_slash", "device 'd/1'.", _pk({**r, "device": "d/1"})),
        receipt_case("long_reason", "A 257-byte reason.", _pk({**r, "reason": "x" * 257}),
                     TOO_LARGE),
        receipt_case("ext_type", "An ext value as reason.",
                     _pk({**r, "reason": msgpack.ExtType(1, b"x")})),
        receipt_case("huge_bin_header", "update_id: a bin32 declaring 2**32-1 bytes.",
                     head[:at] + b"\xc6\xff\xff\xff\xff" + bytes(16)),
        update_case("topk_giant_shape", "A topk tensor declaring 65536 x 65536 dense elements.",
                    _pk({**u, "tensors": giant}), TOO_LARGE),
        update_case("topk_unsorted_indices", "topk indices [0, 0, 0].",
                    _pk({**u, "tensors": unsorted})),
        update_case("complex_dtype", "dtype complex64.", _pk({**u, "tensors": complex64})),
        update_case("unknown_codec", "codec 'zstd'.", _pk({**u, "codec": "zstd"})),
        update_case("negative_samples", "num_samples -1.", _pk({**u, "num_samples": -1})),
        Invalid(message="DeviceStatus", name="bad_state", description="state 'away'.",
                payload=_pk({**msgpack.unpackb(status), "state": "away"})),
        Invalid(message="Control", name="participation_above_1", description="participation 1.5.",
                payload=_pk({**msgpack.unpackb(control), "participation": 1.5})),
    ]  # fmt: skip
