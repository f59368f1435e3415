"""The replicas' share group: derived from the signing key, stable, unguessable from outside."""

from __future__ import annotations

from aggregator.mqtt_session import keyed_share_group
from serialization import SigningKey, shared_update_subscription


def test_keyed_share_group_is_stable_per_key_and_differs_between_keys() -> None:
    """Replicas holding the same key meet in one group; another key gives another group."""
    key = SigningKey.generate()
    same = SigningKey.from_pem(key.to_pem())
    assert keyed_share_group(key) == keyed_share_group(same)
    assert keyed_share_group(key) != keyed_share_group(SigningKey.generate())


def test_keyed_share_group_is_a_valid_share_group_with_96_secret_bits() -> None:
    """24 hex digits after a readable prefix, accepted as a share group."""
    group = keyed_share_group(SigningKey.generate())
    assert group.startswith("aggregators-")
    assert len(group.removeprefix("aggregators-")) == 24
    assert shared_update_subscription("t", group=group).startswith(f"$share/{group}/")
