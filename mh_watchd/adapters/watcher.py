"""Filesystem watching: native events (watchdog/inotify), our own cheap poller, the full walk.

Both watchers only turn what they see into small `FsEvent` values on a queue; the daemon's loop
decides what they mean. Paths in events are relative to the inbox root (`"."` is the root).
Symlinks are never news, by any route: native events for a name that is a link are dropped,
and no watcher or walk descends a symlinked directory.

    NativeWatcher  watchdog's native observer (inotify on Linux); `start()` raises OSError when the
                   root cannot be watched, so the caller can fall back to polling.
    Poller         stats each known directory per pass and re-lists only those whose mtime or
                   inode moved, plus recently changed files; `full_walk()` re-stats everything.
    scan_tree      the full rescan used by the daemon's safety net; regular files only.
    count_dirs     how many inotify watches a recursive native watch would need.
"""

from __future__ import annotations

import errno
import os
import stat
import sys
import threading
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path, PurePosixPath
from typing import Protocol

import structlog
from watchdog.events import (
    DirCreatedEvent,
    DirDeletedEvent,
    DirMovedEvent,
    FileAttribEvent,
    FileClosedEvent,
    FileCreatedEvent,
    FileDeletedEvent,
    FileModifiedEvent,
    FileMovedEvent,
    FileSystemEvent,
    FileSystemEventHandler,
)
from watchdog.observers import Observer
from watchdog.observers.api import DEFAULT_OBSERVER_TIMEOUT, BaseObserver
from watchdog.utils import UnsupportedLibcError

# One walk for the filesystem's count and the watcher's (re-exported: callers import it here).
from mh_watchd.adapters.fs_facts import count_dirs as count_dirs

log = structlog.get_logger(__name__)

ROOT = PurePosixPath(".")
EVENT_KINDS = ("changed", "deleted", "dir_changed", "overflow")

# A file counts as "recent" (re-stat'ed on every pass even when its directory did not change)
# for this many passes after it last changed: in-place appends do not touch the dir's mtime.
RECENT_PASSES = 4
# A directory whose mtime is this close to the wall clock when listed is listed again next pass:
# on coarse timestamps (older kernels, SMB/NFS, FAT's 2 s) a later entry may not move it again.
FRESH_DIR_NS = 2_000_000_000
# The native watcher logs each dropped symlink once; past this many names it starts afresh.
_LINKS_LOGGED_MAX = 10_000
# How long Poller.stop() waits for a pass stuck on a hung share before giving up on the join.
STOP_JOIN_SECONDS = 10.0

# Only what can make a file new or different. Opens, reads and close-without-write are left out
# of the inotify mask, so the daemon reading an inbox file (hash, probe, upload) stays silent.
_EVENT_FILTER: list[type[FileSystemEvent]] = [
    FileCreatedEvent,
    FileModifiedEvent,
    FileAttribEvent,
    FileClosedEvent,
    FileMovedEvent,
    FileDeletedEvent,
    DirCreatedEvent,
    DirMovedEvent,
    DirDeletedEvent,
]

_Prune = Callable[[str], bool]


def _never_prune(name: str) -> bool:
    return False


@dataclass(frozen=True, slots=True)
class FsEvent:
    """One thing a watcher saw; `kind` is one of EVENT_KINDS."""

    folder: str  # the folder name the watcher was started for
    rel_path: PurePosixPath  # relative to the inbox root; "." for the root itself
    kind: str  # "changed" | "deleted" | "dir_changed" | "overflow" (rescan needed)


class EventSink(Protocol):
    """Where watchers put what they see: a queue, or the daemon's loop (any thread may put)."""

    def put(self, item: FsEvent) -> None: ...


