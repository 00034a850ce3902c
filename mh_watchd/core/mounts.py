"""Mount facts as values: parse /proc/self/mountinfo text, find a path's mount, judge its type.

Pure: the adapter reads the text; this module only turns it into `Mount` values and decisions
(is this filesystem remote, should an inbox on it be watched with inotify or polled, does a
recursive inbox fit in the inotify watch budget).
"""

from __future__ import annotations

import re
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import PurePosixPath

__all__ = [
    "LOCAL_FS_TYPES",
    "REMOTE_FS_TYPES",
    "WATCH_MODES",
    "Mount",
    "choose_watch_mode",
    "inotify_fits",
    "inotify_fix_hint",
    "is_remote",
    "mount_for",
    "parse_mountinfo",
]


@dataclass(frozen=True)
class Mount:
    """One line of mountinfo: where it is mounted, the filesystem type, what, and its options."""

    mount_point: PurePosixPath
    fs_type: str
    source: str
    # The per-mount options (field 6) followed by the superblock options not already listed.
    options: tuple[str, ...]


# Filesystems whose content can change behind the kernel's back (another machine, a daemon
# serving a remote store): inotify misses those changes, and SQLite's WAL (shared-memory
# index, POSIX locks) is unsafe on them. Any FUSE filesystem counts, see `is_remote`.
REMOTE_FS_TYPES: frozenset[str] = frozenset(
    {
        "nfs",
        "nfs4",
        "cifs",
        "smb",
        "smb2",
        "smb3",
        "smbfs",
        "ncpfs",
        "9p",
        "virtiofs",
        "vboxsf",
        "vmhgfs",
        "prl_fs",
        "drvfs",
        "sshfs",
        "davfs",
        "ceph",
        "glusterfs",
        "afs",
        "openafs",
        "coda",
        "lustre",
        "gpfs",
        "beegfs",
        "orangefs",
        "pvfs2",
        "ocfs2",
        "gfs2",
        "panfs",
        "fuse",
        "fuseblk",
        "fuse.sshfs",
        "fuse.rclone",
        "fuse.mergerfs",
        "fuse.shfs",
        "fuse.s3fs",
        "fuse.gcsfuse",
        "fuse.glusterfs",
        "fuse.ceph-fuse",
        "fuse.juicefs",
        "fuse.vmhgfs-fuse",
    }
)

# Filesystems known to live on this machine, where inotify sees every change.
LOCAL_FS_TYPES: frozenset[str] = frozenset(
    {
        "ext2",
        "ext3",
        "ext4",
        "xfs",
        "btrfs",
        "zfs",
        "bcachefs",
        "f2fs",
        "jfs",
        "reiserfs",
        "nilfs2",
        "tmpfs",
        "ramfs",
        "overlay",
        "aufs",
        "vfat",
        "msdos",
        "exfat",
        "ntfs",
        "ntfs3",
        "hfs",
        "hfsplus",
        "apfs",
        "udf",
        "iso9660",
        "squashfs",
        "erofs",
        "ecryptfs",
    }
)

WATCH_MODES: frozenset[str] = frozenset({"auto", "native", "polling"})

# mountinfo escapes space, tab, newline and backslash in paths as a backslash + 3 octal digits.
_OCTAL_ESCAPE = re.compile(r"\\([0-7]{3})")


def _unescape(field: str) -> str:
    return _OCTAL_ESCAPE.sub(lambda m: chr(int(m.group(1), 8)), field)


def parse_mountinfo(text: str) -> list[Mount]:
    """Return the mounts described by /proc/PID/mountinfo `text`, in file (mount) order.

    Octal escapes (`\\040`) in paths are decoded; lines that do not have the documented shape
    (six fields, optional fields, a lone "-", then type and source) are skipped, never raised.
    """
    mounts: list[Mount] = []
    # Split on "\n" only: str.splitlines() would also cut at characters such as U+2028 that
    # the kernel leaves unescaped in path names.
    for line in text.split("\n"):
        fields = line.split(" ")
        try:
            sep = fields.index("-", 6)
        except ValueError:
            continue
        if len(fields) < sep + 3:
            continue
        mount_point = _unescape(fields[4])
        if not mount_point.startswith("/"):
            continue
        fs_type = _unescape(fields[sep + 1])
        source = _unescape(fields[sep + 2])
        options = [o for o in fields[5].split(",") if o]
        if len(fields) > sep + 3:
            options += [o for o in fields[sep + 3].split(",") if o and o not in options]
        mounts.append(Mount(PurePosixPath(mount_point), fs_type, source, tuple(options)))
    return mounts


