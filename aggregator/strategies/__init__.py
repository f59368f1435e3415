"""Aggregation strategies: they decide when to step; the pure numpy modules compute."""

from __future__ import annotations

from aggregator.strategies.base import (
    DeviceUpdate,
    JsonScalar,
    StepResult,
    Strategy,
    Weighting,
    basic_admission,
)
from aggregator.strategies.fedasync import FedAsync, FedAsyncConfig
from aggregator.strategies.fedavg import FedAvg, FedAvgConfig
from aggregator.strategies.fedbuff import FedBuff, FedBuffConfig

__all__ = [
    "DeviceUpdate",
    "FedAsync",
    "FedAsyncConfig",
    "FedAvg",
    "FedAvgConfig",
    "FedBuff",
    "FedBuffConfig",
    "JsonScalar",
    "StepResult",
    "Strategy",
    "Weighting",
    "basic_admission",
]