# ---------------------------------------------------------------------------------- full walk
def scan_tree(
    root: Path, *, recursive: bool, prune: _Prune
) -> Iterator[tuple[PurePosixPath, os.stat_result]]:
    """Yield (path relative to root, lstat) for every regular file under `root`.

    Symlinks, FIFOs and other non-regular entries are skipped (never followed); directories whose
    name `prune` accepts are not entered. A subdirectory that vanishes or fails is skipped.
    Raises OSError when the root itself cannot be listed (an outage, not "everything deleted").
    """
    root_str = os.fspath(root)
    stack = [""]
    while stack:
        rel = stack.pop()
        try:
            # Read the whole directory before yielding, so no descriptor stays open across yields.
            with os.scandir(os.path.join(root_str, rel) if rel else root_str) as it:
                entries = list(it)
        except OSError:
            if not rel:
                raise
            continue
        for entry in entries:
            try:
                if entry.is_dir(follow_symlinks=False):
                    if recursive and not prune(entry.name):
                        stack.append(f"{rel}/{entry.name}" if rel else entry.name)
                    continue
                if not entry.is_file(follow_symlinks=False):
                    continue
                st = entry.stat(follow_symlinks=False)
            except OSError:
                continue  # gone between the listing and the stat
            yield PurePosixPath(rel, entry.name), st


# -------------------------------------------------------------------------------- native events
class _EventTranslator(FileSystemEventHandler):
    """Turns watchdog events into FsEvents on the sink: path arithmetic, plus one lstat per
    name that appeared or changed, so a symlink (to a file or a directory) is never news."""

    def __init__(
        self, folder: str, root: Path, *, recursive: bool, prune: _Prune, sink: EventSink
    ) -> None:
        super().__init__()
        self._folder = folder
        self._recursive = recursive
        self._root = str(root)
        self._prefix = os.path.join(self._root, "")
        self._prune = prune
        self._sink = sink
        self._links_logged: set[str] = set()

    def _rel(self, path: bytes | str, *, is_dir: bool) -> PurePosixPath | None:
        text = os.fsdecode(path)
        if text == self._root:
            return ROOT
        if not text.startswith(self._prefix):
            return None  # outside the inbox (the far end of a move)
        rel = PurePosixPath(text[len(self._prefix) :])
        dirs = rel.parts if is_dir else rel.parts[:-1]
        if any(self._prune(part) for part in dirs):
            return None  # inside an ignored directory (e.g. the default `.mh-done` archive)
        return rel

    def _put(self, path: bytes | str, kind: str, *, is_dir: bool, gone: bool = False) -> None:
        """Queue `kind` for `path`, unless it is ignored or (a name that did not go) a link."""
        rel = self._rel(path, is_dir=is_dir)
        if rel is None:
            return
        if not gone and rel != ROOT and self._is_link(path, rel):
            return
        self._sink.put(FsEvent(self._folder, rel, kind))

    def _is_link(self, path: bytes | str, rel: PurePosixPath) -> bool:
        """True when `path` is a symlink now (logged once per path). A name already gone is
        not: its own deleted event follows."""
        try:
            if not stat.S_ISLNK(os.lstat(path).st_mode):
                return False
        except OSError:
            return False
        # watchdog adds no watch through a link (IN_DONT_FOLLOW, no walk into it), so a
        # symlinked directory is never descended; its name alone is dropped here.
        key = rel.as_posix()
        if key not in self._links_logged:
            if len(self._links_logged) >= _LINKS_LOGGED_MAX:
                self._links_logged.clear()
            self._links_logged.add(key)
            log.debug("watcher.link_ignored", folder=self._folder, file=key)
        return True

    def dispatch(self, event: FileSystemEvent) -> None:
        kind = event.event_type
        if event.is_directory:
            if kind == "deleted" and os.fsdecode(event.src_path) == self._root:
                self._sink.put(FsEvent(self._folder, ROOT, "deleted"))
            elif not self._recursive:
                pass  # subdirectories of a flat inbox hold nothing we take
            elif kind == "created":
                self._put(event.src_path, "dir_changed", is_dir=True)
            elif kind == "deleted":
                self._put(event.src_path, "dir_changed", is_dir=True, gone=True)
            elif kind == "moved":
                self._put(event.src_path, "dir_changed", is_dir=True, gone=True)
                self._put(event.dest_path, "dir_changed", is_dir=True)
            # A directory's own "modified"/"attrib" only echoes a change to one of its entries,
            # which arrives as its own event: passing it on would ask for a rescan per file.
            return
        if kind in ("created", "modified", "closed", "attrib"):
            self._put(event.src_path, "changed", is_dir=False)
        elif kind == "deleted":
            self._put(event.src_path, "deleted", is_dir=False, gone=True)
        elif kind == "moved":
            self._put(event.src_path, "deleted", is_dir=False, gone=True)
            self._put(event.dest_path, "changed", is_dir=False)


