"""Unit tests of device.config: TOML, FL_* overrides, validation, the hidden password."""

from __future__ import annotations

from pathlib import Path

import pytest

from device.config import DeviceConfig, load_config
from device.errors import ConfigError

BASE = """
device_id = "dev-a"
task = "demo"
state_dir = "state"
aggregator_key = "keys/agg.pem"

[broker]
host = "broker.local"
port = 8883
password = "s3cret-pw"
tls_ca = "ca.pem"

[training]
epochs = 2
lr = 0.1

[codec]
name = "int8"
"""


def write(tmp_path: Path, text: str) -> Path:
    """A config file under tmp_path/etc."""
    path = tmp_path / "etc" / "device.toml"
    path.parent.mkdir(exist_ok=True)
    path.write_text(text)
    return path


def test_config_reads_toml_with_paths_relative_to_the_file(tmp_path: Path) -> None:
    """Values come from the file; relative paths resolve against its directory."""
    config = load_config(write(tmp_path, BASE), environ={})
    assert (config.device_id, config.task) == ("dev-a", "demo")
    assert config.state_dir == tmp_path / "etc" / "state"
    assert config.aggregator_key == tmp_path / "etc" / "keys" / "agg.pem"
    assert config.broker.tls_ca == tmp_path / "etc" / "ca.pem"
    assert (config.broker.host, config.broker.port, config.broker.password) == (
        "broker.local",
        8883,
        "s3cret-pw",
    )
    assert (config.training.epochs, config.training.lr, config.training.batch_size) == (2, 0.1, 32)
    assert config.codec.name == "int8"
    assert config.spool_dir == tmp_path / "etc" / "state" / "spool"


def test_config_env_overrides_file(tmp_path: Path) -> None:
    """FL_<KEY> and FL_<SECTION>_<KEY> win over the file and are parsed by field type."""
    environ = {
        "FL_DEVICE_ID": "dev-b",
        "FL_BROKER_PORT": "1999",
        "FL_BROKER_PASSWORD": "from-env",
        "FL_TRAINING_LR": "0.5",
        "FL_CODEC_NAME": "topk",
        "FL_CODEC_TOPK_FRACTION": "0.25",
        "FL_CODEC_STOCHASTIC": "yes",
        "FL_OUTBOX_INFLIGHT": "3",
        "FL_REDIS_URL": "ignored: not a device setting",
    }
    config = load_config(write(tmp_path, BASE), environ=environ)
    assert config.device_id == "dev-b"
    assert (config.broker.port, config.broker.password) == (1999, "from-env")
    assert config.training.lr == 0.5
    assert (config.codec.name, config.codec.topk_fraction, config.codec.stochastic) == (
        "topk",
        0.25,
        True,
    )
    assert config.outbox.inflight == 3


def test_config_from_env_alone(tmp_path: Path) -> None:
    """Without a file, the required keys can all come from the environment."""
    environ = {
        "FL_DEVICE_ID": "d1",
        "FL_TASK": "t1",
        "FL_STATE_DIR": str(tmp_path / "s"),
        "FL_AGGREGATOR_KEY": str(tmp_path / "k.pem"),
    }
    config = load_config(None, environ=environ)
    assert config.state_dir == tmp_path / "s"
    assert config.broker.port == 1883


def test_config_password_never_shown(tmp_path: Path) -> None:
    """The password is absent from repr and from the error about a wrongly typed one."""
    config = load_config(write(tmp_path, BASE), environ={})
    assert "s3cret-pw" not in repr(config)
    assert "s3cret-pw" not in repr(config.broker)
    with pytest.raises(ConfigError) as error:
        load_config(write(tmp_path, BASE.replace('"s3cret-pw"', "12345678")), environ={})
    assert error.value.key == "broker.password"
    assert "12345678" not in str(error.value)


def test_config_password_file(tmp_path: Path) -> None:
    """broker.password_file replaces the password with the file's first line."""
    (tmp_path / "etc").mkdir()
    (tmp_path / "etc" / "pw").write_text("from-file\nignored\n")
    text = BASE.replace('tls_ca = "ca.pem"', 'password_file = "pw"')
    config = load_config(write(tmp_path, text), environ={})
    assert config.broker.password == "from-file"  # noqa: S105 - a test value


@pytest.mark.parametrize(
    ("text", "environ", "key"),
    [
        ("colour = 1\n" + BASE, {}, "colour"),
        (BASE.replace("port = 8883", "prot = 8883"), {}, "broker.prot"),
        (BASE.replace('device_id = "dev-a"', ""), {}, "device_id"),
        (BASE, {"FL_TRAINING_EPOCHS": "two"}, "training.epochs"),
        (BASE, {"FL_BROKER_PORT": "0"}, "broker.port"),
        (BASE, {"FL_DEVICE_ID": "dev/a"}, "device_id"),
        (BASE, {"FL_TRAINING_LR": "nan"}, "training.lr"),
        (BASE, {"FL_OUTBOX_MAX_PAYLOAD_BYTES": "4718593"}, "outbox.max_payload_bytes"),
        (BASE, {"FL_TOPIC_ROOT": "fl/+"}, "topic_root"),
        (BASE.replace('name = "int8"', 'name = "zip"'), {}, "codec"),
        (BASE.replace("epochs = 2", "epochs = 0"), {}, "training"),
        (BASE.replace("epochs = 2", "epochs = true"), {}, "training.epochs"),
        ("training = 3\n" + BASE.replace("[training]", "[outbox]"), {}, "training"),
        (BASE.replace('tls_ca = "ca.pem"', 'tls_cert = "c.pem"'), {}, "broker.tls_cert"),
    ],
)
def test_config_refuses_bad_settings(
    tmp_path: Path, text: str, environ: dict[str, str], key: str
) -> None:
    """Unknown keys, missing keys, wrong types and out-of-range values raise ConfigError."""
    with pytest.raises(ConfigError) as error:
        load_config(write(tmp_path, text), environ=environ)
    assert error.value.key == key


def test_config_is_frozen(tmp_path: Path) -> None:
    """A loaded config cannot be changed."""
    config: DeviceConfig = load_config(write(tmp_path, BASE), environ={})
    with pytest.raises(AttributeError):
        config.task = "other"  # type: ignore[misc]
