"""Routes one web request to its answer: the page, the login form, the retry forms, /api/.

| route | what |
|---|---|
| `GET /` | the page (a login form with 401 when a token is set and not given) |
| `POST /login`, `POST /logout` | set or end the session cookie, then back to `/` |
| `POST /retry` | form: `job_id=N`, or `all=failed` / `all=held`; then back to `/` (303) |
| `GET /api/status` | the `status --json` document |
| `POST /api/retry` | JSON `{"job_ids": [...]}` / `{"failed": true}` / `{"held": true}` |

Every request first passes the Host check (loopback only without a token), then the token
when one is configured; every POST also needs its Origin (or Referer) to be this Host, and
/api/ POSTs a JSON body, which other sites cannot send without asking first. Retries go
through `retries.request_retries`, the function `mh-watchd retry` uses.
"""

from __future__ import annotations

import json
import math
import secrets
import time
import urllib.parse
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import structlog

from mh_watchd import report
from mh_watchd.adapters.http_status import HealthReport, WebRequest, WebResponse
from mh_watchd.adapters.journal import Journal
from mh_watchd.core.config import Config
from mh_watchd.core.errors import StateDirError
from mh_watchd.retries import RetryOutcome, request_retries
from mh_watchd.web import auth, page
from mh_watchd.web.limiter import LoginLimiter

log = structlog.get_logger("mh_watchd.web")

HTML = "text/html; charset=utf-8"
JSON = "application/json"
READ_ONLY_MESSAGE = "read-only: the daemon is not running here; start it, or run `mh-watchd retry`"


@dataclass(frozen=True)
class RetryAsk:
    """What a retry form or /api/retry body asked for."""

    job_ids: tuple[str, ...] = ()
    failed: bool = False
    held: bool = False


def _json(status: int, body: object, headers: tuple[tuple[str, str], ...] = ()) -> WebResponse:
    data = (json.dumps(body, indent=2, sort_keys=True, default=str) + "\n").encode()
    return WebResponse(status, JSON, data, headers)


def _redirect(location: str, headers: tuple[tuple[str, str], ...] = ()) -> WebResponse:
    return WebResponse(303, "text/plain; charset=utf-8", b"", (("Location", location), *headers))


def _html(status: int, text: str, nonce: str, *extra: tuple[str, str]) -> WebResponse:
    policy = (
        "default-src 'none'; style-src 'unsafe-inline'; "
        f"script-src 'nonce-{nonce}'; form-action 'self'; frame-ancestors 'none'; "
        "base-uri 'none'"
    )
    headers = (
        ("Content-Security-Policy", policy),
        ("X-Frame-Options", "DENY"),
        ("X-Content-Type-Options", "nosniff"),
        ("Referrer-Policy", "same-origin"),
        *extra,
    )
    return WebResponse(status, HTML, text.encode("utf-8"), headers)


def parse_form_ask(body: bytes) -> RetryAsk | str:
    """The retry form's fields, or what is wrong with them."""
    fields = urllib.parse.parse_qs(body.decode("utf-8", errors="replace"))
    kind = fields.get("all", [""])[0]
    ids = tuple(v.strip() for v in fields.get("job_id", []) if v.strip())
    if kind in ("failed", "held"):
        return RetryAsk(failed=kind == "failed", held=kind == "held")
    if ids:
        return RetryAsk(job_ids=ids)
    return "say which job to retry (job_id), or all=failed / all=held"


def parse_api_ask(body: bytes) -> RetryAsk | str:
    """The /api/retry JSON body, or a message saying what is wrong with it."""
    usage = 'send {"job_ids": [1, 2]}, {"failed": true} or {"held": true}'
    try:
        data = json.loads(body.decode("utf-8"))
    except (UnicodeDecodeError, ValueError):
        return f"the body is not JSON; {usage}"
    if not isinstance(data, dict):
        return f"the body must be a JSON object; {usage}"
    unknown = sorted(set(data) - {"job_ids", "failed", "held"})
    if unknown:
        return f"unknown key(s) {', '.join(map(repr, unknown))}; {usage}"
    ids = data.get("job_ids", [])
    if not isinstance(ids, list) or not all(
        (isinstance(i, int) and not isinstance(i, bool)) or (isinstance(i, str) and i.strip())
        for i in ids
    ):
        return f"job_ids must be a list of job ids (numbers) or project ids (strings); {usage}"
    flags = {k: data.get(k, False) for k in ("failed", "held")}
    if not all(isinstance(v, bool) for v in flags.values()):
        return f"failed and held must be true or false; {usage}"
    if not ids and not flags["failed"] and not flags["held"]:
        return f"nothing asked; {usage}"
    return RetryAsk(job_ids=tuple(str(i) for i in ids), **flags)


