"""FedBuff (Nguyen et al. 2022), the default: staleness-weighted running sum, a step every K."""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np

from aggregator.errors import InvalidConfigError
from aggregator.privacy import DpConfig
from aggregator.robust import RobustConfig
from aggregator.server_optimizers import OptimizerState, ServerOptimizer, Sgd
from aggregator.staleness import FEDBUFF_STALENESS, StalenessFunction
from aggregator.strategies._buffered import BufferedStrategy
from aggregator.strategies.base import DeviceUpdate, JsonScalar, Weighting, basic_admission
from aggregator.validation import RejectReason

__all__ = ["FedBuff", "FedBuffConfig"]


@dataclass(frozen=True, kw_only=True, slots=True)
class FedBuffConfig:
    """FedBuff hyperparameters; the defaults are the paper's K = 10 with plain server SGD."""

    buffer_size: int = 10
    """K: updates folded per server step."""
    server_optimizer: ServerOptimizer = field(default_factory=Sgd)
    max_staleness: int | None = None
    """Reject updates with tau above this (None: accept any age)."""
    weighting: Weighting = "equal"
    """Equal: g = sum(s_i delta_i) / K; num_samples: g = sum(s_i n_i delta_i) / sum(n_i)."""
    staleness: StalenessFunction = FEDBUFF_STALENESS
    robust: RobustConfig = field(default_factory=RobustConfig)
    dp: DpConfig | None = None

    def __post_init__(self) -> None:
        """Reject K < 1 and a negative max_staleness."""
        if self.buffer_size < 1:
            raise InvalidConfigError("buffer_size", self.buffer_size, "must be >= 1")
        if self.max_staleness is not None and self.max_staleness < 0:
            raise InvalidConfigError("max_staleness", self.max_staleness, "must be >= 0")


class FedBuff(BufferedStrategy):
    """Buffered asynchronous aggregation: ready once K updates are folded.

    With the mean rule the buffer is one running sum (memory O(model) whatever K).
    """

    name = "fedbuff"

    def __init__(
        self,
        config: FedBuffConfig | None = None,
        *,
        state: OptimizerState | None = None,
        rng: np.random.Generator | None = None,
    ) -> None:
        """Start empty; ``state`` restores the optimizer, ``rng`` draws DP noise."""
        self.config = config if config is not None else FedBuffConfig()
        super().__init__(
            capacity=self.config.buffer_size,
            weighting=self.config.weighting,
            robust=self.config.robust,
            dp=self.config.dp,
            optimizer=self.config.server_optimizer,
            state=state,
            rng=rng,
        )

    def ready(self, now: float) -> bool:
        """True once K updates are folded."""
        return self.pending >= self.config.buffer_size

    def _admission(self, update: DeviceUpdate, version: int) -> RejectReason | None:
        return basic_admission(update, version, self.config.max_staleness)

    def _staleness_weight(self, tau: int) -> float:
        return self.config.staleness(tau)

    def _round_metadata(self, now: float) -> dict[str, JsonScalar]:
        return {
            "buffer_size": self.config.buffer_size,
            "staleness_function": self.config.staleness.name,
        }

    def _open_round(self, now: float) -> None:
        return
