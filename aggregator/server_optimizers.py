"""Server optimizers as pure steps on named tensors: SGD, FedAvgM, FedAdam, FedYogi (Reddi et al.).

Pseudo-gradients follow the project's new-minus-old convention, so every step *adds*:
SGD x += lr*D; FedAvgM m = beta*m + D, x += lr*m; FedAdam/FedYogi m = b1*m + (1-b1)*D,
v = b2*v + (1-b2)*D^2 (Adam) or v -= (1-b2)*D^2*sign(v - D^2) (Yogi), x += lr*m/(sqrt(v)+eps).
No bias correction, as in the paper. Slots start at zero.
"""

from __future__ import annotations

import math
from abc import ABC, abstractmethod
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import ClassVar, Final, Protocol

import numpy as np
from numpy.typing import NDArray

from aggregator.errors import InvalidConfigError, StateError
from aggregator.tensors import Model, Tensors, as_float32
from aggregator.validation import require_same_layout

__all__ = [
    "FedAdam",
    "FedAvgM",
    "FedYogi",
    "OptimizerState",
    "ServerOptimizer",
    "Sgd",
    "server_optimizer_from_name",
]

_Array = NDArray[np.float32]
_FLOAT32 = np.dtype(np.float32)


@dataclass(frozen=True, kw_only=True, slots=True, eq=False)
class OptimizerState:
    """Server optimizer state: a step counter and named float32 slots "<slot>/<tensor>"."""

    step: int = 0
    arrays: Mapping[str, _Array] = field(default_factory=dict)

    def to_parts(self) -> tuple[dict[str, _Array], dict[str, int]]:
        """Split into arrays (copied, for a codec) and JSON-able scalars; from_parts inverts."""
        return {key: self.arrays[key].copy() for key in sorted(self.arrays)}, {"step": self.step}

    @classmethod
    def from_parts(
        cls, arrays: Mapping[str, NDArray[np.generic]], scalars: Mapping[str, object]
    ) -> OptimizerState:
        """Rebuild a state from to_parts() output; raise StateError on anything else."""
        if set(scalars) != {"step"}:
            raise StateError("scalars", f"expected exactly {{'step'}}, got {sorted(scalars)}")
        step = scalars["step"]
        if isinstance(step, bool) or not isinstance(step, int) or step < 0:
            raise StateError("step", f"must be an int >= 0, got {step!r}")
        loaded: dict[str, _Array] = {}
        for key in sorted(arrays):
            array = arrays[key]
            if "/" not in key:
                raise StateError(key, "array keys are '<slot>/<tensor>'")
            if array.dtype != _FLOAT32:
                raise StateError(key, f"must be float32, got {array.dtype}")
            loaded[key] = np.array(array, dtype=np.float32, copy=True)
        return cls(step=step, arrays=loaded)


class ServerOptimizer(Protocol):
    """A pure server step: (model, pseudo-gradient, state) -> (new model, new state)."""

    @property
    def name(self) -> str:
        """Short name, as accepted by server_optimizer_from_name."""
        ...

    def init(self, model: Tensors) -> OptimizerState:
        """Return the state before the first step (zero slots shaped like ``model``)."""
        ...

    def step(
        self, model: Tensors, pseudo_gradient: Tensors, state: OptimizerState
    ) -> tuple[Model, OptimizerState]:
        """Return the new model and state; inputs are never modified."""
        ...


def _require(field_name: str, value: float, ok: bool, reason: str) -> None:
    if not (math.isfinite(value) and ok):
        raise InvalidConfigError(field_name, value, reason)


class _SlotOptimizer(ABC):
    """Shared plumbing: layout checks and per-tensor slot bookkeeping."""

    __slots__ = ()
    name: ClassVar[str]
    slot_names: ClassVar[tuple[str, ...]]

    def init(self, model: Tensors) -> OptimizerState:
        """Return step 0 with every slot zero."""
        arrays = {
            f"{slot}/{name}": np.zeros_like(model[name], dtype=np.float32)
            for slot in self.slot_names
            for name in sorted(model)
        }
        return OptimizerState(step=0, arrays=arrays)

    def step(
        self, model: Tensors, pseudo_gradient: Tensors, state: OptimizerState
    ) -> tuple[Model, OptimizerState]:
        """Apply one server step to every tensor; raise on layout or state mismatch."""
        require_same_layout(model, pseudo_gradient)
        expected = {f"{slot}/{name}" for slot in self.slot_names for name in model}
        if set(state.arrays) != expected:
            missing = sorted(expected - set(state.arrays))
            extra = sorted(set(state.arrays) - expected)
            raise StateError(self.name, f"slots missing {missing}, unexpected {extra}")
        new_model: Model = {}
        new_slots: dict[str, _Array] = {}
        for name in model:
            keys = [f"{slot}/{name}" for slot in self.slot_names]
            slots = tuple(state.arrays[key] for key in keys)
            for key, slot_array in zip(keys, slots, strict=True):
                if slot_array.shape != model[name].shape or slot_array.dtype != _FLOAT32:
                    raise StateError(key, f"must be float32 of shape {model[name].shape}")
            new_model[name], updated = self._update(model[name], pseudo_gradient[name], slots)
            new_slots.update(zip(keys, updated, strict=True))
        return new_model, OptimizerState(step=state.step + 1, arrays=new_slots)

    @abstractmethod
    def _update(
        self, x: _Array, d: _Array, slots: tuple[_Array, ...]
    ) -> tuple[_Array, tuple[_Array, ...]]:
        """Return the new tensor and its new slots; must not modify the inputs."""


