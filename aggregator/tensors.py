"""Named tensors: the model and delta types shared by the pure modules, and their L2 norm."""

from __future__ import annotations

import math
from collections.abc import Mapping
from typing import TypeAlias

import numpy as np
from numpy.typing import NDArray

__all__ = ["Model", "Tensors", "as_float32", "global_norm"]

Model: TypeAlias = dict[str, NDArray[np.float32]]
"""A model, delta or optimizer slot as produced here: tensor name -> float32 array."""

Tensors: TypeAlias = Mapping[str, NDArray[np.float32]]
"""Named float32 tensors as accepted here (any read-only mapping)."""


def as_float32(array: NDArray[np.floating]) -> NDArray[np.float32]:
    """Return ``array`` as float32, without a copy when it already is."""
    return np.asarray(array, dtype=np.float32)


def global_norm(tensors: Tensors) -> float:
    """L2 norm over all tensors, summed in float64 in name order (deterministic, no BLAS).

    A NaN or infinity anywhere makes the result non-finite, so the norm doubles as a
    finiteness check.
    """
    total = 0.0
    for name in sorted(tensors):
        total += float(np.sum(np.square(tensors[name], dtype=np.float64)))
    return math.sqrt(total)
