"""Scale and soak at CI size: a swarm on one Mosquitto, one or two aggregator replicas."""

from __future__ import annotations

from pathlib import Path

import pytest

from tests.chaos.report import ChaosReport
from tests.chaos.scale import REDUCED, REDUCED_TWO_REPLICAS, run

pytestmark = [pytest.mark.integration, pytest.mark.chaos]


def test_scale_swarm_counts_every_update_once(
    tmp_path: Path, publish_report: list[ChaosReport]
) -> None:
    """Hundreds of simulated devices, each with its own account and connection, stream
    counting-oracle updates at a steady rate: none lost, none counted twice, memory flat."""
    report = run(REDUCED, tmp_path)
    publish_report.append(report)
    assert not report.failed, report.render()


def test_scale_two_replicas_one_killed_counts_every_update_once(
    tmp_path: Path, publish_report: list[ChaosReport]
) -> None:
    """The same load on two replicas; the lease holder is SIGKILLed and restarted mid-run."""
    report = run(REDUCED_TWO_REPLICAS, tmp_path)
    publish_report.append(report)
    assert not report.failed, report.render()
