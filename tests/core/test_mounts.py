"""Mount facts as values: mountinfo parsing, longest-prefix lookup, watch-mode choice, inotify."""

from __future__ import annotations

import ast
import sys
from pathlib import Path, PurePosixPath

import pytest

from mh_watchd.core import mounts as mounts_module
from mh_watchd.core.mounts import (
    Mount,
    choose_watch_mode,
    inotify_fits,
    inotify_fix_hint,
    is_remote,
    mount_for,
    parse_mountinfo,
)

# Shaped like a NAS host's /proc/self/mountinfo: zero, one and two optional fields, a CIFS
# share with spaces and a backslash in its names, a nested NFS export, a container overlay.
MOUNTINFO = "\n".join(
    [
        "22 1 254:1 / / rw,relatime shared:1 - ext4 /dev/sda1 rw,errors=remount-ro",
        "25 22 0:23 / /dev/shm rw,nosuid,nodev shared:4 - tmpfs tmpfs rw,size=4096k",
        "35 22 0:45 / /mnt/nas rw,relatime shared:20 - nfs4 nas.local:/volume1/media "
        "rw,vers=4.1,rsize=131072,wsize=131072,hard,proto=tcp,addr=192.168.1.10",
        r"36 22 0:46 / /mnt/my\040share rw,relatime shared:21 master:3 - cifs "
        r"//nas/My\040Share\134x rw,vers=3.1.1,cache=strict,username=bob,uid=1000",
        "37 22 0:47 / /home/bob/remote rw,nosuid,nodev,relatime - fuse.sshfs bob@host:/srv "
        "rw,user_id=1000,group_id=1000",
        "38 22 0:48 / /var/lib/docker/overlay2/abc/merged rw,relatime - overlay overlay "
        "rw,lowerdir=/l1:/l2,upperdir=/u,workdir=/w",
        "39 35 0:49 /sub /mnt/nas/media/in rw - nfs4 nas.local:/volume1/other rw,vers=4.2",
        "",
    ]
)


def by_point(parsed: list[Mount]) -> dict[str, Mount]:
    return {str(m.mount_point): m for m in parsed}


def test_parse_mountinfo_reads_type_source_and_point_of_every_line() -> None:
    parsed = parse_mountinfo(MOUNTINFO)
    assert [(str(m.mount_point), m.fs_type) for m in parsed] == [
        ("/", "ext4"),
        ("/dev/shm", "tmpfs"),
        ("/mnt/nas", "nfs4"),
        ("/mnt/my share", "cifs"),
        ("/home/bob/remote", "fuse.sshfs"),
        ("/var/lib/docker/overlay2/abc/merged", "overlay"),
        ("/mnt/nas/media/in", "nfs4"),
    ]
    mounts = by_point(parsed)
    assert mounts["/mnt/my share"].source == "//nas/My Share\\x"
    assert mounts["/mnt/nas"].source == "nas.local:/volume1/media"
    assert mounts["/home/bob/remote"].source == "bob@host:/srv"


def test_parse_mountinfo_joins_mount_and_superblock_options_without_repeats() -> None:
    mounts = by_point(parse_mountinfo(MOUNTINFO))
    assert mounts["/"].options == ("rw", "relatime", "errors=remount-ro")
    assert mounts["/mnt/my share"].options[:2] == ("rw", "relatime")
    assert "vers=3.1.1" in mounts["/mnt/my share"].options
    assert mounts["/mnt/my share"].options.count("rw") == 1


@pytest.mark.parametrize(
    "line",
    [
        "garbage",
        "22 1 254:1 / / rw,relatime shared:1 ext4 /dev/sda1 rw",  # no separator
        "22 1 254:1 / / rw - ext4",  # no source
        "22 1 254:1 / relative rw - ext4 /dev/sda1 rw",  # not an absolute mount point
        "22 1 - / / rw ext4 /dev/sda1 rw",  # separator inside the fixed fields
    ],
)
def test_parse_mountinfo_skips_malformed_lines(line: str) -> None:
    good = "27 1 254:0 / / rw - ext4 /dev/vda rw"
    assert [m.fs_type for m in parse_mountinfo(f"{line}\n{good}\n")] == ["ext4"]


def test_parse_mountinfo_does_not_split_at_unicode_line_separators() -> None:
    parsed = parse_mountinfo("40 22 0:50 / /srv/a\u2028b rw - ext4 /dev/sdb rw\n")
    assert [str(m.mount_point) for m in parsed] == ["/srv/a\u2028b"]


@pytest.mark.parametrize(
    ("path", "expected_point"),
    [
        ("/", "/"),
        ("/home/alice/videos/a.mp4", "/"),
        ("/mnt/nas", "/mnt/nas"),
        ("/mnt/nas/media/out/a.mp4", "/mnt/nas"),
        ("/mnt/nas/media/in", "/mnt/nas/media/in"),
        ("/mnt/nas/media/in/trip/a.mp4", "/mnt/nas/media/in"),
        ("/mnt/nasty/a.mp4", "/"),  # a string prefix is not a path prefix
        ("/mnt/my share/in", "/mnt/my share"),
        ("/home/bob/remote/in", "/home/bob/remote"),
    ],
)
def test_mount_for_picks_the_longest_mount_point_prefix(path: str, expected_point: str) -> None:
    found = mount_for(PurePosixPath(path), parse_mountinfo(MOUNTINFO))
    assert found is not None
    assert str(found.mount_point) == expected_point


