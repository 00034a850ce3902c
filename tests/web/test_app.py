"""WebApp over a real journal, called with WebRequests: the page, escaping, login, the retry
forms, /api/status and /api/retry, and every refusal (Host, Origin, token, rate limit)."""

from __future__ import annotations

import dataclasses
import json
import urllib.parse
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from mh_watchd import report
from mh_watchd.adapters.http_status import WebRequest, WebResponse
from mh_watchd.adapters.journal import Journal
from mh_watchd.core import naming
from mh_watchd.core.config import Config, parse
from mh_watchd.core.jobs import HoldReason, JobState, Output
from mh_watchd.web import WebApp, auth
from mh_watchd.web.limiter import LoginLimiter
from tests.factories import job_in

TOKEN = "a-web-token-long-enough"
HOST = "127.0.0.1:9309"


def make_config(state_dir: Path, *, token: str = "", listen: str = HOST) -> Config:
    daemon: dict[str, Any] = {"state_dir": str(state_dir), "http_listen": listen}
    if token:
        daemon["http_token"] = token
    return parse(
        {
            "daemon": daemon,
            "folder": [
                {
                    "name": "anime",
                    "inbox": "/m/anime/in",
                    "outbox": "/m/anime/out",
                    "style": {"art_style": "Oil Painting"},
                }
            ],
        }
    )


@pytest.fixture
def journal(tmp_path: Path) -> Iterator[Journal]:
    j = Journal.open(tmp_path / "state")
    try:
        yield j
    finally:
        j.close()


@pytest.fixture
def jobs(journal: Journal, tmp_path: Path) -> dict[str, int]:
    """A delivered, a held and a failed job (whose name is an attempted script injection)."""
    failed_dir = tmp_path / "failed"
    failed_dir.mkdir()
    evil = "<script>alert(1)</script>.mp4"
    failed_path = failed_dir / "<script>alert(2)<script>.mp4"  # a file name has no "/"
    sidecar = failed_path.with_name(naming.error_json_name(failed_path.name))
    sidecar.write_text(json.dumps({"what_happened": "not a <b>video</b>", "what_to_do": "fix"}))
    done = journal.insert(
        job_in(
            JobState.DONE,
            rel_path="trip/beach.mp4",
            outputs=(Output(index=0, final_path="/m/anime/out/trip/beach.oil.mp4", placed=True),),
            updated_at=100.0,
        ),
        event="test",
    )
    held = journal.insert(
        job_in(JobState.HELD, rel_path="held.mp4", hold_reason=HoldReason.CREDITS),
        event="test",
    )
    failed = journal.insert(
        job_in(
            JobState.FAILED,
            rel_path=evil,
            failed_path=str(failed_path),
            last_error="not a readable video",
        ),
        event="test",
    )
    assert done.id and held.id and failed.id
    return {"done": done.id, "held": held.id, "failed": failed.id}


def request(
    method: str,
    path: str,
    *,
    body: bytes = b"",
    host: str = HOST,
    origin: str | None = "same",
    client: str = "127.0.0.1",
    **headers: str,
) -> WebRequest:
    path, _, query = path.partition("?")
    all_headers = {"host": host, **{k.replace("_", "-"): v for k, v in headers.items()}}
    if origin == "same":
        all_headers["origin"] = f"http://{host}"
    elif origin is not None:
        all_headers["origin"] = origin
    return WebRequest(method, path, query, all_headers, body, client)


def form(**fields: str) -> bytes:
    return urllib.parse.urlencode(fields).encode()


def app_for(journal: Journal, config: Config, *, writable: bool = True) -> WebApp:
    limiter = LoginLimiter(clock=lambda: 0.0, max_failures=3, window_seconds=60)
    return WebApp(journal, lambda: config, writable=writable, clock=lambda: 200.0, limiter=limiter)


def text(response: WebResponse) -> str:
    return response.body.decode()


def header(response: WebResponse, name: str) -> str | None:
    return next((v for k, v in response.headers if k.lower() == name.lower()), None)


def test_page_lists_delivered_held_and_failed_jobs_with_outputs_and_error_json(
    journal: Journal, jobs: dict[str, int], tmp_path: Path
) -> None:
    app = app_for(journal, make_config(tmp_path / "state"))
    response = app(request("GET", "/", origin=None))
    assert response.status == 200
    page = text(response)
    assert "/m/anime/out/trip/beach.oil.mp4" in page
    assert "held.mp4" in page and "credits" in page
    assert "not a readable video" in page
    assert "not a &lt;b&gt;video&lt;/b&gt;" in page  # the .error.json text, escaped
    assert '<meta name="viewport"' in page and "prefers-color-scheme" in page
    assert "http://" not in page.replace(f"http://{HOST}", "")  # no external asset
    csp = header(response, "Content-Security-Policy") or ""
    assert "frame-ancestors 'none'" in csp and "default-src 'none'" in csp


