"""Root checks for `LocalFileSystem`: can this inbox be watched, can this folder be written?

Each check answers None or one plain reason, the words `status` and `check` show, and never
raises for filesystem errors: a dead share is a state to report, not a crash.
"""

from __future__ import annotations

import contextlib
import errno
import os
import stat
from pathlib import Path

from mh_watchd.adapters.fs_facts import FilesystemFacts
from mh_watchd.adapters.fs_files import FileOperations, hidden_temp_name

__all__ = ["RootChecks"]

# A share that is mounted but not answering.
_UNREACHABLE_ERRNOS = frozenset(
    {
        errno.EIO,
        errno.ESTALE,
        errno.ENOTCONN,
        errno.EHOSTDOWN,
        errno.EHOSTUNREACH,
        errno.ETIMEDOUT,
        errno.ENODEV,
    }
)


def _errno_reason(exc: OSError, denied: str, other: str) -> str:
    """Map an OSError to the plain reasons shown by `status` and `check`."""
    code = exc.errno
    if code in (errno.ENOENT, errno.ENOTDIR):
        return "missing"
    if code in (errno.EACCES, errno.EPERM):
        return denied
    if code == errno.ENOSPC:
        return "full"
    if code == errno.EDQUOT:
        return "over quota"
    if code == errno.EROFS:
        return "read-only filesystem"
    if code == errno.ESTALE:
        return "unreachable: stale file handle (the share needs a remount)"
    if code in _UNREACHABLE_ERRNOS:
        return f"unreachable: {exc.strerror or code}"
    return f"{other}: {exc.strerror or code}"


class RootChecks(FilesystemFacts, FileOperations):
    """Whether an inbox can be watched and whether files can be created in a folder.

    A part of `LocalFileSystem`, never constructed alone. It builds on `FilesystemFacts`
    (`is_mount_point`) and `FileOperations` (`makedirs`, `remove`), through `self`, so a
    subclass overriding those is asked too.
    """

    def check_inbox(self, path: Path, *, require_mount: bool, mount_marker: str) -> str | None:
        """Return None when the inbox can be watched, else a plain reason.

        Reasons: "missing", "not a directory", "unreadable", "not a mount point",
        "marker file X missing", "unreachable: ...". Never raises for filesystem errors.
        """
        try:
            info = os.stat(path)
        except OSError as exc:
            return _errno_reason(exc, "unreadable", "unreadable")
        if not stat.S_ISDIR(info.st_mode):
            return "not a directory"
        try:
            # Listing (not os.access) is the real test: root passes os.access everywhere, and a
            # dead share answers stat from cache but fails a listing.
            with os.scandir(path) as entries:
                next(entries, None)
        except OSError as exc:
            return _errno_reason(exc, "unreadable", "unreadable")
        if require_mount and not self.is_mount_point(path):
            return "not a mount point"
        if mount_marker:
            try:
                os.stat(path / mount_marker)
            except FileNotFoundError:
                return f"marker file {mount_marker} missing"
            except OSError as exc:
                return _errno_reason(exc, "unreadable", "unreadable")
        return None

    def check_writable_dir(self, path: Path, *, create: bool) -> str | None:
        """Return None when files can be created in directory `path`, else a plain reason.

        With `create`, missing directories are made first (umask, parent's group). Reasons:
        "missing", "not a directory", "cannot create: ...", "not writable", "full",
        "over quota", "read-only filesystem", "unreachable: ...". Never raises for OS errors.
        """
        if create:
            try:
                self.makedirs(path)
            except FileExistsError:
                return "not a directory"
            except NotADirectoryError:
                return "cannot create: a parent is not a directory"
            except OSError as exc:
                reason = _errno_reason(exc, "cannot create: permission denied", "cannot create")
                return "cannot create: a parent is missing" if reason == "missing" else reason
        try:
            info = os.stat(path)
        except OSError as exc:
            return _errno_reason(exc, "not writable", "not writable")
        if not stat.S_ISDIR(info.st_mode):
            return "not a directory"
        # A real probe, not os.access: it works as root, and on a full or read-only share.
        probe = path / hidden_temp_name("probe")
        try:
            fd = os.open(probe, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
        except OSError as exc:
            return _errno_reason(exc, "not writable", "not writable")
        try:
            # One byte, so a full disk with free inodes still shows as full.
            os.write(fd, b"\0")
        except OSError as exc:
            return _errno_reason(exc, "not writable", "not writable")
        finally:
            os.close(fd)
            with contextlib.suppress(OSError):
                self.remove(probe)
        return None
