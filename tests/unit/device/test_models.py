"""Unit tests of device.models: specs, inference, exact gradients, predictions."""

from __future__ import annotations

import math
from typing import Any

import numpy as np
import pytest
from numpy.typing import NDArray

from device.errors import DeviceError, InvalidModelError, InvalidSamplesError
from device.models import (
    ModelKind,
    ModelSpec,
    Params,
    cross_entropy,
    loss_and_grad,
    predict,
    predict_proba,
    spec_from_params,
)

SOFTMAX = ModelSpec(kind="softmax", n_features=4, n_classes=3)
MLP = ModelSpec(kind="mlp", n_features=4, n_classes=3, hidden=5)


def random_params(spec: ModelSpec, seed: int) -> Params:
    """Non-trivial float32 params (random weights and biases) for ``spec``."""
    rng = np.random.default_rng(seed)
    return {
        name: rng.normal(0.0, 0.7, size=shape).astype(np.float32)
        for name, shape in spec.shapes().items()
    }


def random_batch(
    spec: ModelSpec, n: int, seed: int
) -> tuple[NDArray[np.float32], NDArray[np.int64]]:
    """A random float32 batch with labels that cover all classes."""
    rng = np.random.default_rng(seed)
    x = rng.normal(size=(n, spec.n_features)).astype(np.float32)
    y = np.arange(n, dtype=np.int64) % spec.n_classes
    return x, y


def finite_difference_grad(
    params: dict[str, NDArray[np.float64]], x: NDArray[Any], y: NDArray[Any], eps: float
) -> dict[str, NDArray[np.float64]]:
    """Central differences (L(p + eps) - L(p - eps)) / (2 eps), one coordinate at a time."""
    grads: dict[str, NDArray[np.float64]] = {}
    for name, value in params.items():
        grad = np.zeros_like(value)
        for index in np.ndindex(value.shape):
            saved = value[index]
            value[index] = saved + eps
            up = cross_entropy(params, x, y)
            value[index] = saved - eps
            down = cross_entropy(params, x, y)
            value[index] = saved
            grad[index] = (up - down) / (2 * eps)
        grads[name] = grad
    return grads


def as_float64(params: Params) -> dict[str, NDArray[np.float64]]:
    """float64 copies of float32 params."""
    return {name: value.astype(np.float64) for name, value in params.items()}


@pytest.mark.parametrize("spec", [SOFTMAX, MLP], ids=["softmax", "mlp"])
def test_loss_and_grad_float64_matches_central_differences(spec: ModelSpec) -> None:
    """In float64 the analytic gradient equals central differences to rtol 1e-6, atol 1e-8."""
    params = as_float64(random_params(spec, seed=1))
    x32, y = random_batch(spec, n=7, seed=2)
    x = x32.astype(np.float64)
    if spec.kind == "mlp":
        pre = x @ params["W1"] + params["b1"]
        assert np.abs(pre).min() > 1e-3, "a ReLU kink too close to the FD step"
    loss, grads = loss_and_grad(params, x, y)
    numeric = finite_difference_grad(params, x, y, eps=1e-6)
    assert loss == pytest.approx(cross_entropy(params, x, y), rel=1e-12)
    assert set(grads) == set(spec.tensor_names)
    for name in spec.tensor_names:
        assert grads[name].dtype == np.float64
        np.testing.assert_allclose(grads[name], numeric[name], rtol=1e-6, atol=1e-8)


@pytest.mark.parametrize("spec", [SOFTMAX, MLP], ids=["softmax", "mlp"])
def test_loss_and_grad_float32_matches_float64_differences(spec: ModelSpec) -> None:
    """The float32 gradient equals central differences on float64 copies to rtol 1e-4, atol 1e-5."""
    params = random_params(spec, seed=3)
    x, y = random_batch(spec, n=9, seed=4)
    loss, grads = loss_and_grad(params, x, y)
    params64 = as_float64(params)
    numeric = finite_difference_grad(params64, x.astype(np.float64), y, eps=1e-6)
    assert loss == pytest.approx(cross_entropy(params64, x.astype(np.float64), y), rel=1e-6)
    for name in spec.tensor_names:
        assert grads[name].dtype == np.float32
        np.testing.assert_allclose(grads[name], numeric[name], rtol=1e-4, atol=1e-5)


def hand_example() -> tuple[Params, NDArray[np.float32], NDArray[np.int64]]:
    """W = [[ln 3, 0], [0, 0]], b = [0, ln 2], x = [[1, 2], [0, 1]], y = [0, 1]."""
    params = {
        "W": np.array([[math.log(3), 0.0], [0.0, 0.0]], dtype=np.float32),
        "b": np.array([0.0, math.log(2)], dtype=np.float32),
    }
    x = np.array([[1.0, 2.0], [0.0, 1.0]], dtype=np.float32)
    return params, x, np.array([0, 1], dtype=np.int64)


