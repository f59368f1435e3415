"""The demo's fallback broker: amqtt (MQTT 3.1.1) in a thread, with our password file and ACL."""

from __future__ import annotations

import asyncio
import contextlib
import logging
import shutil
import threading
from dataclasses import dataclass
from importlib.metadata import version
from pathlib import Path
from typing import Any, Protocol

from amqtt.adapters import StreamWriterAdapter
from amqtt.broker import Broker
from amqtt.contexts import Action
from amqtt.errors import AMQTTError, MQTTError, NoDataError
from amqtt.mqtt.connack import NOT_AUTHORIZED, ConnackPacket
from amqtt.mqtt.protocol.broker_handler import BrokerProtocolHandler
from amqtt.plugins.base import BaseAuthPlugin, BaseTopicPlugin
from amqtt.utils import gen_client_id

from fedmq.acl_rules import AclAccess, AclRules, AclSyntaxError
from fedmq.broker_files import SHIPPED_CONFIG_DIR
from fedmq.local_servers import ServerStartError, free_port
from fedmq.password_file import PasswordFile, verify_password

__all__ = [
    "EMBEDDED_MQTT_VERSION",
    "AclTopicPlugin",
    "EmbeddedBroker",
    "PasswordFileAuthPlugin",
    "RunningBroker",
    "start_embedded_broker",
]

logger = logging.getLogger(__name__)

EMBEDDED_MQTT_VERSION = "3.1.1"
"""The only MQTT version amqtt speaks: clients of the embedded broker must use it."""
SESSION_EXPIRY_SECONDS = 7 * 24 * 3600
"""An offline persistent session is dropped after 7 days, as ``persistent_client_expiration``."""
_START_ATTEMPTS = 3
_CONNECT = 0x10
_MQTT5 = 5
_MQTT5_UNSUPPORTED_VERSION = bytes([0x20, 3, 0, 0x84, 0])
"""An MQTT 5 CONNACK: no session present, reason 0x84, no properties."""
_SHARE_PREFIX = "$share/"


class RunningBroker(Protocol):
    """A broker the demo started and stops: Mosquitto (``LocalServer``) or the embedded one.

    Both listen on 127.0.0.1:``port`` and keep ``acl`` and ``passwd`` in ``workdir``;
    ``origin`` says where the server comes from, for the demo's banner.
    """

    name: str
    port: int
    workdir: Path
    origin: str

    @property
    def running(self) -> bool:
        """Whether it still serves."""

    def stop(self, timeout: float = 5.0) -> None:
        """Stop serving and wait up to ``timeout`` seconds."""


class PasswordFileAuthPlugin(BaseAuthPlugin):  # type: ignore[misc]
    """amqtt auth plugin: the login must match its ``$7$`` hash in a Mosquitto password file.

    Anonymous clients, unknown users and logins without a password are refused.
    """

    @dataclass
    class Config:
        """Plugin options (amqtt fills them from the broker config)."""

        password_file: str = ""

    def __init__(self, context: Any) -> None:
        super().__init__(context)
        self._hashes = PasswordFile(Path(self.config.password_file)).entries()

    async def authenticate(self, *, session: Any) -> bool:
        """True only for a known username with its password."""
        username, password = session.username, session.password
        hashed = self._hashes.get(username) if username else None
        if hashed is None or password is None:
            return False
        try:
            return verify_password(password, hashed)
        except ValueError:
            logger.warning("the password file holds a malformed hash for %r", username)
            return False


class AclTopicPlugin(BaseTopicPlugin):  # type: ignore[misc]
    """amqtt topic plugin: a Mosquitto acl_file decides every publish and every delivery.

    As in Mosquitto 2.0, SUBSCRIBE itself is not checked (reading is enforced on each
    delivery), except that ``$share/...`` filters are refused: amqtt would accept them
    and never deliver anything.
    """

    @dataclass
    class Config:
        """Plugin options (amqtt fills them from the broker config)."""

        acl_file: str = ""

    def __init__(self, context: Any) -> None:
        super().__init__(context)
        self._rules = AclRules.load(Path(self.config.acl_file))

    async def topic_filtering(
        self, *, session: Any = None, topic: str | None = None, action: Any = None
    ) -> bool:
        """Whether ``session`` may subscribe to, publish on, or receive from ``topic``."""
        if session is None or not topic:
            return False
        if action == Action.SUBSCRIBE:
            return not topic.startswith(_SHARE_PREFIX)
        access: AclAccess = "write" if action == Action.PUBLISH else "read"
        return self._rules.allows(
            access, topic, username=session.username, client_id=session.client_id or ""
        )


class _Replay:
    """amqtt's reader adapter over a stream whose first bytes were already read."""

    def __init__(self, head: bytes, reader: asyncio.StreamReader) -> None:
        self._head = head
        self._reader = reader

    async def read(self, n: int = -1) -> bytes:
        take = self._head if n == -1 else self._head[:n]
        self._head = self._head[len(take) :]
        if n == -1:
            return take + await self._reader.read()
        missing = n - len(take)
        return take + (await self._reader.readexactly(missing) if missing else b"")

    def feed_eof(self) -> None:
        self._reader.feed_eof()


