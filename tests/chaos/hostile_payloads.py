"""Hostile update payloads of one authenticated device, and the contract oracle that says
which of them a correct aggregator may accept."""

from __future__ import annotations

import math
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import Any, Literal

import msgpack
import numpy as np
from numpy.typing import NDArray

from serialization import DEFAULT_LIMITS, ModelUpdate, SerializationError, new_update_id
from serialization.fields import FORMAT_VERSION

__all__ = ["KINDS", "Expect", "Hostile", "HostileFactory", "contract_update_id"]

Expect = Literal["rejected", "duplicate", "no_receipt", "oracle"]
"""What a correct aggregator answers: a rejected or duplicate Receipt, nothing (the payload
never reaches it), or whatever contract_update_id() says (bit flips)."""

KINDS = (
    "random_bytes", "bit_flip", "truncation", "field_swap", "bad_fields", "wrong_shape",
    "wrong_dtype", "non_finite", "huge_declared_size", "over_limits", "replay",
    "replay_altered", "foreign_device_id", "stale_base", "foreign_task",
)  # fmt: skip
"""Kinds sent on the device's own update topic in the main phase (oversized payloads, which
the broker refuses, are sent apart)."""

_LIMITS = DEFAULT_LIMITS
_HUGE_HEADERS = (
    b"\xc6\xff\xff\xff\xf0",  # bin32 of ~4 GiB
    b"\xdd\xff\xff\xff\xff",  # array32 of 2**32 - 1 values
    b"\xdf\xff\xff\xff\xff",  # map32 of 2**32 - 1 entries
    b"\xdb\xff\xff\xff\xff",  # str32 of ~4 GiB
    b"\xc9\xff\xff\xff\xff\x01",  # ext32 of ~4 GiB
)


@dataclass(frozen=True, kw_only=True, slots=True)
class Hostile:
    """One hostile payload and what a correct system does with it."""

    kind: str
    """The family (KINDS, or "future_base" for a stale_base sent too early to be stale)."""
    payload: bytes
    expect: Expect
    update_id: bytes | None = None
    """The update id the payload carries, when it has a well-formed one."""
    foreign_topic_task: str | None = None
    """Published on this task's update topic instead of the device's own task."""


def _tensor(values: NDArray[Any]) -> dict[str, object]:
    return {
        "shape": list(values.shape),
        "values": {
            "dtype": values.dtype.name,
            "shape": list(values.shape),
            "data": values.astype(values.dtype.newbyteorder("<")).tobytes(),
        },
    }


