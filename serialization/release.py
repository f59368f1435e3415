"""ModelRelease: a signed global model version, published retained on the model topic."""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

import msgpack
import numpy as np
from numpy.typing import NDArray

from serialization.arrays import array_from_wire, array_to_wire
from serialization.errors import MalformedError, SignatureError
from serialization.fields import Fields, Scalar, named_tensors, open_message, pack_message
from serialization.limits import DEFAULT_LIMITS, Limits
from serialization.msgpack_reader import read_msgpack
from serialization.msgpack_writer import BinChunks, Chunk, pack_chunks
from serialization.signing import SIGNATURE_BYTES, SigningKey, VerifyKey, release_digest

__all__ = ["ModelRelease"]


@dataclass(frozen=True, kw_only=True, slots=True, eq=False)
class ModelRelease:
    """Global model ``version`` of ``task``, made from ``parent_version`` and ``update_count``
    updates. On the wire it is a signed envelope around a msgpack body (SPEC.md)."""

    task: str
    version: int
    parent_version: int
    tensors: Mapping[str, NDArray[Any]]
    update_count: int = 0
    created_at: float = 0.0
    metadata: Mapping[str, Scalar] = field(default_factory=dict)
    key_id: str = ""
    """Id of the key that signed it; set from the signing key on encode, read on decode."""

    def encode(self, key: SigningKey) -> bytes:
        """The signed msgpack payload: ``{fedmq, type, body, signature}``."""
        body: list[Chunk] = []
        pack_chunks(
            {
                "task": self.task,
                "version": self.version,
                "parent_version": self.parent_version,
                "update_count": self.update_count,
                "created_at": float(self.created_at),
                "key_id": key.key_id,
                "metadata": dict(self.metadata),
                "tensors": {name: array_to_wire(t) for name, t in self.tensors.items()},
            },
            body,
            msgpack.Packer(use_bin_type=True),
        )
        signature = key.sign(release_digest(*body))
        return pack_message("release", {"body": BinChunks(tuple(body)), "signature": signature})

    @classmethod
    def decode(
        cls,
        payload: bytes | bytearray | memoryview,
        key: VerifyKey,
        *,
        limits: Limits = DEFAULT_LIMITS,
    ) -> ModelRelease:
        """Verify the signature with ``key``, then decode the body (tensors are views).

        SignatureError: the signature is missing, not a 64-byte bin, or does not verify.
        MalformedError: the envelope itself is broken (not a release map, no bin body), or
        the verified body is not a well-formed release body.
        """
        envelope = open_message(payload, "release", limits)
        body = envelope.binary("body")
        signature = envelope.mapping.get("signature")
        if not isinstance(signature, memoryview) or len(signature) != SIGNATURE_BYTES:
            raise SignatureError(f"release signature must be a bin of {SIGNATURE_BYTES} bytes")
        key.verify(release_digest(body), signature)
        decoded = read_msgpack(body, limits)
        if not isinstance(decoded, dict):
            raise MalformedError("a release body must be a msgpack map")
        fields = Fields(decoded, "release", limits)
        return cls(
            task=fields.identifier("task"),
            version=fields.integer("version", minimum=1),
            parent_version=fields.integer("parent_version"),
            update_count=fields.integer("update_count"),
            created_at=fields.number("created_at"),
            key_id=fields.text("key_id"),
            metadata=fields.scalars("metadata"),
            tensors=named_tensors(
                fields, "tensors", lambda v, budget: array_from_wire(v, limits, budget=budget)
            ),
        )

    def float32_tensors(self) -> dict[str, NDArray[np.float32]]:
        """Writable float32 copies of the tensors (for training or aggregation)."""
        return {name: np.array(t, dtype=np.float32) for name, t in self.tensors.items()}
