"""Opening inbox files for `LocalFileSystem`: never through a symlink, checked on the descriptor.

A candidate is opened O_NOFOLLOW folder by folder below the inbox root, never blocking on a
FIFO or taking a terminal, then checked with fstat on that very descriptor. Callers read, hash
and upload only through the returned file, so a name swapped meanwhile is never read through.
"""

from __future__ import annotations

import errno
import os
import stat
from pathlib import Path, PurePosixPath
from typing import BinaryIO, NamedTuple

from mh_watchd.adapters.fs_files import DIR_FLAGS, relative_parts
from mh_watchd.core.errors import NotACandidateError, SourceChangedError

__all__ = ["CandidateOpener", "OpenCandidate"]

# Opening an inbox file: never through a link (O_NOFOLLOW), and never blocking on a FIFO or
# taking a terminal (O_NONBLOCK, O_NOCTTY); blocking mode is restored once it is known regular.
_CANDIDATE_FLAGS = os.O_RDONLY | os.O_NOFOLLOW | os.O_NONBLOCK | os.O_NOCTTY | os.O_CLOEXEC
_CANDIDATE_DIR_FLAGS = os.O_RDONLY | os.O_DIRECTORY | os.O_NOFOLLOW | os.O_CLOEXEC


class OpenCandidate(NamedTuple):
    """An inbox file opened by `open_candidate`: read it only through `file` (closed by you)."""

    file: BinaryIO  # buffered, at offset 0
    stat: os.stat_result  # fstat of that very descriptor: a regular file


def _not_a_candidate(shown: str, info: os.stat_result) -> NotACandidateError:
    if stat.S_ISLNK(info.st_mode):
        return NotACandidateError(f"{shown} is a symbolic link: never followed", link=True)
    return NotACandidateError(f"{shown} is not a regular file", link=False)


class CandidateOpener:
    """Open an inbox file for reading without following any link below the inbox root.

    A part of `LocalFileSystem`; it keeps no state of its own.
    """

    def open_candidate(
        self, root: Path, rel: str | PurePosixPath, *, expect_inode: int | None = None
    ) -> OpenCandidate:
        """Open the inbox file `root/rel` for reading without following any link below `root`.

        Each folder of `rel` is opened O_NOFOLLOW from the one above, the file O_NOFOLLOW, then
        checked on its descriptor: a regular file, of inode `expect_inode` when given (`root`
        itself may be a link: the operator's choice). Read, hash and upload only through the
        returned file, so a name swapped meanwhile is never read through.
        Raises NotACandidateError (`link` True for a link anywhere below `root`),
        SourceChangedError when it holds another inode, FileNotFoundError or NotADirectoryError
        when it is gone, ValueError for an absolute `rel` or one with "..", other OSErrors.
        """
        parts = relative_parts(rel)
        if not parts:
            raise ValueError(f"not a file below the inbox: {rel!r}")
        shown = str(root.joinpath(*parts))
        dir_fd = os.open(root, DIR_FLAGS)
        try:
            for index, part in enumerate(parts[:-1]):
                try:
                    next_fd = os.open(part, _CANDIDATE_DIR_FLAGS, dir_fd=dir_fd)
                except OSError as exc:
                    if exc.errno in (errno.ELOOP, errno.ENOTDIR):
                        where = str(root.joinpath(*parts[: index + 1]))
                        self._refuse_entry(dir_fd, part, where, exc)
                    raise
                os.close(dir_fd)
                dir_fd = next_fd
            name = parts[-1]
            # lstat first, so a device or FIFO is never even opened (the fstat below decides).
            before = os.stat(name, dir_fd=dir_fd, follow_symlinks=False)
            if not stat.S_ISREG(before.st_mode):
                raise _not_a_candidate(shown, before)
            try:
                fd = os.open(name, _CANDIDATE_FLAGS, dir_fd=dir_fd)
            except OSError as exc:
                if exc.errno in (errno.ELOOP, errno.ENXIO, errno.ENODEV, errno.ENOTDIR):
                    self._refuse_entry(dir_fd, name, shown, exc)
                raise
        finally:
            os.close(dir_fd)
        try:
            info = os.fstat(fd)
            if not stat.S_ISREG(info.st_mode):
                raise _not_a_candidate(shown, info)
            if expect_inode is not None and info.st_ino != expect_inode:
                raise SourceChangedError(
                    f"{shown} now holds another file than the one that settled"
                )
            os.set_blocking(fd, True)
            return OpenCandidate(os.fdopen(fd, "rb"), info)
        except BaseException:
            os.close(fd)
            raise

    @staticmethod
    def _refuse_entry(dir_fd: int, name: str, shown: str, exc: OSError) -> None:
        """Raise NotACandidateError when `name` in `dir_fd` is a link or not a regular file."""
        try:
            info = os.stat(name, dir_fd=dir_fd, follow_symlinks=False)
        except OSError:
            return  # gone meanwhile: the caller re-raises the original error
        if stat.S_ISLNK(info.st_mode) or exc.errno in (errno.ENXIO, errno.ENODEV):
            raise _not_a_candidate(shown, info) from exc
