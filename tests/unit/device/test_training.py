"""Unit tests of device.training: local SGD, FedProx, deltas, determinism, real data."""

from __future__ import annotations

import math
from typing import Any

import numpy as np
import pytest
from numpy.typing import NDArray
from sklearn.datasets import load_digits

from device.errors import (
    DeviceError,
    InvalidModelError,
    InvalidSamplesError,
    TrainingConfigError,
    TrainingDivergedError,
)
from device.models import ModelSpec, Params, cross_entropy, loss_and_grad, predict
from device.training import TrainingConfig, train_local

SOFTMAX = ModelSpec(kind="softmax", n_features=2, n_classes=3)
MLP = ModelSpec(kind="mlp", n_features=2, n_classes=3, hidden=8)


def blobs(n_per_class: int, seed: int) -> tuple[NDArray[np.float32], NDArray[np.int64]]:
    """Three well-separated 2-D Gaussian blobs (centres 4 apart, sigma 0.5)."""
    rng = np.random.default_rng(seed)
    centres = np.array([[-4.0, 0.0], [4.0, 0.0], [0.0, 4.0]])
    y = np.repeat(np.arange(3), n_per_class)
    x = centres[y] + rng.normal(0.0, 0.5, size=(y.size, 2))
    return x.astype(np.float32), y.astype(np.int64)


def digits() -> tuple[NDArray[np.float32], NDArray[np.int64]]:
    """sklearn's 8x8 digits, features scaled to [0, 1]."""
    data = load_digits()
    return (data.data / 16).astype(np.float32), data.target.astype(np.int64)


def copy_params(params: Params) -> Params:
    """Deep copy of a parameter dict."""
    return {name: value.copy() for name, value in params.items()}


def reference_sgd(
    params: Params,
    x: NDArray[np.float32],
    y: NDArray[np.int64],
    *,
    epochs: int,
    batch_size: int,
    lr: float,
    prox_mu: float,
    rng: np.random.Generator,
) -> Params:
    """The documented procedure as a plain numpy loop over the public loss_and_grad."""
    base = copy_params(params)
    local = copy_params(params)
    n = len(y)
    for _ in range(epochs):
        perm = rng.permutation(n)
        for start in range(0, n, batch_size):
            batch = perm[start : start + batch_size]
            _, grads = loss_and_grad(local, x[batch], y[batch])
            for name, grad in grads.items():
                step = grad + prox_mu * (local[name] - base[name]) if prox_mu > 0 else grad
                local[name] -= lr * step
    return local


@pytest.mark.parametrize("spec", [SOFTMAX, MLP], ids=["softmax", "mlp"])
@pytest.mark.parametrize("prox_mu", [0.0, 0.3])
def test_train_local_matches_reference_loop_bit_for_bit(spec: ModelSpec, prox_mu: float) -> None:
    """train_local equals the plain loop exactly (n = 50 is not a multiple of batch 16)."""
    x, y = blobs(n_per_class=17, seed=1)
    x, y = x[:50], y[:50]
    base = spec.init(np.random.default_rng(2))
    kwargs: dict[str, Any] = {"epochs": 3, "batch_size": 16, "lr": 0.05, "prox_mu": prox_mu}
    result = train_local(base, x, y, rng=np.random.default_rng(1000 * 4 + 7), **kwargs)
    expected = reference_sgd(base, x, y, rng=np.random.default_rng(1000 * 4 + 7), **kwargs)
    for name in spec.tensor_names:
        assert result.params[name].dtype == np.float32
        np.testing.assert_array_equal(result.params[name], expected[name])


@pytest.mark.parametrize("spec", [SOFTMAX, MLP], ids=["softmax", "mlp"])
def test_train_local_same_seed_gives_identical_arrays(spec: ModelSpec) -> None:
    """Two runs from the same seed agree bit for bit; another seed differs."""
    x, y = blobs(n_per_class=30, seed=3)
    base = spec.init(np.random.default_rng(4))
    kwargs: dict[str, Any] = {"epochs": 2, "batch_size": 8, "lr": 0.1, "prox_mu": 0.01}
    first = train_local(base, x, y, rng=np.random.default_rng(5), **kwargs)
    second = train_local(base, x, y, rng=np.random.default_rng(5), **kwargs)
    other = train_local(base, x, y, rng=np.random.default_rng(6), **kwargs)
    assert first.loss == second.loss
    for name in spec.tensor_names:
        np.testing.assert_array_equal(first.params[name], second.params[name])
        np.testing.assert_array_equal(first.delta[name], second.delta[name])
    assert not np.array_equal(
        first.params[spec.tensor_names[0]], other.params[spec.tensor_names[0]]
    )


def test_train_local_uses_rng_only_for_one_permutation_per_epoch() -> None:
    """After training, the rng is exactly where `epochs` calls of permutation(n) leave it."""
    x, y = blobs(n_per_class=10, seed=7)
    rng = np.random.default_rng(8)
    train_local(MLP.init(), x, y, epochs=3, batch_size=4, lr=0.1, rng=rng)
    replay = np.random.default_rng(8)
    for _ in range(3):
        replay.permutation(30)
    assert rng.bit_generator.state == replay.bit_generator.state


