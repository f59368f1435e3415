"""Unit tests of device.residual: top-k error feedback and its storage."""

from __future__ import annotations

import numpy as np
import pytest

from device.models import Params
from device.residual import ResidualStore, encode_with_feedback
from device.state_db import StateDB
from serialization import Codec, decode_delta

TOPK = Codec(name="topk", topk_fraction=0.5)


def test_residual_is_delta_plus_old_minus_sent() -> None:
    """Hand-computed: corrected [3, 0, .5, 1] keeps 3 and 1; .5 stays behind."""
    delta = {"w": np.array([3.0, -1.0, 0.5, 2.0], np.float32)}
    old = {"w": np.array([0.0, 1.0, 0.0, -1.0], np.float32)}
    encoded, residual = encode_with_feedback(delta, TOPK, old)
    assert decode_delta(encoded)["w"].tolist() == [3.0, 0.0, 0.0, 1.0]
    assert residual is not None
    assert residual["w"].tolist() == [0.0, 0.0, 0.5, 0.0]


def test_residual_nothing_is_lost_over_rounds() -> None:
    """Sum of what was sent plus the final residual equals the sum of all deltas."""
    rng = np.random.default_rng(0)
    codec = Codec(name="topk", topk_fraction=0.1)
    residual: Params | None = None
    sent = np.zeros((6, 5), np.float64)
    total = np.zeros((6, 5), np.float64)
    for _ in range(8):
        delta = {"w": rng.normal(size=(6, 5)).astype(np.float32)}
        encoded, residual = encode_with_feedback(delta, codec, residual)
        assert encoded["w"].values.size == 3
        sent += decode_delta(encoded)["w"]
        total += delta["w"]
    assert residual is not None
    np.testing.assert_allclose(sent + residual["w"], total, atol=1e-5)


def test_residual_folded_into_other_codecs_then_cleared() -> None:
    """After a switch away from top-k the residual rides along once and is gone."""
    delta = {"w": np.array([1.0, 2.0], np.float32)}
    old = {"w": np.array([0.5, -0.5], np.float32)}
    encoded, residual = encode_with_feedback(delta, Codec(name="none"), old)
    assert residual is None
    assert decode_delta(encoded)["w"].tolist() == [1.5, 1.5]


def test_residual_of_another_shape_is_discarded() -> None:
    """A residual from a model of another shape is not added."""
    delta = {"w": np.array([1.0, 2.0], np.float32)}
    encoded, residual = encode_with_feedback(delta, TOPK, {"w": np.ones(3, np.float32)})
    assert decode_delta(encoded)["w"].tolist() == [0.0, 2.0]
    assert residual is not None
    assert residual["w"].tolist() == [1.0, 0.0]


def test_residual_store_round_trip_and_atomic_with_its_transaction(db: StateDB) -> None:
    """Stored exactly; a failed transaction leaves the previous residual."""
    residuals = ResidualStore(db)
    assert residuals.load() is None
    first = {"W": np.arange(6, dtype=np.float32).reshape(2, 3), "b": np.array([0.25], np.float32)}
    with db.transaction() as conn:
        residuals.save_in(conn, first)
    loaded = residuals.load()
    assert loaded is not None
    for name, value in first.items():
        np.testing.assert_array_equal(loaded[name], value)

    def save_then_crash() -> None:
        with db.transaction() as conn:
            residuals.save_in(conn, {"W": np.zeros((2, 3), np.float32)})
            raise RuntimeError("crash before commit")

    with pytest.raises(RuntimeError):
        save_then_crash()
    again = residuals.load()
    assert again is not None
    assert set(again) == {"W", "b"}
    with db.transaction() as conn:
        residuals.save_in(conn, None)
    assert residuals.load() is None
