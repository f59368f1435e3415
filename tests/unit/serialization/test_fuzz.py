"""Fuzz: 10,000 mutated payloads per message type decode or raise a SerializationError only."""

from __future__ import annotations

import contextlib
import math
import random
import struct
import time
import tracemalloc
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import msgpack
import pytest

from serialization import (
    Control,
    DeviceStatus,
    ModelRelease,
    ModelUpdate,
    Receipt,
    SerializationError,
    SigningKey,
    VerifyKey,
    decode_delta,
)
from serialization.signing import release_digest
from tests.vectors.make_vectors import VECTORS_DIR

CASES_PER_TYPE = 10_000
SECONDS_PER_TYPE = 20.0
SECONDS_PER_CASE = 0.5
MEMORY_SLACK_BYTES = 64 * 1024
"""Peak allocation allowed while decoding a huge-declared-size payload, beyond 2x its size."""

VERIFY_KEY = VerifyKey.from_pem((VECTORS_DIR / "test_verify_key.pem").read_bytes())
SIGNING_KEY = SigningKey.from_pem((VECTORS_DIR / "test_signing_key.pem").read_bytes())
SEEDS = {
    "Receipt": ["receipt_accepted", "receipt_rejected", "receipt_foreign_formats"],
    "DeviceStatus": ["status_online", "status_offline", "status_foreign_formats"],
    "Control": ["control"],
    "ModelUpdate": ["update_none", "update_float16", "update_int8", "update_topk",
                    "update_none_bin16"],
    "ModelRelease": ["release"],
}  # fmt: skip

HUGE_HEADERS = [
    b"\xc6\xff\xff\xff\xff", b"\xc6\x7f\xff\xff\xff", b"\xc5\xff\xff", b"\xc4\xff",
    b"\xdb\xff\xff\xff\xff", b"\xdb\x00\x00\x01\x01", b"\xda\xff\xff", b"\xd9\xff",
    b"\xdd\xff\xff\xff\xff", b"\xdd\x00\x01\x00\x00", b"\xdc\xff\xff", b"\x9f",
    b"\xdf\xff\xff\xff\xff", b"\xdf\x00\x01\x00\x00", b"\xde\xff\xff", b"\x8f",
]  # fmt: skip
"""bin, str, array and map headers declaring far more than any payload holds."""

RETYPED: list[object] = [
    None, True, False, 0, -1, 2**63, 2**64 - 1, -(2**63), 1.5, -0.0, math.nan, math.inf,
    "", "x" * 300, "a/b", b"", bytes(16), bytes(64), [], [1, 2, 3], {}, {"a": 1},
    [[[[[[1]]]]]], {"dtype": "float32", "shape": [1], "data": b"\0\0\0\0"},
    {"dtype": "float32", "shape": [2**22 + 1], "data": b""}, [2**40, 0], [2**31, 2**31],
]  # fmt: skip


def _decoder(message: str) -> Callable[[bytes], object]:
    if message == "ModelRelease":
        return lambda payload: ModelRelease.decode(payload, VERIFY_KEY).float32_tensors()
    if message == "ModelUpdate":
        return lambda payload: decode_delta(ModelUpdate.decode(payload).tensors)
    kinds: dict[str, Callable[[bytes], object]] = {
        "Receipt": Receipt.decode, "DeviceStatus": DeviceStatus.decode, "Control": Control.decode,
    }  # fmt: skip
    return kinds[message]


def _pack(tree: object) -> bytes:
    packed: bytes = msgpack.packb(tree, use_bin_type=True)
    return packed


def _slots(tree: object) -> list[tuple[Any, Any]]:
    """Every (container, key-or-index) position in a decoded msgpack tree."""
    slots: list[tuple[Any, Any]] = []
    stack = [tree]
    while stack:
        node = stack.pop()
        items = (
            node.items()
            if isinstance(node, dict)
            else enumerate(node)
            if isinstance(node, list)
            else ()
        )
        for key, child in items:
            slots.append((node, key))
            stack.append(child)
    return slots


class Mutator:
    """Deterministic payload mutations: bytes, structure and huge declared sizes."""

    def __init__(self, seed: str) -> None:
        self.rng = random.Random(seed)

    def bytes_level(self, payload: bytes) -> bytes:
        """Flip, truncate, extend, insert, delete, duplicate, or replace with random bytes."""
        rng = self.rng
        data = bytearray(payload)
        action = rng.randrange(7)
        if action == 6:
            return rng.choice([b"", b"\x8b", b"\xde\x00\x0b"]) + rng.randbytes(rng.randrange(600))
        if action == 0:
            for _ in range(rng.randint(1, 8)):
                data[rng.randrange(len(data))] ^= rng.randint(1, 255)
        elif action == 1:
            del data[rng.randrange(len(data)) :]
        elif action == 2:
            data += rng.randbytes(rng.randint(1, 16))
        elif action == 3:
            at = rng.randrange(len(data) + 1)
            data[at:at] = rng.randbytes(rng.randint(1, 8))
        elif action == 4:
            at = rng.randrange(len(data))
            del data[at : at + rng.randint(1, 16)]
        else:
            at, end = sorted(rng.randrange(len(data)) for _ in range(2))
            data[at:at] = data[at:end]
        return bytes(data)

    def structural(self, payload: bytes) -> bytes:
        """Remove, swap, rename or retype one to three fields anywhere in the tree."""
        rng = self.rng
        tree = msgpack.unpackb(payload)
        slots = _slots(tree)
        for _ in range(rng.randint(1, 3)):
            node, key = rng.choice(slots)
            action = rng.randrange(5)
            if action == 0 and isinstance(node, dict) and key in node:
                del node[key]
            elif action == 1 and isinstance(node, dict) and len(node) > 1:
                other = rng.choice(list(node))
                if key in node:
                    node[key], node[other] = node[other], node[key]
            elif action == 2 and isinstance(node, dict) and key in node:
                node[key + rng.choice(["", "_", "X"]) + "x"] = node.pop(key)
            elif (isinstance(node, dict) and key in node) or (
                isinstance(node, list) and key < len(node)
            ):
                node[key] = rng.choice(RETYPED)
        return _pack(tree)

    def huge(self, payload: bytes) -> bytes:
        """Replace one value by a bin/str/array/map header declaring a huge size."""
        rng = self.rng
        tree = msgpack.unpackb(payload)
        marker = b"MARKER" + rng.randbytes(10)
        slots = _slots(tree)
        node, key = rng.choice(slots)
        node[key] = marker
        packed: bytes = msgpack.packb(tree, use_bin_type=True)
        header = rng.choice(HUGE_HEADERS) + rng.randbytes(rng.randint(0, 4))
        return packed.replace(b"\xc4\x10" + marker, header, 1)


