"""Size limits every decoder enforces before it allocates anything."""

from __future__ import annotations

from dataclasses import dataclass

__all__ = ["DEFAULT_LIMITS", "Limits"]


@dataclass(frozen=True, kw_only=True, slots=True)
class Limits:
    """Upper bounds on what a decoder accepts; see SPEC.md section "Limits"."""

    max_payload_bytes: int = 4_718_592
    """Whole MQTT payload (4.5 MiB); equals Mosquitto's ``message_size_limit``."""
    max_tensors: int = 256
    """Named tensors in one update or release."""
    max_tensor_elements: int = 1 << 22
    """Elements of one (dense) tensor, also the dense size a top-k tensor expands to."""
    max_total_elements: int = 1 << 23
    """Dense elements over all tensors of one message."""
    max_dims: int = 8
    """Dimensions of one tensor."""
    max_string_bytes: int = 256
    """UTF-8 bytes of any string (ids, names, reasons, metadata values)."""
    max_map_entries: int = 64
    """Entries of a metadata, metrics or settings map."""
    max_depth: int = 5
    """Nesting of msgpack containers."""
    max_values: int = 32_768
    """msgpack values (each scalar, string, bin, array and map counts one) in one message;
    bounds the decoder's memory for payloads made of many tiny values."""


DEFAULT_LIMITS = Limits()
