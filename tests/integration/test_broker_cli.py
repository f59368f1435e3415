"""``fedmq broker`` end to end: provision into a config dir, run Mosquitto from it, log in."""

from __future__ import annotations

import shutil
import socket
import ssl
import subprocess
import sys
import time
import tomllib
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from cryptography import x509
from cryptography.x509 import DNSName, verification
from cryptography.x509.oid import NameOID

from aggregator.config import load_config as load_aggregator_config
from device.config import DeviceConfig, load_config
from fedmq.broker_files import SHIPPED_CONFIG_DIR, render_production_config
from fedmq.cli import main
from fedmq.local_servers import LocalServer, find_mosquitto, free_port
from fedmq.password_file import PasswordFile, verify_password
from serialization.topics import control_topic, model_topic, update_topic
from tests.conftest import SERVICE_ACCOUNT, Broker, launch_broker
from tests.integration.mqtt_peer import TIMEOUT, Peer
from tests.integration.test_acl import NOT_AUTHORIZED

pytestmark = pytest.mark.integration

REFUSED = (0x86, NOT_AUTHORIZED)


def secret_of(credentials: str | dict[str, Any]) -> str:
    """The password in the TOML that add-device (``[broker]``) or add-service/-subscriber
    (``[mqtt]``) wrote."""
    data = tomllib.loads(credentials) if isinstance(credentials, str) else credentials
    table = data["broker"] if "broker" in data else data["mqtt"]
    password: str = table["password"]
    return password


def device_config(directory: Path, credentials: str) -> DeviceConfig:
    """The DeviceConfig that ``fedmq device run`` reads from add-device's output."""
    path = directory / "device.toml"
    path.write_text(credentials)
    return load_config(path, environ={})


def run_cli(capsys: pytest.CaptureFixture[str], *args: str) -> tuple[int, str, str]:
    """Run ``fedmq broker ARGS`` in this process: (exit code, stdout, stderr)."""
    try:
        code = main(["broker", *args])
    except SystemExit as exc:
        code = exc.code if isinstance(exc.code, int) else 1
    out, err = capsys.readouterr()
    return code, out, err


def login(
    port: int, username: str | None, password: str | None, tls: ssl.SSLContext | None = None
) -> int:
    """CONNACK reason code of one login attempt (the connection is closed again)."""
    peer = Peer(port, username, password, tls=tls)
    code = peer.connect()
    if code == 0:
        peer.close()
    return code


def wait_for_login(port: int, username: str, password: str, *, accepted: bool) -> int:
    """Retry until the broker (reloading after SIGHUP) accepts or refuses the login."""
    deadline = time.monotonic() + TIMEOUT
    while True:
        code = login(port, username, password)
        if (code == 0) == accepted:
            return code
        if time.monotonic() > deadline:
            pytest.fail(f"login of {username!r} still gives {code:#x} after {TIMEOUT}s")
        time.sleep(0.02)


def connected(broker: Broker, username: str, password: str | None = None) -> Peer:
    """A connected Peer (the password defaults to the fixture's)."""
    peer = Peer(broker.port, username, password or broker.passwords[username])
    assert peer.connect() == 0
    return peer


@pytest.fixture
def private_broker(tmp_path: Path) -> Iterator[Broker]:
    """A Mosquitto of this test only; its workdir is a config dir the CLI may edit."""
    started = launch_broker(tmp_path / "broker")
    yield started
    started.server.stop()


@pytest.fixture
def config_dir(tmp_path: Path) -> Path:
    """A copy of the shipped broker_config/ (no broker running)."""
    target = tmp_path / "config"
    shutil.copytree(SHIPPED_CONFIG_DIR, target, ignore=shutil.ignore_patterns("passwd", "certs"))
    return target


def _pid(broker: Broker) -> str:
    assert broker.server.process is not None
    return str(broker.server.process.pid)


