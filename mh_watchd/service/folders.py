"""One supervisor per folder: its checks (with a deadline), its watcher, and its rescans.

Every call that touches the folder's share runs in the folder's own executors, so a share
that hangs stalls only its folder; the loop sets timers and applies what comes back.
"""

from __future__ import annotations

import contextlib
from collections.abc import Callable
from concurrent.futures import Future
from pathlib import Path, PurePosixPath

import structlog

from mh_watchd.adapters.watcher import (
    EventSink,
    FsEvent,
    NativeWatcher,
    Poller,
    scan_tree,
)
from mh_watchd.core.config import FolderConfig
from mh_watchd.core.errors import StateDirError
from mh_watchd.core.intake import is_ignored_dir
from mh_watchd.core.mounts import choose_watch_mode, inotify_fits, inotify_fix_hint
from mh_watchd.service.context import Built, Context, FolderCheck, FolderRuntime, ScanResult

log = structlog.get_logger("mh_watchd")

FOLDER_CHECK_SECONDS = 5.0
FOLDER_CHECK_DEADLINE_SECONDS = 30.0
NO_ANSWER = f"the folder did not answer within {FOLDER_CHECK_DEADLINE_SECONDS:g} s"


def write_folder_statuses(ctx: Context) -> None:
    """Record each folder's watch mode and outage for `status`. A journal that refuses the
    write is noted (invariant 9) without cutting short the folder work that asked for it."""
    now = ctx.clock()
    try:
        for rt in ctx.folders.values():
            ctx.journal.set_folder_status(
                rt.config.name,
                watch_mode=rt.watch_mode,
                watch_reason=rt.watch_reason,
                outage=rt.outage,
                last_scan_at=rt.last_scan_wall,
                at=now,
            )
    except StateDirError as exc:
        ctx.gate.failed(exc)


