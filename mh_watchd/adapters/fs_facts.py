"""Facts about filesystems for `LocalFileSystem`, read from /proc and statvfs.

What kind of filesystem holds a path and whether it is mounted (mountinfo, read afresh each
time: shares come and go while the daemon runs), how much room is left, how many inotify
watches are spent and how many an inbox would need, and which files are open for writing.
Nothing here changes the filesystem.
"""

from __future__ import annotations

import os
import stat
from pathlib import Path, PurePosixPath

from mh_watchd.core.mounts import Mount, is_remote, mount_for, parse_mountinfo

__all__ = ["FilesystemFacts", "open_files_under"]


class FilesystemFacts:
    """What kind of filesystem a path is on, whether it is mounted, room and inotify budget.

    A part of `LocalFileSystem`, never constructed alone: it reads `self.mountinfo_path` and
    `self.proc_root`, set by `LocalFileSystem.__init__`. Subclasses may override `fs_type` or
    `inotify_limits` (tests do); `state_dir_problem` asks `self.fs_type`.
    """

    mountinfo_path: Path
    proc_root: Path

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

    def state_dir_problem(self, path: Path) -> str | None:
        """Return why `path` cannot hold the journal ("on nfs: SQLite WAL is unsafe there").

        None for local or unknown filesystem types.
        """
        kind = self.fs_type(path)
        if kind is not None and is_remote(kind):
            return f"on {kind}: SQLite WAL is unsafe there"
        return None

    def free_bytes(self, path: Path) -> int:
        """Return the bytes an unprivileged user may still write on `path`'s filesystem.

        Raises OSError when `path` cannot be reached.
        """
        info = os.statvfs(path)
        return info.f_bavail * info.f_frsize

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
        """Return how many directories `root` holds, itself included (see `count_dirs`)."""
        return count_dirs(root, limit)


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


def count_dirs(root: Path, limit: int) -> int:
    """Return how many directories `root` holds, itself included, counting up to `limit`.

    Symlinks are not followed and nothing is pruned (a native recursive watch covers every
    directory); unreadable subdirectories count but are not entered. 0 when `root` is missing
    or not a directory. Never raises OSError.
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
