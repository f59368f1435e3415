"""fedmq device: numpy models, local training and the device daemon."""

from __future__ import annotations

from device.config import (
    BrokerSettings,
    DeviceConfig,
    OutboxSettings,
    SampleSettings,
    TrainingSettings,
    load_config,
)
from device.daemon import DeviceDaemon
from device.errors import (
    ConfigError,
    ControlRefusedError,
    DeviceError,
    ForeignTaskError,
    ForgedReleaseError,
    InvalidModelError,
    InvalidSamplesError,
    MalformedReleaseError,
    NoModelError,
    ReleaseModelError,
    ReleaseRefusedError,
    RollbackError,
    StateError,
    TrainingConfigError,
    TrainingDivergedError,
    UpdateTooLargeError,
)
from device.model_store import HeldModel, ModelStore, load_verify_key, read_held_model
from device.models import (
    ModelSpec,
    Params,
    cross_entropy,
    loss_and_grad,
    predict,
    predict_proba,
    spec_from_params,
)
from device.training import TrainingConfig, TrainResult, train_local

__all__ = [
    "BrokerSettings",
    "ConfigError",
    "ControlRefusedError",
    "DeviceConfig",
    "DeviceDaemon",
    "DeviceError",
    "ForeignTaskError",
    "ForgedReleaseError",
    "HeldModel",
    "InvalidModelError",
    "InvalidSamplesError",
    "MalformedReleaseError",
    "ModelSpec",
    "ModelStore",
    "NoModelError",
    "OutboxSettings",
    "Params",
    "ReleaseModelError",
    "ReleaseRefusedError",
    "RollbackError",
    "SampleSettings",
    "StateError",
    "TrainResult",
    "TrainingConfig",
    "TrainingConfigError",
    "TrainingDivergedError",
    "TrainingSettings",
    "UpdateTooLargeError",
    "cross_entropy",
    "load_config",
    "load_verify_key",
    "loss_and_grad",
    "predict",
    "predict_proba",
    "read_held_model",
    "spec_from_params",
    "train_local",
]
