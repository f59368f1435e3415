"""The I/O-free parts of the aggregator service: config, keys, state codec, ingest checks."""

from __future__ import annotations

import ast
from pathlib import Path

import numpy as np
import pytest

from aggregator.config import AggregatorConfig, load_config
from aggregator.errors import InvalidConfigError, StateError
from aggregator.ingest import UNKNOWN_UPDATE_ID, Accepted, IngestContext, Rejected, check_update
from aggregator.keys import TaskKeys
from aggregator.model_init import model_from_file, parse_tensor_spec, softmax_model, zeros_model
from aggregator.recent import RecentUpdates
from aggregator.release import committed_state, release_metadata, sign_release
from aggregator.server_optimizers import OptimizerState
from aggregator.state import pack_optimizer_state, unpack_optimizer_state
from aggregator.strategies.base import DeviceUpdate
from aggregator.strategies.fedavg import FedAvg
from aggregator.strategies.fedbuff import FedBuff
from aggregator.strategy_settings import StrategySettings
from serialization import (
    DEFAULT_LIMITS,
    Codec,
    ModelUpdate,
    SigningKey,
    encode_delta,
    new_update_id,
)

AGGREGATOR = Path(__file__).resolve().parents[3] / "aggregator"
PURE_SERVICE_MODULES = (
    "recent",
    "config",
    "ingest",
    "keys",
    "model_init",
    "release",
    "state",
    "strategy_settings",
)
IO_ROOTS = {"asyncio", "redis", "aiomqtt", "paho", "prometheus_client", "socket", "threading"}
IO_MODULES = {
    "aggregator.store",
    "aggregator.service",
    "aggregator.leader",
    "aggregator.mqtt_session",
    "aggregator.metrics",
    "aggregator.admin",
}


def _toml(tmp_path: Path, text: str) -> Path:
    path = tmp_path / "aggregator.toml"
    path.write_text(text)
    return path


def test_config_loads_toml_and_env_overrides(tmp_path: Path) -> None:
    """TOML values load; FL_* variables override them; relative key paths resolve."""
    path = _toml(
        tmp_path,
        'replica_id = "agg-3"\nsigning_key = "k.pem"\nmetrics_port = 9100\n'
        '[mqtt]\nurl = "mqtt://svc:pw@broker:1884"\n[redis]\nurl = "redis://r:1/2"\n'
        '[[tasks]]\nname = "demo"\nstrategy = "fedavg"\nbuffer_size = 4\ndeadline_s = 30.0\n'
        "max_norm = 5.0\n",
    )
    config = load_config(path, {})
    assert (config.replica_id, config.mqtt.host, config.mqtt.port) == ("agg-3", "broker", 1884)
    assert (config.mqtt.username, config.mqtt.password, config.mqtt.client_id) == (
        "svc",
        "pw",
        "agg-3",
    )
    assert config.signing_key_path == tmp_path / "k.pem"
    assert config.task("demo").strategy.uses_deadline
    assert config.task("demo").max_norm == 5.0
    env = {
        "FL_MQTT_URL": "mqtt://other@h2:1999",
        "FL_MQTT_PASSWORD": "secret2",
        "FL_REDIS_URL": "redis://x:3/0",
        "FL_REPLICA_ID": "agg-9",
        "FL_METRICS_PORT": "0",
    }
    overridden = load_config(path, env)
    assert (overridden.mqtt.host, overridden.mqtt.username, overridden.mqtt.password) == (
        "h2",
        "other",
        "secret2",
    )
    assert (overridden.redis_url, overridden.replica_id, overridden.metrics_port) == (
        "redis://x:3/0",
        "agg-9",
        0,
    )


def test_config_repr_hides_secrets(tmp_path: Path) -> None:
    """Neither the MQTT password nor the Redis URL (which may hold one) shows in repr."""
    path = _toml(
        tmp_path, '[mqtt]\nurl = "mqtt://svc:hunter2@b:1"\n[redis]\nurl = "redis://:pw9@r"\n'
    )
    text = repr(load_config(path, {}))
    assert "hunter2" not in text
    assert "pw9" not in text
    assert "AggregatorConfig" in text