def test_loss_and_grad_softmax_hand_computed() -> None:
    """Logits [ln 3, ln 2] and [0, ln 2]: p = [3/5, 2/5] and [1/3, 2/3], worked out by hand.

    loss = (ln(5/3) + ln(3/2)) / 2 = ln(5/2) / 2.
    dlogits = (p - onehot) / 2 = [-1/5, 1/5] and [1/6, -1/6].
    dW = x.T @ dlogits = [[-1/5, 1/5], [2 (-1/5) + 1/6, 2/5 - 1/6]] = [[-1/5, 1/5], [-7/30, 7/30]].
    db = [-1/5 + 1/6, 1/5 - 1/6] = [-1/30, 1/30].
    """
    params, x, y = hand_example()
    loss, grads = loss_and_grad(params, x, y)
    assert loss == pytest.approx(math.log(5 / 2) / 2, abs=1e-6)
    np.testing.assert_allclose(grads["W"], [[-1 / 5, 1 / 5], [-7 / 30, 7 / 30]], atol=1e-6)
    np.testing.assert_allclose(grads["b"], [-1 / 30, 1 / 30], atol=1e-6)
    np.testing.assert_allclose(
        predict_proba(params, x), [[3 / 5, 2 / 5], [1 / 3, 2 / 3]], atol=1e-6
    )
    np.testing.assert_array_equal(predict(params, x), [0, 1])


def test_loss_and_grad_stable_for_huge_logits() -> None:
    """Logits [1000, 0] with label 1 give loss 1000 and grad [1, -1] x, without overflow."""
    params = {
        "W": np.array([[1000.0, 0.0]], dtype=np.float32),
        "b": np.zeros(2, dtype=np.float32),
    }
    x = np.ones((1, 1), dtype=np.float32)
    loss, grads = loss_and_grad(params, x, np.array([1]))
    assert loss == pytest.approx(1000.0, rel=1e-6)
    np.testing.assert_allclose(grads["W"], [[1.0, -1.0]], atol=1e-6)
    np.testing.assert_allclose(predict_proba(params, x), [[1.0, 0.0]], atol=1e-6)


@pytest.mark.parametrize("spec", [SOFTMAX, MLP], ids=["softmax", "mlp"])
def test_predict_proba_rows_are_distributions_in_float32(spec: ModelSpec) -> None:
    """Probabilities are float32, in [0, 1], sum to 1 per row; predict is their arg-max."""
    params = random_params(spec, seed=5)
    x, _ = random_batch(spec, n=20, seed=6)
    proba = predict_proba(params, x)
    assert proba.dtype == np.float32
    assert proba.shape == (20, spec.n_classes)
    assert proba.min() >= 0.0
    np.testing.assert_allclose(proba.sum(axis=1), 1.0, rtol=1e-6)
    np.testing.assert_array_equal(predict(params, x), proba.argmax(axis=1))


def test_predict_mlp_matches_independent_forward_pass() -> None:
    """The MLP's probabilities equal a direct ReLU/softmax forward pass written here."""
    params = as_float64(random_params(MLP, seed=7))
    x = random_batch(MLP, n=6, seed=8)[0].astype(np.float64)
    hidden = np.maximum(x @ params["W1"] + params["b1"], 0.0)
    logits = hidden @ params["W2"] + params["b2"]
    expected = np.exp(logits) / np.exp(logits).sum(axis=1, keepdims=True)
    np.testing.assert_allclose(predict_proba(params, x), expected, rtol=1e-12)


@pytest.mark.parametrize(
    ("kind", "shapes", "expected"),
    [
        ("softmax", {"W": (6, 4), "b": (4,)}, ModelSpec(kind="softmax", n_features=6, n_classes=4)),
        (
            "mlp",
            {"W1": (6, 8), "b1": (8,), "W2": (8, 3), "b2": (3,)},
            ModelSpec(kind="mlp", n_features=6, n_classes=3, hidden=8),
        ),
    ],
)
def test_spec_from_params_infers_architecture(
    kind: ModelKind, shapes: dict[str, tuple[int, ...]], expected: ModelSpec
) -> None:
    """Names and shapes determine kind, n_features, n_classes and hidden."""
    params = {name: np.zeros(shape, dtype=np.float32) for name, shape in shapes.items()}
    spec = spec_from_params(params)
    assert spec == expected
    assert spec.kind == kind
    assert spec.shapes() == shapes