async def _connect_head(reader: asyncio.StreamReader) -> tuple[bytes, int | None]:
    """Read a CONNECT up to its protocol level byte: (bytes read, level or None)."""
    head = await reader.readexactly(1)
    if head[0] != _CONNECT:
        return head, None
    for _ in range(4):
        head += await reader.readexactly(1)
        if not head[-1] & 0x80:
            break
    size = await reader.readexactly(2)
    head += size + await reader.readexactly(int.from_bytes(size, "big") + 1)
    return head, head[-1]


class _SecuredBroker(Broker):  # type: ignore[misc]
    """amqtt's Broker with four gaps closed; every decision still comes from the plugins.

    0. An MQTT 5 CONNECT, which amqtt misreads and leaves waiting, gets CONNACK 0x84.
    1. amqtt deletes or rewrites the session of the CONNECT's client id before checking
       the login, so anyone could knock a client out: the login is checked first, and a
       client id held by another username is refused.
    2. amqtt sends retained messages on SUBSCRIBE, and on every connect for every filter
       any client holds, unchecked: only for the client's own filters, if it may read.
    3. amqtt sends a last will unchecked: a will the client may not write is dropped.

    Connections are tracked so that ``close_connections`` can end them on stop.
    """

    def __init__(self, config: dict[str, Any]) -> None:
        super().__init__(config)
        self._connections: dict[asyncio.Task[Any], asyncio.StreamWriter] = {}

    async def stream_connected(
        self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter, listener_name: str
    ) -> None:
        task = asyncio.current_task()
        if task is None:  # pragma: no cover - asyncio always runs this in a task
            raise RuntimeError("stream_connected outside of a task")
        self._connections[task] = writer
        try:
            head, level = await _connect_head(reader)
            if level == _MQTT5:
                writer.write(_MQTT5_UNSUPPORTED_VERSION)
                await writer.drain()
                return
            await self._client_connected(
                listener_name, _Replay(head, reader), StreamWriterAdapter(writer)
            )
        except (asyncio.IncompleteReadError, ConnectionError):
            pass
        finally:
            writer.close()
            del self._connections[task]

    async def close_connections(self, timeout: float) -> None:
        """Close every client connection still open and wait for their handlers to end."""
        for writer in self._connections.values():
            writer.close()
        if self._connections:
            await asyncio.wait(list(self._connections), timeout=timeout)

    async def _initialize_client_session(
        self, reader: Any, writer: Any, remote_address: str, remote_port: int
    ) -> tuple[Any, Any]:
        try:
            handler, session = await BrokerProtocolHandler.init_from_connect(
                reader, writer, self.plugins_manager
            )
        except MQTTError:
            await writer.close()
            raise
        except NoDataError as exc:
            raise AMQTTError(exc) from exc
        held = self._sessions.get(session.client_id) if session.client_id else None
        foreign = held is not None and held[0].username != session.username
        if foreign or not await self._authenticate(session, None):
            await ConnackPacket.build(0, NOT_AUTHORIZED).to_stream(writer)
            await writer.close()
            why = "client id held by another user" if foreign else "bad login"
            raise MQTTError(f"refused {session.username!r} from {remote_address}: {why}")
        held = self._sessions.get(session.client_id) if session.client_id else None
        if session.clean_session:
            if session.client_id:
                await self._delete_session(session.client_id)
            else:
                session.client_id = gen_client_id()
            session.parent = 0
        elif held is not None:
            kept = held[0]
            for attribute in (
                "will_flag", "will_message", "will_topic", "will_qos", "will_retain",
                "keep_alive", "username", "password",
            ):  # fmt: skip
                setattr(kept, attribute, getattr(session, attribute))
            session, session.parent = kept, 1
        else:
            session.parent = 0
        delay = self.config.get("timeout-disconnect-delay", 0)
        if session.keep_alive > 0 and isinstance(delay, int):
            session.keep_alive += delay
        return handler, session

    async def _publish_retained_messages_for_subscription(
        self, subscription: tuple[str, int], session: Any
    ) -> None:
        topic_filter, qos = subscription
        holders = self._subscriptions.get(topic_filter, ())
        handler = self._get_handler(session)
        if handler is None or all(s.client_id != session.client_id for s, _ in holders):
            return
        sends = []
        for topic, retained in list(self._retained_messages.items()):
            if self._matches(topic, topic_filter) and await self._topic_filtering(
                session, topic, Action.RECEIVE
            ):
                delivery = handler.mqtt_publish(
                    retained.topic, retained.data, min(qos, retained.qos or qos), retain=True
                )
                sends.append(asyncio.ensure_future(delivery))
        if sends:
            await asyncio.wait(sends)

    async def _handle_disconnect(self, session: Any, handler: Any, waiter: Any) -> None:
        if session.will_flag and not await self._topic_filtering(
            session, session.will_topic or "", Action.PUBLISH
        ):
            logger.warning(
                "dropped the last will of %r on %s", session.username, session.will_topic
            )
            session.will_flag = False
        await super()._handle_disconnect(session, handler, waiter)