@dataclass
class Outcome:
    """What the fuzz loop saw."""

    decoded: int = 0
    errors: dict[str, int] = field(default_factory=dict)
    failures: list[str] = field(default_factory=list)
    slowest: float = 0.0


def _run(decode: Callable[[bytes], object], payloads: list[bytes], outcome: Outcome) -> None:
    for payload in payloads:
        start = time.perf_counter()
        try:
            decode(payload)
        except SerializationError as exc:
            name = type(exc).__name__
            outcome.errors[name] = outcome.errors.get(name, 0) + 1
        except Exception as exc:  # anything else is a failure: the point of the test
            outcome.failures.append(f"{type(exc).__name__}: {exc} for {payload.hex()}")
        else:
            outcome.decoded += 1
        outcome.slowest = max(outcome.slowest, time.perf_counter() - start)


def _resigned(envelope_payload: bytes, body: bytes) -> bytes:
    envelope = msgpack.unpackb(envelope_payload)
    envelope["body"] = body
    envelope["signature"] = SIGNING_KEY.sign(release_digest(body))
    return _pack(envelope)


def _cases(message: str) -> tuple[list[bytes], list[bytes]]:
    """(all mutated payloads, the huge-declared-size subset) for ``message``."""
    mutator = Mutator(f"fedmq-fuzz-{message}")
    rng = mutator.rng
    seeds = [(VECTORS_DIR / f"{name}.msgpack").read_bytes() for name in SEEDS[message]]
    payloads: list[bytes] = []
    huge: list[bytes] = []
    for i in range(CASES_PER_TYPE):
        seed = seeds[i % len(seeds)]
        kind = i % 4
        target = seed
        if message == "ModelRelease" and i % 8 >= 4:
            target = msgpack.unpackb(seed)["body"]
        if kind == 0:
            mutated = mutator.bytes_level(target)
        elif kind in (1, 2):
            mutated = mutator.structural(target)
        else:
            mutated = mutator.huge(target)
        if target is not seed:
            mutated = _resigned(seed, mutated)
        (huge if kind == 3 else payloads).append(mutated)
    rng.shuffle(payloads)
    return payloads + huge, huge


@pytest.mark.parametrize("message", sorted(SEEDS))
def test_fuzz_mutated_payloads_decode_or_raise_serialization_errors(message: str) -> None:
    """10,000 flipped/truncated/extended/restructured/huge payloads: typed errors only, fast."""
    decode = _decoder(message)
    payloads, _ = _cases(message)
    assert len(payloads) == CASES_PER_TYPE
    outcome = Outcome()
    start = time.perf_counter()
    _run(decode, payloads, outcome)
    elapsed = time.perf_counter() - start
    assert outcome.failures == [], outcome.failures[:5]
    assert elapsed < SECONDS_PER_TYPE, f"{message}: {elapsed:.1f} s"
    assert outcome.slowest < SECONDS_PER_CASE
    assert outcome.decoded > 0
    assert outcome.errors.get("MalformedError", 0) > 0
    assert outcome.errors.get("TooLargeError", 0) > 0
    if message == "ModelRelease":
        assert outcome.errors.get("SignatureError", 0) > 0


@pytest.mark.parametrize("message", sorted(SEEDS))
def test_fuzz_huge_declared_sizes_allocate_almost_nothing(message: str) -> None:
    """Headers declaring GBs are refused with peak allocation < 2x payload + 64 KiB."""
    decode = _decoder(message)
    _, huge = _cases(message)
    worst = 0
    tracemalloc.start()
    try:
        for payload in huge:
            tracemalloc.reset_peak()
            before = tracemalloc.get_traced_memory()[0]
            with contextlib.suppress(SerializationError):
                decode(payload)
            excess = tracemalloc.get_traced_memory()[1] - before - 2 * len(payload)
            worst = max(worst, excess)
    finally:
        tracemalloc.stop()
    assert len(huge) == CASES_PER_TYPE // 4
    assert worst < MEMORY_SLACK_BYTES, f"{message}: {worst} bytes above 2x payload"


def test_fuzz_huge_header_substitution_really_happens() -> None:
    """The huge-size mutator actually writes a huge header in place of a value."""
    mutator = Mutator("check")
    seed = (VECTORS_DIR / "receipt_accepted.msgpack").read_bytes()
    mutated = [mutator.huge(seed) for _ in range(50)]
    assert all(b"MARKER" not in m for m in mutated)
    assert sum(any(h in m for h in HUGE_HEADERS[:4]) for m in mutated) > 5
    assert struct.unpack(">I", HUGE_HEADERS[0][1:])[0] == 2**32 - 1
