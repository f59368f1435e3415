"""Signed releases: round-trips, and every way a signature can be wrong."""

from __future__ import annotations

import hashlib
from typing import Any

import msgpack
import numpy as np
import pytest
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PublicKey
from hypothesis import given, settings
from hypothesis import strategies as st

from serialization import (
    MalformedError,
    ModelRelease,
    SerializationError,
    SignatureError,
    SigningKey,
    UnsupportedVersionError,
    VerifyKey,
)
from serialization.signing import RELEASE_CONTEXT, release_digest
from tests.unit.serialization.strategies import model_releases

KEY = SigningKey.generate()
OTHER = SigningKey.generate()
RELEASE = ModelRelease(
    task="har",
    version=3,
    parent_version=2,
    update_count=5,
    created_at=12.5,
    metadata={"strategy": "fedavg"},
    tensors={"w": np.arange(6, dtype=np.float32).reshape(2, 3), "b": np.zeros(3, np.float64)},
)
PAYLOAD = RELEASE.encode(KEY)


def _envelope() -> dict[str, Any]:
    doc: dict[str, Any] = msgpack.unpackb(PAYLOAD)
    return doc


def _pack(doc: object) -> bytes:
    packed: bytes = msgpack.packb(doc, use_bin_type=True)
    return packed


@settings(max_examples=50)
@given(release=model_releases())
def test_release_round_trips(release: ModelRelease) -> None:
    """decode(encode(r)) equals r and names the signing key."""
    decoded = ModelRelease.decode(release.encode(KEY), KEY.verify_key)
    assert (decoded.task, decoded.version, decoded.parent_version) == (
        release.task,
        release.version,
        release.parent_version,
    )
    assert (decoded.update_count, decoded.created_at) == (release.update_count, release.created_at)
    assert dict(decoded.metadata) == dict(release.metadata)
    assert decoded.key_id == KEY.key_id
    assert list(decoded.tensors) == list(release.tensors)
    for name, tensor in release.tensors.items():
        assert decoded.tensors[name].dtype == tensor.dtype
        assert decoded.tensors[name].tobytes() == tensor.tobytes()


def test_release_signature_covers_exactly_context_and_body() -> None:
    """The signature is Ed25519 over SHA-512(b"fedmq/v1/release\\0" || body bytes)."""
    envelope = _envelope()
    assert list(envelope) == ["fedmq", "type", "body", "signature"]
    assert RELEASE_CONTEXT == b"fedmq/v1/release\x00"
    message = hashlib.sha512(RELEASE_CONTEXT + envelope["body"]).digest()
    assert release_digest(envelope["body"]) == message
    public = Ed25519PublicKey.from_public_bytes(KEY.verify_key.raw)
    public.verify(envelope["signature"], message)


def test_release_body_key_order_is_the_spec_order() -> None:
    """Body keys come in SPEC.md's order."""
    body = msgpack.unpackb(_envelope()["body"])
    assert list(body) == [
        "task", "version", "parent_version", "update_count", "created_at", "key_id",
        "metadata", "tensors",
    ]  # fmt: skip


def test_release_key_id_is_sha256_of_the_raw_public_key() -> None:
    """key_id = first 8 bytes of SHA-256(raw 32-byte public key), lowercase hex."""
    raw = KEY.verify_key.raw
    assert len(raw) == 32
    assert KEY.key_id == hashlib.sha256(raw).digest()[:8].hex()
    assert len(KEY.key_id) == 16


def test_release_forged_by_another_key_is_refused() -> None:
    """A release signed by another key raises SignatureError."""
    with pytest.raises(SignatureError):
        ModelRelease.decode(RELEASE.encode(OTHER), KEY.verify_key)


@given(position=st.integers(min_value=0), bit=st.integers(0, 7))
def test_release_any_tampered_body_bit_is_refused(position: int, bit: int) -> None:
    """Flipping any single bit of the signed body raises SignatureError."""
    envelope = _envelope()
    body = bytearray(envelope["body"])
    body[position % len(body)] ^= 1 << bit
    with pytest.raises(SignatureError):
        ModelRelease.decode(_pack({**envelope, "body": bytes(body)}), KEY.verify_key)


