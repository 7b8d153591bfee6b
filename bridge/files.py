"""Where the bridge writes files: recordings only inside the recording directory, and only there.

A recording's file name is built from a CallSid (and a RecordingSid for Twilio's recordings). Those
are checked against Twilio's shape where they enter (:mod:`bridge.sids`); :func:`recording_file`
checks the result again, after resolving it, so no name can ever lead outside the directory.
"""

from __future__ import annotations

import os
import tempfile
from pathlib import Path


class UnsafePath(ValueError):
    """A file name would leave the directory it must stay in."""


def recording_file(directory: Path, name: str) -> Path:
    """``directory / name`` resolved, refused unless it is a file directly inside ``directory``."""
    if not name or name in (".", "..") or "/" in name or "\\" in name or "\x00" in name:
        raise UnsafePath(f"unsafe recording file name {name!r}")
    base = directory.resolve()
    path = (base / name).resolve()
    if path.parent != base:
        raise UnsafePath(f"recording file {name!r} resolves outside {base}")
    return path


def check_writable(directory: Path) -> None:
    """Create ``directory`` if needed and prove a file can be written there; raises ``OSError``."""
    directory.mkdir(parents=True, exist_ok=True)
    fd, probe = tempfile.mkstemp(prefix=".write-check-", dir=directory)
    try:
        os.write(fd, b"\0" * 512)
        os.fsync(fd)
    finally:
        os.close(fd)
        os.unlink(probe)


__all__ = ["UnsafePath", "check_writable", "recording_file"]
