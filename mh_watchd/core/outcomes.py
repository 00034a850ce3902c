"""What a finished step does to its job: the one pure table the pipeline follows.

`next_move()` takes the job as the journal holds it, the step that ran and how it ended, and
returns a `Move`: the state to move to (always a legal move of `jobs.LEGAL_MOVES`, or no move
at all), the event to journal, and the wait or hold that goes with it. The daemon applies a
move in one journal transaction; nothing here performs I/O or reads a clock.
"""

from __future__ import annotations

from dataclasses import dataclass
from enum import StrEnum

from mh_watchd.core import backoff
from mh_watchd.core.errors import (
    AccountApiError,
    AmbiguousCreateError,
    AuthError,
    InboxUnavailableError,
    MediaError,
    NotFoundError,
    NotSentError,
    PermanentApiError,
    RefusedError,
    SourceChangedError,
)
from mh_watchd.core.jobs import HoldReason, Job, JobState

_S = JobState


class Step(StrEnum):
    UPLOAD = "upload"
    CREATE = "create"
    POLL = "poll"
    DOWNLOAD = "download"
    DELIVER = "deliver"


# The states a step may run in. An outcome for a job that has left them meanwhile (a `retry`
# from the shell, a hold) is stale and changes nothing.
STEP_STATES: dict[Step, frozenset[JobState]] = {
    Step.UPLOAD: frozenset({_S.UPLOADING}),
    Step.CREATE: frozenset({_S.SUBMITTING}),
    Step.POLL: frozenset({_S.RENDERING, _S.HELD}),
    Step.DOWNLOAD: frozenset({_S.DOWNLOADING}),
    Step.DELIVER: frozenset({_S.DELIVERING}),
}


class Kind(StrEnum):
    ADVANCE = "advance"  # the step succeeded: on to the next state
    WAIT = "wait"  # same state, try the step again after `wait_seconds`
    HOLD = "hold"  # held with `hold_reason`, resuming `resume_state`
    FAIL = "fail"  # permanent: failed, the original goes to the failed folder
    SUPERSEDE = "supersede"  # the file changed or vanished before its create
    STALE = "stale"  # the job moved on meanwhile: change nothing


@dataclass(frozen=True)
class Move:
    """What applying one outcome does to a job."""

    kind: Kind
    state: JobState | None  # the state to move to; None for STALE
    event: str
    reason: str = ""
    hold_reason: HoldReason | None = None
    resume_state: JobState | None = None  # for HOLD: the state the job resumes to
    wait_seconds: float | None = None  # due this long from now; None = due now
    attempts: int = 0  # the job's transient-failure count after this move
    clear_credits_day: bool = False  # no create was made: the estimate is not booked to today


@dataclass(frozen=True)
class PollFacts:
    """What a successful poll saw, for `next_move`."""

    status: str  # the service's project status
    error_code: str | None = None  # the service's error, for a render that ended in error
    error_message: str | None = None


def next_move(
    job: Job,
    step: Step,
    error: Exception | None,
    *,
    poll: PollFacts | None = None,
    poll_interval_seconds: float = 10.0,
    render_overdue_give_up: bool = False,
) -> Move:
    """The move for `job` after `step` ended with `error` (None = success).

    For a successful poll, `poll` carries the project's status. `render_overdue_give_up` is
    True once an overdue render has been polled for the whole overdue window.
    """
    state = job.state
    if state not in STEP_STATES[step]:
        return Move(Kind.STALE, None, "job.outcome_stale", f"{step} ended in state {state}")
    if step is Step.POLL and state is _S.HELD and job.hold_reason is not HoldReason.RENDER_OVERDUE:
        return Move(Kind.STALE, None, "job.outcome_stale", "held for another reason")
    if error is None:
        return _success(job, step, poll, poll_interval_seconds, render_overdue_give_up)
    return _failure(job, step, error, poll_interval_seconds)


def _success(job: Job, step: Step, poll: PollFacts | None, interval: float, give_up: bool) -> Move:
    if step is Step.UPLOAD:
        return Move(Kind.ADVANCE, _S.QUEUED, "job.uploaded")
    if step is Step.CREATE:
        return Move(Kind.ADVANCE, _S.RENDERING, "job.submitted", wait_seconds=interval)
    if step is Step.DOWNLOAD:
        return Move(Kind.ADVANCE, _S.DELIVERING, "job.downloaded")
    if step is Step.DELIVER:
        return Move(Kind.ADVANCE, _S.DONE, "job.done")
    status = poll.status if poll is not None else "unknown"
    if status == "complete":
        return Move(Kind.ADVANCE, _S.DOWNLOADING, "job.rendered")
    if status in ("error", "canceled"):
        assert poll is not None
        why = f"the render ended in {status}"
        if poll.error_code or poll.error_message:
            why += f": {poll.error_code}: {poll.error_message}"
        if status == "canceled":
            why += " (canceled in the web app)"
        return Move(Kind.FAIL, _S.FAILED, "job.failed", why)
    if job.state is _S.HELD:
        wait = backoff.OVERDUE_GIVE_UP_SECONDS if give_up else backoff.OVERDUE_POLL_SECONDS
        return Move(Kind.WAIT, _S.HELD, "job.render_progress", status, wait_seconds=wait)
    return Move(Kind.WAIT, _S.RENDERING, "job.render_progress", status, wait_seconds=interval)


