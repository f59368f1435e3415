"""The daemon's configuration: frozen sections read from TOML, overridden by ``FL_*`` variables."""

from __future__ import annotations

import dataclasses
import math
import os
import tomllib
import typing
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

from device.errors import ConfigError, DeviceError
from device.training import TrainingConfig
from serialization import DEFAULT_LIMITS, DEFAULT_ROOT, Codec, SerializationError
from serialization.topics import validate_identifier

__all__ = [
    "ENV_PREFIX",
    "MQTT_VERSIONS",
    "TRAINING_TRIGGERS",
    "BrokerSettings",
    "DeviceConfig",
    "MqttVersion",
    "OutboxSettings",
    "SampleSettings",
    "TrainingSettings",
    "TrainingTrigger",
    "load_config",
]

ENV_PREFIX = "FL_"
MqttVersion = Literal["5", "3.1.1"]
MQTT_VERSIONS: tuple[MqttVersion, ...] = ("5", "3.1.1")
TrainingTrigger = Literal["samples", "model"]
TRAINING_TRIGGERS: tuple[TrainingTrigger, ...] = ("samples", "model")
_SECRET_KEYS = frozenset({"broker.password"})


def _require(key: str, ok: bool, requirement: str) -> None:
    if not ok:
        raise ConfigError(key, f"must be {requirement}")


@dataclass(frozen=True, kw_only=True, slots=True)
class BrokerSettings:
    """Where and how to reach Mosquitto; username = client id = device id."""

    host: str = "127.0.0.1"
    port: int = 1883
    password: str = field(default="", repr=False)
    password_file: Path | None = None
    """Read the password from this file instead (first line); wins over ``password``."""
    tls_ca: Path | None = None
    """CA bundle that signs the broker certificate; setting it turns TLS on."""
    tls_cert: Path | None = None
    tls_key: Path | None = None
    mqtt_version: MqttVersion = "5"
    """"3.1.1" for a broker without MQTT 5 (see device/README.md for what it loses)."""
    keepalive: int = 60
    session_expiry: int = 7 * 24 * 3600
    """MQTT 5 SessionExpiryInterval (s): how long the broker keeps receipts for us offline."""
    will_delay: int = 0
    """MQTT 5 WillDelayInterval (s): a reconnect within it suppresses the offline will."""
    reconnect_min: float = 1.0
    reconnect_max: float = 120.0

    def __post_init__(self) -> None:
        _require("broker.host", bool(self.host), "a host name")
        _require("broker.port", 0 < self.port < 65536, "in 1..65535")
        _require("broker.keepalive", 5 <= self.keepalive <= 65535, "in 5..65535 s")
        _require("broker.session_expiry", 0 <= self.session_expiry < 2**32, "a 32-bit count")
        _require("broker.will_delay", 0 <= self.will_delay < 2**32, "a 32-bit count")
        _require(
            "broker.mqtt_version", self.mqtt_version in MQTT_VERSIONS, f"one of {MQTT_VERSIONS}"
        )
        _require(
            "broker.will_delay",
            self.will_delay == 0 or self.mqtt_version == "5",
            "0 with mqtt_version 3.1.1 (a will delay is an MQTT 5 property)",
        )
        _require("broker.reconnect_min", self.reconnect_min > 0, "> 0")
        _require("broker.reconnect_max", self.reconnect_min <= self.reconnect_max, ">= min")
        _require(
            "broker.tls_cert",
            (self.tls_cert is None) == (self.tls_key is None),
            "given together with tls_key",
        )


@dataclass(frozen=True, kw_only=True, slots=True)
class TrainingSettings:
    """Local training (device.training.train_local) and when it is triggered."""

    epochs: int = 1
    batch_size: int = 32
    lr: float = 0.05
    prox_mu: float = 0.0
    min_new_samples: int = 50
    """Train once this many samples arrived since the last round."""
    interval: float = 0.0
    """Also train every ``interval`` seconds if any new sample arrived (0: off)."""
    trigger: TrainingTrigger = "samples"
    """``samples``: the two rules above; ``model``: once per newly held model version, on
    all stored samples, as soon as there is at least one (the sync FedAvg protocol)."""
    seed: int | None = None
    """None: shuffle from OS entropy. An int makes rounds reproducible: the update from
    model version v shuffles with ``default_rng(1000 * (v - 1) + seed)``."""

    def __post_init__(self) -> None:
        _require(
            "training.trigger", self.trigger in TRAINING_TRIGGERS, f"one of {TRAINING_TRIGGERS}"
        )
        _require("training.seed", self.seed is None or self.seed >= 0, "None or an int >= 0")
        try:
            TrainingConfig(
                epochs=self.epochs, batch_size=self.batch_size, lr=self.lr, prox_mu=self.prox_mu
            )
        except DeviceError as exc:
            raise ConfigError("training", str(exc)) from exc
        _require("training.min_new_samples", self.min_new_samples >= 1, ">= 1")
        _require("training.interval", self.interval >= 0, ">= 0")


