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
"""

from __future__ import annotations

import contextlib
import ctypes
import errno
import functools
import hashlib
import os
import platform
import secrets
import shutil
import stat
from collections.abc import Callable, Iterable
from pathlib import Path, PurePosixPath
from typing import TYPE_CHECKING, BinaryIO, NamedTuple, Protocol

from mh_watchd.core.errors import SourceChangedError
from mh_watchd.core.mounts import Mount, is_remote, mount_for, parse_mountinfo

__all__ = [
    "FileSystem",
    "LocalFileSystem",
    "NotACandidateError",
    "OpenCandidate",
    "open_files_under",
    "renameat2_noreplace",
]

# os.link fails with these where the filesystem (or fs.protected_hardlinks) allows no hard link.
_NO_HARDLINK_ERRNOS = frozenset({errno.EPERM, errno.ENOTSUP, errno.EOPNOTSUPP, errno.ENOSYS})
# renameat2 fails with these where the kernel, libc or filesystem lacks RENAME_NOREPLACE.
_NO_RENAMEAT2_ERRNOS = frozenset({errno.EINVAL, errno.ENOSYS, errno.ENOTSUP, errno.EOPNOTSUPP})
# Directory fsync is refused by some filesystems (CIFS, some FUSE) or a directory we cannot
# open for reading; durability there is the server's business.
_FSYNC_DIR_REFUSED = frozenset(
    {errno.EINVAL, errno.ENOTSUP, errno.EOPNOTSUPP, errno.EBADF, errno.EACCES, errno.EPERM}
)
# chmod/copystat refusals on filesystems with fixed modes (CIFS file_mode=, vfat, some FUSE).
_NO_MODES_ERRNOS = frozenset({errno.EPERM, errno.ENOTSUP, errno.EOPNOTSUPP})
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

# Opening an inbox file: never through a link (O_NOFOLLOW), and never blocking on a FIFO or
# taking a terminal (O_NONBLOCK, O_NOCTTY); blocking mode is restored once it is known regular.
_CANDIDATE_FLAGS = os.O_RDONLY | os.O_NOFOLLOW | os.O_NONBLOCK | os.O_NOCTTY | os.O_CLOEXEC
_CANDIDATE_DIR_FLAGS = os.O_RDONLY | os.O_DIRECTORY | os.O_NOFOLLOW | os.O_CLOEXEC
_DIR_FLAGS = os.O_RDONLY | os.O_DIRECTORY | os.O_CLOEXEC

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


class NotACandidateError(SourceChangedError):
    """An inbox name that is a symlink (`link` True) or not a regular file: never an input.

    It is never read, moved or sent. A SourceChangedError, so a job whose original's name
    became one ends `superseded` before any create.
    """

    def __init__(self, message: str, *, link: bool) -> None:
        self.link = link
        super().__init__(message)


class OpenCandidate(NamedTuple):
    """An inbox file opened by `open_candidate`: read it only through `file` (closed by you)."""

    file: BinaryIO  # buffered, at offset 0
    stat: os.stat_result  # fstat of that very descriptor: a regular file


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


def _hidden_temp_name(kind: str) -> str:
    # Short, hidden and *.tmp (ignored twice by the input rules), whatever the final name's
    # length: a temp name must fit 255 bytes even when the final one nearly does.
    return f".mh-watchd-{kind}-{secrets.token_hex(8)}.tmp"


class LocalFileSystem:
    """The real filesystem, read through /proc for mount facts and inotify use."""

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

    # -- facts --------------------------------------------------------------------------------

    def _mounts(self) -> list[Mount] | None:
        # Read every time: shares are mounted and unmounted while the daemon runs.
        try:
            text = self.mountinfo_path.read_text(encoding="utf-8", errors="surrogateescape")
        except OSError:
            return None
        return parse_mountinfo(text)

    def fs_type(self, path: Path) -> str | None:
        """Return the filesystem type holding `path` ("ext4", "nfs4", "fuse.sshfs"...).

        Symlinks are resolved first. None when mountinfo is unreadable or names no mount.
        """
        mounts = self._mounts()
        if not mounts:
            return None
        mount = mount_for(PurePosixPath(os.path.realpath(path)), mounts)
        return mount.fs_type if mount else None

    def is_mount_point(self, path: Path) -> bool:
        """Return True when `path` (symlinks resolved) is where a filesystem is mounted.

        Uses mountinfo, so bind mounts of the same device count too; falls back to
        os.path.ismount when mountinfo is unreadable.
        """
        real = os.path.realpath(path)
        mounts = self._mounts()
        if mounts is None:
            return os.path.ismount(real)
        target = PurePosixPath(real)
        return any(mount.mount_point == target for mount in mounts)

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
        probe = path / _hidden_temp_name("probe")
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

    def free_bytes(self, path: Path) -> int:
        """Return the bytes an unprivileged user may still write on `path`'s filesystem.

        Raises OSError when `path` cannot be reached.
        """
        info = os.statvfs(path)
        return info.f_bavail * info.f_frsize

    def stat(self, path: Path) -> os.stat_result | None:
        """Return the lstat of `path` (symlinks not followed), or None when it is gone."""
        try:
            return os.lstat(path)
        except (FileNotFoundError, NotADirectoryError):
            return None

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
        parts = _relative_parts(rel)
        if not parts:
            raise ValueError(f"not a file below the inbox: {rel!r}")
        shown = str(root.joinpath(*parts))
        dir_fd = os.open(root, _DIR_FLAGS)
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

    def state_dir_problem(self, path: Path) -> str | None:
        """Return why `path` cannot hold the journal ("on nfs: SQLite WAL is unsafe there").

        None for local or unknown filesystem types.
        """
        kind = self.fs_type(path)
        if kind is not None and is_remote(kind):
            return f"on {kind}: SQLite WAL is unsafe there"
        return None

    def inotify_limits(self) -> tuple[int | None, int | None]:
        """Return (fs.inotify.max_user_watches, watches this process holds), None if unknown.

        The count covers this process only: other programs of the user are invisible here.
        """
        limit: int | None
        try:
            raw = (self.proc_root / "sys/fs/inotify/max_user_watches").read_text()
            limit = int(raw.strip())
        except (OSError, ValueError):
            limit = None
        fd_dir = self.proc_root / "self/fd"
        try:
            fds = os.listdir(fd_dir)
        except OSError:
            return limit, None
        in_use = 0
        for fd in fds:
            try:
                if os.readlink(fd_dir / fd) != "anon_inode:inotify":
                    continue
                text = (self.proc_root / "self/fdinfo" / fd).read_text()
            except OSError:
                continue  # closed meanwhile
            in_use += sum(1 for line in text.splitlines() if line.startswith("inotify wd:"))
        return limit, in_use

    def count_dirs(self, root: Path, limit: int) -> int:
        """Return how many directories `root` holds, itself included, counting up to `limit`.

        Symlinks are not followed; unreadable subdirectories count but are not entered. 0 when
        `root` is not a directory.
        """
        if limit <= 0:
            return 0
        try:
            if not stat.S_ISDIR(os.stat(root).st_mode):
                return 0
        except OSError:
            return 0
        count = 1
        pending = [os.fspath(root)]
        while pending and count < limit:
            try:
                with os.scandir(pending.pop()) as entries:
                    for entry in entries:
                        try:
                            is_dir = entry.is_dir(follow_symlinks=False)
                        except OSError:
                            continue
                        if is_dir:
                            count += 1
                            if count >= limit:
                                return limit
                            pending.append(entry.path)
            except OSError:
                continue  # vanished or unreadable mid-walk
        return min(count, limit)

    # -- placing and moving -------------------------------------------------------------------

    def _link(self, src: Path, dest: Path) -> None:
        """os.link without following symlinks (rename-like); a seam for tests."""
        os.link(src, dest, follow_symlinks=False)

    def _rename_noreplace(self, src: Path, dest: Path) -> None:
        """renameat2(RENAME_NOREPLACE); a seam for tests."""
        renameat2_noreplace(src, dest)

    def _write_all(self, fd: int, data: memoryview) -> None:
        """Write all of `data` to `fd`, looping over short writes; a seam for tests."""
        while data:
            written = os.write(fd, data)
            data = data[written:]

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
        temp = dest.parent / _hidden_temp_name("move")
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
                    if exc.errno not in _NO_MODES_ERRNOS:
                        raise
                os.fsync(fd)
            finally:
                os.close(fd)

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
        parts = _relative_parts(sub)
        try:
            # Created relative to the open root, so a root unmounted meanwhile is not re-made.
            dir_fd = os.open(root, _DIR_FLAGS)
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
            fd = os.open(name, _DIR_FLAGS, dir_fd=dir_fd)
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
        temp = path.parent / _hidden_temp_name("write")
        fd = os.open(temp, os.O_WRONLY | os.O_CREAT | os.O_EXCL, mode)
        try:
            try:
                try:
                    os.fchmod(fd, mode)  # the process umask may differ from the configured one
                except OSError as exc:
                    if exc.errno not in _NO_MODES_ERRNOS:
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


if TYPE_CHECKING:

    def _conforms(fs: LocalFileSystem) -> FileSystem:
        return fs  # mypy proves LocalFileSystem satisfies the protocol


def _relative_parts(rel: str | PurePosixPath) -> tuple[str, ...]:
    """The parts of a relative posix path ("." alone gives none); ValueError if it escapes."""
    path = PurePosixPath(rel)
    if path.is_absolute() or ".." in path.parts:
        raise ValueError(f"not a path below its root: {str(rel)!r}")
    return path.parts


def _not_a_candidate(shown: str, info: os.stat_result) -> NotACandidateError:
    if stat.S_ISLNK(info.st_mode):
        return NotACandidateError(f"{shown} is a symbolic link: never followed", link=True)
    return NotACandidateError(f"{shown} is not a regular file", link=False)


def _is_under(target: str, root: str) -> bool:
    return target == root or target.startswith(root.rstrip("/") + "/")


def open_files_under(root: Path, *, proc_root: Path = Path("/proc")) -> set[Path]:
    """Return files under `root` that some process holds open for writing (best effort).

    Paths are resolved (compare with os.path.realpath). One pass over /proc/*/fd; processes
    and descriptors we may not inspect, or that vanish meanwhile, are skipped.
    """
    real_root = os.path.realpath(root)
    found: set[Path] = set()
    try:
        pids = [name for name in os.listdir(proc_root) if name.isdigit()]
    except OSError:
        return found
    for pid in pids:
        fd_dir = proc_root / pid / "fd"
        try:
            fds = os.listdir(fd_dir)
        except OSError:
            continue
        for fd in fds:
            try:
                target = os.readlink(fd_dir / fd)
            except OSError:
                continue
            if not target.startswith("/") or not _is_under(target, real_root):
                continue
            if target.endswith(" (deleted)") and not os.path.lexists(target):
                continue
            if _open_for_writing(proc_root / pid / "fdinfo" / fd):
                found.add(Path(target))
    return found


def _open_for_writing(fdinfo: Path) -> bool:
    try:
        text = fdinfo.read_text()
    except OSError:
        return False
    for line in text.splitlines():
        if line.startswith("flags:"):
            try:
                flags = int(line.split(":", 1)[1].strip(), 8)
            except ValueError:
                return False
            return flags & os.O_ACCMODE in (os.O_WRONLY, os.O_RDWR)
    return False
