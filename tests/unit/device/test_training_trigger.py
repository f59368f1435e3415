"""Unit tests of the ``training.trigger = "model"`` and ``training.seed`` options."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
from numpy.typing import NDArray

from device.config import TrainingSettings, load_config
from device.control import Pace
from device.errors import ConfigError
from device.model_store import HeldModel, check_release
from device.outbox import Outbox
from device.residual import ResidualStore
from device.samples import SampleStore
from device.state_db import StateDB
from device.trainer import Trainer
from device.training import train_local
from serialization import Codec, ModelRelease, ModelUpdate, SigningKey, decode_delta

KEY = SigningKey.generate()


def held_model(version: int) -> HeldModel:
    """A verified softmax model (4 features, 3 classes) held at ``version``."""
    rng = np.random.default_rng(1)
    tensors = {"W": rng.normal(size=(4, 3)).astype(np.float32), "b": np.zeros(3, np.float32)}
    payload = ModelRelease(task="t", version=version, parent_version=0, tensors=tensors)
    held = check_release(payload.encode(KEY), task="t", verify_key=KEY.verify_key, held=None)
    assert held is not None
    return held


def data(n: int, seed: int = 2) -> tuple[NDArray[np.float32], NDArray[np.int64]]:
    """n samples with 4 features and labels 0..2."""
    rng = np.random.default_rng(seed)
    return rng.normal(size=(n, 4)).astype(np.float32), np.arange(n, dtype=np.int64) % 3


def make_trainer(db: StateDB) -> tuple[Trainer, SampleStore, Outbox]:
    """A trainer over fresh stores, its own rng seeded 0."""
    samples = SampleStore(db, max_samples=100)
    outbox = Outbox(db, max_updates=10, max_bytes=10**6, max_payload_bytes=10**6)
    trainer = Trainer(
        db, samples, outbox, ResidualStore(db), device_id="d", rng=np.random.default_rng(0)
    )
    return trainer, samples, outbox


def model_pace(seed: int | None = None) -> Pace:
    """Trigger ``model``, 2 epochs of batch 4 at lr 0.1, codec none."""
    training = TrainingSettings(epochs=2, batch_size=4, lr=0.1, trigger="model", seed=seed)
    return Pace(training=training, codec=Codec())


def test_training_settings_default_is_samples_without_seed() -> None:
    """The defaults keep the old behaviour: sample-count trigger, random shuffling."""
    settings = TrainingSettings()
    assert (settings.trigger, settings.seed) == ("samples", None)


@pytest.mark.parametrize(
    ("changes", "key"),
    [({"trigger": "always"}, "training.trigger"), ({"seed": -1}, "training.seed")],
)
def test_training_settings_reject_bad_trigger_and_seed(
    changes: dict[str, object], key: str
) -> None:
    """An unknown trigger and a negative seed are ConfigErrors naming the key."""
    with pytest.raises(ConfigError) as info:
        TrainingSettings(**changes)  # type: ignore[arg-type]
    assert info.value.key == key


def test_load_config_reads_trigger_and_seed_from_toml_and_env(tmp_path: Path) -> None:
    """``[training] trigger/seed`` come from the file; FL_TRAINING_SEED overrides the seed."""
    path = tmp_path / "device.toml"
    path.write_text(
        'device_id = "d"\ntask = "t"\nstate_dir = "s"\naggregator_key = "k.pem"\n'
        '[training]\ntrigger = "model"\nseed = 7\n'
    )
    from_file = load_config(path, environ={})
    from_env = load_config(path, environ={"FL_TRAINING_SEED": "12"})
    assert (from_file.training.trigger, from_file.training.seed) == ("model", 7)
    assert from_env.training.seed == 12


def test_model_trigger_fires_once_per_new_version(db: StateDB) -> None:
    """Not without samples; once samples exist, once for v3 (whatever arrives after), then
    again only for v4."""
    trainer, samples, outbox = make_trainer(db)
    pace = model_pace()
    assert not trainer.due(pace, 0.0, held_version=3)
    samples.add(*data(3))
    assert trainer.due(pace, 0.0, held_version=3)
    trainer.run_round(held_model(3), pace, 1.0)
    assert (len(outbox), trainer.trained_version) == (1, 3)
    samples.add(*data(200))
    assert not trainer.due(pace, 1e9, held_version=3)
    assert trainer.due(pace, 1e9, held_version=4)
    assert trainer.next_interval_deadline(pace) == float("inf")


def test_samples_trigger_ignores_model_versions(db: StateDB) -> None:
    """With the default trigger a new model alone does not start a round."""
    trainer, samples, _ = make_trainer(db)
    pace = Pace(training=TrainingSettings(min_new_samples=5), codec=Codec())
    samples.add(*data(3))
    assert not trainer.due(pace, 0.0, held_version=9)
    samples.add(*data(2))
    assert trainer.due(pace, 0.0, held_version=0)


def test_model_trigger_trains_on_all_stored_samples(db: StateDB) -> None:
    """The round after v2 uses every stored sample, old and new, not only the new ones."""
    trainer, samples, outbox = make_trainer(db)
    pace = model_pace(seed=0)
    samples.add(*data(5))
    trainer.run_round(held_model(2), pace, 1.0)
    samples.add(*data(4, seed=3))
    trainer.run_round(held_model(3), pace, 2.0)
    counts = [e.num_samples for e in outbox.entries()]
    assert counts == [5, 9]


def test_seed_shuffles_with_1000_times_round_plus_seed(db: StateDB) -> None:
    """With seed 7, the update from v4 is train_local's delta with default_rng(3007)."""
    trainer, samples, outbox = make_trainer(db)
    x, y = data(11)
    samples.add(x, y)
    held = held_model(4)
    trainer.run_round(held, model_pace(seed=7), 1.0)
    (entry,) = outbox.entries()
    payload = outbox.payload(entry.update_id)
    assert payload is not None
    sent = decode_delta(ModelUpdate.decode(payload).tensors)
    expected = train_local(
        held.params, x, y, epochs=2, batch_size=4, lr=0.1, rng=np.random.default_rng(3007)
    )
    other = train_local(
        held.params, x, y, epochs=2, batch_size=4, lr=0.1, rng=np.random.default_rng(3008)
    )
    for name, delta in expected.delta.items():
        np.testing.assert_array_equal(sent[name], delta)
    assert any(not np.array_equal(sent[n], d) for n, d in other.delta.items())


def test_trained_version_survives_a_restart(db: StateDB) -> None:
    """A new Trainer on the same state does not train the same version again."""
    trainer, samples, _ = make_trainer(db)
    samples.add(*data(3))
    trainer.run_round(held_model(5), model_pace(), 1.0)
    again, _, _ = make_trainer(db)
    assert again.trained_version == 5
    assert not again.due(model_pace(), 2.0, held_version=5)
