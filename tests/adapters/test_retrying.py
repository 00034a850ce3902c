"""retrying: the one retry policy (tenacity) and the one reading of a response's Retry-After."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta
from email.utils import format_datetime

import httpx
import pytest
import structlog
from structlog.testing import capture_logs

from mh_watchd.adapters import retrying
from mh_watchd.core import backoff
from mh_watchd.core.errors import (
    ApiError,
    NotFoundError,
    RefusedError,
    TransientApiError,
    UrlExpiredError,
)

# -- Retry-After on a response -----------------------------------------------------------------


@pytest.mark.parametrize(
    ("headers", "expected"),
    [
        ({}, None),
        ({"Retry-After": "2"}, 2.0),
        ({"Retry-After": "-3"}, 0.0),
        ({"Retry-After": "later"}, None),
        (
            {
                "Date": "Wed, 21 Oct 2015 07:28:00 GMT",
                "Retry-After": "Wed, 21 Oct 2015 07:28:03 GMT",
            },
            3.0,
        ),
        (
            {
                "Date": "Wed, 21 Oct 2015 07:28:00 GMT",
                "Retry-After": "Wed, 21 Oct 2015 07:20:00 GMT",
            },
            0.0,
        ),
    ],
)
def test_retry_after_seconds_of_a_response(headers: dict[str, str], expected: float | None) -> None:
    assert retrying.retry_after_seconds(httpx.Response(429, headers=headers)) == expected


def test_a_retry_after_date_without_a_date_header_is_measured_from_the_local_clock() -> None:
    later = format_datetime(datetime.now(UTC) + timedelta(seconds=30), usegmt=True)
    seconds = retrying.retry_after_seconds(httpx.Response(503, headers={"Retry-After": later}))
    assert seconds is not None and 25.0 <= seconds <= 31.0


# -- URL refreshes -----------------------------------------------------------------------------


class _Transfer:
    """A presigned transfer whose URL expires `expiries` times, and a counter of refreshes."""

    def __init__(self, expiries: int) -> None:
        self.expiries = expiries
        self.tries = 0
        self.refreshes = 0

    def attempt(self) -> str:
        self.tries += 1
        if self.tries <= self.expiries:
            raise UrlExpiredError(f"expired #{self.tries}", operation="upload", status=403)
        return f"sent on url {self.refreshes}"

    def refresh(self) -> None:
        self.refreshes += 1


def test_url_refresh_gives_up_after_url_refresh_attempts_refreshes() -> None:
    transfer = _Transfer(expiries=100)
    with pytest.raises(UrlExpiredError, match=f"expired #{backoff.URL_REFRESH_ATTEMPTS + 1}"):
        retrying.with_fresh_urls(transfer.attempt, refresh=transfer.refresh)
    assert transfer.refreshes == backoff.URL_REFRESH_ATTEMPTS
    assert transfer.tries == backoff.URL_REFRESH_ATTEMPTS + 1


def test_url_refresh_uses_the_fresh_url_once_it_works() -> None:
    transfer = _Transfer(expiries=backoff.URL_REFRESH_ATTEMPTS)
    result = retrying.with_fresh_urls(transfer.attempt, refresh=transfer.refresh)
    assert result == f"sent on url {backoff.URL_REFRESH_ATTEMPTS}"
    assert transfer.tries == backoff.URL_REFRESH_ATTEMPTS + 1


def test_url_refresh_lets_other_errors_through_untouched() -> None:
    refreshes: list[None] = []

    def attempt() -> str:
        raise RefusedError("busy", operation="download", status=503)

    with pytest.raises(RefusedError, match="busy"):
        retrying.with_fresh_urls(attempt, refresh=lambda: refreshes.append(None))
    assert refreshes == []


def test_an_error_while_refreshing_propagates_as_it_is() -> None:
    transfer = _Transfer(expiries=100)

    def refresh() -> None:
        raise NotFoundError("project gone", operation="get", status=404)

    with pytest.raises(NotFoundError, match="project gone"):
        retrying.with_fresh_urls(transfer.attempt, refresh=refresh)
    assert transfer.tries == 1


# -- the API request policy ------------------------------------------------------------------


@pytest.mark.parametrize(
    ("exc", "expected"),
    [
        (TransientApiError("x", operation="get"), True),
        (RefusedError("x", operation="get", status=429, retry_after_seconds=5.0), True),
        (RefusedError("x", operation="get", status=429, retry_after_seconds=5.5), False),
        (UrlExpiredError("x", operation="upload", status=403), False),
        (ApiError("x", operation="get"), False),
        (ValueError("x"), False),
    ],
)
def test_api_worth_retrying(exc: BaseException, expected: bool) -> None:
    assert retrying.api_worth_retrying(exc) is expected


def test_api_request_policy_waits_with_the_request_backoff_and_reraises() -> None:
    sleeps: list[float] = []
    tries: list[int] = []

    def attempt() -> None:
        tries.append(1)
        raise TransientApiError("down", operation="get", status=500)

    with pytest.raises(TransientApiError, match="down"):
        retrying.api_request_policy(sleep=sleeps.append)(attempt)
    assert len(tries) == backoff.REQUEST_ATTEMPTS
    assert sleeps == [backoff.request_wait_seconds(n) for n in range(1, backoff.REQUEST_ATTEMPTS)]


# -- the webhook policy ------------------------------------------------------------------------


def _responses(
    *outcomes: httpx.Response | httpx.HTTPError,
) -> list[httpx.Response | httpx.HTTPError]:
    return list(outcomes)


def test_webhook_policy_returns_the_last_outcome_and_logs_each_retry() -> None:
    script = _responses(
        httpx.ConnectError("refused"),
        httpx.Response(429, headers={"Retry-After": "9"}),
        httpx.Response(502),
    )
    sleeps: list[float] = []
    hook = retrying.log_retrying(structlog.get_logger(), "x.retrying", to="http://h")
    with capture_logs() as logs:
        outcome = retrying.webhook_policy(attempts=3, sleep=sleeps.append, before_sleep=hook)(
            lambda: script.pop(0)
        )
    assert isinstance(outcome, httpx.Response) and outcome.status_code == 502
    # The request waits; the Retry-After of 9 s is capped to what a request may sleep.
    assert sleeps == [backoff.request_wait_seconds(1), backoff.REQUEST_RETRY_AFTER_CAP_SECONDS]
    assert [(e["event"], e["attempt"], e["outcome"], e["to"]) for e in logs] == [
        ("x.retrying", 1, "ConnectError", "http://h"),
        ("x.retrying", 2, "429", "http://h"),
    ]


def test_webhook_policy_does_not_retry_a_client_error_or_past_a_stop_condition() -> None:
    sleeps: list[float] = []
    outcome = retrying.webhook_policy(attempts=5, sleep=sleeps.append)(lambda: httpx.Response(404))
    assert isinstance(outcome, httpx.Response) and outcome.status_code == 404
    tries: list[int] = []

    def failing() -> httpx.Response:
        tries.append(1)
        return httpx.Response(500)

    stopped = retrying.webhook_policy(attempts=5, sleep=sleeps.append, stop_when=lambda: True)
    assert stopped(failing).status_code == 500
    assert tries == [1] and sleeps == []


def test_a_returned_response_s_retry_after_is_the_wait() -> None:
    sleeps: list[float] = []
    script = _responses(
        httpx.Response(
            503,
            headers={
                "Date": "Wed, 21 Oct 2015 07:28:00 GMT",
                "Retry-After": "Wed, 21 Oct 2015 07:28:02 GMT",
            },
        ),
        httpx.Response(200),
    )
    outcome = retrying.webhook_policy(attempts=3, sleep=sleeps.append)(lambda: script.pop(0))
    assert isinstance(outcome, httpx.Response) and outcome.status_code == 200
    assert sleeps == [2.0]
