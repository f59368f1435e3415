"""Server optimizers: hand-computed steps, a float64 reference over several steps, state parts."""

from __future__ import annotations

import json

import numpy as np
import pytest
from numpy.typing import NDArray

from aggregator.errors import InvalidConfigError, LayoutMismatchError, StateError
from aggregator.server_optimizers import (
    FedAdam,
    FedAvgM,
    FedYogi,
    OptimizerState,
    ServerOptimizer,
    Sgd,
    server_optimizer_from_name,
)
from aggregator.tensors import Model


def _t(*values: float) -> NDArray[np.float32]:
    return np.array(values, dtype=np.float32)


def _run(optimizer: ServerOptimizer, x: Model, deltas: list[Model]) -> tuple[Model, OptimizerState]:
    state = optimizer.init(x)
    for delta in deltas:
        x, state = optimizer.step(x, delta, state)
    return x, state


def test_sgd_hand_values() -> None:
    """lr 0.5: x = [1, -2] + 0.5 * [0.2, 0.4] = [1.1, -1.8]; step counter 1, no slots."""
    x, state = _run(Sgd(lr=0.5), {"w": _t(1.0, -2.0)}, [{"w": _t(0.2, 0.4)}])
    np.testing.assert_allclose(x["w"], [1.1, -1.8], rtol=1e-6)
    assert x["w"].dtype == np.float32
    assert state.step == 1
    assert dict(state.arrays) == {}


def test_fedavgm_hand_values() -> None:
    """lr 1, beta 0.5 from x = 0.

    step 1: m = [1, -2];               x = [1, -2]
    step 2: m = 0.5*[1, -2] + [2, 2] = [2.5, 1];  x = [1, -2] + [2.5, 1] = [3.5, -1]
    """
    x, state = _run(
        FedAvgM(lr=1.0, momentum=0.5),
        {"w": _t(0.0, 0.0)},
        [{"w": _t(1.0, -2.0)}, {"w": _t(2.0, 2.0)}],
    )
    np.testing.assert_allclose(x["w"], [3.5, -1.0], rtol=1e-6)
    np.testing.assert_allclose(state.arrays["m/w"], [2.5, 1.0], rtol=1e-6)
    assert state.step == 2


# lr 0.1, beta1 0.9, beta2 0.99, eps 1e-3, x0 = [0, 0], D1 = [1, 0.1], D2 = [0.01, 1].
# step 1 (Adam = Yogi, v starts at 0): m = 0.1*D1 = [0.1, 0.01]; v = 0.01*D1^2 = [0.01, 1e-4]
#   x1 = 0.1 * [0.1/(0.1+0.001), 0.01/(0.01+0.001)] = [0.0990099, 0.0909091]
# step 2: m = 0.9*[0.1, 0.01] + 0.1*[0.01, 1] = [0.091, 0.109]
#   Adam v = 0.99*[0.01, 1e-4] + 0.01*[1e-4, 1] = [0.009901, 0.010099]
#     x2 = x1 + 0.1*[0.091/(0.0995038+0.001), 0.109/(0.1004938+0.001)]
#        = [0.0990099 + 0.0905438, 0.0909091 + 0.1073957] = [0.1895538, 0.1983048]
#   Yogi: coord 0 has v - D^2 = 0.01 - 1e-4 > 0, so v = 0.01 - 0.01*1e-4 = 0.009999;
#         coord 1 has 1e-4 - 1 < 0, so v = 1e-4 + 0.01*1 = 0.0101
#     x2 = x1 + 0.1*[0.091/(0.0999950+0.001), 0.109/(0.1004988+0.001)]
#        = [0.0990099 + 0.0901035, 0.0909091 + 0.1073904] = [0.1891134, 0.1982995]
_ADAPTIVE_DELTAS: list[Model] = [{"w": _t(1.0, 0.1)}, {"w": _t(0.01, 1.0)}]


