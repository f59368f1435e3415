"""Staleness weights s(tau) for asynchronous aggregation, tau = current version - base version."""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import ClassVar, Final, Protocol

from aggregator.errors import InvalidConfigError, NegativeStalenessError

__all__ = [
    "FEDBUFF_STALENESS",
    "Constant",
    "Hinge",
    "Polynomial",
    "StalenessFunction",
    "staleness_from_name",
]


class StalenessFunction(Protocol):
    """A weight in (0, 1] for an update that is ``tau`` versions old."""

    @property
    def name(self) -> str:
        """Short name, as accepted by staleness_from_name."""
        ...

    def __call__(self, tau: int) -> float:
        """Return s(tau) for tau >= 0."""
        ...


def _require_non_negative(field: str, value: float) -> None:
    if not (math.isfinite(value) and value >= 0.0):
        raise InvalidConfigError(field, value, "must be a finite number >= 0")


def _require_tau(tau: int) -> None:
    if tau < 0:
        raise NegativeStalenessError(tau)


@dataclass(frozen=True, kw_only=True, slots=True)
class Constant:
    """FedAsync's constant weight: s(tau) = 1."""

    name: ClassVar[str] = "constant"

    def __call__(self, tau: int) -> float:
        """Return 1.0 for any tau >= 0."""
        _require_tau(tau)
        return 1.0


@dataclass(frozen=True, kw_only=True, slots=True)
class Polynomial:
    """FedAsync's polynomial weight s(tau) = (tau + 1)^-a; a = 0.5 is FedBuff's 1/sqrt(1+tau)."""

    name: ClassVar[str] = "polynomial"
    a: float = 0.5

    def __post_init__(self) -> None:
        """Reject a negative or non-finite exponent."""
        _require_non_negative("a", self.a)

    def __call__(self, tau: int) -> float:
        """Return (tau + 1)^-a."""
        _require_tau(tau)
        if self.a == 0.5:
            return 1.0 / math.sqrt(tau + 1.0)
        return math.pow(tau + 1.0, -self.a)


@dataclass(frozen=True, kw_only=True, slots=True)
class Hinge:
    """FedAsync's hinge weight: 1 while tau <= b, then 1 / (a * (tau - b) + 1)."""

    name: ClassVar[str] = "hinge"
    a: float = 10.0
    b: float = 4.0

    def __post_init__(self) -> None:
        """Reject negative or non-finite parameters."""
        _require_non_negative("a", self.a)
        _require_non_negative("b", self.b)

    def __call__(self, tau: int) -> float:
        """Return the hinge weight of tau."""
        _require_tau(tau)
        if tau <= self.b:
            return 1.0
        return 1.0 / (self.a * (tau - self.b) + 1.0)


FEDBUFF_STALENESS: Final[StalenessFunction] = Polynomial(a=0.5)
"""FedBuff's default s(tau) = 1/sqrt(1 + tau) (Nguyen et al. 2022)."""

_BY_NAME: Final[dict[str, type[Constant] | type[Polynomial] | type[Hinge]]] = {
    "constant": Constant,
    "polynomial": Polynomial,
    "hinge": Hinge,
}


def staleness_from_name(name: str, **params: float) -> StalenessFunction:
    """Build a staleness function from its name and parameters, e.g. ("hinge", a=10, b=4)."""
    cls = _BY_NAME.get(name)
    if cls is None:
        raise InvalidConfigError("staleness", name, f"must be one of {sorted(_BY_NAME)}")
    try:
        return cls(**params)
    except TypeError as exc:
        raise InvalidConfigError("staleness", params, f"bad parameters for {name}") from exc
