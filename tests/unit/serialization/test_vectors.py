"""Test vectors: decode(file) == json, encode(json) == file bytes, errors as named."""

from __future__ import annotations

import hashlib
import json
import re
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from cryptography.exceptions import InvalidSignature
from numpy.typing import NDArray

import serialization
from serialization import (
    CODEC_NAMES,
    Control,
    DeviceStatus,
    EncodedTensor,
    ModelRelease,
    ModelUpdate,
    Receipt,
    SerializationError,
    SigningKey,
    VerifyKey,
)
from tests.vectors.make_vectors import VECTORS_DIR, write_vectors

SPEC = Path(serialization.__file__).parent / "SPEC.md"
DOCS = {path.stem: json.loads(path.read_text()) for path in sorted(VECTORS_DIR.glob("*.json"))}
VALID = sorted(name for name, doc in DOCS.items() if doc["valid"])
CANONICAL = sorted(name for name in VALID if DOCS[name]["canonical"])
INVALID = sorted(name for name, doc in DOCS.items() if not doc["valid"])
VERIFY_KEY = VerifyKey.from_pem((VECTORS_DIR / "test_verify_key.pem").read_bytes())
SIGNING_KEY = SigningKey.from_pem((VECTORS_DIR / "test_signing_key.pem").read_bytes())

Message = Receipt | DeviceStatus | Control | ModelUpdate | ModelRelease


def _payload(name: str) -> bytes:
    return (VECTORS_DIR / f"{name}.msgpack").read_bytes()


def _decode(message: str, payload: bytes) -> Message:
    if message == "ModelRelease":
        return ModelRelease.decode(payload, VERIFY_KEY)
    kinds: dict[str, type[Receipt | DeviceStatus | Control | ModelUpdate]] = {
        "Receipt": Receipt, "DeviceStatus": DeviceStatus, "Control": Control,
        "ModelUpdate": ModelUpdate,
    }  # fmt: skip
    return kinds[message].decode(payload)


def _strict(value: object) -> object:
    """``value`` with every scalar tagged by its type, so that False != 0 and 1.0 != 1."""
    if isinstance(value, dict):
        return {k: _strict(v) for k, v in value.items()}
    if isinstance(value, list | tuple):
        return [_strict(v) for v in value]
    return (type(value).__name__, value)


def _array_json(array: NDArray[Any]) -> dict[str, Any]:
    return {"dtype": array.dtype.name, "shape": list(array.shape), "data": array.ravel().tolist()}


def _tensor_json(tensor: EncodedTensor) -> dict[str, Any]:
    doc: dict[str, Any] = {"shape": list(tensor.shape), "values": _array_json(tensor.values)}
    if tensor.scale is not None:
        doc["scale"] = tensor.scale
    if tensor.indices is not None:
        doc["indices"] = _array_json(tensor.indices)
    return doc


def _as_json(message: Message) -> dict[str, Any]:
    """The decoded object in the vectors' JSON conventions (bytes as hex, arrays flat)."""
    if isinstance(message, ModelUpdate):
        return {
            "task": message.task, "device_id": message.device_id,
            "update_id": message.update_id.hex(), "base_version": message.base_version,
            "num_samples": message.num_samples, "codec": message.codec,
            "tensors": {n: _tensor_json(t) for n, t in message.tensors.items()},
            "dense": {n: _array_json(t.to_dense()) for n, t in message.tensors.items()},
            "metrics": dict(message.metrics), "created_at": message.created_at,
        }  # fmt: skip
    if isinstance(message, ModelRelease):
        return {
            "task": message.task, "version": message.version,
            "parent_version": message.parent_version, "update_count": message.update_count,
            "created_at": message.created_at, "key_id": message.key_id,
            "metadata": dict(message.metadata),
            "tensors": {n: _array_json(t) for n, t in message.tensors.items()},
        }  # fmt: skip
    doc = {k: getattr(message, k) for k in message.__dataclass_fields__}
    if isinstance(message, Receipt):
        doc["update_id"] = message.update_id.hex()
    if isinstance(message, Control):
        doc["settings"] = dict(message.settings)
    return doc


def _array(doc: dict[str, Any]) -> NDArray[Any]:
    return np.array(doc["data"], dtype=doc["dtype"]).reshape(doc["shape"])


def _from_json(message: str, values: dict[str, Any]) -> Message:
    """Build the message object from the vector's JSON values."""
    v = dict(values)
    if message == "ModelUpdate":
        tensors = {
            name: EncodedTensor(
                shape=tuple(t["shape"]),
                values=_array(t["values"]),
                scale=t.get("scale"),
                indices=_array(t["indices"]) if "indices" in t else None,
            )
            for name, t in v["tensors"].items()
        }
        del v["dense"]
        return ModelUpdate(**{**v, "update_id": bytes.fromhex(v["update_id"]), "tensors": tensors})
    if message == "ModelRelease":
        del v["key_id"]
        return ModelRelease(**{**v, "tensors": {n: _array(t) for n, t in v["tensors"].items()}})
    if message == "Receipt":
        return Receipt(**{**v, "update_id": bytes.fromhex(v["update_id"])})
    return DeviceStatus(**v) if message == "DeviceStatus" else Control(**v)


