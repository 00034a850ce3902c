"""File operations of `LocalFileSystem`: stat, folders, atomic writes, removal, fsync, hashing.

`FileOperations` is the part every other part builds on. Every path it creates honours the
configured umask exactly (whatever the process umask), and new directories take their parent's
group. Output roots are never created here: `makedirs_below` only makes subfolders inside a
root that exists. The helpers below are shared with the other `fs_*` parts.
"""

from __future__ import annotations

import contextlib
import errno
import hashlib
import os
import secrets
import stat
from pathlib import Path, PurePosixPath
from typing import BinaryIO

__all__ = [
    "DIR_FLAGS",
    "NO_MODES_ERRNOS",
    "FileOperations",
    "hidden_temp_name",
    "relative_parts",
]

# chmod/copystat refusals on filesystems with fixed modes (CIFS file_mode=, vfat, some FUSE).
NO_MODES_ERRNOS = frozenset({errno.EPERM, errno.ENOTSUP, errno.EOPNOTSUPP})
# Directory fsync is refused by some filesystems (CIFS, some FUSE) or a directory we cannot
# open for reading; durability there is the server's business.
_FSYNC_DIR_REFUSED = frozenset(
    {errno.EINVAL, errno.ENOTSUP, errno.EOPNOTSUPP, errno.EBADF, errno.EACCES, errno.EPERM}
)
DIR_FLAGS = os.O_RDONLY | os.O_DIRECTORY | os.O_CLOEXEC


def hidden_temp_name(kind: str) -> str:
    """A fresh temp file name: hidden, *.tmp, short whatever the final name's length."""
    # Hidden and *.tmp: ignored twice by the input rules. Short: a temp name must fit 255
    # bytes even when the final one nearly does.
    return f".mh-watchd-{kind}-{secrets.token_hex(8)}.tmp"


def relative_parts(rel: str | PurePosixPath) -> tuple[str, ...]:
    """The parts of a relative posix path ("." alone gives none); ValueError if it escapes."""
    path = PurePosixPath(rel)
    if path.is_absolute() or ".." in path.parts:
        raise ValueError(f"not a path below its root: {str(rel)!r}")
    return path.parts


