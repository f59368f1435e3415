"""Unit tests of ``fedmq device``: help without paho, offline predict, status."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from device.model_store import ModelStore
from fedmq.cli import build_parser
from fedmq.device_cli import read_rows
from serialization import ModelRelease, SigningKey

REPO = Path(__file__).resolve().parents[3]
KEY = SigningKey.generate()
W = np.array([[1.0, 0.0], [0.0, 1.0], [0.5, -0.5]], np.float32)
B = np.array([0.0, 0.1], np.float32)


def run(argv: list[str]) -> int:
    """Parse and run a fedmq command in-process (logging left alone)."""
    args = build_parser().parse_args(argv)
    code: int = args.handler(args)
    return code


@pytest.fixture
def config(tmp_path: Path) -> Path:
    """A device config whose broker is never contacted."""
    (tmp_path / "agg.pem").write_bytes(KEY.verify_key.to_pem())
    path = tmp_path / "device.toml"
    path.write_text(
        'device_id = "d1"\ntask = "t"\nstate_dir = "state"\naggregator_key = "agg.pem"\n'
        '[broker]\nport = 1\npassword = "pw"\n'
    )
    return path


def test_device_cli_help_works_without_paho() -> None:
    """``fedmq --help`` and ``fedmq device --help`` need neither paho nor device/."""
    code = (
        "import sys; sys.modules['paho'] = None\n"
        "from fedmq.cli import main\n"
        "for argv in (['--help'], ['device', '--help'], ['device', 'predict', '--help']):\n"
        "    try:\n"
        "        main(argv)\n"
        "    except SystemExit as exit:\n"
        "        assert exit.code == 0, exit.code\n"
        "assert 'device.daemon' not in sys.modules\n"
    )
    result = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, cwd=REPO, check=False
    )
    assert result.returncode == 0, result.stderr
    assert all(f"    {action} " in result.stdout for action in ("run", "predict", "status"))


def test_device_cli_reads_rows_in_both_formats() -> None:
    """A JSON array and JSON lines, rows as lists or {"x": ...}, give the same rows."""
    assert read_rows('[[1, 2], {"x": [3, 4]}]') == [[1, 2], [3, 4]]
    assert read_rows('[1, 2]\n\n{"x": [3, 4], "y": 0}\n') == [[1, 2], [3, 4]]
    with pytest.raises(ValueError, match="not a row"):
        read_rows('{"y": 1}')


def test_device_cli_predict_from_stored_model(
    config: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """No model yet: exit 1. With a stored model: labels = argmax(x W + b), as JSON."""
    x = np.array([[1, 0, 0], [0, 1, 0], [0, 0, 4], [0, 0, -4]], np.float32)
    rows = tmp_path / "rows.jsonl"
    rows.write_text("".join(json.dumps(row) + "\n" for row in x.tolist()))
    assert run(["device", "predict", "--config", str(config), "--input", str(rows)]) == 1
    release = ModelRelease(task="t", version=7, parent_version=6, tensors={"W": W, "b": B})
    ModelStore(tmp_path / "state", task="t", verify_key=KEY.verify_key).offer(release.encode(KEY))
    capsys.readouterr()
    assert run(["device", "predict", "--config", str(config), "--input", str(rows)]) == 0
    answer = json.loads(capsys.readouterr().out)
    assert answer["model_version"] == 7
    assert answer["labels"] == np.argmax(x @ W + B, axis=1).tolist()
    assert np.allclose(np.sum(answer["probabilities"], axis=1), 1.0)


def test_device_cli_status_reports_fresh_state(
    config: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """status on a new state directory: no model, nothing stored, no counters."""
    assert run(["device", "status", "--config", str(config)]) == 0
    state = json.loads(capsys.readouterr().out)
    assert state == {
        "device_id": "d1",
        "task": "t",
        "model_version": None,
        "samples": 0,
        "outbox": 0,
        "connections": 0,
        "counters": {},
    }


def test_device_cli_bad_config_exits_2(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    """A config error is reported on stderr with exit code 2."""
    path = tmp_path / "device.toml"
    path.write_text('task = "t"\n')
    assert run(["device", "predict", "--config", str(path), "--input", "-"]) == 2
    assert "device_id" in capsys.readouterr().err
