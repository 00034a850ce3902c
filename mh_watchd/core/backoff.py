"""Retry numbers, in one place: short in-request retries and long per-job waits.

tenacity repeats one request for a few seconds (`REQUEST_*`); anything longer becomes a due
time with an attempt count on the job in the journal (`job_backoff_seconds`).
"""

from __future__ import annotations

# One request: at most this many tries, spread over at most this many seconds.
REQUEST_ATTEMPTS = 4
REQUEST_MAX_ELAPSED_SECONDS = 8.0
REQUEST_WAIT_INITIAL_SECONDS = 0.25
REQUEST_WAIT_MAX_SECONDS = 2.0
# A Retry-After longer than this is not slept through in a request; the job waits instead.
REQUEST_RETRY_AFTER_CAP_SECONDS = 5.0

# Long waits on a job: first, doubling, capped.
JOB_BACKOFF_INITIAL_SECONDS = 15.0
JOB_BACKOFF_MAX_SECONDS = 1800.0
# A job step that keeps failing transiently gives up (failed) after this many attempts.
JOB_MAX_ATTEMPTS = 12

# Polling a rendering project: the normal interval grows by this factor after a transient
# error, up to the cap.
POLL_BACKOFF_FACTOR = 2.0
POLL_BACKOFF_MAX_SECONDS = 300.0
# A render past its deadline is still polled at this interval for this long.
OVERDUE_POLL_SECONDS = 3600.0
OVERDUE_GIVE_UP_SECONDS = 7 * 24 * 3600.0

# Presigned URLs answering 403/404 are refreshed this many times before counting as transient.
URL_REFRESH_ATTEMPTS = 3

# An upload (api-assets path, valid 7 days) older than this is not reused for a create.
UPLOAD_REUSE_SECONDS = 6 * 24 * 3600.0

# Held jobs: how often the account probe runs to release `auth` and `credits` holds.
ACCOUNT_PROBE_SECONDS = 600.0


def request_wait_seconds(attempt: int, retry_after_seconds: float | None = None) -> float:
    """Seconds to wait before in-request try `attempt + 1` (attempt counts from 1).

    A service-given Retry-After wins, capped so one request never sleeps for long.
    """
    if retry_after_seconds is not None and retry_after_seconds >= 0:
        return min(retry_after_seconds, REQUEST_RETRY_AFTER_CAP_SECONDS)
    return min(REQUEST_WAIT_INITIAL_SECONDS * 2.0 ** max(attempt - 1, 0), REQUEST_WAIT_MAX_SECONDS)


def job_backoff_seconds(attempt: int, retry_after_seconds: float | None = None) -> float:
    """Seconds a job waits before its next try after `attempt` transient failures (from 1)."""
    base = JOB_BACKOFF_INITIAL_SECONDS * 2.0 ** max(attempt - 1, 0)
    wait = min(base, JOB_BACKOFF_MAX_SECONDS)
    if retry_after_seconds is not None:
        wait = max(wait, min(retry_after_seconds, JOB_BACKOFF_MAX_SECONDS))
    return wait


def poll_interval_seconds(normal_seconds: float, transient_failures: int) -> float:
    """Seconds until the next poll of a rendering project after `transient_failures` in a row."""
    if transient_failures <= 0:
        return normal_seconds
    grown = normal_seconds * (POLL_BACKOFF_FACTOR**transient_failures)
    return min(grown, max(POLL_BACKOFF_MAX_SECONDS, normal_seconds))


def clamp_due_seconds(due_in_seconds: float) -> float:
    """Clamp a due time loaded from the journal (wall clock may have jumped) to a sane range."""
    return max(0.0, min(due_in_seconds, max(JOB_BACKOFF_MAX_SECONDS, OVERDUE_POLL_SECONDS)))