def test_mount_for_prefers_the_later_of_two_stacked_mounts() -> None:
    text = (
        "25 22 0:23 / /srv rw - ext4 /dev/sdb1 rw\n22 1 254:1 / / rw - ext4 /dev/sda1 rw\n"
        "30 25 0:27 / /srv rw - cifs //nas/srv rw\n"
    )
    found = mount_for(PurePosixPath("/srv/in/a.mp4"), parse_mountinfo(text))
    assert found is not None
    assert found.fs_type == "cifs"


def test_mount_for_finds_nothing_for_relative_paths_or_no_mounts() -> None:
    assert mount_for(PurePosixPath("in/a.mp4"), parse_mountinfo(MOUNTINFO)) is None
    assert mount_for(PurePosixPath("/a"), []) is None


@pytest.mark.parametrize(
    ("fs_type", "remote"),
    [
        ("nfs", True),
        ("nfs4", True),
        ("NFS4", True),
        ("cifs", True),
        ("smb3", True),
        ("smbfs", True),
        ("9p", True),
        ("ceph", True),
        ("glusterfs", True),
        ("fuse.sshfs", True),
        ("fuse.rclone", True),
        ("fuse.mergerfs", True),
        ("fuse.something-new", True),
        ("fuseblk", True),
        ("fuse", True),
        ("ext4", False),
        ("xfs", False),
        ("btrfs", False),
        ("zfs", False),
        ("tmpfs", False),
        ("overlay", False),
        ("fusectl", False),
        ("", False),
    ],
)
def test_is_remote_classifies_filesystem_types(fs_type: str, remote: bool) -> None:
    assert is_remote(fs_type) is remote


@pytest.mark.parametrize(
    ("point", "mode", "reason_has"),
    [
        ("/", "native", "ext4, a local filesystem"),
        ("/dev/shm", "native", "tmpfs, a local filesystem"),
        ("/mnt/nas", "polling", "nfs4, where inotify does not see changes made by other machines"),
        ("/mnt/my share", "polling", "cifs, where inotify does not see changes"),
        ("/home/bob/remote", "polling", "fuse.sshfs, a FUSE filesystem"),
        ("/var/lib/docker/overlay2/abc/merged", "native", "overlay, a local filesystem"),
    ],
)
def test_choose_watch_mode_auto_for_each_parsed_mount(
    point: str, mode: str, reason_has: str
) -> None:
    fs_type = by_point(parse_mountinfo(MOUNTINFO))[point].fs_type
    chosen, reason = choose_watch_mode("auto", fs_type)
    assert chosen == mode
    assert reason_has in reason


def test_choose_watch_mode_auto_with_unknown_type_uses_native_and_says_why() -> None:
    assert choose_watch_mode("auto", None) == (
        "native",
        "the inbox's filesystem type is unknown; using native events, the rescan catches "
        "anything they miss",
    )
    chosen, reason = choose_watch_mode("auto", "weirdfs")
    assert chosen == "native"
    assert "weirdfs" in reason
    assert "does not know" in reason


def test_choose_watch_mode_honours_an_explicit_setting() -> None:
    assert choose_watch_mode("polling", "ext4") == ("polling", "observer = polling is configured")
    assert choose_watch_mode("native", "ext4") == ("native", "observer = native is configured")
    chosen, reason = choose_watch_mode("native", "cifs")
    assert chosen == "native"
    assert "cifs" in reason
    assert "only found by the rescan" in reason


def test_choose_watch_mode_rejects_an_unknown_setting() -> None:
    with pytest.raises(ValueError, match="'inotify'"):
        choose_watch_mode("inotify", "ext4")


@pytest.mark.parametrize(
    ("dir_count", "in_use", "limit", "fits"),
    [
        (10_000_000, 0, None, True),  # unknown limit: nothing to compare with
        (8192 - 409, 0, 8192, True),  # the reserve is 5% of the limit: 409
        (8192 - 409 + 1, 0, 8192, False),
        (8192 - 409 - 100, 100, 8192, True),
        (8192 - 409 - 100 + 1, 100, 8192, False),
        (8192 - 409, None, 8192, True),  # unknown use counts as 0
        (1000 - 64, 0, 1000, True),  # small limits keep at least 64
        (1000 - 63, 0, 1000, False),
    ],
)
def test_inotify_fits_keeps_a_reserve_for_other_programs(
    dir_count: int, in_use: int | None, limit: int | None, fits: bool
) -> None:
    assert inotify_fits(dir_count, in_use, limit) is fits


@pytest.mark.parametrize(
    ("needed", "suggested"), [(1, 65536), (32768, 65536), (32769, 131072), (100_000, 262144)]
)
def test_inotify_fix_hint_names_the_sysctl_with_room_to_grow(needed: int, suggested: int) -> None:
    hint = inotify_fix_hint(needed)
    assert f"sysctl fs.inotify.max_user_watches={suggested} " in hint
    assert f"'fs.inotify.max_user_watches={suggested}' in /etc/sysctl.d/" in hint


def test_mounts_module_is_pure() -> None:
    source = Path(mounts_module.__file__).read_text(encoding="utf-8")
    tree = ast.parse(source)
    imported: set[str] = set()
    calls: set[str] = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            imported.update(alias.name.split(".")[0] for alias in node.names)
        elif isinstance(node, ast.ImportFrom) and node.module:
            imported.add(node.module.split(".")[0])
        elif isinstance(node, ast.Call) and isinstance(node.func, ast.Name):
            calls.add(node.func.id)
    assert imported <= set(sys.stdlib_module_names) | {"__future__"}
    assert "os" not in imported
    assert "time" not in imported
    assert "open" not in calls
