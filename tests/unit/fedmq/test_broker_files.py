"""ACL blocks, account rules and rendered configs of a broker config dir."""

from __future__ import annotations

import base64
import shutil
import threading
from pathlib import Path

import pytest

from fedmq.broker_files import (
    SHIPPED_CONFIG_DIR,
    SUBSCRIBER_RULES,
    AccountError,
    AccountKind,
    AclFile,
    AclRule,
    BrokerConfigError,
    ConfigDir,
    InvalidNameError,
    render_loopback_config,
    render_production_config,
)
from fedmq.password_file import verify_password

AGGREGATOR_RULES = (
    AclRule(access="read", topic="fl/v1/+/dev/+/update"),
    AclRule(access="read", topic="fl/v1/+/dev/+/status"),
    AclRule(access="write", topic="fl/v1/+/dev/+/receipt"),
    AclRule(access="readwrite", topic="fl/v1/+/model"),
    AclRule(access="readwrite", topic="fl/v1/+/control"),
)
"""The aggregator's rights as DESIGN.md states them (independent of the shipped file)."""


@pytest.fixture
def config(tmp_path: Path) -> ConfigDir:
    """A config dir holding a copy of the shipped ACL and no passwords."""
    shutil.copyfile(SHIPPED_CONFIG_DIR / "acl", tmp_path / "acl")
    return ConfigDir(tmp_path)


def test_acl_file_reads_the_shipped_aggregator_block() -> None:
    """The shipped ACL has exactly one user block, the aggregator's, with DESIGN's rights."""
    assert AclFile(SHIPPED_CONFIG_DIR / "acl").users() == {"aggregator": AGGREGATOR_RULES}


def test_acl_file_add_then_remove_restores_the_file(tmp_path: Path) -> None:
    """Adding blocks and removing them again gives back the original bytes."""
    path = tmp_path / "acl"
    shutil.copyfile(SHIPPED_CONFIG_DIR / "acl", path)
    original = path.read_text()
    acl = AclFile(path)
    acl.add_user("svc-1", AGGREGATOR_RULES, comment="add-service svc-1")
    acl.add_user("reader", SUBSCRIBER_RULES, comment="add-subscriber reader")
    text = path.read_text()
    assert (
        "\n# fedmq broker add-service svc-1\nuser svc-1\ntopic read fl/v1/+/dev/+/update\n" in text
    )
    assert acl.users()["reader"] == SUBSCRIBER_RULES
    assert acl.remove_user("svc-1") is True
    assert list(acl.users()) == ["aggregator", "reader"]
    assert acl.remove_user("reader") is True
    assert acl.remove_user("reader") is False
    assert path.read_text() == original


def test_acl_file_parses_mosquitto_syntax(tmp_path: Path) -> None:
    """Access defaults to readwrite, repeated blocks merge, patterns and comments are skipped."""
    path = tmp_path / "acl"
    path.write_text(
        "topic read anon/#\npattern write x/%u\nuser u1\ntopic t/1\n# user no\n"
        "user u2\ntopic deny t/#\nuser u1\ntopic write t/2\n"
    )
    assert AclFile(path).users() == {
        "u1": (AclRule(access="readwrite", topic="t/1"), AclRule(access="write", topic="t/2")),
        "u2": (AclRule(access="deny", topic="t/#"),),
    }
    with pytest.raises(ValueError, match="already has a block"):
        AclFile(path).add_user("u2", (), comment="again")


@pytest.mark.parametrize(
    "name",
    ["", "a+b", "a#", "a/b", "$SYS", "-lead", "a b", "a:b", "x" * 65, "root", "Admin",
     "aggregator", "AGGREGATOR"],
)  # fmt: skip
def test_config_dir_refuses_bad_device_ids(config: ConfigDir, name: str) -> None:
    """Wildcards, separators, empty, too long and reserved names are never device ids."""
    with pytest.raises(InvalidNameError) as info:
        config.add(name, AccountKind.DEVICE)
    assert info.value.name == name
    assert config.passwords.entries() == {}


def test_config_dir_add_device_stores_only_a_hash_of_a_256_bit_secret(config: ConfigDir) -> None:
    """The secret is 32 random bytes; the password file holds its hash, never the secret."""
    secret = config.add("dev-1", AccountKind.DEVICE)
    assert len(base64.urlsafe_b64decode(secret + "=")) == 32
    assert verify_password(secret, config.passwords.entries()["dev-1"])
    assert secret not in (config.path / "passwd").read_text()
    assert config.acl.users() == {"aggregator": AGGREGATOR_RULES}


def test_config_dir_add_existing_needs_rotate(config: ConfigDir) -> None:
    """Adding an existing device fails; with rotate the new secret replaces the old one."""
    old = config.add("dev-1", AccountKind.DEVICE)
    with pytest.raises(AccountError, match="--rotate"):
        config.add("dev-1", AccountKind.DEVICE)
    new = config.add("dev-1", AccountKind.DEVICE, rotate=True)
    hashed = config.passwords.entries()["dev-1"]
    assert verify_password(new, hashed)
    assert not verify_password(old, hashed)


