"""The broker's config directory: runnable copies of it, its ACL blocks and its accounts."""

from __future__ import annotations

import datetime
import enum
import fcntl
import getpass
import os
import secrets
import shutil
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Literal

from fedmq.password_file import PasswordFile, write_private_file
from serialization.errors import MalformedError
from serialization.topics import validate_identifier

__all__ = [
    "RESERVED_NAMES",
    "SERVICE_TEMPLATE",
    "SHIPPED_CONFIG_DIR",
    "SUBSCRIBER_RULES",
    "Account",
    "AccountError",
    "AccountKind",
    "AclAccess",
    "AclFile",
    "AclRule",
    "BrokerConfigError",
    "ConfigDir",
    "InvalidNameError",
    "render_loopback_config",
    "render_production_config",
]

SHIPPED_CONFIG_DIR = Path(__file__).resolve().parent.parent / "broker_config"
_TLS_FILE_OPTIONS = frozenset({"cafile", "certfile", "keyfile", "crlfile"})
_PATH_OPTIONS = frozenset({"password_file", "acl_file", "persistence_location"}) | _TLS_FILE_OPTIONS
_IMAGE_DIRS = {"/mosquitto/config/": "", "/mosquitto/data/": "data/"}
"""Where the official image's directories land in a rendered copy."""
_CLIENT_CERTIFICATE_OPTIONS = ("require_certificate", "use_identity_as_username")
_TOOL_MARK = "# fedmq broker "
"""Start of the comment line that ``AclFile.add_user`` writes above each block it adds."""

AclAccess = Literal["read", "write", "readwrite", "deny"]
_ACCESSES: dict[str, AclAccess] = {a: a for a in ("read", "write", "readwrite", "deny")}


def _rendered_path(value: str, target_dir: Path) -> str:
    for image_dir, local in _IMAGE_DIRS.items():
        if value.startswith(image_dir):
            value = local + value[len(image_dir) :]
            break
    if value.startswith("/"):
        return value
    resolved = str(target_dir / value)
    return resolved + "/" if value.endswith("/") else resolved


def _render(
    conf_name: str,
    target_dir: Path,
    source_dir: Path,
    listener: Callable[[str], str],
    uncomment: Sequence[str] = (),
) -> Path:
    target_dir.mkdir(parents=True, exist_ok=True)
    shutil.copyfile(source_dir / "acl", target_dir / "acl")
    (target_dir / "acl").chmod(0o600)
    (target_dir / "passwd").touch(mode=0o600, exist_ok=True)
    (target_dir / "data").mkdir(exist_ok=True)
    lines = [f"user {getpass.getuser()}"]
    found: set[str] = set()
    for source_line in (source_dir / conf_name).read_text().splitlines():
        line = source_line
        option, _, value = line.partition(" ")
        if option.startswith("#") and option[1:] in uncomment:
            found.add(option[1:])
            option, line = option[1:], line[1:]
        if option == "listener":
            line = f"listener {listener(value)}"
        elif option in _PATH_OPTIONS:
            line = f"{option} {_rendered_path(value, target_dir)}"
        lines.append(line)
    if missing := set(uncomment) - found:
        raise ValueError(f"{source_dir / conf_name} has no commented-out {sorted(missing)}")
    conf = target_dir / "mosquitto.conf"
    conf.write_text("\n".join(lines) + "\n")
    return conf


def render_loopback_config(
    target_dir: Path, *, port: int, source_dir: Path = SHIPPED_CONFIG_DIR
) -> Path:
    """Copy the shipped loopback config and ACL into ``target_dir`` and return the conf path.

    Only the listener port, the file locations and the OS user change; every other line,
    and the ACL file, are the shipped ones byte for byte. The broker keeps running as the
    user who starts it (Mosquitto would otherwise drop root to ``mosquitto``, which cannot
    read a private temp dir). The password file starts empty (0600).
    """

    def listener(value: str) -> str:
        host = value.split()[1] if len(value.split()) > 1 else "127.0.0.1"
        return f"{port} {host}"

    return _render("mosquitto.dev.conf", target_dir, source_dir, listener)


def render_production_config(
    target_dir: Path,
    *,
    device_port: int,
    service_port: int,
    source_dir: Path = SHIPPED_CONFIG_DIR,
    client_certificates: bool = False,
) -> Path:
    """Render the production ``mosquitto.conf`` to run outside its container, on loopback.

    The device listener (8883, TLS) moves to ``device_port`` and the service listener
    (1883) to ``service_port``, both on 127.0.0.1; the image's paths map into
    ``target_dir`` (certificates are expected in ``target_dir/certs``). With
    ``client_certificates`` the documented option lines are uncommented, exactly as an
    operator would: devices then log in with a client certificate instead of a password.
    """
    ports = {"8883": device_port, "1883": service_port}

    def listener(value: str) -> str:
        return f"{ports[value.split(maxsplit=1)[0]]} 127.0.0.1"

    uncomment = _CLIENT_CERTIFICATE_OPTIONS if client_certificates else ()
    return _render("mosquitto.conf", target_dir, source_dir, listener, uncomment)


