"""The journal's unfinished jobs as the daemon sees them, and every write of a job's state.

`JobBook.jobs` is a write-through copy of the journal's unfinished rows: it changes only with
the row a journal write returned, so the daemon never knows a job state the journal lacks.
When each job is next due is a timer, kept on the monotonic clock (the journal's wall-clock
`due_at` is for restarts; a clock step while running must not stall or rush a job).
"""

from __future__ import annotations

import dataclasses
import time
from collections.abc import Callable, Mapping
from typing import Any

import structlog

from mh_watchd.adapters.journal import ClaimLost
from mh_watchd.core import backoff
from mh_watchd.core.jobs import HoldReason, Job, JobState, hold, release, transition
from mh_watchd.service.context import Context

log = structlog.get_logger("mh_watchd")


def local_day(wall: float) -> str:
    """The host's local calendar date of `wall`, as YYYY-MM-DD (credits are booked to it)."""
    return time.strftime("%Y-%m-%d", time.localtime(wall))


class JobBook:
    """Unfinished jobs, their due times, and the journal writes that change them."""

    def __init__(self, ctx: Context) -> None:
        self._ctx = ctx
        self.jobs: dict[int, Job] = {}
        self._due: dict[int, float] = {}
        # Called with every row written (intake looks again at a file waiting on its path).
        self.on_saved: list[Callable[[Job], None]] = []
        self.version = 0  # counts the writes, so a reader can tell nothing changed

    # ------------------------------------------------------------------ reading
    def unfinished(self) -> list[Job]:
        """Unfinished jobs in id order (queue order)."""
        return [self.jobs[k] for k in sorted(self.jobs)]

    def is_due(self, job_id: int, monotonic_now: float | None = None) -> bool:
        due = self._due.get(job_id)
        if due is None:
            return True
        return due <= (self._ctx.monotonic() if monotonic_now is None else monotonic_now)

    def load(self, job: Job) -> None:
        """Take a row read from the journal (at start-up) as it is."""
        assert job.id is not None
        self.jobs[job.id] = job
        self._set_due(job)

    def forget(self, job_id: int) -> None:
        """Stop scheduling a job (its folder was removed before it was created)."""
        self.jobs.pop(job_id, None)
        self._due.pop(job_id, None)
        self.version += 1
        self._ctx.loop.cancel(("job", job_id))

    # ------------------------------------------------------------------ writing
    def insert(
        self,
        job: Job,
        event: str,
        detail: Mapping[str, Any],
        *,
        expect_latest: int | None = None,
    ) -> Job:
        """Record a new job; `expect_latest` as `Journal.insert` (another host's job of the
        same file recorded meanwhile is a JournalConflict, and nothing is written)."""
        saved = self._ctx.journal.insert(
            job, event=event, detail=dict(detail), expect_latest=expect_latest
        )
        self._track(saved)
        return saved

    def save(
        self,
        job: Job,
        event: str,
        detail: Mapping[str, Any] | None = None,
        *,
        budget: tuple[str, int] | None = None,
    ) -> Job:
        """Write `job` with `event`; the journal's row is what the book keeps.

        Raises ClaimLost (after letting go of the job: another host holds it now), OverBudget
        when `budget` refuses a move that spends, and what `Journal.save` raises.
        """
        try:
            saved = self._ctx.journal.save(
                job, event=event, detail=dict(detail or {}), budget=budget
            )
        except ClaimLost as exc:
            log.warning("job.claim_lost", job_id=job.id, holder=exc.holder)
            if job.id is not None:
                self.forget(job.id)
            self._ctx.dirty = True
            raise
        self._track(saved)
        return saved

    def move(self, job: Job, state: JobState, event: str, **changes: Any) -> Job:
        """A legal transition to `state`, journaled and logged as `event` (`_budget`: see
        `save`)."""
        detail = changes.pop("_detail", {})
        budget = changes.pop("_budget", None)
        new = transition(job, state, updated_at=self._ctx.clock(), **changes)
        saved = self.save(new, event, detail, budget=budget)
        log.info(
            event,
            project_id=saved.project_id,
            state=saved.state.value,
            **({"hold_reason": saved.hold_reason.value} if saved.hold_reason else {}),
            **detail,
        )
        return saved

    def hold(self, job: Job, reason: HoldReason, why: str, **changes: Any) -> Job:
        new = hold(job, reason, updated_at=self._ctx.clock(), last_error=why, **changes)
        saved = self.save(new, "job.held", {"hold_reason": reason.value, "why": why})
        log.warning("job.held", project_id=job.project_id, hold_reason=reason.value, why=why)
        self._ctx.alert("held", saved, f"{reason.value}: {why}")
        return saved

    def release(self, job: Job) -> Job:
        was = job.hold_reason.value if job.hold_reason else None
        new = release(job, updated_at=self._ctx.clock(), due_at=None, attempts=0)
        saved = self.save(new, "job.released", {"was": was})
        log.info("job.released", was=was, state=saved.state.value)
        return saved

    def book(self, job: Job, credits: int | None) -> None:
        """Book a project's charge to the day its create was sent (for daily_credit_limit)."""
        if job.project_id is None or credits is None or job.id is None:
            return
        now = self._ctx.clock()
        self._ctx.journal.book_charge(
            job_id=job.id,
            project_id=job.project_id,
            day=job.credits_day or local_day(now),
            credits=credits,
            at=now,
        )

    def wait_until(self, job: Job, seconds: float) -> None:
        """Look at `job` again in `seconds` without a journal write (a render poll that
        changed nothing: a restart polls at once, which costs one request)."""
        assert job.id is not None
        self._set_due_in(job.id, seconds)

    # ------------------------------------------------------------------ internals
    def _track(self, saved: Job) -> None:
        assert saved.id is not None
        self._ctx.dirty = True
        self.version += 1
        if saved.is_terminal:
            self.forget(saved.id)
        else:
            self.jobs[saved.id] = saved
            self._set_due(saved)
        for callback in self.on_saved:
            callback(saved)

    def _set_due(self, job: Job) -> None:
        assert job.id is not None
        if job.due_at is None:
            self._due.pop(job.id, None)
            self._ctx.loop.cancel(("job", job.id))
        else:
            self._set_due_in(job.id, backoff.clamp_due_seconds(job.due_at - self._ctx.clock()))

    def _set_due_in(self, job_id: int, seconds: float) -> None:
        when = self._ctx.monotonic() + max(0.0, seconds)
        self._due[job_id] = when
        self._ctx.loop.at(
            when, lambda: self._ctx.woken.add(job_id), key=("job", job_id), replace=True
        )


def after_restart(job: Job, now: float) -> Job:
    """A job read at start-up: a due time the wall clock jumped past is pulled in."""
    if job.due_at is None:
        return job
    due = now + backoff.clamp_due_seconds(job.due_at - now)
    return dataclasses.replace(job, due_at=min(job.due_at, due))
