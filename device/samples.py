"""The bounded sample store: observed (x, y) pairs in SQLite, oldest dropped first."""

from __future__ import annotations

import logging
import sqlite3

import numpy as np
from numpy.typing import ArrayLike, NDArray

from device.errors import InvalidSamplesError
from device.state_db import StateDB

__all__ = ["SampleStore", "as_samples"]

logger = logging.getLogger(__name__)

_TRAINED_UPTO = "samples.trained_upto"


def as_samples(x: ArrayLike, y: ArrayLike) -> tuple[NDArray[np.float32], NDArray[np.int64]]:
    """``x`` as finite float32 rows and ``y`` as non-negative int labels, one per row.

    One sample may be given as a 1-D ``x`` and a scalar ``y``.
    """
    try:
        xs = np.asarray(x, dtype=np.float32)
        ys = np.asarray(y)
    except (TypeError, ValueError) as exc:
        raise InvalidSamplesError(f"not numeric: {exc}") from exc
    if xs.ndim == 1:
        xs = xs.reshape(1, -1)
    ys = ys.reshape(-1)
    if xs.ndim != 2 or xs.shape[1] == 0:
        raise InvalidSamplesError(f"features have shape {xs.shape}, expected (n, d) with d >= 1")
    if ys.shape[0] != xs.shape[0]:
        raise InvalidSamplesError(f"{ys.shape[0]} labels for {xs.shape[0]} feature rows")
    if not np.isfinite(xs).all():
        raise InvalidSamplesError("features contain NaN or infinity")
    if ys.size and (not np.issubdtype(ys.dtype, np.integer) or ys.min() < 0):
        raise InvalidSamplesError("labels must be non-negative integers")
    return xs, ys.astype(np.int64)


class SampleStore:
    """Samples in ``StateDB.samples``; at most ``max_samples`` rows, the oldest go first.

    Each drop is counted (counter ``samples_dropped``). ``new_since_training()`` counts the
    rows added after the last ``mark_trained()``: the training trigger.
    """

    def __init__(self, db: StateDB, *, max_samples: int) -> None:
        self._db = db
        self.max_samples = max_samples

    def add(self, x: ArrayLike, y: ArrayLike) -> int:
        """Store samples (validated by ``as_samples``) and return how many were added."""
        xs, ys = as_samples(x, y)
        with self._db.transaction() as conn:
            self.add_in(conn, xs, ys)
        return int(ys.shape[0])

    def add_in(
        self, conn: sqlite3.Connection, xs: NDArray[np.float32], ys: NDArray[np.int64]
    ) -> None:
        """Insert checked samples inside the caller's transaction, then enforce the bound."""
        dim = int(xs.shape[1])
        little = xs.astype("<f4", copy=False)
        conn.executemany(
            "INSERT INTO samples (dim, x, y) VALUES (?, ?, ?)",
            ((dim, row.tobytes(), int(label)) for row, label in zip(little, ys, strict=True)),
        )
        (count,) = conn.execute("SELECT COUNT(*) FROM samples").fetchone()
        excess = count - self.max_samples
        if excess > 0:
            conn.execute(
                "DELETE FROM samples WHERE id IN (SELECT id FROM samples ORDER BY id LIMIT ?)",
                (excess,),
            )
            self._db.bump("samples_dropped", excess)
            logger.warning(
                "sample store full (%d): dropped the %d oldest samples", self.max_samples, excess
            )

    def __len__(self) -> int:
        return int(self._db.query("SELECT COUNT(*) FROM samples")[0][0])

    def new_since_training(self) -> int:
        """Samples added after the last ``mark_trained``."""
        upto = self._db.get(_TRAINED_UPTO, 0)
        return int(self._db.query("SELECT COUNT(*) FROM samples WHERE id > ?", (upto,))[0][0])

    def load(self, dim: int) -> tuple[NDArray[np.float32], NDArray[np.int64], int]:
        """All stored samples with ``dim`` features, oldest first, and the newest row id.

        Rows of another width (stored before the model changed shape) are skipped.
        """
        rows = self._db.query("SELECT id, x, y FROM samples WHERE dim = ? ORDER BY id", (dim,))
        if not rows:
            return np.zeros((0, dim), np.float32), np.zeros(0, np.int64), 0
        xs = np.frombuffer(b"".join(r[1] for r in rows), dtype="<f4").reshape(len(rows), dim)
        ys = np.fromiter((r[2] for r in rows), dtype=np.int64, count=len(rows))
        return xs.astype(np.float32), ys, int(rows[-1][0])

    def newest_id(self) -> int:
        """The id of the newest sample (0 if none)."""
        return int(self._db.query("SELECT COALESCE(MAX(id), 0) FROM samples")[0][0])

    def mark_trained(self, conn: sqlite3.Connection, upto: int) -> None:
        """Record, in the caller's transaction, that samples up to id ``upto`` were used."""
        conn.execute(
            "INSERT OR REPLACE INTO meta (key, value) VALUES (?, ?)", (_TRAINED_UPTO, upto)
        )
