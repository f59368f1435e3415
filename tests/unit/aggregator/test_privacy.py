"""Central DP: clipping to S, Gaussian noise of std z*S on the sum, z in the step result."""

from __future__ import annotations

import numpy as np
import pytest
from numpy.typing import NDArray

from aggregator.errors import InvalidConfigError
from aggregator.privacy import DpConfig, add_gaussian_noise, private_mean
from aggregator.robust import RobustConfig
from aggregator.staleness import Constant
from aggregator.strategies import DeviceUpdate, FedAvg, FedAvgConfig, FedBuff, FedBuffConfig


def _t(*values: float) -> NDArray[np.float32]:
    return np.array(values, dtype=np.float32)


def _u(delta: dict[str, NDArray[np.float32]], base_version: int = 0) -> DeviceUpdate:
    return DeviceUpdate(delta=delta, base_version=base_version, num_samples=1)


def test_private_mean_clips_then_averages_without_noise() -> None:
    """S = 1, z = 0: [3, 4] (norm 5) -> [0.6, 0.8]; [0.6, 0.8] stays; mean [0.6, 0.8]."""
    config = DpConfig(clip_norm=1.0, noise_multiplier=0.0)
    got = private_mean([{"w": _t(3.0, 4.0)}, {"w": _t(0.6, 0.8)}], config, np.random.default_rng(0))
    np.testing.assert_allclose(got["w"], [0.6, 0.8], rtol=1e-6)


def test_private_mean_noise_std_is_z_s_over_k() -> None:
    """Zero updates, S = 2, z = 1.5, K = 3: mean is noise with std 1.5*2/3 = 1."""
    n = 200_000
    config = DpConfig(clip_norm=2.0, noise_multiplier=1.5)
    updates = [{"w": np.zeros(n, dtype=np.float32)} for _ in range(3)]
    got = private_mean(updates, config, np.random.default_rng(42))["w"]
    # std of the sample std is about 1/sqrt(2n) = 0.0016; allow 1%.
    assert float(np.std(got)) == pytest.approx(1.0, rel=0.01)
    assert abs(float(np.mean(got))) < 0.01


def test_fedbuff_dp_noise_scale_and_reported_multiplier() -> None:
    """K = 4, S = 1, z = 2, zero deltas: g = N(0, 2^2)/4, std 0.5; z reported as 2."""
    n = 200_000
    config = FedBuffConfig(
        buffer_size=4, staleness=Constant(), dp=DpConfig(clip_norm=1.0, noise_multiplier=2.0)
    )
    strategy = FedBuff(config, rng=np.random.default_rng(1234))
    for _ in range(4):
        strategy.fold(_u({"w": np.zeros(n, dtype=np.float32)}), version=0)
    result = strategy.step({"w": np.zeros(n, dtype=np.float32)}, version=0, now=0.0)
    noise = result.new_model["w"]
    assert float(np.std(noise)) == pytest.approx(0.5, rel=0.01)
    assert abs(float(np.mean(noise))) < 0.005
    assert result.noise_multiplier == 2.0
    assert result.metadata["noise_multiplier"] == 2.0
    assert result.metadata["noise_std"] == 2.0


def test_fedbuff_dp_clips_each_update_to_s() -> None:
    """S = 1, z = 0: [30, 40] and [0, 10] clip to [0.6, 0.8] and [0, 1]; g = [0.3, 0.9]."""
    config = FedBuffConfig(
        buffer_size=2, staleness=Constant(), dp=DpConfig(clip_norm=1.0, noise_multiplier=0.0)
    )
    strategy = FedBuff(config, rng=np.random.default_rng(0))
    strategy.fold(_u({"w": _t(30.0, 40.0)}), version=0)
    strategy.fold(_u({"w": _t(0.0, 10.0)}), version=0)
    result = strategy.step({"w": _t(0.0, 0.0)}, version=0, now=0.0)
    np.testing.assert_allclose(result.new_model["w"], [0.3, 0.9], rtol=1e-6)
    assert result.metadata["clipped"] == 2
    assert result.noise_multiplier == 0.0


def test_dp_uses_the_tighter_of_both_clip_norms() -> None:
    """robust clip 0.5 and DP S = 1: [3, 4] is clipped to norm 0.5 -> [0.3, 0.4]."""
    config = FedBuffConfig(
        buffer_size=1,
        staleness=Constant(),
        robust=RobustConfig(clip_norm=0.5),
        dp=DpConfig(clip_norm=1.0, noise_multiplier=0.0),
    )
    strategy = FedBuff(config, rng=np.random.default_rng(0))
    strategy.fold(_u({"w": _t(3.0, 4.0)}), version=0)
    result = strategy.step({"w": _t(0.0, 0.0)}, version=0, now=0.0)
    np.testing.assert_allclose(result.new_model["w"], [0.3, 0.4], rtol=1e-6)


def test_dp_noise_reproducible_with_seed() -> None:
    """Same seed gives identical noise; another seed gives different noise."""
    total = {"a": np.zeros(50, dtype=np.float32), "b": np.zeros((2, 5), dtype=np.float32)}
    first = add_gaussian_noise(total, 1.0, np.random.default_rng(9))
    again = add_gaussian_noise(total, 1.0, np.random.default_rng(9))
    other = add_gaussian_noise(total, 1.0, np.random.default_rng(10))
    for name, zeros in total.items():
        np.testing.assert_array_equal(first[name], again[name])
        assert not np.array_equal(first[name], other[name])
        np.testing.assert_array_equal(zeros, 0.0)


def test_fedavg_dp_with_equal_weights() -> None:
    """FedAvg accepts DP with equal weighting and reports z."""
    config = FedAvgConfig(
        cohort_size=2, weighting="equal", dp=DpConfig(clip_norm=1.0, noise_multiplier=0.5)
    )
    strategy = FedAvg(config, opened_at=0.0, rng=np.random.default_rng(5))
    strategy.fold(_u({"w": _t(0.1)}), version=0)
    strategy.fold(_u({"w": _t(0.3)}), version=0)
    result = strategy.step({"w": _t(0.0)}, version=0, now=0.0)
    assert result.noise_multiplier == 0.5
    assert result.new_model["w"][0] != pytest.approx(0.2)


def test_dp_config_combinations_rejected() -> None:
    """DP needs an rng, the mean rule and equal weights; S > 0 and z >= 0."""
    dp = DpConfig(clip_norm=1.0, noise_multiplier=1.0)
    with pytest.raises(InvalidConfigError) as info:
        FedBuff(FedBuffConfig(dp=dp))
    assert info.value.field == "rng"
    rng = np.random.default_rng(0)
    with pytest.raises(InvalidConfigError):
        FedBuff(FedBuffConfig(dp=dp, robust=RobustConfig(rule="median")), rng=rng)
    with pytest.raises(InvalidConfigError):
        FedBuff(FedBuffConfig(dp=dp, weighting="num_samples"), rng=rng)
    with pytest.raises(InvalidConfigError):
        FedAvg(FedAvgConfig(dp=dp), opened_at=0.0, rng=rng)
    with pytest.raises(InvalidConfigError):
        DpConfig(clip_norm=0.0, noise_multiplier=1.0)
    with pytest.raises(InvalidConfigError):
        DpConfig(clip_norm=1.0, noise_multiplier=-0.1)
