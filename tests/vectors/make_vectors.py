"""Writes the wire-contract test vectors: deterministic payloads and their expected values.

Run ``python tests/vectors/make_vectors.py`` to rewrite every file in this directory; a
re-run reproduces them byte for byte (fixed seeds, fixed test keys, deterministic Ed25519).
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import re
import sys
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import msgpack
import numpy as np
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey
from numpy.typing import NDArray

from serialization import (
    Codec,
    Control,
    DeviceStatus,
    EncodedTensor,
    ModelRelease,
    ModelUpdate,
    Receipt,
    SigningKey,
    encode_delta,
)
from serialization.arrays import array_to_wire
from serialization.signing import release_digest
from tests.vectors.handmade import foreign_receipt, foreign_status, invalid_cases

__all__ = [
    "FORGER_KEY_SEED",
    "TEST_KEY_SEED",
    "VECTORS_DIR",
    "Vector",
    "array_json",
    "build_vectors",
    "forger_signing_key",
    "main",
    "vector_signing_key",
    "write_vectors",
]

VECTORS_DIR = Path(__file__).resolve().parent
TEST_KEY_SEED = hashlib.sha256(b"fedmq test vector signing key - NOT A SECRET").digest()
"""Seed of the TEST Ed25519 key that signs the release vectors (published: never deploy)."""
FORGER_KEY_SEED = hashlib.sha256(b"fedmq test vector forger key - NOT A SECRET").digest()
"""Seed of a second key that forges the ``invalid_release_forged`` vector."""
SIGNING_KEY_FILE = "test_signing_key.pem"
VERIFY_KEY_FILE = "test_verify_key.pem"
UPDATE_ID = bytes.fromhex("00112233445566778899aabbccddeeff")


@dataclass(frozen=True, kw_only=True, slots=True)
class Vector:
    """One payload file and its expectation: decoded values, or the error class it raises."""

    name: str
    message: str
    description: str
    payload: bytes
    values: dict[str, Any] | None = None
    error: str | None = None
    canonical: bool = True
    """True when our encoder, given ``values``, produces exactly ``payload``."""
    extra: dict[str, Any] = field(default_factory=dict)

    def expectation(self) -> dict[str, Any]:
        """The JSON document written beside the payload."""
        doc: dict[str, Any] = {
            "message": self.message,
            "description": self.description,
            "payload": f"{self.name}.msgpack",
            "valid": self.error is None,
        }
        if self.error is None:
            doc["canonical"] = self.canonical
            doc["values"] = self.values
        else:
            doc["error"] = self.error
        doc.update(self.extra)
        return doc


def vector_signing_key() -> SigningKey:
    """The TEST release key (its seed is public; it signs only these vectors)."""
    return SigningKey(Ed25519PrivateKey.from_private_bytes(TEST_KEY_SEED))


def forger_signing_key() -> SigningKey:
    """A key that is not the test key."""
    return SigningKey(Ed25519PrivateKey.from_private_bytes(FORGER_KEY_SEED))


def array_json(array: NDArray[Any]) -> dict[str, Any]:
    """``{dtype, shape, data}`` with ``data`` the flat C-order values."""
    wire = array_to_wire(array)
    return {"dtype": wire["dtype"], "shape": list(array.shape), "data": array.reshape(-1).tolist()}


def _tensor_json(tensor: EncodedTensor) -> dict[str, Any]:
    doc: dict[str, Any] = {"shape": list(tensor.shape), "values": array_json(tensor.values)}
    if tensor.scale is not None:
        doc["scale"] = tensor.scale
    if tensor.indices is not None:
        doc["indices"] = array_json(tensor.indices)
    return doc


def _dense_json(tensor: EncodedTensor) -> dict[str, Any]:
    # SPEC.md "Decoding to dense float32", written out independently of EncodedTensor.
    if tensor.indices is not None:
        dense = np.zeros(int(np.prod(tensor.shape)), dtype=np.float32)
        dense[tensor.indices.astype(np.int64)] = tensor.values
    elif tensor.scale is not None:
        dense = tensor.values.astype(np.float32) * np.float32(tensor.scale)
    else:
        dense = tensor.values.astype(np.float32)
    return array_json(dense.reshape(tensor.shape))


def _update_json(update: ModelUpdate) -> dict[str, Any]:
    return {
        "task": update.task,
        "device_id": update.device_id,
        "update_id": update.update_id.hex(),
        "base_version": update.base_version,
        "num_samples": update.num_samples,
        "codec": update.codec,
        "tensors": {name: _tensor_json(t) for name, t in update.tensors.items()},
        "dense": {name: _dense_json(t) for name, t in update.tensors.items()},
        "metrics": dict(update.metrics),
        "created_at": update.created_at,
    }


def _update(codec: Codec) -> ModelUpdate:
    rng = np.random.default_rng(20240601)
    delta: dict[str, NDArray[np.float32]] = {
        "layer1.weight": (rng.standard_normal((3, 4)) / 10).astype(np.float32),
        "layer1.bias": (rng.standard_normal(4) / 10).astype(np.float32),
        "temperature": np.array(0.125, dtype=np.float32),
        "unused": np.zeros((0, 3), dtype=np.float32),
    }
    return ModelUpdate(
        task="har",
        device_id="dev-0042",
        update_id=UPDATE_ID,
        base_version=17,
        num_samples=256,
        codec=codec.name,
        tensors=encode_delta(delta, codec),
        metrics={"loss": 0.4375, "accuracy": 0.875, "epochs": 2, "early_stop": False, "opt": "sgd"},
        created_at=1_700_000_000.5,
    )


def _update_vectors() -> list[Vector]:
    vectors = []
    for codec in (
        Codec(name="none"),
        Codec(name="float16"),
        Codec(name="int8"),
        Codec(name="topk", topk_fraction=0.25),
    ):
        update = _update(codec)
        vectors.append(
            Vector(
                name=f"update_{codec.name}",
                message="ModelUpdate",
                description=f"ModelUpdate with the {codec.name} codec: a 2-d, a 1-d, a 0-d and "
                "an empty tensor; metrics of every scalar type.",
                payload=update.encode(),
                values=_update_json(update),
            )
        )
    wide = ((np.arange(512, dtype=np.float32) - 256) / 64).reshape(16, 32)
    big = ModelUpdate(
        task="har",
        device_id="dev-0042",
        update_id=UPDATE_ID,
        base_version=0,
        num_samples=1,
        codec="none",
        tensors=encode_delta({"w": wide}, Codec(name="none")),
    )
    vectors.append(
        Vector(
            name="update_none_bin16",
            message="ModelUpdate",
            description="A 2048-byte tensor: its data is a bin16; empty metrics map.",
            payload=big.encode(),
            values=_update_json(big),
        )
    )
    return vectors


def _release() -> ModelRelease:
    rng = np.random.default_rng(5)
    return ModelRelease(
        task="har",
        version=5,
        parent_version=4,
        update_count=12,
        created_at=1_700_000_100.25,
        metadata={"strategy": "fedbuff", "server_lr": 1.0, "buffer": 3, "dp": False},
        tensors={
            "w": rng.standard_normal((2, 3)).astype(np.float32),
            "b": rng.standard_normal(3),
            "steps": np.array(123456789012, dtype=np.int64),
            "mask": np.array([0, 1, 254, 255], dtype=np.uint8),
            "h": np.array([[0.5, -2.0], [65504.0, 2.0**-24]], dtype=np.float16),
            "i8": np.array([-128, -1, 0, 127], dtype=np.int8),
            "i16": np.array([-32768, 32767], dtype=np.int16),
            "u16": np.array([[65535], [1]], dtype=np.uint16),
            "u32": np.array([4294967295], dtype=np.uint32),
            "none": np.zeros(0, dtype=np.int32),
        },
    )


def _release_vectors() -> list[Vector]:
    key = vector_signing_key()
    release = _release()
    payload = release.encode(key)
    envelope = msgpack.unpackb(payload)
    body: bytes = envelope["body"]
    values = {
        "task": release.task,
        "version": release.version,
        "parent_version": release.parent_version,
        "update_count": release.update_count,
        "created_at": release.created_at,
        "key_id": key.key_id,
        "metadata": dict(release.metadata),
        "tensors": {name: array_json(t) for name, t in release.tensors.items()},
    }
    signed = {
        "verify_key": VERIFY_KEY_FILE,
        "body_hex": body.hex(),
        "digest_hex": release_digest(body).hex(),
        "signature_hex": bytes(envelope["signature"]).hex(),
    }
    forged = dict(envelope, signature=forger_signing_key().sign(release_digest(body)))
    tampered_body = bytearray(body)
    tampered_body[-1] ^= 0x01
    tampered = dict(envelope, body=bytes(tampered_body))
    unsigned = {k: v for k, v in envelope.items() if k != "signature"}
    short = dict(envelope, signature=envelope["signature"][:63])
    not_bin = dict(envelope, body=msgpack.unpackb(body))
    bad = "invalid_release_"
    check = {"verify_key": VERIFY_KEY_FILE}
    return [
        Vector(
            name="release",
            message="ModelRelease",
            description="A release signed with the TEST key: all ten whitelisted dtypes, "
            "a 0-d and an empty tensor, metadata of every scalar type.",
            payload=payload,
            values=values,
            extra=signed,
        ),
        *(
            Vector(
                name=bad + name,
                message="ModelRelease",
                description=what,
                payload=msgpack.packb(doc, use_bin_type=True),
                error=error,
                extra=check,
            )
            for name, what, doc, error in (
                ("forged", "Signed by another key.", forged, "SignatureError"),
                ("tampered", "Last body byte flipped.", tampered, "SignatureError"),
                ("unsigned", "No signature field.", unsigned, "SignatureError"),
                ("short_signature", "63-byte signature.", short, "SignatureError"),
                ("body_not_bin", "Body is a map, not bin.", not_bin, "MalformedError"),
            )
        ),
    ]


def _receipt() -> Receipt:
    return Receipt(
        task="t1",
        device_id="d1",
        update_id=bytes(range(16)),
        status="accepted",
        model_version=7,
    )


def _plain_json(message: Receipt | DeviceStatus | Control) -> dict[str, Any]:
    doc: dict[str, Any] = {}
    for item in dataclasses.fields(message):
        value = getattr(message, item.name)
        if isinstance(value, bytes):
            value = value.hex()
        elif isinstance(value, Mapping):
            value = dict(value)
        doc[item.name] = value
    return doc


def _plain(
    name: str, message: Receipt | DeviceStatus | Control, what: str, payload: bytes | None = None
) -> Vector:
    """A vector of ``message``: our encoding of it, or ``payload`` (then decode-only)."""
    return Vector(
        name=name,
        message=type(message).__name__,
        description=what,
        payload=message.encode() if payload is None else payload,
        values=_plain_json(message),
        canonical=payload is None,
    )


def _simple_vectors() -> list[Vector]:
    receipt = _receipt()
    rejected = Receipt(
        task="har",
        device_id="dev-0042",
        update_id=UPDATE_ID,
        status="rejected",
        reason="stale: base_version 3 is older than 10",
        model_version=13,
    )
    status = DeviceStatus(
        task="t1", device_id="d1", state="online", connections=3, model_version=9, at=1.7e9
    )
    offline = DeviceStatus(
        task="har", device_id="dev-0042", state="offline", connections=41, model_version=0, at=0.0
    )
    control = Control(
        task="har",
        seq=12,
        participation=0.25,
        settings={"local_epochs": 1, "lr": 0.05, "codec": "topk", "topk_fraction": 0.01},
        issued_at=1_700_000_200.0,
    )
    foreign = "in wider msgpack formats, another key order"
    return [
        _plain("receipt_accepted", receipt, "The worked example of SPEC.md."),
        _plain("receipt_rejected", rejected, "A rejection with its reason."),
        _plain(
            "receipt_foreign_formats",
            receipt,
            f"receipt_accepted {foreign} and an unknown key (map16, str8/16, bin32, uint64, "
            "int64): decode only.",
            foreign_receipt(),
        ),
        _plain("status_online", status, "A device online for its third connection."),
        _plain("status_offline", offline, "The last-will form."),
        _plain(
            "status_foreign_formats",
            status,
            f"status_online {foreign} (float32 at, int16/uint32/uint8 ints): decode only.",
            foreign_status(),
        ),
        _plain("control", control, "Pace steering with settings."),
    ]


def _invalid_vectors() -> list[Vector]:
    kinds = {"Receipt": "receipt", "ModelUpdate": "update", "DeviceStatus": "status"}
    cases = invalid_cases(
        _receipt().encode(),
        _update(Codec(name="topk", topk_fraction=0.25)).encode(),
        DeviceStatus(
            task="t1", device_id="d1", state="online", connections=1, model_version=0, at=0.0
        ).encode(),
        Control(task="t1", seq=1).encode(),
    )
    return [
        Vector(
            name=f"invalid_{kinds.get(case.message, 'control')}_{case.name}",
            message=case.message,
            description=case.description,
            payload=case.payload,
            error=case.error,
        )
        for case in cases
    ]


_NUMBER_LIST = re.compile(r"\[\n\s*(-?[0-9][^\[\]{}\"]*?)\n\s*\]")


def _json_text(doc: dict[str, Any]) -> str:
    """Indented JSON with each list of numbers on one line."""
    text = json.dumps(doc, indent=1, allow_nan=False)
    return _NUMBER_LIST.sub(lambda m: "[" + " ".join(m.group(1).split()) + "]", text) + "\n"


def build_vectors() -> list[Vector]:
    """Every vector, in a fixed order."""
    return [*_simple_vectors(), *_update_vectors(), *_release_vectors(), *_invalid_vectors()]


def write_vectors(directory: Path) -> list[Path]:
    """Write the test keys and every vector's ``.msgpack`` and ``.json`` into ``directory``."""
    key = vector_signing_key()
    files = {
        SIGNING_KEY_FILE: key.to_pem(),
        VERIFY_KEY_FILE: key.verify_key.to_pem(),
    }
    for vector in build_vectors():
        files[f"{vector.name}.msgpack"] = vector.payload
        files[f"{vector.name}.json"] = _json_text(vector.expectation()).encode()
    written = []
    for name, content in files.items():
        path = directory / name
        path.write_bytes(content)
        written.append(path)
    return written


def main() -> None:
    """Rewrite the vectors in this directory (or in the directory given as argument)."""
    directory = Path(sys.argv[1]) if len(sys.argv) > 1 else VECTORS_DIR
    for path in write_vectors(directory):
        print(path.name)


if __name__ == "__main__":
    main()
