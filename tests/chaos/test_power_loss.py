"""Device power loss (issue 6.2), CI size: SIGKILLed daemons keep intact stores, lose nothing."""

from __future__ import annotations

from pathlib import Path

import pytest

from tests.chaos.power_loss import REDUCED, run
from tests.chaos.report import ChaosReport

pytestmark = [pytest.mark.integration, pytest.mark.chaos]


def test_device_power_loss(tmp_path: Path, publish_report: list[ChaosReport]) -> None:
    """About 30 SIGKILLs of 4 daemons: no corrupt store, no outboxed update lost or doubled."""
    report = run(REDUCED, tmp_path)
    publish_report.append(report)
    assert not report.failed, report.render()
