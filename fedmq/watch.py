"""Judge a task's signed model releases: verify, order, save and evaluate each (no network)."""

from __future__ import annotations

import datetime
import hashlib
import json
import logging
import zipfile
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path
from typing import Literal

import numpy as np
from numpy.typing import NDArray

from device.errors import DeviceError
from device.models import accuracy
from fedmq.atomic_file import replace_file
from serialization import ModelRelease, SerializationError, VerifyKey, validate_identifier

__all__ = [
    "Dataset",
    "ReleaseWatcher",
    "Seen",
    "WatchError",
    "WatchSummary",
    "load_verify_key",
]

logger = logging.getLogger(__name__)


class WatchError(Exception):
    """The watch cannot run; ``what`` names the culprit (key, dataset, password, ...)."""

    def __init__(self, message: str, *, what: str) -> None:
        super().__init__(message)
        self.what = what


@dataclass(frozen=True, kw_only=True, slots=True, eq=False)
class Dataset:
    """Labelled rows to evaluate releases on: ``x`` float32 (n, f), ``y`` int (n,)."""

    path: Path
    x: NDArray[np.float32]
    y: NDArray[np.int64]

    @classmethod
    def load(cls, path: Path) -> Dataset:
        """Read an ``.npz`` holding ``x`` and ``y``; WatchError if it is not such a file."""
        try:
            with np.load(path, allow_pickle=False) as data:
                x, y = np.asarray(data["x"]), np.asarray(data["y"])
        except (OSError, ValueError, KeyError, TypeError, zipfile.BadZipFile) as exc:
            message = f"cannot read {path} as an .npz with x and y: {exc}"
            raise WatchError(message, what="dataset") from exc
        if x.ndim != 2 or y.shape != (x.shape[0],) or x.shape[0] == 0:
            raise WatchError(
                f"{path}: x must be (n, features) and y (n,) with n >= 1, got {x.shape} and "
                f"{y.shape}",
                what="dataset",
            )
        if not np.issubdtype(y.dtype, np.integer) or not np.issubdtype(x.dtype, np.number):
            raise WatchError(f"{path}: x must be numbers and y integers", what="dataset")
        features = x.astype(np.float32)
        if not np.isfinite(features).all():
            raise WatchError(f"{path}: x holds NaN or infinity", what="dataset")
        return cls(path=path, x=features, y=y.astype(np.int64))


@dataclass(kw_only=True, slots=True)
class WatchSummary:
    """What a watch saw: releases verified, payloads refused by reason, why it stopped."""

    verified: int = 0
    refused: Counter[str] = field(default_factory=Counter)
    newest_version: int | None = None
    error: str | None = None
    """Set when the watch stopped on an error (login or subscription refused)."""

    def line(self, topic: str) -> str:
        """One line for the end of a watch."""
        total = sum(self.refused.values())
        reasons = ", ".join(f"{r}={n}" for r, n in sorted(self.refused.items()))
        return f"watched {topic}: {self.verified} verified, {total} refused" + (
            f" ({reasons})" if reasons else ""
        )


@dataclass(frozen=True, kw_only=True, slots=True, eq=False)
class Seen:
    """The verdict on one payload of the model topic, with the lines to print for it."""

    outcome: Literal["verified", "refused", "repeat"]
    line: str = ""
    """The release line (verified) or the WARNING line (refused); empty for a repeat."""
    warnings: tuple[str, ...] = ()
    """WARNING lines about a verified release (saving or evaluating it failed)."""
    reason: str = ""
    release: ModelRelease | None = None
    accuracy: float | None = None
    saved: Path | None = None


def _one_line(text: str) -> str:
    return text.replace("\r", "\\r").replace("\n", "\\n")


def _timestamp(seconds: float) -> str:
    try:
        moment = datetime.datetime.fromtimestamp(seconds, datetime.UTC)
    except (OverflowError, OSError, ValueError):
        return repr(seconds)
    return moment.strftime("%Y-%m-%dT%H:%M:%SZ")


