"""Password hashes match mosquitto_passwd; private files are replaced atomically."""

from __future__ import annotations

import base64
import os
import shutil
import subprocess
from pathlib import Path

import pytest

from fedmq.password_file import PasswordFile, hash_password, verify_password, write_private_file


def _mosquitto_passwd() -> str:
    found = shutil.which("mosquitto_passwd") or shutil.which(
        "mosquitto_passwd", path="/usr/bin:/usr/sbin:/usr/local/bin"
    )
    if found is None:
        pytest.fail("mosquitto_passwd not found: apt-get install -y mosquitto", pytrace=False)
    return found


def test_hash_password_equals_mosquitto_passwd_output(tmp_path: Path) -> None:
    """With mosquitto_passwd's salt and iterations, our hash is its line byte for byte."""
    path = tmp_path / "passwd"
    subprocess.run([_mosquitto_passwd(), "-c", "-b", str(path), "dev-a", "s3cret pass"], check=True)
    username, _, reference = path.read_text().strip().partition(":")
    _, scheme, iterations, salt, _digest = reference.split("$")
    assert (username, scheme) == ("dev-a", "7")
    ours = hash_password("s3cret pass", salt=base64.b64decode(salt), iterations=int(iterations))
    assert ours == reference
    assert PasswordFile(path).entries() == {"dev-a": reference}


def test_verify_password_accepts_only_the_right_password(tmp_path: Path) -> None:
    """verify_password checks mosquitto_passwd's hashes and ours, and rejects others."""
    path = tmp_path / "passwd"
    subprocess.run([_mosquitto_passwd(), "-c", "-b", str(path), "u", "right"], check=True)
    reference = path.read_text().strip().partition(":")[2]
    assert verify_password("right", reference)
    assert not verify_password("wrong", reference)
    assert verify_password("x", hash_password("x"))
    assert not verify_password("x", "$6$abc$def")


def test_hash_password_salts_every_hash() -> None:
    """Two hashes of one password differ (fresh 12-byte salt) and both verify."""
    first, second = hash_password("same"), hash_password("same")
    assert first != second
    assert len(base64.b64decode(first.split("$")[3])) == 12
    assert verify_password("same", first)
    assert verify_password("same", second)


def test_password_file_set_and_remove_round_trip(tmp_path: Path) -> None:
    """set adds or replaces one user's hash; remove deletes it and reports whether it did."""
    passwords = PasswordFile(tmp_path / "passwd")
    passwords.set("dev-a", "one")
    passwords.set("dev-b", "two")
    passwords.set("dev-a", "three")
    entries = passwords.entries()
    assert list(entries) == ["dev-a", "dev-b"]
    assert verify_password("three", entries["dev-a"])
    assert passwords.remove("dev-a") is True
    assert passwords.remove("dev-a") is False
    assert list(passwords.entries()) == ["dev-b"]
    assert "two" not in (tmp_path / "passwd").read_text()


def test_password_file_set_many_provisions_a_fleet_in_one_rewrite(tmp_path: Path) -> None:
    """set_many adds new users and replaces existing ones in one write, keeping file order;
    a bad name anywhere in the batch leaves the file as it was."""
    passwords = PasswordFile(tmp_path / "passwd")
    passwords.set("dev-a", "old")
    passwords.set_many({f"dev-{i}": f"pw-{i}" for i in range(200)} | {"dev-a": "new"})
    entries = passwords.entries()
    assert list(entries)[:2] == ["dev-a", "dev-0"]
    assert len(entries) == 201
    assert verify_password("new", entries["dev-a"])
    assert verify_password("pw-199", entries["dev-199"])
    before = (tmp_path / "passwd").read_text()
    with pytest.raises(ValueError, match="cannot be stored"):
        passwords.set_many({"dev-z": "x", "a:b": "y"})
    assert (tmp_path / "passwd").read_text() == before


@pytest.mark.parametrize("username", ["a:b", "a\nb", "", " a"])
def test_password_file_refuses_unstorable_usernames(tmp_path: Path, username: str) -> None:
    """A name that would break the username:hash line format is refused."""
    with pytest.raises(ValueError, match="cannot be stored"):
        PasswordFile(tmp_path / "passwd").set(username, "x")
    assert not (tmp_path / "passwd").exists()


def test_write_private_file_new_file_is_0600(tmp_path: Path) -> None:
    """A new file is readable by its owner only and no temp file is left behind."""
    path = tmp_path / "sub" / "secret"
    write_private_file(path, "hello\n")
    assert path.read_text() == "hello\n"
    assert path.stat().st_mode & 0o777 == 0o600
    assert sorted(p.name for p in path.parent.iterdir()) == ["secret"]


def test_write_private_file_keeps_owner_and_drops_world_bits(tmp_path: Path) -> None:
    """Replacing keeps the owner, group and group bits of the old file (the broker's user)."""
    path = tmp_path / "passwd"
    path.write_text("old\n")
    path.chmod(0o644)
    if os.geteuid() == 0:
        os.chown(path, 1883, 1883)
    before = path.stat()
    write_private_file(path, "new\n")
    after = path.stat()
    assert path.read_text() == "new\n"
    assert after.st_ino != before.st_ino
    assert (after.st_uid, after.st_gid) == (before.st_uid, before.st_gid)
    assert after.st_mode & 0o777 == 0o640
