"""Synchronous FedAvg: a cohort of K fresh updates weighted by samples, closed by a deadline."""

from __future__ import annotations

import math
from dataclasses import dataclass, field

import numpy as np

from aggregator.errors import InvalidConfigError
from aggregator.privacy import DpConfig
from aggregator.robust import RobustConfig
from aggregator.server_optimizers import OptimizerState, ServerOptimizer, Sgd
from aggregator.strategies._buffered import BufferedStrategy
from aggregator.strategies.base import DeviceUpdate, JsonScalar, Weighting, basic_admission
from aggregator.validation import RejectReason

__all__ = ["FedAvg", "FedAvgConfig"]


@dataclass(frozen=True, kw_only=True, slots=True)
class FedAvgConfig:
    """FedAvg hyperparameters: x_new = x + sum(n_i delta_i) / sum(n_i) with the default SGD."""

    cohort_size: int = 10
    """K: the round closes as soon as K updates are folded."""
    deadline_s: float | None = None
    """Seconds after the round opened when it closes with what arrived (None: wait for K)."""
    min_updates: int = 1
    """Fewest updates a deadline close needs; below it the round waits on past the deadline."""
    server_optimizer: ServerOptimizer = field(default_factory=Sgd)
    weighting: Weighting = "num_samples"
    robust: RobustConfig = field(default_factory=RobustConfig)
    dp: DpConfig | None = None

    def __post_init__(self) -> None:
        """Reject K < 1, min_updates outside [1, K] and a negative or non-finite deadline."""
        if self.cohort_size < 1:
            raise InvalidConfigError("cohort_size", self.cohort_size, "must be >= 1")
        if not 1 <= self.min_updates <= self.cohort_size:
            raise InvalidConfigError("min_updates", self.min_updates, "must be in [1, cohort_size]")
        if self.deadline_s is not None and not (
            math.isfinite(self.deadline_s) and self.deadline_s >= 0.0
        ):
            raise InvalidConfigError("deadline_s", self.deadline_s, "must be a finite number >= 0")


class FedAvg(BufferedStrategy):
    """One round per model version: only updates trained on it (tau = 0) are admitted.

    Ready when K updates are folded, or when ``now >= opened_at + deadline_s`` and at
    least ``min_updates`` are folded. The caller supplies every ``now``; this class never
    reads a clock.
    """

    name = "fedavg"

    def __init__(
        self,
        config: FedAvgConfig | None = None,
        *,
        opened_at: float,
        state: OptimizerState | None = None,
        rng: np.random.Generator | None = None,
    ) -> None:
        """Open the first round at ``opened_at`` (the caller's clock)."""
        self.config = config if config is not None else FedAvgConfig()
        super().__init__(
            capacity=self.config.cohort_size,
            weighting=self.config.weighting,
            robust=self.config.robust,
            dp=self.config.dp,
            optimizer=self.config.server_optimizer,
            state=state,
            rng=rng,
        )
        self._opened_at = opened_at

    @property
    def opened_at(self) -> float:
        """When the current round opened; persist it to rebuild the round after a crash."""
        return self._opened_at

    @property
    def deadline(self) -> float | None:
        """When the current round may close short of K, or None without a deadline."""
        if self.config.deadline_s is None:
            return None
        return self._opened_at + self.config.deadline_s

    def ready(self, now: float) -> bool:
        """True at K updates, or past the deadline with at least min_updates."""
        if self.pending >= self.config.cohort_size:
            return True
        deadline = self.deadline
        return deadline is not None and now >= deadline and self.pending >= self.config.min_updates

    def _admission(self, update: DeviceUpdate, version: int) -> RejectReason | None:
        return basic_admission(update, version, max_staleness=0)

    def _staleness_weight(self, tau: int) -> float:
        return 1.0

    def _round_metadata(self, now: float) -> dict[str, JsonScalar]:
        full = self.pending >= self.config.cohort_size
        return {
            "cohort_size": self.config.cohort_size,
            "closed_by": "cohort" if full else "deadline",
            "round_seconds": now - self._opened_at,
        }

    def _open_round(self, now: float) -> None:
        self._opened_at = now
