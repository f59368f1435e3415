"""The shipped mosquitto.conf and mosquitto.dev.conf agree on everything but listeners."""

from __future__ import annotations

from pathlib import Path, PurePosixPath

from fedmq.broker_files import SHIPPED_CONFIG_DIR
from serialization.limits import DEFAULT_LIMITS

PRODUCTION = SHIPPED_CONFIG_DIR / "mosquitto.conf"
LOOPBACK = SHIPPED_CONFIG_DIR / "mosquitto.dev.conf"
LISTENER_OPTIONS = frozenset(
    {
        "listener", "protocol", "use_username_as_clientid", "bind_address", "bind_interface",
        "socket_domain", "mount_point", "max_connections", "http_dir", "max_topic_alias",
        "cafile", "capath", "certfile", "keyfile", "ciphers", "ciphers_tls1.3", "crlfile",
        "dhparamfile", "require_certificate", "tls_engine", "tls_engine_kpass_sha1",
        "tls_keyform", "tls_version", "use_identity_as_username", "use_subject_as_username",
        "psk_hint",
    }
)  # fmt: skip
"""Options that belong to a listener (mosquitto.conf(5)), TLS ones included."""
PATH_OPTIONS = frozenset({"password_file", "acl_file", "persistence_location"})
"""Options whose value is a deployment path: compared by file name only."""


def _options(text: str) -> list[tuple[str, str]]:
    """(option, value) of every non-comment line, in order."""
    lines = (line.strip() for line in text.splitlines())
    return [
        (option, value)
        for option, _, value in (line.partition(" ") for line in lines)
        if option and not option.startswith("#")
    ]


def _shared(text: str) -> list[tuple[str, str]]:
    """The options that must be identical in both files, sorted, paths by file name."""
    return sorted(
        (option, PurePosixPath(value).name if option in PATH_OPTIONS else value)
        for option, value in _options(text)
        if option not in LISTENER_OPTIONS
    )


def _listeners(text: str) -> list[dict[str, str]]:
    """Each listener's own options (including the listener line itself)."""
    sections: list[dict[str, str]] = []
    for option, value in _options(text):
        if option == "listener":
            sections.append({})
        if option in LISTENER_OPTIONS:
            sections[-1][option] = value
    return sections


def test_broker_config_files_differ_only_in_listeners() -> None:
    """Every non-listener, non-TLS option line of the two files is the same."""
    production, loopback = _shared(PRODUCTION.read_text()), _shared(LOOPBACK.read_text())
    assert production == loopback
    assert ("allow_anonymous", "false") in production
    assert ("password_file", "passwd") in production
    assert ("acl_file", "acl") in production


def test_broker_config_drift_check_sees_a_changed_option(tmp_path: Path) -> None:
    """The comparison above fails when one file's limit or path changes (it can fail)."""
    original = LOOPBACK.read_text()
    changed = original.replace("max_queued_bytes 268435456", "max_queued_bytes 1")
    renamed = original.replace("acl_file acl", "acl_file acl.other")
    assert _shared(changed) != _shared(PRODUCTION.read_text())
    assert _shared(renamed) != _shared(PRODUCTION.read_text())


def test_broker_config_client_ids_are_bound_on_the_device_listener_only() -> None:
    """Devices: client id := username (%c == %u); services keep their replica client ids."""
    production = {s["listener"]: s for s in _listeners(PRODUCTION.read_text())}
    assert production["8883"]["use_username_as_clientid"] == "true"
    assert production["1883"]["use_username_as_clientid"] == "false"
    (loopback,) = _listeners(LOOPBACK.read_text())
    assert loopback["use_username_as_clientid"] == "false"


def test_broker_config_production_listeners() -> None:
    """Devices: TLS on 8883; services: plain on 1883; client certificates stay optional."""
    listeners = {s["listener"]: s for s in _listeners(PRODUCTION.read_text())}
    assert set(listeners) == {"8883", "1883"}
    devices, services = listeners["8883"], listeners["1883"]
    assert devices["certfile"].endswith("server.crt")
    assert devices["keyfile"].endswith("server.key")
    assert devices["tls_version"] == "tlsv1.2"
    assert "require_certificate" not in devices
    assert not {"certfile", "keyfile", "cafile"} & set(services)
    text = PRODUCTION.read_text()
    assert "\n#require_certificate true\n#use_identity_as_username true\n" in text


def test_broker_config_loopback_listens_on_loopback_only() -> None:
    """The dev file has one plain listener, bound to 127.0.0.1."""
    listeners = _listeners(LOOPBACK.read_text())
    assert [s["listener"] for s in listeners] == ["1883 127.0.0.1"]
    assert not {"certfile", "keyfile", "cafile"} & set(listeners[0])


def test_broker_config_size_limits_match_the_wire_contract() -> None:
    """message_size_limit is serialization's max payload; max_packet_size caps it at 8 MiB."""
    options = dict(_options(PRODUCTION.read_text()))
    assert int(options["message_size_limit"]) == DEFAULT_LIMITS.max_payload_bytes == 4718592
    assert int(options["max_packet_size"]) == 8 * 1024 * 1024
    assert int(options["max_queued_bytes"]) // 409_600 == 655
