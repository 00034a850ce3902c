"""The one retry policy: every retry loop in the daemon is a `tenacity.Retrying` built here.

`policy` builds it from the numbers in `mh_watchd.core.backoff`: which outcomes are worth
another try, the wait (honouring a Retry-After, capped), the stop conditions (attempts, elapsed
time, and an optional extra condition such as a stop event), a `before_sleep` hook (a log line,
or an action to take before the next try), an injectable sleep. Its three users:

- `api_request_policy`: one Magic Hour request (`MagicHourClient`), retried on
  `TransientApiError` only, and not when the service asks for a pause longer than a request may
  sleep (the job waits for that instead).
- `webhook_policy`: the notifier's webhook POST, retried on httpx errors, 429 and 5xx.
- `with_fresh_urls`: a presigned transfer whose URL expired (`UrlExpiredError`) is tried again
  at once after fetching a fresh URL, `URL_REFRESH_ATTEMPTS` times at most.

`retry_after_seconds` is the one place a response's `Retry-After` is read (through
`backoff.parse_retry_after`, the one parser).
"""

from __future__ import annotations

import time
from collections.abc import Callable
from datetime import UTC, datetime
from typing import Any, TypeVar

import httpx
import tenacity
from tenacity.retry import retry_base
from tenacity.stop import stop_base

from mh_watchd.core import backoff
from mh_watchd.core.errors import ApiError, TransientApiError, UrlExpiredError

T = TypeVar("T")

# Takes the seconds to wait; what it returns is ignored (so `threading.Event.wait` fits).
Sleep = Callable[[float], object]
Hook = Callable[[tenacity.RetryCallState], None]
Wait = Callable[[tenacity.RetryCallState], float]


# -- Retry-After ----------------------------------------------------------------------------


def retry_after_seconds(response: httpx.Response) -> float | None:
    """Seconds from the response's `Retry-After` (delta-seconds or an HTTP date), else None.

    A date is measured against the response's own `Date` header when it has a readable one, so
    a skewed local clock does not stretch or shrink the wait; a date already past gives 0.
    """
    value = response.headers.get("Retry-After")
    if value is None:
        return None
    now = backoff.parse_http_date(response.headers.get("Date", "")) or datetime.now(UTC)
    return backoff.parse_retry_after(value, now=now)


def outcome_retry_after(state: tenacity.RetryCallState) -> float | None:
    """The Retry-After of the last try: an ApiError's, or a returned response's header."""
    outcome = state.outcome
    if outcome is None:
        return None
    if outcome.failed:
        exc = outcome.exception()
        return exc.retry_after_seconds if isinstance(exc, ApiError) else None
    result = outcome.result()
    return retry_after_seconds(result) if isinstance(result, httpx.Response) else None


# -- the pieces of a policy ----------------------------------------------------------------


def request_wait(state: tenacity.RetryCallState) -> float:
    """Tenacity wait: `backoff.request_wait_seconds` for this try, honouring a Retry-After."""
    return backoff.request_wait_seconds(state.attempt_number, outcome_retry_after(state))


def no_wait(state: tenacity.RetryCallState) -> float:
    """Tenacity wait: try again at once."""
    return 0.0


def no_sleep(seconds: float) -> None:
    """A sleep that does not sleep (for policies that never wait)."""


def outcome_name(outcome: httpx.Response | BaseException) -> str:
    """How a try ended, for logs: the status code of a response, else the exception's class."""
    if isinstance(outcome, httpx.Response):
        return str(outcome.status_code)
    return type(outcome).__name__


def describe_outcome(state: tenacity.RetryCallState) -> str:
    """`outcome_name` of the last try, whether it raised or returned."""
    outcome = state.outcome
    if outcome is None:
        return "none"
    if outcome.failed:
        exc = outcome.exception()
        return outcome_name(exc) if exc is not None else "none"
    result = outcome.result()
    if isinstance(result, httpx.Response | BaseException):
        return outcome_name(result)
    return type(result).__name__


def log_retrying(logger: Any, event: str, **fields: Any) -> Hook:
    """A `before_sleep` hook logging `event` (info) with `fields`, the try that just ended as
    `attempt` and how it ended as `outcome`."""

    def hook(state: tenacity.RetryCallState) -> None:
        logger.info(event, **fields, attempt=state.attempt_number, outcome=describe_outcome(state))

    return hook


class _StopWhen(stop_base):
    """Stop when `condition()` is true (checked after each try that would be retried)."""

    def __init__(self, condition: Callable[[], bool]) -> None:
        self.condition = condition

    def __call__(self, retry_state: tenacity.RetryCallState) -> bool:
        return bool(self.condition())


