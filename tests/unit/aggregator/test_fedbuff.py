"""FedBuff: hand-computed steps, a float64 reference over several steps, rebuild, memory."""

from __future__ import annotations

import json
import math
import tracemalloc
import weakref

import numpy as np
import pytest
from numpy.typing import NDArray

from aggregator.errors import (
    InvalidConfigError,
    LayoutMismatchError,
    NotReadyError,
    UpdateRejectedError,
    VersionMismatchError,
)
from aggregator.server_optimizers import FedAdam, FedAvgM, FedYogi, ServerOptimizer, Sgd
from aggregator.staleness import Constant
from aggregator.strategies import DeviceUpdate, FedBuff, FedBuffConfig
from aggregator.tensors import Model
from aggregator.validation import RejectReason


def _t(*values: float) -> NDArray[np.float32]:
    return np.array(values, dtype=np.float32)


def _u(delta: Model, base_version: int, num_samples: int = 1) -> DeviceUpdate:
    return DeviceUpdate(delta=delta, base_version=base_version, num_samples=num_samples)


def test_fedbuff_staleness_weighted_mean_hand_values() -> None:
    """K=3 at version 8, SGD lr 1, x = [1, 1].

    tau 0, 3, 8 -> s = 1, 1/2, 1/3
    sum = 1*[3, 0] + 1/2*[0, 4] + 1/3*[3, 3] = [4, 3];  g = sum/3 = [1.3333333, 1]
    x_new = [2.3333333, 2]
    """
    strategy = FedBuff(FedBuffConfig(buffer_size=3))
    strategy.fold(_u({"w": _t(3.0, 0.0)}, base_version=8), version=8)
    strategy.fold(_u({"w": _t(0.0, 4.0)}, base_version=5), version=8)
    assert not strategy.ready(now=0.0)
    strategy.fold(_u({"w": _t(3.0, 3.0)}, base_version=0), version=8)
    assert strategy.ready(now=0.0)
    result = strategy.step({"w": _t(1.0, 1.0)}, version=8, now=0.0)
    np.testing.assert_allclose(result.new_model["w"], [2.3333333, 2.0], rtol=1e-6)
    assert result.new_version == 9
    assert result.consumed_count == 3
    assert result.noise_multiplier is None
    assert result.metadata["staleness_max"] == 8
    assert result.metadata["staleness_mean"] == pytest.approx(11 / 3)
    assert json.loads(json.dumps(result.metadata)) == dict(result.metadata)
    assert strategy.pending == 0


def test_fedbuff_num_samples_weighting_hand_values() -> None:
    """K=2: tau 0, n=1, delta 4 and tau 3 (s=1/2), n=3, delta 2.

    sum = 1*1*4 + 1/2*3*2 = 7;  g = 7 / (1 + 3) = 1.75;  x = 10 + 1.75 = 11.75
    """
    strategy = FedBuff(FedBuffConfig(buffer_size=2, weighting="num_samples"))
    strategy.fold(_u({"w": _t(4.0)}, base_version=3, num_samples=1), version=3)
    strategy.fold(_u({"w": _t(2.0)}, base_version=0, num_samples=3), version=3)
    result = strategy.step({"w": _t(10.0)}, version=3, now=0.0)
    np.testing.assert_allclose(result.new_model["w"], [11.75], rtol=1e-7)
    assert result.metadata["num_samples"] == 4


def _reference_run(
    optimizer: str,
    params: dict[str, float],
    x: NDArray[np.float64],
    rounds: list[list[tuple[NDArray[np.float64], int, int]]],
    weighting: str,
) -> NDArray[np.float64]:
    """Float64 FedBuff: g = sum(w s(tau) d)/denominator, s = 1/sqrt(1+tau), then FedOpt."""
    m = np.zeros_like(x)
    v = np.zeros_like(x)
    for updates in rounds:
        if weighting == "equal":
            g = sum(d / math.sqrt(1 + tau) for d, tau, _ in updates) / len(updates)
        else:
            total_n = sum(n for _, _, n in updates)
            g = sum(n * d / math.sqrt(1 + tau) for d, tau, n in updates) / total_n
        if optimizer == "sgd":
            x = x + params["lr"] * g
        elif optimizer == "fedavgm":
            m = params["momentum"] * m + g
            x = x + params["lr"] * m
        else:
            m = params["beta1"] * m + (1 - params["beta1"]) * g
            if optimizer == "fedadam":
                v = params["beta2"] * v + (1 - params["beta2"]) * g**2
            else:
                v = v - (1 - params["beta2"]) * g**2 * np.sign(v - g**2)
            x = x + params["lr"] * m / (np.sqrt(v) + params["eps"])
    return x