def _failure(job: Job, step: Step, error: Exception, interval: float) -> Move:
    state = job.state
    text = str(error) or type(error).__name__
    attempts = job.attempts + 1
    before_create = state in (_S.UPLOADING, _S.SUBMITTING)
    # A step before the create resumes from queued: a fresh upload URL, a fresh create decision.
    resume = _S.QUEUED if before_create else state

    if step is Step.POLL:
        # A rendering job is never held or failed for a passing problem: polling backs off.
        if isinstance(error, NotFoundError):
            return Move(Kind.FAIL, _S.FAILED, "job.failed", _DELETED)
        if isinstance(error, PermanentApiError):
            return Move(Kind.FAIL, _S.FAILED, "job.failed", text)
        wait = backoff.poll_interval_seconds(interval, attempts)
        if state is _S.HELD:
            wait = max(wait, backoff.OVERDUE_POLL_SECONDS)
        return Move(Kind.WAIT, state, "job.poll_failed", text, wait_seconds=wait, attempts=attempts)

    if isinstance(error, SourceChangedError) and before_create:
        return Move(Kind.SUPERSEDE, _S.SUPERSEDED, "job.superseded", text)
    if step is Step.CREATE:
        return _create_failure(error, text, attempts)
    if isinstance(error, InboxUnavailableError):
        return _hold(HoldReason.OUTAGE, text, resume, before_create)
    if isinstance(error, AccountApiError):
        reason = HoldReason.AUTH if isinstance(error, AuthError) else HoldReason.CREDITS
        return _hold(reason, text, resume, before_create)
    if step is Step.DOWNLOAD and isinstance(error, NotFoundError):
        return Move(Kind.FAIL, _S.FAILED, "job.failed", _DELETED)
    if step is Step.DELIVER:
        return _deliver_failure(error, text, attempts)
    if isinstance(error, (PermanentApiError, MediaError)):
        return Move(Kind.FAIL, _S.FAILED, "job.failed", text)
    if isinstance(error, OSError) and step is Step.DOWNLOAD:
        return _hold(HoldReason.OUTPUT_UNAVAILABLE, text, resume, False)
    return _retry(state, resume, text, attempts, error, before_create)


def _create_failure(error: Exception, text: str, attempts: int) -> Move:
    """Invariant 2: only a create that surely made nothing is ever sent again."""
    if isinstance(error, AccountApiError):
        reason = HoldReason.AUTH if isinstance(error, AuthError) else HoldReason.CREDITS
        return _hold(reason, text, _S.QUEUED, True)
    if isinstance(error, (NotSentError, RefusedError)):
        return _retry(_S.SUBMITTING, _S.QUEUED, text, attempts, error, True)
    if isinstance(error, PermanentApiError) and not isinstance(error, NotFoundError):
        return Move(Kind.FAIL, _S.FAILED, "job.failed", text)
    # 500, 504, 404, a dropped connection, an unparseable answer, even a bug in our own code
    # after the request left: the project may exist. Never resend without `retry`.
    why = text if isinstance(error, AmbiguousCreateError) else f"create outcome unknown: {text}"
    return Move(
        Kind.HOLD,
        _S.HELD,
        "job.held",
        why,
        hold_reason=HoldReason.AMBIGUOUS_CREATE,
        resume_state=_S.SUBMITTING,
    )


def _deliver_failure(error: Exception, text: str, attempts: int) -> Move:
    """A paid render is never failed at delivery: it waits, or downloads again."""
    if isinstance(error, MediaError):
        # The downloaded temp file is gone or damaged: fetch it again.
        return Move(
            Kind.ADVANCE, _S.DOWNLOADING, "job.redownload", text, attempts=attempts, wait_seconds=0
        )
    # An outbox or archive missing, unwritable or full: the outputs stay downloadable at the
    # service, so the job waits for the folder check instead of burning attempts.
    if isinstance(error, OSError) or attempts >= backoff.JOB_MAX_ATTEMPTS:
        return _hold(HoldReason.OUTPUT_UNAVAILABLE, text, _S.DELIVERING, False)
    return Move(
        Kind.WAIT,
        _S.DELIVERING,
        "job.retry_scheduled",
        text,
        wait_seconds=backoff.job_backoff_seconds(attempts),
        attempts=attempts,
    )


def _retry(
    state: JobState,
    resume: JobState,
    text: str,
    attempts: int,
    error: Exception,
    before_create: bool,
) -> Move:
    if attempts >= backoff.JOB_MAX_ATTEMPTS:
        return Move(
            Kind.FAIL, _S.FAILED, "job.failed", f"gave up after {attempts} attempts: {text}"
        )
    retry_after = getattr(error, "retry_after_seconds", None)
    return Move(
        Kind.WAIT,
        resume,
        "job.retry_scheduled",
        text,
        wait_seconds=backoff.job_backoff_seconds(attempts, retry_after),
        attempts=attempts,
        clear_credits_day=before_create,
    )


def _hold(reason: HoldReason, text: str, resume: JobState, before_create: bool) -> Move:
    return Move(
        Kind.HOLD,
        _S.HELD,
        "job.held",
        text,
        hold_reason=reason,
        resume_state=resume,
        clear_credits_day=before_create,
    )


_DELETED = "the project was deleted in the web app (404)"