class EmbeddedBroker:
    """An amqtt broker serving on 127.0.0.1:``port`` from its own thread and event loop.

    Logins are checked against the Mosquitto password file and every publish and delivery
    against the Mosquitto ACL in ``workdir``, as Mosquitto would. What differs from the
    Mosquitto of broker_config/, and what its clients must do:

    - MQTT 3.1.1 only: an MQTT 5 CONNECT gets CONNACK 0x84 (unsupported protocol version),
      so every client connects with MQTT 3.1.1 (paho: ``protocol=MQTTv311``);
    - no shared subscriptions: SUBSCRIBE to ``$share/...`` is refused (SUBACK 0x80), so
      a single aggregator subscribes to ``fl/v1/{task}/dev/+/update`` itself;
    - sessions and retained messages live in memory only (nothing survives ``stop``);
      no payload or queue limits, no TLS listener, no ``check_retain_source`` (its
      accounts cannot change while it runs).
    """

    name = "amqtt"
    mqtt_version = EMBEDDED_MQTT_VERSION

    def __init__(self, *, port: int, workdir: Path) -> None:
        self.port = port
        self.workdir = workdir
        self.origin = f"amqtt {version('amqtt')} embedded in this process (MQTT 3.1.1 only)"
        self._ready = threading.Event()
        self._error: BaseException | None = None
        self._loop: asyncio.AbstractEventLoop | None = None
        self._stopping: asyncio.Event | None = None
        self._thread = threading.Thread(target=self._serve, name=f"amqtt:{port}", daemon=True)

    def _config(self) -> dict[str, Any]:
        plugins = (
            f"{__name__}.{PasswordFileAuthPlugin.__name__}",
            f"{__name__}.{AclTopicPlugin.__name__}",
        )
        return {
            "listeners": {"default": {"type": "tcp", "bind": f"127.0.0.1:{self.port}"}},
            "session_expiry_interval": SESSION_EXPIRY_SECONDS,
            "plugins": {
                plugins[0]: {"password_file": str(self.workdir / "passwd")},
                plugins[1]: {"acl_file": str(self.workdir / "acl")},
            },
        }

    def start(self, timeout: float = 10.0) -> None:
        """Start serving; ServerStartError if amqtt fails or is not listening in time."""
        self._thread.start()
        if not self._ready.wait(timeout):
            raise ServerStartError(f"amqtt did not listen on port {self.port} within {timeout}s")
        if self._error is not None:
            raise ServerStartError(f"amqtt did not start on port {self.port}: {self._error}")

    def _serve(self) -> None:
        asyncio.run(self._main())

    async def _main(self) -> None:
        self._loop = asyncio.get_running_loop()
        self._stopping = asyncio.Event()
        try:
            broker = _SecuredBroker(self._config())
            await broker.start()
        except Exception as exc:  # reported to the thread that waits in start()
            self._error = exc.__cause__ or exc
            self._ready.set()
            return
        self._ready.set()
        try:
            await self._stopping.wait()
        finally:
            await broker.shutdown()
            await broker.close_connections(timeout=2.0)

    @property
    def running(self) -> bool:
        """Whether the broker's thread still serves."""
        return self._thread.is_alive() and self._error is None and self._ready.is_set()

    def stop(self, timeout: float = 5.0) -> None:
        """Shut amqtt down (clients are disconnected) and wait for its thread."""
        if self._loop is not None and self._stopping is not None and self._thread.is_alive():
            with contextlib.suppress(RuntimeError):  # the loop closed in between
                self._loop.call_soon_threadsafe(self._stopping.set)
        if self._thread.is_alive():
            self._thread.join(timeout)


def start_embedded_broker(
    workdir: Path,
    *,
    accounts: dict[str, str],
    port: int | None = None,
    acl_file: Path = SHIPPED_CONFIG_DIR / "acl",
) -> EmbeddedBroker:
    """Start amqtt on 127.0.0.1 with ``accounts`` (username -> password) and the shipped ACL.

    Like ``start_mosquitto``: ``workdir`` gets a copy of the ACL and a ``passwd`` file of
    ``$7$`` hashes, and the port is a free one unless given. ServerStartError if it fails.
    """
    workdir.mkdir(parents=True, exist_ok=True)
    shutil.copyfile(acl_file, workdir / "acl")
    (workdir / "acl").chmod(0o600)
    try:
        AclRules.load(workdir / "acl")
    except AclSyntaxError as exc:
        raise ServerStartError(f"Mosquitto would refuse this ACL: {exc}") from exc
    (workdir / "passwd").touch(mode=0o600, exist_ok=True)
    passwords = PasswordFile(workdir / "passwd")
    for username, password in accounts.items():
        passwords.set(username, password)
    attempts = 1 if port is not None else _START_ATTEMPTS
    while True:
        broker = EmbeddedBroker(port=port or free_port(), workdir=workdir)
        try:
            broker.start()
        except ServerStartError:
            broker.stop()
            attempts -= 1
            if attempts == 0:
                raise
            logger.info("port %d was taken meanwhile; trying another", broker.port)
            continue
        logger.info("embedded MQTT 3.1.1 broker (amqtt) on 127.0.0.1:%d", broker.port)
        return broker
