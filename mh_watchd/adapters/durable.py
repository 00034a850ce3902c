"""fsync helpers for files written outside the FileSystem adapter (media conversions, journal
backups): the bytes, then the directory entry, so a finished file survives a crash."""

from __future__ import annotations

import contextlib
import os
from pathlib import Path


def fsync_file(path: Path) -> None:
    """fsync the file at `path`. Raises OSError when it cannot be opened or synced."""
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def fsync_dir(path: Path) -> None:
    """fsync directory `path` so a rename or link in it survives a crash; quietly nothing where
    the filesystem cannot (SMB shares and some FUSE mounts refuse to open or sync one)."""
    try:
        fd = os.open(path, os.O_RDONLY | os.O_DIRECTORY)
    except OSError:
        return
    try:
        with contextlib.suppress(OSError):
            os.fsync(fd)
    finally:
        os.close(fd)