@dataclass(frozen=True, kw_only=True, slots=True)
class AclRule:
    """One ``topic ACCESS FILTER`` line of a user block."""

    access: AclAccess
    topic: str

    @property
    def line(self) -> str:
        """The line as Mosquitto reads it."""
        return f"topic {self.access} {self.topic}"

    @property
    def writes(self) -> bool:
        """Whether the rule lets the user publish."""
        return self.access in ("write", "readwrite")


def _parse_rule(rest: str) -> AclRule:
    words = rest.split(maxsplit=1)
    if len(words) == 2 and words[0] in _ACCESSES:
        return AclRule(access=_ACCESSES[words[0]], topic=words[1].strip())
    return AclRule(access="readwrite", topic=rest.strip())


class AclFile:
    """A Mosquitto ``acl_file`` seen as its ``user`` blocks; edits are atomic rewrites.

    ``pattern`` lines, comments and the anonymous ``topic`` lines before the first ``user``
    line are kept as they are. Mosquitto merges repeated blocks of one user; so does this.
    """

    def __init__(self, path: Path) -> None:
        self.path = path

    def _lines(self) -> list[str]:
        return self.path.read_text().splitlines() if self.path.exists() else []

    def users(self) -> dict[str, tuple[AclRule, ...]]:
        """Username -> its ``topic`` rules, in file order."""
        blocks: dict[str, list[AclRule]] = {}
        user: str | None = None
        for line in self._lines():
            if line.startswith("#"):
                continue
            keyword, _, rest = line.strip().partition(" ")
            if keyword == "user":
                user = rest.strip()
                blocks.setdefault(user, [])
            elif keyword == "topic" and user is not None:
                blocks[user].append(_parse_rule(rest))
        return {name: tuple(rules) for name, rules in blocks.items()}

    def add_user(self, username: str, rules: Sequence[AclRule], *, comment: str) -> None:
        """Append a block for ``username`` (which must have none) under a ``comment`` line."""
        if username in self.users():
            raise ValueError(f"{self.path} already has a block for user {username!r}")
        lines = self._lines()
        while lines and not lines[-1].strip():
            lines.pop()
        block = [_TOOL_MARK + comment, f"user {username}", *(rule.line for rule in rules)]
        write_private_file(self.path, "\n".join([*lines, "", *block]) + "\n")

    def remove_user(self, username: str) -> bool:
        """Remove every block of ``username`` (and the comment ``add_user`` put above it)."""
        lines = self._lines()
        keep = [True] * len(lines)
        found = False
        for start, line in enumerate(lines):
            if line.strip() != f"user {username}":
                continue
            found = True
            end = start + 1
            while end < len(lines) and lines[end].strip().partition(" ")[0] == "topic":
                end += 1
            head = start
            if head > 0 and lines[head - 1].startswith(_TOOL_MARK):
                head -= 1
                if head > 0 and not lines[head - 1].strip():
                    head -= 1
            keep[head:end] = [False] * (end - head)
        if found:
            kept = (line for line, k in zip(lines, keep, strict=True) if k)
            write_private_file(self.path, "".join(f"{line}\n" for line in kept))
        return found


SERVICE_TEMPLATE = "aggregator"
"""The shipped service account; ``add-service`` copies its ACL block."""
RESERVED_NAMES = frozenset({"admin", "anonymous", "mosquitto", "root"})
"""Names (compared case-insensitively) that no account may take."""
SUBSCRIBER_RULES = (
    AclRule(access="read", topic="fl/v1/+/model"),
    AclRule(access="deny", topic="fl/v1/+/control"),
    AclRule(access="deny", topic="fl/v1/+/dev/#"),
)
"""A read-only account: model releases only. The deny on ``dev/#`` also cancels what the
ACL's ``pattern`` lines grant every user under its own name (publishing updates)."""
_SECRET_BYTES = 32


class AccountKind(enum.StrEnum):
    """What an account is, as the ACL defines it."""

    DEVICE = "device"
    """No ``user`` block: only the ``pattern`` rights under its own name."""
    SERVICE = "service"
    """A ``user`` block that may publish (the aggregator's rights)."""
    SUBSCRIBER = "subscriber"
    """A ``user`` block that may only read."""


@dataclass(frozen=True, kw_only=True, slots=True)
class Account:
    """One account of a config dir."""

    name: str
    kind: AccountKind
    has_password: bool


class BrokerConfigError(Exception):
    """Root of every refusal of a config-dir operation; the message says what to do."""

    def __init__(self, message: str, *, name: str | None = None) -> None:
        super().__init__(message)
        self.name = name


