"""The daemon: wires the adapters from the config and runs the one loop that decides.

Threads never decide. Watchers put small events on a queue; a bounded worker pool does the
slow I/O (scans, stats, probes, transfers, moves) and hands back outcome values; this loop
alone changes job states, always committing the new state to the journal before it starts the
side effect that state announces.
"""

from __future__ import annotations

import contextlib
import dataclasses
import os
import queue
import signal
import time
from collections.abc import Callable, Mapping
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path, PurePosixPath
from types import FrameType
from typing import Any

import httpx
import structlog

from mh_watchd import __version__
from mh_watchd.adapters import config_file, logs
from mh_watchd.adapters.fs import LocalFileSystem
from mh_watchd.adapters.http_status import HealthReport, StatusServer
from mh_watchd.adapters.journal import Journal
from mh_watchd.adapters.magic_hour import MagicHourClient, RequestRecord, build_http_client
from mh_watchd.adapters.metrics import Metrics
from mh_watchd.adapters.notifier import EventNotifier
from mh_watchd.adapters.sdnotify import SystemdNotifier
from mh_watchd.adapters.watcher import FsEvent, NativeWatcher, Poller, count_dirs, scan_tree
from mh_watchd.core import backoff, naming
from mh_watchd.core.api import estimate_credits
from mh_watchd.core.config import Config, FolderConfig
from mh_watchd.core.errors import AuthError, CreditsError, StateDirError, TransientApiError
from mh_watchd.core.intake import (
    Verdict,
    classify,
    is_ignored_dir,
    ready_marker_path,
    route_preset,
)
from mh_watchd.core.jobs import (
    ACTIVE_RENDER_STATES,
    HoldReason,
    Job,
    JobSettings,
    JobState,
    hold,
    release,
    transition,
)
from mh_watchd.core.mounts import choose_watch_mode, inotify_fits, inotify_fix_hint
from mh_watchd.core.outcomes import Action, dispose
from mh_watchd.core.settle import Observation, SettleTracker
from mh_watchd.runner import IntakeResult, Runner, StepOutcome

log = structlog.get_logger("mh_watchd")

TICK_SECONDS = 0.25
FOLDER_CHECK_SECONDS = 5.0
FOLDER_CHECK_DEADLINE_SECONDS = 30.0
SETTLE_STAT_SECONDS = 0.5
REQUEST_CHECK_SECONDS = 1.0
STOP_GRACE_SECONDS = 8.0
PROGRESS_WRITE_SECONDS = 2.0
_S = JobState


class Aborted(Exception):
    """A transfer stopped because the daemon is shutting down; the journal resumes it."""


@dataclass
class FolderRuntime:
    """What the loop knows about one configured folder right now."""

    config: FolderConfig
    outage: str | None = None
    watch_mode: str = "polling"
    watch_reason: str = "not started"
    last_scan_mono: float | None = None
    last_scan_wall: float | None = None
    scan_future: Future[list[tuple[str, int, int, int]]] | None = None
    check_future: Future[tuple[str | None, str | None]] | None = None
    check_started: float = 0.0
    last_check: float = -1e9
    output_problem: str | None = None
    watcher: NativeWatcher | Poller | None = None
    not_video_logged: set[str] = field(default_factory=set)


@dataclass
class InFlight:
    job_id: int
    step: str
    future: Future[StepOutcome]


def local_day(wall: float) -> str:
    """The host's local calendar date of `wall`, as YYYY-MM-DD (credits are booked to it)."""
    return time.strftime("%Y-%m-%d", time.localtime(wall))