def test_a_file_name_with_a_script_tag_is_escaped_everywhere(
    journal: Journal, jobs: dict[str, int], tmp_path: Path
) -> None:
    page = text(app_for(journal, make_config(tmp_path / "state"))(request("GET", "/")))
    assert "<script>alert(1)</script>" not in page
    assert "&lt;script&gt;alert(1)&lt;/script&gt;.mp4" in page
    # The only scripts are the page's own refresh, with this response's nonce.
    assert page.count("<script nonce=") == 1 and page.count("<script") == 1


def test_api_status_is_the_status_json_document(
    journal: Journal, jobs: dict[str, int], tmp_path: Path
) -> None:
    config = make_config(tmp_path / "state")
    response = app_for(journal, config)(request("GET", "/api/status"))
    assert response.status == 200 and response.content_type == "application/json"
    assert json.loads(response.body) == json.loads(
        json.dumps(report.build(journal, config, now=200.0), default=str)
    )
    data = json.loads(response.body)
    assert [r["id"] for r in data["recent"]] == [jobs["done"]]
    assert data["failed"][0]["error_json"]["what_to_do"] == "fix"


def test_retry_form_writes_the_same_request_as_the_cli_and_redirects_back(
    journal: Journal, jobs: dict[str, int], tmp_path: Path
) -> None:
    app = app_for(journal, make_config(tmp_path / "state"))
    response = app(request("POST", "/retry", body=form(job_id=str(jobs["failed"]))))
    assert response.status == 303
    assert header(response, "Location") == "/?retried=1"
    assert [(r.kind, r.job_id) for r in journal.pending_requests()] == [("retry", jobs["failed"])]
    after = text(app(request("GET", "/?retried=1")))
    assert "Retry requested for 1 job(s)" in after


def test_retry_all_held_and_all_failed_forms(
    journal: Journal, jobs: dict[str, int], tmp_path: Path
) -> None:
    app = app_for(journal, make_config(tmp_path / "state"))
    assert app(request("POST", "/retry", body=form(all="held"))).status == 303
    assert app(request("POST", "/retry", body=form(all="failed"))).status == 303
    assert sorted(r.job_id for r in journal.pending_requests()) == sorted(
        [jobs["held"], jobs["failed"]]
    )


def test_retry_form_of_an_unknown_or_unfinished_job_says_why_and_writes_nothing(
    journal: Journal, jobs: dict[str, int], tmp_path: Path
) -> None:
    app = app_for(journal, make_config(tmp_path / "state"))
    response = app(request("POST", "/retry", body=form(job_id="999")))
    assert response.status == 400 and "999: no such job" in text(response)
    assert app(request("POST", "/retry", body=b"")).status == 400
    assert journal.pending_requests() == []


def test_api_retry_answers_what_was_requested(
    journal: Journal, jobs: dict[str, int], tmp_path: Path
) -> None:
    app = app_for(journal, make_config(tmp_path / "state"))
    body = json.dumps({"job_ids": [jobs["held"]]}).encode()
    response = app(request("POST", "/api/retry", body=body, content_type="application/json"))
    assert response.status == 200, text(response)
    data = json.loads(response.body)
    assert [r["id"] for r in data["requested"]] == [jobs["held"]]
    assert data["daemon_running"] is False


@pytest.mark.parametrize(
    ("body", "message"),
    [
        (b"not json", "not JSON"),
        (b"[1]", "JSON object"),
        (b'{"jobs": [1]}', "unknown key(s) 'jobs'"),
        (b'{"job_ids": "1"}', "job_ids must be a list"),
        (b'{"job_ids": [true]}', "job_ids must be a list"),
        (b'{"failed": "yes"}', "failed and held must be true or false"),
        (b"{}", "nothing asked"),
        (b'{"job_ids": [12345]}', "12345: no such job"),
    ],
)
def test_api_retry_refuses_bad_input_with_a_clear_400(
    journal: Journal, jobs: dict[str, int], tmp_path: Path, body: bytes, message: str
) -> None:
    app = app_for(journal, make_config(tmp_path / "state"))
    response = app(request("POST", "/api/retry", body=body, content_type="application/json"))
    assert response.status == 400
    assert message in json.loads(response.body)["error"]
    assert journal.pending_requests() == []


def test_read_only_page_disables_retry_and_says_the_daemon_is_not_running(
    journal: Journal, jobs: dict[str, int], tmp_path: Path
) -> None:
    app = app_for(journal, make_config(tmp_path / "state"), writable=False)
    page = text(app(request("GET", "/")))
    assert "the daemon is not running" in page
    assert 'action="/retry"' not in page and "<button disabled" in page
    response = app(request("POST", "/retry", body=form(job_id=str(jobs["failed"]))))
    assert response.status == 400
    api = app(request("POST", "/api/retry", body=b'{"failed": true}', content_type=JSON_CT))
    assert api.status == 409
    assert journal.pending_requests() == []


JSON_CT = "application/json"


