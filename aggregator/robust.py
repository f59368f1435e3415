"""Robust aggregation: norm clipping, coordinate-wise median and trimmed mean.

Clipping streams into a running sum (memory O(model)); median and trimmed mean need all K
updates at once (memory O(K * model)).
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Literal, TypeAlias

import numpy as np
from numpy.typing import NDArray

from aggregator.errors import InvalidConfigError
from aggregator.tensors import Model, Tensors, as_float32, global_norm
from aggregator.validation import require_same_layout

__all__ = [
    "AggregationRule",
    "RobustConfig",
    "clip_by_global_norm",
    "clip_factor",
    "coordinate_median",
    "median_of_stack",
    "trim_count",
    "trimmed_mean",
    "trimmed_mean_of_stack",
]

AggregationRule: TypeAlias = Literal["mean", "median", "trimmed_mean"]
_RULES: tuple[AggregationRule, ...] = ("mean", "median", "trimmed_mean")


@dataclass(frozen=True, kw_only=True, slots=True)
class RobustConfig:
    """How folded updates are combined, and the per-update norm clip applied before folding.

    ``rule="mean"`` keeps one running sum (memory O(model)); ``"median"`` and
    ``"trimmed_mean"`` keep every folded update until the step (memory O(K * model)).
    """

    rule: AggregationRule = "mean"
    trim_fraction: float = 0.1
    """Fraction of updates dropped at *each* end per coordinate by trimmed_mean, in [0, 0.5)."""
    clip_norm: float | None = None
    """Clip each delta to this global L2 norm before folding; None disables clipping."""

    def __post_init__(self) -> None:
        """Reject an unknown rule, a trim fraction outside [0, 0.5) or a clip norm <= 0."""
        if self.rule not in _RULES:
            raise InvalidConfigError("rule", self.rule, f"must be one of {_RULES}")
        if not 0.0 <= self.trim_fraction < 0.5:
            raise InvalidConfigError("trim_fraction", self.trim_fraction, "must be in [0, 0.5)")
        if self.clip_norm is not None and not (
            math.isfinite(self.clip_norm) and self.clip_norm > 0.0
        ):
            raise InvalidConfigError("clip_norm", self.clip_norm, "must be a finite number > 0")


def clip_factor(norm: float, max_norm: float) -> float:
    """Return min(1, max_norm / norm): the factor that brings a delta of ``norm`` within bound."""
    if norm <= max_norm:
        return 1.0
    return max_norm / norm


def clip_by_global_norm(tensors: Tensors, max_norm: float) -> tuple[Model, float]:
    """Return a copy of ``tensors`` scaled to global L2 norm <= ``max_norm``, and the factor."""
    factor = clip_factor(global_norm(tensors), max_norm)
    scale = np.float32(factor)
    return {name: as_float32(array * scale) for name, array in tensors.items()}, factor


def trim_count(n: int, trim_fraction: float) -> int:
    """Number of values dropped at each end when trimming ``n`` values: floor(fraction * n)."""
    return math.floor(trim_fraction * n)


def median_of_stack(stack: NDArray[np.float32]) -> NDArray[np.float32]:
    """Coordinate-wise median over axis 0 of a (K, ...) stack (mean of the middle two if K even)."""
    return as_float32(np.median(stack, axis=0))


def trimmed_mean_of_stack(stack: NDArray[np.float32], trim_fraction: float) -> NDArray[np.float32]:
    """Coordinate-wise mean over axis 0 after dropping the trim_count lowest and highest."""
    n = stack.shape[0]
    k = trim_count(n, trim_fraction)
    kept = np.sort(stack, axis=0)[k : n - k]
    return as_float32(np.mean(kept, axis=0, dtype=np.float32))


def _stack(updates: Sequence[Tensors], name: str) -> NDArray[np.float32]:
    return np.stack([update[name] for update in updates]).astype(np.float32, copy=False)


def _require_updates(updates: Sequence[Tensors]) -> None:
    if not updates:
        raise InvalidConfigError("updates", 0, "need at least one update")
    for update in updates[1:]:
        require_same_layout(updates[0], update)


def coordinate_median(updates: Sequence[Tensors]) -> Model:
    """Coordinate-wise median of K named-tensor updates (memory O(K * model))."""
    _require_updates(updates)
    return {name: median_of_stack(_stack(updates, name)) for name in updates[0]}


def trimmed_mean(updates: Sequence[Tensors], trim_fraction: float) -> Model:
    """Coordinate-wise trimmed mean of K updates (memory O(K * model))."""
    _require_updates(updates)
    if not 0.0 <= trim_fraction < 0.5:
        raise InvalidConfigError("trim_fraction", trim_fraction, "must be in [0, 0.5)")
    return {
        name: trimmed_mean_of_stack(_stack(updates, name), trim_fraction) for name in updates[0]
    }
