"""The fedmq aggregator: pure aggregation math here; the asyncio/Redis/MQTT service around it.

The pure modules (errors, tensors, validation, staleness, server_optimizers, robust,
privacy, strategies) do no I/O, read no clock or environment, and never import the
service modules.
"""

from __future__ import annotations

from aggregator.config import AggregatorConfig, MqttSettings, TaskSettings, load_config
from aggregator.errors import (
    AggregatorError,
    InvalidConfigError,
    LayoutMismatchError,
    NegativeStalenessError,
    NotReadyError,
    StateError,
    UpdateRejectedError,
    VersionMismatchError,
)
from aggregator.keys import TaskKeys
from aggregator.privacy import DpConfig, add_gaussian_noise, private_mean
from aggregator.robust import (
    AggregationRule,
    RobustConfig,
    clip_by_global_norm,
    clip_factor,
    coordinate_median,
    trimmed_mean,
)
from aggregator.server_optimizers import (
    FedAdam,
    FedAvgM,
    FedYogi,
    OptimizerState,
    ServerOptimizer,
    Sgd,
    server_optimizer_from_name,
)
from aggregator.staleness import (
    FEDBUFF_STALENESS,
    Constant,
    Hinge,
    Polynomial,
    StalenessFunction,
    staleness_from_name,
)
from aggregator.strategies import (
    DeviceUpdate,
    FedAsync,
    FedAsyncConfig,
    FedAvg,
    FedAvgConfig,
    FedBuff,
    FedBuffConfig,
    StepResult,
    Strategy,
    Weighting,
)
from aggregator.strategy_settings import StrategySettings
from aggregator.tensors import Model, Tensors, global_norm
from aggregator.validation import RejectReason, validate_delta

__all__ = [
    "FEDBUFF_STALENESS",
    "AggregationRule",
    "AggregatorConfig",
    "AggregatorError",
    "Constant",
    "DeviceUpdate",
    "DpConfig",
    "FedAdam",
    "FedAsync",
    "FedAsyncConfig",
    "FedAvg",
    "FedAvgConfig",
    "FedAvgM",
    "FedBuff",
    "FedBuffConfig",
    "FedYogi",
    "Hinge",
    "InvalidConfigError",
    "LayoutMismatchError",
    "Model",
    "MqttSettings",
    "NegativeStalenessError",
    "NotReadyError",
    "OptimizerState",
    "Polynomial",
    "RejectReason",
    "RobustConfig",
    "ServerOptimizer",
    "Sgd",
    "StalenessFunction",
    "StateError",
    "StepResult",
    "Strategy",
    "StrategySettings",
    "TaskKeys",
    "TaskSettings",
    "Tensors",
    "UpdateRejectedError",
    "VersionMismatchError",
    "Weighting",
    "add_gaussian_noise",
    "clip_by_global_norm",
    "clip_factor",
    "coordinate_median",
    "global_norm",
    "load_config",
    "private_mean",
    "server_optimizer_from_name",
    "staleness_from_name",
    "trimmed_mean",
    "validate_delta",
]
