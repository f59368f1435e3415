"""Chaos scenario 3 at CI size: hostile payloads from an authenticated device."""

from __future__ import annotations

from pathlib import Path

import pytest

from tests.chaos.hostile_input import REDUCED, run
from tests.chaos.report import ChaosReport

pytestmark = [pytest.mark.integration, pytest.mark.chaos]


def test_hostile_input_is_refused_and_honest_learning_goes_on(
    tmp_path: Path, publish_report: list[ChaosReport]
) -> None:
    """No hostile payload is accepted or stored, the aggregator never restarts, and the
    honest fleet learns as well as without the attacker."""
    report = run(REDUCED, tmp_path)
    publish_report.append(report)
    assert not report.failed, report.render()
