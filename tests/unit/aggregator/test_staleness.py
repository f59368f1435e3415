"""Staleness functions s(tau) against hand-computed values."""

from __future__ import annotations

import pytest

from aggregator.errors import InvalidConfigError, NegativeStalenessError
from aggregator.staleness import (
    FEDBUFF_STALENESS,
    Constant,
    Hinge,
    Polynomial,
    staleness_from_name,
)


def test_fedbuff_staleness_is_inverse_sqrt_of_one_plus_tau() -> None:
    """s(tau) = 1/sqrt(1+tau): s(0)=1, s(3)=1/2, s(8)=1/3, s(15)=1/4."""
    assert FEDBUFF_STALENESS(0) == 1.0
    assert FEDBUFF_STALENESS(3) == 0.5
    assert FEDBUFF_STALENESS(8) == pytest.approx(1.0 / 3.0, abs=1e-15)
    assert FEDBUFF_STALENESS(15) == 0.25


def test_constant_staleness_is_one() -> None:
    """Constant s is 1 for fresh and old updates alike."""
    assert Constant()(0) == 1.0
    assert Constant()(1000) == 1.0


def test_polynomial_staleness_hand_values() -> None:
    """(tau+1)^-a: a=1 gives 1, 1/2, 1/4 at tau 0, 1, 3; a=2 gives 1/9 at tau 2."""
    assert Polynomial(a=1.0)(0) == 1.0
    assert Polynomial(a=1.0)(1) == 0.5
    assert Polynomial(a=1.0)(3) == 0.25
    assert Polynomial(a=2.0)(2) == pytest.approx(1.0 / 9.0, abs=1e-15)
    assert Polynomial(a=0.0)(7) == 1.0


def test_hinge_staleness_hand_values() -> None:
    """a=10, b=4: 1 up to tau=4, then 1/(10*(tau-4)+1): 1/11 at 5, 1/21 at 6."""
    hinge = Hinge(a=10.0, b=4.0)
    assert hinge(0) == 1.0
    assert hinge(4) == 1.0
    assert hinge(5) == pytest.approx(1.0 / 11.0, abs=1e-15)
    assert hinge(6) == pytest.approx(1.0 / 21.0, abs=1e-15)
    assert Hinge(a=4.0, b=2.0)(4) == pytest.approx(1.0 / 9.0, abs=1e-15)


@pytest.mark.parametrize("function", [Constant(), Polynomial(a=0.5), Hinge()])
def test_staleness_rejects_negative_tau(function: Constant | Polynomial | Hinge) -> None:
    """tau < 0 raises NegativeStalenessError carrying tau."""
    with pytest.raises(NegativeStalenessError) as info:
        function(-1)
    assert info.value.tau == -1


def test_staleness_rejects_negative_parameters() -> None:
    """Negative or non-finite exponents and hinge parameters are config errors."""
    with pytest.raises(InvalidConfigError) as info:
        Polynomial(a=-0.5)
    assert info.value.field == "a"
    with pytest.raises(InvalidConfigError):
        Hinge(a=10.0, b=-1.0)
    with pytest.raises(InvalidConfigError):
        Hinge(a=float("nan"))


def test_staleness_from_name_builds_each_function() -> None:
    """Names map to the classes with their parameters; unknown names and params fail."""
    assert staleness_from_name("constant") == Constant()
    assert staleness_from_name("polynomial", a=0.25) == Polynomial(a=0.25)
    assert staleness_from_name("hinge", a=4.0, b=2.0) == Hinge(a=4.0, b=2.0)
    assert staleness_from_name("hinge").name == "hinge"
    with pytest.raises(InvalidConfigError):
        staleness_from_name("exponential")
    with pytest.raises(InvalidConfigError):
        staleness_from_name("constant", a=1.0)
