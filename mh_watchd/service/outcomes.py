"""A finished step's outcome, applied to the journal as the one legal move `next_move` chose.

The step stays in flight until its move is committed: an outcome the journal refuses is kept
and written first once the journal takes writes again (invariant 9), and its job is not
scheduled meanwhile.
"""

from __future__ import annotations

import contextlib
import dataclasses
from typing import Any

import structlog

from mh_watchd.adapters.journal import ClaimLost
from mh_watchd.core import backoff
from mh_watchd.core.api import Project
from mh_watchd.core.jobs import HoldReason, Job, JobState
from mh_watchd.core.outcomes import Kind, Move, PollFacts, Step, next_move
from mh_watchd.runner import StepOutcome
from mh_watchd.service.account import AccountGate
from mh_watchd.service.context import Context, InFlight
from mh_watchd.service.failures import FailureFiler
from mh_watchd.service.jobbook import JobBook
from mh_watchd.service.logctx import job_context
from mh_watchd.service.scheduler import Aborted

log = structlog.get_logger("mh_watchd")

# What each step asked for, named in a failed job's .error.json.
_REQUESTS = {
    Step.UPLOAD: "PUT upload URL",
    Step.CREATE: "POST /v1/video-to-video",
    Step.DOWNLOAD: "GET download URL",
    Step.DELIVER: "delivery to the outbox",
}


def poll_facts(project: Project | None) -> PollFacts | None:
    """What `next_move` needs to know of a polled project."""
    if project is None:
        return None
    err = project.error
    return PollFacts(project.status, err.code if err else None, err.message if err else None)


