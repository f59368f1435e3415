"""Aggregator configuration: frozen dataclasses from a TOML file, ``FL_*`` overrides read here."""

from __future__ import annotations

import math
import os
import tomllib
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal
from urllib.parse import unquote, urlsplit

from aggregator.errors import InvalidConfigError
from aggregator.strategy_settings import StrategySettings
from serialization import DEFAULT_LIMITS, DEFAULT_ROOT, validate_identifier

__all__ = [
    "ENV_VARIABLES",
    "MQTT_PROTOCOLS",
    "AggregatorConfig",
    "IngestSettings",
    "LeaderSettings",
    "MqttProtocol",
    "MqttSettings",
    "TaskSettings",
    "load_config",
]

ENV_VARIABLES: Mapping[str, str] = {
    "FL_MQTT_URL": "mqtt://user[:password]@host:port of the broker (overrides [mqtt] url)",
    "FL_MQTT_PASSWORD": "MQTT password (overrides the URL's and [mqtt] password)",
    "FL_MQTT_PROTOCOL": 'MQTT version, "5" or "3.1.1" (overrides [mqtt] protocol)',
    "FL_REDIS_URL": "redis://[:password@]host:port/db (overrides [redis] url)",
    "FL_REPLICA_ID": "stable id of this replica: MQTT client id and lease owner",
    "FL_SIGNING_KEY": "path of the Ed25519 release signing key (PEM)",
    "FL_METRICS_PORT": "port of the Prometheus endpoint (0 disables it)",
}
"""Every environment variable the aggregator reads, with its meaning (README table)."""

MqttProtocol = Literal["5", "3.1.1"]
MQTT_PROTOCOLS: tuple[MqttProtocol, ...] = ("5", "3.1.1")


@dataclass(frozen=True, kw_only=True, slots=True)
class MqttSettings:
    """How to reach the broker; the password never appears in repr or logs."""

    host: str = "127.0.0.1"
    port: int = 1883
    username: str = "aggregator"
    password: str | None = field(default=None, repr=False)
    client_id: str = "agg-0"
    """Stable per replica: the broker keeps this client's persistent session."""
    protocol: MqttProtocol = "5"
    """"3.1.1" for a broker without MQTT 5: one replica only, no shared subscription."""
    keepalive: int = 60
    session_expiry_s: int = 86_400
    receive_maximum: int = 64
    """In-flight un-acked deliveries the broker may send us (back-pressure)."""
    max_inflight_out: int = 256
    """Outgoing QoS 1 publishes (receipts) in flight before paho queues them."""
    publish_timeout_s: float = 30.0
    root: str = DEFAULT_ROOT
    share_group: str | None = None
    """The MQTT 5 share group of the replicas. None: derived from the release signing key
    (``keyed_share_group``), so that only holders of the key can guess it: Mosquitto's ACL
    file does not check subscriptions, and a device that joined a known group would take
    its turn of every device's updates, which the broker then drops for want of read
    rights."""
    reconnect_min_s: float = 0.5
    reconnect_max_s: float = 30.0

    def __post_init__(self) -> None:
        """Reject values the broker or the protocol cannot take."""
        _require("mqtt.port", self.port, 0 < self.port < 65536, "must be a TCP port")
        protocol_ok = self.protocol in MQTT_PROTOCOLS
        _require("mqtt.protocol", self.protocol, protocol_ok, f"must be one of {MQTT_PROTOCOLS}")
        receive_ok = 0 < self.receive_maximum < 65536
        _require("mqtt.receive_maximum", self.receive_maximum, receive_ok, "must be in 1..65535")
        # A session that expires at once would drop every update queued while we restart.
        expiry_ok = self.session_expiry_s > 0
        _require("mqtt.session_expiry_s", self.session_expiry_s, expiry_ok, "must be > 0")
        backoff_ok = 0 < self.reconnect_min_s <= self.reconnect_max_s
        _require(
            "mqtt.reconnect_min_s",
            self.reconnect_min_s,
            backoff_ok,
            "must be in (0, reconnect_max_s]",
        )
        validate_identifier(self.client_id, "mqtt.client_id")
        if self.share_group is not None:
            validate_identifier(self.share_group, "mqtt.share_group")


