"""The watchers on real tmp dirs: watchdog's native observer, our Poller, scan_tree, count_dirs."""

from __future__ import annotations

import ctypes
import errno
import os
import queue
import shutil
import sys
import threading
import time
from collections.abc import Callable, Iterator
from pathlib import Path, PurePosixPath

import pytest

from mh_watchd.adapters import watcher as watcher_module
from mh_watchd.adapters.watcher import (
    FsEvent,
    NativeWatcher,
    Poller,
    count_dirs,
    scan_tree,
)
from mh_watchd.core.intake import is_ignored_dir
from tests.conftest import wait_for

linux_only = pytest.mark.skipif(not sys.platform.startswith("linux"), reason="inotify")

HOUR_NS = 3600 * 1_000_000_000


@pytest.fixture(autouse=True)
def no_watcher_threads_left() -> Iterator[None]:
    """watchdog's threads are daemon threads, which conftest's check ignores: check them all."""
    before = set(threading.enumerate())
    yield

    def none_left() -> bool:
        return not [t for t in threading.enumerate() if t not in before and t.is_alive()]

    wait_for(none_left, timeout_seconds=5, what="watcher threads to end")


class Events:
    """Collects what a watcher put on its queue, waiting on conditions with a deadline."""

    def __init__(self, sink: queue.Queue[FsEvent]) -> None:
        self.sink = sink
        self.seen: list[FsEvent] = []

    def drain(self) -> list[FsEvent]:
        while True:
            try:
                self.seen.append(self.sink.get_nowait())
            except queue.Empty:
                return self.seen

    def wait(self, rel: str, kind: str, *, timeout_seconds: float = 10.0) -> None:
        want = FsEvent("f", PurePosixPath(rel), kind)
        wait_for(lambda: want in self.drain(), timeout_seconds=timeout_seconds, what=str(want))

    def pairs(self) -> set[tuple[str, str]]:
        return {(e.rel_path.as_posix(), e.kind) for e in self.drain()}

    def clear(self) -> None:
        self.drain()
        self.seen.clear()


def write(path: Path, data: bytes = b"x" * 100) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(data)
    return path


def append(path: Path, data: bytes = b"more") -> None:
    with path.open("ab") as fh:
        fh.write(data)


def age_dirs(root: Path) -> None:
    """Set every directory's mtime an hour back, as in a tree nobody touched lately."""
    old = time.time_ns() - HOUR_NS
    for dirpath, _, _ in os.walk(root):
        os.utime(dirpath, ns=(old, old))


# ---------------------------------------------------------------------------------- native
@pytest.fixture
def inbox(tmp_path: Path) -> Path:
    path = tmp_path / "inbox"
    path.mkdir()
    return path


NativeFactory = Callable[..., tuple[NativeWatcher, Events]]


@pytest.fixture
def native(inbox: Path) -> Iterator[NativeFactory]:
    started: list[NativeWatcher] = []

    def make(
        *, recursive: bool = True, prune: Callable[[str], bool] = lambda n: False
    ) -> tuple[NativeWatcher, Events]:
        sink: queue.Queue[FsEvent] = queue.Queue()
        w = NativeWatcher("f", inbox, recursive=recursive, sink=sink, prune=prune)
        w.start()
        started.append(w)
        return w, Events(sink)

    yield make
    for w in started:
        w.stop()


def test_native_reports_a_created_file(native: NativeFactory, inbox: Path) -> None:
    _, events = native()
    write(inbox / "a.mp4")
    events.wait("a.mp4", "changed")


def test_native_reports_an_append_to_an_existing_file(native: NativeFactory, inbox: Path) -> None:
    clip = write(inbox / "a.mp4")
    _, events = native()
    append(clip)
    events.wait("a.mp4", "changed")


def test_native_reports_a_rename_into_the_inbox_as_changed(
    native: NativeFactory, inbox: Path, tmp_path: Path
) -> None:
    staged = write(tmp_path / "staging" / "b.mov")
    _, events = native()
    os.rename(staged, inbox / "b.mov")
    events.wait("b.mov", "changed")