@dataclass(frozen=True, kw_only=True, slots=True)
class SampleSettings:
    """The bounded sample store and the spool directory sensor programs write into."""

    max_samples: int = 10_000
    """Oldest samples are dropped (and counted) beyond this many."""
    spool_dir: Path | None = None
    """Default: ``<state_dir>/spool``."""
    spool_poll: float = 1.0

    def __post_init__(self) -> None:
        _require("samples.max_samples", self.max_samples >= 1, ">= 1")
        _require("samples.spool_poll", self.spool_poll > 0, "> 0")


@dataclass(frozen=True, kw_only=True, slots=True)
class OutboxSettings:
    """The durable outbox of updates and how it is drained."""

    max_updates: int = 100
    max_bytes: int = 64 * 1024 * 1024
    """When either bound is hit the oldest updates are dropped, counted and logged."""
    inflight: int = 2
    """Updates published and waiting for their receipt at once."""
    receipt_timeout: float = 60.0
    """Republish an update whose receipt has not come this long after its PUBACK ..."""
    receipt_timeout_max: float = 900.0
    """... doubling the wait per attempt up to this."""
    max_payload_bytes: int = DEFAULT_LIMITS.max_payload_bytes
    """Updates above this are never queued; it may only be lowered below the wire limit."""

    def __post_init__(self) -> None:
        _require("outbox.max_updates", self.max_updates >= 1, ">= 1")
        _require("outbox.max_bytes", self.max_bytes >= 1, ">= 1")
        _require("outbox.inflight", 1 <= self.inflight <= 64, "in 1..64")
        _require("outbox.receipt_timeout", self.receipt_timeout > 0, "> 0")
        _require(
            "outbox.receipt_timeout_max", self.receipt_timeout_max >= self.receipt_timeout, ">="
        )
        limit = DEFAULT_LIMITS.max_payload_bytes
        _require(
            "outbox.max_payload_bytes",
            1024 <= self.max_payload_bytes <= limit,
            f"in 1024..{limit} (the broker's message_size_limit: above it Mosquitto 2.0 and "
            "paho drop the connection and resend the update forever)",
        )


@dataclass(frozen=True, kw_only=True, slots=True)
class DeviceConfig:
    """Everything ``fedmq device run`` needs; see device/README.md for every key."""

    device_id: str
    task: str
    state_dir: Path
    aggregator_key: Path
    """PEM Ed25519 public key that signs the task's model releases."""
    topic_root: str = DEFAULT_ROOT
    broker: BrokerSettings = field(default_factory=BrokerSettings)
    training: TrainingSettings = field(default_factory=TrainingSettings)
    codec: Codec = field(default_factory=Codec)
    samples: SampleSettings = field(default_factory=SampleSettings)
    outbox: OutboxSettings = field(default_factory=OutboxSettings)

    def __post_init__(self) -> None:
        for key in ("device_id", "task"):
            try:
                validate_identifier(getattr(self, key), key)
            except SerializationError as exc:
                raise ConfigError(key, str(exc)) from exc
        root = self.topic_root
        _require(
            "topic_root",
            bool(root) and not any(c in root for c in "+#") and not root.endswith("/"),
            "a topic prefix without wildcards or a trailing '/'",
        )

    @property
    def spool_dir(self) -> Path:
        """Where sensor programs drop JSON-lines sample files."""
        return self.samples.spool_dir or self.state_dir / "spool"


_SECTIONS: dict[str, type[Any]] = {
    "broker": BrokerSettings,
    "training": TrainingSettings,
    "codec": Codec,
    "samples": SampleSettings,
    "outbox": OutboxSettings,
}


