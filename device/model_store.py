"""The model store: verifies signed releases, refuses bad ones, keeps the newest on disk."""

from __future__ import annotations

import hashlib
import logging
import os
import threading
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from numpy.typing import ArrayLike, NDArray

from device.errors import (
    ConfigError,
    ForeignTaskError,
    ForgedReleaseError,
    InvalidModelError,
    MalformedReleaseError,
    ReleaseModelError,
    ReleaseRefusedError,
    RollbackError,
)
from device.models import ModelSpec, Params, predict, predict_proba, spec_from_params
from serialization import (
    DEFAULT_LIMITS,
    Limits,
    ModelRelease,
    SerializationError,
    SignatureError,
    VerifyKey,
)

__all__ = [
    "MODEL_FILE",
    "HeldModel",
    "ModelStore",
    "check_release",
    "load_verify_key",
    "read_held_model",
]

logger = logging.getLogger(__name__)

MODEL_FILE = "model.release"
"""The held release exactly as received: signed, so it is re-verified at every start."""


@dataclass(frozen=True, kw_only=True, slots=True, eq=False)
class HeldModel:
    """A verified release, decoded into float32 parameters ready for prediction."""

    task: str
    version: int
    parent_version: int
    key_id: str
    digest: bytes
    """SHA-256 of the signed payload."""
    spec: ModelSpec
    params: Params

    def predict(self, x: ArrayLike) -> NDArray[np.intp]:
        """The most probable class of every row of ``x``."""
        return predict(self.params, x)

    def predict_proba(self, x: ArrayLike) -> NDArray[np.float32]:
        """Class probabilities, shape (n, n_classes)."""
        return predict_proba(self.params, x)


def check_release(
    payload: bytes,
    *,
    task: str,
    verify_key: VerifyKey,
    held: HeldModel | None,
    limits: Limits = DEFAULT_LIMITS,
) -> HeldModel | None:
    """Verify and decode ``payload``; None if it is the very release already held.

    Raises a ReleaseRefusedError subclass for anything that must not replace ``held``.
    """
    digest = hashlib.sha256(payload).digest()
    if held is not None and digest == held.digest:
        return None
    try:
        release = ModelRelease.decode(payload, verify_key, limits=limits)
    except SignatureError as exc:
        raise ForgedReleaseError(str(exc)) from exc
    except SerializationError as exc:
        raise MalformedReleaseError(str(exc)) from exc
    if release.task != task:
        raise ForeignTaskError(release.task, task)
    if held is not None and release.version <= held.version:
        raise RollbackError(release.version, held.version)
    params = release.float32_tensors()
    try:
        spec = spec_from_params(params)
    except InvalidModelError as exc:
        raise ReleaseModelError(exc.detail) from exc
    if not all(np.isfinite(value).all() for value in params.values()):
        raise ReleaseModelError("tensors hold NaN or infinity")
    return HeldModel(
        task=release.task,
        version=release.version,
        parent_version=release.parent_version,
        key_id=release.key_id,
        digest=digest,
        spec=spec,
        params=params,
    )


def read_held_model(
    directory: Path, *, task: str, verify_key: VerifyKey, limits: Limits = DEFAULT_LIMITS
) -> HeldModel | None:
    """The model stored in ``directory`` (verified again), or None if there is none.

    Raises a ReleaseRefusedError if the stored file no longer verifies (e.g. the
    aggregator key was rotated). Reads only, so it is safe beside a running daemon.
    """
    try:
        payload = (directory / MODEL_FILE).read_bytes()
    except FileNotFoundError:
        return None
    return check_release(payload, task=task, verify_key=verify_key, held=None, limits=limits)


def load_verify_key(path: Path) -> VerifyKey:
    """The aggregator's Ed25519 public key from a PEM file; ConfigError if unusable."""
    try:
        return VerifyKey.from_pem(path.read_bytes())
    except (OSError, SerializationError) as exc:
        raise ConfigError("aggregator_key", f"{path}: {exc}") from exc


def _write_atomically(path: Path, data: bytes) -> None:
    """Write temp, fsync, rename over ``path``, fsync the directory: old or new, never half."""
    tmp = path.with_name(path.name + ".tmp")
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    try:
        with os.fdopen(fd, "wb") as file:
            file.write(data)
            file.flush()
            os.fsync(file.fileno())
        os.replace(tmp, path)
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise
    dir_fd = os.open(path.parent, os.O_RDONLY)
    try:
        os.fsync(dir_fd)
    finally:
        os.close(dir_fd)


class ModelStore:
    """The daemon's held model: loaded at start, replaced only by a newer verified release.

    ``offer`` runs on the daemon thread; ``held`` may be read from any thread (the
    reference is swapped only after the file is durably in place).
    """

    def __init__(
        self,
        directory: Path,
        *,
        task: str,
        verify_key: VerifyKey,
        limits: Limits = DEFAULT_LIMITS,
    ) -> None:
        self.directory = directory
        self.task = task
        self.verify_key = verify_key
        self.limits = limits
        self._lock = threading.Lock()
        directory.mkdir(parents=True, exist_ok=True)
        (directory / (MODEL_FILE + ".tmp")).unlink(missing_ok=True)
        self._held = self._load()

    def _load(self) -> HeldModel | None:
        try:
            held = read_held_model(
                self.directory, task=self.task, verify_key=self.verify_key, limits=self.limits
            )
        except ReleaseRefusedError as exc:
            rejected = self.directory / (MODEL_FILE + ".rejected")
            os.replace(self.directory / MODEL_FILE, rejected)
            logger.warning("stored model no longer acceptable, moved to %s: %s", rejected, exc)
            return None
        if held is not None:
            logger.info("loaded model v%d of task %s from disk", held.version, held.task)
        return held

    @property
    def held(self) -> HeldModel | None:
        """The model that serves predictions and training, if any."""
        return self._held

    def offer(self, payload: bytes) -> HeldModel | None:
        """Hold ``payload`` if it is a newer valid release; None if it is the held one.

        Raises a ReleaseRefusedError subclass otherwise; the held model is unchanged.
        """
        with self._lock:
            candidate = check_release(
                payload,
                task=self.task,
                verify_key=self.verify_key,
                held=self._held,
                limits=self.limits,
            )
            if candidate is None:
                return None
            _write_atomically(self.directory / MODEL_FILE, payload)
            self._held = candidate
        logger.info(
            "holding model v%d (parent v%d, key %s)",
            candidate.version,
            candidate.parent_version,
            candidate.key_id,
        )
        return candidate
