"""The filesystem adapter on real directories: facts, checks, and never-replacing moves.

NAS behaviours this machine lacks (no hard links, no RENAME_NOREPLACE, EXDEV, a full disk)
are injected through the adapter's seams (`_link`, `_rename_noreplace`, `_write_all`).
"""

from __future__ import annotations

import ctypes
import errno
import hashlib
import os
import shutil
import stat
import tempfile
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path, PurePosixPath
from typing import Any

import pytest

from mh_watchd.adapters.fs import (
    FileSystem,
    LocalFileSystem,
    NotACandidateError,
    open_files_under,
    renameat2_noreplace,
)
from mh_watchd.core import errors
from mh_watchd.core.errors import SourceChangedError

IS_ROOT = os.geteuid() == 0


class ScriptedFileSystem(LocalFileSystem):
    """LocalFileSystem with NAS quirks switched on by attributes; records which seams ran."""

    def __init__(self, **kwargs: object) -> None:
        super().__init__(**kwargs)  # type: ignore[arg-type]
        self.link_errno: int | None = None
        self.rename_errno: int | None = None
        self.foreign_dirs: set[Path] = set()  # links/renames out of these raise EXDEV
        self.fail_writes_after: int | None = None
        self.calls: list[str] = []
        self._writes = 0

    def _exdev(self, src: Path, dest: Path) -> bool:
        return src.parent in self.foreign_dirs and dest.parent not in self.foreign_dirs

    def _link(self, src: Path, dest: Path) -> None:
        self.calls.append("link")
        if self._exdev(src, dest):
            raise OSError(errno.EXDEV, os.strerror(errno.EXDEV), str(src))
        if self.link_errno is not None:
            raise OSError(self.link_errno, os.strerror(self.link_errno), str(src))
        super()._link(src, dest)

    def _rename_noreplace(self, src: Path, dest: Path) -> None:
        self.calls.append("renameat2")
        if self._exdev(src, dest):
            raise OSError(errno.EXDEV, os.strerror(errno.EXDEV), str(src))
        if self.rename_errno is not None:
            raise OSError(self.rename_errno, os.strerror(self.rename_errno), str(src))
        super()._rename_noreplace(src, dest)

    def _write_all(self, fd: int, data: memoryview) -> None:
        self._writes += 1
        if self.fail_writes_after is not None and self._writes > self.fail_writes_after:
            raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))
        super()._write_all(fd, data)


def write(path: Path, data: bytes) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(data)
    return path


def mountinfo_line(mount_id: int, point: Path | str, fs_type: str, source: str) -> str:
    escaped = str(point).replace("\\", "\\134").replace(" ", "\\040")
    return f"{mount_id} 1 0:{mount_id} / {escaped} rw,relatime - {fs_type} {source} rw"


def fake_mountinfo(tmp_path: Path, *extra: tuple[Path, str]) -> Path:
    lines = [mountinfo_line(1, "/", "ext4", "/dev/sda1")]
    lines += [
        mountinfo_line(10 + i, os.path.realpath(p), t, "nas:/x") for i, (p, t) in enumerate(extra)
    ]
    path = tmp_path / "mountinfo"
    path.write_text("\n".join(lines) + "\n")
    return path


# -- one object, made of parts -----------------------------------------------------------------


def test_local_filesystem_satisfies_the_protocol() -> None:
    fs: FileSystem = LocalFileSystem()
    assert isinstance(fs, LocalFileSystem)
    missing = [
        name
        for name in dir(FileSystem)
        if not name.startswith("_") and not callable(getattr(LocalFileSystem, name, None))
    ]
    assert missing == []


def test_overriding_a_method_in_a_subclass_changes_it_for_every_caller(tmp_path: Path) -> None:
    class OnNfs(LocalFileSystem):
        def fs_type(self, path: Path) -> str | None:
            return "nfs4"

        def is_mount_point(self, path: Path) -> bool:
            return True

    inbox = tmp_path / "in"
    inbox.mkdir()
    fs = OnNfs()
    assert fs.state_dir_problem(tmp_path) == "on nfs4: SQLite WAL is unsafe there"
    assert fs.check_inbox(inbox, require_mount=True, mount_marker="") is None
    assert LocalFileSystem().check_inbox(inbox, require_mount=True, mount_marker="") == (
        "not a mount point"
    )


def test_not_a_candidate_error_lives_in_the_core_tree_and_is_still_exported_here() -> None:
    assert NotACandidateError is errors.NotACandidateError
    assert issubclass(NotACandidateError, SourceChangedError)
    error = NotACandidateError("x.mp4 is a symbolic link: never followed", link=True)
    assert (error.link, str(error)) == (True, "x.mp4 is a symbolic link: never followed")
    assert "NotACandidateError" in (errors.__doc__ or "")


# -- facts -------------------------------------------------------------------------------------


