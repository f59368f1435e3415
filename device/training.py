"""Local training on a device: minibatch SGD (optionally FedProx) from a base model to a delta."""

from __future__ import annotations

import logging
import math
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

import numpy as np
from numpy.typing import ArrayLike, NDArray

from device.errors import InvalidSamplesError, TrainingConfigError, TrainingDivergedError
from device.models import (
    Params,
    batch_loss_and_grad,
    check_samples,
    cross_entropy,
    spec_from_params,
)

__all__ = ["TrainResult", "TrainingConfig", "train_local"]

logger = logging.getLogger(__name__)

_FLOAT32 = np.dtype(np.float32)


@dataclass(frozen=True, kw_only=True, slots=True)
class TrainingConfig:
    """Settings of one round of local training; invalid values raise TrainingConfigError."""

    epochs: int = 1
    batch_size: int = 32
    lr: float = 0.05
    prox_mu: float = 0.0
    """FedProx coefficient; 0 is plain local SGD (FedAvg)."""

    def __post_init__(self) -> None:
        """Check every setting's range."""
        for field in ("epochs", "batch_size"):
            value = getattr(self, field)
            if isinstance(value, bool) or not isinstance(value, int) or value < 1:
                raise TrainingConfigError(field, value, "an int >= 1")
        if not _is_real(self.lr) or not self.lr > 0:
            raise TrainingConfigError("lr", self.lr, "a finite number > 0")
        if not _is_real(self.prox_mu) or not self.prox_mu >= 0:
            raise TrainingConfigError("prox_mu", self.prox_mu, "a finite number >= 0")


def _is_real(value: object) -> bool:
    """True for a finite int or float that is not a bool."""
    return isinstance(value, int | float) and not isinstance(value, bool) and math.isfinite(value)


@dataclass(frozen=True, kw_only=True, slots=True, eq=False)
class TrainResult:
    """The outcome of ``train_local``."""

    params: Params
    """The local model after training."""
    delta: Params
    """``params - base``, float32: what the device sends."""
    num_samples: int
    """Number of samples trained on (the update's weight)."""
    loss: float
    """Mean cross-entropy of ``params`` over all the samples, without the proximal term."""


def train_local(
    params: Mapping[str, NDArray[Any]],
    x: ArrayLike,
    y: ArrayLike,
    *,
    epochs: int,
    batch_size: int,
    lr: float,
    rng: np.random.Generator,
    prox_mu: float = 0.0,
) -> TrainResult:
    """Train a copy of the base ``params`` on ``(x, y)`` with minibatch SGD, in float32.

    Each epoch draws ``perm = rng.permutation(n)`` (the only use of ``rng``) and walks it in
    consecutive batches of ``batch_size`` (the last may be smaller). Each step takes the
    exact gradient ``g`` of the batch's mean cross-entropy, adds ``prox_mu * (p - base)``
    when ``prox_mu > 0``, and applies ``p -= lr * g``. The same inputs and rng state give
    bit-identical results. The base ``params`` are not modified.

    Raises InvalidModelError, InvalidSamplesError (also for zero samples), TrainingConfigError, and
    TrainingDivergedError when the result is not finite.
    """
    config = TrainingConfig(epochs=epochs, batch_size=batch_size, lr=lr, prox_mu=prox_mu)
    spec = spec_from_params(params)
    base = {name: np.asarray(params[name], dtype=np.float32) for name in spec.tensor_names}
    xs, ys = check_samples(spec, x, y, _FLOAT32)
    n = ys.shape[0]
    if n == 0:
        raise InvalidSamplesError("there are no samples to train on")
    local = {name: value.copy() for name, value in base.items()}
    with np.errstate(over="ignore", invalid="ignore", divide="ignore", under="ignore"):
        for _ in range(config.epochs):
            perm = rng.permutation(n)
            for start in range(0, n, config.batch_size):
                batch = perm[start : start + config.batch_size]
                _, grads = batch_loss_and_grad(spec, local, xs[batch], ys[batch])
                for name, grad in grads.items():
                    step = grad
                    if config.prox_mu > 0:
                        step = grad + config.prox_mu * (local[name] - base[name])
                    local[name] -= config.lr * step
        loss = cross_entropy(local, xs, ys)
    if not (math.isfinite(loss) and all(np.isfinite(v).all() for v in local.values())):
        raise TrainingDivergedError(loss)
    delta = {name: local[name] - base[name] for name in spec.tensor_names}
    logger.debug("trained %s on %d samples for %d epochs: loss %.4f", spec.kind, n, epochs, loss)
    return TrainResult(params=local, delta=delta, num_samples=n, loss=loss)
