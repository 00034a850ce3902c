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
import stat
import time
from collections.abc import Callable, Mapping
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path, PurePosixPath
from types import FrameType
from typing import Any

import httpx
import structlog

from mh_watchd import __version__
from mh_watchd.adapters import config_file, logs
from mh_watchd.adapters.fs import FileSystem, LocalFileSystem
from mh_watchd.adapters.http_status import HealthReport, StatusServer
from mh_watchd.adapters.journal import Journal, JournalConflict
from mh_watchd.adapters.magic_hour import MagicHourClient, RequestRecord, build_http_client
from mh_watchd.adapters.metrics import Metrics
from mh_watchd.adapters.notifier import EventNotifier
from mh_watchd.adapters.sdnotify import SystemdNotifier
from mh_watchd.adapters.watcher import FsEvent, NativeWatcher, Poller, count_dirs, scan_tree
from mh_watchd.core import backoff, naming
from mh_watchd.core.api import Project, estimate_credits
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
from mh_watchd.core.outcomes import Kind, Move, PollFacts, Step, next_move
from mh_watchd.core.tracker import IntakeTracker
from mh_watchd.runner import IntakeResult, Runner, StepOutcome

log = structlog.get_logger("mh_watchd")

TICK_SECONDS = 0.25
FOLDER_CHECK_SECONDS = 5.0
FOLDER_CHECK_DEADLINE_SECONDS = 30.0
SETTLE_STAT_SECONDS = 0.5
REQUEST_CHECK_SECONDS = 1.0
PROGRESS_WRITE_SECONDS = 2.0
# A journal that refuses writes is tried again after this long, doubling up to the cap.
JOURNAL_RETRY_SECONDS = 0.5
JOURNAL_RETRY_MAX_SECONDS = 10.0
_S = JobState


_NO_ANSWER = f"the folder did not answer within {FOLDER_CHECK_DEADLINE_SECONDS:g} s"


class Aborted(Exception):
    """A transfer stopped because the daemon is shutting down; the journal resumes it."""


FOLDER_IO_THREADS = 4


@dataclass(frozen=True)
class FolderCheck:
    """What one folder check found; None everywhere when the folder is fine."""

    outage: str | None = None  # the inbox is missing, unmounted or did not answer
    output_problem: str | None = None  # the outbox or archive cannot take files
    failed_problem: str | None = None  # the failed folder cannot take files


@dataclass
class FolderRuntime:
    """What the loop knows about one configured folder right now.

    Each folder has executors of its own, so a share that hangs stalls only its folder: the
    `checker` runs folder checks alone (a queue of slow transfers never delays a check past its
    deadline), `io` runs everything else that touches the folder's share.
    """

    config: FolderConfig
    checker: ThreadPoolExecutor
    io: ThreadPoolExecutor
    outage: str | None = None
    watch_mode: str = "polling"
    watch_reason: str = "not started"
    last_scan_mono: float | None = None
    last_scan_wall: float | None = None
    scan_future: Future[list[tuple[str, int, int, int]]] | None = None
    stat_future: Future[list[tuple[str, os.stat_result | None, bool]]] | None = None
    check_future: Future[FolderCheck] | None = None
    check_started: float = 0.0
    last_check: float = -1e9
    output_problem: str | None = None  # outbox or archive unusable: deliveries wait
    failed_problem: str | None = None  # failed folder unusable: filing failures waits
    watcher: NativeWatcher | Poller | None = None
    watcher_future: Future[tuple[NativeWatcher | Poller | None, str, str]] | None = None
    watcher_wanted: bool = False  # a (re)start was asked for while one was under way

    @classmethod
    def create(cls, config: FolderConfig) -> FolderRuntime:
        return cls(
            config=config,
            checker=ThreadPoolExecutor(1, thread_name_prefix=f"mh-check-{config.name}"),
            io=ThreadPoolExecutor(FOLDER_IO_THREADS, thread_name_prefix=f"mh-io-{config.name}"),
        )

    def close(self) -> None:
        """Let go of the folder's threads; one stuck on a hung share is left to finish alone."""
        self.checker.shutdown(wait=False, cancel_futures=True)
        self.io.shutdown(wait=False, cancel_futures=True)


@dataclass
class InFlight:
    """A step running for a job. It stays here until its outcome is in the journal, so the job
    is never scheduled again while its last outcome is unrecorded (invariant 9)."""

    job_id: int
    step: str
    future: Future[StepOutcome]
    folder: str
    outcome: StepOutcome | None = None


