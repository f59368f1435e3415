"""docker-compose.yml agrees with broker_config/ and with the fedmq command line."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest
import yaml

from fedmq.cli import build_parser

ROOT = Path(__file__).resolve().parents[2]


@pytest.fixture(scope="module")
def compose() -> dict[str, Any]:
    """The parsed compose file."""
    data: dict[str, Any] = yaml.safe_load((ROOT / "docker-compose.yml").read_text())
    return data


def _conf_options(name: str) -> list[tuple[str, str]]:
    lines = (ROOT / "broker_config" / name).read_text().splitlines()
    return [
        (option, value)
        for option, _, value in (line.partition(" ") for line in lines)
        if option and not option.startswith("#")
    ]


def _mounts(service: dict[str, Any]) -> dict[str, str]:
    """Container path -> host path of a service's bind mounts and volumes."""
    return {v.split(":")[1]: v.split(":")[0] for v in service.get("volumes", [])}


def test_compose_has_the_four_services(compose: dict[str, Any]) -> None:
    """Mosquitto, Redis, the aggregator and the device fleet, each with a healthcheck."""
    services = compose["services"]
    assert set(services) == {"mosquitto", "redis", "aggregator", "device"}
    assert all("healthcheck" in s for s in services.values())


def test_compose_mounts_the_shipped_broker_config(compose: dict[str, Any]) -> None:
    """Mosquitto reads broker_config/ as shipped; every file path in mosquitto.conf lies on
    a mount, and the image's config path is the one the conf file names."""
    mosquitto = compose["services"]["mosquitto"]
    mounts = _mounts(mosquitto)
    assert mounts["/mosquitto/config"] == "./broker_config"
    assert (ROOT / "broker_config" / "mosquitto.conf").is_file()
    for option, value in _conf_options("mosquitto.conf"):
        if option in {"password_file", "acl_file", "persistence_location", "cafile"}:
            assert any(value.startswith(target + "/") for target in mounts), (option, value)


def test_compose_publishes_only_the_device_listener(compose: dict[str, Any]) -> None:
    """Port 8883 (TLS, devices) is published; 1883 (plain, services) stays on the network."""
    listeners = {value.split()[0] for option, value in _conf_options("mosquitto.conf")
                 if option == "listener"}  # fmt: skip
    published = {p.split(":")[-1] for p in compose["services"]["mosquitto"]["ports"]}
    assert listeners == {"8883", "1883"}
    assert published == {"8883"}


def test_compose_redis_is_durable(compose: dict[str, Any]) -> None:
    """AOF on with fsync always, no eviction: the update buffer survives a crash."""
    command = compose["services"]["redis"]["command"]
    pairs = dict(zip(command[1::2], command[2::2], strict=True))
    assert pairs["--appendonly"] == "yes"
    assert pairs["--appendfsync"] == "always"
    assert pairs["--maxmemory-policy"] == "noeviction"


@pytest.mark.parametrize("service", ["aggregator", "device"])
def test_compose_commands_are_valid_fedmq_commands(compose: dict[str, Any], service: str) -> None:
    """The service's command parses with fedmq's own parser, and its config lies on a mount."""
    spec = compose["services"][service]
    command = spec["command"]
    assert command[0] == "fedmq"
    args = build_parser().parse_args(command[1:])
    assert callable(args.handler)
    assert any(str(args.config).startswith(target) for target in _mounts(spec))
