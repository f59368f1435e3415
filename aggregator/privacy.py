"""Central differential privacy on aggregated deltas: clip each to S, sum, add N(0, (z*S)^2)."""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np

from aggregator.errors import InvalidConfigError
from aggregator.robust import clip_factor
from aggregator.tensors import Model, Tensors, as_float32, global_norm
from aggregator.validation import require_same_layout

__all__ = ["DpConfig", "add_gaussian_noise", "private_mean"]


@dataclass(frozen=True, kw_only=True, slots=True)
class DpConfig:
    """Gaussian mechanism on the sum of clipped updates (DP-FedAvg / DP-FedBuff).

    Each update is clipped to L2 norm ``clip_norm`` (S), so one device changes the sum by at
    most S; the sum receives N(0, (z*S)^2) per coordinate, z = ``noise_multiplier``. Privacy
    accounting (epsilon over many steps) belongs to the caller, which is why z is reported.
    """

    clip_norm: float
    noise_multiplier: float

    def __post_init__(self) -> None:
        """Reject S <= 0 and z < 0."""
        if not (math.isfinite(self.clip_norm) and self.clip_norm > 0.0):
            raise InvalidConfigError("clip_norm", self.clip_norm, "must be a finite number > 0")
        if not (math.isfinite(self.noise_multiplier) and self.noise_multiplier >= 0.0):
            raise InvalidConfigError(
                "noise_multiplier", self.noise_multiplier, "must be a finite number >= 0"
            )

    @property
    def noise_std(self) -> float:
        """Standard deviation of the noise added to the sum: z * S."""
        return self.noise_multiplier * self.clip_norm


def add_gaussian_noise(total: Tensors, std: float, rng: np.random.Generator) -> Model:
    """Return ``total`` + N(0, std^2) per coordinate, drawn in sorted tensor-name order."""
    noisy: Model = {}
    for name in sorted(total):
        noise = rng.standard_normal(total[name].shape, dtype=np.float32)
        noisy[name] = as_float32(total[name] + np.float32(std) * noise)
    return noisy


def private_mean(updates: Sequence[Tensors], config: DpConfig, rng: np.random.Generator) -> Model:
    """Clip each update to S, sum, add N(0, (z*S)^2) to the sum, divide by K = len(updates)."""
    if not updates:
        raise InvalidConfigError("updates", 0, "need at least one update")
    reference = updates[0]
    total: Model = {name: np.zeros_like(reference[name]) for name in reference}
    for update in updates:
        require_same_layout(reference, update)
        scale = np.float32(clip_factor(global_norm(update), config.clip_norm))
        for name, array in update.items():
            total[name] += scale * array
    noisy = add_gaussian_noise(total, config.noise_std, rng)
    count = np.float32(len(updates))
    return {name: as_float32(array / count) for name, array in noisy.items()}
