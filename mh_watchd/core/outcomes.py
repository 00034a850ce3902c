"""What a job does after an error: the one classification the pipeline follows."""

from __future__ import annotations

from dataclasses import dataclass
from enum import StrEnum

from mh_watchd.core import backoff
from mh_watchd.core.errors import (
    AmbiguousCreateError,
    AuthError,
    CreditsError,
    InboxUnavailableError,
    MediaError,
    NotFoundError,
    PermanentApiError,
    SourceChangedError,
    TransientApiError,
    UrlExpiredError,
)
from mh_watchd.core.jobs import HoldReason


class Action(StrEnum):
    RETRY = "retry"  # wait `wait_seconds`, then try the same step again
    FAIL = "fail"  # permanent: the job fails and the original goes to the failed folder
    HOLD = "hold"  # held with `hold_reason` until its cause clears
    RESTART = "restart"  # the source changed: start the file over as a new version


@dataclass(frozen=True)
class Disposition:
    action: Action
    reason: str
    hold_reason: HoldReason | None = None
    wait_seconds: float = 0.0


def dispose(error: Exception, *, step: str, attempts: int) -> Disposition:
    """Decide what a job does after `error` in `step`, its `attempts`-th transient failure.

    `step` is one of upload, create, poll, download, deliver. Transient errors retry with the
    job backoff until JOB_MAX_ATTEMPTS, then fail; a rendering job (step poll) never fails for
    transient errors or account problems: polling backs off instead.
    """
    text = str(error)
    if isinstance(error, InboxUnavailableError):
        return Disposition(Action.HOLD, text, HoldReason.OUTAGE)
    if isinstance(error, SourceChangedError):
        return Disposition(Action.RESTART, text)
    if isinstance(error, AmbiguousCreateError):
        return Disposition(Action.HOLD, text, HoldReason.AMBIGUOUS_CREATE)
    if isinstance(error, (AuthError, CreditsError)) and step != "poll":
        reason = HoldReason.AUTH if isinstance(error, AuthError) else HoldReason.CREDITS
        return Disposition(Action.HOLD, text, reason)
    if isinstance(error, NotFoundError) and step == "poll":
        return Disposition(Action.FAIL, "the project was deleted in the web app (404)")
    if isinstance(error, (PermanentApiError, MediaError)):
        return Disposition(Action.FAIL, text)
    if isinstance(error, OSError) and step in ("download", "deliver"):
        # The outbox or archive is missing, unwritable or full: the outputs stay downloadable
        # at the service, so wait for the folder check instead of burning attempts.
        return Disposition(Action.HOLD, text, HoldReason.OUTPUT_UNAVAILABLE)
    retry_after = getattr(error, "retry_after_seconds", None)
    if step == "poll":
        return Disposition(Action.RETRY, text, wait_seconds=backoff.job_backoff_seconds(attempts))
    if isinstance(error, (TransientApiError, UrlExpiredError, AuthError, CreditsError, OSError)):
        if attempts >= backoff.JOB_MAX_ATTEMPTS:
            return Disposition(Action.FAIL, f"gave up after {attempts} attempts: {text}")
        return Disposition(
            Action.RETRY, text, wait_seconds=backoff.job_backoff_seconds(attempts, retry_after)
        )
    return Disposition(Action.FAIL, text)
