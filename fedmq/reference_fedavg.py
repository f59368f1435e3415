"""Synchronous FedAvg on the digits benchmark as a plain numpy loop in one process."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np
from numpy.typing import NDArray

from device.models import ModelSpec, Params, accuracy
from device.training import train_local
from fedmq.digits import DigitsSplit

__all__ = ["LocalTraining", "RoundResult", "local_rng", "reference_fedavg"]


@dataclass(frozen=True, kw_only=True, slots=True)
class LocalTraining:
    """The benchmark's local training: 5 epochs of minibatch SGD, batch 16, lr 0.1."""

    epochs: int = 5
    batch_size: int = 16
    lr: float = 0.1


@dataclass(frozen=True, kw_only=True, slots=True, eq=False)
class RoundResult:
    """The global model after one round and its test accuracy."""

    round: int
    params: Params
    accuracy: float


def local_rng(round_index: int, device_index: int) -> np.random.Generator:
    """The shuffling generator of device k in round r (0-based): default_rng(1000 r + k)."""
    return np.random.default_rng(1000 * round_index + device_index)


def reference_fedavg(
    split: DigitsSplit,
    shares: Sequence[NDArray[np.intp]],
    *,
    rounds: int,
    training: LocalTraining = LocalTraining(),
) -> list[RoundResult]:
    """Every device trains from the global model each round; the new model adds the
    sample-weighted mean of the deltas: x + sum(n_k delta_k) / sum(n_k), in float32."""
    spec = ModelSpec(kind="softmax", n_features=split.x_train.shape[1], n_classes=10)
    params = spec.init()
    results = []
    for r in range(rounds):
        weighted = {name: np.zeros_like(p) for name, p in params.items()}
        total = 0
        for k, idx in enumerate(shares):
            result = train_local(
                params,
                split.x_train[idx],
                split.y_train[idx],
                epochs=training.epochs,
                batch_size=training.batch_size,
                lr=training.lr,
                rng=local_rng(r, k),
            )
            for name, d in result.delta.items():
                weighted[name] += np.float32(result.num_samples) * d
            total += result.num_samples
        params = {name: p + weighted[name] / np.float32(total) for name, p in params.items()}
        results.append(
            RoundResult(
                round=r, params=params, accuracy=accuracy(params, split.x_test, split.y_test)
            )
        )
    return results
