"""The error tree of the device package.

DeviceError
 +-- InvalidModelError      tensors or a spec that do not form a valid model
 +-- InvalidSamplesError    features or labels that do not fit the model
 +-- TrainingConfigError    a training setting outside its allowed range
 +-- TrainingDivergedError  local training produced non-finite weights or loss
 +-- ConfigError            a daemon configuration file or FL_* variable that is wrong
 +-- NoModelError           a prediction was asked for before any model is held
 +-- StateError             the daemon's state directory is unusable (corrupt, unreadable)
 +-- UpdateTooLargeError    an encoded update above the payload limit (never sent)
 +-- ControlRefusedError    a Control message whose settings cannot be applied
 +-- ReleaseRefusedError    a model release the daemon will not hold
      +-- MalformedReleaseError  bytes that are not a release
      +-- ForgedReleaseError     a signature that does not verify with the aggregator key
      +-- ForeignTaskError       a release of another task
      +-- RollbackError          a version not above the held one
      +-- ReleaseModelError      tensors that are not a model this device can run
"""

from __future__ import annotations

__all__ = [
    "ConfigError",
    "ControlRefusedError",
    "DeviceError",
    "ForeignTaskError",
    "ForgedReleaseError",
    "InvalidModelError",
    "InvalidSamplesError",
    "MalformedReleaseError",
    "NoModelError",
    "ReleaseModelError",
    "ReleaseRefusedError",
    "RollbackError",
    "StateError",
    "TrainingConfigError",
    "TrainingDivergedError",
    "UpdateTooLargeError",
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


class ConfigError(DeviceError):
    """A daemon setting (TOML key or ``FL_*`` variable) that is missing, unknown or invalid."""

    reason = "invalid_config"

    def __init__(self, key: str, detail: str) -> None:
        super().__init__(f"config {key}: {detail}")
        self.key = key
        self.detail = detail


class NoModelError(DeviceError):
    """No verified model is held yet, so there is nothing to predict or train with."""

    reason = "no_model"

    def __init__(self) -> None:
        super().__init__("no model is held yet: wait for the first signed release")


class StateError(DeviceError):
    """The state directory cannot be used: a corrupt database, an unreadable file."""

    reason = "bad_state"

    def __init__(self, path: str, detail: str) -> None:
        super().__init__(f"state {path}: {detail}")
        self.path = path
        self.detail = detail


class UpdateTooLargeError(DeviceError):
    """An encoded update above the payload limit: a permanent error, it is never sent."""

    reason = "update_too_large"

    def __init__(self, size: int, limit: int) -> None:
        super().__init__(f"encoded update is {size} bytes, above the limit of {limit}")
        self.size = size
        self.limit = limit


class ControlRefusedError(DeviceError):
    """A Control message that is malformed, of another task, or with invalid settings."""

    reason = "control_refused"

    def __init__(self, detail: str) -> None:
        super().__init__(f"control refused: {detail}")
        self.detail = detail


class ReleaseRefusedError(DeviceError):
    """A model release the daemon refuses; the model it holds keeps serving."""

    reason = "refused"

    def __init__(self, detail: str) -> None:
        super().__init__(f"release refused ({self.reason}): {detail}")
        self.detail = detail


class MalformedReleaseError(ReleaseRefusedError):
    """The payload is not a well-formed release (garbage, wrong type, above the limits)."""

    reason = "malformed"


class ForgedReleaseError(ReleaseRefusedError):
    """The signature does not verify with the configured aggregator public key."""

    reason = "bad_signature"


class ForeignTaskError(ReleaseRefusedError):
    """A correctly signed release of another task."""

    reason = "wrong_task"

    def __init__(self, task: str, expected: str) -> None:
        super().__init__(f"release is for task {task!r}, this device runs {expected!r}")
        self.task = task
        self.expected = expected


class RollbackError(ReleaseRefusedError):
    """A release whose version is not above the held one (a replay or a rollback)."""

    reason = "rollback"

    def __init__(self, version: int, held: int) -> None:
        super().__init__(f"release version {version} is not above the held version {held}")
        self.version = version
        self.held = held


class ReleaseModelError(ReleaseRefusedError):
    """A signed release whose tensors are not a model this device can run."""

    reason = "invalid_model"