@pytest.mark.parametrize(
    "text",
    [
        '[[tasks]]\nname = "bad/name"\n',
        '[[tasks]]\nname = "t"\nstrategy = "fedmagic"\n',
        '[[tasks]]\nname = "t"\nbuffer_size = 0\n',
        '[[tasks]]\nname = "t"\nserver_optimizer = {name = "sgd", lr = -1.0}\n',
        '[[tasks]]\nname = "t"\nnot_an_option = 1\n',
        "[mqtt]\nsession_expiry_s = 0\n",
        '[[tasks]]\nname = "t"\n[[tasks]]\nname = "t"\n',
    ],
)
def test_config_rejects_invalid_settings(tmp_path: Path, text: str) -> None:
    """Bad names, strategies, hyperparameters, unknown keys and duplicates fail at load."""
    with pytest.raises((InvalidConfigError, ValueError)):
        load_config(_toml(tmp_path, text), {})


def test_keys_share_the_task_hash_tag() -> None:
    """Every key of a task holds ``{task}`` so one Lua script may touch them all."""
    keys = TaskKeys.of("demo")
    names = [
        keys.state,
        keys.model,
        keys.updates,
        keys.payload(b"\x01" * 16),
        keys.incoming("b1", 0),
        keys.seen,
        keys.devices,
        keys.leader,
        keys.model_version(7),
    ]
    assert all(name.startswith("fl:{demo}:") for name in names)
    assert len(set(names)) == len(names)
    assert keys.model_version(7) == "fl:{demo}:model:7"


def test_state_optimizer_codec_round_trips() -> None:
    """Packed optimizer state decodes to equal arrays and step; garbage raises StateError."""
    state = OptimizerState(step=4, arrays={"m/w": np.arange(6, dtype=np.float32).reshape(2, 3)})
    back = unpack_optimizer_state(pack_optimizer_state(state))
    assert back is not None
    assert back.step == 4
    np.testing.assert_array_equal(back.arrays["m/w"], state.arrays["m/w"])
    assert unpack_optimizer_state(pack_optimizer_state(None)) is None
    with pytest.raises(StateError):
        unpack_optimizer_state(b"\x81\xa1x\x01")


def test_release_round_trips_through_committed_state() -> None:
    """A signed release decodes back to the model, version and carried metadata."""
    key = SigningKey.generate()
    model = {"w": np.array([1.5, -2.0], dtype=np.float32)}
    metadata = release_metadata(
        {"model.kind": "softmax"}, {"strategy": "fedbuff", "bad": float("nan")}
    )
    payload = sign_release(
        key=key,
        task="t",
        version=3,
        parent_version=2,
        model=model,
        update_count=5,
        created_at=1.0,
        metadata=metadata,
    )
    state = committed_state(key=key, release=payload, optimizer=b"", opened_at=2.0, updates_total=9)
    assert (state.version, state.updates_total, state.optimizer) == (3, 9, None)
    np.testing.assert_array_equal(state.model["w"], model["w"])
    assert dict(state.metadata) == {"model.kind": "softmax", "strategy": "fedbuff"}
    with pytest.raises(StateError):
        committed_state(
            key=SigningKey.generate(),
            release=payload,
            optimizer=b"",
            opened_at=0.0,
            updates_total=0,
        )


def _context(**overrides: object) -> IngestContext:
    values: dict[str, object] = {
        "task": "t",
        "layout": {"w": np.zeros(3, np.float32)},
        "version": 5,
        "admission": StrategySettings(max_staleness=2).build(state=None, opened_at=0.0),
        "max_norm": 10.0,
        "max_update_bytes": 10_000,
        "limits": DEFAULT_LIMITS,
    }
    values.update(overrides)
    return IngestContext(**values)  # type: ignore[arg-type]


def _payload(delta: np.ndarray, *, base: int = 5, device: str = "d1", task: str = "t") -> bytes:
    return ModelUpdate(
        task=task,
        device_id=device,
        update_id=new_update_id(),
        base_version=base,
        num_samples=2,
        codec="none",
        tensors=encode_delta({"w": delta}, Codec()),
    ).encode()