class ReleaseWatcher:
    """Judges each payload of one task's model topic; no I/O but the save directory.

    A payload is printed only if its signature verifies with ``verify_key``, its body is
    for ``task`` and its version is newer than the newest release accepted so far (SPEC.md
    10.3). The same payload again (a retained release re-sent on reconnect) is a quiet
    repeat. With ``save_dir``, the newest release saved there by an earlier watch (checked
    again) is the starting point, so a restart refuses older versions too.
    """

    def __init__(
        self,
        *,
        task: str,
        verify_key: VerifyKey,
        save_dir: Path | None = None,
        dataset: Dataset | None = None,
    ) -> None:
        self.task = validate_identifier(task, "task")
        self.verify_key = verify_key
        self.save_dir = save_dir
        self.dataset = dataset
        self.summary = WatchSummary()
        self._held: tuple[int, bytes] | None = None
        self._shown: bytes | None = None
        if save_dir is not None:
            try:
                save_dir.mkdir(parents=True, exist_ok=True)
            except OSError as exc:
                raise WatchError(f"cannot create {save_dir}: {exc}", what="save_dir") from exc
            self._held = self._newest_saved(save_dir)

    def _path(self, save_dir: Path, version: int) -> Path:
        return save_dir / f"{self.task}-v{version}.msgpack"

    def _newest_saved(self, save_dir: Path) -> tuple[int, bytes] | None:
        versions = []
        for path in save_dir.glob(f"{self.task}-v*.msgpack"):
            number = path.name[len(self.task) + 2 : -len(".msgpack")]
            if number.isascii() and number.isdecimal():
                versions.append(int(number))
        for version in sorted(versions, reverse=True):
            path = self._path(save_dir, version)
            try:
                payload = path.read_bytes()
                release = ModelRelease.decode(payload, self.verify_key)
            except (OSError, SerializationError) as exc:
                logger.warning("ignoring %s: %s", path, exc)
                continue
            if (release.task, release.version) == (self.task, version):
                logger.info("starting from version %d saved in %s", version, save_dir)
                return version, hashlib.sha256(payload).digest()
        return None

    def _refuse(self, reason: str, detail: str, size: int) -> Seen:
        self.summary.refused[reason] += 1
        line = f"WARNING refused a {size}-byte payload: {reason}: {_one_line(detail)}"
        return Seen(outcome="refused", line=line, reason=reason)

    def handle(self, payload: bytes) -> Seen:
        """Judge one payload of the model topic; counts it in ``summary``."""
        digest = hashlib.sha256(payload).digest()
        if digest == self._shown:
            return Seen(outcome="repeat")
        if not payload:
            return self._refuse("empty", "the retained release was cleared", 0)
        try:
            release = ModelRelease.decode(payload, self.verify_key)
        except SerializationError as exc:
            return self._refuse(exc.reason, str(exc), len(payload))
        if release.task != self.task:
            return self._refuse("foreign_task", f"release of task {release.task!r}", len(payload))
        if self._held is not None and digest != self._held[1] and release.version <= self._held[0]:
            detail = f"version {release.version} is not newer than version {self._held[0]}"
            return self._refuse("rollback", detail, len(payload))
        self._held, self._shown = (release.version, digest), digest
        self.summary.verified += 1
        self.summary.newest_version = release.version
        warnings: list[str] = []
        saved = self._save(release.version, payload, warnings)
        score = self._evaluate(release, warnings)
        line = self.describe(release, len(payload))
        if score is not None:
            line += f" accuracy={score:.4f}"
        if saved is not None:
            line += f" saved={saved}"
        return Seen(
            outcome="verified",
            line=line,
            warnings=tuple(warnings),
            release=release,
            accuracy=score,
            saved=saved,
        )

    @staticmethod
    def describe(release: ModelRelease, size: int) -> str:
        """The release line: version, parent, time, size, updates, key id, metadata."""
        metadata = json.dumps(dict(release.metadata), separators=(",", ":"))
        return (
            f"release task={release.task} version={release.version} "
            f"parent={release.parent_version} created={_timestamp(release.created_at)} "
            f"bytes={size} updates={release.update_count} key={_one_line(release.key_id)} "
            f"metadata={metadata}"
        )

    def _save(self, version: int, payload: bytes, warnings: list[str]) -> Path | None:
        if self.save_dir is None:
            return None
        path = self._path(self.save_dir, version)
        try:
            if not (path.exists() and path.read_bytes() == payload):
                replace_file(path, payload, mode=0o644)
        except OSError as exc:
            warnings.append(f"WARNING cannot save version {version} to {path}: {exc}")
            return None
        return path

    def _evaluate(self, release: ModelRelease, warnings: list[str]) -> float | None:
        if self.dataset is None:
            return None
        try:
            return accuracy(release.float32_tensors(), self.dataset.x, self.dataset.y)
        except DeviceError as exc:
            warnings.append(
                f"WARNING cannot evaluate version {release.version} on {self.dataset.path}: "
                f"{_one_line(str(exc))}"
            )
            return None


def load_verify_key(path: Path) -> VerifyKey:
    """The aggregator's release verify key from a PEM file; WatchError if it is not one."""
    try:
        return VerifyKey.from_pem(path.read_bytes())
    except (OSError, SerializationError) as exc:
        raise WatchError(f"cannot load the public key {path}: {exc}", what="public_key") from exc
