"""Numpy models as named float tensors: softmax regression and a one-hidden-layer MLP."""

from __future__ import annotations

import math
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any, Literal, TypeVar

import numpy as np
from numpy.typing import ArrayLike, NDArray

from device.errors import InvalidModelError, InvalidSamplesError

__all__ = [
    "METADATA_PREFIX",
    "MODEL_KINDS",
    "ModelKind",
    "ModelSpec",
    "Params",
    "accuracy",
    "batch_loss_and_grad",
    "check_features",
    "check_samples",
    "cross_entropy",
    "loss_and_grad",
    "predict",
    "predict_proba",
    "spec_from_params",
]

ModelKind = Literal["softmax", "mlp"]
MODEL_KINDS: tuple[ModelKind, ...] = ("softmax", "mlp")
Params = dict[str, NDArray[np.float32]]
"""A model as it travels on the wire: tensor name -> float32 array."""

METADATA_PREFIX = "model."
"""Prefix of the keys that ``ModelSpec.to_metadata`` writes into a release's metadata map."""

_FloatT = TypeVar("_FloatT", np.float32, np.float64)
_TENSOR_NAMES: dict[ModelKind, tuple[str, ...]] = {
    "softmax": ("W", "b"),
    "mlp": ("W1", "b1", "W2", "b2"),
}
_FLOAT_DTYPES = (np.dtype(np.float32), np.dtype(np.float64))


def _count(field: str, value: object, minimum: int) -> int:
    """Return ``value`` if it is an int >= ``minimum``, else raise InvalidModelError."""
    if isinstance(value, bool) or not isinstance(value, int) or value < minimum:
        raise InvalidModelError(f"{field} must be an int >= {minimum}, got {value!r}")
    return value


@dataclass(frozen=True, kw_only=True, slots=True)
class ModelSpec:
    """The architecture of a model: everything needed to build, check or rebuild its tensors."""

    kind: ModelKind
    n_features: int
    n_classes: int
    hidden: int = 0
    """Width of the hidden layer; 0 for softmax, >= 1 for mlp."""

    def __post_init__(self) -> None:
        """Reject impossible architectures with InvalidModelError."""
        if self.kind not in MODEL_KINDS:
            raise InvalidModelError(f"kind must be one of {MODEL_KINDS}, got {self.kind!r}")
        _count("n_features", self.n_features, 1)
        _count("n_classes", self.n_classes, 2)
        if self.kind == "softmax":
            _count("hidden", self.hidden, 0)
            if self.hidden != 0:
                raise InvalidModelError(
                    f"a softmax model has no hidden layer, got hidden={self.hidden}"
                )
        else:
            _count("hidden", self.hidden, 1)

    @property
    def tensor_names(self) -> tuple[str, ...]:
        """The names of the model's tensors, in a fixed order."""
        return _TENSOR_NAMES[self.kind]

    def shapes(self) -> dict[str, tuple[int, ...]]:
        """The expected shape of every tensor."""
        f, c, h = self.n_features, self.n_classes, self.hidden
        if self.kind == "softmax":
            return {"W": (f, c), "b": (c,)}
        return {"W1": (f, h), "b1": (h,), "W2": (h, c), "b2": (c,)}

    def init(self, rng: np.random.Generator | None = None) -> Params:
        """Fresh float32 parameters: zeros for softmax, He/Glorot for mlp (seed 0 if no rng)."""
        f, c, h = self.n_features, self.n_classes, self.hidden
        if self.kind == "softmax":
            return {"W": np.zeros((f, c), np.float32), "b": np.zeros(c, np.float32)}
        gen = rng if rng is not None else np.random.default_rng(0)
        w1 = gen.standard_normal((f, h), dtype=np.float32) * np.float32(math.sqrt(2.0 / f))
        limit = math.sqrt(6.0 / (h + c))
        w2 = gen.uniform(-limit, limit, size=(h, c)).astype(np.float32)
        return {
            "W1": w1,
            "b1": np.zeros(h, np.float32),
            "W2": w2,
            "b2": np.zeros(c, np.float32),
        }

    def to_metadata(self) -> dict[str, str | int]:
        """The spec as entries of a release's metadata map (keys under ``METADATA_PREFIX``)."""
        return {
            f"{METADATA_PREFIX}kind": self.kind,
            f"{METADATA_PREFIX}n_features": self.n_features,
            f"{METADATA_PREFIX}n_classes": self.n_classes,
            f"{METADATA_PREFIX}hidden": self.hidden,
        }

    @classmethod
    def from_metadata(cls, metadata: Mapping[str, object]) -> ModelSpec:
        """Read the spec back from a metadata map; other keys are ignored.

        Integers may be ints or decimal strings; a missing ``hidden`` means 0.
        Raises InvalidModelError when an entry is missing or malformed.
        """
        kind = metadata.get(f"{METADATA_PREFIX}kind")
        if kind not in MODEL_KINDS:
            raise InvalidModelError(f"metadata {METADATA_PREFIX}kind must be one of {MODEL_KINDS}")
        return cls(
            kind="softmax" if kind == "softmax" else "mlp",
            n_features=_metadata_int(metadata, "n_features", None),
            n_classes=_metadata_int(metadata, "n_classes", None),
            hidden=_metadata_int(metadata, "hidden", 0),
        )