def load_config(path: Path | None, environ: Mapping[str, str] | None = None) -> DeviceConfig:
    """Read ``path`` (TOML) and apply ``FL_*`` overrides from ``environ`` (default os.environ).

    The variable of a top-level key is ``FL_<KEY>`` (``FL_DEVICE_ID``), that of a section key
    ``FL_<SECTION>_<KEY>`` (``FL_BROKER_PASSWORD``). Relative paths in the file are relative
    to the file. Unknown keys in the file are errors; unknown ``FL_*`` variables are ignored.
    """
    env = os.environ if environ is None else environ
    document: dict[str, Any] = {}
    base = Path.cwd()
    if path is not None:
        try:
            document = tomllib.loads(path.read_text(encoding="utf-8"))
        except (OSError, UnicodeDecodeError, tomllib.TOMLDecodeError) as exc:
            raise ConfigError(str(path), f"cannot read: {exc}") from exc
        base = path.resolve().parent
    top = _read_section(DeviceConfig, "", document, env, base, skip=set(_SECTIONS))
    for name, cls in _SECTIONS.items():
        table = document.get(name, {})
        if not isinstance(table, dict):
            raise ConfigError(name, "must be a table")
        top[name] = _build(cls, name, _read_section(cls, name, table, env, base, skip=set()))
    unknown = set(document) - {f.name for f in dataclasses.fields(DeviceConfig)}
    if unknown:
        raise ConfigError(sorted(unknown)[0], "unknown key")
    config: DeviceConfig = _build(DeviceConfig, "config", top)
    return _with_password_file(config)


def _read_section(
    cls: type[Any],
    section: str,
    table: dict[str, Any],
    env: Mapping[str, str],
    base: Path,
    *,
    skip: set[str],
) -> dict[str, Any]:
    hints = typing.get_type_hints(cls)
    names = {f.name for f in dataclasses.fields(cls)} - skip
    if section:
        unknown = set(table) - names
        if unknown:
            raise ConfigError(f"{section}.{sorted(unknown)[0]}", "unknown key")
    values: dict[str, Any] = {}
    for name in names:
        key = f"{section}.{name}" if section else name
        variable = ENV_PREFIX + key.replace(".", "_").upper()
        if variable in env:
            values[name] = _from_text(key, env[variable], hints[name], Path.cwd())
        elif name in table:
            values[name] = _from_toml(key, table[name], hints[name], base)
    return values


def _build(cls: type[Any], what: str, values: dict[str, Any]) -> Any:
    for f in dataclasses.fields(cls):
        required = f.default is dataclasses.MISSING and f.default_factory is dataclasses.MISSING
        if required and f.name not in values:
            raise ConfigError(f.name, f"is required (TOML key or {ENV_PREFIX}{f.name.upper()})")
    try:
        return cls(**values)
    except TypeError as exc:
        raise ConfigError(what, f"missing or wrong keys ({exc})") from exc
    except SerializationError as exc:
        raise ConfigError(what, str(exc)) from exc


def _kind(hint: Any) -> Any:
    """The concrete type behind ``X | None`` and ``Literal[...]`` (str)."""
    if typing.get_origin(hint) is typing.Literal:
        return str
    args = [a for a in typing.get_args(hint) if a is not type(None)]
    return args[0] if args else hint


def _shown(key: str, value: object) -> str:
    return "<hidden>" if key in _SECRET_KEYS else repr(value)


def _from_toml(key: str, value: object, hint: Any, base: Path) -> object:
    kind = _kind(hint)
    if kind is Path:
        if not isinstance(value, str) or not value:
            raise ConfigError(key, "must be a non-empty path string")
        return base / value
    if kind is float and isinstance(value, int) and not isinstance(value, bool):
        return float(value)
    if not isinstance(value, kind) or (kind is int and isinstance(value, bool)):
        raise ConfigError(key, f"must be a {kind.__name__}, got {_shown(key, value)}")
    if isinstance(value, float) and not math.isfinite(value):
        raise ConfigError(key, "must be finite")
    return value


def _from_text(key: str, text: str, hint: Any, base: Path) -> object:
    kind = _kind(hint)
    try:
        if kind is bool:
            lowered = text.strip().lower()
            if lowered not in ("1", "0", "true", "false", "yes", "no"):
                raise ValueError(text)
            return lowered in ("1", "true", "yes")
        if kind in (int, float):
            number = kind(text)
            if not math.isfinite(number):
                raise ValueError(text)
            return number
    except ValueError:
        raise ConfigError(key, f"must be a {kind.__name__}, got {_shown(key, text)}") from None
    if kind is Path:
        return base / text if text else None
    return text


def _with_password_file(config: DeviceConfig) -> DeviceConfig:
    secret_file = config.broker.password_file
    if secret_file is None:
        return config
    try:
        lines = secret_file.read_text(encoding="utf-8").splitlines()
    except (OSError, UnicodeDecodeError) as exc:
        raise ConfigError("broker.password_file", f"cannot read {secret_file}: {exc}") from exc
    password = lines[0] if lines else ""
    return dataclasses.replace(config, broker=dataclasses.replace(config.broker, password=password))
