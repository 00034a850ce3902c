"""The daemon: wires the parts from the config, handles signals and reload, stops in order.

Threads never decide. Watchers, workers' done-callbacks and signal handlers post small
messages to the one loop (`service.loop`); the loop's handlers decide with the pure core,
commit the new state to the journal, and only then start the side effect that state announces
in a folder's or the API's executor. The loop sleeps until the next message or timer.
"""

from __future__ import annotations

import contextlib
import dataclasses
import os
import signal
import time
from collections.abc import Callable, Mapping
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from types import FrameType

import httpx
import structlog

from mh_watchd import __version__
from mh_watchd.adapters import config_file, logs
from mh_watchd.adapters.fs import FileSystem, LocalFileSystem
from mh_watchd.adapters.http_status import StatusServer
from mh_watchd.adapters.journal import (
    ClaimLost,
    Journal,
    Listening,
    host_name,
    open_journal,
)
from mh_watchd.adapters.magic_hour import MagicHourClient, RequestRecord, build_http_client
from mh_watchd.adapters.metrics import Metrics
from mh_watchd.adapters.notifier import EventNotifier
from mh_watchd.adapters.sdnotify import SystemdNotifier
from mh_watchd.adapters.watcher import EventSink, FsEvent
from mh_watchd.core.config import Config, DaemonConfig, FolderConfig
from mh_watchd.core.errors import StateDirError
from mh_watchd.core.jobs import HoldReason
from mh_watchd.core.tracker import IntakeTracker
from mh_watchd.runner import Runner
from mh_watchd.service.account import AccountGate
from mh_watchd.service.claims import ClaimKeeper
from mh_watchd.service.context import Context, FolderRuntime, JournalGate
from mh_watchd.service.failures import FailureFiler
from mh_watchd.service.folders import (
    FOLDER_CHECK_DEADLINE_SECONDS,
    FolderSupervisor,
    write_folder_statuses,
)
from mh_watchd.service.housekeeping import Housekeeping
from mh_watchd.service.intake import Intake
from mh_watchd.service.jobbook import JobBook, local_day
from mh_watchd.service.loop import WAKE, Loop
from mh_watchd.service.outcomes import OutcomeApplier
from mh_watchd.service.reporter import Alerts, Reporter
from mh_watchd.service.requests import RequestHandler
from mh_watchd.service.scheduler import Scheduler

log = structlog.get_logger("mh_watchd")

API_THREADS = 8  # creates, polls and the account probe: round trips that touch no share
# Scheduling passes run back to back while each one changes something (a release frees a job
# the next pass starts); more than this waits for the next turn.
PASSES_PER_TURN = 3


class Signals:
    """What signals asked for, as flags plus a wake-up of the loop. Installed before the
    journal is opened, so a SIGTERM at any point of start-up is a clean stop, not a kill."""

    def __init__(self) -> None:
        self.stop = False
        self.reload = False
        self.count = 0
        self._wake: Callable[[], None] = lambda: None

    def install(self) -> None:
        """SIGTERM/SIGINT: graceful stop, a second one exits 1 at once. SIGHUP: reload."""

        def on_stop(signum: int, frame: FrameType | None) -> None:
            self.count += 1
            if self.count > 1:
                os._exit(1)
            self.stop = True
            self._wake()

        def on_hup(signum: int, frame: FrameType | None) -> None:
            self.reload = True
            self._wake()

        signal.signal(signal.SIGTERM, on_stop)
        signal.signal(signal.SIGINT, on_stop)
        signal.signal(signal.SIGHUP, on_hup)

    def attach(self, loop: Loop) -> None:
        """Wake `loop` on every signal from now on (`SimpleQueue.put` is reentrant)."""
        self._wake = lambda: loop.post(WAKE)


class LoopSink:
    """Watchers' events, posted to the loop as messages."""

    def __init__(self, loop: Loop, handler: Callable[[FsEvent], None]) -> None:
        self._loop = loop
        self._handler = handler

    def put(self, item: FsEvent) -> None:
        handler = self._handler
        self._loop.post(lambda: handler(item))


