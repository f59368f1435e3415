"""Replace a file atomically: temp file, fsync, rename, fsync of the directory."""

from __future__ import annotations

import os
import stat
import tempfile
from pathlib import Path

__all__ = ["replace_file"]


def replace_file(path: Path, data: bytes, *, mode: int, keep_owner: bool = False) -> None:
    """Make ``path`` hold ``data``; a crash leaves either the old or the new file, whole.

    With ``keep_owner`` the new file takes the owner, group and (minus any world bits) mode
    of the file it replaces, so a service running as another user can still read it; if the
    owner cannot be kept, the old file stays and PermissionError is raised.
    """
    path.parent.mkdir(parents=True, exist_ok=True)
    try:
        previous: os.stat_result | None = path.stat() if keep_owner else None
    except FileNotFoundError:
        previous = None
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}-")
    try:
        with os.fdopen(fd, "wb") as handle:
            handle.write(data)
            handle.flush()
            if previous is not None:
                mode = stat.S_IMODE(previous.st_mode) & 0o660 or mode
                current = os.fstat(handle.fileno())
                if (current.st_uid, current.st_gid) != (previous.st_uid, previous.st_gid):
                    os.fchown(handle.fileno(), previous.st_uid, previous.st_gid)
            os.fchmod(handle.fileno(), mode)
            os.fsync(handle.fileno())
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise
    directory = os.open(path.parent, os.O_RDONLY)
    try:
        os.fsync(directory)
    finally:
        os.close(directory)