class InvalidNameError(BrokerConfigError):
    """A name this kind of account may not have: syntax, reserved, or another's name."""


class AccountError(BrokerConfigError):
    """An account that exists already, does not exist, or cannot be built."""


class ConfigDir:
    """A broker config directory holding ``acl`` and ``passwd`` (mosquitto.conf's names).

    Device ids, service and subscriber names share one namespace (case-insensitively), so
    a device can never hold a service's name. Each change takes an exclusive lock on the
    directory, so concurrent runs of ``fedmq broker`` cannot lose each other's edits.
    """

    def __init__(self, path: Path) -> None:
        if not (path / "acl").is_file():
            raise BrokerConfigError(f"{path} is not a broker config dir: it has no acl file")
        self.path = path
        self.passwords = PasswordFile(path / "passwd")
        self.acl = AclFile(path / "acl")

    @contextmanager
    def locked(self) -> Iterator[None]:
        """Hold the directory's exclusive lock (flock on the directory itself)."""
        fd = os.open(self.path, os.O_RDONLY)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX)
            yield
        finally:
            os.close(fd)

    def accounts(self) -> dict[str, Account]:
        """Every account: the ACL's user blocks and the password file's users."""
        passwords = self.passwords.entries()
        accounts: dict[str, Account] = {}
        for name, rules in self.acl.users().items():
            writes = any(rule.writes for rule in rules)
            kind = AccountKind.SERVICE if writes else AccountKind.SUBSCRIBER
            accounts[name] = Account(name=name, kind=kind, has_password=name in passwords)
        for name in passwords:
            if name not in accounts:
                accounts[name] = Account(name=name, kind=AccountKind.DEVICE, has_password=True)
        return accounts

    def check_name(self, name: str, kind: AccountKind) -> None:
        """Raise InvalidNameError unless ``name`` may be (or is) an account of ``kind``."""
        try:
            validate_identifier(name, f"{kind} name")
        except MalformedError as exc:
            raise InvalidNameError(str(exc), name=name) from exc
        folded = name.casefold()
        if folded in RESERVED_NAMES:
            raise InvalidNameError(f"{name!r} is a reserved name", name=name)
        if kind is not AccountKind.SERVICE and folded == SERVICE_TEMPLATE:
            raise InvalidNameError(f"{name!r} is reserved for the aggregator service", name=name)
        for other in self.accounts().values():
            if other.name.casefold() != folded:
                continue
            if other.name != name:
                raise InvalidNameError(
                    f"{name!r} differs only in case from the {other.kind} {other.name!r}",
                    name=name,
                )
            if other.kind is not kind:
                raise InvalidNameError(
                    f"{name!r} is a {other.kind} account, not a {kind}", name=name
                )

    def add(self, name: str, kind: AccountKind, *, rotate: bool = False) -> str:
        """Create the account (or, with ``rotate``, replace its secret); return the secret.

        The secret is 256 random bits; only its hash is stored. The ACL block of a
        service or subscriber is written before the password, so a crash in between
        leaves a block no one can log in to.
        """
        with self.locked():
            self.check_name(name, kind)
            existing = self.accounts().get(name)
            if existing is not None and existing.has_password and not rotate:
                raise AccountError(
                    f"{kind} {name!r} exists already; pass --rotate to replace its secret",
                    name=name,
                )
            if kind is not AccountKind.DEVICE and existing is None:
                self.acl.add_user(name, self._rules(kind), comment=self._comment(name, kind))
            secret = secrets.token_urlsafe(_SECRET_BYTES)
            self.passwords.set(name, secret)
            return secret

    def remove(self, name: str, kind: AccountKind) -> None:
        """Revoke the account: its password, and its ACL block (the template's is kept)."""
        with self.locked():
            self.check_name(name, kind)
            if name not in self.accounts():
                raise AccountError(f"there is no {kind} {name!r} in {self.path}", name=name)
            self.passwords.remove(name)
            if kind is not AccountKind.DEVICE and name != SERVICE_TEMPLATE:
                self.acl.remove_user(name)

    def _rules(self, kind: AccountKind) -> tuple[AclRule, ...]:
        if kind is AccountKind.SUBSCRIBER:
            return SUBSCRIBER_RULES
        template = self.acl.users().get(SERVICE_TEMPLATE)
        if not template:
            raise AccountError(
                f"{self.acl.path} has no 'user {SERVICE_TEMPLATE}' block to copy for a service"
            )
        return template

    @staticmethod
    def _comment(name: str, kind: AccountKind) -> str:
        now = datetime.datetime.now(datetime.UTC).strftime("%Y-%m-%dT%H:%M:%SZ")
        what = "the aggregator's rights" if kind is AccountKind.SERVICE else "read-only"
        return f"add-{kind} {name} ({now}): {what}"