class FileOperations:
    """Stat, create folders, write atomically, remove, fsync and hash files.

    A part of `LocalFileSystem`, never constructed alone: it reads `self.umask` (0..0o777), set
    by `LocalFileSystem.__init__`. `_write_all` is a seam tests override to fake short writes
    or a full disk.
    """

    umask: int

    def stat(self, path: Path) -> os.stat_result | None:
        """Return the lstat of `path` (symlinks not followed), or None when it is gone."""
        try:
            return os.lstat(path)
        except (FileNotFoundError, NotADirectoryError):
            return None

    def _write_all(self, fd: int, data: memoryview) -> None:
        """Write all of `data` to `fd`, looping over short writes; a seam for tests."""
        while data:
            written = os.write(fd, data)
            data = data[written:]

    def fsync_dir(self, path: Path) -> None:
        """fsync directory `path` so renames and links in it survive a crash.

        Ignored where the filesystem refuses (EINVAL, ENOTSUP, unopenable directory); other
        OSErrors (EIO) are raised.
        """
        try:
            fd = os.open(path, os.O_RDONLY | os.O_DIRECTORY)
        except OSError as exc:
            if exc.errno in _FSYNC_DIR_REFUSED:
                return
            raise
        try:
            os.fsync(fd)
        except OSError as exc:
            if exc.errno not in _FSYNC_DIR_REFUSED:
                raise
        finally:
            os.close(fd)

    # -- creating and removing ----------------------------------------------------------------

    def makedirs(self, path: Path) -> None:
        """Create directory `path` and missing parents (mode from the umask, parent's group).

        Raises FileExistsError when `path` is not a directory, NotADirectoryError when a parent
        is a file, other OSErrors (EACCES, ENOSPC...) as they come.
        """
        missing: list[Path] = []
        current = path
        while True:
            try:
                info = os.stat(current)
            except FileNotFoundError:
                if current.parent == current:
                    raise
                missing.append(current)
                current = current.parent
                continue
            if not stat.S_ISDIR(info.st_mode):
                if current == path:
                    raise FileExistsError(errno.EEXIST, "exists and is not a directory", str(path))
                raise NotADirectoryError(errno.ENOTDIR, os.strerror(errno.ENOTDIR), str(current))
            break
        for directory in reversed(missing):
            self._mkdir(directory)

    def _mkdir(self, directory: Path) -> None:
        mode = 0o777 & ~self.umask
        try:
            os.mkdir(directory, mode)
        except FileExistsError:
            if os.path.isdir(directory):
                return  # another worker made it meanwhile
            raise
        self._adopt_parent(directory.parent, directory, mode)

    def _adopt_parent(self, parent: Path | int, directory: Path | int, mode: int) -> None:
        """Give new `directory` its `parent`'s group and exactly `mode` (paths or open fds)."""
        # Both steps are best effort: shares with fixed owners and modes refuse them, and the
        # directory is usable anyway.
        try:
            parent_gid = os.stat(parent).st_gid
            info = os.stat(directory)
        except OSError:
            return
        if info.st_gid != parent_gid:
            # Without a setgid parent a new directory gets our group; users of a shared media
            # folder expect the folder's. Only root or a member of that group may chown.
            with contextlib.suppress(OSError):
                os.chown(directory, -1, parent_gid)
        # The process umask may be stricter than the configured one; keep an inherited setgid
        # bit so the group keeps propagating.
        with contextlib.suppress(OSError):
            os.chmod(directory, mode | (info.st_mode & stat.S_ISGID))

    def makedirs_below(self, root: Path, sub: str | PurePosixPath) -> Path:
        """Create folder `root/sub` and its missing parents inside the directory `root`.

        Returns `root/sub`. `root` (an outbox, archive, failed folder or inbox) is never
        created: a missing one is most likely a share that is not mounted. New folders get the
        umask and their parent's group, as `makedirs`. Raises FileNotFoundError (ENOENT,
        `filename` = `root`) when `root` is missing (a dangling link too), NotADirectoryError
        when it is not a directory, FileExistsError when `root/sub` is a file, ValueError for
        an absolute `sub` or one with "..", other OSErrors (EACCES, ENOSPC...) as they come.
        """
        parts = relative_parts(sub)
        try:
            # Created relative to the open root, so a root unmounted meanwhile is not re-made.
            dir_fd = os.open(root, DIR_FLAGS)
        except FileNotFoundError as exc:
            raise FileNotFoundError(
                errno.ENOENT, "missing (is its share mounted?); never created", str(root)
            ) from exc
        except NotADirectoryError as exc:
            raise NotADirectoryError(errno.ENOTDIR, "not a directory", str(root)) from exc
        try:
            for index, part in enumerate(parts):
                where = root.joinpath(*parts[: index + 1])
                next_fd = self._open_or_mkdir(dir_fd, part, where, last=index == len(parts) - 1)
                os.close(dir_fd)
                dir_fd = next_fd
        finally:
            os.close(dir_fd)
        return root.joinpath(*parts)

    def _open_or_mkdir(self, dir_fd: int, name: str, where: Path, *, last: bool) -> int:
        """Open folder `name` in `dir_fd`, creating it first when missing; return its fd."""
        mode = 0o777 & ~self.umask
        created = False
        try:
            os.mkdir(name, mode, dir_fd=dir_fd)
            created = True
        except FileExistsError:
            pass  # there already, or made by another worker meanwhile: the open below says
        try:
            fd = os.open(name, DIR_FLAGS, dir_fd=dir_fd)
        except NotADirectoryError:
            if last:
                raise FileExistsError(
                    errno.EEXIST, "exists and is not a directory", str(where)
                ) from None
            raise NotADirectoryError(
                errno.ENOTDIR, os.strerror(errno.ENOTDIR), str(where)
            ) from None
        if created:
            self._adopt_parent(dir_fd, fd, mode)
        return fd

    def write_atomic(self, path: Path, data: bytes) -> None:
        """Replace `path` with `data` atomically: hidden temp, fsync, rename, directory fsync.

        The parent directory must exist. Raises OSError; a failure leaves no temp behind.
        """
        mode = 0o666 & ~self.umask
        temp = path.parent / hidden_temp_name("write")
        fd = os.open(temp, os.O_WRONLY | os.O_CREAT | os.O_EXCL, mode)
        try:
            try:
                try:
                    os.fchmod(fd, mode)  # the process umask may differ from the configured one
                except OSError as exc:
                    if exc.errno not in NO_MODES_ERRNOS:
                        raise
                self._write_all(fd, memoryview(data))
                os.fsync(fd)
            finally:
                os.close(fd)
            os.replace(temp, path)
        except BaseException:
            self.remove(temp)
            raise
        self.fsync_dir(path.parent)

    def remove(self, path: Path) -> None:
        """Unlink file `path`; a missing file is fine. Raises other OSErrors."""
        with contextlib.suppress(FileNotFoundError):
            os.unlink(path)

    # -- reading ------------------------------------------------------------------------------

    def sha256_file(self, path: Path | BinaryIO, chunk: int = 1 << 20) -> tuple[int, str]:
        """Return (size in bytes, SHA-256 hex digest) of `path`, read in `chunk`-byte pieces.

        `path` may be an open binary file (e.g. from `open_candidate`): it is read from its
        start and left open. Raises OSError when it cannot be read.
        """
        digest = hashlib.sha256()
        size = 0
        if not isinstance(path, Path):
            path.seek(0)
            while data := path.read(chunk):
                digest.update(data)
                size += len(data)
            return size, digest.hexdigest()
        buffer = bytearray(chunk)
        view = memoryview(buffer)
        with open(path, "rb", buffering=0) as reader:
            while count := reader.readinto(buffer):
                digest.update(view[:count])
                size += count
        return size, digest.hexdigest()