class HostileFactory:
    """Builds hostile payloads of ``device`` for ``task`` whose model has ``shapes``."""

    def __init__(
        self,
        *,
        task: str,
        device: str,
        victims: list[str],
        shapes: Mapping[str, tuple[int, ...]],
        max_staleness: int,
        seed: int,
    ) -> None:
        self.task = task
        self.device = device
        self.victims = victims
        self.shapes = dict(shapes)
        self.max_staleness = max_staleness
        self.rng = np.random.default_rng(seed)
        self.accepted: list[bytes] = []
        """Payloads of this device the aggregator accepted (the templates of mutations)."""
        self._turn = 0
        self._makers: dict[str, Callable[[int], Hostile]] = {
            "random_bytes": self._random_bytes,
            "bit_flip": self._bit_flip,
            "truncation": self._truncation,
            "field_swap": self._field_swap,
            "bad_fields": self._bad_fields,
            "wrong_shape": self._wrong_shape,
            "wrong_dtype": self._wrong_dtype,
            "non_finite": self._non_finite,
            "huge_declared_size": self._huge_declared_size,
            "over_limits": self._over_limits,
            "replay": self._replay,
            "replay_altered": self._replay_altered,
            "foreign_device_id": self._foreign_device_id,
            "stale_base": self._stale_base,
            "foreign_task": self._foreign_task,
        }

    # --- valid updates ---------------------------------------------------------------------

    def fields(self, version: int, **override: object) -> dict[str, object]:
        """The wire map of a valid update (small random delta, fresh id) at ``version``."""
        tensors = {
            name: _tensor(self.rng.normal(0.0, 1e-3, size=shape).astype(np.float32))
            for name, shape in self.shapes.items()
        }
        body: dict[str, object] = {
            "fedmq": FORMAT_VERSION, "type": "update", "task": self.task, "device": self.device,
            "update_id": new_update_id(), "base_version": version, "num_samples": 10,
            "codec": "none", "tensors": tensors, "metrics": {}, "created_at": 0.0,
        }  # fmt: skip
        body.update(override)
        return body

    def valid(self, version: int) -> tuple[bytes, bytes]:
        """(payload, update id) of a valid update based on ``version``."""
        uid = new_update_id()
        body = self.fields(version, update_id=uid)
        return msgpack.packb(body, use_bin_type=True), uid

    def make(self, kind: str, version: int) -> Hostile:
        """One payload of ``kind``, given the current model ``version``."""
        self._turn += 1
        return self._makers[kind](version)

    def _raw(self, kind: str, body: dict[str, object], expect: Expect = "rejected") -> Hostile:
        uid = body.get("update_id")
        known = bytes(uid) if isinstance(uid, bytes) and len(uid) == 16 else None
        return Hostile(
            kind=kind,
            payload=msgpack.packb(body, use_bin_type=True),
            expect=expect,
            update_id=known,
        )

    def _template(self) -> bytes:
        return self.accepted[self._turn % len(self.accepted)]

    # --- the kinds ---------------------------------------------------------------------------

    def _random_bytes(self, _version: int) -> Hostile:
        size = int(self.rng.integers(0, 4096))
        prefix = [b"", b"\x8b", b"\x8b\xa5fedmq\x01"][self._turn % 3]
        return Hostile(
            kind="random_bytes", payload=prefix + self.rng.bytes(size), expect="rejected"
        )

    def _bit_flip(self, _version: int) -> Hostile:
        data = bytearray(self._template())
        for _ in range(int(self.rng.integers(1, 9))):
            bit = int(self.rng.integers(0, len(data) * 8))
            data[bit // 8] ^= 1 << (bit % 8)
        return Hostile(kind="bit_flip", payload=bytes(data), expect="oracle")

    def _truncation(self, _version: int) -> Hostile:
        template = self._template()
        cut = int(self.rng.integers(0, len(template)))
        return Hostile(kind="truncation", payload=template[:cut], expect="rejected")

    def _field_swap(self, version: int) -> Hostile:
        body = self.fields(version)
        pairs = [
            ("task", "device"), ("update_id", "task"), ("tensors", "metrics"),
            ("base_version", "codec"), ("num_samples", "update_id"), ("type", "task"),
        ]  # fmt: skip
        first, second = pairs[self._turn % len(pairs)]
        body[first], body[second] = body[second], body[first]
        if self._turn % 7 == 0:  # swap the two tensors' contents instead
            tensors: dict[str, object] = (
                body["tensors"] if isinstance(body["tensors"], dict) else {}
            )
            names = sorted(tensors)
            if len(names) >= 2:
                tensors[names[0]], tensors[names[1]] = tensors[names[1]], tensors[names[0]]
        return self._raw("field_swap", body)

    def _bad_fields(self, version: int) -> Hostile:
        variants: list[dict[str, object]] = [
            {"num_samples": 0}, {"update_id": new_update_id()[:15]}, {"fedmq": 2},
            {"type": "receipt"}, {"base_version": -1}, {"codec": "gzip"},
            {"created_at": math.nan}, {"num_samples": 1.5}, {"task": "bad/task"},
            {"device": "+"}, {"metrics": {"loss": [1, 2]}},
        ]  # fmt: skip
        body = self.fields(version, **variants[self._turn % len(variants)])
        if self._turn % 13 == 0:
            del body["tensors"]
        return self._raw("bad_fields", body)

    def _wrong_shape(self, version: int) -> Hostile:
        body = self.fields(version)
        tensors: dict[str, object] = dict(body["tensors"])  # type: ignore[call-overload]
        name = sorted(self.shapes)[self._turn % len(self.shapes)]
        shape = self.shapes[name]
        choice = self._turn % 5
        if choice == 0:
            tensors[name] = _tensor(np.zeros((*shape[::-1], 1), dtype=np.float32))
        elif choice == 1:
            tensors[name] = _tensor(np.zeros(tuple(d + 1 for d in shape), dtype=np.float32))
        elif choice == 2:
            del tensors[name]
        elif choice == 3:
            tensors["intruder"] = _tensor(np.zeros(3, dtype=np.float32))
        else:
            tensors[name] = _tensor(np.zeros((), dtype=np.float32))
        body["tensors"] = tensors
        return self._raw("wrong_shape", body)

    def _wrong_dtype(self, version: int) -> Hostile:
        body = self.fields(version)
        name = sorted(self.shapes)[0]
        shape = self.shapes[name]
        choice = self._turn % 6
        tensors: dict[str, Any] = body["tensors"]  # type: ignore[assignment]
        if choice < 3:
            dtype = (np.float64, np.int32, np.float16)[choice]
            tensors[name] = _tensor(np.zeros(shape, dtype=dtype))
        elif choice == 3:
            tensors[name]["values"]["dtype"] = "complex64"
        elif choice == 4:
            tensors[name]["values"]["dtype"] = "object"
        else:
            body["codec"] = "float16"  # float32 values under the float16 codec
        return self._raw("wrong_dtype", body)

    def _non_finite(self, version: int) -> Hostile:
        body = self.fields(version)
        name = sorted(self.shapes)[self._turn % len(self.shapes)]
        values = np.zeros(self.shapes[name], dtype=np.float32)
        values.reshape(-1)[int(self.rng.integers(0, values.size))] = (
            math.nan, math.inf, -math.inf)[self._turn % 3]  # fmt: skip
        tensors: dict[str, Any] = body["tensors"]  # type: ignore[assignment]
        tensors[name] = _tensor(values)
        if self._turn % 4 == 0:  # int8 codec with a NaN scale
            body["codec"] = "int8"
            for n, shape in self.shapes.items():
                tensors[n] = _tensor(np.ones(shape, dtype=np.int8))
                tensors[n]["scale"] = math.nan
        return self._raw("non_finite", body)

    def _huge_declared_size(self, version: int) -> Hostile:
        choice = self._turn % (len(_HUGE_HEADERS) + 3)
        if choice < len(_HUGE_HEADERS):
            payload = _HUGE_HEADERS[choice] + self.rng.bytes(16)
            return Hostile(kind="huge_declared_size", payload=payload, expect="rejected")
        body = self.fields(version)
        tensors: dict[str, Any] = body["tensors"]  # type: ignore[assignment]
        name = sorted(self.shapes)[0]
        if choice == len(_HUGE_HEADERS):  # a tensor whose shape declares 2**48 elements
            tensors[name]["shape"] = [65536, 65536, 65536]
            tensors[name]["values"]["shape"] = [65536, 65536, 65536]
            return self._raw("huge_declared_size", body)
        if choice == len(_HUGE_HEADERS) + 1:  # top-k: one value of a 2**40-element tensor
            body["codec"] = "topk"
            tensors[name] = {
                "shape": [1 << 20, 1 << 20],
                "values": _tensor(np.ones(1, dtype=np.float32))["values"],
                "indices": _tensor(np.zeros(1, dtype=np.uint32))["values"],
            }
            return self._raw("huge_declared_size", body)
        # A valid update whose first data bin header is patched to declare ~4 GiB.
        hostile = self._raw("huge_declared_size", body)
        raw = hostile.payload
        at = raw.index(b"data") + 4
        header = raw[at]
        width = {0xC4: 1, 0xC5: 2, 0xC6: 4}[header]
        patched = raw[:at] + b"\xc6\xff\xff\xff\xf0" + raw[at + 1 + width :]
        return Hostile(kind=hostile.kind, payload=patched, expect="rejected")

    def _over_limits(self, version: int) -> Hostile:
        choice = self._turn % 7
        body = self.fields(version)
        if choice == 0:
            body["tensors"] = {
                f"t{i}": _tensor(np.zeros(1, dtype=np.float32))
                for i in range(_LIMITS.max_tensors + 1)
            }
        elif choice == 1:
            shape = (1,) * (_LIMITS.max_dims + 1)
            name = sorted(self.shapes)[0]
            body["tensors"][name] = _tensor(np.zeros(shape, dtype=np.float32))  # type: ignore[index]
        elif choice == 2:
            body["metrics"] = {"x" * (_LIMITS.max_string_bytes + 1): 1}
        elif choice == 3:
            body["metrics"] = {f"m{i}": i for i in range(_LIMITS.max_map_entries + 1)}
        elif choice == 4:
            body["metrics"] = {"a": {"b": {"c": {"d": {"e": 1}}}}}
        elif choice == 5:
            body["junk"] = list(range(_LIMITS.max_values + 1))
        else:  # one real int8 tensor of max_tensor_elements + 1 elements (~4 MiB)
            body["codec"] = "int8"
            big = np.zeros(_LIMITS.max_tensor_elements + 1, dtype=np.int8)
            body["tensors"] = {sorted(self.shapes)[0]: {**_tensor(big), "scale": 1.0}}
        return self._raw("over_limits", body)

    def _replay(self, _version: int) -> Hostile:
        template = self._template()
        return Hostile(
            kind="replay",
            payload=template,
            expect="duplicate",
            update_id=ModelUpdate.decode(template).update_id,
        )

    def _replay_altered(self, version: int) -> Hostile:
        """An accepted update id with a different (valid) delta: dedupe must win."""
        uid = ModelUpdate.decode(self._template()).update_id
        return self._raw("replay_altered", self.fields(version, update_id=uid), "duplicate")

    def _foreign_device_id(self, version: int) -> Hostile:
        names = [*self.victims, "ghost-device", "aggregator"]
        return self._raw(
            "foreign_device_id", self.fields(version, device=names[self._turn % len(names)])
        )

    def _stale_base(self, version: int) -> Hostile:
        stale = version - self.max_staleness - 1
        if stale >= 1:
            return self._raw("stale_base", self.fields(version, base_version=stale))
        return self._raw("future_base", self.fields(version, base_version=version + 1_000_000))

    def _foreign_task(self, version: int) -> Hostile:
        if self._turn % 3 == 0:
            hostile = self._raw("foreign_task", self.fields(version), "no_receipt")
            return Hostile(
                kind="foreign_task",
                payload=hostile.payload,
                expect="no_receipt",
                update_id=hostile.update_id,
                foreign_topic_task="foreigntask",
            )
        return self._raw("foreign_task", self.fields(version, task="foreigntask"))


def contract_update_id(
    payload: bytes,
    *,
    task: str,
    device: str,
    shapes: Mapping[str, tuple[int, ...]],
    max_norm: float,
    max_staleness: int,
    version: int,
) -> bytes | None:
    """The update id of ``payload`` if the wire contract lets ``device`` have it accepted at
    model ``version`` (decodes within the limits; this task and device; exactly the model's
    names and shapes in float32; finite; norm within ``max_norm``; at least one sample; base
    version neither in the future nor staler than ``max_staleness``), else None."""
    try:
        update = ModelUpdate.decode(payload)
        delta = {name: t.to_dense() for name, t in update.tensors.items()}
    except SerializationError:
        return None
    if update.task != task or update.device_id != device or set(delta) != set(shapes):
        return None
    if any(delta[name].shape != tuple(shape) for name, shape in shapes.items()):
        return None
    squares = sum(float(np.sum(np.square(d, dtype=np.float64))) for d in delta.values())
    if not math.isfinite(squares) or math.sqrt(squares) > max_norm or update.num_samples < 1:
        return None
    if not version - max_staleness <= update.base_version <= version:
        return None
    return update.update_id
