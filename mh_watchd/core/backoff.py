"""Retry numbers, in one place: short in-request retries and long per-job waits.

tenacity repeats one request for a few seconds (`REQUEST_*`); anything longer becomes a due
time with an attempt count on the job in the journal (`job_backoff_seconds`). A service's
`Retry-After` (delta-seconds or an HTTP date) is read by `parse_retry_after`, the one parser.
"""

from __future__ import annotations

import email.utils
import math
from datetime import UTC, datetime

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


def parse_retry_after(value: str | None, *, now: datetime) -> float | None:
    """Seconds to wait from a `Retry-After` header value, or None when there is none to use.

    The value is delta-seconds ("120"; a negative number counts as 0) or an HTTP date, measured
    from `now` (a date already past counts as 0; a naive `now` is taken as UTC). Anything else
    (garbage, an empty value, "inf", "nan") gives None: the caller falls back to its own backoff.
    """
    if value is None:
        return None
    text = value.strip()
    if not text:
        return None
    try:
        seconds = float(text)
    except ValueError:
        pass
    else:
        return max(seconds, 0.0) if math.isfinite(seconds) else None
    when = parse_http_date(text)
    if when is None:
        return None
    if now.tzinfo is None:
        now = now.replace(tzinfo=UTC)
    return max(0.0, (when - now).total_seconds())


def parse_http_date(value: str) -> datetime | None:
    """An aware datetime from an HTTP date ("Wed, 21 Oct 2015 07:28:00 GMT"), else None."""
    try:
        when = email.utils.parsedate_to_datetime(value)
    except (TypeError, ValueError, IndexError, OverflowError):
        return None
    return when if when.tzinfo is not None else when.replace(tzinfo=UTC)


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
