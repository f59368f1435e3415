"""Hypothesis strategies for the wire contract's values and messages."""

from __future__ import annotations

from typing import Any

import numpy as np
from hypothesis import strategies as st
from hypothesis.extra import numpy as hnp
from numpy.typing import NDArray

from serialization import (
    CODEC_NAMES,
    Codec,
    Control,
    DeviceStatus,
    ModelRelease,
    ModelUpdate,
    Receipt,
    Scalar,
    encode_delta,
)
from serialization.arrays import DTYPES

__all__ = [
    "WIRE_DTYPES",
    "controls",
    "identifiers",
    "model_releases",
    "model_updates",
    "receipts",
    "scalar_maps",
    "shapes",
    "statuses",
    "wire_arrays",
]

WIRE_DTYPES = tuple(DTYPES)
"""Every whitelisted dtype name."""

identifiers = st.from_regex(r"[A-Za-z0-9][A-Za-z0-9_.-]{0,63}", fullmatch=True)
"""Valid task / device ids (SPEC.md "Identifiers")."""

shapes = hnp.array_shapes(min_dims=0, max_dims=4, min_side=0, max_side=6)
"""Shapes with 0-d and empty (zero-length axis) cases."""

_texts = st.text(max_size=24)
_finite = st.floats(allow_nan=False, allow_infinity=False)
_scalars: st.SearchStrategy[Scalar] = st.one_of(
    _texts, st.integers(-(2**63), 2**64 - 1), _finite, st.booleans()
)
scalar_maps = st.dictionaries(_texts, _scalars, max_size=8)
"""metrics / settings / metadata maps."""


def wire_arrays(dtype: str | None = None) -> st.SearchStrategy[NDArray[Any]]:
    """Arrays of one whitelisted dtype (any when ``dtype`` is None), any shape."""
    names = st.just(dtype) if dtype is not None else st.sampled_from(WIRE_DTYPES)
    return names.flatmap(lambda name: hnp.arrays(np.dtype(name), shapes))


def _float32_arrays() -> st.SearchStrategy[NDArray[np.float32]]:
    elements = st.floats(width=32, min_value=-1e6, max_value=1e6)
    return hnp.arrays(np.float32, shapes, elements=elements)


@st.composite
def model_updates(draw: st.DrawFn) -> ModelUpdate:
    """A ModelUpdate with random tensors encoded by a random codec."""
    name = draw(st.sampled_from(CODEC_NAMES))
    fraction = draw(st.floats(min_value=0.01, max_value=1.0))
    codec = Codec(name=name, topk_fraction=fraction)
    delta = draw(st.dictionaries(st.text(min_size=1, max_size=12), _float32_arrays(), max_size=4))
    return ModelUpdate(
        task=draw(identifiers),
        device_id=draw(identifiers),
        update_id=draw(st.binary(min_size=16, max_size=16)),
        base_version=draw(st.integers(0, 2**63 - 1)),
        num_samples=draw(st.integers(0, 2**63 - 1)),
        codec=name,
        tensors=encode_delta(delta, codec, np.random.default_rng(0)),
        metrics=draw(scalar_maps),
        created_at=draw(_finite),
    )


@st.composite
def model_releases(draw: st.DrawFn) -> ModelRelease:
    """A ModelRelease with tensors of any whitelisted dtype."""
    return ModelRelease(
        task=draw(identifiers),
        version=draw(st.integers(1, 2**63 - 1)),
        parent_version=draw(st.integers(0, 2**63 - 1)),
        tensors=draw(st.dictionaries(st.text(min_size=1, max_size=12), wire_arrays(), max_size=4)),
        update_count=draw(st.integers(0, 2**63 - 1)),
        created_at=draw(_finite),
        metadata=draw(scalar_maps),
    )


receipts = st.builds(
    Receipt,
    task=identifiers,
    device_id=identifiers,
    update_id=st.binary(min_size=16, max_size=16),
    status=st.sampled_from(("accepted", "duplicate", "rejected")),
    model_version=st.integers(0, 2**63 - 1),
    reason=_texts,
)
statuses = st.builds(
    DeviceStatus,
    task=identifiers,
    device_id=identifiers,
    state=st.sampled_from(("online", "offline")),
    connections=st.integers(0, 2**63 - 1),
    model_version=st.integers(0, 2**63 - 1),
    at=_finite,
)
controls = st.builds(
    Control,
    task=identifiers,
    seq=st.integers(0, 2**63 - 1),
    participation=st.floats(min_value=0.0, max_value=1.0),
    settings=scalar_maps,
    issued_at=_finite,
)
