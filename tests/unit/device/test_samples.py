"""Unit tests of device.samples and device.spool: bounds, the trigger mark, spool files."""

from __future__ import annotations

import json
import os
from pathlib import Path

import numpy as np
import pytest

from device.errors import InvalidSamplesError
from device.samples import SampleStore, as_samples
from device.spool import SpoolReader, parse_sample_line
from device.state_db import StateDB


def rows(start: int, n: int, dim: int = 2) -> np.typing.NDArray[np.float32]:
    """Rows whose first feature is their index (start, start+1, ...)."""
    x = np.zeros((n, dim), dtype=np.float32)
    x[:, 0] = np.arange(start, start + n)
    return x


def test_samples_bounded_store_drops_oldest_and_counts(db: StateDB) -> None:
    """Seven samples into a store of five: the two oldest go, counted."""
    store = SampleStore(db, max_samples=5)
    store.add(rows(0, 4), np.arange(4))
    store.add(rows(4, 3), np.arange(4, 7))
    x, y, newest = store.load(2)
    assert x[:, 0].tolist() == [2, 3, 4, 5, 6]
    assert y.tolist() == [2, 3, 4, 5, 6]
    assert len(store) == 5
    assert newest == store.newest_id()
    assert db.counters()["samples_dropped"] == 2


def test_samples_new_since_training_follows_the_mark(db: StateDB) -> None:
    """The trigger counts only rows added after mark_trained."""
    store = SampleStore(db, max_samples=100)
    store.add(rows(0, 3), np.zeros(3, np.int64))
    assert store.new_since_training() == 3
    _, _, newest = store.load(2)
    with db.transaction() as conn:
        store.mark_trained(conn, newest)
    assert store.new_since_training() == 0
    store.add(rows(0, 2)[0], 1)
    assert store.new_since_training() == 1


def test_samples_load_skips_other_widths(db: StateDB) -> None:
    """Rows of another feature count (stored before the model changed) are not loaded."""
    store = SampleStore(db, max_samples=100)
    store.add(rows(0, 2, dim=3), [0, 1])
    store.add(rows(10, 2, dim=2), [1, 0])
    x, y, _ = store.load(2)
    assert x.tolist() == [[10.0, 0.0], [11.0, 0.0]]
    assert y.tolist() == [1, 0]
    assert store.load(5)[0].shape == (0, 5)


@pytest.mark.parametrize(
    ("x", "y"),
    [([[1.0, float("nan")]], [0]), ([[1.0, 2.0]], [-1]), ([[1.0], [2.0]], [0]), ([[]], [0])],
)
def test_samples_refuse_invalid(x: list[list[float]], y: list[int]) -> None:
    """NaN, negative labels, count mismatches and empty rows raise InvalidSamplesError."""
    with pytest.raises(InvalidSamplesError):
        as_samples(x, y)


def write_spool(directory: Path, name: str, lines: list[str]) -> Path:
    """A spool file written the documented way: temp name, then rename."""
    directory.mkdir(parents=True, exist_ok=True)
    tmp = directory / f"{name}.tmp"
    tmp.write_text("\n".join(lines) + "\n")
    final = directory / f"{name}.jsonl"
    os.replace(tmp, final)
    return final


def test_spool_ingests_good_lines_counts_bad_and_deletes(db: StateDB, tmp_path: Path) -> None:
    """Valid lines become samples in order, bad ones are counted, the file is removed."""
    spool = tmp_path / "spool"
    store = SampleStore(db, max_samples=100)
    reader = SpoolReader(spool, db, store)
    good = [json.dumps({"x": [float(i), 1.0], "y": i % 3}) for i in range(4)]
    bad = [
        "not json",
        json.dumps({"x": [1.0, 2.0]}),
        json.dumps({"x": [1.0, 2.0], "y": -1}),
        json.dumps({"x": [1.0, 2.0], "y": 5}),
        json.dumps({"x": [1.0, 2.0, 3.0], "y": 0}),
        json.dumps({"x": ["a", 2.0], "y": 0}),
        json.dumps([1.0, 2.0]),
    ]
    write_spool(spool, "b", [good[0], bad[0], good[1], *bad[1:], good[2], good[3], ""])
    (spool / "half-written.tmp").write_text('{"x": [1')
    batch = reader.ingest(dim=2, n_classes=3)
    assert (batch.files, batch.samples, batch.bad_lines) == (1, 4, 7)
    x, y, _ = store.load(2)
    assert x[:, 0].tolist() == [0, 1, 2, 3]
    assert y.tolist() == [0, 1, 2, 0]
    assert sorted(p.name for p in spool.iterdir()) == ["half-written.tmp"]
    assert db.counters()["spool_bad_lines"] == 7


def test_spool_file_committed_before_a_crash_is_not_ingested_twice(
    db: StateDB, tmp_path: Path
) -> None:
    """Samples committed but the file not yet deleted (a crash): the next scan only deletes."""
    spool = tmp_path / "spool"
    store = SampleStore(db, max_samples=100)
    reader = SpoolReader(spool, db, store)
    path = write_spool(spool, "a", [json.dumps({"x": [1.0, 2.0], "y": 1})])
    stat = path.stat()
    with db.transaction() as conn:
        store.add_in(conn, *as_samples([[1.0, 2.0]], [1]))
        conn.execute(
            "INSERT INTO spool_ingested VALUES (?, ?, ?)",
            (path.name, stat.st_size, stat.st_mtime_ns),
        )
    assert reader.ingest().samples == 0
    assert len(store) == 1
    assert not path.exists()
    assert db.query("SELECT COUNT(*) FROM spool_ingested")[0][0] == 0


def test_spool_deletion_is_durable_before_the_file_is_forgotten(
    db: StateDB, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The spool directory is fsynced after the unlink and before the file's ingested key is
    deleted: a power cut can then not bring back a file whose key is already gone."""
    spool = tmp_path / "spool"
    reader = SpoolReader(spool, db, SampleStore(db, max_samples=100))
    path = write_spool(spool, "a", [json.dumps({"x": [1.0, 2.0], "y": 1})])
    directory = spool.stat().st_ino
    synced: list[tuple[bool, int]] = []
    fsync = os.fsync

    def recording_fsync(fd: int) -> None:
        if os.fstat(fd).st_ino == directory:
            keys = db.query("SELECT COUNT(*) FROM spool_ingested")[0][0]
            synced.append((path.exists(), keys))
        fsync(fd)

    monkeypatch.setattr(os, "fsync", recording_fsync)
    assert reader.ingest().samples == 1
    assert synced == [(False, 1)]
    assert db.query("SELECT COUNT(*) FROM spool_ingested")[0][0] == 0


def test_spool_parse_line_without_model_accepts_any_width() -> None:
    """With no model held, any non-empty finite row and non-negative label is a sample."""
    assert parse_sample_line(b'{"x": [1, 2.5, 3], "y": 7}') == ([1.0, 2.5, 3.0], 7)
    assert parse_sample_line(b'{"x": [1, 2], "y": true}') is None
    assert parse_sample_line(b'{"x": [], "y": 0}') is None
    assert parse_sample_line(b"\xff\xfe") is None