@pytest.mark.parametrize(
    "signature",
    [None, b"", bytes(63), bytes(65), "x" * 64, 0, [0] * 64],
    ids=["nil", "empty", "63", "65", "str", "int", "list"],
)
def test_release_malformed_signature_is_a_signature_error(signature: object) -> None:
    """A signature that is not a 64-byte bin raises SignatureError."""
    with pytest.raises(SignatureError):
        ModelRelease.decode(_pack({**_envelope(), "signature": signature}), KEY.verify_key)


def test_release_truncated_and_missing_signatures_are_signature_errors() -> None:
    """Truncated (63 bytes) and absent signatures raise SignatureError, reason bad_signature."""
    envelope = _envelope()
    unsigned = {k: v for k, v in envelope.items() if k != "signature"}
    for doc in ({**envelope, "signature": envelope["signature"][:63]}, unsigned):
        with pytest.raises(SignatureError) as info:
            ModelRelease.decode(_pack(doc), KEY.verify_key)
        assert info.value.reason == "bad_signature"


def test_release_zero_signature_is_refused() -> None:
    """An all-zero 64-byte signature does not verify."""
    with pytest.raises(SignatureError):
        ModelRelease.decode(_pack({**_envelope(), "signature": bytes(64)}), KEY.verify_key)


@pytest.mark.parametrize(
    ("change", "error"),
    [
        ({"body": None}, MalformedError),
        ({"body": "text"}, MalformedError),
        ({"type": "update"}, MalformedError),
        ({"fedmq": 2}, UnsupportedVersionError),
    ],
)
def test_release_broken_envelope_is_malformed(
    change: dict[str, object], error: type[SerializationError]
) -> None:
    """An envelope without a bin body, or of another type or version, is not a signature issue."""
    with pytest.raises(error):
        ModelRelease.decode(_pack({**_envelope(), **change}), KEY.verify_key)


def _signed(body: object) -> bytes:
    raw = body if isinstance(body, bytes) else _pack(body)
    return _pack(
        {"fedmq": 1, "type": "release", "body": raw, "signature": KEY.sign(release_digest(raw))}
    )


@pytest.mark.parametrize("change", [{"version": 0}, {"task": "a b"}, {"key_id": 5}])
def test_release_signed_but_invalid_body_is_malformed(change: dict[str, object]) -> None:
    """A correctly signed body that breaks the body rules raises MalformedError."""
    body = {**msgpack.unpackb(_envelope()["body"]), **change}
    with pytest.raises(MalformedError):
        ModelRelease.decode(_signed(body), KEY.verify_key)
    for raw in (b"\xc0", b"\x81"):
        with pytest.raises(MalformedError):
            ModelRelease.decode(_signed(raw), KEY.verify_key)


def test_release_keys_round_trip_through_pem() -> None:
    """PEM export/import keeps the key: the reloaded keys sign and verify interchangeably."""
    signer = SigningKey.from_pem(KEY.to_pem())
    verifier = VerifyKey.from_pem(KEY.verify_key.to_pem())
    assert (signer.key_id, verifier.key_id) == (KEY.key_id, KEY.key_id)
    ModelRelease.decode(RELEASE.encode(signer), verifier)
    assert repr(KEY) == f"SigningKey(key_id={KEY.key_id!r})"


@pytest.mark.parametrize("data", [b"", b"not pem", KEY.to_pem()])
def test_release_bad_public_pem_is_a_serialization_error(data: bytes) -> None:
    """Garbage or a private key where a public key is expected raises SerializationError."""
    with pytest.raises(SerializationError):
        VerifyKey.from_pem(data)


def test_release_float32_tensors_are_writable_copies() -> None:
    """float32_tensors converts every tensor to a fresh writable float32 array."""
    decoded = ModelRelease.decode(PAYLOAD, KEY.verify_key)
    tensors = decoded.float32_tensors()
    assert {t.dtype for t in tensors.values()} == {np.dtype(np.float32)}
    assert all(t.flags.writeable for t in tensors.values())
    assert not np.shares_memory(tensors["w"], decoded.tensors["w"])
    assert tensors["w"].tolist() == [[0, 1, 2], [3, 4, 5]]
