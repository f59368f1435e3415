"""``fedmq watch``: subscribe to a task's model topic and report each signed release."""

from __future__ import annotations

import argparse
import logging
import os
import queue
import secrets
import sys
import time
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Literal, TextIO

from serialization.errors import SerializationError
from serialization.topics import DEFAULT_ROOT, model_topic

if TYPE_CHECKING:
    import paho.mqtt.client as mqtt
    from paho.mqtt.properties import Properties
    from paho.mqtt.reasoncodes import ReasonCode

    from fedmq.cli import Subparsers
    from fedmq.watch import WatchSummary

__all__ = ["PASSWORD_ENV", "MqttVersion", "WatchConfig", "read_password", "register", "watch"]

logger = logging.getLogger(__name__)

MqttVersion = Literal["5", "3.1.1"]
PASSWORD_ENV = "FL_MQTT_PASSWORD"  # noqa: S105 - the variable's name, not a secret
_FATAL_CONNACK = frozenset({0x84, 0x85, 0x86, 0x87, 0x8C})
"""CONNACK codes that no retry mends: protocol version, client id, credentials."""


def register(subparsers: Subparsers) -> None:
    """Add ``watch`` (paho, numpy and the watcher are imported only when it runs)."""
    parser = subparsers.add_parser(
        "watch",
        help="follow a task's signed model releases: verify, print, save, evaluate",
        description="Subscribe to fl/v1/TASK/model and print one line per release whose "
        "signature verifies with the aggregator's public key; refuse (WARNING on stderr) "
        "forged, malformed and older releases. Exit 0 if a release was verified, 1 if "
        "none, 2 if the watch could not run. See fedmq/WATCH.md.",
    )
    parser.add_argument("--host", default="127.0.0.1", help="broker host (default: 127.0.0.1)")
    parser.add_argument("--port", type=int, help="broker port (default: 1883, 8883 with --tls-ca)")
    parser.add_argument("--username", required=True, help="MQTT account")
    parser.add_argument(
        "--password-file",
        type=Path,
        help=f"file whose first line is the password (default: ${PASSWORD_ENV})",
    )
    parser.add_argument("--task", required=True, help="task id")
    parser.add_argument(
        "--public-key", type=Path, required=True, help="the aggregator's release verify key (PEM)"
    )
    parser.add_argument("--tls-ca", type=Path, help="CA certificate: connect with TLS")
    parser.add_argument(
        "--mqtt-version",
        choices=["5", "3.1.1"],
        default="5",
        help="MQTT protocol (default: 5; the demo's embedded broker needs 3.1.1)",
    )
    parser.add_argument("--client-id", default="", help="default: fedmq-watch-<random>")
    parser.add_argument("--topic-root", default=DEFAULT_ROOT, help=f"default: {DEFAULT_ROOT}")
    parser.add_argument(
        "--save-dir", type=Path, help="save each verified release as DIR/TASK-vVERSION.msgpack"
    )
    parser.add_argument(
        "--evaluate",
        type=Path,
        metavar="DATA.npz",
        help="print each release's accuracy on x (float32, [n, f]) and y (int, [n])",
    )
    parser.add_argument(
        "--count", type=_positive_int, help="exit after this many verified releases"
    )
    parser.add_argument("--timeout", type=_positive_float, help="exit after this many seconds")
    parser.set_defaults(handler=_run)


def _positive_int(text: str) -> int:
    value = int(text)
    if value <= 0:
        raise argparse.ArgumentTypeError(f"must be > 0, got {text}")
    return value


def _positive_float(text: str) -> float:
    value = float(text)
    if not value > 0 or value == float("inf"):
        raise argparse.ArgumentTypeError(f"must be a number > 0, got {text}")
    return value


@dataclass(frozen=True, kw_only=True, slots=True)
class WatchConfig:
    """Where to watch, how to trust what arrives, and what to do with it."""

    host: str
    port: int
    username: str
    password: str = field(repr=False)
    task: str
    public_key: Path
    """The aggregator's release verify key (SubjectPublicKeyInfo PEM)."""
    tls_ca: Path | None = None
    mqtt_version: MqttVersion = "5"
    client_id: str = ""
    """Empty: ``fedmq-watch-<random>``."""
    save_dir: Path | None = None
    dataset: Path | None = None
    count: int | None = None
    """Stop after this many verified releases."""
    timeout: float | None = None
    """Stop after this many seconds."""
    topic_root: str = DEFAULT_ROOT
    keepalive: int = 30


def read_password(password_file: Path | None, env: Mapping[str, str]) -> str:
    """The first line of ``password_file``, else ``$FL_MQTT_PASSWORD``; WatchError if neither."""
    from fedmq.watch import WatchError

    if password_file is not None:
        try:
            lines = password_file.read_text(encoding="utf-8").splitlines()
        except (OSError, UnicodeDecodeError) as exc:
            raise WatchError(f"cannot read the password file: {exc}", what="password") from exc
        return lines[0] if lines else ""
    if PASSWORD_ENV in env:
        return env[PASSWORD_ENV]
    raise WatchError(f"no password: pass --password-file or set {PASSWORD_ENV}", what="password")