def test_fedadam_hand_values() -> None:
    """Two FedAdam steps match the hand computation above."""
    optimizer = FedAdam(lr=0.1, beta1=0.9, beta2=0.99, eps=1e-3)
    x1, _ = _run(optimizer, {"w": _t(0.0, 0.0)}, _ADAPTIVE_DELTAS[:1])
    np.testing.assert_allclose(x1["w"], [0.0990099, 0.0909091], rtol=1e-5)
    x2, state = _run(optimizer, {"w": _t(0.0, 0.0)}, _ADAPTIVE_DELTAS)
    np.testing.assert_allclose(state.arrays["m/w"], [0.091, 0.109], rtol=1e-5)
    np.testing.assert_allclose(state.arrays["v/w"], [0.009901, 0.010099], rtol=1e-5)
    np.testing.assert_allclose(x2["w"], [0.1895538, 0.1983048], rtol=1e-5)


def test_fedyogi_hand_values() -> None:
    """Two FedYogi steps, exercising both signs of v - D^2, match the hand computation."""
    optimizer = FedYogi(lr=0.1, beta1=0.9, beta2=0.99, eps=1e-3)
    x2, state = _run(optimizer, {"w": _t(0.0, 0.0)}, _ADAPTIVE_DELTAS)
    np.testing.assert_allclose(state.arrays["v/w"], [0.009999, 0.0101], rtol=1e-5)
    np.testing.assert_allclose(x2["w"], [0.1891134, 0.1982995], rtol=1e-5)


def _reference(
    name: str, x: NDArray[np.float64], deltas: list[NDArray[np.float64]], params: dict[str, float]
) -> NDArray[np.float64]:
    """Straightforward float64 FedOpt, new-minus-old convention."""
    m = np.zeros_like(x)
    v = np.zeros_like(x)
    for d in deltas:
        if name == "sgd":
            x = x + params["lr"] * d
        elif name == "fedavgm":
            m = params["momentum"] * m + d
            x = x + params["lr"] * m
        else:
            m = params["beta1"] * m + (1 - params["beta1"]) * d
            if name == "fedadam":
                v = params["beta2"] * v + (1 - params["beta2"]) * d * d
            else:
                v = v - (1 - params["beta2"]) * d * d * np.sign(v - d * d)
            x = x + params["lr"] * m / (np.sqrt(v) + params["eps"])
    return x


_PARAMS: dict[str, dict[str, float]] = {
    "sgd": {"lr": 0.7},
    "fedavgm": {"lr": 0.7, "momentum": 0.9},
    "fedadam": {"lr": 0.05, "beta1": 0.9, "beta2": 0.99, "eps": 1e-3},
    "fedyogi": {"lr": 0.05, "beta1": 0.8, "beta2": 0.95, "eps": 1e-2},
}


@pytest.mark.parametrize("name", sorted(_PARAMS))
def test_optimizer_matches_float64_reference_over_steps(name: str) -> None:
    """Six steps on two tensors agree with the float64 reference."""
    rng = np.random.default_rng(7)
    shapes = {"W": (3, 4), "b": (4,)}
    x0 = {k: rng.normal(size=s).astype(np.float32) for k, s in shapes.items()}
    deltas = [
        {k: (rng.normal(size=s) * 0.1).astype(np.float32) for k, s in shapes.items()}
        for _ in range(6)
    ]
    x, state = _run(server_optimizer_from_name(name, **_PARAMS[name]), x0, deltas)
    assert state.step == 6
    for k in shapes:
        expected = _reference(
            name, x0[k].astype(np.float64), [d[k].astype(np.float64) for d in deltas], _PARAMS[name]
        )
        np.testing.assert_allclose(x[k], expected, rtol=1e-5, atol=1e-5)
        assert x[k].dtype == np.float32


@pytest.mark.parametrize("name", sorted(_PARAMS))
def test_optimizer_step_does_not_modify_inputs(name: str) -> None:
    """Model, pseudo-gradient and state are left untouched by a step."""
    optimizer = server_optimizer_from_name(name, **_PARAMS[name])
    x = {"w": _t(1.0, 2.0)}
    _, state = _run(optimizer, x, [{"w": _t(0.5, 0.5)}])
    before = {k: a.copy() for k, a in state.arrays.items()}
    delta = {"w": _t(0.1, -0.1)}
    optimizer.step(x, delta, state)
    np.testing.assert_array_equal(x["w"], [1.0, 2.0])
    np.testing.assert_array_equal(delta["w"], _t(0.1, -0.1))
    for key, array in before.items():
        np.testing.assert_array_equal(state.arrays[key], array)


