"""Synchronous FedAvg: sample-weighted mean, stale rejection, cohort and deadline closing."""

from __future__ import annotations

import numpy as np
import pytest
from numpy.typing import NDArray

from aggregator.errors import InvalidConfigError, NotReadyError
from aggregator.server_optimizers import FedAvgM
from aggregator.strategies import DeviceUpdate, FedAvg, FedAvgConfig
from aggregator.tensors import Model
from aggregator.validation import RejectReason


def _t(*values: float) -> NDArray[np.float32]:
    return np.array(values, dtype=np.float32)


def _u(delta: Model, base_version: int, num_samples: int = 1) -> DeviceUpdate:
    return DeviceUpdate(delta=delta, base_version=base_version, num_samples=num_samples)


def test_fedavg_weighted_by_samples_hand_values() -> None:
    """n = 1, 2, 5 with deltas [8, 0], [0, 4], [1.6, 1.6].

    sum n*d = [8, 0] + [0, 8] + [8, 8] = [16, 16];  / (1+2+5) = [2, 2];  x = [1, -1] + [2, 2]
    """
    strategy = FedAvg(FedAvgConfig(cohort_size=3), opened_at=0.0)
    strategy.fold(_u({"w": _t(8.0, 0.0)}, 7, num_samples=1), version=7)
    strategy.fold(_u({"w": _t(0.0, 4.0)}, 7, num_samples=2), version=7)
    strategy.fold(_u({"w": _t(1.6, 1.6)}, 7, num_samples=5), version=7)
    assert strategy.ready(now=0.0)
    result = strategy.step({"w": _t(1.0, -1.0)}, version=7, now=1.0)
    np.testing.assert_allclose(result.new_model["w"], [3.0, 1.0], rtol=1e-6)
    assert result.consumed_count == 3
    assert result.new_version == 8
    assert result.metadata["closed_by"] == "cohort"
    assert result.metadata["num_samples"] == 8


def test_fedavg_equals_mean_of_local_models() -> None:
    """x + sum(n_i d_i)/sum(n_i) equals the sample-weighted mean of x + d_i."""
    rng = np.random.default_rng(0)
    x = {"w": rng.normal(size=(3, 2)).astype(np.float32)}
    locals_ = [x["w"] + rng.normal(size=(3, 2)).astype(np.float32) for _ in range(4)]
    samples = [10, 20, 30, 40]
    strategy = FedAvg(FedAvgConfig(cohort_size=4), opened_at=0.0)
    for local, n in zip(locals_, samples, strict=True):
        strategy.fold(_u({"w": local - x["w"]}, 0, num_samples=n), version=0)
    result = strategy.step(x, version=0, now=0.0)
    expected = sum(n * local.astype(np.float64) for local, n in zip(locals_, samples, strict=True))
    np.testing.assert_allclose(result.new_model["w"], expected / 100.0, rtol=1e-5, atol=1e-6)


def test_fedavg_rejects_stale_and_future_updates() -> None:
    """Only tau = 0 is admitted: tau 1 is stale, tau -1 a future version."""
    strategy = FedAvg(FedAvgConfig(cohort_size=2), opened_at=0.0)
    delta = {"w": _t(1.0)}
    assert strategy.admit(_u(delta, base_version=4), version=5) == RejectReason.STALE
    assert strategy.admit(_u(delta, base_version=6), version=5) == RejectReason.FUTURE_VERSION
    assert strategy.admit(_u(delta, base_version=5, num_samples=0), version=5) == "no_samples"
    assert strategy.admit(_u(delta, base_version=5), version=5) is None


def test_fedavg_full_cohort_refuses_more() -> None:
    """Once K updates are folded the round is full: ready at any time, extra updates refused."""
    strategy = FedAvg(FedAvgConfig(cohort_size=2, deadline_s=60.0), opened_at=0.0)
    for _ in range(2):
        strategy.fold(_u({"w": _t(1.0)}, 0), version=0)
    assert strategy.ready(now=0.0)
    assert strategy.admit(_u({"w": _t(1.0)}, 0), version=0) == RejectReason.BUFFER_FULL


