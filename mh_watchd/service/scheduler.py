"""Which job's next step starts: uploads under `max_parallel_uploads`, creates under
`max_active_renders`, the account gate and the daily credit limit; holds and releases. The
decision for each job is the pure `core.effects.next_effect`; this module gathers its facts
and performs what it chose.

The pass runs after a turn in which something changed (a journal write, a due timer, a folder
or account change). A step runs in a worker (share work in the folder's executor, API round
trips in the API pool); its done-callback posts the outcome back to the loop.
"""

from __future__ import annotations

from collections.abc import Callable
from concurrent.futures import Future
from dataclasses import dataclass

import structlog

from mh_watchd.adapters.journal import ClaimLost, OverBudget
from mh_watchd.core.effects import Effect, EffectKind, Facts, next_effect
from mh_watchd.core.jobs import ACTIVE_RENDER_STATES, HoldReason, Job, JobState
from mh_watchd.core.outcomes import Step
from mh_watchd.runner import StepOutcome
from mh_watchd.service.account import AccountGate
from mh_watchd.service.context import Context, InFlight
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
        lease_ok: Callable[[], bool] = lambda: True,
    ) -> None:
        self._ctx = ctx
        self._book = book
        self._account = account
        self._progress = progress
        self._on_done = on_done
        self._lease_ok = lease_ok

    def schedule(self) -> None:
        """One pass over the due jobs that no step holds, in queue order: every unfinished
        job when something changed (`ctx.dirty`), else only the jobs whose due time came."""
        ctx = self._ctx
        if not (ctx.dirty or ctx.woken) or ctx.stopping or ctx.gate.closed:
            return
        if not self._lease_ok():
            # The leases were not renewed in time: another host may take these jobs soon.
            # The claim keeper's next renewal lets the pass run again.
            return
        if ctx.dirty:
            candidates = self._book.unfinished()
        else:  # only due times came: the other jobs' facts are as the last pass saw them
            candidates = [self._book.jobs[i] for i in sorted(ctx.woken) if i in self._book.jobs]
        ctx.dirty = False
        ctx.woken.clear()
        slots = self._slots()
        now, mono = ctx.clock(), ctx.monotonic()
        limit = ctx.config.daemon.daily_credit_limit
        # One Facts per folder, built again only after something changed the slots.
        facts: dict[str, Facts] = {}
        daily_held = False
        for job in candidates:
            assert job.id is not None
            if job.id in ctx.in_flight or not self._book.is_due(job.id, mono):
                continue
            daily_held = daily_held or job.hold_reason is HoldReason.DAILY_LIMIT
            spends = job.state is _S.QUEUED or job.hold_reason is HoldReason.DAILY_LIMIT
            if limit and spends and slots.spent_today is None:
                slots.spent_today = ctx.journal.credits_spent(local_day(now))
                facts.clear()
            fact = facts.get(job.folder)
            if fact is None:
                fact = facts[job.folder] = self._facts(job.folder, slots, now)
            effect = next_effect(job, fact)
            if effect.kind is not EffectKind.NONE:
                with job_context(job):
                    try:
                        self._perform(job, effect, slots)
                    except ClaimLost:
                        pass  # another host holds it now; the book let go of it
                    except OverBudget as exc:
                        self._over_budget(job, exc)
                facts.clear()
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

    def _facts(self, folder: str, slots: _Slots, now: float) -> Facts:
        ctx = self._ctx
        config = ctx.config
        rt = ctx.folders.get(folder)
        limit = config.daemon.daily_credit_limit
        return Facts(
            now=now,
            folder_configured=rt is not None,
            inbox=str(rt.config.inbox) if rt is not None else "",
            outage=rt.outage if rt is not None else None,
            output_problem=rt.output_problem if rt is not None else None,
            account_block=self._account.block,
            upload_slot=slots.uploads < config.daemon.max_parallel_uploads
            and slots.waiting_uploaded < config.daemon.max_active_renders,
            render_slot=slots.active < config.daemon.max_active_renders,
            daily_limit=limit,
            spent_today=slots.spent_today or 0,
            render_timeout_seconds=config.api.render_timeout_minutes * 60,
        )

    def _perform(self, job: Job, effect: Effect, slots: _Slots) -> None:
        book = self._book
        if effect.kind is EffectKind.HOLD:
            assert effect.hold_reason is not None
            changes = {}
            if effect.due_in_seconds is not None:
                changes["due_at"] = self._ctx.clock() + effect.due_in_seconds
            book.hold(job, effect.hold_reason, effect.why, **changes)
        elif effect.kind is EffectKind.RELEASE:
            book.release(job)
        elif effect.step is Step.CREATE:
            now = self._ctx.clock()
            slots.spent_today = (slots.spent_today or 0) + (job.credits_estimate or 0)
            slots.active += 1
            limit = self._ctx.config.daemon.daily_credit_limit
            day = local_day(now)
            job = book.move(
                job,
                _S.SUBMITTING,
                "job.submitting",
                credits_day=day,
                attempts=job.attempts,
                due_at=None,
                # Checked again in the write, with every host's spending: two hosts never
                # both spend the day's last credits.
                _budget=(day, limit) if limit else None,
            )
            self.start(job, effect.step)
        else:
            assert effect.step is not None
            if effect.step is Step.UPLOAD:
                slots.uploads += 1
            if effect.state is _S.UPLOADING:
                job = book.move(
                    job, _S.UPLOADING, "job.uploading", upload_file_path=None, due_at=None
                )
            self.start(job, effect.step)

    def _over_budget(self, job: Job, exc: OverBudget) -> None:
        """Another host spent meanwhile: the create waits for the day's limit like any other."""
        limit = self._ctx.config.daemon.daily_credit_limit
        estimate = job.credits_estimate or 0
        self._book.hold(
            job,
            HoldReason.DAILY_LIMIT,
            f"spent today {exc.spent} (every host) + estimate {estimate} > limit {limit}",
        )
        self._ctx.loop.after(DAILY_LIMIT_RECHECK_SECONDS, self._wake, key="daily-limit")

    # ------------------------------------------------------------------ steps
    def start(self, job: Job, step: Step) -> None:
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
        if step is Step.UPLOAD:
            fut = share_pool.submit(_bound(job, runner.upload), job, progress)
        elif step is Step.DOWNLOAD:
            fut = share_pool.submit(_bound(job, runner.download), job, progress)
        elif step is Step.DELIVER:
            fut = share_pool.submit(_bound(job, runner.deliver), job)
        elif step is Step.CREATE:
            fut = ctx.api_pool.submit(_bound(job, runner.create), job)
        else:
            fut = ctx.api_pool.submit(_bound(job, runner.poll), job)
        ctx.in_flight[job_id] = InFlight(job_id, step.value, fut, job.folder)
        on_done, loop = self._on_done, ctx.loop
        fut.add_done_callback(lambda _f: loop.post(lambda: on_done(job_id)))


def _bound(job: Job, step: Callable[..., StepOutcome]) -> Callable[..., StepOutcome]:
    """`step` run with the job's log context bound in its worker thread."""

    def run(*args: object) -> StepOutcome:
        with job_context(job):
            return step(*args)

    return run
