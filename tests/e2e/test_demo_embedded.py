"""``fedmq demo --broker embedded``: the whole loop over the embedded MQTT 3.1.1 broker."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time
from pathlib import Path

import pytest

from fedmq import demo_stack
from fedmq.demo_stack import choose_servers
from fedmq.local_servers import ServerStartError
from tests.e2e.test_demo import REPO, _processes_using


@pytest.mark.integration
def test_demo_embedded_learns_reports_and_cleans_up(tmp_path: Path) -> None:
    """With the embedded amqtt broker (devices, evaluator and aggregator on MQTT 3.1.1) a
    short demo reaches 85% test accuracy, says which broker and why, and leaves nothing."""
    scratch = tmp_path / "tmp"
    scratch.mkdir()
    out = tmp_path / "out"
    began = time.monotonic()
    result = subprocess.run(
        [sys.executable, "-m", "fedmq.cli", "demo", "--broker", "embedded", "--devices", "6",
         "--duration", "40", "--target-accuracy", "0.85", "--observe-seconds", "10",
         "--out", str(out)],
        cwd=REPO, env={**os.environ, "TMPDIR": str(scratch)},
        capture_output=True, text=True, timeout=55, check=False,
    )  # fmt: skip
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-3000:]
    assert time.monotonic() - began < 55
    assert "broker: amqtt (--broker embedded; embedded amqtt broker (MQTT 3.1.1))" in result.stdout
    assert "reached 85% test accuracy" in result.stdout
    report = json.loads((out / "report.json").read_text())
    assert (report["servers"]["broker"], report["servers"]["mqtt_version"]) == ("amqtt", "3.1.1")
    accuracies = [r["accuracy"] for r in report["releases"]]
    assert report["reached_target"] is True
    assert max(accuracies) >= 0.85
    assert accuracies[-1] > accuracies[0]
    assert report["totals"]["receipts_accepted"] > 0
    assert report["aggregator_exit"] == 0
    assert list(scratch.iterdir()) == [], "the demo left files in its temp dir"
    assert _processes_using(scratch) == []


@pytest.mark.integration
def test_demo_embedded_is_chosen_when_mosquitto_is_missing(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """``auto`` falls back to amqtt (MQTT 3.1.1) and says why; ``mosquitto`` then refuses;
    with the real PATH (Mosquitto installed, as the integration suite needs) it is MQTT 5."""
    monkeypatch.setattr(demo_stack, "find_mosquitto", lambda: None)
    choice = choose_servers("redis://127.0.0.1:1/0")
    assert (choice.broker, choice.mqtt_version) == ("amqtt", "3.1.1")
    assert choice.broker_reason == "mosquitto not found on PATH; embedded amqtt broker (MQTT 3.1.1)"
    with pytest.raises(ServerStartError, match="--broker mosquitto: mosquitto not"):
        choose_servers("redis://127.0.0.1:1/0", "mosquitto")
    monkeypatch.undo()
    found = choose_servers("redis://127.0.0.1:1/0")
    assert (found.broker, found.mqtt_version) == ("mosquitto", "5")
