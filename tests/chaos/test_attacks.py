"""Chaos scenario 4: every attack attempt is counted and none gets through."""

from __future__ import annotations

from pathlib import Path

import pytest

from tests.chaos.attacks import REDUCED, run
from tests.chaos.report import ChaosReport

pytestmark = [pytest.mark.integration, pytest.mark.chaos]


def test_attacks_get_nowhere(tmp_path: Path, publish_report: list[ChaosReport]) -> None:
    """ACL violations, bad logins, share-group hijack, id claims and hostile releases."""
    report = run(REDUCED, tmp_path)
    publish_report.append(report)
    assert not report.failed, report.render()
