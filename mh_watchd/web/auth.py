"""Who may use the web page: the token, the session cookie derived from it, and the Host and
Origin checks that keep other sites out (CSRF, DNS rebinding). Pure functions, no I/O.

The cookie never holds the token itself: it holds an HMAC of a fixed label keyed by the token,
so a leaked cookie does not reveal the token and changing the token ends every session.
"""

from __future__ import annotations

import hashlib
import hmac
import ipaddress
import urllib.parse
from collections.abc import Mapping

COOKIE_NAME = "mh_watchd_session"
_SESSION_LABEL = b"mh-watchd web session v1"


def tokens_equal(given: str, expected: str) -> bool:
    """True when `given` is the configured token (constant time; never true for "")."""
    if not expected:
        return False
    return hmac.compare_digest(given.encode("utf-8"), expected.encode("utf-8"))


def session_value(token: str) -> str:
    """The cookie value for a login with `token`: HMAC-SHA256 of a fixed label, keyed by it."""
    return hmac.new(token.encode("utf-8"), _SESSION_LABEL, hashlib.sha256).hexdigest()


def session_cookie(token: str, *, max_age_seconds: int = 30 * 24 * 3600) -> str:
    """The Set-Cookie value after a good login: HttpOnly, SameSite=Strict, the whole site."""
    return (
        f"{COOKIE_NAME}={session_value(token)}; Path=/; HttpOnly; SameSite=Strict; "
        f"Max-Age={max_age_seconds}"
    )


def expired_cookie() -> str:
    """The Set-Cookie value that ends a session (log out)."""
    return f"{COOKIE_NAME}=; Path=/; HttpOnly; SameSite=Strict; Max-Age=0"


def cookies(header: str) -> dict[str, str]:
    """The name=value pairs of a Cookie header (the first of each name wins)."""
    found: dict[str, str] = {}
    for part in header.split(";"):
        name, sep, value = part.strip().partition("=")
        if sep and name and name not in found:
            found[name] = value.strip()
    return found


def bearer(header: str) -> str | None:
    """The token of an `Authorization: Bearer TOKEN` header, None for any other."""
    scheme, _, value = header.strip().partition(" ")
    if scheme.lower() != "bearer" or not value.strip():
        return None
    return value.strip()


def authorized(headers: Mapping[str, str], token: str) -> bool:
    """True when no token is configured, or the request carries it (Bearer or the cookie)."""
    if not token:
        return True
    given = bearer(headers.get("authorization", ""))
    if given is not None:
        return tokens_equal(given, token)
    cookie = cookies(headers.get("cookie", "")).get(COOKIE_NAME, "")
    return bool(cookie) and hmac.compare_digest(cookie.encode(), session_value(token).encode())


def _split_host(host: str) -> tuple[str, str]:
    """("name or address", "port") of a Host header value, brackets removed from IPv6."""
    host = host.strip().lower()
    if host.startswith("["):
        name, _, rest = host[1:].partition("]")
        return name, rest.removeprefix(":")
    name, _, port = host.partition(":")
    return name, port


def is_loopback_host(host: str) -> bool:
    """True for a Host header naming this machine: localhost, 127.0.0.0/8 or ::1."""
    name, _ = _split_host(host)
    if name == "localhost" or name.endswith(".localhost"):
        return True
    try:
        return ipaddress.ip_address(name).is_loopback
    except ValueError:
        return False


def host_allowed(headers: Mapping[str, str], token: str) -> bool:
    """Without a token the page is for this machine only: the Host header must be loopback.

    That stops DNS rebinding (another site's name pointed at 127.0.0.1) from reading the page
    or pressing its buttons. With a token, any Host will do: the token guards the page.
    """
    host = headers.get("host", "")
    return bool(token) or (bool(host) and is_loopback_host(host))


def same_origin(headers: Mapping[str, str]) -> bool | None:
    """Does the Origin (else the Referer) name this Host? None when the request has neither.

    Browsers send Origin on every POST, so a form POST with neither is not from a browser.
    """
    host = headers.get("host", "").strip().lower()
    for name in ("origin", "referer"):
        value = headers.get(name, "").strip()
        if not value:
            continue
        if value == "null":
            return False
        parts = urllib.parse.urlsplit(value)
        return bool(host) and parts.scheme in ("http", "https") and parts.netloc.lower() == host
    return None
