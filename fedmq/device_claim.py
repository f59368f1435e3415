"""Pick this container's device identity from a directory of provisioned device configs."""

from __future__ import annotations

from pathlib import Path

__all__ = ["ClaimError", "claim_config"]

_HOLDER = "holder"


class ClaimError(RuntimeError):
    """No device config is free for this holder."""


def claim_config(config_dir: Path, claim_dir: Path, holder: str) -> Path:
    """The ``*.toml`` of ``config_dir`` that ``holder`` owns: the one it claimed before, else
    the first unclaimed one, claimed now with an atomic ``mkdir`` under ``claim_dir``.

    Replicas of one container image (``docker compose up --scale device=N``) share
    ``claim_dir`` on a volume and use their host name as ``holder``, so each gets its own
    identity and keeps it across restarts.
    """
    configs = sorted(config_dir.glob("*.toml"))
    if not configs:
        raise ClaimError(f"{config_dir} holds no device config (*.toml)")
    claim_dir.mkdir(parents=True, exist_ok=True)
    for config in configs:
        mark = claim_dir / config.stem / _HOLDER
        if mark.is_file() and mark.read_text() == holder:
            return config
    for config in configs:
        try:
            (claim_dir / config.stem).mkdir()
        except FileExistsError:
            continue
        (claim_dir / config.stem / _HOLDER).write_text(holder)
        return config
    raise ClaimError(f"all {len(configs)} device configs in {config_dir} are claimed")
