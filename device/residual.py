"""Error feedback for top-k: what an update did not carry is kept on disk and sent later."""

from __future__ import annotations

import json
import logging
import sqlite3
from collections.abc import Mapping

import numpy as np
from numpy.typing import NDArray

from device.models import Params
from device.state_db import StateDB
from serialization import Codec, EncodedTensor, encode_delta

__all__ = ["ResidualStore", "encode_with_feedback"]

logger = logging.getLogger(__name__)


def encode_with_feedback(
    delta: Mapping[str, NDArray[np.float32]],
    codec: Codec,
    residual: Params | None,
    rng: np.random.Generator | None = None,
) -> tuple[dict[str, EncodedTensor], Params | None]:
    """Encode ``delta + residual`` and return it with the new residual.

    The new residual is ``delta + residual - decoded(encoded)`` for top-k and None for the
    other codecs: a residual left by an earlier top-k update is folded into the next update
    whatever its codec, so nothing is lost when the aggregator switches codecs. A residual
    whose names or shapes differ from ``delta`` (the model changed) is discarded.
    """
    corrected = {name: np.asarray(value, dtype=np.float32) for name, value in delta.items()}
    if residual is not None:
        if set(residual) == set(corrected) and all(
            residual[name].shape == corrected[name].shape for name in corrected
        ):
            corrected = {name: value + residual[name] for name, value in corrected.items()}
        else:
            logger.info("discarding the top-k residual: the model's tensors changed")
    encoded = encode_delta(corrected, codec, rng)
    if codec.name != "topk":
        return encoded, None
    return encoded, {name: corrected[name] - encoded[name].to_dense() for name in corrected}


class ResidualStore:
    """The top-k residual in ``StateDB.residual``, saved in the same transaction as its update."""

    def __init__(self, db: StateDB) -> None:
        self._db = db

    def load(self) -> Params | None:
        """The stored residual, or None."""
        rows = self._db.query("SELECT name, shape, data FROM residual ORDER BY name")
        if not rows:
            return None
        return {
            name: np.frombuffer(data, dtype="<f4").astype(np.float32).reshape(json.loads(shape))
            for name, shape, data in rows
        }

    def save_in(self, conn: sqlite3.Connection, residual: Params | None) -> None:
        """Replace the stored residual (None clears it) inside the caller's transaction."""
        conn.execute("DELETE FROM residual")
        if residual is None:
            return
        conn.executemany(
            "INSERT INTO residual (name, shape, data) VALUES (?, ?, ?)",
            (
                (name, json.dumps(list(value.shape)), value.astype("<f4").tobytes())
                for name, value in residual.items()
            ),
        )
