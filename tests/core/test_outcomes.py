"""The outcome table: every state x step x outcome class ends in a legal move (or none)."""

from __future__ import annotations

import errno
import itertools

import pytest

from mh_watchd.core import backoff
from mh_watchd.core.errors import (
    AmbiguousCreateError,
    AuthError,
    CreditsError,
    InboxUnavailableError,
    MediaError,
    NotFoundError,
    NotSentError,
    PermanentApiError,
    RefusedError,
    SourceChangedError,
    StateDirError,
    TransientApiError,
    UrlExpiredError,
)
from mh_watchd.core.jobs import LEGAL_MOVES, HoldReason, Job, JobState
from mh_watchd.core.outcomes import Kind, PollFacts, Step, next_move
from tests.factories import job_in as make_job

S = JobState


def job_in(
    state: JobState,
    *,
    hold_reason: HoldReason = HoldReason.RENDER_OVERDUE,
    resume_state: JobState = S.RENDERING,
    **changes: object,
) -> Job:
    """A job in `state`; held, by default an overdue render (the one hold a poll may end)."""
    return make_job(state, hold_reason=hold_reason, resume_state=resume_state, **changes)


def api(cls: type[Exception], status: int | None = None) -> Exception:
    return cls("boom", operation="op", status=status)  # type: ignore[call-arg]


ERRORS: dict[str, Exception | None] = {
    "ok": None,
    "not_sent": api(NotSentError),
    "refused": api(RefusedError, 503),
    "transient": api(TransientApiError, 500),
    "ambiguous": api(AmbiguousCreateError, 504),
    "url_expired": api(UrlExpiredError, 403),
    "permanent": api(PermanentApiError, 422),
    "not_found": api(NotFoundError, 404),
    "auth": api(AuthError, 401),
    "credits": api(CreditsError, 402),
    "media": MediaError("not a video"),
    "source_changed": SourceChangedError("changed"),
    "inbox_gone": InboxUnavailableError("gone"),
    "journal": StateDirError("disk full"),
    "enospc": OSError(errno.ENOSPC, "No space left on device"),
    "enoent": OSError(errno.ENOENT, "No such file or directory"),
    "bug": RuntimeError("a bug"),
}
POLL_STATUSES = ["queued", "rendering", "complete", "error", "canceled"]
CASES = list(itertools.product(JobState, Step, ERRORS))


@pytest.mark.parametrize(
    ("state", "step", "error"), CASES, ids=[f"{a}-{b}-{c}" for a, b, c in CASES]
)
def test_every_outcome_is_a_legal_move_or_none(state: JobState, step: Step, error: str) -> None:
    for status in POLL_STATUSES if (step is Step.POLL and error == "ok") else [None]:
        for attempts in (0, backoff.JOB_MAX_ATTEMPTS):
            job = job_in(state, attempts=attempts)
            move = next_move(
                job,
                step,
                ERRORS[error],
                poll=PollFacts(status) if status else None,
                poll_interval_seconds=1.0,
            )
            if move.kind is Kind.STALE:
                assert move.state is None
                continue
            assert move.state is not None
            assert move.state is state or move.state in LEGAL_MOVES[state], move
            if move.kind is Kind.HOLD:
                assert move.hold_reason is not None and move.resume_state is not None
                assert move.resume_state in LEGAL_MOVES[S.HELD]
                assert state is not S.RENDERING


@pytest.mark.parametrize("error", [e for e in ERRORS if e not in ("ok", "not_sent", "refused")])
def test_a_create_is_never_sent_again_without_retry(error: str) -> None:
    move = next_move(job_in(S.SUBMITTING), Step.CREATE, ERRORS[error])
    # Only a create that surely made nothing may go back to the queue for a resend.
    assert move.state is not S.QUEUED
    assert move.state is not S.SUBMITTING or move.kind is Kind.STALE


@pytest.mark.parametrize("error", ["not_sent", "refused"])
def test_a_create_that_made_nothing_is_resent_with_backoff(error: str) -> None:
    move = next_move(job_in(S.SUBMITTING), Step.CREATE, ERRORS[error])
    assert move.kind is Kind.WAIT and move.state is S.QUEUED
    assert move.clear_credits_day and move.wait_seconds and move.wait_seconds > 0


def test_404_on_create_is_ambiguous_not_failed() -> None:
    move = next_move(job_in(S.SUBMITTING), Step.CREATE, ERRORS["not_found"])
    assert move.hold_reason is HoldReason.AMBIGUOUS_CREATE and move.resume_state is S.SUBMITTING


@pytest.mark.parametrize("error", list(ERRORS))
def test_delivery_never_fails_a_paid_render(error: str) -> None:
    for attempts in (0, 50):
        move = next_move(job_in(S.DELIVERING, attempts=attempts), Step.DELIVER, ERRORS[error])
        assert move.state is not S.FAILED


def test_a_vanished_download_is_fetched_again() -> None:
    move = next_move(job_in(S.DELIVERING), Step.DELIVER, MediaError("temp file gone"))
    assert move.state is S.DOWNLOADING


def test_a_changed_source_before_create_is_superseded() -> None:
    for state, step in ((S.UPLOADING, Step.UPLOAD), (S.SUBMITTING, Step.CREATE)):
        move = next_move(job_in(state), step, ERRORS["source_changed"])
        assert move.kind is Kind.SUPERSEDE and move.state is S.SUPERSEDED


def test_a_rendering_job_backs_off_instead_of_holding() -> None:
    for error in ("auth", "credits", "transient", "inbox_gone", "bug"):
        move = next_move(job_in(S.RENDERING, attempts=3), Step.POLL, ERRORS[error])
        assert move.kind is Kind.WAIT and move.state is S.RENDERING
        assert move.wait_seconds is not None and move.wait_seconds > 1.0


def test_outcome_for_a_job_that_moved_on_is_stale() -> None:
    move = next_move(job_in(S.QUEUED), Step.POLL, None, poll=PollFacts("complete"))
    assert move.kind is Kind.STALE
    held = job_in(S.HELD, hold_reason=HoldReason.OUTAGE, resume_state=S.QUEUED)
    assert next_move(held, Step.POLL, None, poll=PollFacts("complete")).kind is Kind.STALE


def test_transient_upload_errors_give_up_after_the_attempt_limit() -> None:
    move = next_move(
        job_in(S.UPLOADING, attempts=backoff.JOB_MAX_ATTEMPTS - 1), Step.UPLOAD, ERRORS["transient"]
    )
    assert move.kind is Kind.FAIL and "gave up" in move.reason


def test_a_render_that_ended_in_error_says_what_the_service_said() -> None:
    facts = PollFacts("error", "invalid_video_file", "could not decode")
    move = next_move(job_in(S.RENDERING), Step.POLL, None, poll=facts)
    assert move.state is S.FAILED
    assert move.reason == "the render ended in error: invalid_video_file: could not decode"
    canceled = next_move(job_in(S.RENDERING), Step.POLL, None, poll=PollFacts("canceled"))
    assert canceled.reason == "the render ended in canceled (canceled in the web app)"
