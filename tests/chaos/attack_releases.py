"""Scenario 4, releases: forged, unsigned, garbled, rolled-back and foreign releases that
an insider publishes on the model topic, delivered to a real device daemon."""

from __future__ import annotations

import math
import time
from collections.abc import Callable
from functools import partial
from pathlib import Path
from typing import Protocol

import msgpack
import numpy as np

from device.daemon import DeviceDaemon
from serialization import SigningKey
from tests.conftest import Broker
from tests.integration.device_fixtures import (
    DeviceEnv,
    reference_predict,
    release_payload,
    softmax_params,
)

__all__ = ["forge_releases"]

_HELD = 5


class Tally(Protocol):
    """Where attempts are counted (attacks._Tally)."""

    def count(self, category: str, got_through: bool, what: str) -> None: ...


def _refusals(daemon: DeviceDaemon) -> int:
    return sum(v for k, v in daemon.db.counters().items() if k.startswith("release_refused_"))


def _refused_since(daemon: DeviceDaemon, before: int) -> bool:
    return _refusals(daemon) > before


def _wait(predicate: Callable[[], bool], timeout: float) -> bool:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if predicate():
            return True
        time.sleep(0.02)
    return False


def _forgeries(env: DeviceEnv) -> dict[str, bytes]:
    """Each hostile release by name."""
    task = env.task
    genuine_next = env.release(_HELD + 1, seed=11)
    unsigned = msgpack.unpackb(genuine_next, raw=False)
    del unsigned["signature"]
    zeroed = msgpack.unpackb(genuine_next, raw=False)
    zeroed["signature"] = bytes(64)
    flipped = bytearray(genuine_next)
    flipped[len(flipped) // 2] ^= 0x10
    nan_params = softmax_params(12)
    nan_params["W"][0, 0] = math.nan
    return {
        "signed with another key": release_payload(SigningKey.generate(), task, _HELD + 1),
        "unsigned (no signature field)": msgpack.packb(unsigned, use_bin_type=True),
        "zero signature": msgpack.packb(zeroed, use_bin_type=True),
        "garbled: random bytes": np.random.default_rng(3).bytes(2048),
        "garbled: a bit flipped in a signed release": bytes(flipped),
        "garbled: truncated signed release": genuine_next[: len(genuine_next) // 2],
        "rolled back: lower version, signed": env.release(_HELD - 2, seed=13),
        "same version, other weights, signed": env.release(_HELD, seed=14),
        "release of another task, signed": release_payload(env.key, "othertask", _HELD + 1),
        "signed, NaN weights": env.release(_HELD + 1, nan_params),
    }


def forge_releases(broker: Broker, directory: Path, tally: Tally) -> None:
    """Deliver every forgery to a daemon that holds a genuine release; it must keep that
    release's version and weights, keep predicting with them, and count each refusal;
    afterwards it must still take the next genuine release."""
    category = "hostile release taken by a daemon"
    directory.mkdir(parents=True, exist_ok=True)
    env = DeviceEnv(broker, f"rel{int(time.time() * 1000) % 10**8}", directory)
    try:
        daemon = env.daemon()
        insider = env.aggregator([])
        held_params = softmax_params(_HELD)
        insider.publish(env.model_topic, env.release(_HELD, held_params), retain=True)
        if not _wait(lambda: daemon.held_model is not None, 20.0):
            raise RuntimeError("the daemon never took the genuine release")
        probe = np.random.default_rng(1).normal(size=(50, 4)).astype(np.float32)
        expected = reference_predict(held_params, probe)
        for name, payload in _forgeries(env).items():
            before = _refusals(daemon)
            insider.publish(env.model_topic, payload, retain=True)
            counted = _wait(partial(_refused_since, daemon, before), 10.0)
            held = daemon.held_model
            same = (
                held is not None
                and held.version == _HELD
                and all(np.array_equal(held.params[k], v) for k, v in held_params.items())
            )
            predicts = bool(np.array_equal(daemon.predict(probe), expected))
            tally.count(
                category, not (same and predicts and counted),
                f"{name}: held v{held.version if held else None}, same weights {same}, "
                f"predicts {predicts}, refusal counted {counted}",
            )  # fmt: skip
        genuine = softmax_params(_HELD + 2)
        insider.publish(env.model_topic, env.release(_HELD + 2, genuine), retain=True)
        took = _wait(lambda: (h := daemon.held_model) is not None and h.version == _HELD + 2, 20.0)
        tally.count("daemon deaf to genuine releases afterwards", not took, f"took v7: {took}")
    finally:
        env.close()
