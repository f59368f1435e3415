"""Chaos scenario 5 at CI size: 20% Byzantine devices vs plain FedBuff and its robust options."""

from __future__ import annotations

from pathlib import Path

import pytest

from tests.chaos.byzantine import REDUCED, run
from tests.chaos.report import ChaosReport

pytestmark = [pytest.mark.integration, pytest.mark.chaos]


def test_byzantine_devices(tmp_path: Path, publish_report: list[ChaosReport]) -> None:
    """A robust option keeps accuracy within 2 points of a clean run; plain FedBuff does not."""
    report = run(REDUCED, tmp_path)
    publish_report.append(report)
    assert not report.failed, report.render()