_OPTIMIZERS: list[tuple[str, dict[str, float], ServerOptimizer]] = [
    ("sgd", {"lr": 0.8}, Sgd(lr=0.8)),
    ("fedavgm", {"lr": 0.7, "momentum": 0.9}, FedAvgM(lr=0.7, momentum=0.9)),
    (
        "fedadam",
        {"lr": 0.05, "beta1": 0.9, "beta2": 0.99, "eps": 1e-3},
        FedAdam(lr=0.05, beta1=0.9, beta2=0.99, eps=1e-3),
    ),
    (
        "fedyogi",
        {"lr": 0.05, "beta1": 0.9, "beta2": 0.99, "eps": 1e-3},
        FedYogi(lr=0.05, beta1=0.9, beta2=0.99, eps=1e-3),
    ),
]


@pytest.mark.parametrize("weighting", ["equal", "num_samples"])
@pytest.mark.parametrize(("name", "params", "optimizer"), _OPTIMIZERS)
def test_fedbuff_matches_float64_reference_over_steps(
    name: str,
    params: dict[str, float],
    optimizer: ServerOptimizer,
    weighting: str,
) -> None:
    """Five steps of K=4 stale updates with each optimizer agree with the reference."""
    rng = np.random.default_rng(11)
    k = 4
    config = FedBuffConfig(
        buffer_size=k,
        server_optimizer=optimizer,
        weighting="equal" if weighting == "equal" else "num_samples",
    )
    strategy = FedBuff(config)
    model = {"w": rng.normal(size=6).astype(np.float32)}
    x0 = model["w"].astype(np.float64)
    rounds: list[list[tuple[NDArray[np.float64], int, int]]] = []
    for version in range(5):
        updates = []
        for _ in range(k):
            delta = (rng.normal(size=6) * 0.1).astype(np.float32)
            tau = int(rng.integers(0, min(version, 6) + 1))
            n = int(rng.integers(1, 50))
            strategy.fold(_u({"w": delta}, base_version=version - tau, num_samples=n), version)
            updates.append((delta.astype(np.float64), tau, n))
        rounds.append(updates)
        model = strategy.step(model, version, now=0.0).new_model
    expected = _reference_run(name, params, x0, rounds, weighting)
    np.testing.assert_allclose(model["w"], expected, rtol=1e-5, atol=1e-6)
    assert strategy.state is not None
    assert strategy.state.step == 5


def test_fedbuff_admission_reasons() -> None:
    """Future base version, no samples, beyond max_staleness and a full buffer are refused."""
    strategy = FedBuff(FedBuffConfig(buffer_size=1, max_staleness=2))
    delta = {"w": _t(1.0)}
    assert strategy.admit(_u(delta, base_version=6), version=5) == RejectReason.FUTURE_VERSION
    assert strategy.admit(_u(delta, 5, num_samples=0), version=5) == RejectReason.NO_SAMPLES
    assert strategy.admit(_u(delta, base_version=2), version=5) == RejectReason.STALE
    assert strategy.admit(_u(delta, base_version=3), version=5) is None
    strategy.fold(_u(delta, base_version=3), version=5)
    assert strategy.admit(_u(delta, base_version=5), version=5) == RejectReason.BUFFER_FULL
    with pytest.raises(UpdateRejectedError) as info:
        strategy.fold(_u(delta, base_version=5), version=5)
    assert info.value.reason == "buffer_full"
    assert strategy.pending == 1


def test_fedbuff_step_requires_ready_and_same_version() -> None:
    """step() before K raises NotReadyError; folding or stepping at another version fails."""
    strategy = FedBuff(FedBuffConfig(buffer_size=2))
    strategy.fold(_u({"w": _t(1.0)}, base_version=4), version=4)
    with pytest.raises(NotReadyError) as info:
        strategy.step({"w": _t(0.0)}, version=4, now=0.0)
    assert info.value.pending == 1
    with pytest.raises(VersionMismatchError) as mismatch:
        strategy.fold(_u({"w": _t(1.0)}, base_version=4), version=5)
    assert (mismatch.value.expected, mismatch.value.actual) == (4, 5)
    strategy.fold(_u({"w": _t(1.0)}, base_version=4), version=4)
    with pytest.raises(VersionMismatchError):
        strategy.step({"w": _t(0.0)}, version=5, now=0.0)
    assert strategy.pending == 2


def test_fedbuff_reset_drops_folds() -> None:
    """reset() forgets the folded updates; the next step only sees later ones."""
    strategy = FedBuff(FedBuffConfig(buffer_size=1))
    strategy.fold(_u({"w": _t(100.0)}, base_version=0), version=0)
    strategy.reset(now=0.0)
    assert strategy.pending == 0
    strategy.fold(_u({"w": _t(2.0)}, base_version=1), version=1)
    result = strategy.step({"w": _t(1.0)}, version=1, now=0.0)
    np.testing.assert_array_equal(result.new_model["w"], _t(3.0))


