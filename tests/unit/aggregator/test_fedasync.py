"""FedAsync: x += alpha * s(tau) * delta with the constant, polynomial and hinge functions."""

from __future__ import annotations

import numpy as np
import pytest
from numpy.typing import NDArray

from aggregator.errors import InvalidConfigError
from aggregator.staleness import Constant, Hinge, Polynomial, StalenessFunction
from aggregator.strategies import DeviceUpdate, FedAsync, FedAsyncConfig
from aggregator.validation import RejectReason


def _t(*values: float) -> NDArray[np.float32]:
    return np.array(values, dtype=np.float32)


def _mix(staleness: StalenessFunction, tau: int, alpha: float = 0.5) -> NDArray[np.float32]:
    strategy = FedAsync(FedAsyncConfig(alpha=alpha, staleness=staleness))
    version = 10
    update = DeviceUpdate(delta={"w": _t(2.0, -2.0)}, base_version=version - tau, num_samples=1)
    strategy.fold(update, version=version)
    assert strategy.ready(now=0.0)
    result = strategy.step({"w": _t(1.0, 2.0)}, version=version, now=0.0)
    assert result.new_version == version + 1
    assert result.consumed_count == 1
    return result.new_model["w"]


@pytest.mark.parametrize(
    ("staleness", "tau", "expected"),
    [
        # constant: a = 0.5 * 1 -> [1, 2] + 0.5*[2, -2] = [2, 1]
        (Constant(), 3, [2.0, 1.0]),
        # polynomial a=0.5: s(3) = 4^-0.5 = 0.5, a = 0.25 -> [1.5, 1.5]
        (Polynomial(a=0.5), 3, [1.5, 1.5]),
        # polynomial a=1: s(3) = 1/4, a = 0.125 -> [1.25, 1.75]
        (Polynomial(a=1.0), 3, [1.25, 1.75]),
        # hinge a=10, b=4: tau 3 <= b -> s = 1 -> [2, 1]
        (Hinge(a=10.0, b=4.0), 3, [2.0, 1.0]),
        # hinge a=10, b=4: tau 6 -> s = 1/21, a = 1/42 -> [1 + 2/42, 2 - 2/42]
        (Hinge(a=10.0, b=4.0), 6, [1.0476190, 1.9523810]),
    ],
)
def test_fedasync_mixing_hand_values(
    staleness: StalenessFunction, tau: int, expected: list[float]
) -> None:
    """alpha = 0.5, x = [1, 2], delta = [2, -2]."""
    np.testing.assert_allclose(_mix(staleness, tau), expected, rtol=1e-6)


def test_fedasync_equals_convex_mix_with_rebased_local_model() -> None:
    """x + a*delta == (1 - a)*x + a*(x + delta) for a = alpha * s(tau) = 0.8 * 1/3."""
    x = _t(1.0, 2.0)
    got = _mix(Polynomial(a=0.5), tau=8, alpha=0.8)
    a = 0.8 / 3.0
    np.testing.assert_allclose(got, (1 - a) * x + a * (x + _t(2.0, -2.0)), rtol=1e-6)


def test_fedasync_steps_count_and_batched_folds_add() -> None:
    """Two folds before a step add their mixing terms; the state counts steps."""
    strategy = FedAsync(FedAsyncConfig(alpha=1.0, staleness=Constant()))
    model = {"w": _t(0.0)}
    for version in range(3):
        strategy.fold(
            DeviceUpdate(delta={"w": _t(1.0)}, base_version=version, num_samples=1), version
        )
        model = strategy.step(model, version, now=0.0).new_model
    strategy.fold(DeviceUpdate(delta={"w": _t(1.0)}, base_version=3, num_samples=1), 3)
    strategy.fold(DeviceUpdate(delta={"w": _t(2.0)}, base_version=3, num_samples=1), 3)
    result = strategy.step(model, 3, now=0.0)
    np.testing.assert_array_equal(result.new_model["w"], _t(6.0))
    assert result.new_state.step == 4
    assert result.consumed_count == 2


def test_fedasync_max_staleness_and_clip() -> None:
    """tau beyond max_staleness is stale; a delta of norm 10 is clipped to 1 before mixing."""
    strategy = FedAsync(
        FedAsyncConfig(alpha=0.5, staleness=Constant(), max_staleness=2, clip_norm=1.0)
    )
    big = DeviceUpdate(delta={"w": _t(6.0, 8.0)}, base_version=5, num_samples=1)
    assert strategy.admit(
        DeviceUpdate(delta={"w": _t(6.0, 8.0)}, base_version=2, num_samples=1), 5
    ) == (RejectReason.STALE)
    strategy.fold(big, 5)
    # clipped to [0.6, 0.8], times 0.5
    result = strategy.step({"w": _t(0.0, 0.0)}, 5, now=0.0)
    np.testing.assert_allclose(result.new_model["w"], [0.3, 0.4], rtol=1e-6)
    assert result.metadata["clipped"] == 1


def test_fedasync_config_validation() -> None:
    """alpha outside (0, 1] and a non-positive clip norm are config errors."""
    with pytest.raises(InvalidConfigError):
        FedAsyncConfig(alpha=0.0)
    with pytest.raises(InvalidConfigError):
        FedAsyncConfig(alpha=1.5)
    with pytest.raises(InvalidConfigError):
        FedAsyncConfig(clip_norm=0.0)