def mount_for(path: PurePosixPath, mounts: Sequence[Mount]) -> Mount | None:
    """Return the mount holding absolute `path` (the longest mount-point prefix), else None.

    Of two mounts on the same point the later one wins: it is stacked on top. `path` should be
    resolved already (no symlinks, no ".."); a relative path matches nothing.
    """
    best: Mount | None = None
    best_depth = -1
    for mount in mounts:
        if not path.is_relative_to(mount.mount_point):
            continue
        depth = len(mount.mount_point.parts)
        if depth >= best_depth:
            best, best_depth = mount, depth
    return best


def _is_fuse(fs_type: str) -> bool:
    return fs_type in ("fuse", "fuseblk") or fs_type.startswith("fuse.")


def is_remote(fs_type: str) -> bool:
    """Return True for network, shared and FUSE filesystems (inotify and SQLite WAL unsafe)."""
    kind = fs_type.strip().lower()
    return kind in REMOTE_FS_TYPES or _is_fuse(kind)


def choose_watch_mode(configured: str, fs_type: str | None) -> tuple[str, str]:
    """Return ("native" | "polling", a reason a person can read) for an inbox.

    `configured` is the folder's observer setting (auto | native | polling); `fs_type` the
    inbox's filesystem type, None when unknown. Raises ValueError for another setting.
    """
    kind = fs_type.strip().lower() if fs_type else None
    if configured == "native":
        if kind and is_remote(kind):
            return "native", (
                f"observer = native is configured, but the inbox is on {kind}: changes made by "
                "other machines are only found by the rescan"
            )
        return "native", "observer = native is configured"
    if configured == "polling":
        return "polling", "observer = polling is configured"
    if configured != "auto":
        raise ValueError(f"observer must be one of auto, native, polling, not {configured!r}")
    if kind is None:
        return "native", (
            "the inbox's filesystem type is unknown; using native events, the rescan catches "
            "anything they miss"
        )
    if _is_fuse(kind):
        return "polling", (
            f"inbox is on {kind}, a FUSE filesystem, where inotify does not see changes made "
            "behind it"
        )
    if is_remote(kind):
        return "polling", (
            f"inbox is on {kind}, where inotify does not see changes made by other machines"
        )
    if kind in LOCAL_FS_TYPES:
        return "native", f"inbox is on {kind}, a local filesystem"
    return "native", (
        f"inbox is on {kind}, a filesystem type mh-watchd does not know; using native events, "
        "the rescan catches anything they miss"
    )


def _inotify_reserve(max_user_watches: int) -> int:
    # max_user_watches is shared by every process of the user (desktop indexers, sync tools,
    # other daemons) and only our own use is measurable: leave them 5% of it, at least 64.
    return max(64, max_user_watches // 20)


def inotify_fits(dir_count: int, watches_in_use: int | None, max_user_watches: int | None) -> bool:
    """Return True when `dir_count` more inotify watches fit under the user's limit.

    An unknown limit fits (nothing to compare with); unknown use counts as 0. A reserve of 5%
    of the limit (at least 64) is kept for the user's other programs.
    """
    if max_user_watches is None:
        return True
    used = watches_in_use or 0
    return used + dir_count + _inotify_reserve(max_user_watches) <= max_user_watches


def inotify_fix_hint(needed: int) -> str:
    """Return advice raising fs.inotify.max_user_watches to fit `needed` watches, with room.

    The suggested value is a power of two at least twice `needed` (and at least 65536), so the
    tree can grow before the advice is due again.
    """
    value = 65536
    while value < 2 * needed:
        value *= 2
    return (
        f"raise the inotify watch limit: sysctl fs.inotify.max_user_watches={value} (as root; "
        f"on the host for a container), and keep it across reboots with the line "
        f"'fs.inotify.max_user_watches={value}' in /etc/sysctl.d/60-mh-watchd.conf"
    )
