"""backoff.parse_retry_after: the one Retry-After parser (delta-seconds or an HTTP date)."""

from __future__ import annotations

from datetime import UTC, datetime

import pytest

from mh_watchd.core.backoff import parse_http_date, parse_retry_after

NOW = datetime(2015, 10, 21, 7, 28, 0, tzinfo=UTC)


@pytest.mark.parametrize(
    ("value", "expected"),
    [
        # delta-seconds
        ("120", 120.0),
        ("0", 0.0),
        (" 7 ", 7.0),
        ("1.5", 1.5),
        # negative: no wait at all
        ("-5", 0.0),
        ("-0.5", 0.0),
        # the three HTTP date forms, measured from NOW
        ("Wed, 21 Oct 2015 07:28:03 GMT", 3.0),
        ("Wednesday, 21-Oct-15 07:28:03 GMT", 3.0),
        ("Wed Oct 21 07:28:03 2015", 3.0),
        ("Wed, 21 Oct 2015 08:28:00 +0100", 0.0),
        ("Wed, 21 Oct 2015 09:28:00 +0100", 3600.0),
        # a date already past: no wait
        ("Wed, 21 Oct 2015 07:27:00 GMT", 0.0),
        ("Thu, 01 Jan 1970 00:00:00 GMT", 0.0),
        # garbage: nothing to go by
        (None, None),
        ("", None),
        ("   ", None),
        ("soon", None),
        ("12abc", None),
        ("inf", None),
        ("-inf", None),
        ("nan", None),
        ("Wed, 21 Oct 2015", None),
        ("Wed, 32 Oct 2015 07:28:03 GMT", None),
    ],
)
def test_parse_retry_after(value: str | None, expected: float | None) -> None:
    assert parse_retry_after(value, now=NOW) == expected


def test_a_naive_now_is_taken_as_utc() -> None:
    naive = NOW.replace(tzinfo=None)
    assert parse_retry_after("Wed, 21 Oct 2015 07:28:10 GMT", now=naive) == 10.0


@pytest.mark.parametrize(
    ("value", "expected"),
    [
        ("Wed, 21 Oct 2015 07:28:00 GMT", NOW),
        ("Wed, 21 Oct 2015 07:28:00 -0000", NOW),  # no zone given: UTC, still aware
        ("", None),
        ("yesterday", None),
    ],
)
def test_parse_http_date(value: str, expected: datetime | None) -> None:
    parsed = parse_http_date(value)
    assert parsed == expected
    assert parsed is None or parsed.tzinfo is not None
