"""Pace steering: the aggregator's Control message on top of the configured training."""

from __future__ import annotations

import dataclasses
import logging
from dataclasses import dataclass
from typing import Any

from device.config import TrainingSettings
from device.errors import ConfigError, ControlRefusedError
from serialization import Codec, Control, Scalar, SerializationError

__all__ = ["CONTROL_SETTINGS", "Pace", "apply_control"]

logger = logging.getLogger(__name__)

CONTROL_SETTINGS: dict[str, tuple[str, str, type]] = {
    "epochs": ("training", "epochs", int),
    "batch_size": ("training", "batch_size", int),
    "lr": ("training", "lr", float),
    "prox_mu": ("training", "prox_mu", float),
    "min_new_samples": ("training", "min_new_samples", int),
    "interval": ("training", "interval", float),
    "codec": ("codec", "name", str),
    "topk_fraction": ("codec", "topk_fraction", float),
}
"""Control.settings key -> (section, field, type). Other keys are ignored (logged)."""


@dataclass(frozen=True, kw_only=True, slots=True)
class Pace:
    """The training settings in force: the config, overridden by the latest Control."""

    training: TrainingSettings
    codec: Codec
    participation: float = 1.0
    """Probability that a due training round runs (else it is skipped)."""
    seq: int = -1
    """Seq of the Control applied (-1: none)."""


def apply_control(base: Pace, control: Control, *, task: str) -> Pace:
    """``base`` (the configured pace) with ``control`` applied.

    Every Control replaces the previous one as a whole: a setting it leaves out falls back
    to the config. Raises ControlRefusedError for another task or an invalid setting.
    """
    if control.task != task:
        raise ControlRefusedError(f"control is for task {control.task!r}, not {task!r}")
    changes: dict[str, dict[str, Any]] = {"training": {}, "codec": {}}
    for key, value in control.settings.items():
        target = CONTROL_SETTINGS.get(key)
        if target is None:
            logger.info("ignoring unknown control setting %r", key)
            continue
        section, name, kind = target
        changes[section][name] = _typed(key, value, kind)
    try:
        training = dataclasses.replace(base.training, **changes["training"])
        codec = dataclasses.replace(base.codec, **changes["codec"])
    except (ConfigError, SerializationError) as exc:
        raise ControlRefusedError(str(exc)) from exc
    return Pace(
        training=training, codec=codec, participation=control.participation, seq=control.seq
    )


def _typed(key: str, value: Scalar, kind: type) -> Scalar:
    if kind is float and type(value) is int:
        return float(value)
    if type(value) is not kind:
        raise ControlRefusedError(f"setting {key!r} must be a {kind.__name__}, got {value!r}")
    return value
