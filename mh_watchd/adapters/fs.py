"""Filesystem facts and moves, in one adapter so NAS quirks can be faked in tests.

`FileSystem` is the seam the rest of the daemon talks to; `LocalFileSystem` is the real one.
Everything here may block on a hung share: callers run it in workers with a deadline.

Placing never replaces: `os.link` + unlink, else `renameat2(RENAME_NOREPLACE)` where the
filesystem has no hard links (CIFS, many FUSE filesystems, vfat), else an `O_EXCL`
placeholder that is then renamed over. Every path the adapter creates honours the configured
umask exactly (whatever the process umask), and new directories take their parent's group.

Inbox files are opened with `open_candidate`, never through a symlink, and checked on the open
descriptor; moves refuse links. Output roots (outbox, archive, failed) are never created:
`makedirs_below` makes subfolders inside a root that exists, since a missing root is most
likely a share that is not mounted.

`LocalFileSystem` is one object assembled from parts, each in a module of its own:

    fs_facts.FilesystemFacts       fs type, mount points, free space, inotify budget (read-only)
    fs_checks.RootChecks           can this inbox be watched, can this folder be written
    fs_candidates.CandidateOpener  open an inbox file without following any link
    fs_files.FileOperations        stat, folders, atomic writes, removal, fsync, hashing
    fs_moves.NoReplaceMoves        place and move files, never replacing one

Import everything from this module: the parts are how it is built, not an API.
"""

from __future__ import annotations

import os
from collections.abc import Iterable
from pathlib import Path, PurePosixPath
from typing import TYPE_CHECKING, BinaryIO, Protocol

from mh_watchd.adapters.fs_candidates import CandidateOpener, OpenCandidate
from mh_watchd.adapters.fs_checks import RootChecks
from mh_watchd.adapters.fs_facts import FilesystemFacts, open_files_under
from mh_watchd.adapters.fs_files import FileOperations
from mh_watchd.adapters.fs_moves import NoReplaceMoves, renameat2_noreplace
from mh_watchd.core.errors import NotACandidateError

__all__ = [
    "FileSystem",
    "LocalFileSystem",
    "NotACandidateError",
    "OpenCandidate",
    "open_files_under",
    "renameat2_noreplace",
]


class FileSystem(Protocol):
    """What the daemon needs from filesystems; `LocalFileSystem` documents each method."""

    def fs_type(self, path: Path) -> str | None: ...
    def is_mount_point(self, path: Path) -> bool: ...
    def check_inbox(self, path: Path, *, require_mount: bool, mount_marker: str) -> str | None: ...
    def check_writable_dir(self, path: Path, *, create: bool) -> str | None: ...
    def free_bytes(self, path: Path) -> int: ...
    def stat(self, path: Path) -> os.stat_result | None: ...
    def open_candidate(
        self, root: Path, rel: str | PurePosixPath, *, expect_inode: int | None = ...
    ) -> OpenCandidate: ...
    def state_dir_problem(self, path: Path) -> str | None: ...
    def inotify_limits(self) -> tuple[int | None, int | None]: ...
    def count_dirs(self, root: Path, limit: int) -> int: ...
    def place_noreplace(self, src: Path, dest: Path) -> bool: ...
    def place_first_free(self, src: Path, dest_dir: Path, names: Iterable[str]) -> Path: ...
    def move_noreplace(self, src: Path, dest: Path) -> bool: ...
    def fsync_dir(self, path: Path) -> None: ...
    def makedirs(self, path: Path) -> None: ...
    def makedirs_below(self, root: Path, sub: str | PurePosixPath) -> Path: ...
    def write_atomic(self, path: Path, data: bytes) -> None: ...
    def remove(self, path: Path) -> None: ...
    def sha256_file(self, path: Path | BinaryIO, chunk: int = ...) -> tuple[int, str]: ...


class LocalFileSystem(RootChecks, NoReplaceMoves, CandidateOpener, FilesystemFacts, FileOperations):
    """The real filesystem, read through /proc for mount facts and inotify use.

    The one object callers construct and subclass: its methods come from the parts listed in
    the module docstring, and every part calls the others through `self`, so a subclass
    overriding one method (`fs_type`, `inotify_limits`, the `_link`, `_rename_noreplace` and
    `_write_all` seams...) changes it for every caller. Raises ValueError for a `umask`
    outside 0..0o777 or a `copy_chunk_bytes` (the cross-filesystem copy buffer) below 1.
    """

    def __init__(
        self,
        *,
        umask: int = 0o002,
        mountinfo_path: Path = Path("/proc/self/mountinfo"),
        proc_root: Path = Path("/proc"),
        copy_chunk_bytes: int = 1 << 20,
    ) -> None:
        if not 0 <= umask <= 0o777:
            raise ValueError(f"umask must be between 0 and 0o777, not {umask:#o}")
        if copy_chunk_bytes <= 0:
            raise ValueError("copy_chunk_bytes must be positive")
        self.umask = umask
        self.mountinfo_path = mountinfo_path
        self.proc_root = proc_root
        self.copy_chunk_bytes = copy_chunk_bytes


if TYPE_CHECKING:

    def _conforms(fs: LocalFileSystem) -> FileSystem:
        return fs  # mypy proves LocalFileSystem satisfies the protocol
