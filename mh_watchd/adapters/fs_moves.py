"""Placing and moving files for `LocalFileSystem`, never replacing anything.

Placing is `os.link` + unlink, else `renameat2(RENAME_NOREPLACE)` where the filesystem has no
hard links (CIFS, many FUSE filesystems, vfat), else an `O_EXCL` placeholder that is then
renamed over. Moving across filesystems copies to a hidden temp beside the destination and
places that. Symlinks and non-regular files are never moved.
"""

from __future__ import annotations

import ctypes
import errno
import functools
import os
import platform
import shutil
import stat
from collections.abc import Callable, Iterable
from pathlib import Path

from mh_watchd.adapters.fs_files import NO_MODES_ERRNOS, FileOperations, hidden_temp_name

__all__ = ["NoReplaceMoves", "renameat2_noreplace"]

# os.link fails with these where the filesystem (or fs.protected_hardlinks) allows no hard link.
_NO_HARDLINK_ERRNOS = frozenset({errno.EPERM, errno.ENOTSUP, errno.EOPNOTSUPP, errno.ENOSYS})
# renameat2 fails with these where the kernel, libc or filesystem lacks RENAME_NOREPLACE.
_NO_RENAMEAT2_ERRNOS = frozenset({errno.EINVAL, errno.ENOSYS, errno.ENOTSUP, errno.EOPNOTSUPP})

_AT_FDCWD = -100
_RENAME_NOREPLACE = 1
# Raw syscall numbers for libcs without a renameat2 wrapper (older musl in NAS containers).
_SYS_RENAMEAT2 = {"x86_64": 316, "amd64": 316, "aarch64": 276, "arm64": 276, "riscv64": 276}


@functools.cache
def _renameat2_function() -> Callable[[bytes, bytes], int] | None:
    """Return a callable (src, dest) -> 0 or -1 (errno set) for renameat2 NOREPLACE, if any."""
    try:
        libc = ctypes.CDLL(None, use_errno=True)
    except OSError:
        return None
    wrapper = getattr(libc, "renameat2", None)
    if wrapper is not None:
        wrapper.argtypes = [ctypes.c_int, ctypes.c_char_p, ctypes.c_int, ctypes.c_char_p]
        wrapper.argtypes += [ctypes.c_uint]
        wrapper.restype = ctypes.c_int

        def call_wrapper(src: bytes, dest: bytes) -> int:
            return int(wrapper(_AT_FDCWD, src, _AT_FDCWD, dest, _RENAME_NOREPLACE))

        return call_wrapper
    number = _SYS_RENAMEAT2.get(platform.machine().lower())
    syscall = getattr(libc, "syscall", None)
    if number is None or syscall is None:
        return None
    syscall.restype = ctypes.c_long

    def call_syscall(src: bytes, dest: bytes) -> int:
        return int(
            syscall(
                ctypes.c_long(number),
                ctypes.c_int(_AT_FDCWD),
                ctypes.c_char_p(src),
                ctypes.c_int(_AT_FDCWD),
                ctypes.c_char_p(dest),
                ctypes.c_uint(_RENAME_NOREPLACE),
            )
        )

    return call_syscall


def renameat2_noreplace(src: Path, dest: Path) -> None:
    """Rename `src` to `dest` atomically unless `dest` exists.

    Raises FileExistsError when `dest` exists (nothing changed), OSError(ENOSYS) when the
    system has no renameat2, OSError(EINVAL) when the filesystem lacks RENAME_NOREPLACE.
    """
    function = _renameat2_function()
    if function is None:
        raise OSError(errno.ENOSYS, os.strerror(errno.ENOSYS), str(src), None, str(dest))
    if function(os.fsencode(src), os.fsencode(dest)) != 0:
        code = ctypes.get_errno()
        raise OSError(code, os.strerror(code), str(src), None, str(dest))