def open_state_dir(fs: FileSystem, daemon: DaemonConfig) -> Journal:
    """Check the state_dir, open the journal (in it, or at daemon.state_url) as this host and
    take the lock (the state_dir's, and on a shared journal the host name's).

    Raises StateDirError (with what to do) or AlreadyRunningError.
    """
    state_dir = Path(str(daemon.state_dir))
    try:
        fs.makedirs(state_dir)
        problem = fs.state_dir_problem(state_dir)
    except OSError as exc:
        raise StateDirError(f"state_dir {state_dir} is unusable: {exc}") from exc
    if problem:
        raise StateDirError(
            f"state_dir {state_dir} is {problem}; "
            "set daemon.state_dir to a local disk (for example /var/lib/mh-watchd)"
        )
    unwritable = fs.check_writable_dir(state_dir, create=True)
    if unwritable in ("full", "over quota"):
        raise StateDirError(
            f"state_dir {state_dir} is {unwritable}; free space or fix the disk under "
            "daemon.state_dir, then start again"
        )
    if unwritable:
        raise StateDirError(
            f"state_dir {state_dir} is not writable by uid {os.getuid()} "
            f"({unwritable}); fix its owner or set daemon.state_dir elsewhere"
        )
    journal = open_journal(daemon)
    try:
        journal.set_host(host_name(daemon), lease_seconds=daemon.lease_seconds)
        journal.acquire_lock()
        journal.register_host(pid=os.getpid(), version=__version__)
    except Exception:
        journal.close()
        raise
    return journal


