"""Ed25519 keys for model releases: generation, PEM loading, signing and verification."""

from __future__ import annotations

import hashlib

from cryptography.exceptions import InvalidSignature
from cryptography.hazmat.primitives import serialization as pem
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey, Ed25519PublicKey

from serialization.errors import SerializationError, SignatureError

__all__ = ["RELEASE_CONTEXT", "SIGNATURE_BYTES", "SigningKey", "VerifyKey", "release_digest"]

RELEASE_CONTEXT = b"fedmq/v1/release\x00"
"""Domain-separation prefix hashed in front of a release body (SPEC.md "Signature")."""
SIGNATURE_BYTES = 64


def release_digest(*body: bytes | memoryview) -> bytes:
    """The 64-byte message that is signed for a release: SHA-512(RELEASE_CONTEXT || body).

    The body may be given in pieces, which are hashed in order as if joined.
    """
    digest = hashlib.sha512(RELEASE_CONTEXT)
    for piece in body:
        digest.update(piece)
    return digest.digest()


class VerifyKey:
    """An Ed25519 public key that checks release signatures."""

    __slots__ = ("_key", "key_id", "raw")

    def __init__(self, key: Ed25519PublicKey) -> None:
        self._key = key
        self.raw = key.public_bytes(pem.Encoding.Raw, pem.PublicFormat.Raw)
        self.key_id = hashlib.sha256(self.raw).hexdigest()[:16]
        """First 8 bytes of SHA-256 of the raw 32-byte key, as hex: names the key in releases."""

    @classmethod
    def from_pem(cls, data: bytes) -> VerifyKey:
        """Load a SubjectPublicKeyInfo PEM Ed25519 key."""
        try:
            key = pem.load_pem_public_key(data)
        except ValueError as exc:
            raise SerializationError(f"not a PEM public key: {exc}") from exc
        if not isinstance(key, Ed25519PublicKey):
            raise SerializationError("the PEM public key is not Ed25519")
        return cls(key)

    def to_pem(self) -> bytes:
        """SubjectPublicKeyInfo PEM."""
        return self._key.public_bytes(pem.Encoding.PEM, pem.PublicFormat.SubjectPublicKeyInfo)

    def verify(self, message: bytes, signature: bytes | memoryview) -> None:
        """Raise SignatureError unless ``signature`` is this key's signature of ``message``."""
        if len(signature) != SIGNATURE_BYTES:
            raise SignatureError(f"signature must be {SIGNATURE_BYTES} bytes")
        try:
            self._key.verify(bytes(signature), message)
        except InvalidSignature as exc:
            raise SignatureError(f"signature does not verify with key {self.key_id}") from exc

    def __repr__(self) -> str:
        return f"VerifyKey(key_id={self.key_id!r})"


class SigningKey:
    """An Ed25519 private key that signs releases; never shown in repr or logs."""

    __slots__ = ("_key", "verify_key")

    def __init__(self, key: Ed25519PrivateKey) -> None:
        self._key = key
        self.verify_key = VerifyKey(key.public_key())

    @classmethod
    def generate(cls) -> SigningKey:
        """A new random key."""
        return cls(Ed25519PrivateKey.generate())

    @classmethod
    def from_pem(cls, data: bytes) -> SigningKey:
        """Load an unencrypted PKCS#8 PEM Ed25519 private key."""
        try:
            key = pem.load_pem_private_key(data, password=None)
        except (ValueError, TypeError) as exc:
            raise SerializationError("not an unencrypted PEM private key") from exc
        if not isinstance(key, Ed25519PrivateKey):
            raise SerializationError("the PEM private key is not Ed25519")
        return cls(key)

    def to_pem(self) -> bytes:
        """Unencrypted PKCS#8 PEM (store it 0600)."""
        return self._key.private_bytes(
            pem.Encoding.PEM, pem.PrivateFormat.PKCS8, pem.NoEncryption()
        )

    @property
    def key_id(self) -> str:
        """The key id of the matching public key."""
        return self.verify_key.key_id

    def sign(self, message: bytes) -> bytes:
        """The 64-byte Ed25519 signature of ``message``."""
        return self._key.sign(message)

    def __repr__(self) -> str:
        return f"SigningKey(key_id={self.key_id!r})"