def _run(args: argparse.Namespace) -> int:
    from fedmq.watch import WatchError

    try:
        config = WatchConfig(
            host=args.host,
            port=args.port or (8883 if args.tls_ca else 1883),
            username=args.username,
            password=read_password(args.password_file, os.environ),
            task=args.task,
            public_key=args.public_key,
            tls_ca=args.tls_ca,
            mqtt_version="5" if args.mqtt_version == "5" else "3.1.1",
            client_id=args.client_id,
            save_dir=args.save_dir,
            dataset=args.evaluate,
            count=args.count,
            timeout=args.timeout,
            topic_root=args.topic_root,
        )
        summary = watch(config, out=sys.stdout, err=sys.stderr)
    except WatchError as exc:
        print(f"fedmq watch: {exc}", file=sys.stderr)
        return 2
    print(summary.line(f"{args.topic_root}/{args.task}/model"), file=sys.stderr)
    if summary.error is not None:
        return 2
    return 0 if summary.verified else 1


@dataclass(frozen=True, slots=True)
class _Message:
    payload: bytes


@dataclass(frozen=True, slots=True)
class _Fatal:
    reason: str


def _client(config: WatchConfig, topic: str, events: queue.Queue[_Message | _Fatal]) -> mqtt.Client:
    """A paho client that subscribes on every connect and turns callbacks into events."""
    import paho.mqtt.client as mqtt
    from paho.mqtt.enums import CallbackAPIVersion

    from fedmq.watch import WatchError

    v5 = config.mqtt_version == "5"
    client = mqtt.Client(
        CallbackAPIVersion.VERSION2,
        client_id=config.client_id or f"fedmq-watch-{secrets.token_hex(4)}",
        protocol=mqtt.MQTTv5 if v5 else mqtt.MQTTv311,
        clean_session=None if v5 else True,
    )
    client.username_pw_set(config.username, config.password)
    if config.tls_ca is not None:
        try:
            client.tls_set(ca_certs=str(config.tls_ca))
        except (OSError, ValueError) as exc:
            raise WatchError(f"cannot set up TLS with {config.tls_ca}: {exc}", what="tls") from exc
    client.reconnect_delay_set(1, 30)
    client.suppress_exceptions = True

    def on_connect(
        client: mqtt.Client, _u: object, _f: object, code: ReasonCode, _p: Properties | None
    ) -> None:
        if code.is_failure:
            if code.value in _FATAL_CONNACK:
                hint = " (try --mqtt-version 3.1.1)" if code.value == 0x84 and v5 else ""
                reason = f"the broker refused the login of {config.username!r}: {code}{hint}"
                events.put(_Fatal(reason))
            else:
                logger.warning("the broker refused the connection (%s); retrying", code)
            return
        logger.info("connected to %s:%d; subscribing to %s", config.host, config.port, topic)
        client.subscribe(topic, qos=1)

    def on_subscribe(
        _c: mqtt.Client, _u: object, _m: int, codes: list[ReasonCode], _p: Properties | None
    ) -> None:
        if any(code.is_failure for code in codes):
            events.put(_Fatal(f"the broker refused the subscription to {topic}: {codes[0]}"))

    def on_message(_c: mqtt.Client, _u: object, message: mqtt.MQTTMessage) -> None:
        if message.topic == topic:
            events.put(_Message(bytes(message.payload)))

    def on_disconnect(
        _c: mqtt.Client, _u: object, _f: object, code: ReasonCode, _p: Properties | None
    ) -> None:
        if code.value != 0:
            logger.warning("connection lost (%s); reconnecting", code)

    client.on_connect = on_connect
    client.on_subscribe = on_subscribe
    client.on_message = on_message
    client.on_disconnect = on_disconnect
    client.on_connect_fail = lambda _c, _u: logger.warning(
        "cannot connect to %s:%d; retrying", config.host, config.port
    )
    return client


def watch(config: WatchConfig, *, out: TextIO, err: TextIO) -> WatchSummary:
    """Watch until ``count`` verified releases, ``timeout`` or Ctrl-C; return the summary.

    Release lines go to ``out``, WARNING and ERROR lines to ``err``. WatchError if the
    watch cannot start (key, dataset, save dir, TLS or task invalid).
    """
    from fedmq.watch import Dataset, ReleaseWatcher, WatchError, load_verify_key

    verify_key = load_verify_key(config.public_key)
    try:
        topic = model_topic(config.task, root=config.topic_root)
    except SerializationError as exc:
        raise WatchError(str(exc), what="task") from exc
    dataset = Dataset.load(config.dataset) if config.dataset is not None else None
    watcher = ReleaseWatcher(
        task=config.task, verify_key=verify_key, save_dir=config.save_dir, dataset=dataset
    )
    events: queue.Queue[_Message | _Fatal] = queue.Queue()
    client = _client(config, topic, events)
    deadline = None if config.timeout is None else time.monotonic() + config.timeout
    if config.mqtt_version == "5":
        client.connect_async(config.host, config.port, config.keepalive, clean_start=True)
    else:
        client.connect_async(config.host, config.port, config.keepalive)
    client.loop_start()
    try:
        while config.count is None or watcher.summary.verified < config.count:
            wait = None if deadline is None else deadline - time.monotonic()
            if wait is not None and wait <= 0:
                break
            try:
                event = events.get(timeout=wait)
            except queue.Empty:
                break
            if isinstance(event, _Fatal):
                watcher.summary.error = event.reason
                print(f"ERROR {event.reason}", file=err, flush=True)
                break
            seen = watcher.handle(event.payload)
            if seen.outcome != "repeat":
                print(seen.line, file=out if seen.outcome == "verified" else err, flush=True)
            for warning in seen.warnings:
                print(warning, file=err, flush=True)
    except KeyboardInterrupt:
        logger.info("interrupted")
    finally:
        client.disconnect()
        client.loop_stop()
    return watcher.summary
