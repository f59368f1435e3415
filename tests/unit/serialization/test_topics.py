"""Topics: builders, parser and the identifier rule that keeps ids to one safe level."""

from __future__ import annotations

from collections.abc import Callable

import pytest
from hypothesis import given

from serialization import (
    DEFAULT_ROOT,
    MalformedError,
    ParsedTopic,
    TopicKind,
    control_topic,
    model_topic,
    parse_topic,
    receipt_topic,
    shared_update_subscription,
    status_topic,
    update_topic,
    validate_identifier,
)
from serialization.topics import MAX_IDENTIFIER_LENGTH
from tests.unit.serialization.strategies import identifiers


def test_topics_builders_match_the_design_table() -> None:
    """Every builder yields the DESIGN.md topic."""
    assert DEFAULT_ROOT == "fl/v1"
    assert update_topic("har", "dev-1") == "fl/v1/har/dev/dev-1/update"
    assert receipt_topic("har", "dev-1") == "fl/v1/har/dev/dev-1/receipt"
    assert status_topic("har", "dev-1") == "fl/v1/har/dev/dev-1/status"
    assert model_topic("har") == "fl/v1/har/model"
    assert control_topic("har") == "fl/v1/har/control"
    assert shared_update_subscription("har") == "$share/aggregators/fl/v1/har/dev/+/update"


def test_topics_custom_root_and_group() -> None:
    """root and share group are parameters."""
    assert model_topic("t", root="x/y") == "x/y/t/model"
    assert shared_update_subscription("t", root="r", group="g2") == "$share/g2/r/t/dev/+/update"
    assert parse_topic("r/t/dev/d/status", root="r") == ParsedTopic(
        task="t", kind="status", device_id="d"
    )


@given(task=identifiers, device=identifiers)
def test_topics_parse_inverts_every_builder(task: str, device: str) -> None:
    """parse_topic(builder(...)) gives back task, kind and device id."""
    builders: tuple[tuple[TopicKind, Callable[[str, str], str]], ...] = (
        ("update", update_topic),
        ("receipt", receipt_topic),
        ("status", status_topic),
    )
    for kind, build in builders:
        assert parse_topic(build(task, device)) == ParsedTopic(
            task=task, kind=kind, device_id=device
        )
    assert parse_topic(model_topic(task)) == ParsedTopic(task=task, kind="model")
    assert parse_topic(control_topic(task)) == ParsedTopic(task=task, kind="control")


@given(value=identifiers)
def test_topics_valid_identifiers_are_returned(value: str) -> None:
    """Anything matching [A-Za-z0-9][A-Za-z0-9_.-]{0,63} is accepted unchanged."""
    assert validate_identifier(value) == value


@pytest.mark.parametrize(
    "value",
    [
        "", "+", "#", "/", "a+b", "a#", "a/b", "$SYS", "$share", "-a", ".a", "_a", "a b",
        "a\x00", "é", "a\n", "x" * (MAX_IDENTIFIER_LENGTH + 1),
    ],
)  # fmt: skip
def test_topics_unsafe_identifiers_are_refused(value: str) -> None:
    """Wildcards, separators, leading $ / punctuation, non-ASCII, empty and 65 chars fail."""
    with pytest.raises(MalformedError):
        validate_identifier(value)
    with pytest.raises(MalformedError):
        update_topic(value, "d")
    with pytest.raises(MalformedError):
        model_topic(value)


def test_topics_identifier_length_limit_is_64() -> None:
    """64 characters pass, 65 do not."""
    assert MAX_IDENTIFIER_LENGTH == 64
    assert validate_identifier("a" * 64) == "a" * 64


def test_topics_identifier_must_be_a_string() -> None:
    """A non-string id raises MalformedError, not TypeError."""
    with pytest.raises(MalformedError):
        validate_identifier(5)  # type: ignore[arg-type]


@pytest.mark.parametrize(
    "topic",
    [
        "fl/v1/har", "fl/v1/har/model/x", "fl/v1/har/dev/d/update/x", "fl/v1/har/dev/d/other",
        "fl/v1/har/dev/+/update", "fl/v1/+/model", "fl/v1/har/dev//update", "fl/v2/har/model",
        "$share/aggregators/fl/v1/har/dev/d/update", "/fl/v1/har/model", "fl/v1/har/xdev/d/update",
    ],
)  # fmt: skip
def test_topics_parse_refuses_non_fedmq_topics(topic: str) -> None:
    """Wildcards, wrong depth, unknown kinds and foreign roots raise MalformedError."""
    with pytest.raises(MalformedError):
        parse_topic(topic)