class FolderSupervisor:
    """Checks, watches and rescans one folder."""

    def __init__(
        self,
        ctx: Context,
        rt: FolderRuntime,
        *,
        sink: EventSink,
        on_scan: Callable[[FolderRuntime, ScanResult], None],
        on_usable: Callable[[FolderRuntime], None],
    ) -> None:
        self._ctx = ctx
        self.rt = rt
        self._sink = sink
        self._on_scan = on_scan
        self._on_usable = on_usable

    @property
    def name(self) -> str:
        return self.rt.config.name

    # ------------------------------------------------------------------ checks
    def check_now(self) -> None:
        """Check the folder at the next turn (a retry request, a vanished inbox)."""
        self._ctx.loop.at(
            self._ctx.monotonic(), self._run_check, key=("check", self.name), replace=True
        )

    def start_check(self) -> Future[FolderCheck]:
        """Submit a check to the folder's checker; its result is applied on the loop."""
        rt = self.rt
        fut = rt.checker.submit(check_folder, self._ctx, rt.config)
        rt.check_future = fut
        self._ctx.loop.at(
            self._ctx.monotonic() + FOLDER_CHECK_DEADLINE_SECONDS,
            self._check_overdue,
            key=("check-deadline", self.name),
            replace=True,
        )
        self._ctx.post_result(fut, self._checked)
        return fut

    def first_check(self, fut: Future[FolderCheck], deadline: float) -> None:
        """At start-up: wait for the first check up to `deadline` and apply it; a folder
        whose check has not answered by then is in outage until it does."""
        try:
            check = fut.result(timeout=max(0.0, deadline - self._ctx.monotonic()))
        except TimeoutError:
            self.apply(FolderCheck(outage=NO_ANSWER))
            return  # its answer comes through the loop
        except Exception as exc:
            check = FolderCheck(outage=f"check failed: {exc}")
        self._checked(fut, check)

    def _run_check(self) -> None:
        rt = self.rt
        if self._ctx.stopping or rt.closed or rt.check_future is not None:
            return  # a check still under way reports its result, or its deadline does
        self.start_check()

    def _checked(self, fut: Future[FolderCheck], check: FolderCheck | None = None) -> None:
        rt = self.rt
        if rt.check_future is not fut or rt.closed:
            return
        rt.check_future = None
        self._ctx.loop.cancel(("check-deadline", self.name))
        if check is None:
            try:
                check = fut.result()
            except Exception as exc:
                check = FolderCheck(outage=f"check failed: {exc}")
        self.apply(check)
        self._ctx.loop.after(FOLDER_CHECK_SECONDS, self._run_check, key=("check", self.name))

    def _check_overdue(self) -> None:
        rt = self.rt
        fut = rt.check_future
        if fut is not None and not fut.done() and rt.outage is None:
            self.apply(FolderCheck(outage=NO_ANSWER))

    def apply(self, check: FolderCheck) -> None:
        """Take in what a check found: an outage starting or ending, roots coming and going."""
        rt = self.rt
        if check.outage != rt.outage:
            self._ctx.dirty = True  # holds and releases depend on what the folder can do
            self._outage_changed(check.outage)
        if check.outage:
            return  # the roots were not looked at: what is known of them stays
        if check.output_problem != rt.output_problem:
            self._root_changed("folder.output", check.output_problem)
            rt.output_problem = check.output_problem
        if check.failed_problem != rt.failed_problem:
            self._root_changed("folder.failed", check.failed_problem)
            rt.failed_problem = check.failed_problem
        if not rt.failed_problem:
            self._on_usable(rt)

    def _root_changed(self, event: str, problem: str | None) -> None:
        """An output root went away or came back: logged as `<event>_unavailable|_available`
        (folder.output_*, folder.failed_*)."""
        self._ctx.dirty = True
        if problem:
            log.warning(f"{event}_unavailable", folder=self.name, reason=problem)
        else:
            log.info(f"{event}_available", folder=self.name)

    def _outage_changed(self, outage: str | None) -> None:
        rt, ctx = self.rt, self._ctx
        if outage:
            log.warning("folder.outage_started", folder=self.name, reason=outage)
            ctx.alert("outage", None, outage, folder=self.name)
            # Forget every file of the folder: during an outage nothing is "deleted", and once
            # it ends the rescan sees each file afresh.
            ctx.tracker.forget_folder(self.name)
        else:
            log.info("folder.outage_ended", folder=self.name, was=rt.outage)
        previous = rt.outage
        rt.outage = outage
        ctx.metrics.outage(self.name, bool(outage))
        if previous and not outage:
            self.start_watcher()
            self.scan_now()
        elif outage and (rt.watcher is not None or rt.watcher_future is not None):
            self.start_watcher()  # stops the watcher in the folder's worker
        write_folder_statuses(ctx)

    # ------------------------------------------------------------------ watcher
    def start_watcher(self) -> None:
        """(Re)start the folder's watcher in its own worker: choosing the mode reads the share
        (statfs, a directory count) and stopping a poller may wait for its thread."""
        rt = self.rt
        if rt.watcher_future is not None:
            rt.watcher_wanted = True
            return
        old, rt.watcher = rt.watcher, None
        if rt.outage:
            rt.watch_mode = "polling"
            rt.watch_reason = f"inbox in outage: {rt.outage}"
            if old is not None:
                rt.io.submit(old.stop)
            return
        fut = rt.io.submit(self._build_watcher, rt.config, old)
        rt.watcher_future = fut
        self._ctx.post_result(fut, self._watcher_built)

    def wait_for_watcher(self, deadline: float) -> None:
        """At start-up: wait up to `deadline` for the watcher to start; a folder whose
        watcher is still starting then is in outage (the share did not answer)."""
        fut = self.rt.watcher_future
        if fut is None:
            return
        with contextlib.suppress(Exception):
            fut.result(timeout=max(0.0, deadline - self._ctx.monotonic()))
        if fut.done():
            self._watcher_built(fut)
        if self.rt.watcher_future is not None and self.rt.outage is None:
            self.apply(FolderCheck(outage=NO_ANSWER))

    def stop_watcher(self) -> None:
        rt = self.rt
        if rt.watcher is not None and not rt.closed:
            rt.io.submit(rt.watcher.stop)
        rt.watcher = None

    def _build_watcher(self, folder: FolderConfig, old: NativeWatcher | Poller | None) -> Built:
        """Runs in the folder's worker: stop the old watcher, choose a mode, start a new one."""
        if old is not None:
            old.stop()
        root = Path(str(folder.inbox))
        mode, reason = choose_watch_mode(folder.observer, self._ctx.fs.fs_type(root))
        if mode == "native" and folder.recursive:
            max_watches, in_use = self._ctx.fs.inotify_limits()
            dirs = self._ctx.fs.count_dirs(root, 1_000_000)
            if not inotify_fits(dirs, in_use, max_watches):
                mode = "polling"
                reason = (
                    f"{dirs} directories do not fit the inotify watches left; "
                    + inotify_fix_hint(dirs + (in_use or 0))
                )
                log.warning("watcher.inotify_limit", folder=folder.name, dirs=dirs, hint=reason)
        watcher: NativeWatcher | Poller
        if mode == "native":
            watcher = NativeWatcher(
                folder.name, root, recursive=folder.recursive, sink=self._sink, prune=is_ignored_dir
            )
            try:
                watcher.start()
            except OSError as exc:
                mode, reason = "polling", f"native watch failed ({exc}); polling instead"
                log.warning("watcher.native_failed", folder=folder.name, error=str(exc))
                watcher = self._poller(folder, root)
                watcher.start()
        else:
            watcher = self._poller(folder, root)
            watcher.start()
        log.info("watcher.started", folder=folder.name, mode=mode, reason=reason)
        return watcher, mode, reason

    def _poller(self, folder: FolderConfig, root: Path) -> Poller:
        return Poller(
            folder.name, root, recursive=folder.recursive, sink=self._sink, prune=is_ignored_dir
        )

    def _watcher_built(self, fut: Future[Built]) -> None:
        rt = self.rt
        if rt.watcher_future is not fut:
            return
        rt.watcher_future = None
        try:
            watcher, mode, reason = fut.result()
        except Exception as exc:
            log.warning("watcher.start_failed", folder=self.name, error=str(exc))
            rt.watch_mode, rt.watch_reason = "polling", f"watcher failed to start: {exc}"
            self.check_now()  # the folder check tells whether the inbox is there
            return
        if rt.closed:
            if watcher is not None:
                with contextlib.suppress(RuntimeError):
                    rt.io.submit(watcher.stop)
            return
        if rt.outage or rt.watcher_wanted or self._ctx.stopping:
            # Outage began, the config changed, or the daemon stops, while it was starting.
            rt.watcher_wanted = False
            rt.watcher = watcher
            if self._ctx.stopping:
                self.stop_watcher()
            else:
                self.start_watcher()
            return
        rt.watcher = watcher
        rt.watch_mode, rt.watch_reason = mode, reason
        self.scan_now()  # list it now: events before the watch began were missed
        write_folder_statuses(self._ctx)

    # ------------------------------------------------------------------ rescans
    def scan_now(self) -> None:
        """List the inbox at the next turn (a directory appeared, events overflowed)."""
        self._ctx.loop.at(
            self._ctx.monotonic(), self._run_scan, key=("scan", self.name), replace=True
        )

    def _run_scan(self) -> None:
        rt = self.rt
        if self._ctx.stopping or rt.closed or rt.outage:
            return  # the outage's end brings the next scan
        if rt.scan_future is not None:
            rt.scan_again = True  # the watch may have begun after it listed a directory
            return
        rt.scan_started = self._ctx.monotonic()
        fut = rt.io.submit(scan_folder, rt.config)
        rt.scan_future = fut
        self._ctx.post_result(fut, self._scanned)

    def _scanned(self, fut: Future[ScanResult]) -> None:
        rt, ctx = self.rt, self._ctx
        if rt.scan_future is not fut or rt.closed:
            return
        rt.scan_future = None
        rt.last_scan_mono = ctx.monotonic()
        rt.last_scan_wall = ctx.clock()
        if rt.scan_again:
            rt.scan_again = False
            self.scan_now()
        else:
            ctx.loop.after(
                ctx.config.daemon.rescan_seconds, self._run_scan, key=("scan", self.name)
            )
        try:
            files = fut.result()
        except Exception as exc:
            log.warning("watcher.scan_failed", folder=self.name, error=str(exc))
            return
        if rt.outage:
            return
        ctx.metrics.scanned(self.name, rt.last_scan_wall)
        self._on_scan(rt, files)
        log.debug("watcher.rescan_done", folder=self.name, files=len(files))
        write_folder_statuses(ctx)

    def event(self, event: FsEvent) -> bool:
        """A folder-level event: True when it was one (the caller handles file events)."""
        if event.kind in ("overflow", "dir_changed"):
            self.scan_now()  # events were lost, or a directory appeared or moved in
            return True
        if event.kind == "deleted" and event.rel_path == PurePosixPath("."):
            self.check_now()  # the inbox itself vanished
            return True
        return False

    def close(self) -> None:
        """The folder was removed from the config: stop its watcher and its timers."""
        self.stop_watcher()
        self.rt.close()
        for kind in ("check", "check-deadline", "scan", "stat", "later"):
            self._ctx.loop.cancel((kind, self.name))


