"""Initial models for ``fedmq aggregator init``: zeros from shapes, a softmax spec, or a file."""

from __future__ import annotations

import math
import zipfile
from collections.abc import Sequence
from pathlib import Path

import numpy as np

from aggregator.errors import InvalidConfigError
from aggregator.state import MODEL_METADATA_PREFIX
from aggregator.tensors import Model
from serialization import ModelRelease, Scalar, SerializationError, VerifyKey

__all__ = ["model_from_file", "parse_tensor_spec", "softmax_model", "zeros_model"]


def parse_tensor_spec(spec: str) -> tuple[str, tuple[int, ...]]:
    """``"W=64x10"`` -> ("W", (64, 10)); ``"b=10"`` -> ("b", (10,))."""
    name, sep, dims = spec.partition("=")
    try:
        shape = tuple(int(d) for d in dims.lower().split("x")) if dims else ()
    except ValueError:
        shape = (-1,)
    if not sep or not name or not shape or any(d < 1 for d in shape):
        raise InvalidConfigError("tensor", spec, "expected NAME=D1xD2... with positive sizes")
    return name, shape


def zeros_model(specs: Sequence[str]) -> Model:
    """float32 zeros for every ``NAME=SHAPE`` spec."""
    model: Model = {}
    for spec in specs:
        name, shape = parse_tensor_spec(spec)
        model[name] = np.zeros(shape, dtype=np.float32)
    if not model:
        raise InvalidConfigError("tensor", specs, "give at least one tensor")
    return model


def softmax_model(features: int, classes: int) -> tuple[Model, dict[str, Scalar]]:
    """The device's softmax regression at zero: W (features, classes), b (classes,), and the
    ``model.*`` metadata devices read to rebuild the architecture."""
    if features < 1 or classes < 2:
        raise InvalidConfigError("model", (features, classes), "need features >= 1, classes >= 2")
    model: Model = {
        "W": np.zeros((features, classes), dtype=np.float32),
        "b": np.zeros(classes, dtype=np.float32),
    }
    metadata: dict[str, Scalar] = {
        f"{MODEL_METADATA_PREFIX}kind": "softmax",
        f"{MODEL_METADATA_PREFIX}n_features": features,
        f"{MODEL_METADATA_PREFIX}n_classes": classes,
        f"{MODEL_METADATA_PREFIX}hidden": 0,
    }
    return model, metadata


def model_from_file(path: Path, verify_key: VerifyKey) -> tuple[Model, dict[str, Scalar]]:
    """Tensors (as float32) from an ``.npz`` archive or a signed release payload.

    A release must verify with ``verify_key``; its ``model.*`` metadata is kept.
    """
    data = path.read_bytes()
    if zipfile.is_zipfile(path):
        with np.load(path, allow_pickle=False) as archive:
            model = {name: np.array(archive[name], dtype=np.float32) for name in archive.files}
        metadata: dict[str, Scalar] = {}
    else:
        try:
            release = ModelRelease.decode(data, verify_key)
        except SerializationError as exc:
            raise InvalidConfigError(
                "from", str(path), f"neither .npz nor a release: {exc}"
            ) from exc
        model = release.float32_tensors()
        metadata = {
            k: v for k, v in release.metadata.items() if k.startswith(MODEL_METADATA_PREFIX)
        }
    if not model or any(not np.all(np.isfinite(a)) for a in model.values()):
        raise InvalidConfigError("from", str(path), "needs at least one tensor, all finite")
    if sum(math.prod(a.shape) for a in model.values()) == 0:
        raise InvalidConfigError("from", str(path), "tensors are empty")
    return model, metadata
