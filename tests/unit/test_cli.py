"""The ``fedmq`` console script answers --version and --help."""

from __future__ import annotations

import subprocess
import sys

import pytest

from fedmq import __version__
from fedmq.cli import main


def test_cli_version_prints_the_package_version(capsys: pytest.CaptureFixture[str]) -> None:
    """``fedmq --version`` prints the installed distribution's version and exits 0."""
    with pytest.raises(SystemExit) as exit_info:
        main(["--version"])
    assert exit_info.value.code == 0
    assert capsys.readouterr().out.strip() == f"fedmq {__version__}"


def test_cli_help_runs_as_a_console_script() -> None:
    """``python -m fedmq.cli --help`` works in a fresh interpreter and lists the usage."""
    result = subprocess.run(
        [sys.executable, "-m", "fedmq.cli", "--help"], capture_output=True, text=True, check=False
    )
    assert result.returncode == 0, result.stderr
    assert result.stdout.startswith("usage: fedmq")


def test_cli_without_a_command_prints_help(capsys: pytest.CaptureFixture[str]) -> None:
    """Bare ``fedmq`` prints the help and exits 0."""
    assert main([]) == 0
    assert "usage: fedmq" in capsys.readouterr().out
