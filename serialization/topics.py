"""Builders and parsers for every MQTT topic of the fedmq protocol."""

from __future__ import annotations

import re
from dataclasses import dataclass
from typing import Literal

from serialization.errors import MalformedError

__all__ = [
    "DEFAULT_ROOT",
    "DEVICE_TOPIC_KINDS",
    "MAX_IDENTIFIER_LENGTH",
    "SHARED_GROUP",
    "ParsedTopic",
    "TopicKind",
    "control_topic",
    "model_topic",
    "parse_topic",
    "receipt_topic",
    "shared_update_subscription",
    "status_topic",
    "update_topic",
    "validate_identifier",
]

DEFAULT_ROOT = "fl/v1"
SHARED_GROUP = "aggregators"
MAX_IDENTIFIER_LENGTH = 64

TopicKind = Literal["update", "receipt", "status", "model", "control"]
DEVICE_TOPIC_KINDS: tuple[TopicKind, ...] = ("update", "receipt", "status")

_IDENTIFIER = re.compile(r"[A-Za-z0-9][A-Za-z0-9_.-]*")


def validate_identifier(value: str, what: str = "identifier") -> str:
    """Return ``value`` if it is a safe task or device id, else raise MalformedError.

    A safe id is 1..64 characters of ``[A-Za-z0-9_.-]``, starting with a letter or
    digit: it can never contain the MQTT wildcards ``+`` and ``#``, a level separator
    ``/``, or a leading ``$``, so it is always exactly one topic level.
    """
    if not isinstance(value, str) or not value:
        raise MalformedError(f"{what} must be a non-empty string")
    if len(value) > MAX_IDENTIFIER_LENGTH:
        raise MalformedError(f"{what} is longer than {MAX_IDENTIFIER_LENGTH} characters")
    if _IDENTIFIER.fullmatch(value) is None:
        raise MalformedError(
            f"{what} {value!r} may only hold letters, digits, '_', '.', '-' "
            "and must start with a letter or digit"
        )
    return value


def _device_topic(root: str, task: str, device_id: str, kind: TopicKind) -> str:
    validate_identifier(task, "task")
    validate_identifier(device_id, "device id")
    return f"{root}/{task}/dev/{device_id}/{kind}"


def update_topic(task: str, device_id: str, *, root: str = DEFAULT_ROOT) -> str:
    """Topic a device publishes its ModelUpdates on."""
    return _device_topic(root, task, device_id, "update")


def receipt_topic(task: str, device_id: str, *, root: str = DEFAULT_ROOT) -> str:
    """Topic the aggregator sends a device its Receipts on."""
    return _device_topic(root, task, device_id, "receipt")


def status_topic(task: str, device_id: str, *, root: str = DEFAULT_ROOT) -> str:
    """Retained topic holding a device's online/offline DeviceStatus."""
    return _device_topic(root, task, device_id, "status")


def model_topic(task: str, *, root: str = DEFAULT_ROOT) -> str:
    """Retained topic holding the task's latest signed ModelRelease."""
    return f"{root}/{validate_identifier(task, 'task')}/model"


def control_topic(task: str, *, root: str = DEFAULT_ROOT) -> str:
    """Retained topic holding the task's Control message."""
    return f"{root}/{validate_identifier(task, 'task')}/control"


def shared_update_subscription(
    task: str, *, root: str = DEFAULT_ROOT, group: str = SHARED_GROUP
) -> str:
    """Shared-subscription filter through which aggregator replicas split the updates."""
    validate_identifier(group, "share group")
    return f"$share/{group}/{root}/{validate_identifier(task, 'task')}/dev/+/update"


@dataclass(frozen=True, slots=True, kw_only=True)
class ParsedTopic:
    """A topic taken apart: its task, kind and (for device topics) device id."""

    task: str
    kind: TopicKind
    device_id: str | None = None


def parse_topic(topic: str, *, root: str = DEFAULT_ROOT) -> ParsedTopic:
    """Parse a concrete fedmq topic; raise MalformedError for anything else."""
    prefix = root + "/"
    if not topic.startswith(prefix):
        raise MalformedError(f"topic {topic!r} is not under {root!r}")
    levels = topic[len(prefix) :].split("/")
    if len(levels) == 2 and levels[1] in ("model", "control"):
        kind: TopicKind = "model" if levels[1] == "model" else "control"
        return ParsedTopic(task=validate_identifier(levels[0], "task"), kind=kind)
    if len(levels) == 4 and levels[1] == "dev" and levels[3] in DEVICE_TOPIC_KINDS:
        device_kind = next(k for k in DEVICE_TOPIC_KINDS if k == levels[3])
        return ParsedTopic(
            task=validate_identifier(levels[0], "task"),
            kind=device_kind,
            device_id=validate_identifier(levels[2], "device id"),
        )
    raise MalformedError(f"topic {topic!r} is not a fedmq topic")
