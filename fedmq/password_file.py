"""Mosquitto password files: PBKDF2-SHA512 (``$7$``) hashes, written atomically."""

from __future__ import annotations

import base64
import hashlib
import os
import secrets
import tempfile
from pathlib import Path

__all__ = ["MOSQUITTO_ITERATIONS", "PasswordFile", "hash_password", "verify_password"]

MOSQUITTO_ITERATIONS = 101
"""Mosquitto's own default. Device secrets are 256-bit random, so the count is not what
protects them; a low count keeps a reconnect storm of a large fleet cheap for the broker."""

_SALT_BYTES = 12
_HASH_BYTES = 64


def hash_password(
    password: str, *, salt: bytes | None = None, iterations: int = MOSQUITTO_ITERATIONS
) -> str:
    """Return the Mosquitto 2.x ``$7$`` hash of ``password`` (as mosquitto_passwd writes it)."""
    salt = secrets.token_bytes(_SALT_BYTES) if salt is None else salt
    digest = hashlib.pbkdf2_hmac("sha512", password.encode(), salt, iterations, _HASH_BYTES)
    return "$7${}${}${}".format(
        iterations, base64.b64encode(salt).decode(), base64.b64encode(digest).decode()
    )


def verify_password(password: str, hashed: str) -> bool:
    """Check ``password`` against a ``$7$`` hash."""
    parts = hashed.split("$")
    if len(parts) != 5 or parts[1] != "7":
        return False
    iterations, salt = int(parts[2]), base64.b64decode(parts[3])
    return secrets.compare_digest(hash_password(password, salt=salt, iterations=iterations), hashed)


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
        entries = self.entries()
        entries[username] = hash_password(password)
        self._write(entries)

    def remove(self, username: str) -> bool:
        """Remove ``username``; return whether it was there."""
        entries = self.entries()
        if entries.pop(username, None) is None:
            return False
        self._write(entries)
        return True

    def _write(self, entries: dict[str, str]) -> None:
        self.path.parent.mkdir(parents=True, exist_ok=True)
        fd, tmp = tempfile.mkstemp(dir=self.path.parent, prefix=".passwd-")
        try:
            with os.fdopen(fd, "w") as handle:
                handle.writelines(f"{user}:{hashed}\n" for user, hashed in entries.items())
                handle.flush()
                os.fsync(handle.fileno())
            os.chmod(tmp, 0o600)
            os.replace(tmp, self.path)
        except BaseException:
            Path(tmp).unlink(missing_ok=True)
            raise
