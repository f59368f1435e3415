"""Messages: round-trips, envelope checks, unknown keys, and every decoder limit."""

from __future__ import annotations

from typing import Any

import msgpack
import numpy as np
import pytest
from hypothesis import given

from serialization import (
    DEFAULT_LIMITS,
    FORMAT_VERSION,
    UPDATE_ID_BYTES,
    Codec,
    Control,
    DeviceStatus,
    Limits,
    MalformedError,
    ModelUpdate,
    Receipt,
    SerializationError,
    TooLargeError,
    UnsupportedVersionError,
    encode_delta,
    new_update_id,
)
from tests.unit.serialization.strategies import controls, model_updates, receipts, statuses

Simple = Receipt | DeviceStatus | Control
SIMPLE_TYPES: tuple[type[Simple], ...] = (Receipt, DeviceStatus, Control)


def _assert_updates_equal(a: ModelUpdate, b: ModelUpdate) -> None:
    assert (a.task, a.device_id, a.update_id, a.base_version, a.num_samples, a.codec) == (
        b.task,
        b.device_id,
        b.update_id,
        b.base_version,
        b.num_samples,
        b.codec,
    )
    assert dict(a.metrics) == dict(b.metrics)
    assert a.created_at == b.created_at
    assert list(a.tensors) == list(b.tensors)
    for name, tensor in a.tensors.items():
        other = b.tensors[name]
        assert tensor.shape == other.shape
        assert tensor.scale == other.scale
        assert tensor.values.dtype == other.values.dtype
        assert tensor.values.tobytes() == other.values.tobytes()
        if tensor.indices is None:
            assert other.indices is None
        else:
            assert other.indices is not None
            assert tensor.indices.tobytes() == other.indices.tobytes()


@given(update=model_updates())
def test_messages_update_round_trips(update: ModelUpdate) -> None:
    """ModelUpdate.decode(encode(u)) equals u field by field, tensors bit for bit."""
    _assert_updates_equal(ModelUpdate.decode(update.encode()), update)


@given(message=receipts | statuses | controls)
def test_messages_simple_messages_round_trip(message: Simple) -> None:
    """Receipt, DeviceStatus and Control decode to an equal object."""
    assert type(message).decode(message.encode()) == message


@given(message=receipts | statuses | controls)
def test_messages_encoder_emits_canonical_msgpack(message: Simple) -> None:
    """Our bytes are msgpack-python's packb of the SPEC key order (smallest formats)."""
    payload = message.encode()
    assert msgpack.packb(msgpack.unpackb(payload), use_bin_type=True) == payload
    assert list(msgpack.unpackb(payload))[:2] == ["fedmq", "type"]


def test_messages_key_order_is_the_spec_order() -> None:
    """Each message's keys come in the order SPEC.md lists."""
    receipt = Receipt(
        task="t", device_id="d", update_id=bytes(16), status="accepted", model_version=1
    )
    status = DeviceStatus(
        task="t", device_id="d", state="online", connections=1, model_version=0, at=0.0
    )
    update = ModelUpdate(
        task="t",
        device_id="d",
        update_id=bytes(16),
        base_version=0,
        num_samples=1,
        codec="int8",
        tensors=encode_delta({"w": np.ones(2, np.float32)}, Codec(name="int8")),
    )
    orders = {
        receipt.encode(): ["task", "device", "update_id", "status", "reason", "model_version"],
        status.encode(): ["task", "device", "state", "connections", "model_version", "at"],
        Control(task="t", seq=1).encode(): [
            "task",
            "seq",
            "participation",
            "settings",
            "issued_at",
        ],
        update.encode(): [
            "task",
            "device",
            "update_id",
            "base_version",
            "num_samples",
            "codec",
            "tensors",
            "metrics",
            "created_at",
        ],
    }
    for payload, keys in orders.items():
        assert list(msgpack.unpackb(payload)) == ["fedmq", "type", *keys]
    tensor = msgpack.unpackb(update.encode())["tensors"]["w"]
    assert list(tensor) == ["shape", "values", "scale"]
    assert list(tensor["values"]) == ["dtype", "shape", "data"]


def _doc(message: Simple | ModelUpdate) -> dict[str, Any]:
    doc: dict[str, Any] = msgpack.unpackb(message.encode())
    return doc


def _pack(doc: object) -> bytes:
    packed: bytes = msgpack.packb(doc, use_bin_type=True)
    return packed


RECEIPT = Receipt(
    task="t", device_id="d", update_id=bytes(16), status="rejected", reason="stale", model_version=3
)


def test_messages_decoders_ignore_unknown_keys_and_key_order() -> None:
    """Unknown keys are skipped and the key order does not matter."""
    doc = _doc(RECEIPT)
    shuffled = dict(reversed(list(doc.items())))
    shuffled["x-later"] = {"nested": [1, 2, None]}
    assert Receipt.decode(_pack(shuffled)) == RECEIPT


