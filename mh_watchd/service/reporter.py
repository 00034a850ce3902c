"""What the daemon tells the outside: /healthz, transfer progress for `status`, systemd's
STATUS line and watchdog pings, and alerts to the notifier."""

from __future__ import annotations

from typing import Any

import structlog

from mh_watchd import __version__
from mh_watchd.adapters.http_status import HealthReport
from mh_watchd.adapters.notifier import EventNotifier
from mh_watchd.adapters.sdnotify import SystemdNotifier
from mh_watchd.core.jobs import Job
from mh_watchd.service.context import Context
from mh_watchd.service.jobbook import JobBook

log = structlog.get_logger("mh_watchd")

PROGRESS_WRITE_SECONDS = 2.0
# The STATUS line and the job gauges follow the job counts at most this often.
STATUS_SECONDS = 1.0
# /healthz fails when the loop has not turned for this long (it turns at least every second).
LOOP_STALE_SECONDS = 5.0


class Alerts:
    """Job and folder events for the notifier (a disabled notifier drops them)."""

    def __init__(self, notifier: EventNotifier) -> None:
        self._notifier = notifier

    def __call__(self, event: str, job: Job | None, reason: str, **fields: Any) -> None:
        self._notifier.notify(
            event,
            folder=fields.pop("folder", job.folder if job else None),
            file=job.rel_path if job else None,
            job=job.id if job else None,
            reason=reason,
            **fields,
        )


class Reporter:
    """Health, progress and systemd reporting."""

    def __init__(
        self,
        ctx: Context,
        book: JobBook,
        *,
        notify: SystemdNotifier,
        progress: dict[int, float],
    ) -> None:
        self._ctx = ctx
        self._book = book
        self._notify = notify
        self.progress = progress
        self._stored: dict[int, float] = {}
        self._status_line = ""
        self._status_sent = -STATUS_SECONDS
        self._seen: tuple[int, tuple[str | None, ...]] = (-1, ())

    def start(self) -> None:
        interval = self._notify.watchdog_interval_seconds()
        if interval is not None:
            self._ctx.loop.after(0.0, lambda: self._ping(interval), key="watchdog")

    def health(self) -> HealthReport:
        """For /healthz: the loop turned recently and the journal is writable."""
        ctx = self._ctx
        reasons = []
        age = ctx.monotonic() - ctx.loop.last_turn
        if age > LOOP_STALE_SECONDS:
            reasons.append(f"main loop last turned {age:.1f} s ago")
        if ctx.gate.error is not None:
            reasons.append(f"journal refuses writes: {ctx.gate.error}")
        elif not ctx.journal.writable_check():
            reasons.append("journal is not writable")
        for rt in ctx.folders.values():
            if rt.watcher is None and rt.watcher_future is None and not rt.outage:
                reasons.append(f"folder {rt.config.name} has no watcher")
        outages = tuple(
            f"{rt.config.name}: {rt.outage}" for rt in ctx.folders.values() if rt.outage
        )
        return HealthReport(
            healthy=not reasons,
            reasons=tuple(reasons),
            outages=outages,
            details={"jobs_unfinished": len(self._book.jobs), "version": __version__},
        )

    def report(self) -> None:
        """After each turn: when the counts changed, the STATUS line and the job gauges (sent
        at most every `STATUS_SECONDS`: a busy turn rate never floods systemd or sqlite), and
        a progress timer while transfers run."""
        ctx = self._ctx
        if self.progress and ctx.loop.due("progress") is None:
            ctx.loop.after(PROGRESS_WRITE_SECONDS, self._store_progress, key="progress")
        seen = (self._book.version, tuple(rt.outage for rt in ctx.folders.values()))
        if seen == self._seen:
            return
        self._seen = seen
        counts: dict[str, int] = {}
        for job in self._book.jobs.values():
            counts[job.state.value] = counts.get(job.state.value, 0) + 1
        line = ", ".join(f"{k} {v}" for k, v in sorted(counts.items())) or "idle"
        outages = [n for n, rt in ctx.folders.items() if rt.outage]
        if outages:
            line += f"; outage: {', '.join(outages)}"
        if line != self._status_line:
            self._status_line = line
            ctx.loop.at(self._status_sent + STATUS_SECONDS, self._send_status, key="status")

    def _send_status(self) -> None:
        ctx = self._ctx
        self._status_sent = ctx.monotonic()
        self._notify.status(self._status_line)
        ctx.metrics.set_jobs(ctx.journal.counts_by_folder_and_state())

    def _store_progress(self) -> None:
        """Write transfer progress for `status` every few seconds (not an event per chunk)."""
        if self._ctx.gate.closed:
            return
        for job_id, done in list(self.progress.items()):
            if job_id in self._ctx.in_flight and self._stored.get(job_id) != round(done, 3):
                self._ctx.journal.set_progress(job_id, done)
                self._stored[job_id] = round(done, 3)
        self._stored = {k: v for k, v in self._stored.items() if k in self.progress}

    def _ping(self, interval: float) -> None:
        self._ctx.loop.after(interval, lambda: self._ping(interval), key="watchdog")
        report = self.health()
        stuck = [r for r in report.reasons if not r.startswith("journal refuses writes")]
        if not stuck:
            # A journal that refuses writes is waited out, not restarted: a restart would turn
            # outcomes kept in memory into ambiguous holds (invariant 9).
            self._notify.watchdog()
        else:
            # No ping: systemd restarts a daemon whose loop or watchers are stuck.
            log.error("daemon.unhealthy", reasons=list(report.reasons))
