"""Robust aggregation: median and trimmed mean with an outlier, norm clipping, in strategies."""

from __future__ import annotations

import numpy as np
import pytest
from numpy.typing import NDArray

from aggregator.errors import InvalidConfigError
from aggregator.robust import (
    RobustConfig,
    clip_by_global_norm,
    clip_factor,
    coordinate_median,
    trim_count,
    trimmed_mean,
)
from aggregator.staleness import Constant
from aggregator.strategies import DeviceUpdate, FedAvg, FedAvgConfig, FedBuff, FedBuffConfig
from aggregator.tensors import Model, global_norm


def _t(*values: float) -> NDArray[np.float32]:
    return np.array(values, dtype=np.float32)


def _u(delta: Model, base_version: int = 0, num_samples: int = 1) -> DeviceUpdate:
    return DeviceUpdate(delta=delta, base_version=base_version, num_samples=num_samples)


# Four honest updates and one attacker at [1000, -1000].
_HONEST = [_t(1.0, 10.0), _t(2.0, 20.0), _t(3.0, 30.0), _t(4.0, 40.0)]
_OUTLIER = _t(1000.0, -1000.0)


def test_coordinate_median_ignores_outlier() -> None:
    """Sorted per coordinate: [1,2,3,4,1000] -> 3 and [-1000,10,20,30,40] -> 20."""
    updates = [{"w": a} for a in [*_HONEST, _OUTLIER]]
    np.testing.assert_array_equal(coordinate_median(updates)["w"], _t(3.0, 20.0))


def test_coordinate_median_even_count_averages_middle_pair() -> None:
    """[1,2,3,1000] -> (2+3)/2 = 2.5 and [-1000,10,20,30] -> (10+20)/2 = 15."""
    updates = [{"w": a} for a in [*_HONEST[:3], _OUTLIER]]
    np.testing.assert_array_equal(coordinate_median(updates)["w"], _t(2.5, 15.0))


def test_trimmed_mean_drops_outlier() -> None:
    """fraction 0.2 of 5 drops 1 each end: mean(2,3,4) = 3 and mean(10,20,30) = 20."""
    updates = [{"w": a} for a in [*_HONEST, _OUTLIER]]
    assert trim_count(5, 0.2) == 1
    np.testing.assert_allclose(trimmed_mean(updates, 0.2)["w"], [3.0, 20.0], rtol=1e-7)


def test_trimmed_mean_zero_fraction_is_mean() -> None:
    """fraction 0 keeps everything: (1+2+3+4+1000)/5 = 202 and (100-1000)/5 = -180."""
    updates = [{"w": a} for a in [*_HONEST, _OUTLIER]]
    np.testing.assert_allclose(trimmed_mean(updates, 0.0)["w"], [202.0, -180.0], rtol=1e-7)


def test_clip_by_global_norm_scales_all_tensors_together() -> None:
    """a = [3], b = [4] has norm 5; clipped to 2.5 both halve; within bound nothing changes."""
    tensors = {"a": _t(3.0), "b": _t(4.0)}
    clipped, factor = clip_by_global_norm(tensors, 2.5)
    assert factor == 0.5
    np.testing.assert_allclose(clipped["a"], [1.5], rtol=1e-7)
    np.testing.assert_allclose(clipped["b"], [2.0], rtol=1e-7)
    assert global_norm(clipped) == pytest.approx(2.5)
    same, one = clip_by_global_norm(tensors, 5.0)
    assert one == 1.0
    np.testing.assert_array_equal(same["a"], tensors["a"])
    np.testing.assert_array_equal(tensors["a"], _t(3.0))
    assert clip_factor(0.0, 1.0) == 1.0


def test_fedbuff_median_rule_resists_outlier() -> None:
    """K=5 fresh updates, median rule: x = 0 + [3, 20]; the stack holds K models."""
    strategy = FedBuff(
        FedBuffConfig(buffer_size=5, robust=RobustConfig(rule="median"), staleness=Constant())
    )
    for a in [_OUTLIER, *_HONEST]:
        strategy.fold(_u({"w": a}), version=0)
    assert strategy.buffer_nbytes == 5 * 2 * 4
    result = strategy.step({"w": _t(0.0, 0.0)}, version=0, now=0.0)
    np.testing.assert_array_equal(result.new_model["w"], _t(3.0, 20.0))
    assert result.metadata["rule"] == "median"


def test_fedbuff_trimmed_mean_rule_applies_staleness_first() -> None:
    """Contributions s(tau)*delta: tau 3 halves [4, 40] to [2, 20].

    values per coordinate: [1, 2, 3, 2, 1000] -> drop 1 and 1000 -> (2+3+2)/3 = 7/3
                           [10, 20, 30, 20, -1000] -> drop -1000 and 30 -> (10+20+20)/3 = 50/3
    """
    strategy = FedBuff(
        FedBuffConfig(buffer_size=5, robust=RobustConfig(rule="trimmed_mean", trim_fraction=0.2))
    )
    for a, tau in zip([*_HONEST, _OUTLIER], [0, 0, 0, 3, 0], strict=True):
        strategy.fold(_u({"w": a}, base_version=3 - tau), version=3)
    result = strategy.step({"w": _t(0.0, 0.0)}, version=3, now=0.0)
    np.testing.assert_allclose(result.new_model["w"], [7 / 3, 50 / 3], rtol=1e-6)


def test_fedavg_median_with_sample_weights() -> None:
    """num_samples weighting with the median: median(n_i d_i) * K / sum(n).

    n = 1, 1, 2 and d = 6, 9, 1000: n*d = [6, 9, 2000] -> median 9; * 3/4 -> 6.75
    """
    strategy = FedAvg(
        FedAvgConfig(cohort_size=3, robust=RobustConfig(rule="median")), opened_at=0.0
    )
    for d, n in [(6.0, 1), (9.0, 1), (1000.0, 2)]:
        strategy.fold(_u({"w": _t(d)}, num_samples=n), version=0)
    result = strategy.step({"w": _t(0.0)}, version=0, now=0.0)
    np.testing.assert_allclose(result.new_model["w"], [6.75], rtol=1e-7)


def test_fedbuff_norm_clipping_before_folding() -> None:
    """clip 5: [30, 40] (norm 50) becomes [3, 4]; [0, 1] is kept; g = [3, 5]/2 = [1.5, 2.5]."""
    strategy = FedBuff(
        FedBuffConfig(buffer_size=2, robust=RobustConfig(clip_norm=5.0), staleness=Constant())
    )
    strategy.fold(_u({"w": _t(30.0, 40.0)}), version=0)
    strategy.fold(_u({"w": _t(0.0, 1.0)}), version=0)
    assert strategy.buffer_nbytes == 2 * 4
    result = strategy.step({"w": _t(0.0, 0.0)}, version=0, now=0.0)
    np.testing.assert_allclose(result.new_model["w"], [1.5, 2.5], rtol=1e-6)
    assert result.metadata["clipped"] == 1


def test_robust_config_validation() -> None:
    """Unknown rule, trim fraction >= 0.5 and clip norm <= 0 are config errors."""
    with pytest.raises(InvalidConfigError):
        RobustConfig(rule="krum")  # type: ignore[arg-type]
    with pytest.raises(InvalidConfigError):
        RobustConfig(trim_fraction=0.5)
    with pytest.raises(InvalidConfigError):
        RobustConfig(clip_norm=0.0)
    with pytest.raises(InvalidConfigError):
        coordinate_median([])
