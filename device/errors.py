"""The error tree of the device package.

DeviceError
 +-- InvalidModelError      tensors or a spec that do not form a valid model
 +-- InvalidSamplesError    features or labels that do not fit the model
 +-- TrainingConfigError    a training setting outside its allowed range
 +-- TrainingDivergedError  local training produced non-finite weights or loss
"""

from __future__ import annotations

__all__ = [
    "DeviceError",
    "InvalidModelError",
    "InvalidSamplesError",
    "TrainingConfigError",
    "TrainingDivergedError",
]


class DeviceError(Exception):
    """Root of every error raised by the device package."""

    reason: str = "device_error"
    """Short machine-readable reason, used in logs and metric labels."""


class InvalidModelError(DeviceError):
    """The named tensors or the model spec do not describe a valid model."""

    reason = "invalid_model"

    def __init__(self, detail: str) -> None:
        super().__init__(f"invalid model: {detail}")
        self.detail = detail


class InvalidSamplesError(DeviceError):
    """The features or labels do not fit the model (shape, dtype, range, finiteness)."""

    reason = "invalid_samples"

    def __init__(self, detail: str) -> None:
        super().__init__(f"invalid samples: {detail}")
        self.detail = detail


class TrainingConfigError(DeviceError):
    """A training setting is outside its allowed range."""

    reason = "invalid_training_config"

    def __init__(self, field: str, value: object, requirement: str) -> None:
        super().__init__(f"training setting {field}={value!r} must be {requirement}")
        self.field = field
        self.value = value
        self.requirement = requirement


class TrainingDivergedError(DeviceError):
    """Local training produced non-finite weights or loss; the update must not be sent."""

    reason = "diverged"

    def __init__(self, loss: float) -> None:
        super().__init__(f"local training diverged (final loss {loss!r})")
        self.loss = loss
