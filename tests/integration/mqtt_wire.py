"""MQTT wire primitives for the tests' raw clients (ACL probes, the scale swarm)."""

from __future__ import annotations

import struct


def varint(value: int) -> bytes:
    """An MQTT Variable Byte Integer (the Remaining Length encoding)."""
    out = bytearray()
    while True:
        value, digit = value >> 7, value & 0x7F
        out.append(digit | (0x80 if value else 0))
        if not value:
            return bytes(out)


def utf8_string(value: str) -> bytes:
    """An MQTT UTF-8 Encoded String: two-byte length, then the bytes."""
    data = value.encode()
    return struct.pack("!H", len(data)) + data
