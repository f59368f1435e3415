"""The shared core of FedBuff, FedAvg and FedAsync: scale, clip, fold, reduce, optimizer step."""

from __future__ import annotations

import logging
from abc import abstractmethod

import numpy as np

from aggregator.errors import (
    InvalidConfigError,
    NotReadyError,
    UpdateRejectedError,
    VersionMismatchError,
)
from aggregator.privacy import DpConfig, add_gaussian_noise
from aggregator.robust import (
    RobustConfig,
    clip_factor,
    median_of_stack,
    trimmed_mean_of_stack,
)
from aggregator.server_optimizers import OptimizerState, ServerOptimizer
from aggregator.strategies._buffer import UpdateBuffer
from aggregator.strategies.base import DeviceUpdate, JsonScalar, StepResult, Strategy, Weighting
from aggregator.tensors import Model, Tensors, as_float32, global_norm
from aggregator.validation import RejectReason

__all__ = ["BufferedStrategy"]

logger = logging.getLogger(__name__)

_WEIGHTINGS: tuple[Weighting, ...] = ("equal", "num_samples")


class BufferedStrategy(Strategy):
    """Fold scaled deltas into one buffer, reduce them, then step the server optimizer.

    Each update folds c_i = s(tau_i) * w_i * clip_i * delta_i; the step uses

    g = (sum_i c_i [+ N(0, (z*S)^2)]) / denominator       (rule "mean")
    g = reduce_i(c_i) * count / denominator               (rule "median" / "trimmed_mean")

    where w_i = 1 and denominator = count ("equal"), or w_i = n_i and denominator =
    sum n_i ("num_samples"). Subclasses choose s, admission, readiness and the denominator.
    """

    def __init__(
        self,
        *,
        capacity: int | None,
        weighting: Weighting,
        robust: RobustConfig,
        dp: DpConfig | None,
        optimizer: ServerOptimizer,
        state: OptimizerState | None,
        rng: np.random.Generator | None,
    ) -> None:
        """Check that the options combine; DP needs an rng, equal weights and the mean."""
        if weighting not in _WEIGHTINGS:
            raise InvalidConfigError("weighting", weighting, f"must be one of {_WEIGHTINGS}")
        if dp is not None:
            if rng is None:
                raise InvalidConfigError("rng", rng, "dp needs a numpy Generator")
            if robust.rule != "mean":
                raise InvalidConfigError("robust.rule", robust.rule, "dp needs rule 'mean'")
            if weighting != "equal":
                raise InvalidConfigError("weighting", weighting, "dp needs weighting 'equal'")
        clips = [c for c in (robust.clip_norm, dp.clip_norm if dp else None) if c is not None]
        self._clip_norm: float | None = min(clips) if clips else None
        self._weighting: Weighting = weighting
        self._robust = robust
        self._dp = dp
        self._rng = rng
        self._optimizer = optimizer
        self._state = state
        self._buffer = UpdateBuffer(keep_all=robust.rule != "mean", capacity=capacity)
        self._capacity = capacity
        self._version: int | None = None
        self._samples = 0
        self._tau_sum = 0
        self._tau_max = 0
        self._clipped = 0

    @property
    def pending(self) -> int:
        """Number of updates folded since the last step or reset."""
        return self._buffer.count

    @property
    def state(self) -> OptimizerState | None:
        """The server optimizer state after the last step (None before the first)."""
        return self._state

    @property
    def buffer_nbytes(self) -> int:
        """Bytes held by the fold buffer (O(model) for the mean, O(K * model) otherwise)."""
        return self._buffer.nbytes

    @abstractmethod
    def _admission(self, update: DeviceUpdate, version: int) -> RejectReason | None:
        """Strategy-specific reasons, checked before the buffer capacity."""

    @abstractmethod
    def _staleness_weight(self, tau: int) -> float:
        """The factor s(tau) (times any mixing constant) of an update ``tau`` versions old."""

    @abstractmethod
    def _round_metadata(self, now: float) -> dict[str, JsonScalar]:
        """Facts about the round being closed, merged into the step metadata."""

    @abstractmethod
    def _open_round(self, now: float) -> None:
        """Start timing a new round (no-op for strategies without deadlines)."""

    def _denominator(self) -> float:
        return float(self._samples if self._weighting == "num_samples" else self.pending)

    def admit(self, update: DeviceUpdate, version: int) -> RejectReason | None:
        """Return why ``update`` cannot be folded at model ``version``, or None."""
        reason = self._admission(update, version)
        if reason is None and self._capacity is not None and self.pending >= self._capacity:
            return RejectReason.BUFFER_FULL
        return reason

    def fold(self, update: DeviceUpdate, version: int) -> None:
        """Fold one admitted update into the buffer, in place."""
        reason = self.admit(update, version)
        if reason is not None:
            raise UpdateRejectedError(reason)
        if self._version is not None and version != self._version:
            raise VersionMismatchError(self._version, version)
        tau = version - update.base_version
        coef = self._staleness_weight(tau)
        if self._weighting == "num_samples":
            coef *= update.num_samples
        clipped = False
        if self._clip_norm is not None:
            factor = clip_factor(global_norm(update.delta), self._clip_norm)
            clipped = factor < 1.0
            coef *= factor
        self._buffer.fold(update.delta, coef)
        self._version = version
        self._samples += update.num_samples
        self._tau_sum += tau
        self._tau_max = max(self._tau_max, tau)
        self._clipped += clipped

    def step(self, model: Tensors, version: int, now: float) -> StepResult:
        """Reduce the buffer, step the optimizer, consume the buffer and open a new round."""
        if not self.ready(now) or self._version is None:
            raise NotReadyError(self.pending)
        if version != self._version:
            raise VersionMismatchError(self._version, version)
        gradient = self._pseudo_gradient()
        state = self._state if self._state is not None else self._optimizer.init(model)
        new_model, new_state = self._optimizer.step(model, gradient, state)
        count = self.pending
        metadata: dict[str, JsonScalar] = {
            "strategy": self.name,
            "consumed": count,
            "num_samples": self._samples,
            "staleness_mean": self._tau_sum / count,
            "staleness_max": self._tau_max,
            "clipped": self._clipped,
            "rule": self._robust.rule,
            "pseudo_gradient_norm": global_norm(gradient),
            "optimizer": self._optimizer.name,
            "optimizer_step": new_state.step,
            **self._round_metadata(now),
        }
        if self._dp is not None:
            metadata["noise_multiplier"] = self._dp.noise_multiplier
            metadata["noise_std"] = self._dp.noise_std
            metadata["dp_clip_norm"] = self._dp.clip_norm
        result = StepResult(
            new_model=new_model,
            new_state=new_state,
            new_version=version + 1,
            consumed_count=count,
            noise_multiplier=None if self._dp is None else self._dp.noise_multiplier,
            metadata=metadata,
        )
        logger.debug("%s step v%d -> v%d from %d updates", self.name, version, version + 1, count)
        self._state = new_state
        self.reset(now)
        return result

    def reset(self, now: float) -> None:
        """Drop everything folded and open a new round at ``now``."""
        self._buffer.clear()
        self._version = None
        self._samples = 0
        self._tau_sum = 0
        self._tau_max = 0
        self._clipped = 0
        self._open_round(now)

    def _pseudo_gradient(self) -> Model:
        denominator = self._denominator()
        if self._robust.rule == "mean":
            total = self._buffer.total()
            if self._dp is not None and self._rng is not None:
                total = add_gaussian_noise(total, self._dp.noise_std, self._rng)
            divisor = np.float32(denominator)
            return {name: as_float32(total[name] / divisor) for name in sorted(total)}
        stacks = self._buffer.stacked()
        scale = np.float32(self.pending / denominator)
        if self._robust.rule == "median":
            return {name: as_float32(median_of_stack(s) * scale) for name, s in stacks.items()}
        trim = self._robust.trim_fraction
        return {
            name: as_float32(trimmed_mean_of_stack(s, trim) * scale) for name, s in stacks.items()
        }