@pytest.mark.parametrize("name", VALID)
def test_vectors_decode_matches_expected_values(name: str) -> None:
    """Decoding each valid payload gives exactly the JSON values (types included)."""
    doc = DOCS[name]
    decoded = _decode(doc["message"], _payload(name))
    assert _strict(_as_json(decoded)) == _strict(doc["values"])


@pytest.mark.parametrize("name", CANONICAL)
def test_vectors_encode_reproduces_the_payload_bytes(name: str) -> None:
    """Encoding the JSON values gives the payload file byte for byte."""
    doc = DOCS[name]
    message = _from_json(doc["message"], doc["values"])
    encoded = message.encode(SIGNING_KEY) if isinstance(message, ModelRelease) else message.encode()
    assert encoded == _payload(name)


@pytest.mark.parametrize("name", INVALID)
def test_vectors_invalid_payloads_raise_the_named_error(name: str) -> None:
    """Each invalid payload raises exactly the SerializationError subclass its JSON names."""
    doc = DOCS[name]
    with pytest.raises(SerializationError) as info:
        _decode(doc["message"], _payload(name))
    assert type(info.value).__name__ == doc["error"]


def test_vectors_cover_every_message_codec_and_error_class() -> None:
    """Every message type, codec and error class has a vector; every JSON has its payload."""
    messages = {doc["message"] for doc in DOCS.values() if doc["valid"]}
    assert messages == {"ModelUpdate", "ModelRelease", "Receipt", "DeviceStatus", "Control"}
    updates = [doc for doc in DOCS.values() if doc["message"] == "ModelUpdate" and doc["valid"]]
    codecs = {doc["values"]["codec"] for doc in updates}
    assert codecs == set(CODEC_NAMES)
    errors = {doc["error"] for doc in DOCS.values() if not doc["valid"]}
    assert errors == {
        "MalformedError",
        "TooLargeError",
        "UnsupportedVersionError",
        "SignatureError",
    }
    assert {path.stem for path in VECTORS_DIR.glob("*.msgpack")} == set(DOCS)
    assert all(doc["payload"] == f"{name}.msgpack" for name, doc in DOCS.items())


def test_vectors_generator_reproduces_every_file(tmp_path: Path) -> None:
    """Re-running the generator writes byte-identical files (and no others)."""
    written = write_vectors(tmp_path)
    checked_in = {
        p.name for p in VECTORS_DIR.iterdir() if p.suffix in (".json", ".msgpack", ".pem")
    }
    assert {p.name for p in written} == checked_in
    for path in written:
        assert path.read_bytes() == (VECTORS_DIR / path.name).read_bytes(), path.name


def test_vectors_release_key_is_the_documented_test_key() -> None:
    """The release vector is signed by the checked-in TEST key, whose id the JSON names."""
    doc = DOCS["release"]
    assert SIGNING_KEY.key_id == VERIFY_KEY.key_id == doc["values"]["key_id"]
    assert f"key id `{SIGNING_KEY.key_id}`" in SPEC.read_text(encoding="utf-8")
    body = bytes.fromhex(doc["body_hex"])
    assert hashlib.sha512(b"fedmq/v1/release\x00" + body).hexdigest() == doc["digest_hex"]
    assert SIGNING_KEY.sign(bytes.fromhex(doc["digest_hex"])).hex() == doc["signature_hex"]


def _spec_block(marker: str) -> str:
    match = re.search(
        rf"<!-- {marker} -->\s*```[a-z]*\n(.*?)```", SPEC.read_text(encoding="utf-8"), re.S
    )
    assert match is not None, f"SPEC.md has no block marked {marker}"
    return match.group(1)


def test_vectors_spec_verification_snippet_works_without_fedmq() -> None:
    """SPEC.md's msgpack+cryptography verifier accepts the release and rejects the forgery."""
    namespace: dict[str, Any] = {}
    exec(compile(_spec_block("verify-release"), "SPEC.md", "exec"), namespace)  # noqa: S102
    raw_key = VERIFY_KEY.raw
    body = namespace["verify_release"](_payload("release"), raw_key)
    expected = DOCS["release"]["values"]
    assert body["version"] == expected["version"]
    assert body["key_id"] == expected["key_id"]
    w = body["tensors"]["w"]
    assert np.frombuffer(w["data"], dtype="<f4").tolist() == expected["tensors"]["w"]["data"]
    for forged in ("invalid_release_forged", "invalid_release_tampered"):
        with pytest.raises(InvalidSignature):
            namespace["verify_release"](_payload(forged), raw_key)


def test_vectors_spec_receipt_hex_example_is_the_vector() -> None:
    """The annotated hex of SPEC.md's worked example is receipt_accepted.msgpack."""
    lines = _spec_block("receipt-hex").splitlines()
    data = bytes.fromhex("".join(line.split("  ")[0] for line in lines if line.strip()))
    assert data == _payload("receipt_accepted")