def _metadata_int(metadata: Mapping[str, object], field: str, default: int | None) -> int:
    """One integer entry of a metadata map."""
    key = f"{METADATA_PREFIX}{field}"
    value = metadata.get(key, default)
    if isinstance(value, str) and value.isascii() and value.isdecimal():
        return int(value)
    if isinstance(value, bool) or not isinstance(value, int):
        raise InvalidModelError(f"metadata {key} must be an int, got {value!r}")
    return value


def spec_from_params(params: Mapping[str, NDArray[Any]]) -> ModelSpec:
    """Infer the spec from the tensors' names and shapes; InvalidModelError if they are no model.

    All tensors must be numpy arrays of one dtype, float32 or float64.
    """
    names = set(params)
    kind = next((k for k, expected in _TENSOR_NAMES.items() if names == set(expected)), None)
    if kind is None:
        raise InvalidModelError(
            f"tensor names {sorted(names)} match no model kind "
            f"(softmax: {list(_TENSOR_NAMES['softmax'])}, mlp: {list(_TENSOR_NAMES['mlp'])})"
        )
    dtypes = set()
    for name, value in params.items():
        if not isinstance(value, np.ndarray):
            raise InvalidModelError(f"tensor {name!r} is a {type(value).__name__}, not an ndarray")
        if value.dtype not in _FLOAT_DTYPES:
            raise InvalidModelError(f"tensor {name!r} has dtype {value.dtype}, not float32/float64")
        dtypes.add(value.dtype)
    if len(dtypes) > 1:
        raise InvalidModelError(f"tensors mix dtypes {sorted(str(d) for d in dtypes)}")
    first, last = ("W", "W") if kind == "softmax" else ("W1", "W2")
    for name in (first, last):
        if params[name].ndim != 2:
            raise InvalidModelError(f"tensor {name!r} must be 2-D, has shape {params[name].shape}")
    spec = ModelSpec(
        kind=kind,
        n_features=params[first].shape[0],
        n_classes=params[last].shape[1],
        hidden=0 if kind == "softmax" else params[first].shape[1],
    )
    for name, shape in spec.shapes().items():
        if params[name].shape != shape:
            raise InvalidModelError(
                f"tensor {name!r} has shape {params[name].shape}, expected {shape}"
            )
    return spec


def check_samples(
    spec: ModelSpec, x: ArrayLike, y: ArrayLike, dtype: np.dtype[_FloatT]
) -> tuple[NDArray[_FloatT], NDArray[np.intp]]:
    """Return ``x`` as finite (n, n_features) ``dtype`` and ``y`` as (n,) labels in range.

    Raises InvalidSamplesError otherwise. No copy when the inputs already have those types.
    """
    xs = check_features(spec, x, dtype)
    ys = np.asarray(y)
    if not np.issubdtype(ys.dtype, np.integer):
        raise InvalidSamplesError(f"labels must be integers, got dtype {ys.dtype}")
    if ys.shape != (xs.shape[0],):
        raise InvalidSamplesError(f"labels have shape {ys.shape}, expected ({xs.shape[0]},)")
    if ys.size and (ys.min() < 0 or ys.max() >= spec.n_classes):
        raise InvalidSamplesError(f"labels must lie in [0, {spec.n_classes})")
    return xs, ys.astype(np.intp, copy=False)


def check_features(spec: ModelSpec, x: ArrayLike, dtype: np.dtype[_FloatT]) -> NDArray[_FloatT]:
    """Return ``x`` as a finite (n, n_features) ``dtype`` array, else InvalidSamplesError."""
    try:
        xs = np.asarray(x, dtype=dtype)
    except (TypeError, ValueError) as exc:
        raise InvalidSamplesError(f"features are not numeric: {exc}") from exc
    if xs.ndim != 2 or xs.shape[1] != spec.n_features:
        raise InvalidSamplesError(
            f"features have shape {xs.shape}, expected (n, {spec.n_features})"
        )
    if not np.isfinite(xs).all():
        raise InvalidSamplesError("features contain NaN or infinity")
    return xs


