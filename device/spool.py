"""The spool directory: JSON-lines sample files from non-Python sensor programs."""

from __future__ import annotations

import json
import logging
import math
import os
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from device.samples import SampleStore
from device.state_db import StateDB

__all__ = ["MAX_SPOOL_FILE_BYTES", "SPOOL_SUFFIX", "SpoolBatch", "SpoolReader", "parse_sample_line"]

logger = logging.getLogger(__name__)

SPOOL_SUFFIX = ".jsonl"
MAX_SPOOL_FILE_BYTES = 64 * 1024 * 1024


@dataclass(frozen=True, kw_only=True, slots=True)
class SpoolBatch:
    """What one ``ingest`` call took in."""

    files: int = 0
    samples: int = 0
    bad_lines: int = 0


def parse_sample_line(
    line: bytes, *, dim: int | None = None, n_classes: int | None = None
) -> tuple[list[float], int] | None:
    """``{"x": [numbers], "y": label}`` as (x, y), or None if the line is not a valid sample.

    ``dim`` and ``n_classes``, when given (a model is held), must match as well.
    """
    try:
        record = json.loads(line)
    except (UnicodeDecodeError, json.JSONDecodeError, RecursionError):
        return None
    if not isinstance(record, dict):
        return None
    x, y = record.get("x"), record.get("y")
    if not isinstance(x, list) or not x or type(y) is not int or y < 0:
        return None
    if not all(type(v) in (int, float) and math.isfinite(v) for v in x):
        return None
    if (dim is not None and len(x) != dim) or (n_classes is not None and y >= n_classes):
        return None
    return [float(v) for v in x], y


class SpoolReader:
    """Ingests ``*.jsonl`` files from a directory into the sample store, then deletes them.

    A writer creates ``name.tmp`` (any other suffix), writes it completely and renames it to
    ``name.jsonl``; the rename is atomic, so the daemon never sees half a file. The samples
    of a file and the file's identity (name, size, mtime) are committed in one transaction:
    if the daemon dies before the unlink, the file is recognised and not ingested twice.
    """

    def __init__(self, directory: Path, db: StateDB, samples: SampleStore) -> None:
        self.directory = directory
        self._db = db
        self._samples = samples
        directory.mkdir(parents=True, exist_ok=True)

    def pending(self) -> list[Path]:
        """Complete spool files waiting, in name order."""
        try:
            names = sorted(e.name for e in os.scandir(self.directory) if e.is_file())
        except FileNotFoundError:
            return []
        return [self.directory / n for n in names if n.endswith(SPOOL_SUFFIX)]

    def ingest(self, *, dim: int | None = None, n_classes: int | None = None) -> SpoolBatch:
        """Ingest every pending file; bad lines are skipped and counted (``spool_bad_lines``)."""
        files = samples = bad = 0
        for path in self.pending():
            added, skipped = self._ingest_file(path, dim, n_classes)
            files += 1
            samples += added
            bad += skipped
        return SpoolBatch(files=files, samples=samples, bad_lines=bad)

    def _ingest_file(self, path: Path, dim: int | None, n_classes: int | None) -> tuple[int, int]:
        try:
            stat = path.stat()
        except FileNotFoundError:
            return 0, 0
        key = (path.name, stat.st_size, stat.st_mtime_ns)
        done = self._db.query(
            "SELECT 1 FROM spool_ingested WHERE name = ? AND size = ? AND mtime_ns = ?", key
        )
        if done:
            self._forget(path, key)
            return 0, 0
        if stat.st_size > MAX_SPOOL_FILE_BYTES:
            rejected = self.directory / "rejected"
            rejected.mkdir(exist_ok=True)
            os.replace(path, rejected / path.name)
            self._db.bump("spool_rejected_files")
            logger.warning("spool file %s is above %d bytes: moved aside", path, stat.st_size)
            return 0, 0
        groups: dict[int, tuple[list[list[float]], list[int]]] = {}
        bad = 0
        for line in path.read_bytes().splitlines():
            if not line.strip():
                continue
            parsed = parse_sample_line(line, dim=dim, n_classes=n_classes)
            if parsed is None:
                bad += 1
                continue
            xs, ys = groups.setdefault(len(parsed[0]), ([], []))
            xs.append(parsed[0])
            ys.append(parsed[1])
        with self._db.transaction() as conn:
            for xs, ys in groups.values():
                self._samples.add_in(
                    conn, np.asarray(xs, dtype=np.float32), np.asarray(ys, dtype=np.int64)
                )
            conn.execute("INSERT OR IGNORE INTO spool_ingested VALUES (?, ?, ?)", key)
            if bad:
                self._db.bump("spool_bad_lines", bad)
        self._forget(path, key)
        added = sum(len(ys) for _, ys in groups.values())
        if bad:
            logger.warning("spool file %s: %d bad lines skipped", path.name, bad)
        logger.info("ingested %d samples from spool file %s", added, path.name)
        return added, bad

    def _forget(self, path: Path, key: tuple[str, int, int]) -> None:
        path.unlink(missing_ok=True)
        # Without this, a power cut may undo the unlink but not the key's deletion below
        # (SQLite's fsync does not cover the directory), and the file would be ingested again.
        _fsync_directory(self.directory)
        with self._db.transaction() as conn:
            conn.execute(
                "DELETE FROM spool_ingested WHERE name = ? AND size = ? AND mtime_ns = ?", key
            )


def _fsync_directory(directory: Path) -> None:
    """Make the directory's entries (an unlink) durable."""
    fd = os.open(directory, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)
