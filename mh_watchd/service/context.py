"""What every part of the running daemon shares, built once and fully open.

`Context` holds the collaborators (config, journal, filesystem, runner, loop, clocks, metrics)
and the little shared state there is: each folder's runtime and the journal gate. Jobs live in
the journal; the parts keep only timers, futures and what a folder's share last told them.
"""

from __future__ import annotations

import os
from collections.abc import Callable
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass, field
from typing import Any

import structlog

from mh_watchd.adapters.fs import FileSystem
from mh_watchd.adapters.journal import Journal
from mh_watchd.adapters.metrics import Metrics
from mh_watchd.adapters.watcher import NativeWatcher, Poller
from mh_watchd.core.config import Config, FolderConfig
from mh_watchd.core.errors import StateDirError
from mh_watchd.core.jobs import Job, Roots, with_roots
from mh_watchd.core.tracker import IntakeTracker
from mh_watchd.runner import Runner, StepOutcome
from mh_watchd.service.loop import Loop

log = structlog.get_logger("mh_watchd")

FOLDER_IO_THREADS = 4
# A journal that refuses writes is tried again after this long, doubling up to the cap.
JOURNAL_RETRY_SECONDS = 0.5
JOURNAL_RETRY_MAX_SECONDS = 10.0


@dataclass(frozen=True)
class FolderCheck:
    """What one folder check found; None everywhere when the folder is fine."""

    outage: str | None = None  # the inbox is missing, unmounted or did not answer
    output_problem: str | None = None  # the outbox or archive cannot take files
    failed_problem: str | None = None  # the failed folder cannot take files


Stats = list[tuple[str, os.stat_result | None, bool]]
ScanResult = list[tuple[str, int, int, int]]
Built = tuple[NativeWatcher | Poller | None, str, str]


@dataclass
class FolderRuntime:
    """What the daemon knows about one configured folder right now.

    Each folder has executors of its own, so a share that hangs stalls only its folder: the
    `checker` runs folder checks alone (a queue of slow transfers never delays a check past its
    deadline), `io` runs everything else that touches the folder's share.
    """

    config: FolderConfig
    checker: ThreadPoolExecutor
    io: ThreadPoolExecutor
    outage: str | None = None
    output_problem: str | None = None  # outbox or archive unusable: deliveries wait
    failed_problem: str | None = None  # failed folder unusable: filing failures waits
    watch_mode: str = "polling"
    watch_reason: str = "not started"
    watcher: NativeWatcher | Poller | None = None
    watcher_future: Future[Built] | None = None
    watcher_wanted: bool = False  # a (re)start was asked for while one was under way
    check_future: Future[FolderCheck] | None = None
    last_scan_mono: float | None = None
    last_scan_wall: float | None = None
    scan_future: Future[ScanResult] | None = None
    scan_again: bool = False  # a rescan was asked for while one was under way
    scan_started: float = 0.0  # monotonic time the running or last scan began listing
    stat_started: float = 0.0  # monotonic time the running or last stat pass began
    stat_future: Future[Stats] | None = None
    stat_again: bool = False  # an event arrived during a stat pass: one more right after
    quick_confirm: bool = False  # the next stat pass confirms an event's file at once
    closed: bool = False

    @classmethod
    def create(cls, config: FolderConfig) -> FolderRuntime:
        return cls(
            config=config,
            checker=ThreadPoolExecutor(1, thread_name_prefix=f"mh-check-{config.name}"),
            io=ThreadPoolExecutor(FOLDER_IO_THREADS, thread_name_prefix=f"mh-io-{config.name}"),
        )

    @property
    def name(self) -> str:
        return self.config.name

    def close(self) -> None:
        """Let go of the folder's threads; one stuck on a hung share is left to finish alone."""
        self.closed = True
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


class JournalGate:
    """Invariant 9: while the journal refuses writes, nothing new starts anywhere.

    `failed` closes the gate and schedules a probe (a real commit) with backoff; once the probe
    passes, each `on_open` callback runs in order (kept outcomes are written first).
    """

    def __init__(
        self,
        journal: Journal,
        loop: Loop,
        *,
        clock: Callable[[], float],
        monotonic: Callable[[], float],
    ) -> None:
        self._journal = journal
        self._loop = loop
        self._clock = clock
        self._monotonic = monotonic
        self.error: str | None = None
        self._wait = JOURNAL_RETRY_SECONDS
        self.on_open: list[Callable[[], None]] = []

    @property
    def closed(self) -> bool:
        return self.error is not None

    def failed(self, exc: Exception) -> None:
        """The journal refused a write: start nothing new until it takes writes again."""
        if self.error is None:
            self._wait = JOURNAL_RETRY_SECONDS
            log.error(
                "journal.write_refused",
                error=str(exc),
                hint=(
                    f"check the journal database ({self._journal.where}); work resumes by itself"
                    if self._journal.shared
                    else "free space or fix the disk under daemon.state_dir; work resumes by itself"
                ),
            )
        else:
            self._wait = min(self._wait * 2, JOURNAL_RETRY_MAX_SECONDS)
        self.error = str(exc)
        self._loop.at(self._monotonic() + self._wait, self.probe, key="journal-probe", replace=True)

    def probe(self) -> None:
        """A real commit (a rolled-back write can pass on a full disk that refuses commits);
        on success the gate opens and the `on_open` callbacks run."""
        if self.error is None:
            return
        try:
            self._journal.set_meta("journal_probe", str(self._clock()))
        except StateDirError as exc:
            self.failed(exc)
            return
        log.info("journal.writable_again", was=self.error)
        self.error = None
        for callback in self.on_open:
            callback()


@dataclass
class Context:
    """The collaborators and shared state of one running daemon."""

    config: Config
    journal: Journal
    fs: FileSystem
    runner: Runner
    loop: Loop
    gate: JournalGate
    metrics: Metrics
    clock: Callable[[], float]
    monotonic: Callable[[], float]
    tracker: IntakeTracker
    api_pool: ThreadPoolExecutor
    alert: Callable[..., None]
    folders: dict[str, FolderRuntime] = field(default_factory=dict)
    in_flight: dict[int, InFlight] = field(default_factory=dict)
    stopping: bool = False
    # Something changed that may let any job move: a full scheduling pass after this turn.
    dirty: bool = True
    # Jobs whose due time came: a pass over just these (nothing else changed for the rest).
    woken: set[int] = field(default_factory=set)

    def local(self, job: Job) -> Job:
        """On a shared journal: `job` with the paths this host reaches its folder by (hosts
        may mount one share at different paths; see `with_roots`). Else `job` itself."""
        if not self.journal.shared:
            return job
        folder = next((f for f in self.config.folders if f.name == job.folder), None)
        if folder is None:
            return job
        roots = Roots(
            str(folder.inbox), str(folder.outbox), str(folder.archive), str(folder.failed)
        )
        return with_roots(job, roots)

    def holds(self, job: Job) -> bool:
        """True when this daemon may write `job`: its host holds it, or nobody does."""
        return job.holder is None or job.holder == self.journal.host

    def in_outage(self, folder: str) -> bool:
        rt = self.folders.get(folder)
        return rt is not None and rt.outage is not None

    def post_result(self, future: Future[Any], handler: Callable[[Future[Any]], None]) -> None:
        """When `future` finishes, run `handler(future)` on the loop thread."""
        loop = self.loop
        future.add_done_callback(lambda f: loop.post(lambda: handler(f)))
