"""The error tree of the aggregator package; the pure math raises only these.

AggregatorError (Exception)
 +-- InvalidConfigError (ValueError)   a hyperparameter out of range          .field .value .reason
 +-- NegativeStalenessError (ValueError) s(tau) asked for tau < 0             .tau
 +-- LayoutMismatchError (ValueError)  tensors whose names/shapes/dtypes differ .reason .name
 +-- StateError (ValueError)           optimizer state that cannot be loaded   .key .reason
 +-- UpdateRejectedError               fold() of an update that admit() refuses .reason
 +-- NotReadyError                     step() before ready(now)                .pending
 +-- VersionMismatchError              fold()/step() at another model version  .expected .actual
"""

from __future__ import annotations

__all__ = [
    "AggregatorError",
    "InvalidConfigError",
    "LayoutMismatchError",
    "NegativeStalenessError",
    "NotReadyError",
    "StateError",
    "UpdateRejectedError",
    "VersionMismatchError",
]


class AggregatorError(Exception):
    """Root of every error raised by the aggregator package."""


class InvalidConfigError(AggregatorError, ValueError):
    """A strategy, optimizer or privacy setting is out of its valid range."""

    def __init__(self, field: str, value: object, reason: str) -> None:
        super().__init__(f"{field}={value!r}: {reason}")
        self.field = field
        self.value = value
        self.reason = reason


class NegativeStalenessError(AggregatorError, ValueError):
    """A staleness function was asked for tau < 0 (an update from a future version)."""

    def __init__(self, tau: int) -> None:
        super().__init__(f"staleness must be >= 0, got {tau}")
        self.tau = tau


class LayoutMismatchError(AggregatorError, ValueError):
    """Two sets of named tensors that must match do not (see validation.RejectReason)."""

    def __init__(self, reason: str, name: str, detail: str = "") -> None:
        super().__init__(f"{reason}: tensor {name!r}{': ' + detail if detail else ''}")
        self.reason = reason
        self.name = name


class StateError(AggregatorError, ValueError):
    """Optimizer state parts that do not describe a valid state."""

    def __init__(self, key: str, reason: str) -> None:
        super().__init__(f"state {key!r}: {reason}")
        self.key = key
        self.reason = reason


class UpdateRejectedError(AggregatorError):
    """fold() was given an update that admit() rejects; the caller should have asked first."""

    def __init__(self, reason: str) -> None:
        super().__init__(f"update rejected: {reason}")
        self.reason = reason


class NotReadyError(AggregatorError):
    """step() was called while ready(now) is false."""

    def __init__(self, pending: int) -> None:
        super().__init__(f"strategy is not ready to step ({pending} updates folded)")
        self.pending = pending


class VersionMismatchError(AggregatorError):
    """The buffer holds updates folded at one model version and was driven at another."""

    def __init__(self, expected: int, actual: int) -> None:
        super().__init__(f"buffer was folded at version {expected}, called with {actual}")
        self.expected = expected
        self.actual = actual