class WebApp:
    """The web page and /api/ over one journal. Call it with a WebRequest (a WebHandler).

    `writable` False (`mh-watchd web`) serves everything read-only: Retry is off. `config` is
    called per request, so a reloaded token applies at once. Safe to call from many threads.
    """

    def __init__(
        self,
        journal: Journal,
        config: Callable[[], Config],
        *,
        writable: bool,
        health: Callable[[], HealthReport] | None = None,
        clock: Callable[[], float] = time.time,
        limiter: LoginLimiter | None = None,
    ) -> None:
        self._journal = journal
        self._config = config
        self._writable = writable
        self._health = health
        self._clock = clock
        self._limiter = limiter or LoginLimiter(clock=time.monotonic)

    def __call__(self, request: WebRequest) -> WebResponse:
        """Answer one request; every check comes first (see the module's table)."""
        token = self._config().daemon.http_token
        if not auth.host_allowed(request.headers, token):
            return WebResponse(
                421,
                "text/plain; charset=utf-8",
                b"this page answers only to localhost without daemon.http_token\n",
            )
        if request.method == "POST":
            refused = self._refuse_cross_site(request)
            if refused is not None:
                return refused
        if request.path == "/login":
            return self._login(request, token)
        if not auth.authorized(request.headers, token):
            return self._unauthorized(request)
        if auth.bearer(request.headers.get("authorization", "")) is not None:
            self._limiter.succeeded(request.client_ip)
        return self._route(request, token)

    def _route(self, request: WebRequest, token: str) -> WebResponse:
        key = (request.method, request.path)
        if key == ("GET", "/"):
            return self._page(request, token)
        if key == ("POST", "/retry"):
            return self._form_retry(request)
        if key == ("POST", "/logout"):
            return _redirect("/", (("Set-Cookie", auth.expired_cookie()),))
        if key == ("GET", "/api/status"):
            return _json(200, self._status())
        if key == ("POST", "/api/retry"):
            return self._api_retry(request)
        if request.path in ("/", "/retry", "/logout", "/api/status", "/api/retry"):
            return _json(405, {"error": f"{request.method} is not allowed on {request.path}"})
        return _json(404, {"error": f"no such page: {request.path}"})

    # ------------------------------------------------------------------ checks
    def _refuse_cross_site(self, request: WebRequest) -> WebResponse | None:
        origin = auth.same_origin(request.headers)
        is_api = request.path.startswith("/api/")
        if origin is False or (origin is None and not is_api):
            log.warning("web.cross_site_refused", path=request.path, client=request.client_ip)
            return _json(403, {"error": "refused: the Origin (or Referer) is not this page"})
        content_type = request.headers.get("content-type", "").split(";")[0].strip().lower()
        if is_api and content_type != JSON:
            return _json(415, {"error": "send the body as Content-Type: application/json"})
        return None

    def _unauthorized(self, request: WebRequest) -> WebResponse:
        if auth.bearer(request.headers.get("authorization", "")) is not None:
            # A wrong Bearer token is a failed login too: counted, and limited the same way.
            wait = self._limiter.retry_after_seconds(request.client_ip)
            if wait > 0:
                retry_after = (("Retry-After", str(math.ceil(wait))),)
                return _json(429, {"error": "too many failed logins; wait"}, retry_after)
            self._limiter.failed(request.client_ip)
            log.warning("web.login_failed", client=request.client_ip, by="bearer")
        if request.path.startswith("/api/"):
            body = {"error": "send Authorization: Bearer <daemon.http_token>"}
            return _json(401, body, (("WWW-Authenticate", 'Bearer realm="mh-watchd"'),))
        if request.method == "GET" and request.path == "/":
            nonce = secrets.token_urlsafe(16)
            return _html(401, page.login_page(nonce=nonce), nonce)
        return _redirect("/")

    def _login(self, request: WebRequest, token: str) -> WebResponse:
        nonce = secrets.token_urlsafe(16)
        if request.method != "POST" or not token:
            return _redirect("/")
        wait = self._limiter.retry_after_seconds(request.client_ip)
        if wait > 0:
            message = f"Too many failed logins; try again in {math.ceil(wait)} s."
            retry_after = ("Retry-After", str(math.ceil(wait)))
            return _html(429, page.login_page(nonce=nonce, error=message), nonce, retry_after)
        fields = urllib.parse.parse_qs(request.body.decode("utf-8", errors="replace"))
        given = fields.get("token", [""])[0]
        if not auth.tokens_equal(given, token):
            self._limiter.failed(request.client_ip)
            log.warning("web.login_failed", client=request.client_ip)
            error = "That is not the token in daemon.http_token."
            return _html(401, page.login_page(nonce=nonce, error=error), nonce)
        self._limiter.succeeded(request.client_ip)
        log.info("web.logged_in", client=request.client_ip)
        return _redirect("/", (("Set-Cookie", auth.session_cookie(token)),))

    # ------------------------------------------------------------------ pages
    def _status(self) -> dict[str, Any]:
        return report.build(self._journal, self._config(), now=self._clock())

    def _page(self, request: WebRequest, token: str) -> WebResponse:
        query = urllib.parse.parse_qs(request.query)
        notice = query.get("retried", [None])[0]
        nonce = secrets.token_urlsafe(16)
        options = page.PageOptions(
            writable=self._writable,
            nonce=nonce,
            logout=bool(token),
            notice=_notice(notice),
            health_reasons=self._health_reasons(),
        )
        return _html(200, page.status_page(self._status(), options), nonce)

    def _health_reasons(self) -> tuple[str, ...]:
        if self._health is None:
            return ()
        try:
            health = self._health()
        except Exception as exc:  # the page still shows the journal when the probe breaks
            return (f"health check raised {exc!r}",)
        return () if health.healthy else tuple(health.reasons)

    # ------------------------------------------------------------------ retries
    def _retry(self, ask: RetryAsk) -> RetryOutcome:
        outcome = request_retries(
            self._journal,
            job_ids=ask.job_ids,
            failed=ask.failed,
            held=ask.held,
            now=self._clock(),
        )
        if outcome.ok:
            log.info("web.retry_requested", jobs=[t.id for t in outcome.requested])
        return outcome

    def _form_retry(self, request: WebRequest) -> WebResponse:
        """POST/redirect/GET: 303 back to the page, or the page with what went wrong (400)."""
        ask = parse_form_ask(request.body)
        if not self._writable:
            return self._page_with_error(READ_ONLY_MESSAGE)
        if isinstance(ask, str):
            return self._page_with_error(ask)
        try:
            outcome = self._retry(ask)
        except StateDirError as exc:
            return self._page_with_error(f"the journal refused the request: {exc}")
        if not outcome.ok:
            return self._page_with_error("; ".join(outcome.problems))
        return _redirect(f"/?retried={len(outcome.requested)}")

    def _page_with_error(self, error: str) -> WebResponse:
        nonce = secrets.token_urlsafe(16)
        token = self._config().daemon.http_token
        options = page.PageOptions(
            writable=self._writable, nonce=nonce, logout=bool(token), error=error
        )
        return _html(400, page.status_page(self._status(), options), nonce)

    def _api_retry(self, request: WebRequest) -> WebResponse:
        if not self._writable:
            return _json(409, {"error": READ_ONLY_MESSAGE})
        ask = parse_api_ask(request.body)
        if isinstance(ask, str):
            return _json(400, {"error": ask})
        try:
            outcome = self._retry(ask)
        except StateDirError as exc:
            return _json(503, {"error": f"the journal refused the request: {exc}"})
        if not outcome.ok:
            return _json(400, {"error": "; ".join(outcome.problems), "requested": []})
        return _json(
            200,
            {
                "requested": [t.as_dict() for t in outcome.requested],
                "daemon_running": outcome.daemon_running,
            },
        )


def _notice(retried: str | None) -> str | None:
    """The line shown after a retry form redirected back (only a number is taken)."""
    if retried is None or not retried.isdigit():
        return None
    count = int(retried)
    if count == 0:
        return "Nothing to retry."
    return f"Retry requested for {count} job(s); the daemon acts within seconds."
