"""Unit tests of device.model_store: verification, refusals, atomic replacement on disk."""

from __future__ import annotations

import os
from pathlib import Path

import numpy as np
import pytest

from device.errors import (
    ForeignTaskError,
    ForgedReleaseError,
    MalformedReleaseError,
    ReleaseModelError,
    ReleaseRefusedError,
    RollbackError,
)
from device.model_store import MODEL_FILE, ModelStore, read_held_model
from device.models import ModelSpec, Params
from serialization import ModelRelease, SigningKey

SPEC = ModelSpec(kind="softmax", n_features=3, n_classes=2)
KEY = SigningKey.generate()


def params(seed: int) -> Params:
    """Random softmax weights."""
    rng = np.random.default_rng(seed)
    return {n: rng.normal(size=s).astype(np.float32) for n, s in SPEC.shapes().items()}


def release(version: int, seed: int = 0, *, task: str = "t", key: SigningKey = KEY) -> bytes:
    """A signed release."""
    return ModelRelease(
        task=task, version=version, parent_version=version - 1, tensors=params(seed)
    ).encode(key)


def store(directory: Path) -> ModelStore:
    """A store for task "t" trusting KEY."""
    return ModelStore(directory, task="t", verify_key=KEY.verify_key)


def test_model_store_holds_and_reloads_a_release(tmp_path: Path) -> None:
    """An accepted release is on disk and held again by a new store (a reboot)."""
    first = store(tmp_path)
    assert first.held is None
    held = first.offer(release(3, seed=1))
    assert held is not None
    assert (held.version, held.spec) == (3, SPEC)
    assert first.offer(release(3, seed=1)) is None
    again = store(tmp_path).held
    assert again is not None
    assert again.version == 3
    np.testing.assert_array_equal(again.params["W"], params(1)["W"])
    x = np.eye(3, dtype=np.float32)
    expected = np.argmax(x @ params(1)["W"] + params(1)["b"], axis=1)
    np.testing.assert_array_equal(again.predict(x), expected)


@pytest.mark.parametrize(
    ("payload", "error"),
    [
        (release(9, key=SigningKey.generate()), ForgedReleaseError),
        (b"\x93garbage", MalformedReleaseError),
        (release(9, task="other"), ForeignTaskError),
        (release(2), RollbackError),
        (release(5, seed=7), RollbackError),
        (
            ModelRelease(
                task="t", version=9, parent_version=8, tensors={"A": np.zeros(3, np.float32)}
            ).encode(KEY),
            ReleaseModelError,
        ),
        (
            ModelRelease(
                task="t",
                version=9,
                parent_version=8,
                tensors={**params(0), "b": np.array([np.inf, 0], np.float32)},
            ).encode(KEY),
            ReleaseModelError,
        ),
    ],
)
def test_model_store_refuses_and_keeps_the_held_model(
    tmp_path: Path, payload: bytes, error: type[ReleaseRefusedError]
) -> None:
    """Each bad release raises its typed error; the held model and the file are unchanged."""
    models = store(tmp_path)
    good = release(5)
    models.offer(good)
    with pytest.raises(error):
        models.offer(payload)
    held = models.held
    assert held is not None
    assert held.version == 5
    assert (tmp_path / MODEL_FILE).read_bytes() == good


def test_model_store_failed_write_keeps_old_model(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A crash between writing the temp file and the rename leaves the old file intact."""
    models = store(tmp_path)
    old = release(1)
    models.offer(old)

    def crash(_src: object, _dst: object) -> None:
        raise OSError("power cut")

    monkeypatch.setattr(os, "replace", crash)
    with pytest.raises(OSError, match="power cut"):
        models.offer(release(2, seed=4))
    monkeypatch.undo()
    held = models.held
    assert held is not None
    assert held.version == 1
    assert (tmp_path / MODEL_FILE).read_bytes() == old
    assert not (tmp_path / (MODEL_FILE + ".tmp")).exists()


def test_model_store_ignores_and_removes_half_written_temp(tmp_path: Path) -> None:
    """A truncated temp file left by a crash is removed at start; the stored model serves."""
    old = release(1)
    (tmp_path / MODEL_FILE).write_bytes(old)
    (tmp_path / (MODEL_FILE + ".tmp")).write_bytes(release(2)[:100])
    held = store(tmp_path).held
    assert held is not None
    assert held.version == 1
    assert not (tmp_path / (MODEL_FILE + ".tmp")).exists()


def test_model_store_moves_aside_a_file_that_no_longer_verifies(tmp_path: Path) -> None:
    """A stored release signed by another key (rotated or tampered) is not served."""
    (tmp_path / MODEL_FILE).write_bytes(release(1, key=SigningKey.generate()))
    assert store(tmp_path).held is None
    assert (tmp_path / (MODEL_FILE + ".rejected")).exists()
    assert read_held_model(tmp_path, task="t", verify_key=KEY.verify_key) is None
