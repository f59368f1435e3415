"""Mosquitto password files: PBKDF2-SHA512 (``$7$``) hashes, written atomically."""

from __future__ import annotations

import base64
import hashlib
import secrets
from collections.abc import Mapping
from pathlib import Path

from fedmq.atomic_file import replace_file

__all__ = [
    "MOSQUITTO_ITERATIONS",
    "PasswordFile",
    "hash_password",
    "verify_password",
    "write_private_file",
]

MOSQUITTO_ITERATIONS = 101
"""Mosquitto's own default. Device secrets are 256-bit random, so the count is not what
protects them; a low count keeps a reconnect storm of a large fleet cheap for the broker."""

_SALT_BYTES = 12
_HASH_BYTES = 64
_PRIVATE_MODE = 0o600


def hash_password(
    password: str, *, salt: bytes | None = None, iterations: int = MOSQUITTO_ITERATIONS
) -> str:
    """Return the Mosquitto 2.x ``$7$`` hash of ``password`` (as mosquitto_passwd writes it)."""
    salt = secrets.token_bytes(_SALT_BYTES) if salt is None else salt
    digest = hashlib.pbkdf2_hmac("sha512", password.encode(), salt, iterations, _HASH_BYTES)
    encoded_salt, encoded_digest = (
        base64.b64encode(salt).decode(),
        base64.b64encode(digest).decode(),
    )
    return f"$7${iterations}${encoded_salt}${encoded_digest}"


def verify_password(password: str, hashed: str) -> bool:
    """Check ``password`` against a ``$7$`` hash."""
    parts = hashed.split("$")
    if len(parts) != 5 or parts[1] != "7":
        return False
    iterations, salt = int(parts[2]), base64.b64decode(parts[3])
    return secrets.compare_digest(hash_password(password, salt=salt, iterations=iterations), hashed)


def write_private_file(path: Path, text: str) -> None:
    """Replace ``path`` with ``text`` atomically, readable only by the broker's user.

    The new file gets the owner, group and (minus any world bits) mode of the file it
    replaces, so a broker running as another user (uid 1883 in the official image) can
    still read it after a reload; a new file is 0600 and owned by the caller. If the owner
    cannot be kept, the old file stays in place and PermissionError is raised.
    """
    replace_file(path, text.encode(), mode=_PRIVATE_MODE, keep_owner=True)


class PasswordFile:
    """A Mosquitto ``password_file``: ``username:hash`` lines, rewritten atomically."""

    def __init__(self, path: Path) -> None:
        self.path = path

    def entries(self) -> dict[str, str]:
        """Username -> hash, in file order; empty if the file does not exist."""
        if not self.path.exists():
            return {}
        entries: dict[str, str] = {}
        for line in self.path.read_text().splitlines():
            if line.strip() and not line.startswith("#"):
                username, _, hashed = line.partition(":")
                entries[username] = hashed
        return entries

    def set(self, username: str, password: str) -> None:
        """Add ``username`` or replace its password."""
        self.set_many({username: password})

    def set_many(self, accounts: Mapping[str, str]) -> None:
        """Add or replace every ``username: password`` of ``accounts`` in one rewrite (a
        fleet of n accounts costs O(n), where n calls of ``set`` cost O(n^2))."""
        for username in accounts:
            if not username or any(c in username for c in ":\r\n") or username != username.strip():
                raise ValueError(f"username {username!r} cannot be stored in a password file")
        entries = self.entries()
        entries.update({u: hash_password(p) for u, p in accounts.items()})
        self._write(entries)

    def remove(self, username: str) -> bool:
        """Remove ``username``; return whether it was there."""
        entries = self.entries()
        if entries.pop(username, None) is None:
            return False
        self._write(entries)
        return True

    def _write(self, entries: dict[str, str]) -> None:
        write_private_file(self.path, "".join(f"{u}:{h}\n" for u, h in entries.items()))
