"""A consistent copy of the journal, taken while the daemon runs (SQLite's online backup API).

The copy is read through a connection of its own, in one backup step: one read transaction,
so one consistent snapshot. In WAL mode a reader never blocks the daemon's writes, and a single
step cannot be restarted by them (a paged backup restarts whenever another connection writes).
The daemon's own connection and lock are not used, so no journal call waits for the copy.

The copy is written to a temp file beside the target, switched to a plain rollback journal
(one self-contained file), checked (`PRAGMA quick_check`), fsynced, and only then placed: with
`os.link` (never replacing an existing file) or, when overwriting is asked for, `os.replace`.
"""

from __future__ import annotations

import contextlib
import os
import sqlite3
from dataclasses import dataclass
from pathlib import Path

from mh_watchd.adapters.durable import fsync_dir, fsync_file
from mh_watchd.adapters.journal_connection import BUSY_TIMEOUT_MS, JournalConnection, translated
from mh_watchd.core.errors import MhWatchdError, StateDirError


class BackupRefused(MhWatchdError):
    """The backup's target is not acceptable (it exists, or it lies inside the state_dir)."""


@dataclass(frozen=True)
class BackupResult:
    """Where the copy went and what it holds."""

    path: Path
    size_bytes: int
    jobs: int


class JournalBackup(JournalConnection):
    """`backup`: a consistent copy of the journal file to a path outside the state_dir."""

    def backup(self, target: Path, *, force: bool = False) -> BackupResult:
        """Copy the journal to `target` (a file), consistent even while the daemon writes.

        Returns what was written. Raises BackupRefused when `target` exists (unless `force`)
        or lies inside the state_dir, StateDirError when the journal cannot be read, OSError
        when `target` cannot be written (its directory missing, unwritable, full).
        """
        target = Path(os.path.abspath(target))
        if self._dialect.shared or self._state_dir is None:
            raise BackupRefused(
                f"the journal is in the PostgreSQL database {self.where}: back it up with "
                "PostgreSQL's own tools (pg_dump, or the server's backups), not mh-watchd backup"
            )
        self._check_target(target, force=force)
        temp = target.with_name(f".{target.name}.{os.getpid()}.tmp")
        try:
            jobs = self._copy_to(temp)
            fsync_file(temp)
            _place(temp, target, force=force)
            fsync_dir(target.parent)
        finally:
            with contextlib.suppress(FileNotFoundError):
                os.unlink(temp)
        return BackupResult(path=target, size_bytes=target.stat().st_size, jobs=jobs)

    def _check_target(self, target: Path, *, force: bool) -> None:
        assert self._state_dir is not None
        state_dir = Path(os.path.realpath(self._state_dir))
        where = Path(os.path.realpath(target))
        if where == state_dir or state_dir in where.parents:
            raise BackupRefused(
                f"{target} is inside the state_dir {self._state_dir}: a backup there is lost "
                "with the journal's disk, and a restore copies over that folder; choose a "
                "path elsewhere (another disk or a NAS share)"
            )
        if target.is_dir():
            raise BackupRefused(f"{target} is a directory; give the backup file's path")
        if not force and os.path.lexists(target):
            raise BackupRefused(_exists_message(target))

    def _copy_to(self, temp: Path) -> int:
        """One backup step from a fresh read-only connection into `temp`; returns its jobs."""
        if not self._path.is_file():
            raise StateDirError(f"no journal yet at {self._path}")
        with contextlib.suppress(FileNotFoundError):
            os.unlink(temp)  # left by a backup that died (same pid, so ours to take)
        # Created here, so an unwritable or missing directory is an OSError naming it.
        os.close(os.open(temp, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o640))
        source_uri = self._path.absolute().as_uri() + "?mode=ro"
        with translated(self._path):
            source = sqlite3.connect(source_uri, uri=True, timeout=BUSY_TIMEOUT_MS / 1000)
        try:
            dest = sqlite3.connect(str(temp), isolation_level=None)
            try:
                with translated(self._path):
                    source.backup(dest, pages=-1)  # one step: one snapshot, never restarted
                return _finish_copy(dest, temp)
            finally:
                dest.close()
        finally:
            source.close()


def _finish_copy(dest: sqlite3.Connection, temp: Path) -> int:
    """Make the copy one self-contained file, check it, and return how many jobs it holds."""
    try:
        dest.execute("PRAGMA journal_mode = DELETE").fetchone()
        verdict = dest.execute("PRAGMA quick_check").fetchone()[0]
        jobs = int(dest.execute("SELECT COUNT(*) FROM jobs").fetchone()[0])
    except sqlite3.Error as exc:
        raise OSError(f"cannot finish the backup at {temp}: {exc}") from exc
    if verdict != "ok":
        raise StateDirError(f"the copy failed its check ({verdict}); the journal may be damaged")
    return jobs


def _place(temp: Path, target: Path, *, force: bool) -> None:
    if force:
        os.replace(temp, target)
        return
    try:
        os.link(temp, target)  # fails if it exists: never replaces a file
    except FileExistsError:
        raise BackupRefused(_exists_message(target)) from None
    except OSError:
        # No hard links here (some SMB and FAT shares): checked, then renamed.
        if os.path.lexists(target):
            raise BackupRefused(_exists_message(target)) from None
        os.rename(temp, target)


def _exists_message(target: Path) -> str:
    return f"{target} exists; choose a new name, or add --force to replace it"