_ObserverFactory = Callable[[Callable[[], None]], BaseObserver]


def _plain_observer(on_overflow: Callable[[], None]) -> BaseObserver:
    # Without the inotify internals below a lost-events overflow goes unreported; the periodic
    # rescan is the net.
    observer: BaseObserver = Observer()
    return observer


_new_observer: _ObserverFactory = _plain_observer

if sys.platform.startswith("linux"):
    try:
        from watchdog.observers.inotify import InotifyEmitter
        from watchdog.observers.inotify_c import InotifyEvent, InotifyFD

        _HAVE_INOTIFY_FD = True
    except (ImportError, UnsupportedLibcError):  # watchdog 6 has no InotifyFD; musl quirks
        _HAVE_INOTIFY_FD = False

    if _HAVE_INOTIFY_FD:

        class _OverflowReportingFD(InotifyFD):
            """watchdog's inotify reader, plus a callback when the kernel queue overflowed."""

            def __init__(self, on_overflow: Callable[[], None]) -> None:
                self._on_overflow = on_overflow
                super().__init__()

            def handle_event(self, event: InotifyEvent) -> None:
                # watchdog only logs an overflow and re-adds its watches; the events in between
                # are lost, so the daemon must rescan.
                if event.is_queue_overflow:
                    self._on_overflow()
                super().handle_event(event)

        class _InotifyObserver(BaseObserver):
            """watchdog's InotifyObserver with an overflow-reporting reader."""

            def __init__(self, on_overflow: Callable[[], None]) -> None:
                self._inotify_fd = _OverflowReportingFD(on_overflow)
                self._inotify_fd.start()
                super().__init__(
                    InotifyEmitter, timeout=DEFAULT_OBSERVER_TIMEOUT, inotify_fd=self._inotify_fd
                )

            def on_thread_stop(self) -> None:
                super().on_thread_stop()
                self._inotify_fd.stop()
                self._inotify_fd.join()

        def _inotify_observer(on_overflow: Callable[[], None]) -> BaseObserver:
            return _InotifyObserver(on_overflow)

        _new_observer = _inotify_observer


class NativeWatcher:
    """Native filesystem events (inotify on Linux) for one inbox, as FsEvents on `sink`."""

    def __init__(
        self,
        folder: str,
        root: Path,
        *,
        recursive: bool,
        sink: EventSink,
        prune: _Prune = _never_prune,
    ) -> None:
        self.folder = folder
        self.root = root
        self.recursive = recursive
        self._sink = sink
        self._prune = prune
        self._observer: BaseObserver | None = None

    def start(self) -> None:
        """Watch the root (and, when recursive, every directory below it); returns at once.

        Raises OSError when the root cannot be watched: missing, not a directory, or the inotify
        limits spent (ENOSPC "inotify watch limit reached", EMFILE). Nothing is left running then.
        """
        if self._observer is not None:
            return
        if not stat.S_ISDIR(os.stat(self.root).st_mode):
            raise NotADirectoryError(errno.ENOTDIR, "inbox is not a directory", str(self.root))
        # The inbox itself may be a link (to a share's folder): watch where it leads, since
        # watchdog watches a link's own inode (IN_DONT_FOLLOW). Links below it are never followed.
        watched = Path(os.path.realpath(self.root))
        handler = _EventTranslator(
            self.folder, watched, recursive=self.recursive, prune=self._prune, sink=self._sink
        )
        observer = _new_observer(self._overflowed)
        try:
            observer.schedule(
                handler, str(watched), recursive=self.recursive, event_filter=_EVENT_FILTER
            )
            observer.start()
        except BaseException:
            # The observer thread never ran, but the inotify reader thread already did.
            observer.stop()
            raise
        self._observer = observer

    def stop(self) -> None:
        """Stop watching and join the observer's threads; a second call does nothing."""
        observer, self._observer = self._observer, None
        if observer is not None:
            observer.stop()
            observer.join()

    def _overflowed(self) -> None:
        self._sink.put(FsEvent(self.folder, ROOT, "overflow"))