def test_native_rename_inside_the_inbox_is_deleted_plus_changed(
    native: NativeFactory, inbox: Path
) -> None:
    write(inbox / "old.mp4")
    _, events = native()
    os.rename(inbox / "old.mp4", inbox / "new.mp4")
    events.wait("new.mp4", "changed")
    assert ("old.mp4", "deleted") in events.pairs()


def test_native_reports_a_delete(native: NativeFactory, inbox: Path) -> None:
    clip = write(inbox / "gone.mp4")
    _, events = native()
    clip.unlink()
    events.wait("gone.mp4", "deleted")


def test_native_moving_a_file_out_of_the_inbox_is_a_delete(
    native: NativeFactory, inbox: Path, tmp_path: Path
) -> None:
    clip = write(inbox / "out.mp4")
    (tmp_path / "elsewhere").mkdir()
    _, events = native()
    os.rename(clip, tmp_path / "elsewhere" / "out.mp4")
    events.wait("out.mp4", "deleted")


def test_native_recursive_sees_files_in_new_and_old_subdirs(
    native: NativeFactory, inbox: Path
) -> None:
    (inbox / "old").mkdir()
    _, events = native(recursive=True)
    write(inbox / "old" / "a.mp4")
    events.wait("old/a.mp4", "changed")
    (inbox / "new").mkdir()
    events.wait("new", "dir_changed")
    write(inbox / "new" / "b.mp4")
    events.wait("new/b.mp4", "changed")


def test_native_not_recursive_ignores_files_in_subdirs(native: NativeFactory, inbox: Path) -> None:
    (inbox / "sub").mkdir()
    _, events = native(recursive=False)
    write(inbox / "sub" / "a.mp4")
    write(inbox / "later" / "b.mp4")  # a subdirectory made while watching: not news either
    write(inbox / "sentinel.mp4")
    # Events from one inotify queue arrive in order: by the sentinel, a sub/ event would be here.
    events.wait("sentinel.mp4", "changed")
    assert not [e for e in events.drain() if e.rel_path.parts[0] in ("sub", "later")]


def test_native_reading_a_file_emits_nothing(native: NativeFactory, inbox: Path) -> None:
    clip = write(inbox / "a.mp4")
    _, events = native()
    assert clip.read_bytes()  # open, read, close-without-write: what hashing and upload do
    write(inbox / "sentinel.mp4")
    events.wait("sentinel.mp4", "changed")
    assert ("a.mp4", "changed") not in events.pairs()


def test_native_skips_events_inside_pruned_directories(native: NativeFactory, inbox: Path) -> None:
    (inbox / ".mh-done").mkdir()
    _, events = native(prune=is_ignored_dir)
    write(inbox / ".mh-done" / "archived.mp4")
    write(inbox / "sentinel.mp4")
    events.wait("sentinel.mp4", "changed")
    assert not [e for e in events.drain() if e.rel_path.parts[0] == ".mh-done"]


@pytest.fixture
def elsewhere(tmp_path: Path) -> Path:
    """A folder outside the inbox holding a private video."""
    path = tmp_path / "elsewhere"
    write(path / "private.mp4", b"private" * 100)
    return path


def about(events: Events, *names: str) -> list[FsEvent]:
    """Events whose path is one of `names` or lies below one of them."""
    return [e for e in events.drain() if any(e.rel_path.as_posix().startswith(n) for n in names)]


def test_native_drops_a_link_to_a_file_outside_the_inbox(
    native: NativeFactory, inbox: Path, elsewhere: Path
) -> None:
    _, events = native()
    (inbox / "x.mp4").symlink_to(elsewhere / "private.mp4")
    append(elsewhere / "private.mp4")  # the target changing outside is no news either
    os.utime(inbox / "x.mp4", follow_symlinks=False)
    write(inbox / "sentinel.mp4")
    # Events from one inotify queue arrive in order: by the sentinel, a link event would be here.
    events.wait("sentinel.mp4", "changed")
    assert about(events, "x.mp4") == []


