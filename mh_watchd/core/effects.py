"""Which effect a due job needs next: the pure decision behind the daemon's scheduler.

`next_effect()` takes the job as the journal holds it and what the daemon knows right now
(its folder's shares, the account gate, free slots, today's spending) and returns an `Effect`:
start a step (journaling the state it announces first), hold the job, release it, or nothing.
Every state it moves a job to is a legal move of `jobs.LEGAL_MOVES`; nothing here performs I/O
or reads a clock.
"""

from __future__ import annotations

from dataclasses import dataclass
from enum import StrEnum

from mh_watchd.core import backoff
from mh_watchd.core.jobs import HoldReason, Job, JobState
from mh_watchd.core.outcomes import Step

_S = JobState


class EffectKind(StrEnum):
    START = "start"  # journal `state` (when set), then run `step`
    HOLD = "hold"  # held with `hold_reason`
    RELEASE = "release"  # back to the state it was held from
    NONE = "none"  # nothing now (no free slot, still held, finished)


@dataclass(frozen=True)
class Facts:
    """What the daemon knows when it looks at one job. Folder facts are None when fine."""

    now: float  # wall clock, compared with the job's own wall-clock times
    folder_configured: bool = True  # False: a reload removed the job's folder
    inbox: str = ""
    outage: str | None = None  # the folder's inbox is away
    output_problem: str | None = None  # the outbox or archive cannot take files
    account_block: HoldReason | None = None  # AUTH or CREDITS while the gate is shut
    upload_slot: bool = True  # an upload may start (uploads and uploaded-and-waiting)
    render_slot: bool = True  # a create may start (submitting + rendering < max)
    daily_limit: int = 0  # 0: no limit
    spent_today: int = 0  # credits booked today (all hosts' spending in the journal)
    render_timeout_seconds: float = 180 * 60.0


@dataclass(frozen=True)
class Effect:
    kind: EffectKind
    step: Step | None = None
    state: JobState | None = None  # START: the state journaled before the step runs
    hold_reason: HoldReason | None = None
    why: str = ""
    due_in_seconds: float | None = None  # HOLD: look at it again this long from now

    @property
    def credits(self) -> bool:
        """True when the effect spends today's budget (a create)."""
        return self.step is Step.CREATE


NOTHING = Effect(EffectKind.NONE)


def fresh_upload(job: Job, now: float) -> bool:
    """The job's uploaded file is still on the service (uploads expire)."""
    return (
        job.upload_file_path is not None
        and job.uploaded_at is not None
        and now - job.uploaded_at < backoff.UPLOAD_REUSE_SECONDS
    )


def next_effect(job: Job, facts: Facts) -> Effect:
    """The effect `job` needs next, given `facts`."""
    if job.state is _S.HELD:
        return _held(job, facts)
    if job.state in (_S.QUEUED, _S.UPLOADING):
        return _admit(job, facts)
    if job.state is _S.SUBMITTING:
        if job.project_id is None:
            # A create is started in the pass that journals `submitting`, and its outcome
            # stays in flight until journaled: a submitting job with no step running lost its
            # create's answer. Never send it again unasked.
            return Effect(
                EffectKind.HOLD,
                hold_reason=HoldReason.AMBIGUOUS_CREATE,
                why="the answer to this job's create request was lost; check the web app",
            )
        return NOTHING
    if job.state is _S.RENDERING:
        return _rendering(job, facts)
    if job.state is _S.DOWNLOADING:
        if facts.output_problem:
            return _hold(HoldReason.OUTPUT_UNAVAILABLE, facts.output_problem)
        return Effect(EffectKind.START, Step.DOWNLOAD)
    if job.state is _S.DELIVERING:
        if facts.outage:
            return _hold(HoldReason.OUTAGE, f"inbox {facts.inbox}: {facts.outage}")
        if facts.output_problem:
            return _hold(HoldReason.OUTPUT_UNAVAILABLE, facts.output_problem)
        return Effect(EffectKind.START, Step.DELIVER)
    return NOTHING  # finished


def _hold(reason: HoldReason, why: str, due_in_seconds: float | None = None) -> Effect:
    return Effect(EffectKind.HOLD, hold_reason=reason, why=why, due_in_seconds=due_in_seconds)


def _admit(job: Job, facts: Facts) -> Effect:
    if not facts.folder_configured and job.project_id is None:
        return NOTHING  # the folder was removed by a reload: not created, so dropped
    if facts.outage:
        return _hold(HoldReason.OUTAGE, f"inbox {facts.inbox}: {facts.outage}")
    if facts.account_block is not None:
        return _hold(facts.account_block, "the account needs attention first")
    if job.state is _S.QUEUED and fresh_upload(job, facts.now):
        if not facts.render_slot:
            return NOTHING
        estimate = job.credits_estimate or 0
        limit = facts.daily_limit
        if limit and facts.spent_today + estimate > limit:
            return _hold(
                HoldReason.DAILY_LIMIT,
                f"spent today {facts.spent_today} + estimate {estimate} > limit {limit}",
            )
        return Effect(EffectKind.START, Step.CREATE, state=_S.SUBMITTING)
    if not facts.upload_slot:
        return NOTHING
    return Effect(
        EffectKind.START, Step.UPLOAD, state=_S.UPLOADING if job.state is _S.QUEUED else None
    )


def _rendering(job: Job, facts: Facts) -> Effect:
    timeout = facts.render_timeout_seconds
    if job.render_started_at and facts.now - job.render_started_at > timeout:
        return _hold(
            HoldReason.RENDER_OVERDUE,
            f"still rendering after {timeout / 60:g} min",
            due_in_seconds=backoff.OVERDUE_POLL_SECONDS,
        )
    return Effect(EffectKind.START, Step.POLL)


def _held(job: Job, facts: Facts) -> Effect:
    reason = job.hold_reason
    release = False
    if reason is HoldReason.OUTAGE:
        release = facts.folder_configured and not facts.outage
    elif reason is HoldReason.OUTPUT_UNAVAILABLE:
        release = not facts.folder_configured or not facts.output_problem
    elif reason in (HoldReason.AUTH, HoldReason.CREDITS):
        release = facts.account_block is None
    elif reason is HoldReason.DAILY_LIMIT:
        limit = facts.daily_limit
        release = not limit or facts.spent_today + (job.credits_estimate or 0) <= limit
    elif reason is HoldReason.RENDER_OVERDUE and job.project_id is not None:
        return Effect(EffectKind.START, Step.POLL)  # still polled, hourly
    if release and job.resume_state is not None:
        return Effect(EffectKind.RELEASE)
    return NOTHING
