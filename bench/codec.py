"""Wire codec throughput: ModelUpdate encode/decode of 1M float32 values against np.copyto."""

from __future__ import annotations

import statistics
import time
from collections.abc import Callable
from functools import partial

import msgpack
import numpy as np
from numpy.typing import NDArray

from serialization import Codec, CodecName, ModelUpdate, decode_delta, encode_delta

__all__ = ["main"]

ELEMENTS = 1_000_000
RUNS = 15
GOAL = 0.3
"""Encode+decode throughput of the uncompressed update, as a fraction of memcpy."""


def median_seconds(action: Callable[[], object], runs: int = RUNS) -> float:
    """Median wall time of ``action`` over ``runs`` calls, after one warm-up call."""
    action()
    times: list[float] = []
    for _ in range(runs):
        start = time.perf_counter()
        action()
        times.append(time.perf_counter() - start)
    return statistics.median(times)


def make_update(delta: NDArray[np.float32], codec: Codec) -> ModelUpdate:
    """A ModelUpdate of ``delta`` (one tensor ``w``) encoded with ``codec``."""
    rng = np.random.default_rng(1)
    return ModelUpdate(
        task="bench",
        device_id="dev-0",
        update_id=bytes(16),
        base_version=7,
        num_samples=128,
        codec=codec.name,
        tensors=encode_delta({"w": delta}, codec, rng),
        metrics={"loss": 0.25},
        created_at=1_700_000_000.0,
    )


def encode_full(delta: NDArray[np.float32], codec: Codec) -> bytes:
    """Codec step and message encoding, as a device does it."""
    return make_update(delta, codec).encode()


def decode_full(payload: bytes) -> dict[str, NDArray[np.float32]]:
    """Message decoding and expansion to dense float32, as the aggregator does it."""
    return decode_delta(ModelUpdate.decode(payload).tensors)


def packb_encode(update: ModelUpdate) -> bytes:
    """The same payload through one ``msgpack.packb`` call (the encoder before the splice)."""
    message = {
        "fedmq": 1,
        "type": "update",
        "task": update.task,
        "device": update.device_id,
        "update_id": update.update_id,
        "base_version": update.base_version,
        "num_samples": update.num_samples,
        "codec": update.codec,
        "tensors": {name: t.to_wire() for name, t in update.tensors.items()},
        "metrics": dict(update.metrics),
        "created_at": update.created_at,
    }
    packed: bytes = msgpack.packb(message, use_bin_type=True)
    return packed


def memcpy_seconds(nbytes: int) -> float:
    """Median time of np.copyto between two preallocated buffers of ``nbytes``."""
    src = np.ones(nbytes, dtype=np.uint8)
    dst = np.empty_like(src)
    return median_seconds(lambda: np.copyto(dst, src))


def wire_figures(delta: NDArray[np.float32]) -> None:
    """Encode and decode of the uncompressed update (the wire layer only) against memcpy."""
    update = make_update(delta, Codec(name="none"))
    payload = update.encode()
    megabytes = delta.nbytes / 1e6
    copy = memcpy_seconds(delta.nbytes)
    encode = median_seconds(update.encode)
    previous = median_seconds(partial(packb_encode, update))
    decode = median_seconds(lambda: ModelUpdate.decode(payload))
    both = encode + decode
    print(
        f"tensor: {delta.size:,} float32 = {delta.nbytes:,} bytes; payload {len(payload):,} bytes"
    )
    print(f"median of {RUNS} runs")
    print(f"  np.copyto      {copy * 1e3:8.3f} ms  {megabytes / copy:9.0f} MB/s")
    for label, seconds in (("encode", encode), ("decode", decode), ("encode+decode", both)):
        print(
            f"  {label:<14} {seconds * 1e3:8.3f} ms  {megabytes / seconds:9.0f} MB/s"
            f"  {copy / seconds:6.2f}x memcpy"
        )
    same = "identical bytes" if packb_encode(update) == payload else "DIFFERENT BYTES"
    print(
        f"  (msgpack.packb  {previous * 1e3:8.3f} ms  {megabytes / previous:9.0f} MB/s"
        f"  {copy / previous:6.2f}x memcpy: the encoder before the splice, {same})"
    )
    verdict = "met" if copy / both >= GOAL else "NOT met"
    print(f"goal encode+decode >= {GOAL}x memcpy: {verdict} ({copy / both:.2f}x)")


def codec_figures(delta: NDArray[np.float32]) -> None:
    """Payload size and full encode (codec + wire) / decode (wire + dense) time per codec."""
    codecs: tuple[tuple[CodecName, float], ...] = (
        ("none", 1.0),
        ("float16", 1.0),
        ("int8", 1.0),
        ("topk", 0.01),
    )
    print("per codec (encode = codec + msgpack; decode = msgpack + dense float32):")
    print(f"  {'codec':<9} {'payload':>11} {'vs f32':>7} {'encode ms':>10} {'decode ms':>10}")
    for name, fraction in codecs:
        codec = Codec(name=name, topk_fraction=fraction)
        payload = make_update(delta, codec).encode()
        encode = median_seconds(partial(encode_full, delta, codec))
        decode = median_seconds(partial(decode_full, payload))
        label = f"topk {fraction:.0%}" if name == "topk" else name
        print(
            f"  {label:<9} {len(payload):>11,} {len(payload) / delta.nbytes:>7.3f}"
            f" {encode * 1e3:>10.3f} {decode * 1e3:>10.3f}"
        )


def main() -> None:
    """Print the figures."""
    delta = np.random.default_rng(0).standard_normal(ELEMENTS).astype(np.float32)
    wire_figures(delta)
    codec_figures(delta)


if __name__ == "__main__":
    main()