def _bad_params() -> dict[str, dict[str, Any]]:
    """Tensor dicts that are no valid model, by case name."""
    z = np.zeros
    f32 = np.float32
    return {
        "unknown_names": {"W": z((2, 2), f32), "bias": z(2, f32)},
        "mixed_kinds": {"W": z((2, 2), f32), "b": z(2, f32), "W1": z((2, 2), f32)},
        "empty": {},
        "b_wrong_length": {"W": z((3, 2), f32), "b": z(3, f32)},
        "W_one_dimensional": {"W": z(3, f32), "b": z(3, f32)},
        "b_two_dimensional": {"W": z((3, 2), f32), "b": z((1, 2), f32)},
        "one_class": {"W": z((3, 1), f32), "b": z(1, f32)},
        "no_features": {"W": z((0, 2), f32), "b": z(2, f32)},
        "int_dtype": {"W": z((3, 2), np.int32), "b": z(2, np.int32)},
        "float16_dtype": {"W": z((3, 2), np.float16), "b": z(2, np.float16)},
        "mixed_dtypes": {"W": z((3, 2), f32), "b": z(2, np.float64)},
        "not_an_array": {"W": [[0.0, 0.0]], "b": z(2, f32)},
        "hidden_mismatch": {
            "W1": z((3, 4), f32),
            "b1": z(4, f32),
            "W2": z((5, 2), f32),
            "b2": z(2, f32),
        },
        "b1_mismatch": {
            "W1": z((3, 4), f32),
            "b1": z(5, f32),
            "W2": z((4, 2), f32),
            "b2": z(2, f32),
        },
        "W2_three_dimensional": {
            "W1": z((3, 4), f32),
            "b1": z(4, f32),
            "W2": z((4, 2, 1), f32),
            "b2": z(2, f32),
        },
    }


@pytest.mark.parametrize("case", sorted(_bad_params()))
def test_spec_from_params_rejects_invalid_tensors(case: str) -> None:
    """Every malformed tensor dict raises InvalidModelError (a DeviceError) with a detail."""
    with pytest.raises(InvalidModelError) as info:
        spec_from_params(_bad_params()[case])
    assert isinstance(info.value, DeviceError)
    assert info.value.reason == "invalid_model"
    assert info.value.detail


def test_loss_and_grad_rejects_invalid_params() -> None:
    """The public model functions validate the tensors before computing."""
    params = {"W": np.zeros((3, 2), np.float32), "b": np.zeros(3, np.float32)}
    x = np.zeros((1, 3), np.float32)
    with pytest.raises(InvalidModelError, match="'b' has shape"):
        loss_and_grad(params, x, np.array([0]))
    with pytest.raises(InvalidModelError):
        predict(params, x)


@pytest.mark.parametrize(
    ("x", "y", "match"),
    [
        (np.zeros((2, 3), np.float32), np.array([0, 1]), "shape"),
        (np.zeros(4, np.float32), np.array([0]), "shape"),
        (np.zeros((2, 4), np.float32), np.array([0, 3]), r"\[0, 3\)"),
        (np.zeros((2, 4), np.float32), np.array([-1, 0]), r"\[0, 3\)"),
        (np.zeros((2, 4), np.float32), np.array([0.0, 1.0]), "integers"),
        (np.zeros((2, 4), np.float32), np.array([0, 1, 2]), "labels have shape"),
        (np.full((2, 4), np.nan, np.float32), np.array([0, 1]), "NaN"),
        (np.full((2, 4), np.inf, np.float32), np.array([0, 1]), "NaN"),
        ([["a", "b", "c", "d"]], np.array([0]), "numeric"),
        (np.zeros((0, 4), np.float32), np.zeros(0, np.int64), "empty"),
    ],
)
def test_loss_and_grad_rejects_invalid_samples(x: Any, y: Any, match: str) -> None:
    """Bad features or labels raise InvalidSamplesError naming the problem."""
    with pytest.raises(InvalidSamplesError, match=match):
        loss_and_grad(SOFTMAX.init(), x, y)


def test_predict_rejects_non_finite_features() -> None:
    """A NaN sensor reading is a typed error, not a silent class-0 prediction."""
    x = np.array([[0.0, np.nan, 0.0, 0.0]], dtype=np.float32)
    with pytest.raises(InvalidSamplesError, match="NaN"):
        predict(MLP.init(), x)