def test_config_dir_names_are_one_namespace(config: ConfigDir) -> None:
    """A name held by one kind (in any letter case) is refused for every other name or kind."""
    config.add("dev-1", AccountKind.DEVICE)
    config.add("svc-1", AccountKind.SERVICE)
    config.add("reader", AccountKind.SUBSCRIBER)
    refused = [
        ("dev-1", AccountKind.SERVICE),
        ("dev-1", AccountKind.SUBSCRIBER),
        ("DEV-1", AccountKind.DEVICE),
        ("svc-1", AccountKind.DEVICE),
        ("Svc-1", AccountKind.SERVICE),
        ("reader", AccountKind.DEVICE),
        ("aggregator", AccountKind.SUBSCRIBER),
    ]
    for name, kind in refused:
        with pytest.raises(InvalidNameError):
            config.add(name, kind)
    assert sorted(config.passwords.entries()) == ["dev-1", "reader", "svc-1"]


def test_config_dir_accounts_and_their_acl_blocks(config: ConfigDir) -> None:
    """A service copies the aggregator's block, a subscriber gets read-only rules."""
    config.add("dev-1", AccountKind.DEVICE)
    config.add("svc-1", AccountKind.SERVICE)
    config.add("reader", AccountKind.SUBSCRIBER)
    users = config.acl.users()
    assert users["svc-1"] == AGGREGATOR_RULES
    assert users["reader"] == SUBSCRIBER_RULES
    assert not any(rule.writes for rule in users["reader"])
    kinds = {a.name: (a.kind, a.has_password) for a in config.accounts().values()}
    assert kinds == {
        "aggregator": (AccountKind.SERVICE, False),
        "svc-1": (AccountKind.SERVICE, True),
        "reader": (AccountKind.SUBSCRIBER, True),
        "dev-1": (AccountKind.DEVICE, True),
    }


def test_config_dir_remove(config: ConfigDir) -> None:
    """Removing drops the password and the block; the aggregator's block stays as template."""
    original_acl = config.acl.path.read_text()
    config.add("dev-1", AccountKind.DEVICE)
    config.add("svc-1", AccountKind.SERVICE)
    config.add("aggregator", AccountKind.SERVICE)
    with pytest.raises(InvalidNameError, match="service account, not a device"):
        config.remove("svc-1", AccountKind.DEVICE)
    config.remove("dev-1", AccountKind.DEVICE)
    config.remove("svc-1", AccountKind.SERVICE)
    config.remove("aggregator", AccountKind.SERVICE)
    with pytest.raises(AccountError, match="no device 'dev-1'"):
        config.remove("dev-1", AccountKind.DEVICE)
    assert config.passwords.entries() == {}
    assert config.acl.path.read_text() == original_acl


def test_config_dir_add_service_needs_the_aggregator_block(config: ConfigDir) -> None:
    """Without a block to copy, add-service refuses and writes nothing."""
    config.acl.remove_user("aggregator")
    with pytest.raises(AccountError, match="no 'user aggregator' block"):
        config.add("svc-1", AccountKind.SERVICE)
    assert config.passwords.entries() == {}


def test_config_dir_requires_an_acl_file(tmp_path: Path) -> None:
    """A directory without an acl file is not a config dir."""
    with pytest.raises(BrokerConfigError, match="no acl file"):
        ConfigDir(tmp_path)


def test_config_dir_concurrent_adds_lose_nothing(config: ConfigDir) -> None:
    """Two writers adding devices at once both land every device (directory lock)."""

    def add_many(prefix: str) -> None:
        for i in range(15):
            ConfigDir(config.path).add(f"{prefix}-{i}", AccountKind.DEVICE)

    threads = [threading.Thread(target=add_many, args=(p,)) for p in ("a", "b")]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert len(config.passwords.entries()) == 30


def test_render_loopback_config_changes_only_port_and_paths(tmp_path: Path) -> None:
    """The rendered dev conf keeps every line but the listener and the file locations."""
    conf = render_loopback_config(tmp_path, port=4242)
    rendered = conf.read_text().splitlines()
    source = (SHIPPED_CONFIG_DIR / "mosquitto.dev.conf").read_text().splitlines()
    assert rendered[0].startswith("user ")
    changed = {(a, b) for a, b in zip(source, rendered[1:], strict=True) if a != b}
    assert changed == {
        ("listener 1883 127.0.0.1", "listener 4242 127.0.0.1"),
        ("password_file passwd", f"password_file {tmp_path}/passwd"),
        ("acl_file acl", f"acl_file {tmp_path}/acl"),
        ("persistence_location data/", f"persistence_location {tmp_path}/data/"),
    }


def test_render_production_config_maps_image_paths_and_listeners(tmp_path: Path) -> None:
    """Image paths land in the target dir; both listeners move to loopback ports."""
    plain = render_production_config(tmp_path / "p", device_port=1001, service_port=1002)
    lines = set(plain.read_text().splitlines())
    assert {"listener 1001 127.0.0.1", "listener 1002 127.0.0.1"} <= lines
    assert f"certfile {tmp_path}/p/certs/server.crt" in lines
    assert f"persistence_location {tmp_path}/p/data/" in lines
    assert "require_certificate true" not in lines
    certs = render_production_config(
        tmp_path / "c", device_port=1001, service_port=1002, client_certificates=True
    )
    assert {"require_certificate true", "use_identity_as_username true"} <= set(
        certs.read_text().splitlines()
    )
