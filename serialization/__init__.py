"""The fedmq wire contract: messages, topics, codecs and signing. Pure: no I/O, no threads."""

from __future__ import annotations

from serialization.codecs import (
    CODEC_NAMES,
    Codec,
    CodecName,
    EncodedTensor,
    decode_delta,
    encode_delta,
    encode_tensor,
)
from serialization.errors import (
    MalformedError,
    SerializationError,
    SignatureError,
    TooLargeError,
    UnsupportedVersionError,
)
from serialization.fields import FORMAT_VERSION, Scalar
from serialization.limits import DEFAULT_LIMITS, Limits
from serialization.messages import (
    UPDATE_ID_BYTES,
    Control,
    DeviceState,
    DeviceStatus,
    ModelUpdate,
    Receipt,
    ReceiptStatus,
    new_update_id,
)
from serialization.release import ModelRelease
from serialization.signing import SigningKey, VerifyKey
from serialization.topics import (
    DEFAULT_ROOT,
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

__all__ = [
    "CODEC_NAMES",
    "DEFAULT_LIMITS",
    "DEFAULT_ROOT",
    "FORMAT_VERSION",
    "UPDATE_ID_BYTES",
    "Codec",
    "CodecName",
    "Control",
    "DeviceState",
    "DeviceStatus",
    "EncodedTensor",
    "Limits",
    "MalformedError",
    "ModelRelease",
    "ModelUpdate",
    "ParsedTopic",
    "Receipt",
    "ReceiptStatus",
    "Scalar",
    "SerializationError",
    "SignatureError",
    "SigningKey",
    "TooLargeError",
    "TopicKind",
    "UnsupportedVersionError",
    "VerifyKey",
    "control_topic",
    "decode_delta",
    "encode_delta",
    "encode_tensor",
    "model_topic",
    "new_update_id",
    "parse_topic",
    "receipt_topic",
    "shared_update_subscription",
    "status_topic",
    "update_topic",
    "validate_identifier",
]