@pytest.mark.parametrize("spec", [SOFTMAX, MLP], ids=["softmax", "mlp"])
def test_train_local_delta_is_local_minus_base(spec: ModelSpec) -> None:
    """delta == params - base exactly, in float32; num_samples and loss describe the result."""
    x, y = blobs(n_per_class=20, seed=9)
    base = spec.init(np.random.default_rng(10))
    result = train_local(base, x, y, epochs=2, batch_size=10, lr=0.1, rng=np.random.default_rng(0))
    assert set(result.delta) == set(spec.tensor_names)
    for name in spec.tensor_names:
        assert result.delta[name].dtype == np.float32
        np.testing.assert_array_equal(result.delta[name], result.params[name] - base[name])
        assert result.delta[name].any()
    assert result.num_samples == 60
    assert result.loss == cross_entropy(result.params, x, y)


def test_train_local_one_full_batch_step_is_hand_computed() -> None:
    """One full-batch step with lr 0.3 on the hand example moves W by -0.3 dW, b by -0.3 db.

    From test_models: dW = [[-1/5, 1/5], [-7/30, 7/30]] and db = [-1/30, 1/30].
    """
    base = {
        "W": np.array([[math.log(3), 0.0], [0.0, 0.0]], dtype=np.float32),
        "b": np.array([0.0, math.log(2)], dtype=np.float32),
    }
    x = np.array([[1.0, 2.0], [0.0, 1.0]], dtype=np.float32)
    y = np.array([0, 1])
    result = train_local(base, x, y, epochs=1, batch_size=2, lr=0.3, rng=np.random.default_rng(0))
    np.testing.assert_allclose(result.delta["W"], [[0.06, -0.06], [0.07, -0.07]], atol=1e-6)
    np.testing.assert_allclose(result.delta["b"], [0.01, -0.01], atol=1e-6)


def test_train_local_does_not_modify_base_and_accepts_read_only_float64() -> None:
    """Base arrays stay untouched; read-only or float64 inputs give a float32 result."""
    x, y = blobs(n_per_class=10, seed=11)
    base = MLP.init(np.random.default_rng(12))
    snapshot = copy_params(base)
    for value in base.values():
        value.flags.writeable = False
    result = train_local(base, x, y, epochs=1, batch_size=5, lr=0.1, rng=np.random.default_rng(1))
    for name in MLP.tensor_names:
        np.testing.assert_array_equal(base[name], snapshot[name])
    wide = {name: value.astype(np.float64) for name, value in snapshot.items()}
    from_wide = train_local(
        wide, x.astype(np.float64), y, epochs=1, batch_size=5, lr=0.1, rng=np.random.default_rng(1)
    )
    for name in MLP.tensor_names:
        assert from_wide.params[name].dtype == np.float32
        np.testing.assert_array_equal(from_wide.params[name], result.params[name])


@pytest.mark.parametrize("spec", [SOFTMAX, MLP], ids=["softmax", "mlp"])
def test_train_local_loss_decreases_on_separable_blobs(spec: ModelSpec) -> None:
    """Three separable blobs: loss falls from its start to < 0.1 and every point is right."""
    x, y = blobs(n_per_class=40, seed=13)
    base = spec.init(np.random.default_rng(14))
    before = cross_entropy(base, x, y)
    result = train_local(base, x, y, epochs=10, batch_size=16, lr=0.2, rng=np.random.default_rng(0))
    assert result.loss < 0.1 < before
    np.testing.assert_array_equal(predict(result.params, x), y)


def test_train_local_prox_first_step_is_plain_sgd() -> None:
    """At the base the proximal term is zero, so one full-batch step ignores prox_mu."""
    x, y = blobs(n_per_class=5, seed=15)
    base = MLP.init(np.random.default_rng(16))
    kwargs: dict[str, Any] = {"epochs": 1, "batch_size": 15, "lr": 0.1}
    plain = train_local(base, x, y, rng=np.random.default_rng(1), **kwargs)
    prox = train_local(base, x, y, rng=np.random.default_rng(1), prox_mu=10.0, **kwargs)
    for name in MLP.tensor_names:
        np.testing.assert_array_equal(prox.delta[name], plain.delta[name])


def test_train_local_prox_second_step_pulls_by_lr_mu_delta() -> None:
    """Two full-batch steps: delta(mu) - delta(0) = -lr * mu * delta after step one."""
    x, y = blobs(n_per_class=5, seed=17)
    base = SOFTMAX.init()
    lr, mu = 0.1, 2.0

    def run(epochs: int, prox_mu: float) -> Params:
        return train_local(
            base,
            x,
            y,
            epochs=epochs,
            batch_size=15,
            lr=lr,
            prox_mu=prox_mu,
            rng=np.random.default_rng(3),
        ).delta

    first = run(1, 0.0)
    plain, prox = run(2, 0.0), run(2, mu)
    for name in SOFTMAX.tensor_names:
        np.testing.assert_allclose(prox[name] - plain[name], -lr * mu * first[name], atol=1e-6)