def test_model_spec_init_softmax_is_zeros() -> None:
    """Softmax starts at zero weights: uniform probabilities, loss ln(n_classes)."""
    params = SOFTMAX.init()
    assert {name: (v.shape, str(v.dtype)) for name, v in params.items()} == {
        "W": ((4, 3), "float32"),
        "b": ((3,), "float32"),
    }
    assert not any(v.any() for v in params.values())
    x, y = random_batch(SOFTMAX, n=5, seed=9)
    assert cross_entropy(params, x, y) == pytest.approx(math.log(3), rel=1e-6)


def test_model_spec_init_mlp_is_seeded_he_glorot() -> None:
    """W1 ~ N(0, 2/f), W2 ~ U(+-sqrt(6/(h+c))), zero biases, float32, reproducible by seed."""
    spec = ModelSpec(kind="mlp", n_features=64, n_classes=10, hidden=256)
    params = spec.init(np.random.default_rng(42))
    assert {name: v.shape for name, v in params.items()} == spec.shapes()
    assert all(v.dtype == np.float32 for v in params.values())
    assert params["W1"].std() == pytest.approx(math.sqrt(2 / 64), rel=0.05)
    assert abs(params["W1"].mean()) < 0.01
    limit = math.sqrt(6 / (256 + 10))
    assert np.abs(params["W2"]).max() <= limit
    assert params["W2"].std() == pytest.approx(limit / math.sqrt(3), rel=0.05)
    assert not params["b1"].any()
    assert not params["b2"].any()
    again = spec.init(np.random.default_rng(42))
    other = spec.init(np.random.default_rng(43))
    assert all(np.array_equal(params[k], again[k]) for k in params)
    assert not np.array_equal(params["W1"], other["W1"])
    default = spec.init()
    seeded_zero = spec.init(np.random.default_rng(0))
    assert all(np.array_equal(default[k], seeded_zero[k]) for k in default)


@pytest.mark.parametrize("spec", [SOFTMAX, MLP], ids=["softmax", "mlp"])
def test_model_spec_metadata_round_trips(spec: ModelSpec) -> None:
    """to_metadata writes prefixed int/str entries and from_metadata reads them back."""
    metadata = spec.to_metadata()
    assert metadata == {
        "model.kind": spec.kind,
        "model.n_features": 4,
        "model.n_classes": 3,
        "model.hidden": spec.hidden,
    }
    assert ModelSpec.from_metadata({**metadata, "unrelated": b"x"}) == spec


def test_model_spec_from_metadata_accepts_decimal_strings_and_missing_hidden() -> None:
    """String-only metadata maps work, and softmax may omit hidden."""
    spec = ModelSpec.from_metadata(
        {"model.kind": "mlp", "model.n_features": "7", "model.n_classes": "2", "model.hidden": "9"}
    )
    assert spec == ModelSpec(kind="mlp", n_features=7, n_classes=2, hidden=9)
    softmax = ModelSpec.from_metadata(
        {"model.kind": "softmax", "model.n_features": 7, "model.n_classes": 2}
    )
    assert softmax == ModelSpec(kind="softmax", n_features=7, n_classes=2)


@pytest.mark.parametrize(
    "metadata",
    [
        {},
        {"model.kind": "cnn", "model.n_features": 4, "model.n_classes": 3},
        {"model.kind": "softmax", "model.n_classes": 3},
        {"model.kind": "softmax", "model.n_features": True, "model.n_classes": 3},
        {"model.kind": "softmax", "model.n_features": 4.0, "model.n_classes": 3},
        {"model.kind": "softmax", "model.n_features": "-4", "model.n_classes": 3},
        {"model.kind": "softmax", "model.n_features": 4, "model.n_classes": 1},
        {"model.kind": "mlp", "model.n_features": 4, "model.n_classes": 3},
        {"model.kind": "softmax", "model.n_features": 4, "model.n_classes": 3, "model.hidden": 2},
    ],
)
def test_model_spec_from_metadata_rejects_malformed(metadata: dict[str, object]) -> None:
    """Missing, mistyped or impossible entries raise InvalidModelError."""
    with pytest.raises(InvalidModelError):
        ModelSpec.from_metadata(metadata)


@pytest.mark.parametrize(
    "kwargs",
    [
        {"kind": "softmax", "n_features": 4, "n_classes": 3, "hidden": 5},
        {"kind": "mlp", "n_features": 4, "n_classes": 3, "hidden": 0},
        {"kind": "mlp", "n_features": 0, "n_classes": 3, "hidden": 2},
        {"kind": "softmax", "n_features": 4, "n_classes": 3.0},
        {"kind": "rnn", "n_features": 4, "n_classes": 3},
    ],
)
def test_model_spec_rejects_impossible_architecture(kwargs: dict[str, Any]) -> None:
    """The spec validates itself on construction."""
    with pytest.raises(InvalidModelError):
        ModelSpec(**kwargs)