class OutcomeApplier:
    """Journals each finished step's outcome."""

    def __init__(
        self,
        ctx: Context,
        book: JobBook,
        account: AccountGate,
        failures: FailureFiler,
        *,
        progress: dict[int, float],
    ) -> None:
        self._ctx = ctx
        self._book = book
        self._account = account
        self._failures = failures
        self._progress = progress

    def step_done(self, job_id: int) -> None:
        """A step's future finished (posted by its done-callback): record its outcome."""
        flight = self._ctx.in_flight.get(job_id)
        if flight is None or flight.outcome is not None or not flight.future.done():
            return
        try:
            flight.outcome = flight.future.result()
        except Exception as exc:  # a bug in a step: an outcome like any other
            log.exception("job.step_crashed", job_id=job_id, step=flight.step)
            flight.outcome = StepOutcome(job_id, flight.step, {}, error=exc)
        if not self._ctx.gate.closed:
            self._record(flight)  # StateDirError: kept in flight, written first later

    def apply_kept(self) -> None:
        """The journal takes writes again: the outcomes it refused are written first."""
        for _job_id, flight in sorted(self._ctx.in_flight.items()):
            if flight.outcome is not None:
                self._record(flight)

    def _record(self, flight: InFlight) -> None:
        outcome = flight.outcome
        assert outcome is not None
        ctx = self._ctx
        if flight.step != "poll":
            ctx.dirty = True  # its slot is free (a poll holds none; its writes mark the book)
        if isinstance(outcome.error, Aborted):
            del ctx.in_flight[flight.job_id]  # stopping: the journal's state resumes it
            return
        job = ctx.journal.get(flight.job_id)
        if job is not None and not ctx.holds(job):
            # Our lease ran out mid-step and another host took the job: its outcome is
            # theirs to find out again (they resume by the journal's rules).
            with job_context(job):
                log.warning("job.claim_lost", holder=job.holder, step=flight.step)
            self._book.forget(flight.job_id)
            job = None
        if job is not None:
            with job_context(job), contextlib.suppress(ClaimLost):  # the book let go of it
                self._apply(job, outcome)
        del ctx.in_flight[flight.job_id]
        self._progress.pop(flight.job_id, None)

    def _apply(self, job: Job, outcome: StepOutcome) -> None:
        """Apply `next_move` for this outcome: one journal write (plus its booking)."""
        step = Step(outcome.step)
        project = outcome.project
        api = self._ctx.config.api
        overdue_limit = backoff.OVERDUE_GIVE_UP_SECONDS + api.render_timeout_minutes * 60
        move = next_move(
            job,
            step,
            outcome.error,
            poll=poll_facts(project),
            poll_interval_seconds=api.poll_interval_seconds,
            render_overdue_give_up=bool(
                job.render_started_at and self._ctx.clock() - job.render_started_at > overdue_limit
            ),
        )
        if move.kind is Kind.STALE:
            log.info("job.outcome_stale", step=step.value, state=job.state.value)
            return
        changes = dict(outcome.changes) if outcome.error is None else {}
        if step is Step.POLL and project is not None and project.is_terminal:
            # The final word on the cost: corrections and refunds included.
            self._book.book(dataclasses.replace(job, **changes), project.credits_charged)
        self._perform(job, step, move, changes, outcome)

    def _perform(
        self, job: Job, step: Step, move: Move, changes: dict[str, Any], outcome: StepOutcome
    ) -> None:
        assert move.state is not None
        if move.wait_seconds is not None:
            changes["due_at"] = self._ctx.clock() + move.wait_seconds
        elif move.kind is not Kind.WAIT:
            changes.setdefault("due_at", None)
        if move.clear_credits_day:
            changes["credits_day"] = None
        if move.kind is Kind.ADVANCE:
            saved = self._book.move(job, move.state, move.event, attempts=move.attempts, **changes)
            self._after_advance(saved, step)
        elif move.kind is Kind.WAIT:
            self._wait(job, step, move, changes, outcome)
        elif move.kind is Kind.HOLD:
            assert move.hold_reason is not None
            if move.hold_reason in (HoldReason.AUTH, HoldReason.CREDITS):
                self._account.blocked(move.hold_reason)
            self._book.hold(
                job,
                move.hold_reason,
                move.reason,
                resume_state=move.resume_state,
                attempts=0,
                **changes,
            )
        elif move.kind is Kind.SUPERSEDE:
            self._book.move(
                job,
                JobState.SUPERSEDED,
                "job.superseded",
                last_error=f"superseded: {move.reason}",
                _detail={"why": move.reason},
            )
        else:
            self._fail(job, step, move, changes, outcome)

    def _after_advance(self, job: Job, step: Step) -> None:
        metrics = self._ctx.metrics
        if step is Step.UPLOAD:
            metrics.bytes_uploaded(job.folder, job.size)
        elif step is Step.CREATE:
            metrics.credits_charged(job.folder, job.credits_charged or 0)
            self._book.book(job, job.credits_charged)
            self._account.unblocked()
        elif step is Step.DOWNLOAD:
            metrics.bytes_downloaded(job.folder, sum(o.size or 0 for o in job.outputs))
        elif step is Step.DELIVER:
            self._ctx.alert("done", job, "delivered", output=[o.final_path for o in job.outputs])

    def _wait(
        self, job: Job, step: Step, move: Move, changes: dict[str, Any], outcome: StepOutcome
    ) -> None:
        """Same step again later. A render poll that changed nothing is not journaled: the
        journal keeps the due time of the last real change, and a restart polls at once."""
        assert move.state is not None
        changes["attempts"] = move.attempts
        ctx: dict[str, Any] = {"step": step.value, "attempts": move.attempts}
        if outcome.error is not None:
            ctx["error"] = str(outcome.error)
        if move.attempts:
            changes["last_error"] = move.reason
            log.warning("job.retry_scheduled", **ctx)
        quiet_poll = (
            move.event == "job.render_progress"
            and not job.attempts
            and not move.attempts
            and all(getattr(job, k) == v for k, v in outcome.changes.items())
        )
        if move.state is not job.state:
            self._book.move(job, move.state, move.event, **changes)
        elif quiet_poll and move.wait_seconds is not None:
            self._book.wait_until(job, move.wait_seconds)
        else:
            self._book.save(
                dataclasses.replace(job, updated_at=self._ctx.clock(), **changes), move.event, ctx
            )

    def _fail(
        self, job: Job, step: Step, move: Move, changes: dict[str, Any], outcome: StepOutcome
    ) -> None:
        error = outcome.error
        service = getattr(error, "service_message", None) if error is not None else None
        project = outcome.project
        if project is not None and error is None:
            service = project.error.message if project.error else project.status
            job = dataclasses.replace(job, **changes)
        request = _REQUESTS.get(step, f"GET /v1/video-projects/{job.project_id}")
        self._failures.fail(job, move.reason, request=request, service=service)
