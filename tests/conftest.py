"""Session fixtures: a real Mosquitto (from the shipped broker_config/) and a real Redis."""

from __future__ import annotations

import hashlib
import itertools
import secrets
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path

import pytest
import redis

from fedmq.local_servers import LocalServer, ServerStartError, start_mosquitto, start_redis
from fedmq.password_file import PasswordFile

SERVICE_ACCOUNT = "aggregator"
DEVICE_ACCOUNTS = ("dev-a", "dev-b", "dev-c")


@dataclass(kw_only=True)
class Broker:
    """A running Mosquitto with the shipped config and some provisioned accounts."""

    server: LocalServer
    passwords: dict[str, str] = field(repr=False)
    host: str = "127.0.0.1"

    @property
    def port(self) -> int:
        """The listener's port."""
        return self.server.port

    def add_account(self, username: str, password: str | None = None) -> str:
        """Provision ``username`` (password file + SIGHUP) and return its password."""
        password = password or secrets.token_urlsafe(24)
        PasswordFile(self.server.workdir / "passwd").set(username, password)
        self.passwords[username] = password
        self.server.reload()
        return password


def launch_broker(workdir: Path) -> Broker:
    """Start Mosquitto in ``workdir`` with the standard test accounts, or fail the test."""
    passwords = {name: secrets.token_urlsafe(24) for name in (SERVICE_ACCOUNT, *DEVICE_ACCOUNTS)}
    try:
        server = start_mosquitto(workdir, accounts=passwords)
    except ServerStartError as exc:
        pytest.fail(f"cannot start Mosquitto for the tests: {exc}", pytrace=False)
    return Broker(server=server, passwords=passwords)


def launch_redis(workdir: Path) -> LocalServer:
    """Start a Redis server in ``workdir``, or fail the test with the reason."""
    try:
        return start_redis(workdir)
    except ServerStartError as exc:
        pytest.fail(f"cannot start a Redis server for the tests: {exc}", pytrace=False)


@pytest.fixture(scope="session")
def broker(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Broker]:
    """One Mosquitto for the session, started from a copy of broker_config/."""
    started = launch_broker(tmp_path_factory.mktemp("mosquitto"))
    yield started
    started.server.stop()


@pytest.fixture(scope="session")
def redis_server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[LocalServer]:
    """One Redis server for the session, AOF on, in a temp dir."""
    server = launch_redis(tmp_path_factory.mktemp("redis"))
    yield server
    server.stop()


_databases = itertools.cycle(range(16))


@pytest.fixture
def redis_url(redis_server: LocalServer) -> str:
    """URL of a Redis database that is empty when the test starts."""
    url = f"redis://127.0.0.1:{redis_server.port}/{next(_databases)}"
    with redis.Redis.from_url(url) as client:
        client.flushdb()
    return url


@pytest.fixture
def task(request: pytest.FixtureRequest) -> str:
    """A task name unique to this test, so tests never see each other's retained topics."""
    digest = hashlib.sha256(request.node.nodeid.encode()).hexdigest()[:10]
    return f"t{digest}{secrets.token_hex(2)}"