def test_native_drops_a_link_made_in_a_subfolder(
    native: NativeFactory, inbox: Path, elsewhere: Path
) -> None:
    (inbox / "sub").mkdir()
    _, events = native()
    (inbox / "sub" / "x.mp4").symlink_to(elsewhere / "private.mp4")
    write(inbox / "sub" / "sentinel.mp4")
    events.wait("sub/sentinel.mp4", "changed")
    assert about(events, "sub/x.mp4") == []


def test_native_drops_a_link_moved_into_the_inbox(
    native: NativeFactory, inbox: Path, elsewhere: Path, tmp_path: Path
) -> None:
    staged = tmp_path / "staging" / "x.mp4"
    staged.parent.mkdir()
    staged.symlink_to(elsewhere / "private.mp4")
    _, events = native()
    os.rename(staged, inbox / "x.mp4")
    write(inbox / "sentinel.mp4")
    events.wait("sentinel.mp4", "changed")
    assert about(events, "x.mp4") == []


def test_native_never_descends_a_symlinked_directory(
    native: NativeFactory, inbox: Path, elsewhere: Path
) -> None:
    _, events = native()
    (inbox / "d").symlink_to(elsewhere, target_is_directory=True)
    write(elsewhere / "new.mp4")
    write(elsewhere / "deeper" / "more.mp4")
    write(inbox / "sentinel.mp4")
    events.wait("sentinel.mp4", "changed")
    assert about(events, "d") == []


def test_native_moved_in_directory_reports_its_files_but_not_its_links(
    native: NativeFactory, inbox: Path, elsewhere: Path, tmp_path: Path
) -> None:
    staged = tmp_path / "staging" / "trip"
    write(staged / "a.mp4")
    (staged / "l.mp4").symlink_to(elsewhere / "private.mp4")
    (staged / "ld").symlink_to(elsewhere, target_is_directory=True)
    _, events = native()
    os.rename(staged, inbox / "trip")
    events.wait("trip", "dir_changed")
    events.wait("trip/a.mp4", "changed")
    write(inbox / "sentinel.mp4")
    events.wait("sentinel.mp4", "changed")
    assert about(events, "trip/l.mp4", "trip/ld") == []


def test_native_watches_an_inbox_root_that_is_itself_a_link(tmp_path: Path) -> None:
    # The configured inbox may be a link to a share's folder (the operator's choice): only
    # links below the root are refused.
    real = tmp_path / "share" / "in"
    real.mkdir(parents=True)
    root = tmp_path / "inbox-link"
    root.symlink_to(real, target_is_directory=True)
    sink: queue.Queue[FsEvent] = queue.Queue()
    w = NativeWatcher("f", root, recursive=True, sink=sink)
    w.start()
    try:
        events = Events(sink)
        write(root / "a.mp4")
        events.wait("a.mp4", "changed")
        (real / "sub").mkdir()
        events.wait("sub", "dir_changed")
    finally:
        w.stop()


def test_native_root_deleted_is_one_deleted_dot(native: NativeFactory, inbox: Path) -> None:
    _, events = native()
    shutil.rmtree(inbox)
    events.wait(".", "deleted")


def test_native_stop_joins_its_threads_and_is_idempotent(inbox: Path) -> None:
    before = set(threading.enumerate())
    w = NativeWatcher("f", inbox, recursive=True, sink=queue.Queue())
    w.start()
    assert [t for t in threading.enumerate() if t not in before]
    w.stop()
    w.stop()
    assert not [t for t in threading.enumerate() if t not in before and t.is_alive()]


def test_native_start_on_a_missing_root_raises_oserror(tmp_path: Path) -> None:
    w = NativeWatcher("f", tmp_path / "missing", recursive=True, sink=queue.Queue())
    with pytest.raises(FileNotFoundError):
        w.start()
    w.stop()


