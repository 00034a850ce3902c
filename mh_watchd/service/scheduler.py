"""Which job's next step starts: uploads under `max_parallel_uploads`, creates under
`max_active_renders`, the account gate and the daily credit limit; holds and releases.

The pass runs after a turn in which something changed (a journal write, a due timer, a folder
or account change). A step runs in a worker (share work in the folder's executor, API round
trips in the API pool); its done-callback posts the outcome back to the loop.
"""

from __future__ import annotations

from collections.abc import Callable
from concurrent.futures import Future
from dataclasses import dataclass

import structlog

from mh_watchd.core import backoff
from mh_watchd.core.jobs import ACTIVE_RENDER_STATES, HoldReason, Job, JobState
from mh_watchd.runner import StepOutcome
from mh_watchd.service.account import AccountGate
from mh_watchd.service.context import Context, FolderRuntime, InFlight
from mh_watchd.service.jobbook import JobBook, local_day
from mh_watchd.service.logctx import job_context

log = structlog.get_logger("mh_watchd")

_S = JobState
# Jobs held for the daily limit are looked at again this often (the day may have turned).
DAILY_LIMIT_RECHECK_SECONDS = 60.0


class Aborted(Exception):
    """A transfer stopped because the daemon is shutting down; the journal resumes it."""


@dataclass
class _Slots:
    uploads: int
    active: int
    waiting_uploaded: int
    spent_today: int | None = None


