"""Fixtures of the device unit tests."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest

from device.state_db import StateDB


@pytest.fixture
def db(tmp_path: Path) -> Iterator[StateDB]:
    """A fresh state database."""
    state = StateDB(tmp_path / "state.db")
    yield state
    state.close()
