"""FedAsync (Xie et al. 2019): mix every update into the model, x += alpha * s(tau) * delta."""

from __future__ import annotations

import math
from dataclasses import dataclass

from aggregator.errors import InvalidConfigError
from aggregator.robust import RobustConfig
from aggregator.server_optimizers import OptimizerState, Sgd
from aggregator.staleness import FEDBUFF_STALENESS, StalenessFunction
from aggregator.strategies._buffered import BufferedStrategy
from aggregator.strategies.base import DeviceUpdate, JsonScalar, basic_admission
from aggregator.validation import RejectReason

__all__ = ["FedAsync", "FedAsyncConfig"]


@dataclass(frozen=True, kw_only=True, slots=True)
class FedAsyncConfig:
    """FedAsync hyperparameters; the paper's s are Constant, Polynomial(a) and Hinge(a, b)."""

    alpha: float = 0.6
    """Mixing weight in (0, 1]."""
    staleness: StalenessFunction = FEDBUFF_STALENESS
    max_staleness: int | None = None
    clip_norm: float | None = None
    """Clip each delta to this global L2 norm before mixing; None disables clipping."""

    def __post_init__(self) -> None:
        """Reject alpha outside (0, 1], a negative max_staleness and a clip norm <= 0."""
        if not (math.isfinite(self.alpha) and 0.0 < self.alpha <= 1.0):
            raise InvalidConfigError("alpha", self.alpha, "must be in (0, 1]")
        if self.max_staleness is not None and self.max_staleness < 0:
            raise InvalidConfigError("max_staleness", self.max_staleness, "must be >= 0")
        if self.clip_norm is not None and not (
            math.isfinite(self.clip_norm) and self.clip_norm > 0.0
        ):
            raise InvalidConfigError("clip_norm", self.clip_norm, "must be a finite number > 0")


class FedAsync(BufferedStrategy):
    """One step per update: x_new = x + alpha * s(tau) * delta.

    This equals the paper's (1 - a) x + a x_local with a = alpha * s(tau) when x_local is
    read as x + delta, i.e. the device's delta re-based on the current model; the pure
    strategy never sees the older model the device started from. Should the service fold
    several updates before stepping, their mixing terms add up in one step.
    """

    name = "fedasync"

    def __init__(
        self, config: FedAsyncConfig | None = None, *, state: OptimizerState | None = None
    ) -> None:
        """Start empty; ``state`` carries the step counter across restarts."""
        self.config = config if config is not None else FedAsyncConfig()
        super().__init__(
            capacity=None,
            weighting="equal",
            robust=RobustConfig(clip_norm=self.config.clip_norm),
            dp=None,
            optimizer=Sgd(lr=1.0),
            state=state,
            rng=None,
        )

    def ready(self, now: float) -> bool:
        """True as soon as one update is folded."""
        return self.pending >= 1

    def _denominator(self) -> float:
        return 1.0

    def _admission(self, update: DeviceUpdate, version: int) -> RejectReason | None:
        return basic_admission(update, version, self.config.max_staleness)

    def _staleness_weight(self, tau: int) -> float:
        return self.config.alpha * self.config.staleness(tau)

    def _round_metadata(self, now: float) -> dict[str, JsonScalar]:
        return {"alpha": self.config.alpha, "staleness_function": self.config.staleness.name}

    def _open_round(self, now: float) -> None:
        return
