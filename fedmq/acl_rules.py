"""Mosquitto 2.0 ``acl_file`` rules: parsed, and evaluated exactly as Mosquitto decides."""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Literal

__all__ = ["AclAccess", "AclEntry", "AclRules", "AclSyntaxError", "topic_matches", "valid_filter"]

AclAccess = Literal["read", "write"]
"""What a client wants to do with a topic: receive a message (read) or publish (write)."""

_READ, _WRITE = 1, 2
_ACCESS_BITS = {"read": _READ, "write": _WRITE, "readwrite": _READ | _WRITE, "deny": 0}
_MAX_TOPIC_BYTES = 65535


class AclSyntaxError(ValueError):
    """A line Mosquitto refuses (it then does not start); ``line_number`` counts from 1."""

    def __init__(self, message: str, *, source: str, line_number: int, line: str) -> None:
        super().__init__(f"{source}:{line_number}: {message}: {line!r}")
        self.source = source
        self.line_number = line_number
        self.line = line


@dataclass(frozen=True, kw_only=True, slots=True)
class AclEntry:
    """One ``topic`` or ``pattern`` line: a topic filter and the rights it grants (0 = deny)."""

    topic: str
    access: int
    """Bit set: 1 read, 2 write; 0 for ``deny``."""
    line_number: int

    @property
    def denies(self) -> bool:
        """Whether this is a ``deny`` line."""
        return self.access == 0


def valid_filter(topic_filter: str) -> bool:
    """Whether ``topic_filter`` is a valid MQTT subscription filter (Mosquitto's check).

    ``+`` must fill a whole level; ``#`` must fill the last level.
    """
    if len(topic_filter.encode()) > _MAX_TOPIC_BYTES:
        return False
    levels = topic_filter.split("/")
    for index, level in enumerate(levels):
        if "+" in level and level != "+":
            return False
        if "#" in level and (level != "#" or index != len(levels) - 1):
            return False
    return True


def topic_matches(topic_filter: str, topic: str) -> bool:
    """Whether the concrete ``topic`` matches ``topic_filter`` (MQTT rules, as Mosquitto).

    ``+`` matches one level (an empty one too), ``#`` the parent level and everything
    below it; a topic starting with ``$`` matches only a filter starting with ``$``.
    """
    if not topic_filter or not topic:
        return False
    if topic_filter.startswith("$") != topic.startswith("$"):
        return False
    levels, topic_levels = topic_filter.split("/"), topic.split("/")
    for index, level in enumerate(levels):
        if level == "#":
            return True
        if index >= len(topic_levels) or level not in ("+", topic_levels[index]):
            return False
    return len(levels) == len(topic_levels)


def _expand(pattern: str, username: str | None, client_id: str) -> str:
    """``pattern`` with ``%c`` and (given a username) ``%u`` replaced, scanned left to right."""
    out: list[str] = []
    index = 0
    while index < len(pattern):
        char = pattern[index]
        if char == "%" and index < len(pattern) - 1:
            following = pattern[index + 1]
            if following == "c":
                out.append(client_id)
                index += 2
                continue
            if following == "u" and username is not None:
                out.append(username)
                index += 2
                continue
        out.append(char)
        index += 1
    return "".join(out)


def _username(rest: str) -> str:
    name = rest.strip()
    if not name:
        raise ValueError("missing username")
    return name


def _entry(rest: str, number: int) -> AclEntry:
    """``[ACCESS] FILTER`` after ``topic``/``pattern``: Mosquitto splits at the first space."""
    rest = rest.lstrip(" ")
    if not rest:
        raise ValueError("empty topic")
    first, separator, remainder = rest.partition(" ")
    access_name, topic = (first, remainder.strip()) if separator else ("readwrite", first)
    if access_name not in _ACCESS_BITS:
        raise ValueError(f"invalid topic access type {access_name!r}")
    if not topic or not valid_filter(topic):
        raise ValueError(f"invalid ACL topic {topic!r}")
    return AclEntry(topic=topic, access=_ACCESS_BITS[access_name], line_number=number)


def _deny_first(entries: list[AclEntry]) -> tuple[AclEntry, ...]:
    return tuple(e for e in entries if e.denies) + tuple(e for e in entries if not e.denies)


def _first_match(entries: tuple[AclEntry, ...], topic: str, wanted: int) -> bool | None:
    """Mosquitto's scan: a matching deny refuses, a matching grant of ``wanted`` allows."""
    for entry in entries:
        if topic_matches(entry.topic, topic):
            if entry.denies:
                return False
            if entry.access & wanted:
                return True
    return None


@dataclass(frozen=True, kw_only=True, slots=True)
class AclRules:
    """A parsed ``acl_file``: ``topic`` lines per user and the global ``pattern`` lines.

    ``users[None]`` holds the ``topic`` lines before the first ``user`` line, which
    Mosquitto applies to anonymous clients. Repeated blocks of one user are merged.
    """

    users: Mapping[str | None, tuple[AclEntry, ...]]
    patterns: tuple[AclEntry, ...]

    @classmethod
    def load(cls, path: Path) -> AclRules:
        """Parse the file at ``path`` (OSError if it cannot be read)."""
        return cls.parse(path.read_text(encoding="utf-8"), source=str(path))

    @classmethod
    def parse(cls, text: str, *, source: str = "<acl>") -> AclRules:
        """Parse ``acl_file`` text with Mosquitto 2.0's rules; AclSyntaxError where it fails.

        Comments start in column 1; words are separated by spaces; ``topic FILTER`` alone
        grants readwrite; the filter is the rest of the line, trimmed.
        """
        users: dict[str | None, list[AclEntry]] = {}
        patterns: list[AclEntry] = []
        user: str | None = None
        for number, raw in enumerate(text.split("\n"), start=1):
            line = raw.rstrip()
            if line.startswith("#") or not line.strip(" "):
                continue
            keyword, _, rest = line.lstrip(" ").partition(" ")
            try:
                if keyword == "user":
                    user = _username(rest)
                    users.setdefault(user, [])
                elif keyword in ("topic", "pattern"):
                    entry = _entry(rest, number)
                    (patterns if keyword == "pattern" else users.setdefault(user, [])).append(entry)
                else:
                    raise ValueError("invalid line")
            except ValueError as exc:
                raise AclSyntaxError(
                    str(exc), source=source, line_number=number, line=line
                ) from None
        return cls(
            users={name: _deny_first(entries) for name, entries in users.items()},
            patterns=_deny_first(patterns),
        )

    def allows(
        self, access: AclAccess, topic: str, *, username: str | None, client_id: str
    ) -> bool:
        """Whether the client may ``access`` the concrete ``topic`` (Mosquitto 2.0 semantics).

        First the user's own ``topic`` lines (``username=None``: the anonymous ones): a
        matching deny refuses, a matching grant allows. Then, if the file has patterns,
        a client whose username or client id holds ``+`` or ``#`` is refused; otherwise the
        patterns (``%u``/``%c`` substituted; those with ``%u`` skipped for anonymous
        clients) decide the same way. Anything not granted is refused.
        """
        wanted = _READ if access == "read" else _WRITE
        verdict = _first_match(self.users.get(username, ()), topic, wanted)
        if verdict is not None:
            return verdict
        if not self.patterns:
            return False
        if any(c in name for name in (username or "", client_id) for c in "+#"):
            return False
        for entry in self.patterns:
            if username is None and "%u" in entry.topic:
                continue
            if topic_matches(_expand(entry.topic, username, client_id), topic):
                if entry.denies:
                    return False
                if entry.access & wanted:
                    return True
        return False