def test_fs_type_comes_from_mountinfo_with_symlinks_resolved(tmp_path: Path) -> None:
    share = tmp_path / "share"
    (share / "in").mkdir(parents=True)
    link = tmp_path / "link-to-share"
    link.symlink_to(share)
    fs = LocalFileSystem(mountinfo_path=fake_mountinfo(tmp_path, (share, "nfs4")))
    assert fs.fs_type(share / "in") == "nfs4"
    assert fs.fs_type(link / "in") == "nfs4"
    assert fs.fs_type(share / "not-yet-made") == "nfs4"
    assert fs.fs_type(tmp_path) == "ext4"


def test_fs_type_of_the_real_machine_is_a_mounted_type(tmp_path: Path) -> None:
    real_types = {
        line.split(" - ", 1)[1].split(" ")[0]
        for line in Path("/proc/self/mountinfo").read_text().splitlines()
    }
    assert LocalFileSystem().fs_type(tmp_path) in real_types


def test_fs_type_is_none_when_mountinfo_is_unreadable(tmp_path: Path) -> None:
    fs = LocalFileSystem(mountinfo_path=tmp_path / "absent")
    assert fs.fs_type(tmp_path) is None
    assert fs.state_dir_problem(tmp_path) is None


@pytest.mark.parametrize(
    ("fs_type", "problem"),
    [
        ("nfs", "on nfs: SQLite WAL is unsafe there"),
        ("cifs", "on cifs: SQLite WAL is unsafe there"),
        ("fuse.sshfs", "on fuse.sshfs: SQLite WAL is unsafe there"),
        ("ext4", None),
        ("tmpfs", None),
    ],
)
def test_state_dir_problem_refuses_network_and_fuse_filesystems(
    tmp_path: Path, fs_type: str, problem: str | None
) -> None:
    state = tmp_path / "state"
    state.mkdir()
    fs = LocalFileSystem(mountinfo_path=fake_mountinfo(tmp_path, (state, fs_type)))
    assert fs.state_dir_problem(state) == problem
    assert fs.state_dir_problem(state / "not-made-yet") == problem
    assert fs.state_dir_problem(tmp_path) is None


def test_is_mount_point_uses_mountinfo_and_sees_bind_mounts(tmp_path: Path) -> None:
    real = LocalFileSystem()
    assert real.is_mount_point(Path("/"))
    assert not real.is_mount_point(tmp_path)
    # A bind mount of the same device, which os.path.ismount cannot see, listed in mountinfo.
    bound = tmp_path / "bound"
    bound.mkdir()
    faked = LocalFileSystem(mountinfo_path=fake_mountinfo(tmp_path, (bound, "ext4")))
    assert faked.is_mount_point(bound)
    assert not faked.is_mount_point(tmp_path)


def test_free_bytes_matches_statvfs(tmp_path: Path) -> None:
    info = os.statvfs(tmp_path)
    free = LocalFileSystem().free_bytes(tmp_path)
    assert free > 0
    # Other writers may change it a little between the two calls.
    assert abs(free - info.f_bavail * info.f_frsize) < 64 * 1024 * 1024


def test_stat_is_an_lstat_and_none_for_gone_paths(tmp_path: Path) -> None:
    target = write(tmp_path / "a.mp4", b"12345")
    link = tmp_path / "link.mp4"
    link.symlink_to(target)
    fs = LocalFileSystem()
    file_info = fs.stat(target)
    link_info = fs.stat(link)
    assert file_info is not None and file_info.st_size == 5
    assert link_info is not None and stat.S_ISLNK(link_info.st_mode)
    assert fs.stat(tmp_path / "gone.mp4") is None
    assert fs.stat(target / "under-a-file") is None


def test_count_dirs_counts_root_and_subdirs_without_following_symlinks(tmp_path: Path) -> None:
    root = tmp_path / "in"
    for rel in ("a/b/c", "a/d", "e"):
        (root / rel).mkdir(parents=True)
    write(root / "a" / "file.mp4", b"x")
    (root / "link-to-a").symlink_to(root / "a")
    fs = LocalFileSystem()
    assert fs.count_dirs(root, 1000) == 6  # in, a, a/b, a/b/c, a/d, e
    assert fs.count_dirs(root, 3) == 3
    assert fs.count_dirs(root, 0) == 0
    assert fs.count_dirs(root / "a" / "file.mp4", 1000) == 0
    assert fs.count_dirs(tmp_path / "absent", 1000) == 0


def test_inotify_limits_count_this_process_watches(tmp_path: Path) -> None:
    fs = LocalFileSystem()
    limit_text = Path("/proc/sys/fs/inotify/max_user_watches").read_text()
    limit, before = fs.inotify_limits()
    assert limit == int(limit_text)
    assert before is not None
    libc = ctypes.CDLL(None, use_errno=True)
    fd = libc.inotify_init1(os.O_CLOEXEC)
    assert fd >= 0, os.strerror(ctypes.get_errno())
    try:
        for name in ("a", "b", "c"):
            (tmp_path / name).mkdir()
            assert libc.inotify_add_watch(fd, os.fsencode(tmp_path / name), 0x100) > 0
        assert fs.inotify_limits() == (limit, before + 3)
    finally:
        os.close(fd)
    assert fs.inotify_limits() == (limit, before)