def test_messages_decoders_accept_any_int_width() -> None:
    """model_version written as uint64 and fedmq as int8 still decode."""
    head = _pack({"fedmq": 1})
    wide = _pack({k: v for k, v in _doc(RECEIPT).items() if k not in ("fedmq", "model_version")})
    payload = (
        bytes([wide[0] + 2])
        + wide[1:]
        + head[1:-1]
        + b"\xd0\x01"
        + _pack("model_version")
        + b"\xcf"
        + (3).to_bytes(8, "big")
    )
    assert Receipt.decode(payload) == RECEIPT


@pytest.mark.parametrize(
    ("change", "error"),
    [
        ({"fedmq": 2}, UnsupportedVersionError),
        ({"fedmq": 0}, UnsupportedVersionError),
        ({"fedmq": "1"}, MalformedError),
        ({"fedmq": True}, MalformedError),
        ({"fedmq": 1.0}, MalformedError),
        ({"type": "status"}, MalformedError),
        ({"type": None}, MalformedError),
        ({"task": "a/b"}, MalformedError),
        ({"task": "$SYS"}, MalformedError),
        ({"device": "x" * 65}, MalformedError),
        ({"update_id": bytes(17)}, MalformedError),
        ({"update_id": "0" * 16}, MalformedError),
        ({"status": "lost"}, MalformedError),
        ({"model_version": -1}, MalformedError),
        ({"model_version": 2**63}, MalformedError),
        ({"model_version": True}, MalformedError),
        ({"model_version": 1.0}, MalformedError),
        ({"reason": b"bytes"}, MalformedError),
        ({"reason": "é" * 129}, TooLargeError),
    ],
)
def test_messages_bad_fields_raise_the_documented_error(
    change: dict[str, object], error: type[SerializationError]
) -> None:
    """Version, type, identifiers, ids, enums, integer ranges and string limits are checked."""
    with pytest.raises(error):
        Receipt.decode(_pack({**_doc(RECEIPT), **change}))


@pytest.mark.parametrize("kind", SIMPLE_TYPES)
def test_messages_every_field_is_required(kind: type[Simple]) -> None:
    """Removing any single key of a message makes it Malformed."""
    samples: dict[type[Simple], Simple] = {
        Receipt: RECEIPT,
        DeviceStatus: DeviceStatus(
            task="t", device_id="d", state="offline", connections=2, model_version=1, at=5.0
        ),
        Control: Control(task="t", seq=4, participation=0.5, settings={"lr": 0.1}),
    }
    doc = _doc(samples[kind])
    for key in doc:
        with pytest.raises(MalformedError):
            kind.decode(_pack({k: v for k, v in doc.items() if k != key}))


def test_messages_version_error_carries_the_version() -> None:
    """UnsupportedVersionError says which version arrived, with a stable reason string."""
    with pytest.raises(UnsupportedVersionError) as info:
        Receipt.decode(_pack({**_doc(RECEIPT), "fedmq": 7}))
    assert (info.value.version, info.value.reason) == (7, "unsupported_version")
    assert FORMAT_VERSION == 1


@pytest.mark.parametrize("value", [float("nan"), float("inf"), -float("inf")])
def test_messages_non_finite_numbers_are_refused(value: float) -> None:
    """Timestamps, participation and scalar-map floats must be finite."""
    status = _doc(
        DeviceStatus(
            task="t", device_id="d", state="online", connections=1, model_version=0, at=0.0
        )
    )
    control = _doc(Control(task="t", seq=1))
    for kind, doc in (
        (DeviceStatus, {**status, "at": value}),
        (Control, {**control, "participation": value}),
        (Control, {**control, "settings": {"lr": value}}),
    ):
        with pytest.raises(MalformedError):
            kind.decode(_pack(doc))


@pytest.mark.parametrize("value", [None, b"bin", [1], {"a": 1}])
def test_messages_scalar_maps_refuse_non_scalars(value: object) -> None:
    """metrics/settings/metadata values are str, int, float or bool only."""
    with pytest.raises(MalformedError):
        Control.decode(_pack({**_doc(Control(task="t", seq=1)), "settings": {"k": value}}))


def test_messages_participation_must_be_a_fraction() -> None:
    """Control.participation outside [0, 1] is Malformed; ints 0 and 1 are accepted."""
    doc = _doc(Control(task="t", seq=1))
    assert Control.decode(_pack({**doc, "participation": 0})).participation == 0.0
    for bad in (-0.1, 1.01):
        with pytest.raises(MalformedError):
            Control.decode(_pack({**doc, "participation": bad}))