def _stream(seed: int, count: int) -> list[DeviceUpdate]:
    rng = np.random.default_rng(seed)
    return [
        _u(
            {
                "W": rng.normal(size=(4, 3)).astype(np.float32),
                "b": rng.normal(size=3).astype(np.float32),
            },
            base_version=10 - int(rng.integers(0, 5)),
            num_samples=int(rng.integers(1, 100)),
        )
        for _ in range(count)
    ]


def test_fedbuff_rebuild_from_same_stream_is_bit_identical() -> None:
    """A fresh strategy with the committed state, fed the same stream, steps identically."""
    config = FedBuffConfig(buffer_size=5, server_optimizer=FedAdam(), weighting="num_samples")
    model = {"W": np.ones((4, 3), dtype=np.float32), "b": np.zeros(3, dtype=np.float32)}
    first = FedBuff(config)
    for update in _stream(1, 5):
        first.fold(update, version=10)
    model = first.step(model, version=10, now=0.0).new_model
    committed = first.state
    stream = _stream(2, 5)
    for update in stream:
        first.fold(update, version=11)
    original = first.step(model, version=11, now=0.0)

    rebuilt = FedBuff(config, state=committed)
    for update in stream:
        rebuilt.fold(update, version=11)
    again = rebuilt.step(model, version=11, now=0.0)
    for name in model:
        np.testing.assert_array_equal(again.new_model[name], original.new_model[name])
    for key in original.new_state.arrays:
        np.testing.assert_array_equal(again.new_state.arrays[key], original.new_state.arrays[key])
    assert again.metadata == original.metadata


def test_fedbuff_fold_order_changes_only_rounding() -> None:
    """Permuting the folds gives the same model up to float32 rounding."""
    model = {"W": np.ones((4, 3), dtype=np.float32), "b": np.zeros(3, dtype=np.float32)}
    stream = _stream(5, 6)
    results = []
    for order in (stream, stream[::-1]):
        strategy = FedBuff(FedBuffConfig(buffer_size=6))
        for update in order:
            strategy.fold(update, version=10)
        results.append(strategy.step(model, version=10, now=0.0).new_model)
    for name in model:
        np.testing.assert_allclose(results[0][name], results[1][name], rtol=1e-6, atol=1e-6)


def test_fedbuff_does_not_keep_updates() -> None:
    """After folding, the strategy holds no reference to any delta array."""
    strategy = FedBuff(FedBuffConfig(buffer_size=10))
    refs = []
    for i in range(5):
        delta = {"w": np.full(1000, float(i), dtype=np.float32)}
        refs.append(weakref.ref(delta["w"]))
        strategy.fold(_u(delta, base_version=0), version=0)
        del delta
    assert all(ref() is None for ref in refs)
    assert strategy.buffer_nbytes == 1000 * 4


def test_fedbuff_memory_is_one_model_whatever_the_folds() -> None:
    """Folding 40 updates of a 4 MB tensor grows traced memory by about one model, not 40."""
    n = 1_000_000
    model_bytes = n * 4
    strategy = FedBuff(FedBuffConfig(buffer_size=100))
    delta = {"w": np.full(n, 0.5, dtype=np.float32)}
    tracemalloc.start()
    try:
        baseline = tracemalloc.get_traced_memory()[0]
        for _ in range(40):
            strategy.fold(_u(delta, base_version=0), version=0)
        held = tracemalloc.get_traced_memory()[0] - baseline
    finally:
        tracemalloc.stop()
    assert strategy.buffer_nbytes == model_bytes
    assert model_bytes * 0.9 < held < model_bytes * 1.5


def test_fedbuff_layout_errors_leave_buffer_usable() -> None:
    """A float64 first delta or a later delta of another shape is refused without damage."""
    strategy = FedBuff(FedBuffConfig(buffer_size=2, staleness=Constant()))
    bad_dtype = {"a": _t(1.0), "b": np.array([1.0])}
    with pytest.raises(LayoutMismatchError):
        strategy.fold(_u(bad_dtype, base_version=0), version=0)
    strategy.fold(_u({"c": _t(1.0, 2.0)}, base_version=0), version=0)
    with pytest.raises(LayoutMismatchError) as info:
        strategy.fold(_u({"c": _t(1.0)}, base_version=0), version=0)
    assert info.value.reason == "shape_mismatch"
    assert strategy.pending == 1
    strategy.fold(_u({"c": _t(3.0, 4.0)}, base_version=0), version=0)
    result = strategy.step({"c": _t(0.0, 0.0)}, version=0, now=0.0)
    np.testing.assert_array_equal(result.new_model["c"], _t(2.0, 3.0))


def test_fedbuff_config_validation() -> None:
    """K < 1, negative max_staleness and unknown weighting are config errors."""
    with pytest.raises(InvalidConfigError):
        FedBuffConfig(buffer_size=0)
    with pytest.raises(InvalidConfigError):
        FedBuffConfig(max_staleness=-1)
    with pytest.raises(InvalidConfigError):
        FedBuff(FedBuffConfig(weighting="by_norm"))  # type: ignore[arg-type]
