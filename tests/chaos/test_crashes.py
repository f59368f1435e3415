"""Exactly-once under crashes (issue 6, part 1) at the CI size."""

from __future__ import annotations

from pathlib import Path

import pytest

from tests.chaos.crashes import REDUCED, run
from tests.chaos.report import ChaosReport

pytestmark = [pytest.mark.integration, pytest.mark.chaos]


def test_every_update_counted_once_while_aggregator_broker_and_redis_are_killed(
    tmp_path: Path, publish_report: list[ChaosReport]
) -> None:
    """SIGKILLs of the aggregator, Mosquitto and Redis at random moments of a one-hot update
    stream: the retained final release counts every update exactly once."""
    report = run(REDUCED, tmp_path)
    publish_report.append(report)
    assert not report.failed, report.render()