def _update(tensors: dict[str, Any], codec: str = "topk", **extra: object) -> bytes:
    return _pack(
        {
            "fedmq": 1,
            "type": "update",
            "task": "t",
            "device": "d",
            "update_id": bytes(16),
            "base_version": 0,
            "num_samples": 1,
            "codec": codec,
            "tensors": tensors,
            "metrics": {},
            "created_at": 0.0,
            **extra,
        }
    )


def _topk(shape: list[int]) -> dict[str, Any]:
    return {
        "shape": shape,
        "values": {"dtype": "float32", "shape": [1], "data": bytes(4)},
        "indices": {"dtype": "uint32", "shape": [1], "data": bytes(4)},
    }


def test_messages_limit_too_many_tensors() -> None:
    """257 tensors exceed max_tensors = 256."""
    with pytest.raises(TooLargeError) as info:
        ModelUpdate.decode(_update({f"t{i}": _topk([1]) for i in range(257)}))
    assert (info.value.size, info.value.limit) == (257, DEFAULT_LIMITS.max_tensors)
    assert (
        len(ModelUpdate.decode(_update({f"t{i}": _topk([1]) for i in range(256)})).tensors) == 256
    )


def test_messages_limit_topk_declaring_a_giant_dense_shape() -> None:
    """A 70-byte topk tensor that would expand to 2**32 dense elements is refused."""
    with pytest.raises(TooLargeError) as info:
        ModelUpdate.decode(_update({"w": _topk([65536, 65536])}))
    assert info.value.what == "tensor elements"


def test_messages_limit_total_elements_over_all_tensors() -> None:
    """Two topk tensors of 2**22 dense elements fit max_total_elements; a third does not."""
    fits = {"a": _topk([2**22]), "b": _topk([2**22])}
    assert ModelUpdate.decode(_update(fits)).tensors["b"].size == 2**22
    with pytest.raises(TooLargeError) as info:
        ModelUpdate.decode(_update({**fits, "c": _topk([1])}))
    assert (info.value.what, info.value.size) == ("total elements", 2**23 + 1)


def test_messages_limit_payload_size() -> None:
    """A payload above max_payload_bytes is refused before it is parsed."""
    limit = DEFAULT_LIMITS.max_payload_bytes
    with pytest.raises(TooLargeError) as info:
        ModelUpdate.decode(bytes(limit + 1))
    assert (info.value.what, info.value.size) == ("payload size", limit + 1)
    with pytest.raises(MalformedError):
        ModelUpdate.decode(bytes(limit))


def test_messages_limit_metric_entries_and_strings() -> None:
    """65 metrics entries and 257-byte metric names exceed the limits."""
    with pytest.raises(TooLargeError):
        ModelUpdate.decode(_update({}, metrics={f"m{i}": i for i in range(65)}))
    with pytest.raises(TooLargeError):
        ModelUpdate.decode(_update({}, metrics={"m" * 257: 1}))
    assert (
        len(ModelUpdate.decode(_update({}, metrics={f"m{i}": i for i in range(64)})).metrics) == 64
    )


def test_messages_limit_custom_limits_apply() -> None:
    """A stricter Limits object is honoured by every decoder."""
    tiny = Limits(max_tensor_elements=3)
    update = ModelUpdate(
        task="t",
        device_id="d",
        update_id=bytes(16),
        base_version=0,
        num_samples=1,
        codec="none",
        tensors=encode_delta({"w": np.zeros(4, np.float32)}, Codec()),
    )
    ModelUpdate.decode(update.encode())
    with pytest.raises(TooLargeError):
        ModelUpdate.decode(update.encode(), limits=tiny)
    with pytest.raises(TooLargeError):
        Receipt.decode(RECEIPT.encode(), limits=Limits(max_payload_bytes=10))


def test_messages_empty_tensor_name_is_refused() -> None:
    """Tensor names are non-empty strings."""
    with pytest.raises(MalformedError):
        ModelUpdate.decode(_update({"": _topk([1])}))


def test_messages_codec_mismatch_is_refused() -> None:
    """A tensor whose values dtype is not its update codec's is Malformed."""
    for codec in ("float16", "int8"):
        with pytest.raises(MalformedError):
            ModelUpdate.decode(_update({"w": _topk([1])}, codec=codec))
    as_none = ModelUpdate.decode(_update({"w": _topk([1])}, codec="none")).tensors["w"]
    assert as_none.indices is None


def test_messages_new_update_id_is_random_16_bytes() -> None:
    """new_update_id gives 16 fresh random bytes."""
    ids = {new_update_id() for _ in range(100)}
    assert len(ids) == 100
    assert {len(i) for i in ids} == {UPDATE_ID_BYTES} == {16}
