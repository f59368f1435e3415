"""Unit tests of device.trainer, device.control and device.backoff."""

from __future__ import annotations

import random

import numpy as np
import pytest

from device.backoff import Backoff
from device.config import TrainingSettings
from device.control import Pace, apply_control
from device.errors import ControlRefusedError
from device.model_store import HeldModel, check_release
from device.outbox import Outbox
from device.residual import ResidualStore
from device.samples import SampleStore
from device.state_db import StateDB
from device.trainer import Trainer, build_update
from device.training import train_local
from serialization import Codec, Control, ModelRelease, ModelUpdate, SigningKey, decode_delta

KEY = SigningKey.generate()
PACE = Pace(training=TrainingSettings(epochs=2, batch_size=4, lr=0.1), codec=Codec())


def held_model(version: int = 3) -> HeldModel:
    """A verified softmax model (4 features, 3 classes) held at ``version``."""
    rng = np.random.default_rng(1)
    tensors = {
        "W": rng.normal(size=(4, 3)).astype(np.float32),
        "b": np.zeros(3, np.float32),
    }
    payload = ModelRelease(task="t", version=version, parent_version=0, tensors=tensors)
    held = check_release(payload.encode(KEY), task="t", verify_key=KEY.verify_key, held=None)
    assert held is not None
    return held


def data(n: int) -> tuple[np.typing.NDArray[np.float32], np.typing.NDArray[np.int64]]:
    """n samples."""
    rng = np.random.default_rng(2)
    return rng.normal(size=(n, 4)).astype(np.float32), np.arange(n, dtype=np.int64) % 3


def test_trainer_update_is_the_train_local_delta() -> None:
    """build_update sends exactly train_local's delta from the held model (codec none)."""
    held = held_model()
    x, y = data(12)
    built = build_update(
        held,
        x,
        y,
        pace=PACE,
        residual=None,
        device_id="d",
        rng=np.random.default_rng(5),
    )
    reference = train_local(
        held.params,
        x,
        y,
        epochs=2,
        batch_size=4,
        lr=0.1,
        rng=np.random.default_rng(5),
    )
    update = ModelUpdate.decode(built.payload)
    assert (update.base_version, update.num_samples, update.device_id) == (3, 12, "d")
    for name, delta in decode_delta(update.tensors).items():
        np.testing.assert_array_equal(delta, reference.delta[name])
    assert update.metrics["loss"] == pytest.approx(reference.loss)


def test_trainer_round_commits_update_residual_and_mark_together(db: StateDB) -> None:
    """A due round queues one update, stores the top-k residual, and resets the trigger."""
    samples = SampleStore(db, max_samples=100)
    outbox = Outbox(db, max_updates=5, max_bytes=10**6, max_payload_bytes=10**6)
    residuals = ResidualStore(db)
    trainer = Trainer(db, samples, outbox, residuals, device_id="d", rng=np.random.default_rng(0))
    pace = Pace(
        training=TrainingSettings(min_new_samples=5, interval=60.0),
        codec=Codec(name="topk", topk_fraction=0.25),
    )
    samples.add(*data(4))
    assert not trainer.due(pace, trainer.last_round + 1)
    assert trainer.due(pace, trainer.last_round + 60)
    samples.add(*data(1))
    assert trainer.due(pace, trainer.last_round)
    trainer.run_round(held_model(), pace, 100.0)
    assert len(outbox) == 1
    assert samples.new_since_training() == 0
    assert not trainer.due(pace, 159.0)
    update = ModelUpdate.decode(outbox.payload(outbox.entries()[0].update_id) or b"")
    residual = residuals.load()
    assert residual is not None
    sent = decode_delta(update.tensors)
    assert all(np.count_nonzero(sent[n] * residual[n]) == 0 for n in sent)
    assert db.counters()["updates_built"] == 1


def test_control_overrides_config_and_falls_back() -> None:
    """Known settings override, unknown ones are ignored, a later control replaces it whole."""
    control = Control(
        task="t",
        seq=4,
        participation=0.5,
        settings={"epochs": 3, "lr": 1, "codec": "int8", "colour": "blue"},
    )
    pace = apply_control(PACE, control, task="t")
    assert (pace.training.epochs, pace.training.lr, pace.training.batch_size) == (3, 1.0, 4)
    assert (pace.codec.name, pace.participation, pace.seq) == ("int8", 0.5, 4)
    later = apply_control(PACE, Control(task="t", seq=5, settings={"batch_size": 8}), task="t")
    assert (later.training.epochs, later.training.batch_size, later.codec.name) == (2, 8, "none")


@pytest.mark.parametrize(
    "control",
    [
        Control(task="other", seq=1),
        Control(task="t", seq=1, settings={"epochs": 0}),
        Control(task="t", seq=1, settings={"epochs": 1.5}),
        Control(task="t", seq=1, settings={"codec": "zip"}),
        Control(task="t", seq=1, settings={"topk_fraction": 2.0}),
    ],
)
def test_control_refuses_invalid(control: Control) -> None:
    """Another task, out-of-range or mistyped settings raise ControlRefusedError."""
    with pytest.raises(ControlRefusedError):
        apply_control(PACE, control, task="t")


def test_backoff_full_jitter_within_growing_bounds() -> None:
    """Attempt n waits in [low, min(high, low * 2**n)]; reset starts over."""
    backoff = Backoff(0.5, 6.0, random.Random(1))
    delays = [backoff.next_delay() for _ in range(8)]
    for n, delay in enumerate(delays):
        assert 0.5 <= delay <= min(6.0, 0.5 * 2**n)
    assert max(delays[4:]) > 3.0
    backoff.reset()
    assert backoff.next_delay() == 0.5


def test_backoff_devices_spread_out() -> None:
    """Two devices with different randomness wait different times for the same attempt."""
    first, second = Backoff(1.0, 60.0, random.Random(1)), Backoff(1.0, 60.0, random.Random(2))
    a = [first.next_delay() for _ in range(6)][1:]
    b = [second.next_delay() for _ in range(6)][1:]
    assert all(x != y for x, y in zip(a, b, strict=True))
    with pytest.raises(ValueError, match="0 < low"):
        Backoff(0.0, 1.0)
