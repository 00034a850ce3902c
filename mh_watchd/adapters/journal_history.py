"""The journal's history retention: old events of finished jobs are compacted away.

A job's events are its story; once the job is finished (done, failed, superseded) and the story
is older than `daemon.history_days`, only its last event is kept, the one that ends in the
state the job's row shows, so `events(job_id)` is never empty and a history still ends in its
job's state. Job rows (with their fingerprints, which stop a re-dropped file from being paid
for again) and charges (the daily credit limit and booking) are never touched.

The work goes in short transactions (one window of job ids, at most `batch_rows` deletions
each), so the daemon, which shares the connection and its lock, never waits long. Deleted
pages are reused by later writes; the file itself shrinks only after a VACUUM.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

from mh_watchd.adapters.journal_connection import JournalConnection
from mh_watchd.adapters.journal_rows import TERMINAL_VALUES

HISTORY_BATCH_ROWS = 10_000
HISTORY_JOB_WINDOW = 2_000

_TERMINAL_MARKS = ", ".join("?" for _ in TERMINAL_VALUES)
# Events of finished jobs in one window of job ids, older than the cutoff, but never a job's
# last event. events_by_job (job_id, id) serves both the join and the MAX.
_OLD_EVENTS_SQL = (
    "SELECT e.id, e.job_id FROM jobs AS j JOIN events AS e ON e.job_id = j.id"
    f" WHERE j.id >= ? AND j.id < ? AND j.state IN ({_TERMINAL_MARKS}) AND e.at < ?"
    " AND e.id < (SELECT MAX(l.id) FROM events AS l WHERE l.job_id = j.id)"
    " LIMIT ?"
)


@dataclass(frozen=True)
class HistoryCompaction:
    """What one `compact_history` run did."""

    events_deleted: int = 0
    jobs_compacted: int = 0  # jobs that lost at least one event
    batches: int = 0  # write transactions it took
    finished: bool = True  # False when `keep_going` stopped it early


class EventHistory(JournalConnection):
    """History retention over the `events` table (reads `jobs` for ids and states only)."""

    def compact_history(
        self,
        before: float,
        *,
        batch_rows: int = HISTORY_BATCH_ROWS,
        job_window: int = HISTORY_JOB_WINDOW,
        keep_going: Callable[[], bool] = lambda: True,
    ) -> HistoryCompaction:
        """Delete events at wall time < `before` of finished jobs, keeping each job's last one.

        Works in windows of `job_window` job ids, each transaction deleting at most
        `batch_rows` events; `keep_going()` is asked before each window (False stops early;
        what is deleted stays deleted). Returns the counts. Raises StateDirError when a write
        is refused (what earlier batches deleted stays deleted).
        """
        if batch_rows < 1 or job_window < 1:
            raise ValueError("batch_rows and job_window must be at least 1")
        with self._reading() as conn:
            top = conn.execute("SELECT COALESCE(MAX(id), 0) AS top FROM jobs").fetchone()["top"]
        deleted = batches = 0
        jobs: set[int] = set()
        low = 1
        while low <= top:
            if not keep_going():
                return HistoryCompaction(deleted, len(jobs), batches, finished=False)
            params = (low, low + job_window, *TERMINAL_VALUES, before, batch_rows)
            with self._reading() as conn:
                found = conn.execute(_OLD_EVENTS_SQL, params).fetchone() is not None
            if not found:  # most windows, once compacted: no write lock taken for nothing
                low += job_window
                continue
            # Chosen again inside the write: a `retry` may have reopened a job meanwhile.
            with self._writing() as conn:
                rows = conn.execute(_OLD_EVENTS_SQL, params).fetchall()
                conn.executemany("DELETE FROM events WHERE id = ?", [(r["id"],) for r in rows])
            batches += 1
            deleted += len(rows)
            jobs.update(r["job_id"] for r in rows)
            if len(rows) < batch_rows:
                low += job_window  # this window is done; else the same window again
        return HistoryCompaction(deleted, len(jobs), batches)
