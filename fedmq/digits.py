"""The benchmark data: scikit-learn's digits, split and Dirichlet-partitioned as specified."""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
from numpy.typing import NDArray

__all__ = ["DigitsSplit", "dirichlet_partition", "load_digits_split"]


@dataclass(frozen=True, kw_only=True, slots=True, eq=False)
class DigitsSplit:
    """Train/test arrays: X float32 in [0, 1] (64 features), y int64 in 0..9."""

    x_train: NDArray[np.float32]
    y_train: NDArray[np.int64]
    x_test: NDArray[np.float32]
    y_test: NDArray[np.int64]


def load_digits_split() -> DigitsSplit:
    """``load_digits()``, X = data / 16 (float32), 80/20 split stratified, random_state 0."""
    from sklearn.datasets import load_digits
    from sklearn.model_selection import train_test_split

    digits = load_digits()
    x = (digits.data / 16).astype(np.float32)
    y = digits.target.astype(np.int64)
    x_train, x_test, y_train, y_test = train_test_split(
        x, y, test_size=0.2, stratify=y, random_state=0
    )
    return DigitsSplit(x_train=x_train, y_train=y_train, x_test=x_test, y_test=y_test)


def dirichlet_partition(
    y: NDArray[np.int64], num_devices: int, *, alpha: float = 0.5, seed: int = 0
) -> list[NDArray[np.intp]]:
    """Training indices of each device: per class c in order, shuffle its indices, draw
    p ~ Dirichlet(alpha * 1_N) and split at ``(cumsum(p) * len(idx)).astype(int)[:-1]``."""
    rng = np.random.default_rng(seed)
    shares: list[list[NDArray[np.intp]]] = [[] for _ in range(num_devices)]
    for c in range(int(y.max()) + 1):
        idx = np.flatnonzero(y == c)
        rng.shuffle(idx)
        p = rng.dirichlet([alpha] * num_devices)
        cuts = (np.cumsum(p) * len(idx)).astype(int)[:-1]
        for device, part in enumerate(np.split(idx, cuts)):
            shares[device].append(part)
    return [np.concatenate(parts) for parts in shares]
