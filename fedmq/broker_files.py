"""Render the shipped broker_config/ into a runnable copy (port, absolute paths)."""

from __future__ import annotations

import getpass
import shutil
from pathlib import Path

__all__ = ["SHIPPED_CONFIG_DIR", "render_loopback_config"]

SHIPPED_CONFIG_DIR = Path(__file__).resolve().parent.parent / "broker_config"
_PATH_OPTIONS = ("password_file", "acl_file", "persistence_location")


def render_loopback_config(
    target_dir: Path, *, port: int, source_dir: Path = SHIPPED_CONFIG_DIR
) -> Path:
    """Copy the shipped loopback config and ACL into ``target_dir`` and return the conf path.

    Only the listener port, the file locations and the OS user change; every other line,
    and the ACL file, are the shipped ones byte for byte. The broker keeps running as the
    user who starts it (Mosquitto would otherwise drop root to ``mosquitto``, which cannot
    read a private temp dir). The password file starts empty (0600).
    """
    target_dir.mkdir(parents=True, exist_ok=True)
    shutil.copyfile(source_dir / "acl", target_dir / "acl")
    (target_dir / "acl").chmod(0o600)
    passwd = target_dir / "passwd"
    passwd.touch(mode=0o600, exist_ok=True)
    (target_dir / "data").mkdir(exist_ok=True)
    lines = [f"user {getpass.getuser()}"]
    for line in (source_dir / "mosquitto.dev.conf").read_text().splitlines():
        option, _, value = line.partition(" ")
        if option == "listener":
            host = value.split()[1] if len(value.split()) > 1 else "127.0.0.1"
            line = f"listener {port} {host}"
        elif option in _PATH_OPTIONS:
            resolved = target_dir / value
            line = f"{option} {resolved}/" if value.endswith("/") else f"{option} {resolved}"
        lines.append(line)
    conf = target_dir / "mosquitto.conf"
    conf.write_text("\n".join(lines) + "\n")
    return conf