@dataclass(frozen=True, kw_only=True, slots=True)
class IngestSettings:
    """Batching of updates into one Redis round trip, and the dedupe window."""

    batch_max_messages: int = 256
    batch_max_bytes: int = 32 * 1024 * 1024
    pipeline_depth: int = 2
    """Batches being stored at once (checking one overlaps Redis storing another)."""
    offload_bytes: int = 256 * 1024
    """A batch of at least this many bytes is decoded, validated and written to Redis in a
    worker thread (smaller ones stay on the event loop, where a thread hop costs more)."""
    dedupe_window_s: float = 14 * 86_400.0
    """How long an accepted update id is remembered; keep it above the device outbox age."""

    def __post_init__(self) -> None:
        """Reject empty batches and a non-positive window."""
        _require(
            "ingest.batch_max_messages",
            self.batch_max_messages,
            self.batch_max_messages >= 1,
            "must be >= 1",
        )
        _require(
            "ingest.pipeline_depth", self.pipeline_depth, self.pipeline_depth >= 1, "must be >= 1"
        )
        _require(
            "ingest.batch_max_bytes",
            self.batch_max_bytes,
            self.batch_max_bytes >= 1,
            "must be >= 1",
        )
        _require(
            "ingest.dedupe_window_s", self.dedupe_window_s, self.dedupe_window_s > 0, "must be > 0"
        )


@dataclass(frozen=True, kw_only=True, slots=True)
class LeaderSettings:
    """The lease that picks which replica folds and commits, and how it reads the stream."""

    lease_ttl_s: float = 10.0
    read_count: int = 64
    """Stream entries read (and payloads fetched) per round trip."""
    block_s: float = 0.5
    """How long one stream read waits for new entries; also the deadline-check period."""

    def __post_init__(self) -> None:
        """Reject a lease shorter than a read."""
        _require(
            "leader.lease_ttl_s",
            self.lease_ttl_s,
            self.lease_ttl_s >= 3 * self.block_s,
            "must be >= 3 * leader.block_s",
        )
        _require("leader.read_count", self.read_count, self.read_count >= 1, "must be >= 1")


@dataclass(frozen=True, kw_only=True, slots=True)
class TaskSettings:
    """One federated task served by this process."""

    name: str
    strategy: StrategySettings = field(default_factory=StrategySettings)
    max_norm: float | None = None
    """Reject deltas whose global L2 norm is above this (None: no bound)."""
    max_update_bytes: int = DEFAULT_LIMITS.max_payload_bytes

    def __post_init__(self) -> None:
        """Reject an unsafe task name and impossible bounds."""
        validate_identifier(self.name, "task")
        if self.max_norm is not None:
            _require(
                "max_norm",
                self.max_norm,
                math.isfinite(self.max_norm) and self.max_norm > 0,
                "must be a finite number > 0",
            )
        _require(
            "max_update_bytes", self.max_update_bytes, self.max_update_bytes > 0, "must be > 0"
        )


@dataclass(frozen=True, kw_only=True, slots=True)
class AggregatorConfig:
    """Everything one aggregator process needs; secrets stay out of repr."""

    replica_id: str = "agg-0"
    mqtt: MqttSettings = field(default_factory=MqttSettings)
    redis_url: str = field(default="redis://127.0.0.1:6379/0", repr=False)
    signing_key_path: Path = Path("keys/release_signing_key.pem")
    tasks: tuple[TaskSettings, ...] = ()
    history: int = 10
    """Releases kept in Redis for rollback."""
    metrics_host: str = "127.0.0.1"
    metrics_port: int = 0
    """Prometheus endpoint port; 0 disables it."""
    ingest: IngestSettings = field(default_factory=IngestSettings)
    leader: LeaderSettings = field(default_factory=LeaderSettings)

    def __post_init__(self) -> None:
        """Reject duplicate task names and an empty history."""
        names = [t.name for t in self.tasks]
        if len(set(names)) != len(names):
            raise InvalidConfigError("tasks", names, "task names must be unique")
        _require("history", self.history, self.history >= 1, "must be >= 1")
        validate_identifier(self.replica_id, "replica_id")

    def task(self, name: str) -> TaskSettings:
        """The settings of task ``name``."""
        for settings in self.tasks:
            if settings.name == name:
                return settings
        raise InvalidConfigError(
            "task", name, f"not configured; known: {[t.name for t in self.tasks]}"
        )