def test_broker_cli_add_device_logs_in_and_remove_revokes(
    private_broker: Broker, capsys: pytest.CaptureFixture[str], task: str, tmp_path: Path
) -> None:
    """The printed credentials log in and publish; remove-device + SIGHUP cuts them off."""
    config, pid = str(private_broker.server.workdir), _pid(private_broker)
    code, out, err = run_cli(
        capsys, "--config-dir", config, "add-device", "sensor-7", "--task", task,
        "--host", "127.0.0.1", "--port", str(private_broker.port), "--reload-pid", pid,
    )  # fmt: skip
    assert code == 0, err
    device = device_config(tmp_path, out)
    assert (device.device_id, device.task) == ("sensor-7", task)
    assert (device.broker.host, device.broker.port) == ("127.0.0.1", private_broker.port)
    secret = device.broker.password
    assert secret not in err
    assert "sent SIGHUP" in err
    wait_for_login(private_broker.port, "sensor-7", secret, accepted=True)

    aggregator = connected(private_broker, SERVICE_ACCOUNT)
    aggregator.subscribe(update_topic(task, "sensor-7"))
    sensor = connected(private_broker, "sensor-7", secret)
    assert sensor.publish(update_topic(task, "sensor-7"), b"delta") == 0
    assert aggregator.next_message().payload == b"delta"

    code, _, err = run_cli(
        capsys, "--config-dir", config, "remove-device", "sensor-7", "--reload-pid", pid
    )
    assert code == 0, err
    assert sensor.disconnects.get(timeout=TIMEOUT) >= 0x80
    assert wait_for_login(private_broker.port, "sensor-7", secret, accepted=False) in REFUSED
    assert login(private_broker.port, "dev-a", private_broker.passwords["dev-a"]) == 0
    for peer in (sensor, aggregator):
        peer.close()


def test_broker_cli_add_service_gets_the_aggregators_rights(
    private_broker: Broker, capsys: pytest.CaptureFixture[str], task: str, tmp_path: Path
) -> None:
    """A service added by the CLI publishes releases devices receive and reads updates."""
    config, out_file = str(private_broker.server.workdir), tmp_path / "agg-2.toml"
    code, out, err = run_cli(
        capsys, "--config-dir", config, "add-service", "agg-2", "--out", str(out_file),
        "--reload-pid", _pid(private_broker),
    )  # fmt: skip
    assert (code, out) == (0, ""), err
    assert out_file.stat().st_mode & 0o777 == 0o600
    secret = secret_of(out_file.read_text())
    mqtt = load_aggregator_config(out_file, environ={}).mqtt
    assert (mqtt.username, mqtt.password) == ("agg-2", secret)
    wait_for_login(private_broker.port, "agg-2", secret, accepted=True)
    service, device = connected(private_broker, "agg-2", secret), connected(private_broker, "dev-a")
    service.subscribe(update_topic(task, "dev-a"))
    device.subscribe(model_topic(task))
    assert service.publish(model_topic(task), b"release-1", retain=True) == 0
    assert device.next_message().payload == b"release-1"
    assert device.publish(update_topic(task, "dev-a"), b"update-1") == 0
    assert service.next_message().payload == b"update-1"
    assert device.publish(model_topic(task), b"fake-release") == NOT_AUTHORIZED
    for peer in (service, device):
        peer.close()


def test_broker_cli_subscriber_reads_model_releases_only(
    private_broker: Broker, capsys: pytest.CaptureFixture[str], task: str
) -> None:
    """A subscriber receives releases, nothing else, and cannot publish anywhere."""
    config = str(private_broker.server.workdir)
    code, out, err = run_cli(
        capsys, "--config-dir", config, "add-subscriber", "reader",
        "--reload-pid", _pid(private_broker),
    )  # fmt: skip
    assert code == 0, err
    secret = secret_of(out)
    wait_for_login(private_broker.port, "reader", secret, accepted=True)
    reader = connected(private_broker, "reader", secret)
    reader.subscribe(f"fl/v1/{task}/#")
    aggregator = connected(private_broker, SERVICE_ACCOUNT)
    device = connected(private_broker, "dev-a")
    assert aggregator.publish(control_topic(task), b"control") in (0, 0x10)
    assert device.publish(update_topic(task, "dev-a"), b"update") in (0, 0x10)
    for topic in (update_topic(task, "reader"), model_topic(task), control_topic(task)):
        assert reader.publish(topic, b"forged") == NOT_AUTHORIZED
    assert aggregator.publish(model_topic(task), b"release") == 0
    got = reader.next_message()
    assert (got.topic, got.payload) == (model_topic(task), b"release")
    assert reader.messages.empty()
    for peer in (reader, aggregator, device):
        peer.close()


