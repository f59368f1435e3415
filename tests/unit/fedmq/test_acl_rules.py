"""The acl_file evaluator decides as Mosquitto 2.0 does, on the shipped ACL and on edge cases."""

from __future__ import annotations

import shutil
from pathlib import Path

import pytest

from fedmq.acl_rules import AclAccess, AclRules, AclSyntaxError, topic_matches, valid_filter
from fedmq.broker_files import SHIPPED_CONFIG_DIR, AccountKind, ConfigDir
from serialization.topics import control_topic, model_topic, update_topic
from tests.integration.test_acl import ACCOUNTS, READERS, TOPIC_KINDS, WRITERS, topic_of

TASK = "t1"


@pytest.fixture(scope="module")
def shipped() -> AclRules:
    """broker_config/acl as shipped."""
    return AclRules.load(SHIPPED_CONFIG_DIR / "acl")


@pytest.mark.parametrize("kind", TOPIC_KINDS)
@pytest.mark.parametrize("account", ACCOUNTS)
def test_acl_rules_shipped_acl_matches_the_mosquitto_matrix(
    shipped: AclRules, account: str, kind: str
) -> None:
    """Every cell of test_acl.py's matrix (checked there on the real Mosquitto) agrees."""
    topic = topic_of(kind, TASK)
    assert shipped.allows("write", topic, username=account, client_id=account) == (
        account in WRITERS[kind]
    )
    assert shipped.allows("read", topic, username=account, client_id=account) == (
        account in READERS[kind]
    )


def test_acl_rules_rights_follow_the_username_not_the_client_id(shipped: AclRules) -> None:
    """dev-c calling itself dev-a may still write only dev-c's update topic."""
    own, other = update_topic(TASK, "dev-c"), update_topic(TASK, "dev-a")
    assert shipped.allows("write", own, username="dev-c", client_id="dev-a")
    assert not shipped.allows("write", other, username="dev-c", client_id="dev-a")


def test_acl_rules_give_anonymous_clients_only_the_public_patterns(shipped: AclRules) -> None:
    """Without a username the %u patterns are skipped: model and control stay readable.

    (So anonymous clients must be refused at login: allow_anonymous false, and the
    embedded broker's auth plugin.)
    """
    for kind in TOPIC_KINDS:
        topic = topic_of(kind, TASK)
        assert not shipped.allows("write", topic, username=None, client_id="dev-a")
        assert shipped.allows("read", topic, username=None, client_id="dev-a") == (
            kind in ("model", "control")
        )


def test_acl_rules_refuse_usernames_with_wildcards(shipped: AclRules) -> None:
    """A username holding + or # gets nothing from the patterns, even the public model."""
    assert shipped.allows("read", model_topic(TASK), username="dev-x", client_id="x")
    for name in ("dev+", "dev#", "+", "#"):
        assert not shipped.allows("read", model_topic(TASK), username=name, client_id="x")


def test_acl_rules_added_accounts_get_the_documented_rights(tmp_path: Path) -> None:
    """A subscriber (fedmq broker add-subscriber) reads models only; a service is an aggregator."""
    shutil.copyfile(SHIPPED_CONFIG_DIR / "acl", tmp_path / "acl")
    config = ConfigDir(tmp_path)
    config.add("reader", AccountKind.SUBSCRIBER)
    config.add("agg-2", AccountKind.SERVICE)
    rules = AclRules.load(tmp_path / "acl")
    for kind in TOPIC_KINDS:
        topic = topic_of(kind, TASK)
        assert rules.allows("read", topic, username="reader", client_id="r") == (kind == "model")
        assert not rules.allows("write", topic, username="reader", client_id="r")
        for access in ("read", "write"):
            assert rules.allows(access, topic, username="agg-2", client_id="x") == (
                rules.allows(access, topic, username="aggregator", client_id="y")
            )
    own_update = update_topic(TASK, "reader")
    assert not rules.allows("write", own_update, username="reader", client_id="reader")
    assert rules.allows("write", own_update, username="dev-z", client_id="dev-z") is False
    assert rules.allows("write", update_topic(TASK, "dev-z"), username="dev-z", client_id="d")


TRICKY_ACL = """\
topic read anon/#
topic write anonw/x
user alice
topic deny secret/#
topic read shared/+
topic write out/alice
topic readwrite both/#
topic read #
user bob
topic read fl/v1/+/dev/#
pattern write fl/v1/+/dev/%u/update
pattern read in/%c/#
pattern deny shared/blocked
pattern read shared/#
pattern readwrite mixed/%u/%c
pattern read pct/%%u/%x
pattern read anonu/%u
user alice
topic read merged/x
"""