def _require(name: str, value: object, ok: bool, reason: str) -> None:
    if not ok:
        raise InvalidConfigError(name, value, reason)


def _table(data: Mapping[str, Any], name: str) -> dict[str, Any]:
    value = data.get(name, {})
    if not isinstance(value, dict):
        raise InvalidConfigError(name, value, "must be a TOML table")
    return dict(value)


def _build(cls: Any, name: str, values: Mapping[str, Any]) -> Any:
    try:
        return cls(**values)
    except TypeError as exc:
        raise InvalidConfigError(name, sorted(values), f"unknown or missing keys: {exc}") from exc


def _mqtt_from_url(url: str) -> dict[str, Any]:
    parts = urlsplit(url)
    if parts.scheme not in ("mqtt", "tcp"):
        raise InvalidConfigError(
            "mqtt.url", url.rsplit("@", maxsplit=1)[-1], "must be mqtt://user[:pw]@host:port"
        )
    values: dict[str, Any] = {"host": parts.hostname or "127.0.0.1", "port": parts.port or 1883}
    if parts.username:
        values["username"] = unquote(parts.username)
    if parts.password:
        values["password"] = unquote(parts.password)
    return values


def _task(values: Mapping[str, Any]) -> TaskSettings:
    table = dict(values)
    name = table.pop("name", None)
    if not isinstance(name, str):
        raise InvalidConfigError("tasks.name", name, "every [[tasks]] needs a name")
    own = {key: table.pop(key) for key in ("max_norm", "max_update_bytes") if key in table}
    return TaskSettings(name=name, strategy=StrategySettings.from_table(table), **own)


def load_config(
    path: Path | None = None, environ: Mapping[str, str] | None = None
) -> AggregatorConfig:
    """Read the TOML file at ``path`` (optional), then apply ``FL_*`` overrides.

    This is the one place that reads the environment: ``environ`` defaults to os.environ.
    """
    env = os.environ if environ is None else environ
    data: dict[str, Any] = {}
    if path is not None:
        try:
            data = tomllib.loads(Path(path).read_text())
        except (OSError, tomllib.TOMLDecodeError) as exc:
            raise InvalidConfigError("config", str(path), str(exc)) from exc
    base_dir = Path(path).parent if path is not None else Path.cwd()
    mqtt = _table(data, "mqtt")
    url = env.get("FL_MQTT_URL") or mqtt.pop("url", None)
    mqtt.pop("url", None)
    if url:
        mqtt = {**mqtt, **_mqtt_from_url(url)}
    if "FL_MQTT_PASSWORD" in env:
        mqtt["password"] = env["FL_MQTT_PASSWORD"]
    if "FL_MQTT_PROTOCOL" in env:
        mqtt["protocol"] = env["FL_MQTT_PROTOCOL"]
    replica_id = env.get("FL_REPLICA_ID") or data.get("replica_id", "agg-0")
    mqtt.setdefault("client_id", replica_id)
    redis_url = env.get("FL_REDIS_URL") or _table(data, "redis").get(
        "url", "redis://127.0.0.1:6379/0"
    )
    key_path = Path(
        env.get("FL_SIGNING_KEY") or data.get("signing_key", "keys/release_signing_key.pem")
    )
    metrics_port = int(env.get("FL_METRICS_PORT") or data.get("metrics_port", 0))
    tasks = data.get("tasks", [])
    if not isinstance(tasks, list):
        raise InvalidConfigError("tasks", tasks, "must be an array of tables [[tasks]]")
    return AggregatorConfig(
        replica_id=replica_id,
        mqtt=_build(MqttSettings, "mqtt", mqtt),
        redis_url=redis_url,
        signing_key_path=key_path if key_path.is_absolute() else base_dir / key_path,
        tasks=tuple(_task(t) for t in tasks),
        history=int(data.get("history", 10)),
        metrics_host=str(data.get("metrics_host", "127.0.0.1")),
        metrics_port=metrics_port,
        ingest=_build(IngestSettings, "ingest", _table(data, "ingest")),
        leader=_build(LeaderSettings, "leader", _table(data, "leader")),
    )