def test_broker_cli_list_shows_every_account_and_its_kind(
    config_dir: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """list prints name, kind and whether a password is set, devices first."""
    for command, name in (("add-device", "d-1"), ("add-service", "s-1"), ("add-subscriber", "r-1")):
        assert run_cli(capsys, "--config-dir", str(config_dir), command, name)[0] == 0
    code, out, _ = run_cli(capsys, "--config-dir", str(config_dir), "list")
    assert code == 0
    rows = [line.split() for line in out.splitlines()]
    assert rows == [
        ["NAME", "KIND", "PASSWORD"],
        ["d-1", "device", "set"],
        ["aggregator", "service", "none"],
        ["s-1", "service", "set"],
        ["r-1", "subscriber", "set"],
    ]


@pytest.mark.parametrize(
    ("command", "name", "message"),
    [
        ("add-device", "a+b", "may only hold"),
        ("add-device", "a#", "may only hold"),
        ("add-device", "a/b", "may only hold"),
        ("add-device", "", "non-empty"),
        ("add-device", "x" * 65, "longer than 64"),
        ("add-device", "aggregator", "reserved for the aggregator"),
        ("add-device", "root", "reserved"),
        ("add-subscriber", "mosquitto", "reserved"),
        ("remove-device", "aggregator", "reserved for the aggregator"),
        ("issue-cert", "aggregator", "reserved for the aggregator"),
    ],
)
def test_broker_cli_refuses_bad_ids_with_exit_code_2(
    config_dir: Path, capsys: pytest.CaptureFixture[str], command: str, name: str, message: str
) -> None:
    """Bad or reserved ids exit 2 with a message on stderr and change no file."""
    before = {p.name: p.read_bytes() for p in config_dir.iterdir() if p.is_file()}
    code, out, err = run_cli(capsys, "--config-dir", str(config_dir), command, name)
    assert (code, out) == (2, "")
    assert err.startswith("fedmq broker: error: ")
    assert message in err
    assert {p.name: p.read_bytes() for p in config_dir.iterdir() if p.is_file()} == before


def test_broker_cli_exit_codes_of_the_console_script(config_dir: Path) -> None:
    """Run as a process: a bad id exits 2, a missing config dir exits 2, a duplicate 1."""

    def fedmq(*args: str) -> subprocess.CompletedProcess[str]:
        argv = [sys.executable, "-m", "fedmq.cli", "broker", "--config-dir", str(config_dir)]
        return subprocess.run([*argv, *args], capture_output=True, text=True, check=False)

    assert fedmq("add-device", "dev/1").returncode == 2
    assert fedmq("add-device", "dev-1").returncode == 0
    duplicate = fedmq("add-device", "dev-1")
    assert (duplicate.returncode, duplicate.stdout) == (1, "")
    assert "--rotate" in duplicate.stderr
    missing = subprocess.run(
        [sys.executable, "-m", "fedmq.cli", "broker", "--config-dir", "/nonexistent", "list"],
        capture_output=True, text=True, check=False,
    )  # fmt: skip
    assert missing.returncode == 2
    assert "no acl file" in missing.stderr


def test_broker_cli_secret_never_reaches_logs(
    config_dir: Path,
    capsys: pytest.CaptureFixture[str],
    caplog: pytest.LogCaptureFixture,
    tmp_path: Path,
) -> None:
    """With --out the secret is only in the 0600 file: not in logs, stdout or stderr; only
    --rotate replaces an existing --out file."""
    caplog.set_level("DEBUG")
    out_file = tmp_path / "dev-1.toml"
    code, out, err = run_cli(
        capsys, "--config-dir", str(config_dir), "add-device", "dev-1", "--out", str(out_file)
    )
    assert code == 0
    secret = secret_of(out_file.read_text())
    assert len(secret) == 43
    assert out_file.stat().st_mode & 0o777 == 0o600
    assert "dev-1" in caplog.text
    for text in (caplog.text, out, err, (config_dir / "passwd").read_text()):
        assert secret not in text
    code, _, err = run_cli(
        capsys, "--config-dir", str(config_dir), "add-device", "dev-2", "--out", str(out_file)
    )
    assert code == 2
    assert "exists" in err
    assert secret_of(out_file.read_text()) == secret
    code, _, _ = run_cli(
        capsys, "--config-dir", str(config_dir), "add-device", "dev-1", "--rotate",
        "--out", str(out_file),
    )  # fmt: skip
    assert code == 0
    rotated = secret_of(out_file.read_text())
    assert rotated != secret
    assert verify_password(rotated, PasswordFile(config_dir / "passwd").entries()["dev-1"])


def test_broker_cli_reload_pid_signals_only_mosquitto(
    config_dir: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """--reload-pid of a process that is not mosquitto is refused and it is not signalled."""
    sleeper = subprocess.Popen(["sleep", "30"])
    try:
        code, _, err = run_cli(
            capsys, "--config-dir", str(config_dir), "add-device", "dev-1",
            "--reload-pid", str(sleeper.pid),
        )  # fmt: skip
        assert code == 1
        assert "'sleep', not mosquitto" in err
        assert sleeper.poll() is None
    finally:
        sleeper.kill()
        sleeper.wait()


def _common_name(certificate: x509.Certificate) -> object:
    return certificate.subject.get_attributes_for_oid(NameOID.COMMON_NAME)[0].value


def test_broker_cli_dev_ca_and_issue_cert_make_a_verifiable_chain(
    config_dir: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """dev-ca + issue-cert write a CA, a server and a device certificate that verify."""
    assert run_cli(capsys, "--config-dir", str(config_dir), "dev-ca")[0] == 0
    assert run_cli(capsys, "--config-dir", str(config_dir), "issue-cert", "dev-a")[0] == 0
    certs = config_dir / "certs"
    ca = x509.load_pem_x509_certificate((certs / "ca.crt").read_bytes())
    server = x509.load_pem_x509_certificate((certs / "server.crt").read_bytes())
    device = x509.load_pem_x509_certificate((certs / "devices" / "dev-a.crt").read_bytes())
    policy = verification.PolicyBuilder().store(verification.Store([ca]))
    assert policy.build_server_verifier(DNSName("localhost")).verify(server, []) == [server, ca]
    assert policy.build_client_verifier().verify(device, []).chain == [device, ca]
    assert _common_name(device) == "dev-a"
    for key in ("ca.key", "server.key", "devices/dev-a.key"):
        assert (certs / key).stat().st_mode & 0o777 == 0o600
    code, _, err = run_cli(capsys, "--config-dir", str(config_dir), "dev-ca")
    assert code == 1
    assert "--force" in err
    assert x509.load_pem_x509_certificate((certs / "ca.crt").read_bytes()) == ca


def tls_handshake(port: int, context: ssl.SSLContext) -> None:
    """A bare TLS handshake with the broker (raises ssl.SSLError if it fails)."""
    with (
        socket.create_connection(("127.0.0.1", port), timeout=TIMEOUT) as sock,
        context.wrap_socket(sock, server_hostname="127.0.0.1"),
    ):
        pass


def _render_production(config_dir: Path, *, client_certificates: bool) -> tuple[int, int]:
    """Render the shipped production mosquitto.conf; return (device port, service port)."""
    device_port, service_port = free_port(), free_port()
    while service_port == device_port:
        service_port = free_port()
    render_production_config(
        config_dir,
        device_port=device_port,
        service_port=service_port,
        client_certificates=client_certificates,
    )
    return device_port, service_port


def _start(config_dir: Path, service_port: int) -> LocalServer:
    """Start Mosquitto from the rendered ``config_dir/mosquitto.conf``."""
    binary = find_mosquitto()
    assert binary is not None, "mosquitto not found: apt-get install -y mosquitto"
    server = LocalServer(
        name="mosquitto",
        argv=[binary, "-c", str(config_dir / "mosquitto.conf")],
        port=service_port,
        workdir=config_dir,
        origin=binary,
    )
    server.start()
    return server


def test_broker_tls_listener_with_password_devices(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], task: str
) -> None:
    """The production config: devices log in over TLS only, each device's client id is its
    username; services on the plain port may hold several sessions per account."""
    config = tmp_path / "prod"
    port, service_port = _render_production(config, client_certificates=False)
    assert run_cli(capsys, "--config-dir", str(config), "dev-ca")[0] == 0
    device_secret, other_secret = (
        tomllib.loads(run_cli(capsys, "--config-dir", str(config), "add-device", name)[1])
        for name in ("d-1", "d-2")
    )
    service_secret = tomllib.loads(
        run_cli(capsys, "--config-dir", str(config), "add-service", SERVICE_ACCOUNT)[1]
    )
    server = _start(config, service_port)
    try:
        tls = ssl.create_default_context(cafile=str(config / "certs" / "ca.crt"))
        device = Peer(port, "d-1", secret_of(device_secret), tls=tls)
        aggregator = Peer(server.port, SERVICE_ACCOUNT, secret_of(service_secret))
        assert (device.connect(), aggregator.connect()) == (0, 0)
        aggregator.subscribe(update_topic(task, "d-1"))
        assert device.publish(update_topic(task, "d-1"), b"over-tls") == 0
        assert aggregator.next_message().payload == b"over-tls"
        assert login(port, "d-1", "wrong", tls=tls) in REFUSED
        intruder = Peer(port, "d-2", secret_of(other_secret), client_id="d-1", tls=tls)
        assert intruder.connect() == 0
        assert intruder.publish(update_topic(task, "d-1"), b"forged") == NOT_AUTHORIZED
        assert device.connected
        assert device.publish(update_topic(task, "d-1"), b"still-d-1") == 0
        assert aggregator.next_message().payload == b"still-d-1"
        intruder.close()
        service_password = secret_of(service_secret)
        admin = Peer(service_port, SERVICE_ACCOUNT, service_password, client_id="admin-1")
        assert admin.connect() == 0
        assert aggregator.publish(model_topic(task), b"release") in (0, 0x10)
        assert aggregator.connected
        admin.close()
        with pytest.raises(ssl.SSLCertVerificationError):
            tls_handshake(port, ssl.create_default_context())
        for peer in (device, aggregator):
            peer.close()
    finally:
        server.stop()


def test_broker_tls_listener_with_client_certificates(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], task: str
) -> None:
    """With the documented option on, a device certificate's CN is the device's identity."""
    config = tmp_path / "prod"
    port, service_port = _render_production(config, client_certificates=True)
    assert run_cli(capsys, "--config-dir", str(config), "dev-ca")[0] == 0
    for device_id in ("d-1", "d-2"):
        assert run_cli(capsys, "--config-dir", str(config), "issue-cert", device_id)[0] == 0
    service = tomllib.loads(
        run_cli(capsys, "--config-dir", str(config), "add-service", SERVICE_ACCOUNT)[1]
    )
    server = _start(config, service_port)
    certs = config / "certs"
    try:
        tls = ssl.create_default_context(cafile=str(certs / "ca.crt"))
        tls.load_cert_chain(str(certs / "devices" / "d-1.crt"), str(certs / "devices" / "d-1.key"))
        device = Peer(port, None, None, tls=tls)
        aggregator = Peer(server.port, SERVICE_ACCOUNT, secret_of(service))
        assert (device.connect(), aggregator.connect()) == (0, 0)
        aggregator.subscribe(f"fl/v1/{task}/dev/+/update")
        assert device.publish(update_topic(task, "d-2"), b"as-d-2") == NOT_AUTHORIZED
        assert device.publish(update_topic(task, "d-1"), b"as-d-1") == 0
        got = aggregator.next_message()
        assert (got.topic, got.payload) == (update_topic(task, "d-1"), b"as-d-1")
        tls.maximum_version = ssl.TLSVersion.TLSv1_2
        tls_handshake(port, tls)
        no_certificate = ssl.create_default_context(cafile=str(certs / "ca.crt"))
        no_certificate.maximum_version = ssl.TLSVersion.TLSv1_2
        with pytest.raises(ssl.SSLError):
            tls_handshake(port, no_certificate)
        for peer in (device, aggregator):
            peer.close()
    finally:
        server.stop()
