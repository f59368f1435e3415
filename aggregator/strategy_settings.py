"""Strategy settings as written in a task's config table, and the Strategy they build."""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any, Literal, TypeAlias

import numpy as np

from aggregator.errors import InvalidConfigError
from aggregator.privacy import DpConfig
from aggregator.robust import RobustConfig
from aggregator.server_optimizers import OptimizerState, server_optimizer_from_name
from aggregator.staleness import staleness_from_name
from aggregator.strategies.base import Strategy, Weighting
from aggregator.strategies.fedasync import FedAsync, FedAsyncConfig
from aggregator.strategies.fedavg import FedAvg, FedAvgConfig
from aggregator.strategies.fedbuff import FedBuff, FedBuffConfig

__all__ = ["STRATEGY_NAMES", "StrategyName", "StrategySettings"]

StrategyName: TypeAlias = Literal["fedbuff", "fedavg", "fedasync"]
STRATEGY_NAMES: tuple[StrategyName, ...] = ("fedbuff", "fedavg", "fedasync")


@dataclass(frozen=True, kw_only=True, slots=True)
class StrategySettings:
    """Which strategy a task runs and its hyperparameters (see aggregator/README.md).

    ``buffer_size`` is FedBuff's K and FedAvg's cohort size; ``max_staleness`` is ignored
    by FedAvg (always 0). Optimizer, staleness, robust and DP options are plain tables.
    """

    name: StrategyName = "fedbuff"
    buffer_size: int = 10
    max_staleness: int | None = None
    weighting: Weighting | None = None
    """None: the strategy's own default (FedBuff equal, FedAvg num_samples)."""
    staleness: Mapping[str, Any] = field(default_factory=lambda: {"name": "polynomial"})
    server_optimizer: Mapping[str, Any] = field(default_factory=lambda: {"name": "sgd"})
    robust: Mapping[str, Any] = field(default_factory=dict)
    dp: Mapping[str, Any] | None = None
    """{clip_norm, noise_multiplier}; noise is drawn from a fresh OS-seeded generator."""
    deadline_s: float | None = None
    min_updates: int = 1
    alpha: float = 0.6
    clip_norm: float | None = None
    """FedAsync only: per-update clip."""

    def __post_init__(self) -> None:
        """Build once to surface every invalid hyperparameter at load time."""
        if self.name not in STRATEGY_NAMES:
            raise InvalidConfigError("strategy", self.name, f"must be one of {STRATEGY_NAMES}")
        try:
            self.build(state=None, opened_at=0.0, rng=np.random.default_rng(0))
        except TypeError as exc:
            raise InvalidConfigError("strategy", self.name, f"bad option table: {exc}") from exc

    @classmethod
    def from_table(cls, table: Mapping[str, Any]) -> StrategySettings:
        """Settings from a task table: ``strategy`` names the strategy, other keys are fields."""
        values = dict(table)
        if "strategy" in values:
            values["name"] = values.pop("strategy")
        try:
            return cls(**values)
        except TypeError as exc:
            raise InvalidConfigError("tasks", sorted(values), f"unknown keys: {exc}") from exc

    @property
    def uses_deadline(self) -> bool:
        """Whether ready() depends on the clock (FedAvg with a deadline)."""
        return self.name == "fedavg" and self.deadline_s is not None

    def build(
        self,
        *,
        state: OptimizerState | None,
        opened_at: float,
        rng: np.random.Generator | None = None,
    ) -> Strategy:
        """A fresh strategy with the committed optimizer ``state`` and round start."""
        optimizer_table = dict(self.server_optimizer)
        optimizer = server_optimizer_from_name(
            str(optimizer_table.pop("name", "sgd")), **optimizer_table
        )
        staleness_table = dict(self.staleness)
        staleness = staleness_from_name(
            str(staleness_table.pop("name", "polynomial")), **staleness_table
        )
        robust = RobustConfig(**self.robust)
        dp = DpConfig(**self.dp) if self.dp is not None else None
        if self.name == "fedasync":
            return FedAsync(
                FedAsyncConfig(
                    alpha=self.alpha,
                    staleness=staleness,
                    max_staleness=self.max_staleness,
                    clip_norm=self.clip_norm,
                ),
                state=state,
            )
        noise_rng = rng if rng is not None or dp is None else np.random.default_rng()
        if self.name == "fedavg":
            return FedAvg(
                FedAvgConfig(
                    cohort_size=self.buffer_size,
                    deadline_s=self.deadline_s,
                    min_updates=self.min_updates,
                    server_optimizer=optimizer,
                    weighting=self.weighting or "num_samples",
                    robust=robust,
                    dp=dp,
                ),
                opened_at=opened_at,
                state=state,
                rng=noise_rng,
            )
        return FedBuff(
            FedBuffConfig(
                buffer_size=self.buffer_size,
                server_optimizer=optimizer,
                max_staleness=self.max_staleness,
                weighting=self.weighting or "equal",
                staleness=staleness,
                robust=robust,
                dp=dp,
            ),
            state=state,
            rng=noise_rng,
        )
