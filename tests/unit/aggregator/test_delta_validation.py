"""validate_delta: each reject reason, in order, and acceptance of a good delta."""

from __future__ import annotations

import numpy as np
import pytest

from aggregator.errors import LayoutMismatchError
from aggregator.tensors import Model, global_norm
from aggregator.validation import RejectReason, require_same_layout, validate_delta


def _model() -> Model:
    return {
        "W": np.zeros((2, 3), dtype=np.float32),
        "b": np.zeros(3, dtype=np.float32),
    }


def _delta(w: float = 0.0, b: float = 0.0) -> Model:
    return {
        "W": np.full((2, 3), w, dtype=np.float32),
        "b": np.full(3, b, dtype=np.float32),
    }


def test_validate_delta_accepts_matching_finite_delta() -> None:
    """Same names, shapes, float32, finite and within the bound: no reason."""
    assert validate_delta(_model(), _delta(0.5, -1.0), max_norm=10.0) is None
    assert validate_delta(_model(), _delta(1e6), max_norm=None) is None


def test_validate_delta_unknown_tensor() -> None:
    """A name the model lacks is unknown_tensor, even if another one is also missing."""
    delta = {"W": _delta()["W"], "c": np.zeros(3, dtype=np.float32)}
    assert validate_delta(_model(), delta, None) == RejectReason.UNKNOWN_TENSOR
    assert validate_delta(_model(), delta, None) == "unknown_tensor"


def test_validate_delta_missing_tensor() -> None:
    """A model tensor absent from the delta is missing_tensor."""
    delta = {"W": _delta()["W"]}
    assert validate_delta(_model(), delta, None) == "missing_tensor"


def test_validate_delta_shape_mismatch() -> None:
    """A transposed tensor is shape_mismatch."""
    delta = {"W": np.zeros((3, 2), dtype=np.float32), "b": _delta()["b"]}
    assert validate_delta(_model(), delta, None) == "shape_mismatch"


def test_validate_delta_dtype_mismatch() -> None:
    """A float64 tensor is dtype_mismatch: the codec must hand over float32."""
    delta = {"W": np.zeros((2, 3), dtype=np.float64), "b": _delta()["b"]}
    assert validate_delta(_model(), delta, None) == "dtype_mismatch"  # type: ignore[arg-type]


@pytest.mark.parametrize("bad", [np.nan, np.inf, -np.inf])
def test_validate_delta_non_finite(bad: float) -> None:
    """NaN or infinity anywhere is non_finite, checked before the norm."""
    delta = _delta()
    delta["b"][1] = bad
    assert validate_delta(_model(), delta, max_norm=1.0) == "non_finite"


def test_validate_delta_norm_exceeded() -> None:
    """W all 1 (6 entries) and b all 0 has norm sqrt(6) = 2.449...: above 2.4, within 2.5."""
    delta = _delta(1.0, 0.0)
    assert global_norm(delta) == pytest.approx(6**0.5)
    assert validate_delta(_model(), delta, max_norm=2.4) == "norm_exceeded"
    assert validate_delta(_model(), delta, max_norm=2.5) is None


def test_require_same_layout_raises_with_reason_and_name() -> None:
    """The raising variant carries the reason and tensor name as attributes."""
    with pytest.raises(LayoutMismatchError) as info:
        require_same_layout(_model(), {"W": _delta()["W"]})
    assert info.value.reason == "missing_tensor"
    assert info.value.name == "b"
