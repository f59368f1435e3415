"""The strategy interface the service drives (admit, fold, ready, step, reset) and its values."""

from __future__ import annotations

from abc import ABC, abstractmethod
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import ClassVar, Literal, TypeAlias

from aggregator.server_optimizers import OptimizerState
from aggregator.tensors import Model, Tensors
from aggregator.validation import RejectReason

__all__ = ["DeviceUpdate", "JsonScalar", "StepResult", "Strategy", "Weighting", "basic_admission"]

JsonScalar: TypeAlias = bool | int | float | str
Weighting: TypeAlias = Literal["equal", "num_samples"]


@dataclass(frozen=True, kw_only=True, slots=True, eq=False)
class DeviceUpdate:
    """What a strategy needs from one accepted ModelUpdate."""

    delta: Tensors
    """local model - base model, validated against the current model (validate_delta)."""
    base_version: int
    """The model version the device trained from; staleness tau = current - base_version."""
    num_samples: int


@dataclass(frozen=True, kw_only=True, slots=True, eq=False)
class StepResult:
    """The outcome of one server step, to be committed atomically by the service."""

    new_model: Model
    new_state: OptimizerState
    new_version: int
    consumed_count: int
    """How many folded updates this step used (all that were folded)."""
    noise_multiplier: float | None = None
    """Central-DP noise multiplier z of this step, None without DP."""
    metadata: Mapping[str, JsonScalar] = field(default_factory=dict)
    """JSON-able facts for the release metadata and logs (staleness, norms, counts)."""


def basic_admission(
    update: DeviceUpdate, version: int, max_staleness: int | None
) -> RejectReason | None:
    """Reasons shared by every strategy: a future base version, no samples, too stale."""
    tau = version - update.base_version
    if tau < 0:
        return RejectReason.FUTURE_VERSION
    if update.num_samples <= 0:
        return RejectReason.NO_SAMPLES
    if max_staleness is not None and tau > max_staleness:
        return RejectReason.STALE
    return None


class Strategy(ABC):
    """Decides when and how folded device deltas become a new global model.

    Contract with the service, which owns all I/O and the clock:

    - ``admit(update, version)`` before storing an update; a reason means "reject".
    - ``fold(update, version)`` once the update is stored durably. Cheap (vectorised, in
      place) and deterministic: folding the same ordered updates into a fresh strategy
      built with the same state gives bit-identical steps, which is how the service
      rebuilds after a crash.
    - ``ready(now)`` after each fold and on a timer; ``now`` is the caller's clock.
    - ``step(model, version, now)`` consumes everything folded, adopts the new optimizer
      state and returns it in the result. If the service then fails to commit, it must
      discard this strategy and rebuild it from the committed state and stream.
    - ``reset(now)`` drops everything folded and opens a new round at ``now``.
    """

    name: ClassVar[str]

    @property
    @abstractmethod
    def pending(self) -> int:
        """Number of updates folded since the last step or reset."""

    @property
    @abstractmethod
    def state(self) -> OptimizerState | None:
        """The server optimizer state after the last step (None before the first)."""

    @abstractmethod
    def admit(self, update: DeviceUpdate, version: int) -> RejectReason | None:
        """Return why ``update`` cannot be folded at model ``version``, or None."""

    @abstractmethod
    def fold(self, update: DeviceUpdate, version: int) -> None:
        """Fold an admitted update; raise UpdateRejectedError if admit() would reject it."""

    @abstractmethod
    def ready(self, now: float) -> bool:
        """Whether step() may run at time ``now``."""

    @abstractmethod
    def step(self, model: Tensors, version: int, now: float) -> StepResult:
        """Produce version + 1 from ``model`` and everything folded; raise NotReadyError."""

    @abstractmethod
    def reset(self, now: float) -> None:
        """Drop everything folded and open a new round at ``now``."""