class Daemon:
    """One running daemon over one state_dir."""

    def __init__(
        self,
        config: Config,
        *,
        config_path: Path | None,
        environ: Mapping[str, str] | None = None,
        clock: Callable[[], float] = time.time,
        monotonic: Callable[[], float] = time.monotonic,
        fs: LocalFileSystem | None = None,
    ) -> None:
        self.config = config
        self.config_path = config_path
        self.environ: Mapping[str, str] = environ if environ is not None else os.environ
        self.clock = clock
        self.monotonic = monotonic
        self.fs = fs or LocalFileSystem(umask=config.daemon.umask)
        self.state_dir = Path(str(config.daemon.state_dir))
        self.temp_dir = self.state_dir / "tmp"
        self.journal: Journal | None = None
        self.http: httpx.Client | None = None
        self.token: str | None = None
        self.metrics = Metrics()
        self.notify = SystemdNotifier(self.environ)
        self.status_server: StatusServer | None = None
        self.notifier: EventNotifier | None = None
        self.notify_http: httpx.Client | None = None
        self.events: queue.Queue[FsEvent] = queue.Queue()
        self.settle = SettleTracker(config.daemon.settle_seconds)
        self.folders: dict[str, FolderRuntime] = {}
        self.jobs: dict[int, Job] = {}
        self.in_flight: dict[int, InFlight] = {}
        self.intake_futures: dict[tuple[str, str], Future[IntakeResult]] = {}
        self.stat_futures: dict[str, Future[list[tuple[str, os.stat_result | None]]]] = {}
        self.misc_futures: list[Future[Any]] = []
        self.skip_versions: dict[tuple[str, str], tuple[int, int, int]] = {}
        self.scan_memory: dict[tuple[str, str], tuple[int, int, int]] = {}
        self.account_block: HoldReason | None = None
        self.last_account_probe = -1e9
        self.account_future: Future[tuple[str, int | None]] | None = None
        self.force_recheck = False
        self.last_request_check = -1e9
        self.last_tick_mono = monotonic()
        self.last_watchdog = -1e9
        self.last_status_line = ""
        self.last_progress_write = -1e9
        self.stored_progress: dict[int, float] = {}
        self.stopping = False
        self.reload_requested = False
        self.signal_count = 0
        self.pool = ThreadPoolExecutor(max_workers=8, thread_name_prefix="mh-worker")
        self.transfer_pool = ThreadPoolExecutor(
            max_workers=max(config.daemon.max_parallel_uploads, 1) + 2,
            thread_name_prefix="mh-transfer",
        )
        self.runner: Runner | None = None
        self.account_probe_seconds = float(
            self.environ.get("MH_WATCHD_ACCOUNT_PROBE_SECONDS", backoff.ACCOUNT_PROBE_SECONDS)
        )

    # ------------------------------------------------------------------ startup
    def open(self) -> None:
        """Open the journal and take the lock. Raises StateDirError / AlreadyRunningError."""
        problem = None
        try:
            self.fs.makedirs(self.state_dir)
            problem = self.fs.state_dir_problem(self.state_dir)
        except OSError as exc:
            raise StateDirError(f"state_dir {self.state_dir} is unusable: {exc}") from exc
        if problem:
            raise StateDirError(
                f"state_dir {self.state_dir} is {problem}; "
                "set daemon.state_dir to a local disk (for example /var/lib/mh-watchd)"
            )
        if self.fs.check_writable_dir(self.state_dir, create=True):
            raise StateDirError(
                f"state_dir {self.state_dir} is not writable by uid {os.getuid()}; fix its owner "
                "or set daemon.state_dir elsewhere"
            )
        journal = Journal.open(self.state_dir)
        try:
            journal.acquire_lock()
        except Exception:
            journal.close()
            raise
        self.journal = journal
        self.fs.makedirs(self.temp_dir)
        self.runner = Runner(
            client_factory=self._client,
            fs=self.fs,
            journal=journal,
            temp_dir=self.temp_dir,
            clock=self.clock,
        )

    def start(self, token: str | None) -> None:
        """Bring every part up after open(): recovery, HTTP, watchers, READY=1."""
        assert self.journal is not None
        self.token = token
        self.http = build_http_client(user_agent=f"mh-watchd/{__version__}")
        self._recover()
        self._start_status_server()
        self._start_notifier()
        for folder in self.config.folders:
            self.folders[folder.name] = FolderRuntime(config=folder)
        self._check_all_folders_now()
        for runtime in self.folders.values():
            self._start_watcher(runtime)
        self.journal.set_meta("daemon_pid", str(os.getpid()))
        self.journal.set_meta("daemon_started_at", str(self.clock()))
        self._write_folder_statuses()
        self.notify.ready()
        log.info(
            "daemon.started",
            version=__version__,
            folders=[f.name for f in self.config.folders],
            state_dir=str(self.state_dir),
        )

    def _client(self) -> MagicHourClient:
        assert self.http is not None
        return MagicHourClient(
            self.http,
            base_url=self.config.api.base_url,
            token=self.token or "",
            request_timeout_seconds=self.config.api.request_timeout_seconds,
            on_request=self._record_request,
        )

    def _record_request(self, record: RequestRecord) -> None:
        self.metrics.api_request(record.operation, record.status, record.seconds, record.retried)

    def _recover(self) -> None:
        """Load unfinished jobs; a create cut off mid-flight becomes ambiguous_create."""
        assert self.journal is not None
        now = self.clock()
        for job in self.journal.unfinished():
            job_id = job.id
            assert job_id is not None
            if job.due_at is not None:
                # Wall clock may have jumped while we were down: never wait absurdly long.
                due = now + backoff.clamp_due_seconds(job.due_at - now)
                job = dataclasses.replace(job, due_at=min(job.due_at, due))
            if job.state is _S.SUBMITTING and job.project_id is None:
                job = self._save(
                    hold(job, HoldReason.AMBIGUOUS_CREATE, updated_at=now),
                    "job.create_ambiguous",
                    {"why": "the daemon stopped inside the create request"},
                )
                self._alert("held", job, "ambiguous_create")
            self.jobs[job_id] = job
        log.info("journal.recovered", unfinished=len(self.jobs))

    def _start_status_server(self) -> None:
        listen = self.config.daemon.http_listen
        if not listen:
            return
        server = StatusServer(listen, health=self.health, metrics=self.metrics)
        if server.start():
            self.status_server = server
            log.info("http.listening", listen=listen)
        else:
            log.error(
                "http.bind_failed", listen=listen, hint='change daemon.http_listen or set it to ""'
            )

    def _start_notifier(self) -> None:
        n = self.config.notify
        if not n.webhook_url and not n.apprise_urls:
            return
        self.notify_http = httpx.Client(timeout=10.0)
        self.notifier = EventNotifier(
            webhook_url=n.webhook_url,
            apprise_urls=n.apprise_urls,
            on=n.on,
            http=self.notify_http,
        )
        self.notifier.start()

    # ------------------------------------------------------------------ watching
    def _start_watcher(self, runtime: FolderRuntime) -> None:
        folder = runtime.config
        root = Path(str(folder.inbox))
        if runtime.watcher is not None:
            runtime.watcher.stop()
            runtime.watcher = None
        if runtime.outage:
            runtime.watch_mode, runtime.watch_reason = (
                "polling",
                f"inbox in outage: {runtime.outage}",
            )
            return
        fs_type = self.fs.fs_type(root)
        mode, reason = choose_watch_mode(folder.observer, fs_type)
        if mode == "native" and folder.recursive:
            max_watches, in_use = self.fs.inotify_limits()
            dirs = count_dirs(root, limit=1_000_000)
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
                folder.name,
                root,
                recursive=folder.recursive,
                sink=self.events,
                prune=is_ignored_dir,
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
        runtime.watcher = watcher
        runtime.watch_mode, runtime.watch_reason = mode, reason
        log.info("watcher.started", folder=folder.name, mode=mode, reason=reason)

    def _poller(self, folder: FolderConfig, root: Path) -> Poller:
        return Poller(
            folder.name, root, recursive=folder.recursive, sink=self.events, prune=is_ignored_dir
        )

    # ------------------------------------------------------------------ signals
    def install_signal_handlers(self) -> None:
        """SIGTERM/SIGINT: graceful stop, a second one exits 1 at once. SIGHUP: reload."""

        def on_stop(signum: int, frame: FrameType | None) -> None:
            self.signal_count += 1
            if self.signal_count > 1:
                os._exit(1)
            self.stopping = True

        def on_hup(signum: int, frame: FrameType | None) -> None:
            self.reload_requested = True

        signal.signal(signal.SIGTERM, on_stop)
        signal.signal(signal.SIGINT, on_stop)
        signal.signal(signal.SIGHUP, on_hup)

    # ------------------------------------------------------------------ the loop
    def run(self) -> int:
        """Loop until stopped; returns the exit code (0 after a clean stop)."""
        try:
            while not self.stopping:
                self.tick()
                time.sleep(TICK_SECONDS)
        finally:
            self.shutdown()
        return 0

    def run_until(self, condition: Callable[[], bool], timeout_seconds: float) -> bool:
        """Tick until `condition()` holds or the deadline passes (the demo uses this)."""
        deadline = self.monotonic() + timeout_seconds
        while not self.stopping and self.monotonic() < deadline:
            self.tick()
            if condition():
                return True
            time.sleep(TICK_SECONDS)
        return condition()

    def tick(self) -> None:
        """One pass of the loop: collect outcomes, then decide what starts next."""
        try:
            now_mono = self.monotonic()
            self.last_tick_mono = now_mono
            if self.reload_requested:
                self.reload_requested = False
                self.reload()
            self._drain_events(now_mono)
            self._collect_folder_checks(now_mono)
            self._collect_scans(now_mono)
            self._collect_stats(now_mono)
            self._collect_intakes()
            self._collect_outcomes()
            self._collect_account_probe()
            self._handle_requests(now_mono)
            if not self.stopping:
                self._schedule_folder_checks(now_mono)
                self._schedule_scans(now_mono)
                self._schedule_stats(now_mono)
                self._schedule_intakes(now_mono)
                self._schedule_jobs()
                self._schedule_account_probe(now_mono)
            self._store_progress(now_mono)
            self._report(now_mono)
        except Exception:
            # The top of the loop: one unexpected error never stops the daemon.
            log.exception("daemon.tick_failed")

    # ------------------------------------------------------------------ folders
    def _check_all_folders_now(self) -> None:
        futures = {
            name: self.pool.submit(self._check_folder, rt.config)
            for name, rt in self.folders.items()
        }
        for name, fut in futures.items():
            rt = self.folders[name]
            try:
                outage, output_problem = fut.result(timeout=FOLDER_CHECK_DEADLINE_SECONDS)
            except Exception as exc:
                outage, output_problem = f"check failed: {exc}", None
            self._apply_folder_check(rt, outage, output_problem)
            rt.last_check = self.monotonic()

    def _check_folder(self, folder: FolderConfig) -> tuple[str | None, str | None]:
        """Runs in a worker: (inbox outage reason, outbox/archive problem), None when fine."""
        inbox = Path(str(folder.inbox))
        outage = self.fs.check_inbox(
            inbox, require_mount=folder.require_mount, mount_marker=folder.mount_marker
        )
        output_problem = None
        if outage is None:
            for label, path in (("outbox", folder.outbox), ("archive", folder.archive)):
                if label == "archive" and folder.on_success != "archive":
                    continue
                problem = self.fs.check_writable_dir(Path(str(path)), create=True)
                if problem:
                    output_problem = f"{label} {path}: {problem}"
                    break
        return outage, output_problem

    def _schedule_folder_checks(self, now: float) -> None:
        for rt in self.folders.values():
            if rt.check_future is not None:
                if (
                    not rt.check_future.done()
                    and now - rt.check_started > FOLDER_CHECK_DEADLINE_SECONDS
                    and rt.outage is None
                ):
                    self._apply_folder_check(rt, "the inbox did not answer within 30 s", None)
                continue
            if now - rt.last_check >= FOLDER_CHECK_SECONDS or self.force_recheck:
                rt.check_started = now
                rt.check_future = self.pool.submit(self._check_folder, rt.config)

    def _collect_folder_checks(self, now: float) -> None:
        for rt in self.folders.values():
            fut = rt.check_future
            if fut is None or not fut.done():
                continue
            rt.check_future = None
            rt.last_check = now
            try:
                outage, output_problem = fut.result()
            except Exception as exc:
                outage, output_problem = f"check failed: {exc}", None
            self._apply_folder_check(rt, outage, output_problem)

    def _apply_folder_check(
        self, rt: FolderRuntime, outage: str | None, output_problem: str | None
    ) -> None:
        name = rt.config.name
        if outage != rt.outage:
            if outage:
                log.warning("folder.outage_started", folder=name, reason=outage)
                self._alert("outage", None, outage, folder=name)
                # Forget half-settled files: during an outage nothing is "deleted".
                for key in [k for k in self.settle.pending() if k[0] == name]:
                    self.settle.forget(key)
            else:
                log.info("folder.outage_ended", folder=name, was=rt.outage)
            previous = rt.outage
            rt.outage = outage
            self.metrics.outage(name, bool(outage))
            if previous and not outage and self.journal is not None:
                self._start_watcher(rt)
                rt.last_scan_mono = None  # rescan at once
            elif outage and rt.watcher is not None:
                rt.watcher.stop()
                rt.watcher = None
                rt.watch_mode, rt.watch_reason = "polling", f"inbox in outage: {outage}"
            self._write_folder_statuses()
        if output_problem != rt.output_problem:
            if output_problem:
                log.warning("folder.output_unavailable", folder=name, reason=output_problem)
            else:
                log.info("folder.output_available", folder=name)
            rt.output_problem = output_problem

    def _write_folder_statuses(self) -> None:
        if self.journal is None:
            return
        now = self.clock()
        for rt in self.folders.values():
            self.journal.set_folder_status(
                rt.config.name,
                watch_mode=rt.watch_mode,
                watch_reason=rt.watch_reason,
                outage=rt.outage,
                last_scan_at=rt.last_scan_wall,
                at=now,
            )

    # ------------------------------------------------------------------ intake
    def _drain_events(self, now: float) -> None:
        while True:
            try:
                event = self.events.get_nowait()
            except queue.Empty:
                return
            rt = self.folders.get(event.folder)
            if rt is None or rt.outage:
                continue
            if event.kind == "overflow":
                rt.last_scan_mono = None
                continue
            if event.kind == "dir_changed":
                rt.last_scan_mono = None  # a directory appeared or moved in: list it now
            elif event.kind == "changed":
                # The next stat pass gives it an observation; the event restarts its quiet period.
                self.settle.touched((event.folder, event.rel_path.as_posix()), now)
            elif event.kind == "deleted":
                if event.rel_path == PurePosixPath("."):
                    rt.last_check = -1e9  # the inbox itself vanished: check the folder now
                    continue
                self.settle.forget((event.folder, event.rel_path.as_posix()))

    def _schedule_scans(self, now: float) -> None:
        for rt in self.folders.values():
            if rt.outage or rt.scan_future is not None:
                continue
            if (
                rt.last_scan_mono is None
                or now - rt.last_scan_mono >= self.config.daemon.rescan_seconds
            ):
                rt.scan_future = self.pool.submit(self._scan_folder, rt.config)

    def _scan_folder(self, folder: FolderConfig) -> list[tuple[str, int, int, int]]:
        """Runs in a worker: every candidate file as (rel_path, size, mtime_ns, inode)."""
        found = []
        root = Path(str(folder.inbox))
        for rel, st in scan_tree(root, recursive=folder.recursive, prune=is_ignored_dir):
            found.append((rel.as_posix(), st.st_size, st.st_mtime_ns, st.st_ino))
        return found

    def _collect_scans(self, now: float) -> None:
        for rt in self.folders.values():
            fut = rt.scan_future
            if fut is None or not fut.done():
                continue
            rt.scan_future = None
            rt.last_scan_mono = now
            rt.last_scan_wall = self.clock()
            try:
                files = fut.result()
            except Exception as exc:
                log.warning("watcher.scan_failed", folder=rt.config.name, error=str(exc))
                continue
            if rt.outage:
                continue
            self.metrics.scanned(rt.config.name, rt.last_scan_wall)
            seen = set()
            pending = set(self.settle.pending())
            for rel, size, mtime_ns, inode in files:
                key = (rt.config.name, rel)
                seen.add(key)
                # A big NAS tree is mostly unchanged files: only new or changed ones cost a
                # journal lookup.
                if self.scan_memory.get(key) == (size, mtime_ns, inode) and key not in pending:
                    continue
                verdict = self._intake_verdict(rt, rel, size, mtime_ns, inode)
                if verdict == "later":
                    self.scan_memory.pop(key, None)
                    continue
                self.scan_memory[key] = (size, mtime_ns, inode)
                if verdict == "skip":
                    continue
                self.settle.observe(key, Observation(size, mtime_ns, inode), now)
            for key in self.settle.pending():
                if key[0] == rt.config.name and key not in seen:
                    self.settle.forget(key)
            for key in [k for k in self.scan_memory if k[0] == rt.config.name and k not in seen]:
                del self.scan_memory[key]
            log.debug("watcher.rescan_done", folder=rt.config.name, files=len(files))
            self._write_folder_statuses()

    def _wanted(self, rt: FolderRuntime, rel: str, size: int, mtime_ns: int, inode: int) -> bool:
        """Is this file (in this version) still to be taken in? Pure lookups, no I/O."""
        return self._intake_verdict(rt, rel, size, mtime_ns, inode) == "take"

    def _intake_verdict(
        self, rt: FolderRuntime, rel: str, size: int, mtime_ns: int, inode: int
    ) -> str:
        """ "take" it in, "skip" this version for good, or look again "later"."""
        folder = rt.config
        verdict = classify(
            PurePosixPath(rel),
            size=size,
            include=folder.include,
            exclude=folder.exclude,
            min_size_bytes=folder.min_size_bytes,
            ready_marker=folder.ready_marker,
        )
        if verdict is Verdict.NOT_VIDEO:
            if rel not in rt.not_video_logged:
                rt.not_video_logged.add(rel)
                log.info("intake.not_a_video_name", folder=folder.name, file=rel)
            return "skip"
        if verdict is not Verdict.CANDIDATE:
            return "skip"  # its size or name must change before it counts
        key = (folder.name, rel)
        if self.skip_versions.get(key) == (size, mtime_ns, inode):
            return "skip"
        if key in self.intake_futures:
            return "later"
        assert self.journal is not None
        if self.journal.known_version(folder.name, rel, size, mtime_ns, inode) is not None:
            return "skip"
        latest = self.journal.latest_for_path(folder.name, rel)
        if latest is None or latest.is_terminal or latest.upload_file_path is None:
            return "take"
        # Uploaded or rendering already: a change now is a new version, taken once that job
        # has finished with the file.
        return "later"

    def _schedule_stats(self, now: float) -> None:
        pending: dict[str, list[str]] = {}
        for folder, rel in self.settle.pending():
            pending.setdefault(folder, []).append(rel)
        for name, rels in pending.items():
            rt = self.folders.get(name)
            if rt is None or rt.outage or name in self.stat_futures:
                continue
            root = Path(str(rt.config.inbox))
            self.stat_futures[name] = self.pool.submit(self._stat_many, root, rels)

    def _stat_many(self, root: Path, rels: list[str]) -> list[tuple[str, os.stat_result | None]]:
        """Runs in a worker: lstat each pending file (None when it is gone)."""
        return [(rel, self.fs.stat(root / rel)) for rel in rels]

    def _collect_stats(self, now: float) -> None:
        for name, fut in list(self.stat_futures.items()):
            if not fut.done():
                continue
            del self.stat_futures[name]
            try:
                results = fut.result()
            except Exception as exc:
                log.warning("intake.stat_failed", folder=name, error=str(exc))
                continue
            rt = self.folders.get(name)
            if rt is None or rt.outage:
                continue
            for rel, st in results:
                key = (name, rel)
                if st is None:
                    self.settle.forget(key)
                    continue
                if not self._wanted(rt, rel, st.st_size, st.st_mtime_ns, st.st_ino):
                    self.settle.forget(key)
                    continue
                self.settle.observe(key, Observation(st.st_size, st.st_mtime_ns, st.st_ino), now)

    def _schedule_intakes(self, now: float) -> None:
        for key in list(self.settle.pending()):
            name, rel = key
            rt = self.folders.get(name)
            if rt is None or rt.outage or key in self.intake_futures:
                continue
            if not self.settle.ready(key, now, rt.config.settle_seconds):
                continue
            if rt.config.ready_marker and not self._marker_ready(rt, rel):
                continue
            self.settle.forget(key)
            folder = self._effective_folder(rt.config, rel)
            assert self.journal is not None
            latest = self.journal.latest_for_path(name, rel)
            previous_done = latest is not None and latest.state is _S.DONE
            assert self.runner is not None
            self.intake_futures[key] = self.pool.submit(
                self.runner.intake,
                name,
                Path(str(folder.inbox)),
                rel,
                start_seconds=folder.start_seconds,
                max_seconds=folder.max_seconds,
                hash_now=previous_done,
            )

    def _marker_ready(self, rt: FolderRuntime, rel: str) -> bool:
        marker = ready_marker_path(PurePosixPath(rel), rt.config.ready_marker)
        return (Path(str(rt.config.inbox)) / marker).exists()

    def _effective_folder(self, folder: FolderConfig, rel: str) -> FolderConfig:
        """The folder's settings for `rel`: a first-level subfolder named after a preset uses
        that preset's style (the folder's own fps/trim keys still win)."""
        name = route_preset(
            PurePosixPath(rel),
            recursive=folder.recursive,
            preset_names=[p.name for p in self.config.styles.values()],
        )
        preset = self.config.preset(name) if name is not None else None
        return folder.with_preset(preset) if preset is not None else folder

    def _settings_for(self, folder: FolderConfig, rel: str) -> JobSettings:
        f = self._effective_folder(folder, rel)
        return JobSettings(
            style=f.style,
            style_slug=naming.style_slug(f.style.art_style),
            fps_resolution=f.fps_resolution,
            start_seconds=f.start_seconds,
            max_seconds=f.max_seconds,
            inbox=str(f.inbox),
            outbox=str(f.outbox),
            archive=str(f.archive),
            failed=str(f.failed),
            on_success=f.on_success,
        )

    def _collect_intakes(self) -> None:
        assert self.journal is not None
        for key, fut in list(self.intake_futures.items()):
            if not fut.done():
                continue
            del self.intake_futures[key]
            try:
                result = fut.result()
            except Exception as exc:
                log.warning("intake.failed", folder=key[0], file=key[1], error=str(exc))
                continue
            self._apply_intake(result)

    def _apply_intake(self, r: IntakeResult) -> None:
        assert self.journal is not None
        rt = self.folders.get(r.folder)
        if rt is None or r.vanished:
            return
        if r.busy:
            key = (r.folder, r.rel_path)
            now_mono = self.monotonic()
            self.settle.observe(key, Observation(r.size, r.mtime_ns, r.inode), now_mono)
            self.settle.touched(key, now_mono)
            log.debug("intake.still_open_for_writing", folder=r.folder, file=r.rel_path)
            return
        folder = rt.config
        log_ctx = {"folder": r.folder, "file": r.rel_path}
        if r.sha256 is not None:
            done = self.journal.find_done_version(r.folder, r.rel_path, r.size, r.sha256)
            if done is not None:
                self.skip_versions[(r.folder, r.rel_path)] = (r.size, r.mtime_ns, r.inode)
                log.info(
                    "intake.already_done",
                    **log_ctx,
                    job_id=done.id,
                    output=[o.final_path for o in done.outputs],
                    hint=f"mh-watchd retry {done.id} renders it again",
                )
                return
        latest = self.journal.latest_for_path(r.folder, r.rel_path)
        now = self.clock()
        if latest is not None and not latest.is_terminal and latest.upload_file_path is None:
            # The same path came back changed before its upload: refresh that job's facts.
            assert latest.id is not None
            if latest.id in self.in_flight:
                return
            updated = dataclasses.replace(
                latest,
                size=r.size,
                mtime_ns=r.mtime_ns,
                inode=r.inode,
                sha256=r.sha256,
                duration_seconds=r.duration_seconds,
                fps=r.fps,
                start_seconds=r.start_seconds,
                end_seconds=r.end_seconds,
                updated_at=now,
            )
            self.jobs[latest.id] = self._save(updated, "job.source_refreshed", {})
            return
        settings = self._settings_for(folder, r.rel_path)
        job = Job(
            folder=r.folder,
            rel_path=r.rel_path,
            size=r.size,
            mtime_ns=r.mtime_ns,
            inode=r.inode,
            settings=settings,
            sha256=r.sha256,
            duration_seconds=r.duration_seconds,
            fps=r.fps,
            start_seconds=r.start_seconds,
            end_seconds=r.end_seconds,
            service_name=naming.service_name(r.folder, PurePosixPath(r.rel_path)),
            created_at=now,
            updated_at=now,
        )
        if r.error is None:
            assert r.start_seconds is not None and r.end_seconds is not None
            estimate = estimate_credits(r.end_seconds - r.start_seconds, settings.fps_resolution)
            job = dataclasses.replace(job, credits_estimate=estimate)
        job = self.journal.insert(job, event="job.queued", detail={"size": r.size})
        assert job.id is not None
        self.jobs[job.id] = job
        log.info("job.queued", **log_ctx, job_id=job.id, estimate=job.credits_estimate)
        limit = self.config.daemon.daily_credit_limit
        if r.error is not None:
            self._fail(job, r.error, request="local probe (nothing was sent)", service=None)
        elif limit and job.credits_estimate and job.credits_estimate > limit:
            self._fail(
                job,
                f"over_daily_limit: this clip alone is estimated at {job.credits_estimate} "
                f"credits, more than daemon.daily_credit_limit = {limit}",
                request="local estimate (nothing was sent)",
                service=None,
            )

    # ------------------------------------------------------------------ jobs
    def _save(self, job: Job, event: str, detail: Mapping[str, Any] | None = None) -> Job:
        assert self.journal is not None
        saved = self.journal.save(job, event=event, detail=dict(detail or {}))
        assert saved.id is not None
        if saved.is_terminal:
            self.jobs.pop(saved.id, None)
        else:
            self.jobs[saved.id] = saved
        return saved

    def _move(self, job: Job, state: JobState, event: str, **changes: Any) -> Job:
        detail = changes.pop("_detail", {})
        new = transition(job, state, updated_at=self.clock(), **changes)
        saved = self._save(new, event, detail)
        log.info(
            event,
            folder=job.folder,
            file=job.rel_path,
            job_id=job.id,
            project_id=saved.project_id,
            state=saved.state.value,
            **({"hold_reason": saved.hold_reason.value} if saved.hold_reason else {}),
            **detail,
        )
        return saved

    def _hold(self, job: Job, reason: HoldReason, why: str, **changes: Any) -> Job:
        new = hold(job, reason, updated_at=self.clock(), last_error=why, **changes)
        saved = self._save(new, "job.held", {"hold_reason": reason.value, "why": why})
        log.warning(
            "job.held",
            folder=job.folder,
            file=job.rel_path,
            job_id=job.id,
            project_id=job.project_id,
            hold_reason=reason.value,
            why=why,
        )
        self._alert("held", saved, f"{reason.value}: {why}")
        return saved

    def _fail(self, job: Job, reason: str, *, request: str, service: str | None) -> None:
        """Commit `failed`, then file the original away in a worker."""
        failed = self._move(
            job, _S.FAILED, "job.failed", last_error=reason, _detail={"why": reason}
        )
        self._alert("failed", failed, reason)
        assert self.runner is not None
        runner = self.runner

        def file_it() -> None:
            try:
                path = runner.file_failure(failed, reason, request=request, service=service)
            except Exception as exc:
                log.error("job.failed_filing_error", job_id=failed.id, error=str(exc))
                return
            assert self.journal is not None
            current = self.journal.get(failed.id or 0)
            if current is not None and current.state is _S.FAILED:
                self.journal.save(
                    dataclasses.replace(current, failed_path=path, updated_at=self.clock()),
                    event="job.original_filed",
                    detail={"path": path},
                )

        self.misc_futures.append(self.pool.submit(file_it))

    def _due(self, job: Job, now: float) -> bool:
        return job.due_at is None or job.due_at <= now

    def _schedule_jobs(self) -> None:
        now = self.clock()
        uploads = sum(1 for f in self.in_flight.values() if f.step == "upload")
        active = sum(1 for j in self.jobs.values() if j.state in ACTIVE_RENDER_STATES)
        waiting_uploaded = sum(
            1 for j in self.jobs.values() if j.state is _S.QUEUED and j.upload_file_path is not None
        )
        limit = self.config.daemon.daily_credit_limit
        spent_today: int | None = None
        for job in sorted(self.jobs.values(), key=lambda j: j.id or 0):
            assert job.id is not None
            if job.id in self.in_flight or not self._due(job, now):
                continue
            rt = self.folders.get(job.folder)
            state = job.state
            if state is _S.HELD:
                self._consider_release(job, rt, now)
                continue
            if state in (_S.QUEUED, _S.UPLOADING):
                if rt is None and job.project_id is None:
                    continue  # the folder was removed by a reload: not created, so dropped
                if rt is not None and rt.outage:
                    self._hold(job, HoldReason.OUTAGE, f"inbox {rt.config.inbox}: {rt.outage}")
                    continue
                if self.account_block is not None:
                    self._hold(job, self.account_block, "the account needs attention first")
                    continue
                fresh_upload = job.upload_file_path is not None and (
                    job.uploaded_at is not None
                    and now - job.uploaded_at < backoff.UPLOAD_REUSE_SECONDS
                )
                if fresh_upload and state is _S.QUEUED:
                    if active >= self.config.daemon.max_active_renders:
                        continue
                    estimate = job.credits_estimate or 0
                    if limit:
                        if spent_today is None:
                            assert self.journal is not None
                            spent_today = self.journal.credits_spent(local_day(now))
                        if spent_today + estimate > limit:
                            self._hold(
                                job,
                                HoldReason.DAILY_LIMIT,
                                f"spent today {spent_today} + estimate {estimate} > limit {limit}",
                            )
                            continue
                        spent_today += estimate
                    job = self._move(
                        job,
                        _S.SUBMITTING,
                        "job.submitting",
                        credits_day=local_day(now),
                        attempts=job.attempts,
                        due_at=None,
                    )
                    active += 1
                    self._start(job, "create")
                    continue
                if uploads >= self.config.daemon.max_parallel_uploads:
                    continue
                if waiting_uploaded >= self.config.daemon.max_active_renders:
                    continue  # enough uploaded and waiting for a render slot
                if state is _S.QUEUED:
                    job = self._move(
                        job, _S.UPLOADING, "job.uploading", upload_file_path=None, due_at=None
                    )
                uploads += 1
                self._start(job, "upload")
            elif state is _S.SUBMITTING:
                if job.project_id is None:
                    self._start(job, "create")  # only reached after a refused/not-sent retry
            elif state is _S.RENDERING:
                timeout = self.config.api.render_timeout_minutes * 60
                if job.render_started_at and now - job.render_started_at > timeout:
                    self._hold(
                        job,
                        HoldReason.RENDER_OVERDUE,
                        f"still rendering after {self.config.api.render_timeout_minutes:g} min",
                        due_at=now + backoff.OVERDUE_POLL_SECONDS,
                    )
                    continue
                self._start(job, "poll")
            elif state is _S.DOWNLOADING:
                if rt is not None and rt.output_problem:
                    self._hold(job, HoldReason.OUTPUT_UNAVAILABLE, rt.output_problem)
                    continue
                self._start(job, "download")
            elif state is _S.DELIVERING:
                if rt is not None and rt.outage:
                    self._hold(job, HoldReason.OUTAGE, f"inbox {rt.config.inbox}: {rt.outage}")
                    continue
                if rt is not None and rt.output_problem:
                    self._hold(job, HoldReason.OUTPUT_UNAVAILABLE, rt.output_problem)
                    continue
                self._start(job, "deliver")

    def _consider_release(self, job: Job, rt: FolderRuntime | None, now: float) -> None:
        reason = job.hold_reason
        if reason is HoldReason.OUTAGE:
            if rt is not None and not rt.outage:
                self._release(job)
        elif reason is HoldReason.OUTPUT_UNAVAILABLE:
            if rt is None or not rt.output_problem:
                self._release(job)
        elif reason in (HoldReason.AUTH, HoldReason.CREDITS):
            if self.account_block is None:
                self._release(job)
        elif reason is HoldReason.DAILY_LIMIT:
            limit = self.config.daemon.daily_credit_limit
            assert self.journal is not None
            spent = self.journal.credits_spent(local_day(now))
            if not limit or spent + (job.credits_estimate or 0) <= limit:
                self._release(job)
        elif reason is HoldReason.RENDER_OVERDUE and job.project_id is not None:
            self._start(job, "poll")

    def _release(self, job: Job) -> Job:
        new = release(job, updated_at=self.clock(), due_at=None, attempts=0)
        saved = self._save(
            new, "job.released", {"was": job.hold_reason.value if job.hold_reason else None}
        )
        log.info(
            "job.released",
            folder=job.folder,
            file=job.rel_path,
            job_id=job.id,
            was=job.hold_reason.value if job.hold_reason else None,
            state=saved.state.value,
        )
        return saved

    def _start(self, job: Job, step: str) -> None:
        assert job.id is not None and self.runner is not None
        runner = self.runner
        job_id = job.id

        def progress(done: int, total: int) -> None:
            if self.stopping:
                raise Aborted("the daemon is stopping")
            current = self.jobs.get(job_id)
            if current is not None and total:
                self.jobs[job_id] = dataclasses.replace(current, progress=done / total)

        fut: Future[StepOutcome]
        if step == "upload":
            fut = self.transfer_pool.submit(runner.upload, job, progress)
        elif step == "download":
            fut = self.transfer_pool.submit(runner.download, job, progress)
        elif step == "create":
            fut = self.pool.submit(runner.create, job)
        elif step == "poll":
            fut = self.pool.submit(runner.poll, job)
        elif step == "deliver":
            fut = self.pool.submit(runner.deliver, job)
        else:  # pragma: no cover - a programming error
            raise ValueError(step)
        self.in_flight[job_id] = InFlight(job_id, step, fut)

    def _collect_outcomes(self) -> None:
        for job_id, flight in list(self.in_flight.items()):
            if not flight.future.done():
                continue
            del self.in_flight[job_id]
            try:
                outcome = flight.future.result()
            except Exception as exc:  # a bug in a step: fail that job, never the loop
                log.exception("job.step_crashed", job_id=job_id, step=flight.step)
                outcome = StepOutcome(job_id, flight.step, {}, error=exc)
            assert self.journal is not None
            job = self.journal.get(job_id)
            if job is None:
                continue
            if isinstance(outcome.error, Aborted):
                continue  # shutting down: the journal's state resumes it at the next start
            try:
                self._apply_outcome(job, outcome)
            except Exception:
                log.exception("job.outcome_failed", job_id=job_id, step=outcome.step)

    def _apply_outcome(self, job: Job, outcome: StepOutcome) -> None:
        now = self.clock()
        if outcome.error is not None:
            self._apply_error(job, outcome)
            return
        step = outcome.step
        if step == "upload":
            self._move(job, _S.QUEUED, "job.uploaded", attempts=0, **outcome.changes)
            self.metrics.bytes_uploaded(job.folder, job.size)
        elif step == "create":
            job = self._move(
                job,
                _S.RENDERING,
                "job.submitted",
                attempts=0,
                due_at=now + self.config.api.poll_interval_seconds,
                **outcome.changes,
            )
            self.metrics.credits_charged(job.folder, job.credits_charged or 0)
            self._book(job, job.credits_charged)
            if self.account_block is not None:
                self.account_block = None
        elif step == "poll":
            project = outcome.project
            assert project is not None
            if project.is_terminal:
                # The final word on the cost: corrections and refunds included.
                self._book(job, project.credits_charged)
            if job.state is _S.HELD and project.status == "complete":
                job = self._release(job)
            if project.status == "complete":
                self._move(job, _S.DOWNLOADING, "job.rendered", attempts=0, **outcome.changes)
            elif project.status in ("error", "canceled"):
                err = project.error
                what = (
                    f"the render ended in {project.status}"
                    + (f": {err.code}: {err.message}" if err else "")
                    + (" (canceled in the web app)" if project.status == "canceled" else "")
                )
                job = dataclasses.replace(job, **outcome.changes)
                if job.state is _S.HELD:
                    job = self._release(job)
                self._fail(
                    job,
                    what,
                    request=f"GET /v1/video-projects/{job.project_id}",
                    service=err.message if err else project.status,
                )
            else:
                interval = self.config.api.poll_interval_seconds
                if job.state is _S.HELD:
                    interval = backoff.OVERDUE_POLL_SECONDS
                    if job.render_started_at and (
                        now - job.render_started_at
                        > backoff.OVERDUE_GIVE_UP_SECONDS
                        + self.config.api.render_timeout_minutes * 60
                    ):
                        interval = backoff.OVERDUE_GIVE_UP_SECONDS  # effectively stop polling
                changed = job.render_status != project.status or job.attempts
                job = dataclasses.replace(job, attempts=0, due_at=now + interval, **outcome.changes)
                if changed:
                    job = self._save(
                        dataclasses.replace(job, updated_at=now),
                        "job.render_progress",
                        {"status": project.status},
                    )
                else:
                    self.jobs[job.id or 0] = job
        elif step == "download":
            self._move(job, _S.DELIVERING, "job.downloaded", attempts=0, **outcome.changes)
            size = sum(o.size or 0 for o in outcome.changes.get("outputs", ()))
            self.metrics.bytes_downloaded(job.folder, size)
        elif step == "deliver":
            done = self._move(job, _S.DONE, "job.done", **outcome.changes)
            self._alert("done", done, "delivered", output=[o.final_path for o in done.outputs])

    def _book(self, job: Job, credits: int | None) -> None:
        """Book a project's charge to the day its create was sent (for daily_credit_limit)."""
        assert self.journal is not None and job.id is not None
        if job.project_id is None or credits is None:
            return
        day = job.credits_day or local_day(self.clock())
        self.journal.book_charge(
            job_id=job.id, project_id=job.project_id, day=day, credits=credits, at=self.clock()
        )

    def _apply_error(self, job: Job, outcome: StepOutcome) -> None:
        error = outcome.error
        assert error is not None
        attempts = job.attempts + 1
        d = dispose(error, step=outcome.step, attempts=attempts)
        now = self.clock()
        ctx = {"step": outcome.step, "error": str(error), "attempts": attempts}
        if d.action is Action.RETRY:
            log.warning("job.retry_scheduled", job_id=job.id, wait_seconds=d.wait_seconds, **ctx)
            changes: dict[str, Any] = {
                "attempts": attempts,
                "last_error": str(error),
                "due_at": now + d.wait_seconds,
            }
            if outcome.step == "poll":
                interval = backoff.poll_interval_seconds(
                    self.config.api.poll_interval_seconds, attempts
                )
                changes["due_at"] = now + interval
                self.jobs[job.id or 0] = dataclasses.replace(job, **changes)
                return
            if job.state in (_S.UPLOADING, _S.SUBMITTING):
                # Nothing was created: the create's estimate is no longer booked to today.
                self._move(job, _S.QUEUED, "job.retry_scheduled", credits_day=None, **changes)
            else:
                self._save(
                    dataclasses.replace(job, updated_at=now, **changes), "job.retry_scheduled", ctx
                )
        elif d.action is Action.HOLD:
            assert d.hold_reason is not None
            if d.hold_reason in (HoldReason.AUTH, HoldReason.CREDITS):
                self.account_block = d.hold_reason
                self.last_account_probe = self.monotonic()
            changes = {}
            if (
                job.state in (_S.UPLOADING, _S.SUBMITTING)
                and d.hold_reason is not HoldReason.AMBIGUOUS_CREATE
            ):
                # Resume from queued: a fresh upload URL and a fresh create decision.
                job = self._move(job, _S.QUEUED, "job.requeued", attempts=0, credits_day=None)
            self._hold(job, d.hold_reason, d.reason, **changes)
        elif d.action is Action.RESTART:
            self.skip_versions.pop((job.folder, job.rel_path), None)
            self._move(
                job,
                _S.FAILED,
                "job.superseded",
                last_error=f"superseded: {d.reason}; taken again as a new version",
            )
        else:
            service = getattr(error, "service_message", None)
            request = {
                "upload": "PUT upload URL",
                "create": "POST /v1/video-to-video",
                "poll": f"GET /v1/video-projects/{job.project_id}",
                "download": "GET download URL",
                "deliver": "delivery to the outbox",
            }.get(outcome.step, outcome.step)
            self._fail(job, d.reason, request=request, service=service)

    # ------------------------------------------------------------------ account
    def _schedule_account_probe(self, now: float) -> None:
        if self.account_future is not None:
            return
        held = [
            j for j in self.jobs.values() if j.hold_reason in (HoldReason.AUTH, HoldReason.CREDITS)
        ]
        if self.account_block is None and not held:
            return
        if not self.force_recheck and now - self.last_account_probe < self.account_probe_seconds:
            return
        self.last_account_probe = now

        def probe() -> tuple[str, int | None]:
            try:
                account = self._client().get_account()
            except AuthError:
                return "auth", None
            except CreditsError:
                return "credits", None
            except TransientApiError as exc:
                return f"unreachable: {exc}", None
            return "ok", account.credits

        self.account_future = self.pool.submit(probe)

    def _collect_account_probe(self) -> None:
        fut = self.account_future
        if fut is None or not fut.done():
            return
        self.account_future = None
        try:
            result, credits = fut.result()
        except Exception as exc:
            log.warning("account.probe_failed", error=str(exc))
            return
        if result == "auth":
            self.account_block = HoldReason.AUTH
            log.warning("account.key_refused", hint="fix the API key, then reload (SIGHUP)")
            return
        if result != "ok":
            log.info("account.probe_inconclusive", result=result)
            return
        held_credits = sorted(
            (j for j in self.jobs.values() if j.hold_reason is HoldReason.CREDITS),
            key=lambda j: j.id or 0,
        )
        for job in list(self.jobs.values()):
            if job.hold_reason is HoldReason.AUTH:
                self._release(job)
        balance = credits or 0
        blocked = False
        for job in held_credits:
            need = job.credits_estimate or 0
            if balance >= need and not blocked:
                balance -= need
                self._release(job)
            else:
                blocked = True
        self.account_block = HoldReason.CREDITS if blocked else None
        log.info("account.checked", credits=credits, still_short=blocked)

    # ------------------------------------------------------------------ requests
    def _handle_requests(self, now_mono: float) -> None:
        if now_mono - self.last_request_check < REQUEST_CHECK_SECONDS:
            return
        self.last_request_check = now_mono
        self.force_recheck = False
        assert self.journal is not None
        for request in self.journal.pending_requests():
            result = self._handle_request(request.kind, request.job_id)
            self.journal.finish_request(request.id, at=self.clock(), result=result)
            log.info("request.handled", kind=request.kind, job_id=request.job_id, result=result)

    def _handle_request(self, kind: str, job_id: int | None) -> str:
        assert self.journal is not None and self.runner is not None
        if kind != "retry" or job_id is None:
            return f"unknown request {kind}"
        job = self.journal.get(job_id)
        if job is None:
            return "unknown job"
        if job_id in self.in_flight:
            return "busy; try again in a moment"
        now = self.clock()
        reset: dict[str, Any] = dict(attempts=0, due_at=None, last_error=None, updated_at=now)
        if job.state is _S.FAILED:
            restored = self.runner.restore_failed(job)
            rel = restored or job.rel_path
            st = self.fs.stat(Path(job.settings.inbox) / rel)
            if st is None:
                return "the original is not in the failed folder or the inbox any more"
            self._save(
                self._fresh_version(job, st, rel_path=rel, failed_path=None),
                "job.retried",
                {"from": "failed"},
            )
            return "requeued"
        if job.state is _S.DONE:
            st = self.fs.stat(Path(job.settings.inbox) / job.rel_path)
            if st is None:
                return "the original is no longer in the inbox"
            new = self._fresh_version(job, st, archive_path=None, original_left=False)
            self.skip_versions.pop((job.folder, job.rel_path), None)
            self._save(new, "job.retried", {"from": "done"})
            return "requeued"
        if job.state is _S.HELD:
            if job.hold_reason in (HoldReason.AMBIGUOUS_CREATE, HoldReason.RENDER_OVERDUE):
                if job.project_id is not None:
                    self._book(job, job.credits_final or job.credits_charged)
                elif job.credits_day is not None:
                    # The lost create may have been charged: keep its estimate booked.
                    self.journal.book_charge(
                        job_id=job_id,
                        project_id=f"unanswered-create:{job_id}:{now:.0f}",
                        day=job.credits_day,
                        credits=job.credits_estimate or 0,
                        at=now,
                    )
                new = transition(
                    job,
                    _S.QUEUED,
                    project_id=None,
                    render_started_at=None,
                    render_status=None,
                    credits_charged=None,
                    credits_final=None,
                    credits_day=None,
                    **reset,
                )
                self._save(
                    new, "job.retried", {"from": job.hold_reason.value if job.hold_reason else ""}
                )
                return "requeued for a new create"
            self.force_recheck = True
            self.last_account_probe = -1e9
            for rt in self.folders.values():
                rt.last_check = -1e9
            self._save(dataclasses.replace(job, due_at=None, updated_at=now), "job.recheck", {})
            return "re-checking now"
        return f"not retryable in state {job.state.value}"

    def _fresh_version(self, job: Job, st: os.stat_result, **changes: Any) -> Job:
        """`job` back in the queue for a new render of the file now at its path.

        Its earlier project stays booked in the journal's charges; the record starts over.
        """
        return transition(
            job,
            _S.QUEUED,
            size=st.st_size,
            mtime_ns=st.st_mtime_ns,
            inode=st.st_ino,
            sha256=None,
            project_id=None,
            upload_file_path=None,
            uploaded_at=None,
            credits_charged=None,
            credits_final=None,
            credits_day=None,
            render_started_at=None,
            render_status=None,
            outputs=(),
            attempts=0,
            due_at=None,
            last_error=None,
            updated_at=self.clock(),
            **changes,
        )

    # ------------------------------------------------------------------ reporting
    def health(self) -> HealthReport:
        """For /healthz: the loop ticked recently and the journal is writable."""
        reasons = []
        age = self.monotonic() - self.last_tick_mono
        if age > max(2 * TICK_SECONDS, 5.0):
            reasons.append(f"main loop last ticked {age:.1f} s ago")
        if self.journal is None or not self.journal.writable_check():
            reasons.append("journal is not writable")
        for rt in self.folders.values():
            if rt.watcher is None and not rt.outage:
                reasons.append(f"folder {rt.config.name} has no watcher")
        outages = tuple(
            f"{rt.config.name}: {rt.outage}" for rt in self.folders.values() if rt.outage
        )
        return HealthReport(
            healthy=not reasons,
            reasons=tuple(reasons),
            outages=outages,
            details={"jobs_unfinished": len(self.jobs), "version": __version__},
        )

    def _store_progress(self, now: float) -> None:
        """Every few seconds, write transfer progress for `status` (not an event per chunk)."""
        if now - self.last_progress_write < PROGRESS_WRITE_SECONDS or self.journal is None:
            return
        self.last_progress_write = now
        for job_id, flight in self.in_flight.items():
            job = self.jobs.get(job_id)
            if flight.step not in ("upload", "download") or job is None:
                continue
            if self.stored_progress.get(job_id) != round(job.progress, 3):
                self.stored_progress[job_id] = round(job.progress, 3)
                self.journal.set_progress(job_id, job.progress)

    def _report(self, now: float) -> None:
        counts: dict[str, int] = {}
        for job in self.jobs.values():
            counts[job.state.value] = counts.get(job.state.value, 0) + 1
        line = ", ".join(f"{k} {v}" for k, v in sorted(counts.items())) or "idle"
        outages = [n for n, rt in self.folders.items() if rt.outage]
        if outages:
            line += f"; outage: {', '.join(outages)}"
        if line != self.last_status_line:
            self.last_status_line = line
            self.notify.status(line)
            if self.journal is not None:
                self.metrics.set_jobs(self.journal.counts_by_folder_and_state())
        interval = self.notify.watchdog_interval_seconds()
        if interval is not None and now - self.last_watchdog >= interval:
            self.last_watchdog = now
            report = self.health()
            if report.healthy:
                self.notify.watchdog()
            else:
                # No ping: systemd restarts a daemon that cannot write its journal.
                log.error("daemon.unhealthy", reasons=list(report.reasons))

    def _alert(self, event: str, job: Job | None, reason: str, **fields: Any) -> None:
        if self.notifier is None:
            return
        self.notifier.notify(
            event,
            folder=fields.pop("folder", job.folder if job else None),
            file=job.rel_path if job else None,
            job=job.id if job else None,
            reason=reason,
            **fields,
        )

    # ------------------------------------------------------------------ reload & stop
    def reload(self) -> None:
        """SIGHUP: re-read the config and the token; keep the old config when the new is bad."""
        self.notify.reloading()
        try:
            if self.config_path is None:
                raise StateDirError("no config path to reload from")
            new = config_file.load(self.config_path)
        except Exception as exc:
            problems = getattr(exc, "problems", [str(exc)])
            log.error("config.reload_rejected", problems=problems, hint="the old config stays")
            self.notify.ready()
            return
        for key in ("state_dir", "http_listen"):
            if getattr(new.daemon, key) != getattr(self.config.daemon, key):
                log.warning("config.restart_needed", key=f"daemon.{key}")
        if new.api.base_url != self.config.api.base_url:
            log.warning("config.restart_needed", key="api.base_url")
            new = dataclasses.replace(
                new, api=dataclasses.replace(new.api, base_url=self.config.api.base_url)
            )
        try:
            token = config_file.read_token(new.api, self.environ)
        except Exception as exc:
            log.error("config.token_unreadable", error=str(exc))
            token = self.token
        if token != self.token:
            self.token = token
            if token:
                logs.add_secret(token)
            if self.account_block is HoldReason.AUTH:
                self.account_block = None
                self.last_account_probe = -1e9
            log.info("config.token_changed")
        old_names = set(self.folders)
        new_names = {f.name for f in new.folders}
        self.config = new
        for name in old_names - new_names:
            rt = self.folders.pop(name)
            if rt.watcher is not None:
                rt.watcher.stop()
            log.info("config.folder_removed", folder=name)
        for folder in new.folders:
            existing = self.folders.get(folder.name)
            if existing is None:
                added = FolderRuntime(config=folder)
                self.folders[folder.name] = added
                self._start_watcher(added)
                log.info("config.folder_added", folder=folder.name)
                continue
            rt = existing
            if rt.config != folder:
                rt.config = folder
                self._start_watcher(rt)
                rt.last_scan_mono = None
                log.info("config.folder_changed", folder=folder.name)
        # Jobs of removed folders that were never created are dropped (files untouched).
        for job in list(self.jobs.values()):
            if (
                job.folder not in new_names
                and job.project_id is None
                and job.id not in self.in_flight
            ):
                self.jobs.pop(job.id or 0, None)
        self.settle = SettleTracker(new.daemon.settle_seconds)
        self._write_folder_statuses()
        log.info("config.reloaded", folders=sorted(new_names))
        self.notify.ready()

    def close_pools(self) -> None:
        """Release the worker pools of a daemon that never started."""
        self.pool.shutdown(wait=False, cancel_futures=True)
        self.transfer_pool.shutdown(wait=False, cancel_futures=True)

    def shutdown(self) -> None:
        """Ordered stop: no new work, transfers aborted at a safe point, journal closed."""
        self.stopping = True
        self.notify.stopping()
        log.info("daemon.stopping", in_flight=len(self.in_flight))
        for rt in self.folders.values():
            if rt.watcher is not None:
                with contextlib.suppress(Exception):
                    rt.watcher.stop()
                rt.watcher = None
        deadline = self.monotonic() + STOP_GRACE_SECONDS
        while self.in_flight and self.monotonic() < deadline:
            self._collect_outcomes()
            time.sleep(0.05)
        for fut in self.misc_futures:
            with contextlib.suppress(Exception):
                fut.result(timeout=max(0.0, deadline - self.monotonic()))
        self.pool.shutdown(wait=False, cancel_futures=True)
        self.transfer_pool.shutdown(wait=False, cancel_futures=True)
        if self.status_server is not None:
            self.status_server.stop()
        if self.notifier is not None:
            self.notifier.stop()
        if self.notify_http is not None:
            self.notify_http.close()
        if self.http is not None:
            self.http.close()
        if self.journal is not None:
            self._write_folder_statuses()
            self.journal.close()
            self.journal = None
        log.info("daemon.stopped", unfinished_steps=len(self.in_flight))


__all__ = ["Daemon", "local_day"]
