"""A msgpack writer that emits msgpack-python's exact bytes but copies large bins only once."""

from __future__ import annotations

import struct
from dataclasses import dataclass

import msgpack

__all__ = ["SPLICE_MIN_BYTES", "BinChunks", "Chunk", "pack_chunks", "packb"]

Chunk = bytes | memoryview
"""A piece of an encoded message: packed bytes, or a view of a bin value's data."""

SPLICE_MIN_BYTES = 1024
"""Bins at least this long are referenced in the output chunks, not packed."""

_BIN8_MAX = 0xFF
_BIN16_MAX = 0xFFFF
_BIN32_MAX = 0xFFFF_FFFF


@dataclass(frozen=True, slots=True)
class BinChunks:
    """A bin value given as the concatenation of ``chunks``, written without joining them."""

    chunks: tuple[Chunk, ...]

    @property
    def nbytes(self) -> int:
        """Length of the bin value."""
        return sum(_nbytes(chunk) for chunk in self.chunks)


def _nbytes(chunk: Chunk) -> int:
    return chunk.nbytes if isinstance(chunk, memoryview) else len(chunk)


def _bin_header(n: int) -> bytes:
    if n <= _BIN8_MAX:
        return struct.pack(">BB", 0xC4, n)
    if n <= _BIN16_MAX:
        return struct.pack(">BH", 0xC5, n)
    if n <= _BIN32_MAX:
        return struct.pack(">BI", 0xC6, n)
    raise ValueError(f"bin of {n} bytes exceeds msgpack's 2**32 - 1")


def pack_chunks(value: object, out: list[Chunk], packer: msgpack.Packer) -> None:
    """Append the msgpack encoding of ``value`` to ``out`` as chunks.

    ``b"".join(out)`` equals ``msgpack.packb(value, use_bin_type=True)`` (with BinChunks
    packed as the bin of its joined chunks): maps are walked so that bins of at least
    SPLICE_MIN_BYTES appear as their own chunk, a view of the caller's buffer.
    """
    if isinstance(value, dict):
        out.append(packer.pack_map_header(len(value)))
        for key, item in value.items():
            out.append(packer.pack(key))
            pack_chunks(item, out, packer)
    elif isinstance(value, BinChunks):
        out.append(_bin_header(value.nbytes))
        out.extend(value.chunks)
    elif isinstance(value, bytes | memoryview) and _nbytes(value) >= SPLICE_MIN_BYTES:
        out.append(_bin_header(_nbytes(value)))
        out.append(value)
    else:
        out.append(packer.pack(value))


def packb(value: object) -> bytes:
    """``msgpack.packb(value, use_bin_type=True)``, copying each large bin once."""
    out: list[Chunk] = []
    pack_chunks(value, out, msgpack.Packer(use_bin_type=True))
    return b"".join(out)