class Scheduler:
    """Starts each due job's next step, or holds or releases it."""

    def __init__(
        self,
        ctx: Context,
        book: JobBook,
        account: AccountGate,
        *,
        progress: dict[int, float],
        on_done: Callable[[int], None],
    ) -> None:
        self._ctx = ctx
        self._book = book
        self._account = account
        self._progress = progress
        self._on_done = on_done

    def schedule(self) -> None:
        """One pass over the due jobs that no step holds, in queue order."""
        ctx = self._ctx
        if not ctx.dirty or ctx.stopping or ctx.gate.closed:
            return
        ctx.dirty = False
        slots = self._slots()
        daily_held = False
        for job in self._book.unfinished():
            assert job.id is not None
            if job.id in ctx.in_flight or not self._book.is_due(job.id):
                continue
            rt = ctx.folders.get(job.folder)
            if job.state is _S.HELD:
                daily_held = daily_held or job.hold_reason is HoldReason.DAILY_LIMIT
                self._consider_release(job, rt)
            elif job.state in (_S.QUEUED, _S.UPLOADING):
                self._admit(job, rt, slots)
            else:
                self._next_step(job, rt)
        if daily_held:
            ctx.loop.after(DAILY_LIMIT_RECHECK_SECONDS, self._wake, key="daily-limit")

    def _wake(self) -> None:
        self._ctx.dirty = True

    def _slots(self) -> _Slots:
        ctx = self._ctx
        jobs = self._book.jobs.values()
        return _Slots(
            # An upload stuck on a hung share does not hold a slot the other folders need.
            uploads=sum(
                1
                for f in ctx.in_flight.values()
                if f.step == "upload" and not ctx.in_outage(f.folder)
            ),
            active=sum(1 for j in jobs if j.state in ACTIVE_RENDER_STATES),
            waiting_uploaded=sum(
                1 for j in jobs if j.state is _S.QUEUED and j.upload_file_path is not None
            ),
        )

    # ------------------------------------------------------------------ queued and uploading
    def _admit(self, job: Job, rt: FolderRuntime | None, slots: _Slots) -> None:
        ctx = self._ctx
        daemon = ctx.config.daemon
        if rt is None and job.project_id is None:
            return  # the folder was removed by a reload: not created, so dropped
        if rt is not None and rt.outage:
            self._hold(job, HoldReason.OUTAGE, f"inbox {rt.config.inbox}: {rt.outage}")
            return
        if self._account.block is not None:
            self._hold(job, self._account.block, "the account needs attention first")
            return
        now = ctx.clock()
        fresh_upload = (
            job.upload_file_path is not None
            and job.uploaded_at is not None
            and now - job.uploaded_at < backoff.UPLOAD_REUSE_SECONDS
        )
        if fresh_upload and job.state is _S.QUEUED:
            if slots.active < daemon.max_active_renders:
                self._submit(job, slots, now)
            return
        if slots.uploads >= daemon.max_parallel_uploads:
            return
        if slots.waiting_uploaded >= daemon.max_active_renders:
            return  # enough uploaded and waiting for a render slot
        with job_context(job):
            if job.state is _S.QUEUED:
                job = self._book.move(
                    job, _S.UPLOADING, "job.uploading", upload_file_path=None, due_at=None
                )
            slots.uploads += 1
            self.start(job, "upload")

    def _submit(self, job: Job, slots: _Slots, now: float) -> None:
        """Journal `submitting`, then send the create (under the daily limit)."""
        limit = self._ctx.config.daemon.daily_credit_limit
        estimate = job.credits_estimate or 0
        with job_context(job):
            if limit:
                if slots.spent_today is None:
                    slots.spent_today = self._ctx.journal.credits_spent(local_day(now))
                if slots.spent_today + estimate > limit:
                    self._book.hold(
                        job,
                        HoldReason.DAILY_LIMIT,
                        f"spent today {slots.spent_today} + estimate {estimate} > limit {limit}",
                    )
                    return
                slots.spent_today += estimate
            job = self._book.move(
                job,
                _S.SUBMITTING,
                "job.submitting",
                credits_day=local_day(now),
                attempts=job.attempts,
                due_at=None,
            )
            slots.active += 1
            self.start(job, "create")

    # ------------------------------------------------------------------ later states
    def _next_step(self, job: Job, rt: FolderRuntime | None) -> None:
        state = job.state
        api = self._ctx.config.api
        if state is _S.SUBMITTING:
            if job.project_id is None:
                # Every create is started in the pass that journals `submitting`, and its
                # outcome stays in flight until journaled: a submitting job with no step
                # running lost its create's answer. Never send it again unasked.
                self._hold(
                    job,
                    HoldReason.AMBIGUOUS_CREATE,
                    "the answer to this job's create request was lost; check the web app",
                )
        elif state is _S.RENDERING:
            now = self._ctx.clock()
            timeout = api.render_timeout_minutes * 60
            if job.render_started_at and now - job.render_started_at > timeout:
                self._hold(
                    job,
                    HoldReason.RENDER_OVERDUE,
                    f"still rendering after {api.render_timeout_minutes:g} min",
                    due_at=now + backoff.OVERDUE_POLL_SECONDS,
                )
                return
            self.start(job, "poll")
        elif state is _S.DOWNLOADING:
            if rt is not None and rt.output_problem:
                self._hold(job, HoldReason.OUTPUT_UNAVAILABLE, rt.output_problem)
                return
            self.start(job, "download")
        elif state is _S.DELIVERING:
            if rt is not None and rt.outage:
                self._hold(job, HoldReason.OUTAGE, f"inbox {rt.config.inbox}: {rt.outage}")
            elif rt is not None and rt.output_problem:
                self._hold(job, HoldReason.OUTPUT_UNAVAILABLE, rt.output_problem)
            else:
                self.start(job, "deliver")

    def _consider_release(self, job: Job, rt: FolderRuntime | None) -> None:
        reason = job.hold_reason
        if reason is HoldReason.OUTAGE:
            release = rt is not None and not rt.outage
        elif reason is HoldReason.OUTPUT_UNAVAILABLE:
            release = rt is None or not rt.output_problem
        elif reason in (HoldReason.AUTH, HoldReason.CREDITS):
            release = self._account.block is None
        elif reason is HoldReason.DAILY_LIMIT:
            limit = self._ctx.config.daemon.daily_credit_limit
            spent = self._ctx.journal.credits_spent(local_day(self._ctx.clock()))
            release = not limit or spent + (job.credits_estimate or 0) <= limit
        else:
            release = False
            if reason is HoldReason.RENDER_OVERDUE and job.project_id is not None:
                self.start(job, "poll")
        if release:
            with job_context(job):
                self._book.release(job)

    def _hold(self, job: Job, reason: HoldReason, why: str, **changes: object) -> None:
        with job_context(job):
            self._book.hold(job, reason, why, **changes)

    # ------------------------------------------------------------------ steps
    def start(self, job: Job, step: str) -> None:
        """Run `step` for `job` in a worker. The job stays in flight until its outcome is
        journaled; the outcome comes back to the loop through `on_done`."""
        ctx = self._ctx
        runner = ctx.runner
        job_id = job.id
        assert job_id is not None
        progress_of = self._progress

        def progress(done: int, total: int) -> None:
            if ctx.stopping:
                raise Aborted("the daemon is stopping")
            if total:
                progress_of[job_id] = done / total

        rt = ctx.folders.get(job.folder)
        share_pool = rt.io if rt is not None and not rt.closed else ctx.api_pool
        fut: Future[StepOutcome]
        if step == "upload":
            fut = share_pool.submit(_bound(job, runner.upload), job, progress)
        elif step == "download":
            fut = share_pool.submit(_bound(job, runner.download), job, progress)
        elif step == "deliver":
            fut = share_pool.submit(_bound(job, runner.deliver), job)
        elif step == "create":
            fut = ctx.api_pool.submit(_bound(job, runner.create), job)
        elif step == "poll":
            fut = ctx.api_pool.submit(_bound(job, runner.poll), job)
        else:  # pragma: no cover - a programming error
            raise ValueError(step)
        ctx.in_flight[job_id] = InFlight(job_id, step, fut, job.folder)
        on_done, loop = self._on_done, ctx.loop
        fut.add_done_callback(lambda _f: loop.post(lambda: on_done(job_id)))


def _bound(job: Job, step: Callable[..., StepOutcome]) -> Callable[..., StepOutcome]:
    """`step` run with the job's log context bound in its worker thread."""

    def run(*args: object) -> StepOutcome:
        with job_context(job):
            return step(*args)

    return run
