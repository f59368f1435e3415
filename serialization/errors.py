"""The error tree of the wire contract: every decoder raises only these.

SerializationError (ValueError)
 +-- MalformedError           bytes that are not a well-formed fedmq message
 +-- UnsupportedVersionError  a well-formed message of a format version we do not speak
 +-- TooLargeError            a size, count or length above the configured Limits
 +-- SignatureError           a release whose Ed25519 signature does not verify
"""

from __future__ import annotations

__all__ = [
    "MalformedError",
    "SerializationError",
    "SignatureError",
    "TooLargeError",
    "UnsupportedVersionError",
]


class SerializationError(ValueError):
    """Root of every error raised while encoding, decoding or verifying a message."""

    reason: str = "malformed"
    """Short machine-readable reason, used in Receipts and metric labels."""


class MalformedError(SerializationError):
    """The bytes are not a well-formed message of the expected type."""

    reason = "malformed"


class UnsupportedVersionError(SerializationError):
    """The message declares a format version this implementation does not speak."""

    reason = "unsupported_version"

    def __init__(self, version: object) -> None:
        super().__init__(f"unsupported format version {version!r}")
        self.version = version


class TooLargeError(SerializationError):
    """A payload, count or length exceeds the configured limit."""

    reason = "too_large"

    def __init__(self, what: str, size: int, limit: int) -> None:
        super().__init__(f"{what} is {size}, above the limit of {limit}")
        self.what = what
        self.size = size
        self.limit = limit


class SignatureError(SerializationError):
    """A release whose signature is missing, malformed or does not verify."""

    reason = "bad_signature"