def _poll_facts(project: Project | None) -> PollFacts | None:
    """What `next_move` needs to know of a polled project."""
    if project is None:
        return None
    err = project.error
    return PollFacts(project.status, err.code if err else None, err.message if err else None)


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
        fs: FileSystem | None = None,
        events: queue.Queue[FsEvent] | None = None,
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
        # Where watchers put what they see (a test hands in its own queue).
        self.events: queue.Queue[FsEvent] = events if events is not None else queue.Queue()
        self.tracker = IntakeTracker(config.daemon.settle_seconds)
        self.folders: dict[str, FolderRuntime] = {}
        self.jobs: dict[int, Job] = {}
        # When each job is next due, on the monotonic clock (the journal's due_at is wall
        # clock, for restarts; a clock step while running must not stall or rush a job).
        self.due_mono: dict[int, float] = {}
        self.in_flight: dict[int, InFlight] = {}
        self.intake_futures: dict[tuple[str, str], Future[IntakeResult]] = {}
        self.request_futures: dict[
            int, tuple[Future[tuple[str, os.stat_result | None]], Callable[..., str]]
        ] = {}
        self.misc_futures: list[Future[Any]] = []
        # Failed jobs whose original waits to be filed until the folder's shares answer:
        # folder -> job id -> (reason, request, service).
        self.deferred_failures: dict[str, dict[int, tuple[str, str, str | None]]] = {}
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
        self.journal_error: str | None = None
        self.journal_retry_mono = 0.0
        self.journal_retry_wait = JOURNAL_RETRY_SECONDS
        self.stopping = False
        self.reload_requested = False
        self.signal_count = 0
        # API round trips that touch no share: creates, polls, the account probe.
        self.api_pool = ThreadPoolExecutor(max_workers=8, thread_name_prefix="mh-api")
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
        unwritable = self.fs.check_writable_dir(self.state_dir, create=True)
        if unwritable in ("full", "over quota"):
            raise StateDirError(
                f"state_dir {self.state_dir} is {unwritable}; free space or fix the disk under "
                "daemon.state_dir, then start again"
            )
        if unwritable:
            raise StateDirError(
                f"state_dir {self.state_dir} is not writable by uid {os.getuid()} "
                f"({unwritable}); fix its owner or set daemon.state_dir elsewhere"
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
            self.folders[folder.name] = FolderRuntime.create(folder)
        self._check_all_folders_now()
        for runtime in self.folders.values():
            self._start_watcher(runtime)
        self._wait_for_watchers()
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

    def _wait_for_watchers(self) -> None:
        """READY=1 comes once each folder is watched or in outage: wait for the watchers to
        start, up to the folder check's deadline; a folder still starting then is in outage."""
        deadline = self.monotonic() + FOLDER_CHECK_DEADLINE_SECONDS
        for rt in self.folders.values():
            fut = rt.watcher_future
            if fut is None:
                continue
            with contextlib.suppress(Exception):
                fut.result(timeout=max(0.0, deadline - self.monotonic()))
        self._collect_watchers()
        for rt in self.folders.values():
            if rt.watcher_future is not None and rt.outage is None:
                self._apply_folder_check(rt, FolderCheck(outage=_NO_ANSWER))

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
                    hold(
                        job,
                        HoldReason.AMBIGUOUS_CREATE,
                        updated_at=now,
                        last_error=(
                            "the daemon stopped inside the create request; look for "
                            f"{job.service_name!r} in the web app, then run "
                            f"'mh-watchd retry {job.id}'"
                        ),
                    ),
                    "job.create_ambiguous",
                    {"why": "the daemon stopped inside the create request"},
                )
                self._alert("held", job, "ambiguous_create")
            self.jobs[job_id] = job
            self._set_due(job)
        # Failed jobs whose original was never filed (the failed folder was away when the
        # daemon stopped): filed once their folder's check passes.
        for job in self.journal.jobs(states=[_S.FAILED]):
            if job.failed_path is None and job.id is not None:
                self.deferred_failures.setdefault(job.folder, {})[job.id] = (
                    job.last_error or "failed",
                    "(recorded before a restart)",
                    None,
                )
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
        """(Re)start the folder's watcher in its own worker: choosing the mode reads the share
        (statfs, a directory count) and stopping a poller may wait for its thread."""
        if runtime.watcher_future is not None:
            runtime.watcher_wanted = True
            return
        old, runtime.watcher = runtime.watcher, None
        if runtime.outage:
            runtime.watch_mode = "polling"
            runtime.watch_reason = f"inbox in outage: {runtime.outage}"
            if old is not None:
                runtime.io.submit(old.stop)
            return
        runtime.watcher_future = runtime.io.submit(self._build_watcher, runtime.config, old)

    def _build_watcher(
        self, folder: FolderConfig, old: NativeWatcher | Poller | None
    ) -> tuple[NativeWatcher | Poller | None, str, str]:
        """Runs in the folder's worker: stop the old watcher, choose a mode, start a new one."""
        if old is not None:
            old.stop()
        root = Path(str(folder.inbox))
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
        log.info("watcher.started", folder=folder.name, mode=mode, reason=reason)
        return watcher, mode, reason

    def _collect_watchers(self) -> None:
        for rt in self.folders.values():
            fut = rt.watcher_future
            if fut is None or not fut.done():
                continue
            rt.watcher_future = None
            try:
                watcher, mode, reason = fut.result()
            except Exception as exc:
                log.warning("watcher.start_failed", folder=rt.config.name, error=str(exc))
                rt.watch_mode, rt.watch_reason = "polling", f"watcher failed to start: {exc}"
                rt.last_check = -1e9  # the folder check tells whether the inbox is there
                continue
            if rt.outage or rt.watcher_wanted:
                # Outage began, or the config changed, while it was starting: start over.
                rt.watcher_wanted = False
                rt.watcher = watcher
                self._start_watcher(rt)
                continue
            rt.watcher = watcher
            rt.watch_mode, rt.watch_reason = mode, reason
            rt.last_scan_mono = None  # list it now: events before the watch began were missed
            self._write_folder_statuses()

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
        """One pass of the loop: collect outcomes, then decide what starts next.

        While the journal refuses writes (invariant 9) nothing new starts anywhere: the loop
        only collects what finishes, keeps outcomes it could not record, and tries the journal
        again with backoff.
        """
        try:
            now_mono = self.monotonic()
            self.last_tick_mono = now_mono
            if self.reload_requested:
                self.reload_requested = False
                self.reload()
            self._drain_events(now_mono)
            self._collect_folder_checks(now_mono)
            self._collect_watchers()
            self._collect_scans(now_mono)
            self._collect_stats(now_mono)
            if self.journal_error is not None:
                if now_mono < self.journal_retry_mono:
                    self._report(now_mono)
                    return
                self._probe_journal()
            self._collect_outcomes()  # outcomes not yet journaled are written first
            self._collect_intakes()
            self._collect_account_probe()
            self._collect_requests()
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
        except StateDirError as exc:
            self._journal_failed(exc)
        except Exception:
            # The top of the loop: one unexpected error never stops the daemon.
            log.exception("daemon.tick_failed")

    def _journal_failed(self, exc: Exception) -> None:
        """The journal refused a write: start nothing new until it takes writes again."""
        now = self.monotonic()
        if self.journal_error is None:
            self.journal_retry_wait = JOURNAL_RETRY_SECONDS
            log.error(
                "journal.write_refused",
                error=str(exc),
                hint="free space or fix the disk under daemon.state_dir; work resumes by itself",
            )
        else:
            self.journal_retry_wait = min(self.journal_retry_wait * 2, JOURNAL_RETRY_MAX_SECONDS)
        self.journal_error = str(exc)
        self.journal_retry_mono = now + self.journal_retry_wait

    def _probe_journal(self) -> None:
        """Raise StateDirError while the journal still refuses writes; else clear the error."""
        assert self.journal is not None
        # A real commit: a rolled-back write can pass on a full disk that refuses commits.
        self.journal.set_meta("journal_probe", str(self.clock()))
        log.info("journal.writable_again", was=self.journal_error)
        self.journal_error = None
        # Files whose intake could not be recorded meanwhile were forgotten: list every inbox
        # now rather than at the next periodic rescan.
        for rt in self.folders.values():
            rt.last_scan_mono = None

    # ------------------------------------------------------------------ folders
    def _check_all_folders_now(self) -> None:
        futures = {
            name: rt.checker.submit(self._check_folder, rt.config)
            for name, rt in self.folders.items()
        }
        deadline = self.monotonic() + FOLDER_CHECK_DEADLINE_SECONDS
        for name, fut in futures.items():
            rt = self.folders[name]
            try:
                check = fut.result(timeout=max(0.0, deadline - self.monotonic()))
            except TimeoutError:
                check = FolderCheck(outage=_NO_ANSWER)
                rt.check_future, rt.check_started = fut, self.monotonic()
            except Exception as exc:
                check = FolderCheck(outage=f"check failed: {exc}")
            self._apply_folder_check(rt, check)
            rt.last_check = self.monotonic()

    def _check_folder(self, folder: FolderConfig) -> FolderCheck:
        """Runs in the folder's checker: what is wrong with the folder's inbox and roots.

        Roots are never created: a missing outbox, archive or failed folder is a share that is
        not mounted. Only the default archive and failed folders inside the inbox are made.
        """
        outage = self.fs.check_inbox(
            Path(str(folder.inbox)),
            require_mount=folder.require_mount,
            mount_marker=folder.mount_marker,
        )
        if outage is not None:
            return FolderCheck(outage=outage)
        roots = [("outbox", folder.outbox)]
        if folder.on_success == "archive":
            roots.append(("archive", folder.archive))
        output_problem = self._root_problem(folder, roots)
        failed_problem = self._root_problem(folder, [("failed", folder.failed)])
        return FolderCheck(output_problem=output_problem, failed_problem=failed_problem)

    def _root_problem(
        self, folder: FolderConfig, roots: list[tuple[str, PurePosixPath]]
    ) -> str | None:
        for label, path in roots:
            inside_inbox = path.is_relative_to(folder.inbox)
            problem = self.fs.check_writable_dir(Path(str(path)), create=inside_inbox)
            if problem:
                return f"{label} {path}: {problem}"
        return None

    def _schedule_folder_checks(self, now: float) -> None:
        for rt in self.folders.values():
            if rt.check_future is not None:
                if (
                    not rt.check_future.done()
                    and now - rt.check_started > FOLDER_CHECK_DEADLINE_SECONDS
                    and rt.outage is None
                ):
                    self._apply_folder_check(rt, FolderCheck(outage=_NO_ANSWER))
                continue
            if now - rt.last_check >= FOLDER_CHECK_SECONDS or self.force_recheck:
                rt.check_started = now
                rt.check_future = rt.checker.submit(self._check_folder, rt.config)

    def _collect_folder_checks(self, now: float) -> None:
        for rt in self.folders.values():
            fut = rt.check_future
            if fut is None or not fut.done():
                continue
            rt.check_future = None
            rt.last_check = now
            try:
                check = fut.result()
            except Exception as exc:
                check = FolderCheck(outage=f"check failed: {exc}")
            self._apply_folder_check(rt, check)

    def _apply_folder_check(self, rt: FolderRuntime, check: FolderCheck) -> None:
        name = rt.config.name
        outage = check.outage
        if outage != rt.outage:
            if outage:
                log.warning("folder.outage_started", folder=name, reason=outage)
                self._alert("outage", None, outage, folder=name)
                # Forget every file of the folder: during an outage nothing is "deleted", and
                # once it ends the rescan sees each file afresh.
                self.tracker.forget_folder(name)
            else:
                log.info("folder.outage_ended", folder=name, was=rt.outage)
            previous = rt.outage
            rt.outage = outage
            self.metrics.outage(name, bool(outage))
            if previous and not outage:
                self._start_watcher(rt)
                rt.last_scan_mono = None  # rescan at once
            elif outage and (rt.watcher is not None or rt.watcher_future is not None):
                self._start_watcher(rt)  # stops the watcher in the folder's worker
            self._write_folder_statuses()
        if outage:
            return  # the roots were not looked at: what is known of them stays
        if check.output_problem != rt.output_problem:
            if check.output_problem:
                log.warning("folder.output_unavailable", folder=name, reason=check.output_problem)
            else:
                log.info("folder.output_available", folder=name)
            rt.output_problem = check.output_problem
        if check.failed_problem != rt.failed_problem:
            if check.failed_problem:
                log.warning("folder.failed_unavailable", folder=name, reason=check.failed_problem)
            else:
                log.info("folder.failed_available", folder=name)
            rt.failed_problem = check.failed_problem
        if not rt.failed_problem:
            self._file_deferred_failures(rt)

    def _write_folder_statuses(self) -> None:
        """Record each folder's watch mode and outage for `status`. A journal that refuses the
        write is noted (invariant 9) without cutting short the folder work that asked for it."""
        if self.journal is None:
            return
        now = self.clock()
        try:
            for rt in self.folders.values():
                self.journal.set_folder_status(
                    rt.config.name,
                    watch_mode=rt.watch_mode,
                    watch_reason=rt.watch_reason,
                    outage=rt.outage,
                    last_scan_at=rt.last_scan_wall,
                    at=now,
                )
        except StateDirError as exc:
            self._journal_failed(exc)

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
            key = (event.folder, event.rel_path.as_posix())
            if event.kind == "overflow":
                rt.last_scan_mono = None
            elif event.kind == "dir_changed":
                rt.last_scan_mono = None  # a directory appeared or moved in: list it now
            elif event.kind == "changed":
                # The next stat pass gives it an observation; the event restarts its quiet period.
                self.tracker.touched(key, now)
            elif event.kind == "deleted":
                if event.rel_path == PurePosixPath("."):
                    rt.last_check = -1e9  # the inbox itself vanished: check the folder now
                    continue
                self.tracker.forget(key)

    def _schedule_scans(self, now: float) -> None:
        for rt in self.folders.values():
            if rt.outage or rt.scan_future is not None:
                continue
            if (
                rt.last_scan_mono is None
                or now - rt.last_scan_mono >= self.config.daemon.rescan_seconds
            ):
                rt.scan_future = rt.io.submit(self._scan_folder, rt.config)

    def _scan_folder(self, folder: FolderConfig) -> list[tuple[str, int, int, int]]:
        """Runs in the folder's worker: every candidate as (rel_path, size, mtime_ns, inode)."""
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
            name = rt.config.name
            self.metrics.scanned(name, rt.last_scan_wall)
            seen = set()
            for rel, size, mtime_ns, inode in files:
                key = (name, rel)
                seen.add(key)
                stats = (size, mtime_ns, inode)
                # A big NAS tree is mostly unchanged files: only new or changed ones cost a
                # journal lookup.
                if self.tracker.unchanged_since_scan(key, stats):
                    continue
                verdict = self._intake_verdict(rt, rel, size, mtime_ns, inode)
                if verdict == "skip":
                    self.tracker.remember(key, stats)
                    continue
                # "take" settles it; "later" keeps it settling (looked at again each stat pass)
                # until the job that still holds its path lets go.
                self.tracker.observe(key, stats, now)
            for key in self.tracker.pending(name) + self.tracker.scanned_keys(name):
                if key not in seen and key not in self.intake_futures:
                    self.tracker.forget(key)
            log.debug("watcher.rescan_done", folder=name, files=len(files))
            self._write_folder_statuses()

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
        key = (folder.name, rel)
        if verdict is Verdict.NOT_VIDEO:
            if self.tracker.first_not_video(key):
                log.info("intake.not_a_video_name", folder=folder.name, file=rel)
            return "skip"
        if verdict is not Verdict.CANDIDATE:
            return "skip"  # its size or name must change before it counts
        if self.tracker.is_skipped(key, (size, mtime_ns, inode)):
            return "skip"
        if key in self.intake_futures:
            return "later"
        assert self.journal is not None
        if self.journal.known_version(folder.name, rel, size, mtime_ns, inode) is not None:
            return "skip"
        latest = self.journal.latest_for_path(folder.name, rel)
        if latest is None or latest.is_terminal:
            return "take"
        assert latest.id is not None
        if latest.upload_file_path is None and latest.id not in self.in_flight:
            return "take"  # queued, not uploading: intake refreshes that job's facts
        # Uploading, uploaded or rendering: the running step ends that job (superseded if it
        # is still before its create), or the change is a new version once it is done.
        return "later"

    def _schedule_stats(self, now: float) -> None:
        for rt in self.folders.values():
            if rt.outage or rt.stat_future is not None:
                continue
            rels = [rel for _, rel in self.tracker.pending(rt.config.name)]
            if rels:
                root = Path(str(rt.config.inbox))
                rt.stat_future = rt.io.submit(self._stat_many, root, rels, rt.config.ready_marker)

    def _stat_many(
        self, root: Path, rels: list[str], marker: str
    ) -> list[tuple[str, os.stat_result | None, bool]]:
        """Runs in the folder's worker: lstat each pending file (None when it is gone) and
        whether its ready marker exists (True when the folder uses none)."""
        results = []
        for rel in rels:
            st = self.fs.stat(root / rel)
            ready = True
            if marker and st is not None:
                ready = (
                    self.fs.stat(root / ready_marker_path(PurePosixPath(rel), marker)) is not None
                )
            results.append((rel, st, ready))
        return results

    def _collect_stats(self, now: float) -> None:
        for rt in self.folders.values():
            fut = rt.stat_future
            if fut is None or not fut.done():
                continue
            rt.stat_future = None
            name = rt.config.name
            try:
                results = fut.result()
            except Exception as exc:
                log.warning("intake.stat_failed", folder=name, error=str(exc))
                continue
            if rt.outage:
                continue
            for rel, st, marker_ready in results:
                key = (name, rel)
                if st is None or not stat.S_ISREG(st.st_mode):
                    self.tracker.forget(key)  # gone, or a link / not a file now: never taken
                    continue
                verdict = self._intake_verdict(rt, rel, st.st_size, st.st_mtime_ns, st.st_ino)
                if verdict == "skip":
                    self.tracker.forget(key)
                    self.tracker.remember(key, (st.st_size, st.st_mtime_ns, st.st_ino))
                    continue
                # Takeable once settled only with its marker there and no job on its path.
                eligible = marker_ready and verdict == "take"
                self.tracker.observe(
                    key, (st.st_size, st.st_mtime_ns, st.st_ino), now, eligible=eligible
                )

    def _schedule_intakes(self, now: float) -> None:
        for key in self.tracker.pending():
            name, rel = key
            rt = self.folders.get(name)
            if rt is None or rt.outage or key in self.intake_futures:
                continue
            if not self.tracker.ready(key, now, rt.config.settle_seconds):
                continue  # still settling, its marker missing, or a job holds its path
            self.tracker.taken(key)
            folder = self._effective_folder(rt.config, rel)
            assert self.journal is not None
            latest = self.journal.latest_for_path(name, rel)
            previous_done = latest is not None and latest.state is _S.DONE
            assert self.runner is not None
            self.intake_futures[key] = rt.io.submit(
                self.runner.intake,
                name,
                Path(str(folder.inbox)),
                rel,
                start_seconds=folder.start_seconds,
                max_seconds=folder.max_seconds,
                hash_now=previous_done,
            )

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
                self.tracker.forget(key)  # seen afresh by the next stat pass or rescan
                continue
            try:
                self._apply_intake(result)
            except Exception:
                self.tracker.forget(key)  # not recorded: the next rescan takes it again
                raise

    def _apply_intake(self, r: IntakeResult) -> None:
        assert self.journal is not None
        key = (r.folder, r.rel_path)
        rt = self.folders.get(r.folder)
        if rt is None:
            return
        if r.vanished:  # gone, changed, or a link (never a candidate)
            self.tracker.forget(key)
            return
        now_mono = self.monotonic()
        if r.busy:
            self.tracker.observe(key, (r.size, r.mtime_ns, r.inode), now_mono)
            self.tracker.touched(key, now_mono)
            log.debug("intake.still_open_for_writing", folder=r.folder, file=r.rel_path)
            return
        folder = rt.config
        log_ctx = {"folder": r.folder, "file": r.rel_path}
        if r.sha256 is not None:
            done = self.journal.find_done_version(r.folder, r.rel_path, r.size, r.sha256)
            if done is not None:
                self.tracker.skip(key, (r.size, r.mtime_ns, r.inode))
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
        if latest is not None and not latest.is_terminal:
            assert latest.id is not None
            if latest.upload_file_path is not None or latest.id in self.in_flight:
                # A job started on this path meanwhile: look again once it lets go.
                self.tracker.touched(key, now_mono)
                return
            # The same path came back changed before its upload: refresh that job's facts.
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
            self._save(updated, "job.source_refreshed", {})
            self.tracker.remember(key, (r.size, r.mtime_ns, r.inode))
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
        self.tracker.remember(key, (r.size, r.mtime_ns, r.inode))
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
            self.due_mono.pop(saved.id, None)
        else:
            self.jobs[saved.id] = saved
            self._set_due(saved)
        return saved

    def _set_due(self, job: Job) -> None:
        """Mirror the job's wall-clock due_at on the monotonic clock (`_due` compares that)."""
        assert job.id is not None
        if job.due_at is None:
            self.due_mono.pop(job.id, None)
        else:
            wait = backoff.clamp_due_seconds(job.due_at - self.clock())
            self.due_mono[job.id] = self.monotonic() + wait

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
        """Commit `failed`, then file the original away in the folder's worker."""
        failed = self._move(
            job, _S.FAILED, "job.failed", last_error=reason, _detail={"why": reason}
        )
        self._alert("failed", failed, reason)
        self._file_failure(failed, reason, request=request, service=service)

    def _file_failure(self, failed: Job, reason: str, *, request: str, service: str | None) -> None:
        rt = self.folders.get(failed.folder)
        if rt is None or rt.outage or rt.failed_problem:
            # The failed folder's share is away: file it once the folder check passes.
            self.deferred_failures.setdefault(failed.folder, {})[failed.id or 0] = (
                reason,
                request,
                service,
            )
            return
        assert self.runner is not None and failed.id is not None
        runner, journal, job_id = self.runner, self.journal, failed.id

        def file_it() -> None:
            path = runner.file_failure(failed, reason, request=request, service=service)
            assert journal is not None
            current = journal.get(job_id)
            if current is None or current.state is not _S.FAILED:
                return
            with contextlib.suppress(JournalConflict):  # a `retry` took it meanwhile
                journal.save(
                    dataclasses.replace(current, failed_path=path, updated_at=self.clock()),
                    event="job.original_filed",
                    detail={"path": path},
                    expect_state=_S.FAILED,
                )

        def filed(fut: Future[None]) -> None:
            exc = fut.exception()
            if exc is not None:
                log.error("job.failed_filing_error", job_id=job_id, error=str(exc))
                self.deferred_failures.setdefault(failed.folder, {})[job_id] = (
                    reason,
                    request,
                    service,
                )

        fut = rt.io.submit(file_it)
        fut.add_done_callback(filed)
        self.misc_futures.append(fut)

    def _file_deferred_failures(self, rt: FolderRuntime) -> None:
        waiting = self.deferred_failures.pop(rt.config.name, None)
        if not waiting or self.journal is None:
            return
        for job_id, (reason, request, service) in waiting.items():
            job = self.journal.get(job_id)
            if job is not None and job.state is _S.FAILED and job.failed_path is None:
                self._file_failure(job, reason, request=request, service=service)

    def _due(self, job: Job, now: float) -> bool:
        due = self.due_mono.get(job.id or 0)
        return due is None or due <= self.monotonic()

    def _schedule_jobs(self) -> None:
        now = self.clock()
        # An upload stuck on a hung share does not hold a slot the other folders need.
        uploads = sum(
            1
            for f in self.in_flight.values()
            if f.step == "upload" and not self._folder_in_outage(f.folder)
        )
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
                    # Every create is started in the same pass that journals `submitting`, and
                    # its outcome stays in flight until journaled: a submitting job with no
                    # step running lost its create's answer. Never send it again unasked.
                    self._hold(
                        job,
                        HoldReason.AMBIGUOUS_CREATE,
                        "the answer to this job's create request was lost; check the web app",
                    )
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

    def _folder_in_outage(self, name: str) -> bool:
        rt = self.folders.get(name)
        return rt is not None and rt.outage is not None

    def _start(self, job: Job, step: str) -> None:
        """Run `step` for `job` in a worker: share work in the folder's own executor, API
        round trips in the API pool. The job stays in flight until its outcome is journaled."""
        assert job.id is not None and self.runner is not None
        runner = self.runner
        job_id = job.id

        def progress(done: int, total: int) -> None:
            if self.stopping:
                raise Aborted("the daemon is stopping")
            current = self.jobs.get(job_id)
            if current is not None and total:
                self.jobs[job_id] = dataclasses.replace(current, progress=done / total)

        rt = self.folders.get(job.folder)
        share_pool = rt.io if rt is not None else self.api_pool
        fut: Future[StepOutcome]
        if step == "upload":
            fut = share_pool.submit(runner.upload, job, progress)
        elif step == "download":
            fut = share_pool.submit(runner.download, job, progress)
        elif step == "deliver":
            fut = share_pool.submit(runner.deliver, job)
        elif step == "create":
            fut = self.api_pool.submit(runner.create, job)
        elif step == "poll":
            fut = self.api_pool.submit(runner.poll, job)
        else:  # pragma: no cover - a programming error
            raise ValueError(step)
        self.in_flight[job_id] = InFlight(job_id, step, fut, job.folder)

    def _collect_outcomes(self) -> None:
        """Journal each finished step's outcome. One the journal refuses stays in flight, so
        its job is not scheduled again, and is written first once the journal takes writes."""
        for job_id, flight in sorted(self.in_flight.items()):
            if flight.outcome is None:
                if not flight.future.done():
                    continue
                try:
                    flight.outcome = flight.future.result()
                except Exception as exc:  # a bug in a step: an outcome like any other
                    log.exception("job.step_crashed", job_id=job_id, step=flight.step)
                    flight.outcome = StepOutcome(job_id, flight.step, {}, error=exc)
            outcome = flight.outcome
            if isinstance(outcome.error, Aborted):
                del self.in_flight[job_id]  # stopping: the journal's state resumes it
                continue
            assert self.journal is not None
            job = self.journal.get(job_id)
            if job is not None:
                self._apply_outcome(job, outcome)  # StateDirError: kept, tried again later
            del self.in_flight[job_id]

    def _apply_outcome(self, job: Job, outcome: StepOutcome) -> None:
        """Apply `next_move` for this outcome: one journal write (plus its booking)."""
        step = Step(outcome.step)
        project = outcome.project
        overdue_limit = (
            backoff.OVERDUE_GIVE_UP_SECONDS + self.config.api.render_timeout_minutes * 60
        )
        move = next_move(
            job,
            step,
            outcome.error,
            poll=_poll_facts(project),
            poll_interval_seconds=self.config.api.poll_interval_seconds,
            render_overdue_give_up=bool(
                job.render_started_at and self.clock() - job.render_started_at > overdue_limit
            ),
        )
        if move.kind is Kind.STALE:
            log.info("job.outcome_stale", job_id=job.id, step=step.value, state=job.state.value)
            return
        changes = dict(outcome.changes) if outcome.error is None else {}
        if step is Step.POLL and project is not None and project.is_terminal:
            # The final word on the cost: corrections and refunds included.
            self._book(dataclasses.replace(job, **changes), project.credits_charged)
        self._perform_move(job, step, move, changes, outcome)

    def _perform_move(
        self, job: Job, step: Step, move: Move, changes: dict[str, Any], outcome: StepOutcome
    ) -> None:
        now = self.clock()
        assert move.state is not None
        if move.wait_seconds is not None:
            changes["due_at"] = now + move.wait_seconds
        elif move.kind is not Kind.WAIT:
            changes.setdefault("due_at", None)
        if move.clear_credits_day:
            changes["credits_day"] = None
        ctx = {"step": step.value, "attempts": move.attempts}
        if outcome.error is not None:
            ctx["error"] = str(outcome.error)
        if move.kind is Kind.ADVANCE:
            saved = self._move(job, move.state, move.event, attempts=move.attempts, **changes)
            self._after_advance(saved, step, outcome)
        elif move.kind is Kind.WAIT:
            self._wait(job, move, changes, ctx)
        elif move.kind is Kind.HOLD:
            assert move.hold_reason is not None
            if move.hold_reason in (HoldReason.AUTH, HoldReason.CREDITS):
                self.account_block = move.hold_reason
                self.last_account_probe = self.monotonic()
            self._hold(
                job,
                move.hold_reason,
                move.reason,
                resume_state=move.resume_state,
                attempts=0,
                **changes,
            )
        elif move.kind is Kind.SUPERSEDE:
            self._move(
                job,
                _S.SUPERSEDED,
                "job.superseded",
                last_error=f"superseded: {move.reason}",
                _detail={"why": move.reason},
            )
            # Look at the path again now: its new content is a job of its own.
            self.tracker.touched((job.folder, job.rel_path), self.monotonic())
        else:
            self._fail_after(job, step, move, changes, outcome)

    def _after_advance(self, job: Job, step: Step, outcome: StepOutcome) -> None:
        if step is Step.UPLOAD:
            self.metrics.bytes_uploaded(job.folder, job.size)
        elif step is Step.CREATE:
            self.metrics.credits_charged(job.folder, job.credits_charged or 0)
            self._book(job, job.credits_charged)
            self.account_block = None
        elif step is Step.DOWNLOAD:
            size = sum(o.size or 0 for o in job.outputs)
            self.metrics.bytes_downloaded(job.folder, size)
        elif step is Step.DELIVER:
            self._alert("done", job, "delivered", output=[o.final_path for o in job.outputs])

    def _wait(self, job: Job, move: Move, changes: dict[str, Any], ctx: dict[str, Any]) -> None:
        """Same step again later. Render polls that changed nothing are not journaled: the
        journal keeps the due time of the last real change, and a restart polls at once."""
        assert move.state is not None
        changes["attempts"] = move.attempts
        if move.attempts:
            changes["last_error"] = move.reason
            log.warning("job.retry_scheduled", job_id=job.id, **ctx)
        quiet_poll = (
            move.event == "job.render_progress"
            and job.render_status == changes.get("render_status")
            and not job.attempts
        )
        if move.state is not job.state:
            self._move(job, move.state, move.event, **changes)
        elif quiet_poll:
            updated = dataclasses.replace(job, **changes)
            self.jobs[job.id or 0] = updated
            self._set_due(updated)
        else:
            self._save(
                dataclasses.replace(job, updated_at=self.clock(), **changes), move.event, ctx
            )

    def _fail_after(
        self, job: Job, step: Step, move: Move, changes: dict[str, Any], outcome: StepOutcome
    ) -> None:
        error = outcome.error
        service = getattr(error, "service_message", None) if error is not None else None
        project = outcome.project
        if project is not None and error is None:
            service = project.error.message if project.error else project.status
            job = dataclasses.replace(job, **changes)
        request = {
            "upload": "PUT upload URL",
            "create": "POST /v1/video-to-video",
            "poll": f"GET /v1/video-projects/{job.project_id}",
            "download": "GET download URL",
            "deliver": "delivery to the outbox",
        }[step.value]
        self._fail(job, move.reason, request=request, service=service)

    def _book(self, job: Job, credits: int | None) -> None:
        """Book a project's charge to the day its create was sent (for daily_credit_limit)."""
        assert self.journal is not None and job.id is not None
        if job.project_id is None or credits is None:
            return
        day = job.credits_day or local_day(self.clock())
        self.journal.book_charge(
            job_id=job.id, project_id=job.project_id, day=day, credits=credits, at=self.clock()
        )

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

        self.account_future = self.api_pool.submit(probe)

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
            if request.id in self.request_futures:
                continue
            result = self._handle_request(request.id, request.kind, request.job_id)
            if result is not None:
                self._finish_request(request.id, request.kind, request.job_id, result)

    def _finish_request(self, request_id: int, kind: str, job_id: int | None, result: str) -> None:
        assert self.journal is not None
        self.journal.finish_request(request_id, at=self.clock(), result=result)
        log.info("request.handled", kind=kind, job_id=job_id, result=result)

    def _collect_requests(self) -> None:
        """Finish retries whose file moves (in the folder's worker) are done."""
        for request_id, (fut, finish) in list(self.request_futures.items()):
            if not fut.done():
                continue
            del self.request_futures[request_id]
            try:
                result = finish(fut.result())
            except Exception as exc:
                log.warning("request.failed", request_id=request_id, error=str(exc))
                result = f"failed: {exc}"
            self._finish_request(request_id, "retry", None, result)

    def _handle_request(self, request_id: int, kind: str, job_id: int | None) -> str | None:
        """The result of a request, or None when its file work went to a worker."""
        assert self.journal is not None and self.runner is not None
        if kind != "retry" or job_id is None:
            return f"unknown request {kind}"
        job = self.journal.get(job_id)
        if job is None:
            return "unknown job"
        if job_id in self.in_flight:
            return "busy; try again in a moment"
        if job.state is _S.SUPERSEDED:
            return "superseded: the file changed before its upload finished; nothing to retry"
        rt = self.folders.get(job.folder)
        pool = rt.io if rt is not None else self.api_pool
        if job.state in (_S.FAILED, _S.DONE):
            self.request_futures[request_id] = (
                pool.submit(self._retry_files, job),
                lambda found: self._requeue_after_files(job_id, *found),
            )
            return None
        if job.state is _S.HELD:
            return self._retry_held(job)
        return f"not retryable in state {job.state.value}"

    def _retry_files(self, job: Job) -> tuple[str, os.stat_result | None]:
        """Runs in the folder's worker: a failed original moved back to its inbox; returns the
        path (relative to the inbox) the file is at now and its lstat (None: not there)."""
        assert self.runner is not None
        rel = job.rel_path
        if job.state is _S.FAILED:
            rel = self.runner.restore_failed(job) or job.rel_path
        st = self.fs.stat(Path(job.settings.inbox) / rel)
        if st is None or not stat.S_ISREG(st.st_mode):
            return rel, None
        return rel, st

    def _requeue_after_files(self, job_id: int, rel: str, st: os.stat_result | None) -> str:
        assert self.journal is not None
        job = self.journal.get(job_id)
        if job is None or job.state not in (_S.FAILED, _S.DONE) or job_id in self.in_flight:
            return "the job changed meanwhile; nothing done"
        if st is None:
            if job.state is _S.FAILED:
                return "the original is not in the failed folder or the inbox any more"
            return "the original is no longer in the inbox"
        if job.state is _S.FAILED:
            new = self._fresh_version(job, st, rel_path=rel, failed_path=None)
            self._save(new, "job.retried", {"from": "failed"})
        else:
            new = self._fresh_version(job, st, archive_path=None, original_left=False)
            self.tracker.unskip((job.folder, job.rel_path))
            self._save(new, "job.retried", {"from": "done"})
        self.tracker.remember((job.folder, rel), (st.st_size, st.st_mtime_ns, st.st_ino))
        return "requeued"

    def _retry_held(self, job: Job) -> str:
        assert self.journal is not None and job.id is not None
        now = self.clock()
        reset: dict[str, Any] = dict(attempts=0, due_at=None, last_error=None, updated_at=now)
        if job.hold_reason in (HoldReason.AMBIGUOUS_CREATE, HoldReason.RENDER_OVERDUE):
            if job.project_id is not None:
                self._book(job, job.credits_final or job.credits_charged)
            elif job.credits_day is not None:
                # The lost create may have been charged: keep its estimate booked.
                self.journal.book_charge(
                    job_id=job.id,
                    project_id=f"unanswered-create:{job.id}:{now:.0f}",
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
        if self.journal_error is not None:
            reasons.append(f"journal refuses writes: {self.journal_error}")
        elif self.journal is None or not self.journal.writable_check():
            reasons.append("journal is not writable")
        for rt in self.folders.values():
            if rt.watcher is None and rt.watcher_future is None and not rt.outage:
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
                self.journal.set_progress(job_id, job.progress)
                self.stored_progress[job_id] = round(job.progress, 3)

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
            stuck = [r for r in report.reasons if not r.startswith("journal refuses writes")]
            if not stuck:
                # A journal that refuses writes is waited out, not restarted: a restart would
                # turn outcomes kept in memory into ambiguous holds (invariant 9).
                self.notify.watchdog()
            else:
                # No ping: systemd restarts a daemon whose loop or watchers are stuck.
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
                rt.io.submit(rt.watcher.stop)
            rt.close()
            self.tracker.forget_folder(name)
            log.info("config.folder_removed", folder=name)
        for folder in new.folders:
            existing = self.folders.get(folder.name)
            if existing is None:
                added = FolderRuntime.create(folder)
                self.folders[folder.name] = added
                added.last_check = -1e9  # checked on the next pass, then watched
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
        # Settling files keep their progress; only the default quiet period changes.
        self.tracker.set_settle_seconds(new.daemon.settle_seconds)
        self._write_folder_statuses()
        log.info("config.reloaded", folders=sorted(new_names))
        self.notify.ready()

    def close_pools(self) -> None:
        """Release the worker pools of a daemon that never started."""
        self.api_pool.shutdown(wait=False, cancel_futures=True)
        for rt in self.folders.values():
            rt.close()

    def shutdown(self) -> None:
        """Ordered stop: no new step starts; transfers stop at a safe point (they resume);
        creates, polls and deliveries in flight get `stop_grace_seconds` to finish, and their
        outcomes are journaled, so a create is not left ambiguous; then the journal closes."""
        self.stopping = True
        self.notify.stopping()
        log.info("daemon.stopping", in_flight=len(self.in_flight))
        for rt in self.folders.values():
            if rt.watcher is not None:
                rt.io.submit(rt.watcher.stop)
                rt.watcher = None
        deadline = self.monotonic() + self.config.daemon.stop_grace_seconds
        while self.in_flight and self.monotonic() < deadline:
            try:
                self._collect_outcomes()
            except StateDirError as exc:
                self._journal_failed(exc)
            except Exception:
                log.exception("daemon.stop_outcome_failed")
            time.sleep(0.05)
        for fut in self.misc_futures:
            with contextlib.suppress(Exception):
                fut.result(timeout=max(0.0, deadline - self.monotonic()))
        self.close_pools()
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