# ------------------------------------------------------------------------------------- poller
_Sig = tuple[int, int, int]  # (size, mtime_ns, inode) of a regular file


@dataclass(slots=True)
class _Dir:
    """What the poller last saw of one directory."""

    mtime_ns: int  # -1 when the listing failed: the next pass lists it again
    ino: int
    files: dict[str, _Sig] = field(default_factory=dict)
    subdirs: set[str] = field(default_factory=set)
    listed: bool = True


def _join(rel: str, name: str) -> str:
    return f"{rel}/{name}" if rel else name


def _is_under(rel: str, top: str) -> bool:
    return rel == top or rel.startswith(top + "/")


class Poller:
    """Our own polling watcher: cheap passes over big trees, on its own thread.

    A pass stats every known directory and re-lists only those whose (mtime_ns, inode) moved (and
    those re-listed on the previous pass, for changes inside one timestamp tick), then re-stats
    files that changed in the last RECENT_PASSES passes; `full_walk()` re-stats everything.
    """

    def __init__(
        self,
        folder: str,
        root: Path,
        *,
        recursive: bool,
        sink: EventSink,
        interval_seconds: float = 2.0,
        max_interval_seconds: float = 30.0,
        prune: _Prune = _never_prune,
        wall_clock_ns: Callable[[], int] = time.time_ns,
    ) -> None:
        self.folder = folder
        self.root = root
        self.recursive = recursive
        self.interval_seconds = interval_seconds
        self.max_interval_seconds = max(max_interval_seconds, interval_seconds)
        self._sink = sink
        self._prune = prune
        self._wall_clock_ns = wall_clock_ns
        self._root_str = os.fspath(root)
        self._lock = threading.Lock()
        self._dirs: dict[str, _Dir] = {}
        self._recent: dict[str, int] = {}  # file rel path -> pass number of its last change
        self._relist_next: set[str] = set()
        self._baselined = False
        self._root_missing = False
        self._pass = 0
        self._current_interval = interval_seconds
        self._stopping = threading.Event()
        self._closed = False
        self._thread: threading.Thread | None = None
        # Work counters, for tests and the benchmark.
        self.passes = 0
        self.dirs_listed = 0
        self.files_statted = 0

    # -- lifecycle
    def start(self) -> None:
        """Start the polling thread; the first pass (a silent baseline) runs at once."""
        if self._thread is not None:
            return
        self._stopping.clear()
        self._closed = False
        # A daemon thread: a pass stuck on a hung share must not keep the process alive.
        self._thread = threading.Thread(
            target=self._run, name=f"mh-watchd-poller-{self.folder}", daemon=True
        )
        self._thread.start()

    def stop(self) -> None:
        """Stop the thread and join it (for at most STOP_JOIN_SECONDS if a pass is stuck)."""
        self._stopping.set()
        self._closed = True  # a pass still running past the join emits nothing more
        thread, self._thread = self._thread, None
        if thread is None:
            return
        thread.join(STOP_JOIN_SECONDS)
        if thread.is_alive():
            log.warning("watcher.poller_stuck", folder=self.folder, root=self._root_str)

    @property
    def current_interval_seconds(self) -> float:
        """The wait before the next pass: the base after a change, doubling while idle."""
        return self._current_interval

    def _run(self) -> None:
        while not self._stopping.is_set():
            try:
                self.poll_once()
            except Exception as exc:  # the top of a worker: report, keep polling
                log.warning("watcher.poll_failed", folder=self.folder, error=repr(exc))
            if self._stopping.wait(self._current_interval):
                return

    # -- passes
    def poll_once(self) -> int:
        """Run one cheap pass and return how many events it put on the sink.

        The first pass only records a baseline. If the root is gone, one ("." , "deleted") is
        emitted and later passes stay quiet until it returns, then ("." , "dir_changed").
        """
        with self._lock:
            self._pass += 1
            emitted = self._pass_over_dirs(full=False)
            self._after_pass(emitted)
            return emitted

    def full_walk(self) -> int:
        """Re-list every directory and re-stat every file; return how many events it emitted."""
        with self._lock:
            self._pass += 1
            emitted = self._pass_over_dirs(full=True)
            self._after_pass(emitted)
            return emitted

    def _after_pass(self, emitted: int) -> None:
        self.passes += 1
        if emitted:
            self._current_interval = self.interval_seconds
        else:
            self._current_interval = min(self._current_interval * 2, self.max_interval_seconds)

    def _fresh(self, st: os.stat_result) -> bool:
        age_ns = self._wall_clock_ns() - st.st_mtime_ns
        return 0 <= age_ns < FRESH_DIR_NS

    def _emit(self, rel: str, kind: str) -> int:
        if self._closed:
            return 0
        self._sink.put(FsEvent(self.folder, PurePosixPath(rel) if rel else ROOT, kind))
        return 1

    def _root_present(self) -> bool:
        try:
            return stat.S_ISDIR(os.stat(self._root_str).st_mode)
        except OSError:
            return False

    def _pass_over_dirs(self, *, full: bool) -> int:
        if not self._root_present():
            if self._root_missing:
                return 0
            # An outage, never "every file deleted": drop the snapshot without per-file events.
            self._root_missing = True
            self._dirs.clear()
            self._recent.clear()
            self._relist_next.clear()
            self._baselined = False
            return self._emit("", "deleted")
        if not self._baselined:
            self._dirs = self._walk("", {})
            self._baselined = True
            if self._root_missing:
                self._root_missing = False
                return self._emit("", "dir_changed")
            return 0
        if full:
            return self._full_diff()
        return self._cheap_pass()

    def _cheap_pass(self) -> int:
        emitted = 0
        relist_now, self._relist_next = self._relist_next, set()
        statted: set[str] = set()
        for rel in list(self._dirs):
            state = self._dirs.get(rel)
            if state is None:
                continue  # dropped with its parent earlier in this pass
            path = os.path.join(self._root_str, rel) if rel else self._root_str
            try:
                st = os.stat(path) if not rel else os.lstat(path)
            except OSError:
                continue  # removal shows as a change of the parent's listing
            moved = (st.st_mtime_ns, st.st_ino) != (state.mtime_ns, state.ino)
            if moved or rel in relist_now:
                emitted += self._relist(rel, state, statted)
                if moved:
                    # An entry added within the same timestamp tick as this listing would not
                    # move the mtime again: list once more on the next pass.
                    self._relist_next.add(rel)
        return emitted + self._restat_recent(statted)

    def _list(self, rel: str) -> tuple[os.stat_result, dict[str, _Sig], set[str]] | None:
        """Stat and list one directory: (its stat, files, subdirs), or None when that fails."""
        path = os.path.join(self._root_str, rel) if rel else self._root_str
        try:
            st = os.stat(path) if not rel else os.lstat(path)
            if not stat.S_ISDIR(st.st_mode):
                return None
            self.dirs_listed += 1
            with os.scandir(path) as it:
                entries = list(it)
        except OSError:
            return None
        files: dict[str, _Sig] = {}
        subdirs: set[str] = set()
        for entry in entries:
            try:
                if entry.is_dir(follow_symlinks=False):
                    if self.recursive and not self._prune(entry.name):
                        subdirs.add(entry.name)
                    continue
                if not entry.is_file(follow_symlinks=False):
                    continue
                self.files_statted += 1
                est = entry.stat(follow_symlinks=False)
            except OSError:
                continue
            files[entry.name] = (est.st_size, est.st_mtime_ns, est.st_ino)
        return st, files, subdirs

    def _walk(self, top: str, old: dict[str, _Dir]) -> dict[str, _Dir]:
        """List `top` and everything below it; a directory that fails keeps its `old` state."""
        found: dict[str, _Dir] = {}
        stack = [top]
        while stack:
            rel = stack.pop()
            listing = self._list(rel)
            if listing is None:
                before = old.get(rel)
                found[rel] = _Dir(
                    -1,
                    -1,
                    dict(before.files) if before else {},
                    set(before.subdirs) if before else set(),
                    listed=False,
                )
                continue
            st, files, subdirs = listing
            found[rel] = _Dir(st.st_mtime_ns, st.st_ino, files, subdirs)
            if self._fresh(st):
                self._relist_next.add(rel)
            stack.extend(_join(rel, name) for name in subdirs)
        return found

    def _relist(self, rel: str, state: _Dir, statted: set[str]) -> int:
        listing = self._list(rel)
        if listing is None:
            return 0  # keep the old state; its mtime still differs, so the next pass retries
        new_st, files, subdirs = listing
        emitted = self._diff_files(rel, state.files, files, statted)
        for name in state.subdirs - subdirs:
            emitted += self._drop_tree(_join(rel, name))
        added = subdirs - state.subdirs
        if self._fresh(new_st):
            self._relist_next.add(rel)
        state.mtime_ns, state.ino = new_st.st_mtime_ns, new_st.st_ino
        state.files, state.subdirs, state.listed = files, subdirs, True
        for name in added:
            for sub_rel, sub in self._walk(_join(rel, name), {}).items():
                self._dirs[sub_rel] = sub
                emitted += self._diff_files(sub_rel, {}, sub.files, statted)
        return emitted

    def _diff_files(
        self, rel: str, before: dict[str, _Sig], after: dict[str, _Sig], statted: set[str]
    ) -> int:
        emitted = 0
        for name, sig in after.items():
            path = _join(rel, name)
            statted.add(path)
            if before.get(name) != sig:
                emitted += self._emit(path, "changed")
                self._recent[path] = self._pass
        for name in before.keys() - after.keys():
            path = _join(rel, name)
            self._recent.pop(path, None)
            emitted += self._emit(path, "deleted")
        return emitted

    def _drop_tree(self, top: str) -> int:
        emitted = 0
        for rel in [r for r in self._dirs if _is_under(r, top)]:
            state = self._dirs.pop(rel)
            self._relist_next.discard(rel)
            for name in state.files:
                path = _join(rel, name)
                self._recent.pop(path, None)
                emitted += self._emit(path, "deleted")
        return emitted

    def _restat_recent(self, statted: set[str]) -> int:
        emitted = 0
        horizon = self._pass - RECENT_PASSES
        for path, changed_pass in list(self._recent.items()):
            if changed_pass <= horizon:
                del self._recent[path]
                continue
            if path in statted:
                continue
            rel, _, name = path.rpartition("/")
            state = self._dirs.get(rel)
            if state is None or name not in state.files:
                del self._recent[path]
                continue
            try:
                self.files_statted += 1
                st = os.lstat(os.path.join(self._root_str, path))
            except FileNotFoundError:
                del state.files[name], self._recent[path]
                emitted += self._emit(path, "deleted")
                continue
            except OSError:
                continue
            if not stat.S_ISREG(st.st_mode):
                continue  # replaced by a directory or a link: the directory's listing says so
            sig = (st.st_size, st.st_mtime_ns, st.st_ino)
            if sig != state.files[name]:
                state.files[name] = sig
                self._recent[path] = self._pass
                emitted += self._emit(path, "changed")
        return emitted

    def _full_diff(self) -> int:
        old = self._dirs
        self._relist_next.clear()
        new = self._walk("", old)
        unlisted = [rel for rel, d in new.items() if not d.listed]
        emitted = 0
        statted: set[str] = set()
        for rel, state in new.items():
            before = old.get(rel)
            if not state.listed:
                continue
            emitted += self._diff_files(rel, before.files if before else {}, state.files, statted)
        for rel, before in old.items():
            if rel in new:
                continue
            if any(_is_under(rel, top) for top in unlisted):
                new[rel] = before  # below a directory we could not list: unknown, keep it
                continue
            for name in before.files:
                path = _join(rel, name)
                self._recent.pop(path, None)
                emitted += self._emit(path, "deleted")
        self._dirs = new
        return emitted