@dataclass(frozen=True, kw_only=True, slots=True)
class Sgd(_SlotOptimizer):
    """x += lr * D; with lr = 1 and a sample-weighted mean D this is FedAvg."""

    name: ClassVar[str] = "sgd"
    slot_names: ClassVar[tuple[str, ...]] = ()
    lr: float = 1.0

    def __post_init__(self) -> None:
        """Reject a non-positive learning rate."""
        _require("lr", self.lr, self.lr > 0.0, "must be > 0")

    def _update(
        self, x: _Array, d: _Array, slots: tuple[_Array, ...]
    ) -> tuple[_Array, tuple[_Array, ...]]:
        return as_float32(x + np.float32(self.lr) * d), ()


@dataclass(frozen=True, kw_only=True, slots=True)
class FedAvgM(_SlotOptimizer):
    """Server momentum: m = momentum * m + D; x += lr * m."""

    name: ClassVar[str] = "fedavgm"
    slot_names: ClassVar[tuple[str, ...]] = ("m",)
    lr: float = 1.0
    momentum: float = 0.9

    def __post_init__(self) -> None:
        """Reject lr <= 0 and momentum outside [0, 1)."""
        _require("lr", self.lr, self.lr > 0.0, "must be > 0")
        _require("momentum", self.momentum, 0.0 <= self.momentum < 1.0, "must be in [0, 1)")

    def _update(
        self, x: _Array, d: _Array, slots: tuple[_Array, ...]
    ) -> tuple[_Array, tuple[_Array, ...]]:
        m = as_float32(np.float32(self.momentum) * slots[0] + d)
        return as_float32(x + np.float32(self.lr) * m), (m,)


@dataclass(frozen=True, kw_only=True, slots=True)
class _Adaptive(_SlotOptimizer):
    """FedAdam and FedYogi: first moment m, second moment v, x += lr*m/(sqrt(v)+eps)."""

    slot_names: ClassVar[tuple[str, ...]] = ("m", "v")
    lr: float = 0.1
    beta1: float = 0.9
    beta2: float = 0.99
    eps: float = 1e-3
    """Reddi et al.'s adaptivity constant tau (renamed: tau is staleness here)."""

    def __post_init__(self) -> None:
        """Reject lr <= 0, betas outside [0, 1) and eps <= 0."""
        _require("lr", self.lr, self.lr > 0.0, "must be > 0")
        _require("beta1", self.beta1, 0.0 <= self.beta1 < 1.0, "must be in [0, 1)")
        _require("beta2", self.beta2, 0.0 <= self.beta2 < 1.0, "must be in [0, 1)")
        _require("eps", self.eps, self.eps > 0.0, "must be > 0")

    def _update(
        self, x: _Array, d: _Array, slots: tuple[_Array, ...]
    ) -> tuple[_Array, tuple[_Array, ...]]:
        m_old, v_old = slots
        m = as_float32(np.float32(self.beta1) * m_old + np.float32(1.0 - self.beta1) * d)
        v = self._second_moment(v_old, as_float32(np.square(d)))
        step = np.float32(self.lr) * m / (np.sqrt(v) + np.float32(self.eps))
        return as_float32(x + step), (m, v)

    @abstractmethod
    def _second_moment(self, v: _Array, d2: _Array) -> _Array:
        """Return the new v from the old v and D^2."""


@dataclass(frozen=True, kw_only=True, slots=True)
class FedAdam(_Adaptive):
    """FedAdam: v = beta2 * v + (1 - beta2) * D^2."""

    name: ClassVar[str] = "fedadam"

    def _second_moment(self, v: _Array, d2: _Array) -> _Array:
        return as_float32(np.float32(self.beta2) * v + np.float32(1.0 - self.beta2) * d2)


@dataclass(frozen=True, kw_only=True, slots=True)
class FedYogi(_Adaptive):
    """FedYogi: v = v - (1 - beta2) * D^2 * sign(v - D^2); defaults lr = 0.01 as in Flower."""

    name: ClassVar[str] = "fedyogi"
    lr: float = 0.01

    def _second_moment(self, v: _Array, d2: _Array) -> _Array:
        return as_float32(v - np.float32(1.0 - self.beta2) * d2 * np.sign(v - d2))


_BY_NAME: Final[dict[str, type[_SlotOptimizer]]] = {
    cls.name: cls for cls in (Sgd, FedAvgM, FedAdam, FedYogi)
}


def server_optimizer_from_name(name: str, **params: float) -> ServerOptimizer:
    """Build an optimizer from its name and hyperparameters, e.g. ("fedadam", lr=0.05)."""
    cls = _BY_NAME.get(name)
    if cls is None:
        raise InvalidConfigError("server_optimizer", name, f"must be one of {sorted(_BY_NAME)}")
    try:
        return cls(**params)
    except TypeError as exc:
        raise InvalidConfigError("server_optimizer", params, f"bad parameters for {name}") from exc
