"""Housekeeping: the journal's history retention, run on a timer in a worker of its own.

A minute after start, then daily, events of finished jobs older than `daemon.history_days` are
compacted (see `Journal.compact_history`). The work runs in its own one-thread executor, never
on the loop thread, in short transactions with a pause between them, so the loop's journal
calls wait at most one batch. While the journal gate is closed, or the daemon is stopping, it
does not start (and a run under way stops after its current batch).
"""

from __future__ import annotations

import threading
from concurrent.futures import Future, ThreadPoolExecutor

import structlog

from mh_watchd.adapters.journal_history import HistoryCompaction
from mh_watchd.core.errors import StateDirError
from mh_watchd.service.context import Context

log = structlog.get_logger("mh_watchd")

FIRST_RUN_SECONDS = 60.0
RUN_EVERY_SECONDS = 24 * 3600.0
SKIPPED_RETRY_SECONDS = 3600.0  # the gate was closed: try again sooner than a day
BATCH_PAUSE_SECONDS = 0.005  # between transactions: the loop gets the journal's lock first
DAY_SECONDS = 86400.0
TIMER_KEY = "housekeeping"


class Housekeeping:
    """Compacts old history now and then; `start` arms it, `stop` cancels it."""

    def __init__(self, ctx: Context) -> None:
        self._ctx = ctx
        self._stopped = threading.Event()
        self._pool = ThreadPoolExecutor(1, thread_name_prefix="mh-housekeeping")
        self._future: Future[HistoryCompaction] | None = None
        self._started_mono = 0.0

    def start(self) -> None:
        """Arm the first run (loop thread only)."""
        self._ctx.loop.after(FIRST_RUN_SECONDS, self.run_now, key=TIMER_KEY)

    def stop(self) -> None:
        """Cancel the timer; a run under way stops after its current batch."""
        self._stopped.set()
        self._ctx.loop.cancel(TIMER_KEY)
        self._pool.shutdown(wait=False, cancel_futures=True)

    def run_now(self) -> None:
        """Start one compaction in the worker unless one runs, the gate is closed or stopping."""
        ctx = self._ctx
        if ctx.stopping or self._stopped.is_set():
            return
        days = ctx.config.daemon.history_days
        if ctx.gate.closed or (self._future is not None and not self._future.done()):
            log.info("journal.history_skipped", why="journal not writable or a run under way")
            ctx.loop.after(SKIPPED_RETRY_SECONDS, self.run_now, key=TIMER_KEY)
            return
        ctx.loop.after(RUN_EVERY_SECONDS, self.run_now, key=TIMER_KEY)
        if days <= 0:
            return  # 0 keeps history forever
        before = ctx.clock() - days * DAY_SECONDS
        self._started_mono = ctx.monotonic()
        self._future = self._pool.submit(
            ctx.journal.compact_history, before, keep_going=self._keep_going
        )
        ctx.post_result(self._future, self._finished)

    def _keep_going(self) -> bool:
        # Worker thread: reads flags only. The wait yields the journal's lock to the loop.
        ctx = self._ctx
        paused_into_stop = self._stopped.wait(BATCH_PAUSE_SECONDS)
        return not (paused_into_stop or ctx.stopping or ctx.gate.closed)

    def _finished(self, future: Future[HistoryCompaction]) -> None:
        if future.cancelled():
            return
        try:
            done = future.result()
        except StateDirError as exc:
            self._ctx.gate.failed(exc)  # the journal refuses writes: invariant 9 takes over
            return
        except Exception as exc:  # the top of a worker: log it, try again tomorrow
            log.error("journal.history_compaction_failed", exc_info=exc)
            return
        log.info(
            "journal.history_compacted",
            events_deleted=done.events_deleted,
            jobs_compacted=done.jobs_compacted,
            batches=done.batches,
            finished=done.finished,
            history_days=self._ctx.config.daemon.history_days,
            seconds=round(self._ctx.monotonic() - self._started_mono, 3),
        )


__all__ = ["Housekeeping"]