def test_native_start_on_a_file_raises_oserror(tmp_path: Path) -> None:
    w = NativeWatcher("f", write(tmp_path / "file"), recursive=True, sink=queue.Queue())
    with pytest.raises(NotADirectoryError):
        w.start()


@linux_only
def test_native_start_raises_enospc_when_the_watch_limit_is_spent(
    inbox: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    from watchdog.observers import inotify_c

    def no_watches_left(fd: int, path: bytes, mask: int) -> int:
        ctypes.set_errno(errno.ENOSPC)
        return -1

    monkeypatch.setattr(inotify_c, "inotify_add_watch", no_watches_left)
    w = NativeWatcher("f", inbox, recursive=True, sink=queue.Queue())
    with pytest.raises(OSError) as info:
        w.start()
    assert info.value.errno == errno.ENOSPC
    w.stop()  # nothing running: a no-op; the autouse fixture checks no thread is left


@linux_only
def test_native_reports_a_kernel_queue_overflow(native: NativeFactory) -> None:
    from watchdog.observers.inotify_c import InotifyConstants, InotifyEvent, WatchDescriptor

    w, events = native()
    observer = w._observer
    assert observer is not None
    # The kernel's overflow record (wd -1, IN_Q_OVERFLOW) fed to the reader as the kernel would.
    observer._inotify_fd.handle_event(  # type: ignore[attr-defined]
        InotifyEvent(WatchDescriptor(-1), InotifyConstants.IN_Q_OVERFLOW, 0, b"")
    )
    events.wait(".", "overflow")


# ---------------------------------------------------------------------------------- poller
def make_poller(root: Path, **kwargs: object) -> tuple[Poller, Events]:
    sink: queue.Queue[FsEvent] = queue.Queue()
    kwargs.setdefault("recursive", True)
    return Poller("f", root, sink=sink, **kwargs), Events(sink)  # type: ignore[arg-type]


def test_poller_baseline_is_silent_and_a_new_file_is_changed(inbox: Path) -> None:
    write(inbox / "old.mp4")
    poller, events = make_poller(inbox)
    assert poller.poll_once() == 0
    assert events.drain() == []
    write(inbox / "new.mp4")
    assert poller.poll_once() == 1
    assert events.drain() == [FsEvent("f", PurePosixPath("new.mp4"), "changed")]


def test_poller_sees_in_place_growth_of_a_recent_file(inbox: Path) -> None:
    poller, events = make_poller(inbox, wall_clock_ns=lambda: time.time_ns() + HOUR_NS)
    poller.poll_once()
    clip = write(inbox / "copying.mp4")
    assert poller.poll_once() == 1
    assert poller.poll_once() == 0  # the re-listing after a change, then the directory is quiet
    events.clear()
    dir_mtime = inbox.stat().st_mtime_ns
    append(clip)
    assert inbox.stat().st_mtime_ns == dir_mtime  # growth in place does not touch the directory
    listed = poller.dirs_listed
    assert poller.poll_once() == 1
    assert poller.dirs_listed == listed  # found by re-stat'ing the recent file, not by listing
    assert events.drain() == [FsEvent("f", PurePosixPath("copying.mp4"), "changed")]


def test_poller_reports_deleted_files_and_removed_subtrees(inbox: Path) -> None:
    write(inbox / "a.mp4")
    write(inbox / "sub" / "deep" / "b.mp4")
    poller, events = make_poller(inbox)
    poller.poll_once()
    (inbox / "a.mp4").unlink()
    shutil.rmtree(inbox / "sub")
    assert poller.poll_once() == 2
    assert events.pairs() == {("a.mp4", "deleted"), ("sub/deep/b.mp4", "deleted")}


def test_poller_reports_files_in_a_new_subdir(inbox: Path) -> None:
    poller, events = make_poller(inbox)
    poller.poll_once()
    write(inbox / "trip" / "beach.mp4")
    write(inbox / "trip" / "day2" / "sea.mov")
    assert poller.poll_once() == 2
    assert events.pairs() == {("trip/beach.mp4", "changed"), ("trip/day2/sea.mov", "changed")}
    write(inbox / "trip" / "day2" / "later.mov")
    poller.poll_once()
    assert ("trip/day2/later.mov", "changed") in events.pairs()


def test_poller_ignores_pruned_dirs_links_and_subdirs_when_not_recursive(inbox: Path) -> None:
    poller, events = make_poller(inbox, prune=is_ignored_dir)
    flat, flat_events = make_poller(inbox, recursive=False)
    poller.poll_once()
    flat.poll_once()
    write(inbox / "@eaDir" / "thumb.jpg")
    write(inbox / ".mh-done" / "archived.mp4")
    write(inbox / "sub" / "a.mp4")
    os.symlink(inbox / "sub" / "a.mp4", inbox / "link.mp4")
    write(inbox / "top.mp4")
    poller.poll_once()
    flat.poll_once()
    assert events.pairs() == {("sub/a.mp4", "changed"), ("top.mp4", "changed")}
    assert flat_events.pairs() == {("top.mp4", "changed")}


def test_poller_never_descends_a_symlinked_directory(inbox: Path, tmp_path: Path) -> None:
    outside = tmp_path / "outside"
    write(outside / "a.mp4")
    poller, events = make_poller(inbox)
    poller.poll_once()
    (inbox / "d").symlink_to(outside, target_is_directory=True)
    (inbox / "x.mp4").symlink_to(outside / "a.mp4")
    write(outside / "b.mp4")
    write(inbox / "top.mp4")
    poller.poll_once()
    poller.full_walk()
    assert events.pairs() == {("top.mp4", "changed")}


def test_poller_relists_only_directories_whose_mtime_moved(inbox: Path) -> None:
    for d in range(5):
        for f in range(3):
            write(inbox / f"d{d}" / f"f{f}.mp4")
    # A wall clock an hour ahead: every directory looks long settled, so the tick guard that
    # re-lists just-modified directories stays out of the count.
    poller, events = make_poller(inbox, wall_clock_ns=lambda: time.time_ns() + HOUR_NS)
    poller.poll_once()
    assert poller.dirs_listed == 6  # the baseline lists root + 5

    listed = []
    for change in (None, "new", None, None):
        if change:
            write(inbox / "d3" / "new.mp4")
        before = poller.dirs_listed
        poller.poll_once()
        listed.append(poller.dirs_listed - before)
    # Idle: nothing; the change: d3 only; then d3 once more (the timestamp-tick guard); idle.
    assert listed == [0, 1, 1, 0]
    assert events.pairs() == {("d3/new.mp4", "changed")}


def test_full_walk_finds_a_change_hidden_from_directory_mtimes(inbox: Path) -> None:
    write(inbox / "sub" / "a.mp4")
    age_dirs(inbox)
    poller, events = make_poller(inbox)
    poller.poll_once()
    sub = inbox / "sub"
    st = sub.stat()
    write(sub / "sneaky.mp4")
    os.utime(sub, ns=(st.st_atime_ns, st.st_mtime_ns))  # as a sync tool restoring times would
    assert poller.poll_once() == 0
    assert poller.full_walk() == 1
    assert events.drain() == [FsEvent("f", PurePosixPath("sub/sneaky.mp4"), "changed")]
    assert poller.full_walk() == 0


def test_full_walk_reports_growth_of_a_settled_file_and_deletions(inbox: Path) -> None:
    old = write(inbox / "old.mp4")
    write(inbox / "sub" / "x.mp4")
    poller, events = make_poller(inbox)
    poller.poll_once()
    append(old)
    shutil.rmtree(inbox / "sub")
    assert poller.full_walk() == 2
    assert events.pairs() == {("old.mp4", "changed"), ("sub/x.mp4", "deleted")}


def test_poller_idle_backoff_doubles_to_the_cap_and_resets_on_change(inbox: Path) -> None:
    poller, _ = make_poller(inbox, interval_seconds=1.0, max_interval_seconds=8.0)
    seen = []
    for _ in range(5):
        poller.poll_once()
        seen.append(poller.current_interval_seconds)
    assert seen == [2.0, 4.0, 8.0, 8.0, 8.0]
    write(inbox / "a.mp4")
    poller.poll_once()
    assert poller.current_interval_seconds == 1.0
    poller.poll_once()
    assert poller.current_interval_seconds == 2.0


def test_poller_root_vanishing_is_one_deleted_dot_then_recovery(
    inbox: Path, tmp_path: Path
) -> None:
    write(inbox / "a.mp4")
    write(inbox / "sub" / "b.mp4")
    poller, events = make_poller(inbox)
    poller.poll_once()
    os.rename(inbox, tmp_path / "away")  # an unmounted share, not a user deleting files
    assert poller.poll_once() == 1
    assert poller.poll_once() == 0
    assert events.drain() == [FsEvent("f", PurePosixPath("."), "deleted")]
    events.clear()
    os.rename(tmp_path / "away", inbox)
    assert poller.poll_once() == 1
    assert events.drain() == [FsEvent("f", PurePosixPath("."), "dir_changed")]
    events.clear()
    write(inbox / "sub" / "c.mp4")
    poller.poll_once()
    assert events.pairs() == {("sub/c.mp4", "changed")}


def test_poller_thread_reports_and_stop_joins_it(inbox: Path) -> None:
    poller, events = make_poller(inbox, interval_seconds=0.05, max_interval_seconds=0.1)
    poller.start()
    try:
        wait_for(lambda: poller.passes > 0, timeout_seconds=10, what="the baseline pass")
        write(inbox / "a.mp4")
        events.wait("a.mp4", "changed")
    finally:
        poller.stop()
    assert not [t for t in threading.enumerate() if t.name.startswith("mh-watchd-poller")]


# ------------------------------------------------------------------------ scan_tree, count_dirs
def test_scan_tree_yields_regular_files_only(inbox: Path, tmp_path: Path) -> None:
    write(inbox / "a.mp4", b"12345")
    write(inbox / "sub" / "b.mov")
    write(inbox / "@eaDir" / "thumb.jpg")
    write(tmp_path / "outside" / "c.mp4")
    os.symlink(inbox / "a.mp4", inbox / "link.mp4")
    os.symlink(tmp_path / "outside", inbox / "linked-dir")
    os.mkfifo(inbox / "pipe.mp4")
    found = {
        rel.as_posix(): st for rel, st in scan_tree(inbox, recursive=True, prune=is_ignored_dir)
    }
    assert sorted(found) == ["a.mp4", "sub/b.mov"]
    assert found["a.mp4"].st_size == 5
    flat = [rel.as_posix() for rel, _ in scan_tree(inbox, recursive=False, prune=is_ignored_dir)]
    assert flat == ["a.mp4"]


def test_scan_tree_raises_for_a_missing_root(tmp_path: Path) -> None:
    with pytest.raises(FileNotFoundError):
        list(scan_tree(tmp_path / "missing", recursive=True, prune=is_ignored_dir))


def test_count_dirs_counts_the_root_and_stops_at_the_limit(inbox: Path, tmp_path: Path) -> None:
    for name in ("a/b", "a/c", ".hidden", "d"):
        (inbox / name).mkdir(parents=True)
    (tmp_path / "outside").mkdir()
    os.symlink(tmp_path / "outside", inbox / "link")
    assert count_dirs(inbox, limit=100) == 6
    assert count_dirs(inbox, limit=3) == 3
    assert count_dirs(tmp_path / "missing", limit=100) == 0


def test_module_exports_what_the_daemon_imports() -> None:
    for name in ("FsEvent", "NativeWatcher", "Poller", "count_dirs", "scan_tree"):
        assert hasattr(watcher_module, name)