def check_folder(ctx: Context, folder: FolderConfig) -> FolderCheck:
    """Runs in the folder's checker: what is wrong with the folder's inbox and roots.

    Roots are never created: a missing outbox, archive or failed folder is a share that is
    not mounted. Only the default archive and failed folders inside the inbox are made.
    """
    outage = ctx.fs.check_inbox(
        Path(str(folder.inbox)),
        require_mount=folder.require_mount,
        mount_marker=folder.mount_marker,
    )
    if outage is not None:
        return FolderCheck(outage=outage)
    roots = [("outbox", folder.outbox)]
    if folder.on_success == "archive":
        roots.append(("archive", folder.archive))
    return FolderCheck(
        output_problem=_root_problem(ctx, folder, roots),
        failed_problem=_root_problem(ctx, folder, [("failed", folder.failed)]),
    )


def _root_problem(
    ctx: Context, folder: FolderConfig, roots: list[tuple[str, PurePosixPath]]
) -> str | None:
    for label, path in roots:
        inside_inbox = path.is_relative_to(folder.inbox)
        problem = ctx.fs.check_writable_dir(Path(str(path)), create=inside_inbox)
        if problem:
            return f"{label} {path}: {problem}"
    return None


def scan_folder(folder: FolderConfig) -> ScanResult:
    """Runs in the folder's worker: every candidate as (rel_path, size, mtime_ns, inode)."""
    root = Path(str(folder.inbox))
    return [
        (rel.as_posix(), st.st_size, st.st_mtime_ns, st.st_ino)
        for rel, st in scan_tree(root, recursive=folder.recursive, prune=is_ignored_dir)
    ]
