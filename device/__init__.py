"""fedmq device: numpy models, local training and the device daemon."""

from __future__ import annotations

from device.errors import (
    DeviceError,
    InvalidModelError,
    InvalidSamplesError,
    TrainingConfigError,
    TrainingDivergedError,
)
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
    "DeviceError",
    "InvalidModelError",
    "InvalidSamplesError",
    "ModelSpec",
    "Params",
    "TrainResult",
    "TrainingConfig",
    "TrainingConfigError",
    "TrainingDivergedError",
    "cross_entropy",
    "loss_and_grad",
    "predict",
    "predict_proba",
    "spec_from_params",
    "train_local",
]