OBSERVED_ON_MOSQUITTO: list[tuple[str | None, str, AclAccess, str, bool]] = [
    ("alice", "a1", "read", "secret/a", False),
    ("alice", "a1", "read", "anything/else", True),
    ("alice", "a1", "write", "fl/v1/t/dev/alice/update", True),
    ("alice", "a1", "read", "shared/blocked", True),
    ("bob", "b1", "read", "shared/blocked", False),
    ("bob", "b1", "read", "shared/other", True),
    ("bob", "b1", "read", "shared/x/y", True),
    ("carol", "cc", "read", "in/cc/x", True),
    ("carol", "cc", "read", "in/cc", True),
    ("carol", "cc", "read", "in/other/x", False),
    ("carol", "cc", "write", "mixed/carol/cc", True),
    ("carol", "cc", "read", "mixed/carol/cc", True),
    ("carol", "zz", "write", "mixed/carol/cc", False),
    ("ev+il", "e1", "read", "shared/other", False),
    ("ev+il", "e1", "read", "in/e1/x", False),
    ("carol", "c#1", "read", "shared/other", False),
    ("carol", "c+1", "read", "shared/other", False),
    ("alice", "a+1", "read", "anything/else", True),
    ("alice", "a1", "read", "merged/x", True),
    ("alice", "a1", "write", "shared/a", False),
    ("alice", "a1", "write", "both/z", True),
    ("alice", "a1", "write", "out/alice", True),
    ("alice", "a1", "read", "out/alice", True),
    ("carol", "cc", "read", "pct/%carol/%x", True),
    ("carol", "cc", "read", "pct/%%u/%x", False),
    ("sl/ash", "s1", "write", "fl/v1/t/dev/sl/ash/update", True),
    (None, "anon1", "read", "anon/x", True),
    (None, "anon1", "read", "in/anon1/x", True),
    (None, "anon1", "read", "anonu/%u", False),
    (None, "anon1", "write", "anonw/x", True),
    (None, "anon1", "write", "anon/x", False),
    ("carol", "cc", "read", "anon/x", False),
]
"""What Mosquitto 2.0.11 did with TRICKY_ACL (allow_anonymous true): PUBACK codes of
MQTT 5 publishes for write, delivery of a superuser's publish for read."""


@pytest.mark.parametrize(
    ("username", "client_id", "access", "topic", "allowed"), OBSERVED_ON_MOSQUITTO
)
def test_acl_rules_agree_with_mosquitto_on_edge_cases(
    username: str | None, client_id: str, access: AclAccess, topic: str, allowed: bool
) -> None:
    """Deny-first per list, user lines before patterns, %u/%c, wildcard names, anonymous."""
    rules = AclRules.parse(TRICKY_ACL)
    assert rules.allows(access, topic, username=username, client_id=client_id) is allowed


def test_acl_rules_parse_keeps_deny_lines_first_and_merges_blocks() -> None:
    """A deny written after a grant still wins; repeated user blocks add up."""
    rules = AclRules.parse("user u\ntopic read a/#\ntopic deny a/b\nuser v\nuser u\ntopic b\n")
    assert [(e.topic, e.access) for e in rules.users["u"]] == [("a/b", 0), ("a/#", 1), ("b", 3)]
    assert not rules.allows("read", "a/b", username="u", client_id="c")
    assert rules.allows("read", "a/c", username="u", client_id="c")
    assert rules.allows("write", "b", username="u", client_id="c")
    assert rules.users["v"] == ()


def test_acl_rules_parse_reads_mosquitto_line_syntax() -> None:
    """Access word optional, filter is the trimmed rest (spaces kept), CRLF and blanks ok."""
    rules = AclRules.parse("# c\r\n\r\nuser  u \r\ntopic read  a b/+ \r\n   topic readwrite\r\n")
    assert [(e.topic, e.access, e.line_number) for e in rules.users["u"]] == [
        ("a b/+", 1, 4),
        ("readwrite", 3, 5),
    ]
    assert rules.allows("read", "a b/x", username="u", client_id="c")


@pytest.mark.parametrize(
    ("text", "line_number", "message"),
    [
        ("user u\ntopic reed a\n", 2, "invalid topic access type 'reed'"),
        ("pattern read a/b#\n", 1, "invalid ACL topic 'a/b#'"),
        ("topic read a/#/b\n", 1, "invalid ACL topic 'a/#/b'"),
        ("\nuser\n", 2, "missing username"),
        ("topic\n", 1, "empty topic"),
        ("  # an indented comment\n", 1, "invalid line"),
        ("\ttopic read a\n", 1, "invalid line"),
        ("users u\n", 1, "invalid line"),
    ],
)
def test_acl_rules_parse_refuses_what_mosquitto_refuses(
    text: str, line_number: int, message: str
) -> None:
    """Mosquitto does not start with these files; the error names the line."""
    with pytest.raises(AclSyntaxError) as error:
        AclRules.parse(text, source="acl")
    assert error.value.line_number == line_number
    assert str(error.value).startswith(f"acl:{line_number}: {message}")


@pytest.mark.parametrize(
    ("topic_filter", "topic", "expected"),
    [
        ("a/b", "a/b", True),
        ("a/b", "a/c", False),
        ("a/+", "a/b", True),
        ("a/+", "a/", True),
        ("a/+", "a/b/c", False),
        ("a/+/c", "a/b/c", True),
        ("+/+", "/", True),
        ("a/#", "a", True),
        ("a/#", "a/b/c", True),
        ("a/#", "ab", False),
        ("#", "a/b", True),
        ("#", "$SYS/x", False),
        ("+/x", "$SYS/x", False),
        ("$SYS/#", "$SYS/x", True),
        ("", "a", False),
        ("a", "", False),
    ],
)
def test_acl_rules_topic_matches_follows_mqtt(
    topic_filter: str, topic: str, expected: bool
) -> None:
    """MQTT 3.1.1 section 4.7 matching, $-topics excluded from leading wildcards."""
    assert topic_matches(topic_filter, topic) is expected


@pytest.mark.parametrize(
    ("topic_filter", "expected"),
    [("a/+/b", True), ("#", True), ("a/#", True), ("a+", False), ("a/#/b", False), ("#a", False)],
)
def test_acl_rules_valid_filter_places_wildcards(topic_filter: str, expected: bool) -> None:
    """+ fills a level; # fills the last level."""
    assert valid_filter(topic_filter) is expected


def test_acl_rules_shipped_acl_grants_the_aggregator_no_device_writes(shipped: AclRules) -> None:
    """The aggregator writes receipts, model and control, never a device's update."""
    assert shipped.allows("write", control_topic(TASK), username="aggregator", client_id="r1")
    assert not shipped.allows(
        "write", update_topic(TASK, "dev-a"), username="aggregator", client_id="r1"
    )