def test_fedavg_deadline_closes_with_min_updates() -> None:
    """Opened at 100 with deadline 30 s and min 2 of K=4: ready at 130 once two arrived."""
    strategy = FedAvg(FedAvgConfig(cohort_size=4, deadline_s=30.0, min_updates=2), opened_at=100.0)
    assert strategy.deadline == 130.0
    assert not strategy.ready(now=1000.0)
    strategy.fold(_u({"w": _t(2.0)}, 0, num_samples=1), version=0)
    assert not strategy.ready(now=129.9)
    assert not strategy.ready(now=130.0)
    strategy.fold(_u({"w": _t(4.0)}, 0, num_samples=3), version=0)
    assert not strategy.ready(now=129.9)
    with pytest.raises(NotReadyError):
        strategy.step({"w": _t(0.0)}, version=0, now=129.9)
    assert strategy.ready(now=130.0)
    # (1*2 + 3*4) / 4 = 3.5
    result = strategy.step({"w": _t(0.0)}, version=0, now=131.0)
    np.testing.assert_allclose(result.new_model["w"], [3.5], rtol=1e-7)
    assert result.consumed_count == 2
    assert result.metadata["closed_by"] == "deadline"
    assert result.metadata["round_seconds"] == 31.0
    assert strategy.opened_at == 131.0
    assert strategy.deadline == 161.0
    assert strategy.pending == 0


def test_fedavg_deadline_waits_on_below_min_updates() -> None:
    """Past the deadline with fewer than min_updates it waits, then closes on the next one."""
    strategy = FedAvg(FedAvgConfig(cohort_size=5, deadline_s=10.0, min_updates=2), opened_at=0.0)
    strategy.fold(_u({"w": _t(1.0)}, 0), version=0)
    assert not strategy.ready(now=500.0)
    strategy.fold(_u({"w": _t(1.0)}, 0), version=0)
    assert strategy.ready(now=500.0)


def test_fedavg_without_deadline_waits_for_cohort() -> None:
    """With no deadline only a full cohort makes it ready."""
    strategy = FedAvg(FedAvgConfig(cohort_size=3), opened_at=0.0)
    strategy.fold(_u({"w": _t(1.0)}, 0), version=0)
    strategy.fold(_u({"w": _t(1.0)}, 0), version=0)
    assert strategy.deadline is None
    assert not strategy.ready(now=1e12)


def test_fedavg_reset_reopens_round() -> None:
    """reset(now) drops the folds and restarts the deadline clock at now."""
    strategy = FedAvg(FedAvgConfig(cohort_size=3, deadline_s=5.0), opened_at=0.0)
    strategy.fold(_u({"w": _t(1.0)}, 0), version=0)
    strategy.reset(now=50.0)
    assert strategy.pending == 0
    assert strategy.deadline == 55.0


def test_fedavg_with_server_momentum() -> None:
    """FedAvgM on the averaged delta: m1 = 2, x1 = 2; m2 = 0.5*2 + 2 = 3, x2 = 5."""
    strategy = FedAvg(
        FedAvgConfig(cohort_size=1, server_optimizer=FedAvgM(lr=1.0, momentum=0.5)), opened_at=0.0
    )
    model = {"w": _t(0.0)}
    for version in range(2):
        strategy.fold(_u({"w": _t(2.0)}, version, num_samples=7), version=version)
        model = strategy.step(model, version=version, now=0.0).new_model
    np.testing.assert_allclose(model["w"], [5.0], rtol=1e-7)


def test_fedavg_config_validation() -> None:
    """K < 1, min_updates outside [1, K] and a negative deadline are config errors."""
    with pytest.raises(InvalidConfigError):
        FedAvgConfig(cohort_size=0)
    with pytest.raises(InvalidConfigError) as info:
        FedAvgConfig(cohort_size=3, min_updates=4)
    assert info.value.field == "min_updates"
    with pytest.raises(InvalidConfigError):
        FedAvgConfig(deadline_s=-1.0)
    with pytest.raises(InvalidConfigError):
        FedAvgConfig(deadline_s=float("inf"))
