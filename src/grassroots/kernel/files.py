"""Small file-system helpers for writes that must survive a power cut."""

from __future__ import annotations

import os
from pathlib import Path


def fsync_directory(directory: Path) -> None:
    """Make a rename into `directory` durable (POSIX); a platform that cannot open a directory
    (Windows) needs no such step, so failing to open or sync it is not an error."""
    try:
        fd = os.open(directory, os.O_RDONLY)
    except OSError:
        return
    try:
        os.fsync(fd)
    except OSError:
        pass
    finally:
        os.close(fd)
