"""``fedmq demo`` end to end: it learns, reports, and leaves no process or temp dir behind."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[2]


def _processes_using(directory: Path) -> list[str]:
    """Command lines of live processes whose cwd or arguments mention ``directory``."""
    found = []
    for proc in Path("/proc").iterdir():
        if not proc.name.isdigit():
            continue
        try:
            cmdline = (proc / "cmdline").read_bytes().replace(b"\0", b" ").decode()
            cwd = os.readlink(proc / "cwd")
        except OSError:
            continue
        if str(directory) in cmdline or cwd.startswith(str(directory)):
            found.append(cmdline)
    return found


@pytest.mark.integration
def test_demo_learns_reports_and_cleans_up(tmp_path: Path) -> None:
    """A short demo (6 devices) reaches 85% test accuracy, exits 0, writes a report whose
    accuracy rises, and leaves its temp dir and every server it started gone."""
    scratch = tmp_path / "tmp"
    scratch.mkdir()
    out = tmp_path / "out"
    result = subprocess.run(
        [sys.executable, "-m", "fedmq.cli", "demo", "--devices", "6", "--duration", "120",
         "--target-accuracy", "0.85", "--observe-seconds", "10", "--out", str(out)],
        cwd=REPO, env={**os.environ, "TMPDIR": str(scratch)},
        capture_output=True, text=True, timeout=240, check=False,
    )  # fmt: skip
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-3000:]
    assert "broker: mosquitto" in result.stdout
    assert "reached 85% test accuracy" in result.stdout
    report = json.loads((out / "report.json").read_text())
    accuracies = [r["accuracy"] for r in report["releases"]]
    assert report["reached_target"] is True
    assert max(accuracies) >= 0.85
    assert accuracies[-1] > accuracies[0]
    assert report["totals"]["receipts_accepted"] > 0
    assert report["totals"]["bytes_up"] > 0
    assert (out / "accuracy.png").read_bytes().startswith(b"\x89PNG")
    assert list(scratch.iterdir()) == [], "the demo left files in its temp dir"
    assert _processes_using(scratch) == []