@pytest.mark.parametrize(
    ("payload", "reason"),
    [
        (b"\xc1", "malformed"),
        (_payload(np.ones(3, np.float32), task="other"), "task_mismatch"),
        (_payload(np.ones(3, np.float32), device="d2"), "device_mismatch"),
        (_payload(np.ones(4, np.float32)), "shape_mismatch"),
        (_payload(np.array([0, np.inf, 0], np.float32)), "non_finite"),
        (_payload(np.full(3, 7.0, np.float32)), "norm_exceeded"),
        (_payload(np.ones(3, np.float32), base=2), "stale"),
        (_payload(np.ones(3, np.float32), base=6), "future_version"),
        (_payload(np.ones(3000, np.float32)), "too_large"),
    ],
)
def test_ingest_check_rejects_with_reason(payload: bytes, reason: str) -> None:
    """Each bad payload becomes a Rejected with its reason, never an exception."""
    verdict = check_update(_context(), "d1", payload)
    assert isinstance(verdict, Rejected)
    assert verdict.reason == reason
    if reason in ("malformed", "too_large"):
        assert verdict.update_id == UNKNOWN_UPDATE_ID


def test_ingest_check_accepts_a_good_update() -> None:
    """A matching, finite, fresh update is accepted with its metadata and raw payload."""
    payload = _payload(np.ones(3, np.float32), base=4)
    verdict = check_update(_context(), "d1", payload)
    assert isinstance(verdict, Accepted)
    assert (verdict.base_version, verdict.num_samples, verdict.payload) == (4, 2, payload)


def test_strategy_settings_build_the_named_strategy() -> None:
    """fedbuff and fedavg tables build those strategies with their options."""
    fedavg = StrategySettings.from_table(
        {"strategy": "fedavg", "buffer_size": 3, "deadline_s": 9.0}
    ).build(state=None, opened_at=1.0)
    assert isinstance(fedavg, FedAvg)
    assert fedavg.deadline == 10.0
    fedbuff = StrategySettings().build(state=None, opened_at=0.0)
    assert isinstance(fedbuff, FedBuff)
    assert fedbuff.config.buffer_size == 10


def test_model_init_builds_zero_models_and_reads_npz(tmp_path: Path) -> None:
    """Shapes, the softmax spec and .npz files all give float32 models."""
    assert parse_tensor_spec("W=64x10") == ("W", (64, 10))
    with pytest.raises(InvalidConfigError):
        parse_tensor_spec("W=0x3")
    assert {n: a.shape for n, a in zeros_model(["a=2", "b=3x4"]).items()} == {
        "a": (2,),
        "b": (3, 4),
    }
    model, metadata = softmax_model(4, 3)
    assert (model["W"].shape, model["b"].shape, metadata["model.n_classes"]) == ((4, 3), (3,), 3)
    np.savez(tmp_path / "m.npz", w=np.arange(3, dtype=np.float64))
    loaded, _ = model_from_file(tmp_path / "m.npz", SigningKey.generate().verify_key)
    assert loaded["w"].dtype == np.float32
    np.testing.assert_array_equal(loaded["w"], [0.0, 1.0, 2.0])


def test_service_core_modules_import_no_io() -> None:
    """config, ingest, keys, release, state, model_init and strategy_settings stay I/O-free."""
    for name in PURE_SERVICE_MODULES:
        tree = ast.parse((AGGREGATOR / f"{name}.py").read_text())
        imported: set[str] = set()
        for node in ast.walk(tree):
            if isinstance(node, ast.Import):
                imported.update(a.name for a in node.names)
            elif isinstance(node, ast.ImportFrom) and node.module:
                imported.add(node.module)
        assert not {m for m in imported if m.split(".")[0] in IO_ROOTS}, name
        assert not imported & IO_MODULES, name


def test_default_config_is_valid() -> None:
    """The defaults alone make a valid (task-less) configuration."""
    assert AggregatorConfig().mqtt.session_expiry_s > 0


def test_recent_updates_are_bounded_by_bytes() -> None:
    """The ingest-to-fold cache keeps the oldest entries and refuses new ones when full
    (the fold consumes the oldest first)."""
    cache = RecentUpdates(max_bytes=100)
    kept = []
    for i in range(4):
        delta = {"w": np.full(10, i, dtype=np.float32)}
        kept.append(
            cache.put(bytes([i]) * 16, DeviceUpdate(delta=delta, base_version=1, num_samples=1))
        )
    assert kept == [True, True, False, False]
    assert cache.nbytes == 80
    assert cache.take(b"\x03" * 16) is None
    taken = cache.take(b"\x00" * 16)
    assert taken is not None
    np.testing.assert_array_equal(taken.delta["w"], np.full(10, 0, np.float32))
    assert cache.take(b"\x00" * 16) is None
    assert cache.nbytes == 40