@pytest.mark.parametrize(
    ("origin", "referer", "status"),
    [
        ("http://evil.example", None, 403),
        ("null", None, 403),
        (None, None, 403),  # a form POST with neither is not from a browser on this page
        (None, f"http://{HOST}/", 303),
    ],
)
def test_form_posts_need_this_page_as_origin(
    journal: Journal,
    jobs: dict[str, int],
    tmp_path: Path,
    origin: str | None,
    referer: str | None,
    status: int,
) -> None:
    app = app_for(journal, make_config(tmp_path / "state"))
    extra = {"referer": referer} if referer else {}
    response = app(request("POST", "/retry", body=form(all="failed"), origin=origin, **extra))
    assert response.status == status


def test_api_posts_need_json_and_a_matching_origin_when_one_is_sent(
    journal: Journal, jobs: dict[str, int], tmp_path: Path
) -> None:
    app = app_for(journal, make_config(tmp_path / "state"))
    body = b'{"failed": true}'
    as_form = app(request("POST", "/api/retry", body=body, content_type="text/plain"))
    assert as_form.status == 415  # what a cross-site form could send
    evil = request("POST", "/api/retry", body=body, origin="http://evil", content_type=JSON_CT)
    assert app(evil).status == 403
    script = request("POST", "/api/retry", body=body, origin=None, content_type=JSON_CT)
    assert app(script).status == 200  # curl: no Origin, JSON body


def test_without_a_token_only_loopback_host_names_are_answered(
    journal: Journal, jobs: dict[str, int], tmp_path: Path
) -> None:
    app = app_for(journal, make_config(tmp_path / "state"))
    assert app(request("GET", "/", host="rebound.evil.example:9309")).status == 421
    assert app(request("GET", "/api/status", host="localhost:9309")).status == 200


class TestWithAToken:
    @pytest.fixture
    def app(self, journal: Journal, jobs: dict[str, int], tmp_path: Path) -> WebApp:
        config = make_config(tmp_path / "state", token=TOKEN, listen="0.0.0.0:9309")
        return app_for(journal, config)

    def test_page_without_login_is_a_401_login_form(self, app: WebApp) -> None:
        response = app(request("GET", "/", host="nas:9309"))
        assert response.status == 401
        page = text(response)
        assert 'action="/login"' in page and "held.mp4" not in page
        assert TOKEN not in page

    def test_api_without_the_token_is_401_and_with_bearer_is_200(self, app: WebApp) -> None:
        assert app(request("GET", "/api/status", host="nas:9309")).status == 401
        ok = request("GET", "/api/status", host="nas:9309", authorization=f"Bearer {TOKEN}")
        assert app(ok).status == 200

    def test_login_sets_a_strict_http_only_cookie_that_opens_the_page(self, app: WebApp) -> None:
        response = app(request("POST", "/login", host="nas:9309", body=form(token=TOKEN)))
        assert response.status == 303
        cookie = header(response, "Set-Cookie") or ""
        assert "HttpOnly" in cookie and "SameSite=Strict" in cookie and TOKEN not in cookie
        value = cookie.split(";", 1)[0]
        page = app(request("GET", "/", host="nas:9309", cookie=value))
        assert page.status == 200 and "held.mp4" in text(page) and TOKEN not in text(page)
        out = app(request("POST", "/logout", host="nas:9309", cookie=value))
        assert "Max-Age=0" in (header(out, "Set-Cookie") or "")

    def test_wrong_logins_fail_then_are_rate_limited_per_client(self, app: WebApp) -> None:
        def login(token: str, client: str = "10.0.0.5") -> WebResponse:
            return app(
                request("POST", "/login", host="nas:9309", body=form(token=token), client=client)
            )

        for _ in range(3):
            response = login("wrong-token-wrong-token")
            assert response.status == 401
            assert "not the token" in text(response)
        limited = login(TOKEN)  # even the right one waits: the window has not moved
        assert limited.status == 429 and header(limited, "Retry-After") == "60"
        assert login(TOKEN, client="10.0.0.6").status == 303

    def test_post_with_the_token_but_another_origin_is_refused(self, app: WebApp) -> None:
        cookie = f"{auth.COOKIE_NAME}={auth.session_value(TOKEN)}"
        evil = request(
            "POST",
            "/retry",
            host="nas:9309",
            origin="http://evil",
            cookie=cookie,
            body=form(all="failed"),
        )
        assert app(evil).status == 403
        good = dataclasses.replace(evil, headers={**evil.headers, "origin": "http://nas:9309"})
        assert app(good).status == 303

    def test_post_without_the_token_is_refused(self, app: WebApp, journal: Journal) -> None:
        response = app(request("POST", "/retry", host="nas:9309", body=form(all="failed")))
        assert response.status == 303 and header(response, "Location") == "/"
        api = request(
            "POST", "/api/retry", host="nas:9309", body=b'{"failed": true}', content_type=JSON_CT
        )
        assert app(api).status == 401
        assert journal.pending_requests() == []