class NoReplaceMoves(FileOperations):
    """Place a file under a new name or move it to another folder, never replacing one.

    A part of `LocalFileSystem`, never constructed alone: it reads `self.copy_chunk_bytes`
    (> 0), set by `LocalFileSystem.__init__`, and builds on `FileOperations` (`fsync_dir`,
    `remove`, `_write_all`). `_link` and `_rename_noreplace` are seams tests override to fake
    NAS filesystems without hard links, without RENAME_NOREPLACE, or across devices (EXDEV).
    """

    copy_chunk_bytes: int

    def _link(self, src: Path, dest: Path) -> None:
        """os.link without following symlinks (rename-like); a seam for tests."""
        os.link(src, dest, follow_symlinks=False)

    def _rename_noreplace(self, src: Path, dest: Path) -> None:
        """renameat2(RENAME_NOREPLACE); a seam for tests."""
        renameat2_noreplace(src, dest)

    def place_noreplace(self, src: Path, dest: Path) -> bool:
        """Put `src` at `dest` on the same filesystem without ever replacing anything.

        Returns True when placed (then `dest`'s directory is fsynced), False when `dest`
        exists (nothing changed). Raises OSError otherwise (EXDEV across filesystems).
        """
        try:
            self._link(src, dest)
        except FileExistsError:
            return False
        except OSError as exc:
            if exc.errno not in _NO_HARDLINK_ERRNOS:
                raise
            if not self._place_without_link(src, dest):
                return False
        else:
            os.unlink(src)
        self.fsync_dir(dest.parent)
        return True

    def _place_without_link(self, src: Path, dest: Path) -> bool:
        try:
            self._rename_noreplace(src, dest)
        except FileExistsError:
            return False
        except OSError as exc:
            if exc.errno not in _NO_RENAMEAT2_ERRNOS:
                raise
        else:
            return True
        return self._place_via_placeholder(src, dest)

    def _place_via_placeholder(self, src: Path, dest: Path) -> bool:
        # Claim the name with O_EXCL, then rename over our own empty placeholder: a name taken
        # by anyone else makes the claim fail instead of being replaced.
        try:
            fd = os.open(dest, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
        except FileExistsError:
            return False
        try:
            claimed = os.fstat(fd)
        finally:
            os.close(fd)
        try:
            os.rename(src, dest)
        except BaseException:
            self._remove_if_same(dest, claimed)
            raise
        return True

    def _remove_if_same(self, path: Path, expected: os.stat_result) -> None:
        try:
            now = os.lstat(path)
            if (now.st_dev, now.st_ino) == (expected.st_dev, expected.st_ino):
                os.unlink(path)
        except OSError:
            pass  # best effort: a stray empty placeholder is harmless, a raise here hides the cause

    def place_first_free(self, src: Path, dest_dir: Path, names: Iterable[str]) -> Path:
        """Place `src` in `dest_dir` under the first of `names` not taken; return the path.

        `names` may be a lazy generator. Raises FileExistsError when every name is taken,
        OSError as `place_noreplace` does.
        """
        for name in names:
            dest = dest_dir / name
            if self.place_noreplace(src, dest):
                return dest
        raise FileExistsError(errno.EEXIST, "every candidate name is taken", str(dest_dir))

    def move_noreplace(self, src: Path, dest: Path) -> bool:
        """Move regular file `src` to `dest`, across filesystems too, never replacing anything.

        Returns False when `dest` exists (nothing changed). Across filesystems: copy to a hidden
        temp in `dest`'s directory, fsync, keep mode and times, place, unlink `src`, fsync both
        directories. Raises OSError (ELOOP when `src` is a symlink, EINVAL when it is not a
        regular file: neither is ever moved); on a failure before placing, `src` is intact
        and no temp is left.
        """
        info = os.lstat(src)
        if stat.S_ISLNK(info.st_mode):
            raise OSError(errno.ELOOP, "is a symbolic link, never moved", str(src))
        if not stat.S_ISREG(info.st_mode):
            raise OSError(errno.EINVAL, "is not a regular file, never moved", str(src))
        try:
            return self.place_noreplace(src, dest)
        except OSError as exc:
            if exc.errno != errno.EXDEV:
                raise
        if os.path.lexists(dest):
            return False  # spare a big copy; place_noreplace below still guards the race
        temp = dest.parent / hidden_temp_name("move")
        try:
            self._copy_to_new(src, temp)
            placed = self.place_noreplace(temp, dest)
        except BaseException:
            self.remove(temp)
            raise
        if not placed:
            self.remove(temp)
            return False
        os.unlink(src)
        self.fsync_dir(src.parent)
        return True

    def _copy_to_new(self, src: Path, dest: Path) -> None:
        """Copy `src` to the new file `dest` in constant memory, with mode and times, fsynced."""
        buffer = bytearray(self.copy_chunk_bytes)
        view = memoryview(buffer)
        # O_NOFOLLOW: a name swapped for a link since the caller's check is never copied through.
        with open(
            os.open(src, os.O_RDONLY | os.O_NOFOLLOW | os.O_CLOEXEC), "rb", buffering=0
        ) as reader:
            fd = os.open(dest, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
            try:
                while count := reader.readinto(buffer):
                    self._write_all(fd, view[:count])
                try:
                    shutil.copystat(src, dest)
                except OSError as exc:
                    # Shares with fixed modes refuse chmod; copystat sets the times first.
                    if exc.errno not in NO_MODES_ERRNOS:
                        raise
                os.fsync(fd)
            finally:
                os.close(fd)