@pytest.mark.parametrize("spec", [SOFTMAX, MLP], ids=["softmax", "mlp"])
def test_train_local_prox_keeps_result_closer_to_base(spec: ModelSpec) -> None:
    """With the same rng, mu > 0 gives a smaller delta norm than mu = 0, and larger mu smaller."""
    x, y = blobs(n_per_class=30, seed=19)
    base = spec.init(np.random.default_rng(20))

    def norm(prox_mu: float) -> float:
        delta = train_local(
            base,
            x,
            y,
            epochs=5,
            batch_size=8,
            lr=0.1,
            prox_mu=prox_mu,
            rng=np.random.default_rng(4),
        ).delta
        return math.sqrt(sum(float(np.sum(d.astype(np.float64) ** 2)) for d in delta.values()))

    plain, mild, strong = norm(0.0), norm(0.1), norm(1.0)
    assert strong < mild < plain


@pytest.mark.parametrize(
    ("spec", "lr"),
    [
        (ModelSpec(kind="softmax", n_features=64, n_classes=10), 0.5),
        (ModelSpec(kind="mlp", n_features=64, n_classes=10, hidden=32), 0.1),
    ],
    ids=["softmax", "mlp"],
)
def test_train_local_learns_digits(spec: ModelSpec, lr: float) -> None:
    """Centrally on load_digits (X = data / 16), 5 epochs reach > 90% train accuracy."""
    x, y = digits()
    base = spec.init(np.random.default_rng(0))
    result = train_local(base, x, y, epochs=5, batch_size=32, lr=lr, rng=np.random.default_rng(1))
    accuracy = float(np.mean(predict(result.params, x) == y))
    assert accuracy > 0.9
    assert result.loss < cross_entropy(base, x, y)
    assert result.num_samples == 1797


def test_train_local_raises_diverged_on_non_finite_result() -> None:
    """An absurd learning rate overflows float32: a typed error, no warning, no NaN delta."""
    x, y = digits()
    base = ModelSpec(kind="softmax", n_features=64, n_classes=10).init()
    with pytest.raises(TrainingDivergedError) as info:
        train_local(
            base, x[:200], y[:200], epochs=3, batch_size=10, lr=1e38, rng=np.random.default_rng(0)
        )
    assert info.value.reason == "diverged"
    assert not math.isfinite(info.value.loss)


@pytest.mark.parametrize(
    ("field", "value"),
    [
        ("epochs", 0),
        ("epochs", -1),
        ("epochs", 1.5),
        ("epochs", True),
        ("batch_size", 0),
        ("batch_size", "8"),
        ("lr", 0.0),
        ("lr", -0.1),
        ("lr", math.nan),
        ("lr", math.inf),
        ("lr", "0.1"),
        ("prox_mu", -0.5),
        ("prox_mu", math.nan),
        ("prox_mu", None),
    ],
)
def test_training_config_rejects_out_of_range(field: str, value: Any) -> None:
    """Each bad setting raises TrainingConfigError carrying the field and value."""
    with pytest.raises(TrainingConfigError) as info:
        TrainingConfig(**{field: value})
    assert info.value.field == field
    assert info.value.value is value
    assert isinstance(info.value, DeviceError)


def test_training_config_accepts_valid_settings() -> None:
    """Defaults are valid; ints for lr and zero prox_mu are allowed."""
    assert TrainingConfig() == TrainingConfig(epochs=1, batch_size=32, lr=0.05, prox_mu=0.0)
    config = TrainingConfig(epochs=3, batch_size=1, lr=1, prox_mu=0)
    assert (config.epochs, config.batch_size, config.lr, config.prox_mu) == (3, 1, 1, 0)


def test_train_local_validates_settings_and_inputs() -> None:
    """train_local raises the typed errors for bad settings, tensors and samples."""
    x, y = blobs(n_per_class=2, seed=21)
    rng = np.random.default_rng(0)
    with pytest.raises(TrainingConfigError, match="batch_size"):
        train_local(SOFTMAX.init(), x, y, epochs=1, batch_size=0, lr=0.1, rng=rng)
    with pytest.raises(InvalidModelError):
        train_local(
            {"W": np.zeros((2, 3), np.float32)}, x, y, epochs=1, batch_size=2, lr=0.1, rng=rng
        )
    with pytest.raises(InvalidSamplesError, match="no samples"):
        train_local(SOFTMAX.init(), x[:0], y[:0], epochs=1, batch_size=2, lr=0.1, rng=rng)
    with pytest.raises(InvalidSamplesError, match=r"\[0, 3\)"):
        train_local(SOFTMAX.init(), x, y + 1, epochs=1, batch_size=2, lr=0.1, rng=rng)