def test_inotify_limits_are_unknown_without_proc(tmp_path: Path) -> None:
    assert LocalFileSystem(proc_root=tmp_path).inotify_limits() == (None, None)


# -- checks ------------------------------------------------------------------------------------


def test_check_inbox_reasons(tmp_path: Path) -> None:
    fs = LocalFileSystem()
    inbox = tmp_path / "in"
    assert fs.check_inbox(inbox, require_mount=False, mount_marker="") == "missing"
    write(inbox, b"not a folder")
    assert fs.check_inbox(inbox, require_mount=False, mount_marker="") == "not a directory"
    assert fs.check_inbox(inbox / "x", require_mount=False, mount_marker="") == "missing"
    inbox.unlink()
    inbox.mkdir()
    assert fs.check_inbox(inbox, require_mount=False, mount_marker="") is None
    assert (
        fs.check_inbox(inbox, require_mount=False, mount_marker=".mounted")
        == "marker file .mounted missing"
    )
    write(inbox / ".mounted", b"")
    assert fs.check_inbox(inbox, require_mount=False, mount_marker=".mounted") is None
    assert fs.check_inbox(inbox, require_mount=True, mount_marker=".mounted") == "not a mount point"


def test_check_inbox_accepts_a_mounted_inbox(tmp_path: Path) -> None:
    inbox = tmp_path / "in"
    inbox.mkdir()
    fs = LocalFileSystem(mountinfo_path=fake_mountinfo(tmp_path, (inbox, "cifs")))
    assert fs.check_inbox(inbox, require_mount=True, mount_marker="") is None


