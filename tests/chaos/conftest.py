"""Chaos-suite plumbing: every scenario's report is printed in the terminal summary."""

from __future__ import annotations

import pytest

from tests.chaos.report import ChaosReport

_reports: list[ChaosReport] = []


@pytest.fixture
def publish_report() -> list[ChaosReport]:
    """Append a ChaosReport here to have it printed at the end of the run."""
    return _reports


def pytest_terminal_summary(terminalreporter: pytest.TerminalReporter) -> None:
    """Print the figures of every chaos scenario that ran."""
    if _reports:
        terminalreporter.section("chaos figures")
        for report in _reports:
            terminalreporter.write_line(report.render())
