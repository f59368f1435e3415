"""Scaled device containers each claim their own provisioned config, and keep it."""

from __future__ import annotations

from pathlib import Path

import pytest

from fedmq.device_claim import ClaimError, claim_config


def _configs(directory: Path, names: list[str]) -> Path:
    directory.mkdir()
    for name in names:
        (directory / f"{name}.toml").write_text(f'device_id = "{name}"\n')
    return directory


def test_claim_gives_each_holder_its_own_config_and_keeps_it(tmp_path: Path) -> None:
    """Two holders get different configs; asking again returns the same one; a third finds
    none left."""
    configs = _configs(tmp_path / "devices", ["dev-b", "dev-a"])
    claims = tmp_path / "claims"
    first = claim_config(configs, claims, "host-1")
    second = claim_config(configs, claims, "host-2")
    assert {first.name, second.name} == {"dev-a.toml", "dev-b.toml"}
    assert first.name == "dev-a.toml"
    assert claim_config(configs, claims, "host-2") == second
    assert claim_config(configs, claims, "host-1") == first
    with pytest.raises(ClaimError, match="all 2 device configs"):
        claim_config(configs, claims, "host-3")


def test_claim_refuses_an_empty_directory(tmp_path: Path) -> None:
    """A directory with no *.toml is an error, not a silent idle container."""
    with pytest.raises(ClaimError, match="no device config"):
        claim_config(_configs(tmp_path / "devices", []), tmp_path / "claims", "h")