class Daemon:
    """One running daemon over one state_dir, built open: `Daemon.open(config, ...)`."""

    @classmethod
    def open(
        cls,
        config: Config,
        *,
        token: str,
        config_path: Path,
        environ: Mapping[str, str] | None = None,
        clock: Callable[[], float] = time.time,
        monotonic: Callable[[], float] = time.monotonic,
        fs: FileSystem | None = None,
        events: EventSink | None = None,
        signals: Signals | None = None,
    ) -> Daemon:
        """Open the journal (taking the lock) and build every part over it.

        Raises StateDirError / AlreadyRunningError; nothing is left running then.
        """
        fs = fs or LocalFileSystem(umask=config.daemon.umask)
        journal = open_state_dir(fs, config.daemon)
        try:
            return cls(
                config,
                journal,
                token=token,
                config_path=config_path,
                environ=environ if environ is not None else os.environ,
                clock=clock,
                monotonic=monotonic,
                fs=fs,
                events=events,
                signals=signals or Signals(),
            )
        except BaseException:
            journal.close()
            raise

    def __init__(
        self,
        config: Config,
        journal: Journal,
        *,
        token: str,
        config_path: Path,
        environ: Mapping[str, str],
        clock: Callable[[], float],
        monotonic: Callable[[], float],
        fs: FileSystem,
        events: EventSink | None,
        signals: Signals,
    ) -> None:
        self.config_path = config_path
        self.signals = signals
        self.environ = environ
        self.token = token
        self.journal = journal
        state_dir = Path(str(config.daemon.state_dir))
        fs.makedirs(state_dir / "tmp")
        self.http = build_http_client(user_agent=f"mh-watchd/{__version__}")
        self.notify_http = httpx.Client(timeout=10.0)
        self.notifier = EventNotifier(
            webhook_url=config.notify.webhook_url,
            apprise_urls=config.notify.apprise_urls,
            on=config.notify.on,
            http=self.notify_http,
        )
        self.notify = SystemdNotifier(environ)
        self.loop = Loop(monotonic=monotonic, on_error=self._on_error, after_turn=self._after_turn)
        signals.attach(self.loop)
        self.ctx = Context(
            config=config,
            journal=journal,
            fs=fs,
            runner=Runner(
                client_factory=self._client,
                fs=fs,
                journal=journal,
                temp_dir=state_dir / "tmp",
                clock=clock,
            ),
            loop=self.loop,
            gate=JournalGate(journal, self.loop, clock=clock, monotonic=monotonic),
            metrics=Metrics(),
            clock=clock,
            monotonic=monotonic,
            tracker=IntakeTracker(config.daemon.settle_seconds),
            api_pool=ThreadPoolExecutor(API_THREADS, thread_name_prefix="mh-api"),
            alert=Alerts(self.notifier),
        )
        self._build_parts(events)
        self.servers: list[StatusServer] = []
        self.listening: Listening | None = None  # another host's wake-ups (shared journal)

    def _build_parts(self, events: EventSink | None) -> None:
        ctx = self.ctx
        progress: dict[int, float] = {}
        self.book = JobBook(ctx)
        self.failures = FailureFiler(ctx, self.book)
        self.supervisors: dict[str, FolderSupervisor] = {}
        self.intake = Intake(ctx, self.book, self.failures, self.supervisors)
        self.sink: EventSink = (
            events if events is not None else LoopSink(self.loop, self.intake.on_event)
        )
        self.account = AccountGate(
            ctx,
            self.book,
            client=self._client,
            probe_seconds=ctx.config.api.account_probe_seconds,
        )
        self.outcomes = OutcomeApplier(
            ctx, self.book, self.account, self.failures, progress=progress
        )
        self.claims = ClaimKeeper(ctx, self.book)
        self.scheduler = Scheduler(
            ctx,
            self.book,
            self.account,
            progress=progress,
            on_done=self.outcomes.step_done,
            lease_ok=self.claims.lease_ok,
        )
        self.requests = RequestHandler(ctx, self.book, self.account, self.supervisors)
        self.reporter = Reporter(ctx, self.book, notify=self.notify, progress=progress)
        self.housekeeping = Housekeeping(ctx)  # history retention, on a timer
        self.book.on_saved.append(self.intake.job_saved)
        # Once the journal takes writes again: kept outcomes first, then kept intakes, then
        # every inbox is listed (files whose intake could not be recorded were forgotten).
        ctx.gate.on_open.extend(
            [self.outcomes.apply_kept, self.intake.apply_kept, self._relist_all]
        )

    @property
    def config(self) -> Config:
        return self.ctx.config

    @property
    def folders(self) -> dict[str, FolderRuntime]:
        return self.ctx.folders

    def _client(self) -> MagicHourClient:
        api = self.ctx.config.api
        return MagicHourClient(
            self.http,
            base_url=api.base_url,
            token=self.token,
            request_timeout_seconds=api.request_timeout_seconds,
            on_request=self._record_request,
        )

    def _record_request(self, record: RequestRecord) -> None:
        self.ctx.metrics.api_request(
            record.operation, record.status, record.seconds, record.retried
        )

    # ------------------------------------------------------------------ start-up
    def start(self) -> None:
        """Bring every part up: recovery, HTTP, folders checked and watched, READY=1.

        Raises StateDirError when the journal refuses a write before anything was started.
        """
        # This host's unfinished jobs (on a shared journal, also the free ones of its
        # folders); a create cut off mid-flight becomes ambiguous_create.
        self.claims.take_all()
        self.failures.load()
        log.info("journal.recovered", unfinished=len(self.book.jobs))
        self._start_status_server()
        self.notifier.start()
        for folder in self.config.folders:
            self._add_folder(folder)
        deadline = self.ctx.monotonic() + FOLDER_CHECK_DEADLINE_SECONDS
        checks = {name: sup.start_check() for name, sup in self.supervisors.items()}
        for name, fut in checks.items():
            self.supervisors[name].first_check(fut, deadline)
        for sup in self.supervisors.values():
            sup.start_watcher()
        # READY=1 comes once each folder is watched or in outage.
        deadline = self.ctx.monotonic() + FOLDER_CHECK_DEADLINE_SECONDS
        for sup in self.supervisors.values():
            sup.wait_for_watcher(deadline)
        self.journal.set_meta("daemon_pid", str(os.getpid()))
        self.journal.set_meta("daemon_started_at", str(self.ctx.clock()))
        write_folder_statuses(self.ctx)
        self.requests.start()
        self.claims.start()
        # Another host's write for us (heard in the listener's thread, handled on the loop).
        wake = {"request": self.requests.check_now, "released": self.claims.claim_now}
        self.listening = self.journal.listen(lambda what: self.loop.post(wake.get(what, WAKE)))
        self.reporter.start()
        self.housekeeping.start()
        self.notify.ready()
        log.info(
            "daemon.started",
            version=__version__,
            folders=[f.name for f in self.config.folders],
            state_dir=str(self.config.daemon.state_dir),
            journal=self.journal.where,
            host=self.journal.host,
        )

    def _add_folder(self, folder: FolderConfig) -> FolderSupervisor:
        rt = FolderRuntime.create(folder)
        self.ctx.folders[folder.name] = rt
        sup = FolderSupervisor(
            self.ctx,
            rt,
            sink=self.sink,
            on_scan=self.intake.on_scan,
            on_usable=self.failures.file_deferred,
        )
        self.supervisors[folder.name] = sup
        return sup

    def _start_status_server(self) -> None:
        listen = self.config.daemon.http_listen
        if not listen:
            return
        from mh_watchd.web import WebApp

        # The page reads and writes the daemon's own journal (thread-safe); `config` is read
        # per request, so a reload's new http_token applies at once.
        web = WebApp(self.journal, lambda: self.config, writable=True, health=self.reporter.health)
        server = StatusServer(
            listen, health=self.reporter.health, metrics=self.ctx.metrics, web=web
        )
        if server.start():
            self.servers.append(server)
            log.info("http.listening", listen=listen)
        else:
            log.error(
                "http.bind_failed", listen=listen, hint='change daemon.http_listen or set it to ""'
            )

    # ------------------------------------------------------------------ the loop
    @property
    def stop_requested(self) -> bool:
        return self.signals.stop

    def run(self) -> int:
        """Run until stopped; returns the exit code (0 after a clean stop)."""
        try:
            self.loop.run(until=lambda: self.signals.stop)
        finally:
            self.shutdown()
        return 0

    def run_until(self, condition: Callable[[], bool], timeout_seconds: float) -> bool:
        """Run until `condition()` holds or the deadline passes (the demo uses this)."""
        deadline = self.ctx.monotonic() + timeout_seconds
        self.loop.run(until=lambda: self.signals.stop or condition(), deadline=deadline)
        return condition()

    def _after_turn(self) -> None:
        ctx = self.ctx
        if self.signals.reload:
            self.signals.reload = False
            self.reload()
        for _ in range(PASSES_PER_TURN):
            if not (ctx.dirty or ctx.woken) or ctx.stopping or ctx.gate.closed:
                break
            self.scheduler.schedule()
            self.account.schedule()
        self.reporter.report()

    def _on_error(self, exc: BaseException) -> None:
        if isinstance(exc, StateDirError):
            self.ctx.gate.failed(exc)
        elif isinstance(exc, ClaimLost):
            self.ctx.dirty = True  # logged and let go of by the book
        else:
            # The top of the loop: one unexpected error never stops the daemon.
            log.error("daemon.message_failed", exc_info=exc)

    def _relist_all(self) -> None:
        self.ctx.dirty = True
        for sup in self.supervisors.values():
            sup.scan_now()

    # ------------------------------------------------------------------ reload
    def reload(self) -> None:
        """SIGHUP: re-read the config and the token; keep the old config when the new is bad."""
        self.notify.reloading()
        try:
            new = config_file.load(self.config_path)
        except Exception as exc:
            problems = getattr(exc, "problems", [str(exc)])
            log.error("config.reload_rejected", problems=problems, hint="the old config stays")
            self.notify.ready()
            return
        new = self._keep_restart_keys(new)
        self._reload_token(new)
        self.ctx.config = new
        self.account.probe_seconds = new.api.account_probe_seconds
        self._reload_folders(new)
        # Settling files keep their progress; only the default quiet period changes.
        self.ctx.tracker.set_settle_seconds(new.daemon.settle_seconds)
        self.ctx.dirty = True
        write_folder_statuses(self.ctx)
        log.info("config.reloaded", folders=sorted(self.supervisors))
        self.notify.ready()

    def _keep_restart_keys(self, new: Config) -> Config:
        old = self.config
        for key in ("state_dir", "http_listen"):
            if getattr(new.daemon, key) != getattr(old.daemon, key):
                log.warning("config.restart_needed", key=f"daemon.{key}")
        if new.api.base_url != old.api.base_url:
            log.warning("config.restart_needed", key="api.base_url")
            new = dataclasses.replace(
                new, api=dataclasses.replace(new.api, base_url=old.api.base_url)
            )
        return new

    def _reload_token(self, new: Config) -> None:
        try:
            token = config_file.read_token(new.api, self.environ)
        except Exception as exc:
            log.error("config.token_unreadable", error=str(exc))
            token = self.token
        if token and token != self.token:
            self.token = token
            logs.add_secret(token)
            if self.account.block is HoldReason.AUTH:
                self.account.unblocked()
            self.account.recheck_now()
            log.info("config.token_changed")

    def _reload_folders(self, new: Config) -> None:
        ctx = self.ctx
        new_names = {f.name for f in new.folders}
        for name in set(self.supervisors) - new_names:
            self.supervisors.pop(name).close()
            ctx.folders.pop(name, None)
            ctx.tracker.forget_folder(name)
            log.info("config.folder_removed", folder=name)
        for folder in new.folders:
            sup = self.supervisors.get(folder.name)
            if sup is None:
                sup = self._add_folder(folder)
                sup.check_now()  # checked on the next turn, then watched
                sup.start_watcher()
                log.info("config.folder_added", folder=folder.name)
            elif sup.rt.config != folder:
                sup.rt.config = folder
                sup.start_watcher()
                sup.scan_now()
                log.info("config.folder_changed", folder=folder.name)
        if self.journal.shared:
            self.claims.folders_changed(new_names)
            return
        # Jobs of removed folders that were never created are dropped (files untouched).
        for job in self.book.unfinished():
            if (
                job.folder not in new_names
                and job.project_id is None
                and job.id not in ctx.in_flight
            ):
                assert job.id is not None
                self.book.forget(job.id)

    # ------------------------------------------------------------------ stop
    def shutdown(self) -> None:
        """Ordered stop: no new step starts; transfers stop at a safe point (they resume);
        creates, polls and deliveries in flight get `stop_grace_seconds` to finish, and their
        outcomes are journaled, so a create is not left ambiguous; then the journal closes."""
        ctx = self.ctx
        if ctx.stopping:
            return
        self.signals.stop = True
        ctx.stopping = True
        self.notify.stopping()
        log.info("daemon.stopping", in_flight=len(ctx.in_flight))
        for sup in self.supervisors.values():
            sup.stop_watcher()
        deadline = ctx.monotonic() + self.config.daemon.stop_grace_seconds
        self.loop.run(until=lambda: not ctx.in_flight, deadline=deadline)
        for fut in self.failures.futures:
            with contextlib.suppress(Exception):
                fut.result(timeout=max(0.0, deadline - ctx.monotonic()))
        self.housekeeping.stop()
        ctx.api_pool.shutdown(wait=False, cancel_futures=True)
        for rt in ctx.folders.values():
            rt.close()
        for server in self.servers:
            server.stop()
        self.notifier.stop()
        self.notify_http.close()
        self.http.close()
        write_folder_statuses(ctx)
        if self.listening is not None:
            self.listening.stop()
        with contextlib.suppress(StateDirError):
            self.claims.release()
        self.journal.close()
        log.info("daemon.stopped", unfinished_steps=len(ctx.in_flight))


__all__ = ["Daemon", "local_day"]