def _forward(
    spec: ModelSpec, params: Mapping[str, NDArray[Any]], x: NDArray[Any]
) -> tuple[NDArray[Any], NDArray[Any] | None]:
    """Logits and, for the MLP, the ReLU activations of the hidden layer."""
    if spec.kind == "softmax":
        return x @ params["W"] + params["b"], None
    hidden = np.maximum(x @ params["W1"] + params["b1"], 0)
    return hidden @ params["W2"] + params["b2"], hidden


def _softmax(logits: NDArray[Any]) -> NDArray[Any]:
    """Row-wise softmax, shifted by the row max so that exp never overflows."""
    e: NDArray[Any] = np.exp(logits - logits.max(axis=1, keepdims=True))
    e /= e.sum(axis=1, keepdims=True)
    return e


def _mean_cross_entropy(logits: NDArray[Any], y: NDArray[np.intp]) -> float:
    """Mean over rows of -log softmax(logits)[y], via a max-shifted log-sum-exp."""
    z = logits - logits.max(axis=1, keepdims=True)
    log_norm = np.log(np.exp(z).sum(axis=1))
    return float(np.mean(log_norm - z[np.arange(y.shape[0]), y]))


def batch_loss_and_grad(
    spec: ModelSpec,
    params: Mapping[str, NDArray[_FloatT]],
    x: NDArray[_FloatT],
    y: NDArray[np.intp],
) -> tuple[float, dict[str, NDArray[_FloatT]]]:
    """The unchecked kernel of ``loss_and_grad`` for a hot loop.

    The caller guarantees that ``spec == spec_from_params(params)`` and that ``x`` and ``y``
    come from ``check_samples`` with the params' dtype and at least one row.
    """
    n = y.shape[0]
    logits, hidden = _forward(spec, params, x)
    loss = _mean_cross_entropy(logits, y)
    d = _softmax(logits)
    d[np.arange(n), y] -= 1
    d /= n
    if hidden is None:
        grads: dict[str, NDArray[Any]] = {"W": x.T @ d, "b": d.sum(axis=0)}
    else:
        d_hidden = d @ params["W2"].T
        d_hidden *= hidden > 0
        grads = {
            "W1": x.T @ d_hidden,
            "b1": d_hidden.sum(axis=0),
            "W2": hidden.T @ d,
            "b2": d.sum(axis=0),
        }
    dtype = x.dtype
    return loss, {name: g.astype(dtype, copy=False) for name, g in grads.items()}


def loss_and_grad(
    params: Mapping[str, NDArray[_FloatT]], x: ArrayLike, y: ArrayLike
) -> tuple[float, dict[str, NDArray[_FloatT]]]:
    """Mean cross-entropy over the rows of ``x`` and its exact gradient, in the params' dtype."""
    spec = spec_from_params(params)
    xs, ys = check_samples(spec, x, y, _dtype(params))
    if ys.shape[0] == 0:
        raise InvalidSamplesError("the loss of an empty batch is undefined")
    return batch_loss_and_grad(spec, params, xs, ys)


def cross_entropy(params: Mapping[str, NDArray[_FloatT]], x: ArrayLike, y: ArrayLike) -> float:
    """Mean cross-entropy of the model over the rows of ``x`` (no gradient)."""
    spec = spec_from_params(params)
    xs, ys = check_samples(spec, x, y, _dtype(params))
    if ys.shape[0] == 0:
        raise InvalidSamplesError("the loss of an empty batch is undefined")
    return _mean_cross_entropy(_forward(spec, params, xs)[0], ys)


def predict_proba(params: Mapping[str, NDArray[_FloatT]], x: ArrayLike) -> NDArray[_FloatT]:
    """Class probabilities, shape (n, n_classes), in the params' dtype."""
    spec = spec_from_params(params)
    dtype = _dtype(params)
    probabilities = _softmax(_forward(spec, params, check_features(spec, x, dtype))[0])
    return probabilities.astype(dtype, copy=False)


def predict(params: Mapping[str, NDArray[_FloatT]], x: ArrayLike) -> NDArray[np.intp]:
    """The most probable class of every row of ``x`` (the arg-max of the logits)."""
    spec = spec_from_params(params)
    logits = _forward(spec, params, check_features(spec, x, _dtype(params)))[0]
    labels: NDArray[np.intp] = np.argmax(logits, axis=1).astype(np.intp, copy=False)
    return labels


def accuracy(params: Mapping[str, NDArray[_FloatT]], x: ArrayLike, y: ArrayLike) -> float:
    """Fraction of the rows of ``x`` whose predicted class is ``y``."""
    return float(np.mean(predict(params, x) == np.asarray(y)))


def _dtype(params: Mapping[str, NDArray[_FloatT]]) -> np.dtype[_FloatT]:
    """The common dtype of validated params."""
    return next(iter(params.values())).dtype