def _last_result(state: tenacity.RetryCallState) -> Any:
    """`retry_error_callback` giving back the last try's result (or raising its exception)."""
    assert state.outcome is not None
    return state.outcome.result()


def policy(
    *,
    retry: retry_base,
    attempts: int,
    max_elapsed_seconds: float | None = None,
    wait: Wait = request_wait,
    sleep: Sleep = time.sleep,
    stop_when: Callable[[], bool] | None = None,
    before_sleep: Hook | None = None,
    give_up: Callable[[tenacity.RetryCallState], Any] | None = None,
) -> tenacity.Retrying:
    """The one way a retry loop is built.

    Tries while `retry` says the outcome is worth it, at most `attempts` times (at least once),
    never starting a try that would begin past `max_elapsed_seconds`, and not once
    `stop_when()` is true. Between tries: `before_sleep(state)` (a log line, or an action such
    as fetching a fresh URL; what it raises propagates), then `sleep(wait(state))`. When it
    gives up, the last error is re-raised, or `give_up(state)` is returned when given.
    """
    stop: stop_base = tenacity.stop_after_attempt(max(1, attempts))
    if max_elapsed_seconds is not None:
        stop = stop | tenacity.stop_before_delay(max_elapsed_seconds)
    if stop_when is not None:
        stop = stop | _StopWhen(stop_when)

    def pause(seconds: float) -> None:
        sleep(seconds)

    return tenacity.Retrying(
        stop=stop,
        wait=wait,
        retry=retry,
        sleep=pause,
        before_sleep=before_sleep,
        retry_error_callback=give_up,
        reraise=True,
    )


# -- the policies in use ---------------------------------------------------------------------


def api_worth_retrying(exc: BaseException) -> bool:
    """Retry transient failures only, and not when the service asks for a long pause
    (the job waits for that instead of a thread sleeping through it)."""
    if not isinstance(exc, TransientApiError):
        return False
    wait = exc.retry_after_seconds
    return wait is None or wait <= backoff.REQUEST_RETRY_AFTER_CAP_SECONDS


def api_request_policy(*, sleep: Sleep = time.sleep) -> tenacity.Retrying:
    """One Magic Hour request: `REQUEST_ATTEMPTS` tries within `REQUEST_MAX_ELAPSED_SECONDS`,
    retrying `api_worth_retrying` errors with the request waits; re-raises the last error."""
    return policy(
        retry=tenacity.retry_if_exception(api_worth_retrying),
        attempts=backoff.REQUEST_ATTEMPTS,
        max_elapsed_seconds=backoff.REQUEST_MAX_ELAPSED_SECONDS,
        sleep=sleep,
    )


def webhook_worth_retrying(outcome: object) -> bool:
    """A webhook try worth repeating: an httpx error (returned as a value), a 429 or a 5xx."""
    if isinstance(outcome, httpx.HTTPError):
        return True
    if isinstance(outcome, httpx.Response):
        return outcome.status_code == 429 or outcome.status_code >= 500
    return False


def webhook_policy(
    *,
    attempts: int,
    sleep: Sleep = time.sleep,
    stop_when: Callable[[], bool] | None = None,
    before_sleep: Hook | None = None,
) -> tenacity.Retrying:
    """A webhook POST whose try returns its `httpx.Response` or the `httpx.HTTPError` it met
    (as a value, never raised): retried per `webhook_worth_retrying` up to `attempts` tries with
    the request waits (Retry-After honoured, capped), until `stop_when()`; returns the last
    outcome, whether it succeeded or not."""
    return policy(
        retry=tenacity.retry_if_result(webhook_worth_retrying),
        attempts=attempts,
        sleep=sleep,
        stop_when=stop_when,
        before_sleep=before_sleep,
        give_up=_last_result,
    )


def url_refresh_policy(*, refresh: Callable[[], None]) -> tenacity.Retrying:
    """A presigned transfer: on `UrlExpiredError`, call `refresh()` (fetch a fresh URL) and try
    again at once, `URL_REFRESH_ATTEMPTS` refreshes at most; then the last UrlExpiredError is
    raised. Any other error, from a try or from `refresh()`, propagates as it is."""
    return policy(
        retry=tenacity.retry_if_exception_type(UrlExpiredError),
        attempts=backoff.URL_REFRESH_ATTEMPTS + 1,
        wait=no_wait,
        sleep=no_sleep,
        before_sleep=lambda state: refresh(),
    )


def with_fresh_urls(attempt: Callable[[], T], *, refresh: Callable[[], None]) -> T:
    """Run `attempt()` under `url_refresh_policy(refresh=refresh)`; return what it returns."""
    return url_refresh_policy(refresh=refresh)(attempt)
