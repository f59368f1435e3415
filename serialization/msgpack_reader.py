"""A bounded msgpack reader whose ``bin`` values are zero-copy views of the input."""

from __future__ import annotations

import struct
from typing import TypeAlias

from serialization.errors import MalformedError, TooLargeError
from serialization.limits import Limits

__all__ = ["Value", "read_msgpack"]

Value: TypeAlias = "bool | int | float | str | memoryview | list[Value] | dict[str, Value] | None"

_FIXED = {0xC0: None, 0xC2: False, 0xC3: True}
_UINT = {
    tag: struct.Struct(fmt)
    for tag, fmt in zip(range(0xCC, 0xD0), (">B", ">H", ">I", ">Q"), strict=True)
}
_INT = {
    tag: struct.Struct(fmt)
    for tag, fmt in zip(range(0xD0, 0xD4), (">b", ">h", ">i", ">q"), strict=True)
}
_FLOAT = {0xCA: struct.Struct(">f"), 0xCB: struct.Struct(">d")}
_LENGTH = {1: struct.Struct(">B"), 2: struct.Struct(">H"), 4: struct.Struct(">I")}
_BIN = {0xC4: 1, 0xC5: 2, 0xC6: 4}
_STR = {0xD9: 1, 0xDA: 2, 0xDB: 4}
_ARRAY = {0xDC: 2, 0xDD: 4}
_MAP = {0xDE: 2, 0xDF: 4}


class _Reader:
    __slots__ = ("buf", "end", "left", "limits", "pos")

    def __init__(self, buf: memoryview, limits: Limits) -> None:
        self.buf = buf
        self.pos = 0
        self.end = len(buf)
        self.limits = limits
        self.left = limits.max_values

    def take(self, n: int) -> memoryview:
        end = self.pos + n
        if end > self.end:
            raise MalformedError(f"truncated: need {n} bytes at offset {self.pos}")
        view = self.buf[self.pos : end]
        self.pos = end
        return view

    def unpack(self, fmt: struct.Struct) -> int | float:
        if self.pos + fmt.size > self.end:
            raise MalformedError(f"truncated: need {fmt.size} bytes at offset {self.pos}")
        value: int | float = fmt.unpack_from(self.buf, self.pos)[0]
        self.pos += fmt.size
        return value

    def length(self, width: int) -> int:
        return int(self.unpack(_LENGTH[width]))

    def string(self, n: int) -> str:
        if n > self.limits.max_string_bytes:
            raise TooLargeError("string length", n, self.limits.max_string_bytes)
        try:
            return str(self.take(n), "utf-8")
        except UnicodeDecodeError as exc:
            raise MalformedError(f"string at offset {self.pos - n} is not UTF-8") from exc

    def count(self, n: int, values_per_item: int) -> int:
        # Every value takes at least one byte: a count that cannot fit in what is left is
        # rejected before any list or dict is grown, and so is one above the value budget.
        if n * values_per_item > self.end - self.pos:
            raise MalformedError(f"container of {n} items overruns the payload")
        if n * values_per_item > self.left:
            used = self.limits.max_values - self.left
            raise TooLargeError(
                "msgpack values", used + n * values_per_item, self.limits.max_values
            )
        return n

    def value(self, depth: int) -> Value:  # noqa: PLR0911, PLR0912 - one branch per format family
        if self.left <= 0:
            raise TooLargeError(
                "msgpack values", self.limits.max_values + 1, self.limits.max_values
            )
        self.left -= 1
        if self.pos >= self.end:
            raise MalformedError(f"truncated: need 1 byte at offset {self.pos}")
        tag = self.buf[self.pos]
        self.pos += 1
        if tag <= 0x7F:
            return tag
        if tag >= 0xE0:
            return tag - 0x100
        if 0xA0 <= tag <= 0xBF:
            return self.string(tag & 0x1F)
        if 0x90 <= tag <= 0x9F:
            return self.array(tag & 0x0F, depth)
        if 0x80 <= tag <= 0x8F:
            return self.map(tag & 0x0F, depth)
        if tag in _FIXED:
            return _FIXED[tag]
        if tag in _UINT:
            return int(self.unpack(_UINT[tag]))
        if tag in _INT:
            return int(self.unpack(_INT[tag]))
        if tag in _FLOAT:
            return float(self.unpack(_FLOAT[tag]))
        if tag in _BIN:
            return self.take(self.length(_BIN[tag]))
        if tag in _STR:
            return self.string(self.length(_STR[tag]))
        if tag in _ARRAY:
            return self.array(self.length(_ARRAY[tag]), depth)
        if tag in _MAP:
            return self.map(self.length(_MAP[tag]), depth)
        raise MalformedError(f"unsupported msgpack type 0x{tag:02x} at offset {self.pos - 1}")

    def nested(self, depth: int) -> int:
        if depth >= self.limits.max_depth:
            raise MalformedError(f"nesting deeper than {self.limits.max_depth}")
        return depth + 1

    def array(self, n: int, depth: int) -> list[Value]:
        inner = self.nested(depth)
        return [self.value(inner) for _ in range(self.count(n, 1))]

    def map(self, n: int, depth: int) -> dict[str, Value]:
        inner = self.nested(depth)
        result: dict[str, Value] = {}
        for _ in range(self.count(n, 2)):
            key = self.value(inner)
            if not isinstance(key, str):
                raise MalformedError("map keys must be strings")
            if key in result:
                raise MalformedError(f"duplicate map key {key!r}")
            result[key] = self.value(inner)
        return result


def read_msgpack(payload: bytes | bytearray | memoryview, limits: Limits) -> Value:
    """Decode one msgpack value that must span all of ``payload``.

    ``bin`` values come back as memoryviews into ``payload`` (no copy); ext types, non-string
    map keys, duplicate keys, invalid UTF-8, trailing bytes and anything above ``limits``
    (payload size, string length, nesting depth, number of values) raise a SerializationError
    subclass.
    """
    if len(payload) > limits.max_payload_bytes:
        raise TooLargeError("payload size", len(payload), limits.max_payload_bytes)
    buf = memoryview(payload)
    if buf.format != "B" or buf.ndim != 1:
        buf = buf.cast("B")
    reader = _Reader(buf, limits)
    result = reader.value(0)
    if reader.pos != len(buf):
        raise MalformedError(f"{len(buf) - reader.pos} trailing bytes after the message")
    return result
