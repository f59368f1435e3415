"""``fedmq bench learning`` end to end: the real system computes what the numpy loop does."""

from __future__ import annotations

import os
import re
import subprocess
import sys
from pathlib import Path

import pytest

from device.models import ModelSpec
from fedmq.bench_learning import run_sync_fedavg
from fedmq.digits import dirichlet_partition, load_digits_split
from fedmq.reference_fedavg import reference_fedavg
from serialization import Codec

REPO = Path(__file__).resolve().parents[2]
_ROW = re.compile(r"^\s*(\d+)\s+([0-9.e+-]+)\s+([0-9.]+)\s+([0-9.]+)\s*$")


@pytest.mark.integration
def test_bench_learning_part_a_matches_the_numpy_loop(tmp_path: Path) -> None:
    """N=4 devices, 5 rounds through Mosquitto, Redis, the aggregator process and daemons:
    every round within 1e-5 of the numpy loop, accuracies identical to an independent run
    of that loop, exit 0, and nothing left in the temp dir."""
    scratch = tmp_path / "tmp"
    scratch.mkdir()
    result = subprocess.run(
        [sys.executable, "-m", "fedmq.cli", "bench", "learning", "--parts", "a",
         "--devices", "4", "--rounds", "5"],
        cwd=REPO, env={**os.environ, "TMPDIR": str(scratch)},
        capture_output=True, text=True, timeout=240, check=False,
    )  # fmt: skip
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-3000:]
    rows = [m.groups() for line in result.stdout.splitlines() if (m := _ROW.match(line))]
    split = load_digits_split()
    reference = reference_fedavg(split, dirichlet_partition(split.y_train, 4), rounds=5)
    assert [int(r[0]) for r in rows] == [1, 2, 3, 4, 5]
    assert all(float(r[1]) <= 1e-5 for r in rows)
    assert [float(r[2]) for r in rows] == [round(r.accuracy, 4) for r in reference]
    assert [float(r[3]) for r in rows] == [round(r.accuracy, 4) for r in reference]
    assert "accuracy curves identical: yes" in result.stdout
    assert "(a) PASS" in result.stdout
    assert re.search(r"wall time: real system [0-9.]+ s, numpy loop [0-9.]+ s", result.stdout)
    assert list(scratch.iterdir()) == [], "the bench left files in its temp dir"


@pytest.mark.integration
def test_bench_learning_tap_counts_int8_update_bytes() -> None:
    """3 devices, 2 rounds, int8: the tap sees 6 updates whose tensors are 650 int8 values
    plus two float32 scales each (softmax 64x10 + 10), and the run's last model is the one
    the numpy loop would give up to int8 error."""
    split = load_digits_split()
    shares = dirichlet_partition(split.y_train, 3)
    spec = ModelSpec(kind="softmax", n_features=64, n_classes=10)
    run = run_sync_fedavg(
        split, shares, rounds=2, spec=spec, initial=spec.init(), codec=Codec(name="int8")
    )
    assert run.updates == 6
    assert run.tensor_bytes == 6 * (650 + 2 * 4)
    assert 6 * 658 < run.bytes_up < 6 * (658 + 1000)
    exact = reference_fedavg(split, shares, rounds=2)[-1].params
    assert len(run.params) == 2
    for name, value in exact.items():
        difference = abs(run.params[-1][name] - value).max()
        assert 0 < difference < 0.05 * float(abs(value).max())
