"""Typed access to the fields of a decoded message map, with SerializationErrors."""

from __future__ import annotations

import math
from collections.abc import Callable
from typing import Protocol, TypeAlias, TypeVar

from serialization.errors import MalformedError, TooLargeError, UnsupportedVersionError
from serialization.limits import Limits
from serialization.msgpack_reader import Value, read_msgpack
from serialization.msgpack_writer import packb
from serialization.topics import validate_identifier

__all__ = ["FORMAT_VERSION", "Fields", "Scalar", "named_tensors", "open_message", "pack_message"]

FORMAT_VERSION = 1
"""The ``fedmq`` key of every message; a decoder rejects any other value."""

Scalar: TypeAlias = str | int | float | bool
_Choice = TypeVar("_Choice", bound=str)


class Fields:
    """A decoded msgpack map of one message, read field by field with type checks."""

    __slots__ = ("limits", "mapping", "what")

    def __init__(self, mapping: dict[str, Value], what: str, limits: Limits) -> None:
        self.mapping = mapping
        self.what = what
        self.limits = limits

    def _get(self, key: str) -> Value:
        if key not in self.mapping:
            raise MalformedError(f"{self.what} lacks the field {key!r}")
        return self.mapping[key]

    def text(self, key: str) -> str:
        """A string field."""
        value = self._get(key)
        if not isinstance(value, str):
            raise MalformedError(f"{self.what}.{key} must be a string")
        return value

    def identifier(self, key: str) -> str:
        """A task or device id (one safe topic level)."""
        return validate_identifier(self.text(key), f"{self.what}.{key}")

    def choice(self, key: str, options: tuple[_Choice, ...]) -> _Choice:
        """A string field restricted to ``options`` (typed as the options' Literal)."""
        value = self.text(key)
        if value not in options:
            raise MalformedError(f"{self.what}.{key} must be one of {options}, not {value!r}")
        return options[options.index(value)]

    def integer(self, key: str, *, minimum: int = 0, maximum: int = 2**63 - 1) -> int:
        """An integer field within [minimum, maximum]."""
        value = self._get(key)
        if type(value) is not int or not minimum <= value <= maximum:
            raise MalformedError(f"{self.what}.{key} must be an integer in [{minimum}, {maximum}]")
        return value

    def number(self, key: str, *, minimum: float = -math.inf, maximum: float = math.inf) -> float:
        """A finite float field within [minimum, maximum] (msgpack ints are accepted)."""
        value = self._get(key)
        if isinstance(value, bool) or not isinstance(value, int | float):
            raise MalformedError(f"{self.what}.{key} must be a finite number")
        number = float(value)
        if not math.isfinite(number):
            raise MalformedError(f"{self.what}.{key} must be a finite number")
        if not minimum <= number <= maximum:
            raise MalformedError(f"{self.what}.{key} must be in [{minimum}, {maximum}]")
        return number

    def binary(self, key: str, *, length: int | None = None) -> memoryview:
        """A bin field, optionally of an exact length."""
        value = self._get(key)
        if not isinstance(value, memoryview):
            raise MalformedError(f"{self.what}.{key} must be bin")
        if length is not None and len(value) != length:
            raise MalformedError(f"{self.what}.{key} must be {length} bytes")
        return value

    def submap(self, key: str, *, max_entries: int) -> dict[str, Value]:
        """A map field with at most ``max_entries`` entries."""
        value = self._get(key)
        if not isinstance(value, dict):
            raise MalformedError(f"{self.what}.{key} must be a map")
        if len(value) > max_entries:
            raise TooLargeError(f"{self.what}.{key} entries", len(value), max_entries)
        return value

    def scalars(self, key: str) -> dict[str, Scalar]:
        """A map of string keys to str, int, float (finite) or bool values."""
        result: dict[str, Scalar] = {}
        for name, value in self.submap(key, max_entries=self.limits.max_map_entries).items():
            if isinstance(value, float) and not math.isfinite(value):
                raise MalformedError(f"{self.what}.{key}[{name!r}] must be finite")
            if not isinstance(value, str | int | float | bool):
                raise MalformedError(f"{self.what}.{key}[{name!r}] must be a scalar")
            result[name] = value
        return result


def pack_message(kind: str, body: dict[str, object]) -> bytes:
    """msgpack of ``{"fedmq": FORMAT_VERSION, "type": kind, **body}`` (bin for bytes)."""
    return packb({"fedmq": FORMAT_VERSION, "type": kind, **body})


def open_message(payload: bytes | bytearray | memoryview, kind: str, limits: Limits) -> Fields:
    """Parse ``payload`` as a fedmq message of type ``kind`` and check its envelope."""
    decoded = read_msgpack(payload, limits)
    if not isinstance(decoded, dict):
        raise MalformedError(f"a {kind} message must be a msgpack map")
    version = decoded.get("fedmq")
    if version != FORMAT_VERSION or type(version) is not int:
        if type(version) is int:
            raise UnsupportedVersionError(version)
        raise MalformedError(f"a {kind} message needs the integer field 'fedmq'")
    fields = Fields(decoded, kind, limits)
    fields.choice("type", (kind,))
    return fields


class _Sized(Protocol):
    @property
    def size(self) -> int: ...


_Tensor = TypeVar("_Tensor", bound=_Sized)


def named_tensors(
    fields: Fields, key: str, decode_one: Callable[[Value, int], _Tensor]
) -> dict[str, _Tensor]:
    """A map of tensor name -> tensor, within the count and total-element limits.

    ``decode_one(value, budget)`` decodes one tensor whose dense size may not exceed
    ``budget``, the elements left of ``limits.max_total_elements``.
    """
    limits = fields.limits
    raw = fields.submap(key, max_entries=limits.max_tensors)
    budget = limits.max_total_elements
    tensors: dict[str, _Tensor] = {}
    for name, value in raw.items():
        if not name:
            raise MalformedError(f"{fields.what}.{key} has an empty tensor name")
        tensor = decode_one(value, budget)
        budget -= tensor.size
        tensors[name] = tensor
    return tensors