def test_check_inbox_unreadable(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    inbox = tmp_path / "in"
    inbox.mkdir()
    real_scandir = os.scandir

    def refusing_scandir(path: Any) -> Any:
        # CI runs as root, which chmod 000 does not stop: refuse the listing at the OS edge.
        if Path(path) == inbox:
            raise PermissionError(13, "Permission denied", str(path))
        return real_scandir(path)

    monkeypatch.setattr(os, "scandir", refusing_scandir)
    got = LocalFileSystem().check_inbox(inbox, require_mount=False, mount_marker="")
    assert got == "unreadable"


def test_check_writable_dir_reasons(tmp_path: Path) -> None:
    fs = LocalFileSystem()
    blocker = write(tmp_path / "blocker", b"a file where a folder should be")
    assert (
        fs.check_writable_dir(blocker / "out", create=True)
        == "cannot create: a parent is not a directory"
    )
    assert fs.check_writable_dir(blocker, create=True) == "not a directory"
    assert fs.check_writable_dir(blocker, create=False) == "not a directory"
    assert fs.check_writable_dir(tmp_path / "out", create=False) == "missing"
    assert not (tmp_path / "out").exists()


def test_check_writable_dir_creates_and_leaves_no_probe(tmp_path: Path) -> None:
    fs = LocalFileSystem(umask=0o027)
    out = tmp_path / "a" / "b" / "out"
    assert fs.check_writable_dir(out, create=True) is None
    assert out.is_dir()
    assert list(out.iterdir()) == []
    assert stat.S_IMODE(out.stat().st_mode) == 0o750
    assert stat.S_IMODE((tmp_path / "a").stat().st_mode) == 0o750


@pytest.mark.parametrize(
    ("code", "reason"),
    [
        (errno.ENOSPC, "full"),
        (errno.EDQUOT, "over quota"),
        (errno.EROFS, "read-only filesystem"),
        (errno.EIO, "unreachable: Input/output error"),
        (errno.EACCES, "not writable"),
    ],
)
def test_check_writable_dir_names_full_quota_and_read_only(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, code: int, reason: str
) -> None:
    # An OS edge this machine cannot produce on demand: the probe's one-byte write fails.
    def failing_write(fd: int, data: object) -> int:
        raise OSError(code, os.strerror(code))

    monkeypatch.setattr(os, "write", failing_write)
    assert LocalFileSystem().check_writable_dir(tmp_path, create=False) == reason
    monkeypatch.undo()
    assert list(tmp_path.iterdir()) == []  # the probe was removed


# -- creating ----------------------------------------------------------------------------------


def test_makedirs_honours_the_configured_umask_not_the_process_one(tmp_path: Path) -> None:
    fs = LocalFileSystem(umask=0o002)
    old = os.umask(0o077)
    try:
        fs.makedirs(tmp_path / "x" / "y")
        fs.makedirs(tmp_path / "x" / "y")  # existing: fine
    finally:
        os.umask(old)
    assert stat.S_IMODE((tmp_path / "x").stat().st_mode) == 0o775
    assert stat.S_IMODE((tmp_path / "x" / "y").stat().st_mode) == 0o775


def test_makedirs_refuses_files_in_the_way(tmp_path: Path) -> None:
    fs = LocalFileSystem()
    blocker = write(tmp_path / "f", b"x")
    with pytest.raises(FileExistsError):
        fs.makedirs(blocker)
    with pytest.raises(NotADirectoryError):
        fs.makedirs(blocker / "a" / "b")


@pytest.mark.skipif(not IS_ROOT, reason="giving a directory another group needs root")
def test_makedirs_new_dirs_take_the_parents_group(tmp_path: Path) -> None:
    parent = tmp_path / "media"
    parent.mkdir()
    os.chown(parent, -1, 4242)
    LocalFileSystem().makedirs(parent / "out" / "trip")
    assert (parent / "out").stat().st_gid == 4242
    assert (parent / "out" / "trip").stat().st_gid == 4242


def test_makedirs_keeps_an_inherited_setgid_bit(tmp_path: Path) -> None:
    parent = tmp_path / "media"
    parent.mkdir()
    parent.chmod(0o2775)
    LocalFileSystem(umask=0o002).makedirs(parent / "out")
    assert stat.S_IMODE((parent / "out").stat().st_mode) == 0o2775


def test_write_atomic_writes_replaces_and_leaves_no_temp(tmp_path: Path) -> None:
    fs = LocalFileSystem(umask=0o022)
    target = tmp_path / "a.mp4.error.json"
    fs.write_atomic(target, b'{"v": 1}')
    assert target.read_bytes() == b'{"v": 1}'
    assert stat.S_IMODE(target.stat().st_mode) == 0o644
    fs.write_atomic(target, b'{"v": 2}')
    assert target.read_bytes() == b'{"v": 2}'
    assert sorted(p.name for p in tmp_path.iterdir()) == ["a.mp4.error.json"]


def test_write_atomic_failure_keeps_the_old_file_and_no_temp(tmp_path: Path) -> None:
    fs = ScriptedFileSystem()
    target = write(tmp_path / "state.json", b"old")
    fs.fail_writes_after = 0
    with pytest.raises(OSError) as caught:
        fs.write_atomic(target, b"new")
    assert caught.value.errno == errno.ENOSPC
    assert target.read_bytes() == b"old"
    assert [p.name for p in tmp_path.iterdir()] == ["state.json"]
    with pytest.raises(FileNotFoundError):
        fs.write_atomic(tmp_path / "missing-dir" / "x", b"x")


def test_remove_ignores_missing_files(tmp_path: Path) -> None:
    fs = LocalFileSystem()
    target = write(tmp_path / "a", b"x")
    fs.remove(target)
    fs.remove(target)
    assert not target.exists()


def test_sha256_file_returns_size_and_digest(tmp_path: Path) -> None:
    data = os.urandom(10_000)
    target = write(tmp_path / "a.mp4", data)
    expected = (len(data), hashlib.sha256(data).hexdigest())
    assert LocalFileSystem().sha256_file(target, chunk=4096) == expected
    assert LocalFileSystem().sha256_file(target) == expected
    assert LocalFileSystem().sha256_file(write(tmp_path / "e", b"")) == (
        0,
        hashlib.sha256(b"").hexdigest(),
    )


def test_fsync_dir_ignores_refusal_but_not_io_errors(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    fs = LocalFileSystem()
    fs.fsync_dir(tmp_path)
    seen: list[int] = []

    def refusing_fsync(fd: int) -> None:
        seen.append(fd)
        raise OSError(errno.EINVAL, os.strerror(errno.EINVAL))

    monkeypatch.setattr(os, "fsync", refusing_fsync)
    fs.fsync_dir(tmp_path)
    assert len(seen) == 1

    def failing_fsync(fd: int) -> None:
        raise OSError(errno.EIO, os.strerror(errno.EIO))

    monkeypatch.setattr(os, "fsync", failing_fsync)
    with pytest.raises(OSError, match="Input/output"):
        fs.fsync_dir(tmp_path)


# -- placing -----------------------------------------------------------------------------------


def test_place_noreplace_places_then_never_replaces(tmp_path: Path) -> None:
    fs = LocalFileSystem()
    src = write(tmp_path / "tmp" / "one", b"first output")
    dest = tmp_path / "out" / "a.mp4"
    dest.parent.mkdir()
    assert fs.place_noreplace(src, dest) is True
    assert dest.read_bytes() == b"first output"
    assert not src.exists()
    other = write(tmp_path / "tmp" / "two", b"second output")
    assert fs.place_noreplace(other, dest) is False
    assert dest.read_bytes() == b"first output"
    assert other.read_bytes() == b"second output"


def test_place_noreplace_never_replaces_a_dangling_symlink(tmp_path: Path) -> None:
    fs = LocalFileSystem()
    dest = tmp_path / "a.mp4"
    dest.symlink_to(tmp_path / "nowhere")
    src = write(tmp_path / "src", b"x")
    assert fs.place_noreplace(src, dest) is False
    assert dest.is_symlink()
    assert src.read_bytes() == b"x"


def test_place_noreplace_raises_when_src_is_missing(tmp_path: Path) -> None:
    with pytest.raises(FileNotFoundError):
        LocalFileSystem().place_noreplace(tmp_path / "absent", tmp_path / "a.mp4")
    assert not (tmp_path / "a.mp4").exists()


def test_place_first_free_picks_the_next_name_when_taken(tmp_path: Path) -> None:
    fs = LocalFileSystem()
    out = tmp_path / "out"
    taken = write(out / "beach.studio-ghibli.mp4", b"earlier")
    src = write(tmp_path / "tmp" / "x", b"new")
    names = [
        "beach.studio-ghibli.mp4",
        "beach.studio-ghibli (2).mp4",
        "beach.studio-ghibli (3).mp4",
    ]
    placed = fs.place_first_free(src, out, names)
    assert placed == out / "beach.studio-ghibli (2).mp4"
    assert placed.read_bytes() == b"new"
    assert taken.read_bytes() == b"earlier"
    assert not src.exists()


def test_place_first_free_raises_when_every_name_is_taken(tmp_path: Path) -> None:
    fs = LocalFileSystem()
    out = tmp_path / "out"
    write(out / "a.mp4", b"1")
    write(out / "a (2).mp4", b"2")
    src = write(tmp_path / "x", b"new")
    with pytest.raises(FileExistsError):
        fs.place_first_free(src, out, iter(["a.mp4", "a (2).mp4"]))
    assert src.read_bytes() == b"new"
    assert (out / "a.mp4").read_bytes() == b"1"
    assert (out / "a (2).mp4").read_bytes() == b"2"


def test_renameat2_noreplace_refuses_an_existing_dest(tmp_path: Path) -> None:
    src = write(tmp_path / "src", b"new")
    dest = write(tmp_path / "dest", b"old")
    with pytest.raises(FileExistsError):
        renameat2_noreplace(src, dest)
    assert dest.read_bytes() == b"old"
    renameat2_noreplace(src, tmp_path / "free")
    assert (tmp_path / "free").read_bytes() == b"new"
    assert not src.exists()


@pytest.mark.parametrize("link_errno", [errno.EPERM, errno.EOPNOTSUPP])
def test_place_noreplace_without_hard_links_uses_renameat2(tmp_path: Path, link_errno: int) -> None:
    fs = ScriptedFileSystem()
    fs.link_errno = link_errno  # CIFS and many FUSE filesystems have no hard links
    src = write(tmp_path / "src", b"new")
    dest = tmp_path / "a.mp4"
    assert fs.place_noreplace(src, dest) is True
    assert fs.calls == ["link", "renameat2"]
    assert dest.read_bytes() == b"new"
    assert not src.exists()
    again = write(tmp_path / "src2", b"newer")
    assert fs.place_noreplace(again, dest) is False
    assert dest.read_bytes() == b"new"
    assert again.read_bytes() == b"newer"


@pytest.mark.parametrize("rename_errno", [errno.EINVAL, errno.ENOSYS])
def test_place_noreplace_without_renameat2_uses_an_exclusive_placeholder(
    tmp_path: Path, rename_errno: int
) -> None:
    fs = ScriptedFileSystem()
    fs.link_errno = errno.EPERM
    fs.rename_errno = rename_errno
    src = write(tmp_path / "src", b"new")
    dest = tmp_path / "a.mp4"
    assert fs.place_noreplace(src, dest) is True
    assert fs.calls == ["link", "renameat2"]
    assert dest.read_bytes() == b"new"
    assert not src.exists()
    again = write(tmp_path / "src2", b"newer")
    assert fs.place_noreplace(again, dest) is False
    assert dest.read_bytes() == b"new"
    assert again.read_bytes() == b"newer"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["a.mp4", "src2"]


def test_placeholder_is_removed_when_the_rename_fails(tmp_path: Path) -> None:
    fs = ScriptedFileSystem()
    fs.link_errno = errno.EPERM
    fs.rename_errno = errno.EINVAL
    # The link seam is scripted to fail first, so a missing src surfaces at the final rename.
    with pytest.raises(FileNotFoundError):
        fs.place_noreplace(tmp_path / "absent", tmp_path / "a.mp4")
    assert list(tmp_path.iterdir()) == []


def test_place_noreplace_raises_other_link_errors(tmp_path: Path) -> None:
    fs = ScriptedFileSystem()
    fs.link_errno = errno.EIO
    src = write(tmp_path / "src", b"x")
    with pytest.raises(OSError, match="Input/output"):
        fs.place_noreplace(src, tmp_path / "a.mp4")
    assert fs.calls == ["link"]
    assert src.read_bytes() == b"x"
    assert not (tmp_path / "a.mp4").exists()


# -- moving across filesystems -----------------------------------------------------------------


@dataclass
class CrossSetup:
    fs: ScriptedFileSystem
    src_dir: Path
    dest_dir: Path


@pytest.fixture(params=["real-devices", "injected-exdev"])
def cross(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[CrossSetup]:
    """Source and destination on two filesystems: /dev/shm vs tmp, or EXDEV injected."""
    fs = ScriptedFileSystem(copy_chunk_bytes=4096)
    dest_dir = tmp_path / "archive"
    dest_dir.mkdir()
    if request.param == "injected-exdev":
        src_dir = tmp_path / "inbox"
        src_dir.mkdir()
        fs.foreign_dirs.add(src_dir)
        yield CrossSetup(fs, src_dir, dest_dir)
        return
    shm = Path("/dev/shm")
    if not shm.is_dir() or shm.stat().st_dev == tmp_path.stat().st_dev:
        pytest.skip("/dev/shm is not a separate filesystem here")
    src_dir = Path(tempfile.mkdtemp(dir=shm, prefix="mh-watchd-test-"))
    try:
        yield CrossSetup(fs, src_dir, dest_dir)
    finally:
        shutil.rmtree(src_dir, ignore_errors=True)


def test_place_noreplace_raises_exdev_across_filesystems(cross: CrossSetup) -> None:
    src = write(cross.src_dir / "a.mp4", b"x")
    with pytest.raises(OSError) as caught:
        cross.fs.place_noreplace(src, cross.dest_dir / "a.mp4")
    assert caught.value.errno == errno.EXDEV
    assert src.read_bytes() == b"x"


def test_move_noreplace_across_filesystems_keeps_bytes_mode_and_mtime(cross: CrossSetup) -> None:
    data = os.urandom(50_000)  # several copy chunks
    src = write(cross.src_dir / "a.mp4", data)
    src.chmod(0o640)
    os.utime(src, ns=(1_600_000_000_000_000_000, 1_500_000_000_123_456_789))
    mtime_ns = src.stat().st_mtime_ns
    dest = cross.dest_dir / "trip" / "a.mp4"
    dest.parent.mkdir()
    assert cross.fs.move_noreplace(src, dest) is True
    assert dest.read_bytes() == data
    assert stat.S_IMODE(dest.stat().st_mode) == 0o640
    assert dest.stat().st_mtime_ns == mtime_ns
    assert not src.exists()
    assert [p.name for p in dest.parent.iterdir()] == ["a.mp4"]


def test_move_noreplace_across_filesystems_never_replaces(cross: CrossSetup) -> None:
    src = write(cross.src_dir / "a.mp4", b"new original")
    dest = write(cross.dest_dir / "a.mp4", b"archived earlier")
    assert cross.fs.move_noreplace(src, dest) is False
    assert dest.read_bytes() == b"archived earlier"
    assert src.read_bytes() == b"new original"
    assert [p.name for p in cross.dest_dir.iterdir()] == ["a.mp4"]


def test_move_failure_mid_copy_leaves_src_and_no_temp(cross: CrossSetup) -> None:
    data = os.urandom(64 * 1024)
    src = write(cross.src_dir / "a.mp4", data)
    cross.fs.fail_writes_after = 2  # the third 4 KiB chunk hits a full disk
    with pytest.raises(OSError) as caught:
        cross.fs.move_noreplace(src, cross.dest_dir / "a.mp4")
    assert caught.value.errno == errno.ENOSPC
    assert src.read_bytes() == data
    assert list(cross.dest_dir.iterdir()) == []


def test_move_noreplace_on_one_filesystem_renames(tmp_path: Path) -> None:
    fs = ScriptedFileSystem()
    src = write(tmp_path / "in" / "a.mp4", b"video")
    dest_dir = tmp_path / "in" / ".mh-done"
    dest_dir.mkdir()
    assert fs.move_noreplace(src, dest_dir / "a.mp4") is True
    assert fs.calls == ["link"]
    assert (dest_dir / "a.mp4").read_bytes() == b"video"
    assert not src.exists()


# -- open files --------------------------------------------------------------------------------


def test_open_files_under_finds_files_open_for_writing_only(tmp_path: Path) -> None:
    inbox = tmp_path / "in"
    written = write(inbox / "copying.mp4", b"")
    updated = write(inbox / "sub" / "updating.mp4", b"x")
    read = write(inbox / "read.mp4", b"x")
    outside = write(tmp_path / "elsewhere.mp4", b"")
    with (
        open(written, "wb") as w,
        open(updated, "r+b") as rw,
        open(read, "rb") as r,
        open(outside, "wb") as o,
    ):
        found = open_files_under(inbox)
        assert w.writable() and rw.writable() and r.readable() and o.writable()
    assert Path(os.path.realpath(written)) in found
    assert Path(os.path.realpath(updated)) in found
    assert Path(os.path.realpath(read)) not in found
    assert Path(os.path.realpath(outside)) not in found
    assert open_files_under(inbox) == set()


def test_open_files_under_without_proc_finds_nothing(tmp_path: Path) -> None:
    assert open_files_under(tmp_path, proc_root=tmp_path / "no-proc") == set()


# -- candidates: opened once, never through a link -------------------------------------------


def test_stat_does_not_follow_a_link(tmp_path: Path) -> None:
    target = write(tmp_path / "elsewhere" / "private.mp4", b"x" * 5000)
    link = tmp_path / "inbox" / "x.mp4"
    link.parent.mkdir()
    link.symlink_to(target)
    st = LocalFileSystem().stat(link)
    assert st is not None and stat.S_ISLNK(st.st_mode)
    assert st.st_ino != target.stat().st_ino
    (tmp_path / "elsewhere" / "private.mp4").unlink()
    dangling = LocalFileSystem().stat(link)
    assert dangling is not None and stat.S_ISLNK(dangling.st_mode)


def test_open_candidate_reads_a_regular_file_and_checks_it_on_the_descriptor(
    tmp_path: Path,
) -> None:
    data = os.urandom(3000)
    path = write(tmp_path / "inbox" / "trip" / "a.mp4", data)
    opened = LocalFileSystem().open_candidate(tmp_path / "inbox", "trip/a.mp4")
    with opened.file as f:
        assert f.read() == data
        assert (opened.stat.st_ino, opened.stat.st_size) == (path.stat().st_ino, len(data))
        assert stat.S_ISREG(opened.stat.st_mode)


def test_open_candidate_refuses_a_link_without_reading_its_target(tmp_path: Path) -> None:
    target = write(tmp_path / "elsewhere" / "private.mp4", b"private")
    (tmp_path / "inbox").mkdir()
    (tmp_path / "inbox" / "x.mp4").symlink_to(target)
    with pytest.raises(NotACandidateError) as caught:
        LocalFileSystem().open_candidate(tmp_path / "inbox", "x.mp4")
    assert caught.value.link is True
    assert isinstance(caught.value, SourceChangedError)  # the daemon: "it changed"
    assert "x.mp4" in str(caught.value)


def test_open_candidate_refuses_a_path_through_a_linked_directory(tmp_path: Path) -> None:
    write(tmp_path / "elsewhere" / "private.mp4", b"private")
    (tmp_path / "inbox" / "real").mkdir(parents=True)
    (tmp_path / "inbox" / "real" / "sub").symlink_to(
        tmp_path / "elsewhere", target_is_directory=True
    )
    with pytest.raises(NotACandidateError) as caught:
        LocalFileSystem().open_candidate(tmp_path / "inbox", "real/sub/private.mp4")
    assert caught.value.link is True


def test_open_candidate_follows_a_linked_inbox_root(tmp_path: Path) -> None:
    # The configured inbox itself may be a link (to a share's mount point): the operator's call.
    write(tmp_path / "share" / "in" / "a.mp4", b"video")
    (tmp_path / "inbox").symlink_to(tmp_path / "share" / "in", target_is_directory=True)
    opened = LocalFileSystem().open_candidate(tmp_path / "inbox", "a.mp4")
    with opened.file as f:
        assert f.read() == b"video"


def test_open_candidate_refuses_a_fifo_without_blocking(tmp_path: Path) -> None:
    (tmp_path / "inbox").mkdir()
    os.mkfifo(tmp_path / "inbox" / "pipe.mp4")
    (tmp_path / "inbox" / "dir.mp4").mkdir()
    for name in ("pipe.mp4", "dir.mp4"):
        with pytest.raises(NotACandidateError) as caught:
            LocalFileSystem().open_candidate(tmp_path / "inbox", name)
        assert caught.value.link is False


def test_open_candidate_refuses_another_inode_than_expected(tmp_path: Path) -> None:
    path = write(tmp_path / "inbox" / "a.mp4", b"first")
    settled = path.stat().st_ino
    fs = LocalFileSystem()
    fs.open_candidate(tmp_path / "inbox", "a.mp4", expect_inode=settled).file.close()
    replacement = write(tmp_path / "inbox" / ".new.tmp", b"other")
    os.replace(replacement, path)
    with pytest.raises(SourceChangedError) as caught:
        fs.open_candidate(tmp_path / "inbox", "a.mp4", expect_inode=settled)
    assert not isinstance(caught.value, NotACandidateError) or not caught.value.link


def test_open_candidate_of_a_missing_file_raises_file_not_found(tmp_path: Path) -> None:
    (tmp_path / "inbox").mkdir()
    fs = LocalFileSystem()
    with pytest.raises(FileNotFoundError):
        fs.open_candidate(tmp_path / "inbox", "gone.mp4")
    with pytest.raises(FileNotFoundError):
        fs.open_candidate(tmp_path / "inbox", "gone/a.mp4")
    with pytest.raises(FileNotFoundError):
        fs.open_candidate(tmp_path / "no-inbox", "a.mp4")


def test_open_candidate_keeps_reading_the_opened_file_after_a_swap(tmp_path: Path) -> None:
    path = write(tmp_path / "inbox" / "a.mp4", b"settled bytes")
    target = write(tmp_path / "elsewhere" / "private.mp4", b"private")
    opened = LocalFileSystem().open_candidate(tmp_path / "inbox", "a.mp4")
    path.unlink()
    path.symlink_to(target)
    with opened.file as f:
        assert f.read() == b"settled bytes"


def test_sha256_file_hashes_an_open_file_from_its_start(tmp_path: Path) -> None:
    data = os.urandom(10_000)
    path = write(tmp_path / "a.mp4", data)
    with path.open("rb") as f:
        f.read(100)
        assert LocalFileSystem().sha256_file(f, chunk=4096) == (
            len(data),
            hashlib.sha256(data).hexdigest(),
        )


def test_move_noreplace_never_moves_a_link(tmp_path: Path) -> None:
    target = write(tmp_path / "elsewhere" / "private.mp4", b"private")
    (tmp_path / "inbox").mkdir()
    link = tmp_path / "inbox" / "x.mp4"
    link.symlink_to(target)
    (tmp_path / "archive").mkdir()
    with pytest.raises(OSError) as caught:
        LocalFileSystem().move_noreplace(link, tmp_path / "archive" / "x.mp4")
    assert caught.value.errno == errno.ELOOP
    assert link.is_symlink() and list((tmp_path / "archive").iterdir()) == []


def test_move_noreplace_across_filesystems_never_copies_through_a_link(
    cross: CrossSetup, tmp_path: Path
) -> None:
    target = write(tmp_path / "elsewhere" / "private.mp4", b"private")
    link = cross.src_dir / "x.mp4"
    link.symlink_to(target)
    with pytest.raises(OSError) as caught:
        cross.fs.move_noreplace(link, cross.dest_dir / "x.mp4")
    assert caught.value.errno == errno.ELOOP
    assert link.is_symlink() and list(cross.dest_dir.iterdir()) == []


# -- roots are never created -------------------------------------------------------------------


def test_makedirs_below_a_missing_root_raises_enoent_naming_it_and_creates_nothing(
    tmp_path: Path,
) -> None:
    share = tmp_path / "mnt" / "share"
    share.mkdir(parents=True)
    with pytest.raises(FileNotFoundError) as caught:
        LocalFileSystem().makedirs_below(share / "out", PurePosixPath("trip/day1"))
    assert caught.value.errno == errno.ENOENT
    assert caught.value.filename == str(share / "out")
    assert "out" in str(caught.value)
    assert list(share.iterdir()) == []


def test_makedirs_below_a_root_that_is_a_file_raises(tmp_path: Path) -> None:
    blocker = write(tmp_path / "out", b"x")
    with pytest.raises(NotADirectoryError):
        LocalFileSystem().makedirs_below(blocker, PurePosixPath("trip"))


def test_makedirs_below_a_dangling_root_link_raises_enoent(tmp_path: Path) -> None:
    (tmp_path / "out").symlink_to(tmp_path / "mnt" / "share" / "out")
    with pytest.raises(FileNotFoundError):
        LocalFileSystem().makedirs_below(tmp_path / "out", PurePosixPath("trip"))
    assert not (tmp_path / "mnt").exists()


def test_makedirs_below_an_existing_root_creates_the_subfolders(tmp_path: Path) -> None:
    out = tmp_path / "out"
    out.mkdir()
    out.chmod(0o2775)
    fs = LocalFileSystem(umask=0o002)
    made = fs.makedirs_below(out, PurePosixPath("trip/day1"))
    assert made == out / "trip" / "day1" and made.is_dir()
    assert stat.S_IMODE((out / "trip").stat().st_mode) == 0o2775
    assert fs.makedirs_below(out, PurePosixPath("trip/day1")) == made  # existing: fine
    assert fs.makedirs_below(out, PurePosixPath(".")) == out


def test_makedirs_below_refuses_a_sub_that_leaves_the_root(tmp_path: Path) -> None:
    (tmp_path / "out").mkdir()
    for sub in ("../elsewhere", "/etc/x"):
        with pytest.raises(ValueError):
            LocalFileSystem().makedirs_below(tmp_path / "out", PurePosixPath(sub))
    assert sorted(p.name for p in tmp_path.iterdir()) == ["out"]
