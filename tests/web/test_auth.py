"""web.auth and web.limiter: tokens, the derived cookie, Host and Origin checks, login limits."""

from __future__ import annotations

import pytest

from mh_watchd.web import auth
from mh_watchd.web.limiter import LoginLimiter

TOKEN = "correct-horse-battery-staple"


def test_tokens_equal_only_for_the_configured_non_empty_token() -> None:
    assert auth.tokens_equal(TOKEN, TOKEN)
    assert not auth.tokens_equal(TOKEN + "x", TOKEN)
    assert not auth.tokens_equal("", TOKEN)
    assert not auth.tokens_equal("", "")  # no token configured: nothing logs in
    assert not auth.tokens_equal("é", TOKEN)  # non-ASCII is compared, never raises


def test_session_cookie_holds_a_derived_value_never_the_token() -> None:
    cookie = auth.session_cookie(TOKEN)
    assert TOKEN not in cookie
    assert "HttpOnly" in cookie and "SameSite=Strict" in cookie and "Path=/" in cookie
    value = auth.cookies(cookie.split(";", 1)[0])[auth.COOKIE_NAME]
    assert value == auth.session_value(TOKEN)
    assert value != auth.session_value(TOKEN + "2")  # a new token ends every session
    assert "Max-Age=0" in auth.expired_cookie()


@pytest.mark.parametrize(
    ("headers", "expected"),
    [
        ({}, False),
        ({"authorization": f"Bearer {TOKEN}"}, True),
        ({"authorization": f"bearer  {TOKEN} "}, True),
        ({"authorization": "Bearer wrong-token-of-some-length"}, False),
        ({"authorization": f"Basic {TOKEN}"}, False),
        ({"cookie": f"{auth.COOKIE_NAME}={auth.session_value(TOKEN)}"}, True),
        ({"cookie": f"a=b; {auth.COOKIE_NAME}={auth.session_value(TOKEN)}"}, True),
        ({"cookie": f"{auth.COOKIE_NAME}={TOKEN}"}, False),  # the raw token is not a session
        ({"cookie": f"{auth.COOKIE_NAME}="}, False),
        # A wrong Bearer is not rescued by a good cookie: the header says who is asking.
        (
            {
                "authorization": "Bearer nope",
                "cookie": f"{auth.COOKIE_NAME}={auth.session_value(TOKEN)}",
            },
            False,
        ),
    ],
)
def test_authorized_by_bearer_or_session_cookie(headers: dict[str, str], expected: bool) -> None:
    assert auth.authorized(headers, TOKEN) is expected


def test_without_a_token_everyone_on_loopback_is_authorized() -> None:
    assert auth.authorized({}, "")


@pytest.mark.parametrize(
    ("host", "token", "expected"),
    [
        ("127.0.0.1:9309", "", True),
        ("localhost:9309", "", True),
        ("[::1]:9309", "", True),
        ("127.3.4.5", "", True),
        ("evil.example:9309", "", False),  # DNS rebinding onto 127.0.0.1
        ("192.168.1.20:9309", "", False),
        ("", "", False),
        ("nas.local:9309", TOKEN, True),  # with a token, the token guards the page
    ],
)
def test_host_allowed_only_on_loopback_without_a_token(
    host: str, token: str, expected: bool
) -> None:
    headers = {"host": host} if host else {}
    assert auth.host_allowed(headers, token) is expected


@pytest.mark.parametrize(
    ("headers", "expected"),
    [
        ({"host": "nas:9309", "origin": "http://nas:9309"}, True),
        ({"host": "nas:9309", "origin": "https://NAS:9309"}, True),
        ({"host": "nas:9309", "origin": "http://evil.example"}, False),
        ({"host": "nas:9309", "origin": "http://nas:9310"}, False),
        ({"host": "nas:9309", "origin": "null"}, False),
        ({"host": "nas:9309", "referer": "http://nas:9309/?retried=1"}, True),
        ({"host": "nas:9309", "referer": "http://evil.example/nas:9309"}, False),
        (
            {"host": "nas:9309", "origin": "http://evil.example", "referer": "http://nas:9309/"},
            False,
        ),
        ({"host": "nas:9309"}, None),
        ({"origin": "http://nas:9309"}, False),
    ],
)
def test_same_origin_compares_origin_then_referer_with_the_host(
    headers: dict[str, str], expected: bool | None
) -> None:
    assert auth.same_origin(headers) is expected


class FakeClock:
    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


def test_limiter_allows_a_few_failures_a_minute_then_says_how_long_to_wait() -> None:
    clock = FakeClock()
    limiter = LoginLimiter(clock=clock, max_failures=3, window_seconds=60)
    for _ in range(3):
        assert limiter.retry_after_seconds("10.0.0.9") == 0
        limiter.failed("10.0.0.9")
    assert limiter.retry_after_seconds("10.0.0.9") == pytest.approx(60)
    assert limiter.retry_after_seconds("10.0.0.10") == 0  # per client address
    clock.now += 59.5
    assert limiter.retry_after_seconds("10.0.0.9") == pytest.approx(0.5)
    clock.now += 1
    assert limiter.retry_after_seconds("10.0.0.9") == 0


def test_limiter_forgets_a_client_after_a_good_login_and_bounds_its_table() -> None:
    clock = FakeClock()
    limiter = LoginLimiter(clock=clock, max_failures=1, window_seconds=60, max_clients=2)
    limiter.failed("a")
    limiter.succeeded("a")
    assert limiter.retry_after_seconds("a") == 0
    for client in ("a", "b", "c"):
        limiter.failed(client)
    assert limiter.retry_after_seconds("a") == 0  # the oldest was dropped
    assert limiter.retry_after_seconds("c") > 0
