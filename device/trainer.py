"""Training rounds: when one is due, and turning stored samples into an outboxed update."""

from __future__ import annotations

import logging
import sqlite3
import time
from dataclasses import dataclass

import numpy as np
from numpy.typing import NDArray

from device.control import Pace
from device.errors import DeviceError
from device.model_store import HeldModel
from device.models import Params
from device.outbox import Outbox
from device.residual import ResidualStore, encode_with_feedback
from device.samples import SampleStore
from device.state_db import StateDB
from device.training import train_local
from serialization import ModelUpdate, SerializationError, new_update_id

__all__ = ["BuiltUpdate", "Trainer", "build_update"]

logger = logging.getLogger(__name__)

_TRAINED_VERSION = "training.trained_version"


@dataclass(frozen=True, kw_only=True, slots=True, eq=False)
class BuiltUpdate:
    """One round's result before it is queued."""

    update: ModelUpdate
    payload: bytes
    residual: Params | None
    """The top-k residual to keep after this update is sent (None: no residual)."""
    loss: float


def build_update(
    held: HeldModel,
    x: NDArray[np.float32],
    y: NDArray[np.int64],
    *,
    pace: Pace,
    residual: Params | None,
    device_id: str,
    rng: np.random.Generator,
) -> BuiltUpdate:
    """Train from ``held`` on (x, y) and encode ``local - base`` (plus residual) as an update."""
    settings = pace.training
    result = train_local(
        held.params,
        x,
        y,
        epochs=settings.epochs,
        batch_size=settings.batch_size,
        lr=settings.lr,
        prox_mu=settings.prox_mu,
        rng=rng,
    )
    tensors, new_residual = encode_with_feedback(result.delta, pace.codec, residual, rng)
    update = ModelUpdate(
        task=held.task,
        device_id=device_id,
        update_id=new_update_id(),
        base_version=held.version,
        num_samples=result.num_samples,
        codec=pace.codec.name,
        tensors=tensors,
        metrics={"loss": result.loss},
        created_at=time.time(),
    )
    return BuiltUpdate(
        update=update, payload=update.encode(), residual=new_residual, loss=result.loss
    )


class Trainer:
    """Decides when a round is due and commits its update, residual and sample mark at once."""

    def __init__(
        self,
        db: StateDB,
        samples: SampleStore,
        outbox: Outbox,
        residuals: ResidualStore,
        *,
        device_id: str,
        rng: np.random.Generator,
    ) -> None:
        self._db = db
        self._samples = samples
        self._outbox = outbox
        self._residuals = residuals
        self._device_id = device_id
        self._rng = rng
        self.last_round = time.monotonic()

    @property
    def trained_version(self) -> int:
        """The model version of the last round (run, skipped or failed); 0 before any."""
        return int(self._db.get(_TRAINED_VERSION, 0))

    def due(self, pace: Pace, now: float, *, held_version: int = 0) -> bool:
        """Trigger ``samples``: enough new samples, or the interval passed with at least one
        new sample. Trigger ``model``: ``held_version`` has not been trained on yet and at
        least one sample is stored."""
        if pace.training.trigger == "model":
            return held_version > self.trained_version and self._samples.newest_id() > 0
        new = self._samples.new_since_training()
        if new >= pace.training.min_new_samples:
            return True
        interval = pace.training.interval
        return interval > 0 and new > 0 and now - self.last_round >= interval

    def next_interval_deadline(self, pace: Pace) -> float:
        """When the time trigger fires next (inf when it is off)."""
        interval = pace.training.interval
        if pace.training.trigger == "model":
            return float("inf")
        return self.last_round + interval if interval > 0 else float("inf")

    def skip(self, now: float, *, held_version: int = 0) -> None:
        """Consume the trigger without training (participation said no)."""
        newest = self._samples.newest_id()
        with self._db.transaction() as conn:
            self._samples.mark_trained(conn, newest)
            self._mark_version(conn, held_version)
        self.last_round = now

    def round_rng(self, pace: Pace, base_version: int) -> np.random.Generator:
        """The shuffling generator of a round from ``base_version``: the daemon's own, or
        ``default_rng(1000 * (base_version - 1) + seed)`` when ``training.seed`` is set."""
        seed = pace.training.seed
        if seed is None:
            return self._rng
        return np.random.default_rng(1000 * (base_version - 1) + seed)

    def _mark_version(self, conn: sqlite3.Connection, version: int) -> None:
        if version > 0:
            conn.execute(
                "INSERT OR REPLACE INTO meta (key, value) VALUES (?, ?)",
                (_TRAINED_VERSION, version),
            )

    def run_round(self, held: HeldModel, pace: Pace, now: float) -> list[bytes]:
        """Train, encode and queue one update; return the update ids the outbox dropped.

        A failed round (diverged, too large) is counted and logged; its samples count as
        used so that the same failure is not retried on every tick.
        """
        self.last_round = now
        x, y, upto = self._samples.load(held.spec.n_features)
        in_range = y < held.spec.n_classes
        if not in_range.all():
            logger.info("training skips %d samples with labels >= n_classes", (~in_range).sum())
            x, y = x[in_range], y[in_range]
        if y.shape[0] == 0:
            self.skip(now, held_version=held.version)
            return []
        started = time.perf_counter()
        try:
            built = build_update(
                held,
                x,
                y,
                pace=pace,
                residual=self._residuals.load(),
                device_id=self._device_id,
                rng=self.round_rng(pace, held.version),
            )
            self._outbox.check_size(built.payload)
        except (DeviceError, SerializationError) as exc:
            self._db.bump(f"training_failed_{exc.reason}")
            logger.warning("training round from model v%d failed: %s", held.version, exc)
            self.skip(now, held_version=held.version)
            return []
        update = built.update
        with self._db.transaction() as conn:
            dropped = self._outbox.put_in(
                conn,
                update_id=update.update_id,
                payload=built.payload,
                base_version=update.base_version,
                num_samples=update.num_samples,
                created_at=update.created_at,
            )
            self._residuals.save_in(conn, built.residual)
            self._samples.mark_trained(conn, upto)
            self._mark_version(conn, held.version)
        self._db.bump("updates_built")
        logger.info(
            "update %s from model v%d: %d samples, loss %.4f, %s codec, %d bytes, %.3f s",
            update.update_id.hex(),
            update.base_version,
            update.num_samples,
            built.loss,
            update.codec,
            len(built.payload),
            time.perf_counter() - started,
        )
        return dropped
