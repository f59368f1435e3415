"""What a SIGKILLed device daemon left on disk: its stores read as the daemon would, its phase."""

from __future__ import annotations

import shutil
import sqlite3
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from device.errors import DeviceError
from device.model_store import MODEL_FILE, read_held_model
from device.outbox import Outbox
from device.residual import ResidualStore
from device.samples import SampleStore
from device.state_db import STATE_FILE, StateDB
from serialization import ModelUpdate, SerializationError, VerifyKey

__all__ = [
    "PHASES",
    "SAMPLE_ID_SCALE",
    "StoreInspection",
    "inspect_stores",
    "outbox_ids_live",
    "sample_row",
]

PHASES = ("model write", "training", "receipt", "publish", "startup", "idle")
"""Where a kill landed, judged from what the daemon left (first that applies):
model write: ``model.release.tmp`` exists (killed between creating it and the rename);
training: the held model is newer than the version last trained on (a round was due and
not committed); receipt: the outbox holds an update the aggregator has accepted (its
receipt not handled yet); publish: the outbox holds updates not accepted yet; startup: the
daemon had not connected since it was started; idle: none of these."""

SAMPLE_ID_SCALE = 2.0**-14
"""The last feature of every spool sample is its unique id times this (exact in float32)."""

_TRAINED_VERSION = "training.trained_version"


def sample_row(uid: int, rng: np.random.Generator, dim: int) -> np.ndarray:
    """Features of spool sample ``uid``: random, with the id in the last column."""
    row = rng.normal(0.0, 1.0, size=dim).astype(np.float32)
    row[-1] = np.float32(uid * SAMPLE_ID_SCALE)
    return row


@dataclass(frozen=True, kw_only=True)
class StoreInspection:
    """One dead daemon's state directory, checked before it is restarted."""

    faults: tuple[str, ...]
    """Every store found corrupt or unreadable (empty: all intact)."""
    outbox: frozenset[bytes]
    """Update ids in the outbox."""
    phase: str
    samples_stored_twice: int
    held_version: int


def _copy_database(state_dir: Path, scratch: Path) -> Path | None:
    """Copy state.db and its WAL as the crash left them, so that opening them to check does
    not checkpoint the daemon's own files before its restart."""
    source = state_dir / STATE_FILE
    if not source.exists():
        return None
    if scratch.exists():
        shutil.rmtree(scratch)
    scratch.mkdir(parents=True)
    for suffix in ("", "-wal"):
        if (state_dir / (STATE_FILE + suffix)).exists():
            shutil.copyfile(state_dir / (STATE_FILE + suffix), scratch / (STATE_FILE + suffix))
    return scratch / STATE_FILE


@dataclass(frozen=True, kw_only=True)
class _Database:
    outbox: frozenset[bytes] = frozenset()
    samples: int = 0
    samples_twice: int = 0
    trained_version: int = 0


def _check_database(path: Path, dim: int, faults: list[str]) -> _Database:
    """integrity_check, then the sample store, outbox and top-k residual read through the
    daemon's own classes."""
    with sqlite3.connect(path) as raw:
        verdict = raw.execute("PRAGMA integrity_check").fetchall()
    raw.close()
    if verdict != [("ok",)]:
        faults.append(f"state.db integrity_check: {verdict[:3]}")
    try:
        db = StateDB(path)
    except DeviceError as exc:
        faults.append(f"state.db does not open: {exc}")
        return _Database()
    try:
        x, _, _ = SampleStore(db, max_samples=1 << 30).load(dim)
        if not np.isfinite(x).all():
            faults.append("sample store holds non-finite features")
        uids = np.rint(x[:, -1].astype(np.float64) / SAMPLE_ID_SCALE).astype(np.int64)
        twice = int(uids.size - np.unique(uids).size)
        outbox = Outbox(db, max_updates=1 << 30, max_bytes=1 << 62, max_payload_bytes=1 << 62)
        ids = []
        for entry in outbox.entries():
            payload = outbox.payload(entry.update_id)
            try:
                decoded = ModelUpdate.decode(payload or b"")
            except SerializationError as exc:
                faults.append(f"outbox entry {entry.update_id.hex()} undecodable: {exc}")
                continue
            if decoded.update_id != entry.update_id:
                faults.append(f"outbox entry {entry.update_id.hex()} holds another update")
            ids.append(entry.update_id)
        residual = ResidualStore(db).load() or {}
        if not all(np.isfinite(value).all() for value in residual.values()):
            faults.append("top-k residual holds non-finite values")
        trained = int(db.get(_TRAINED_VERSION, 0))
    except (sqlite3.Error, ValueError) as exc:
        faults.append(f"state.db unreadable: {exc}")
        return _Database()
    finally:
        db.close()
    return _Database(
        outbox=frozenset(ids), samples=int(x.shape[0]), samples_twice=twice, trained_version=trained
    )


def inspect_stores(
    state_dir: Path,
    scratch: Path,
    *,
    task: str,
    verify_key: VerifyKey,
    dim: int,
    connected: bool,
    accepted: Callable[[bytes], bool],
) -> StoreInspection:
    """Check every store of a dead daemon and judge where it was killed (see PHASES).

    ``connected``: whether its log shows it connected since its last start; ``accepted``:
    whether the aggregator has accepted an update id.
    """
    faults: list[str] = []
    writing_model = (state_dir / (MODEL_FILE + ".tmp")).exists()
    held_version = 0
    try:
        held = read_held_model(state_dir, task=task, verify_key=verify_key)
        held_version = held.version if held is not None else 0
    except (DeviceError, OSError) as exc:
        faults.append(f"model store: {exc}")
    if (state_dir / (MODEL_FILE + ".rejected")).exists():
        faults.append("model store: the daemon set its stored model aside as unreadable")
    copy = _copy_database(state_dir, scratch)
    found = _Database() if copy is None else _check_database(copy, dim, faults)
    if writing_model:
        phase = "model write"
    elif held_version > found.trained_version and found.samples:
        phase = "training"
    elif any(accepted(update_id) for update_id in found.outbox):
        phase = "receipt"
    elif found.outbox:
        phase = "publish"
    elif not connected:
        phase = "startup"
    else:
        phase = "idle"
    return StoreInspection(
        faults=tuple(faults),
        outbox=found.outbox,
        phase=phase,
        samples_stored_twice=found.samples_twice,
        held_version=held_version,
    )


def outbox_ids_live(state_dir: Path) -> list[bytes]:
    """Update ids in a running daemon's outbox (a read-only connection beside it)."""
    uri = f"file:{state_dir / STATE_FILE}?mode=ro"
    with sqlite3.connect(uri, uri=True, timeout=10) as db:
        rows = db.execute("SELECT update_id FROM outbox ORDER BY seq").fetchall()
    db.close()
    return [bytes(r[0]) for r in rows]