@pytest.mark.parametrize("name", sorted(_PARAMS))
def test_optimizer_state_parts_round_trip_exactly(name: str) -> None:
    """State -> (bytes, JSON) -> state resumes bit-identically to an unbroken run."""
    optimizer = server_optimizer_from_name(name, **_PARAMS[name])
    rng = np.random.default_rng(3)
    deltas = [{"w": rng.normal(size=5).astype(np.float32)} for _ in range(4)]
    x0 = {"w": np.zeros(5, dtype=np.float32)}
    unbroken, unbroken_state = _run(optimizer, x0, deltas)

    x, state = _run(optimizer, x0, deltas[:2])
    arrays, scalars = state.to_parts()
    wire = {k: (a.dtype.str, a.shape, a.tobytes()) for k, a in arrays.items()}
    loaded = OptimizerState.from_parts(
        {k: np.frombuffer(raw, dtype=dt).reshape(shape) for k, (dt, shape, raw) in wire.items()},
        json.loads(json.dumps(scalars)),
    )
    assert loaded.step == 2
    for delta in deltas[2:]:
        x, loaded = optimizer.step(x, delta, loaded)
    np.testing.assert_array_equal(x["w"], unbroken["w"])
    assert loaded.step == unbroken_state.step
    for key in unbroken_state.arrays:
        np.testing.assert_array_equal(loaded.arrays[key], unbroken_state.arrays[key])


def test_optimizer_state_slot_names() -> None:
    """Slots are named "<slot>/<tensor>": none for SGD, m for FedAvgM, m and v for Adam."""
    model = {"layer/W": np.zeros((2, 2), dtype=np.float32), "b": np.zeros(2, dtype=np.float32)}
    assert set(Sgd().init(model).arrays) == set()
    assert set(FedAvgM().init(model).arrays) == {"m/layer/W", "m/b"}
    assert set(FedAdam().init(model).arrays) == {"m/layer/W", "m/b", "v/layer/W", "v/b"}


def test_optimizer_state_from_parts_rejects_bad_parts() -> None:
    """Wrong dtype, bad step, extra scalars or keys without a slot raise StateError."""
    ok = {"m/w": np.zeros(2, dtype=np.float32)}
    with pytest.raises(StateError) as info:
        OptimizerState.from_parts({"m/w": np.zeros(2, dtype=np.float64)}, {"step": 1})
    assert info.value.key == "m/w"
    with pytest.raises(StateError):
        OptimizerState.from_parts(ok, {"step": True})
    with pytest.raises(StateError):
        OptimizerState.from_parts(ok, {"step": -1})
    with pytest.raises(StateError):
        OptimizerState.from_parts(ok, {"step": 1, "lr": 0.1})
    with pytest.raises(StateError):
        OptimizerState.from_parts({"w": np.zeros(2, dtype=np.float32)}, {"step": 1})


def test_optimizer_step_rejects_mismatched_inputs() -> None:
    """A gradient of another layout or a state of another optimizer is refused."""
    x = {"w": _t(1.0, 2.0)}
    with pytest.raises(LayoutMismatchError):
        Sgd().step(x, {"w": _t(1.0)}, Sgd().init(x))
    with pytest.raises(StateError):
        FedAdam().step(x, {"w": _t(1.0, 1.0)}, FedAvgM().init(x))


def test_optimizer_config_validation() -> None:
    """Out-of-range hyperparameters and unknown names are InvalidConfigError."""
    with pytest.raises(InvalidConfigError) as info:
        FedAvgM(momentum=1.0)
    assert info.value.field == "momentum"
    with pytest.raises(InvalidConfigError):
        Sgd(lr=0.0)
    with pytest.raises(InvalidConfigError):
        FedAdam(eps=0.0)
    with pytest.raises(InvalidConfigError):
        FedYogi(beta2=1.0)
    with pytest.raises(InvalidConfigError):
        server_optimizer_from_name("adagrad")
    with pytest.raises(InvalidConfigError):
        server_optimizer_from_name("sgd", momentum=0.9)
    assert server_optimizer_from_name("fedyogi", lr=0.02) == FedYogi(lr=0.02)
