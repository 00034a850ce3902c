"""notifier: a real local HTTP server receives the webhook POSTs."""

from __future__ import annotations

import json
import sys
import threading
import time
import types
from collections.abc import Iterator
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any

import httpx
import pytest
from structlog.testing import capture_logs

from mh_watchd.adapters.notifier import EventNotifier, safe_url
from tests.conftest import wait_for


@dataclass
class _Hook:
    """What the fake webhook received, and what it should answer next."""

    script: list[int | str] = field(default_factory=list)  # statuses, or "hang"
    retry_after: str | None = None
    date: str | None = None  # the Date header to send; None: the server's clock
    received: list[dict[str, Any]] = field(default_factory=list)
    headers: list[dict[str, str]] = field(default_factory=list)
    paths: list[str] = field(default_factory=list)
    release: threading.Event = field(default_factory=threading.Event)
    lock: threading.Lock = field(default_factory=threading.Lock)
    url: str = ""

    def count(self) -> int:
        with self.lock:
            return len(self.received)


class _HookServer(ThreadingHTTPServer):
    daemon_threads = True
    hook: _Hook


class _HookHandler(BaseHTTPRequestHandler):
    server: _HookServer

    def do_POST(self) -> None:
        hook = self.server.hook
        body = self.rfile.read(int(self.headers.get("Content-Length", "0")))
        with hook.lock:
            hook.received.append(json.loads(body))
            hook.headers.append({k.lower(): v for k, v in self.headers.items()})
            hook.paths.append(self.path)
            action = hook.script.pop(0) if hook.script else 200
        if action == "hang":
            hook.release.wait(10.0)
            return
        assert isinstance(action, int)
        self.send_response(action)
        if hook.retry_after is not None and action == 429:
            self.send_header("Retry-After", hook.retry_after)
        self.send_header("Content-Length", "0")
        self.end_headers()

    def log_message(self, format: str, *args: Any) -> None:
        return

    def date_time_string(self, timestamp: float | None = None) -> str:
        fixed = self.server.hook.date
        return fixed if fixed is not None else super().date_time_string(timestamp)


@pytest.fixture
def hook() -> Iterator[_Hook]:
    state = _Hook()
    server = _HookServer(("127.0.0.1", 0), _HookHandler)
    server.hook = state
    thread = threading.Thread(target=server.serve_forever, kwargs={"poll_interval": 0.05})
    thread.start()
    state.url = f"http://127.0.0.1:{server.server_address[1]}/hook"
    try:
        yield state
    finally:
        state.release.set()
        server.shutdown()
        thread.join()
        server.server_close()


@pytest.fixture
def http() -> Iterator[httpx.Client]:
    with httpx.Client(timeout=2.0) as client:
        yield client


class _Sleeps:
    def __init__(self) -> None:
        self.waits: list[float] = []

    def __call__(self, seconds: float) -> None:
        self.waits.append(seconds)


def _notifier_threads() -> list[threading.Thread]:
    return [t for t in threading.enumerate() if t.name == "mh-watchd-notifier"]


def test_events_in_on_are_posted_as_json_and_others_are_not(
    hook: _Hook, http: httpx.Client
) -> None:
    notifier = EventNotifier(
        webhook_url=hook.url,
        apprise_urls=[],
        on=["failed", "outage"],
        http=http,
        clock=lambda: 1_700_000_000.0,
    )
    notifier.start()
    notifier.notify("done", folder="anime", file="a.mp4", job=1)
    notifier.notify(
        "failed", folder="anime", file="trip/b.mp4", job=2, reason="not a video", extra=5
    )
    notifier.notify("outage", folder="nas", reason="inbox not mounted")
    wait_for(lambda: hook.count() >= 2, timeout_seconds=10, what="two webhook posts")
    notifier.stop()

    assert hook.count() == 2  # "done" was never sent
    failed, outage = hook.received
    assert failed["event"] == "failed"
    assert failed["folder"] == "anime"
    assert failed["file"] == "trip/b.mp4"
    assert failed["job"] == 2
    assert failed["reason"] == "not a video"
    assert failed["output"] is None
    assert failed["at"] == "2023-11-14T22:13:20+00:00"
    assert failed["host"]
    assert failed["extra"] == 5
    assert "failed" in failed["text"] and "trip/b.mp4" in failed["text"]
    assert outage["event"] == "outage" and outage["file"] is None
    assert hook.headers[0]["content-type"] == "application/json"


def test_server_errors_are_retried_with_core_backoff_until_success(
    hook: _Hook, http: httpx.Client
) -> None:
    hook.script = [500, 500]
    sleeps = _Sleeps()
    notifier = EventNotifier(
        webhook_url=hook.url, apprise_urls=[], on=["held"], http=http, sleep=sleeps
    )
    notifier.start()
    with capture_logs() as logs:
        notifier.notify("held", folder="anime", job=3, reason="credits")
        wait_for(
            lambda: any(e["event"] == "notify.sent" for e in logs),
            timeout_seconds=10,
            what="notify.sent",
        )
        notifier.stop()
    assert hook.count() == 3
    assert all(body["job"] == 3 for body in hook.received)
    assert sleeps.waits == [0.25, 0.5]
    sent = next(e for e in logs if e["event"] == "notify.sent")
    assert sent["attempts"] == 3


def test_retry_after_is_honoured_and_attempts_are_capped(hook: _Hook, http: httpx.Client) -> None:
    hook.script = [429, 503, 503, 503]
    hook.retry_after = "1"
    sleeps = _Sleeps()
    notifier = EventNotifier(
        webhook_url=hook.url, apprise_urls=[], on=["held"], http=http, sleep=sleeps, max_attempts=3
    )
    notifier.start()
    with capture_logs() as logs:
        notifier.notify("held", job=4)
        wait_for(
            lambda: any(e["event"] == "notify.failed" for e in logs),
            timeout_seconds=10,
            what="notify.failed",
        )
        notifier.stop()
    assert hook.count() == 3
    assert sleeps.waits == [1.0, 0.5]
    failed = next(e for e in logs if e["event"] == "notify.failed")
    assert failed["outcome"] == "503" and failed["attempts"] == 3


@pytest.mark.parametrize(
    ("retry_after", "expected_wait"),
    [
        ("Wed, 21 Oct 2015 07:28:03 GMT", 3.0),  # measured against the response's Date
        ("Wed, 21 Oct 2015 07:27:00 GMT", 0.0),  # already past: no wait
        ("Wed, 21 Oct 2015 09:00:00 GMT", 5.0),  # capped like every in-request wait
    ],
)
def test_retry_after_as_an_http_date_is_honoured(
    hook: _Hook, http: httpx.Client, retry_after: str, expected_wait: float
) -> None:
    hook.script = [429, 200]
    hook.retry_after = retry_after
    hook.date = "Wed, 21 Oct 2015 07:28:00 GMT"
    sleeps = _Sleeps()
    notifier = EventNotifier(
        webhook_url=hook.url, apprise_urls=[], on=["held"], http=http, sleep=sleeps
    )
    notifier.start()
    with capture_logs() as logs:
        notifier.notify("held", job=6)
        wait_for(
            lambda: any(e["event"] == "notify.sent" for e in logs),
            timeout_seconds=10,
            what="notify.sent",
        )
        notifier.stop()
    assert hook.count() == 2
    assert sleeps.waits == [expected_wait]
    retrying = next(e for e in logs if e["event"] == "notify.retrying")
    assert retrying["attempt"] == 1 and retrying["outcome"] == "429"
    sent = next(e for e in logs if e["event"] == "notify.sent")
    assert sent["attempts"] == 2


def test_a_client_error_is_not_retried(hook: _Hook, http: httpx.Client) -> None:
    hook.script = [400]
    sleeps = _Sleeps()
    notifier = EventNotifier(
        webhook_url=hook.url, apprise_urls=[], on=["failed"], http=http, sleep=sleeps
    )
    notifier.start()
    notifier.notify("failed", job=5)
    wait_for(lambda: hook.count() >= 1, timeout_seconds=10, what="one post")
    notifier.stop()
    assert hook.count() == 1 and sleeps.waits == []


def test_stop_returns_promptly_while_the_webhook_hangs(hook: _Hook) -> None:
    hook.script = ["hang", "hang"]
    with httpx.Client(timeout=0.3) as short:
        notifier = EventNotifier(webhook_url=hook.url, apprise_urls=[], on=["failed"], http=short)
        notifier.start()
        notifier.notify("failed", job=1)
        notifier.notify("failed", job=2)
        wait_for(lambda: hook.count() >= 1, timeout_seconds=10, what="the hanging post")
        started = time.monotonic()
        notifier.stop(timeout_seconds=1.0)
        elapsed = time.monotonic() - started
        assert elapsed < 1.5
        wait_for(lambda: not _notifier_threads(), timeout_seconds=5, what="the thread to end")
    # the first POST timed out and was not retried after stop(); the second got one try
    assert hook.count() <= 2


def test_stop_interrupts_a_backoff_wait(hook: _Hook, http: httpx.Client) -> None:
    hook.script = [500] * 10
    notifier = EventNotifier(webhook_url=hook.url, apprise_urls=[], on=["failed"], http=http)
    notifier.start()
    notifier.notify("failed", job=1)
    wait_for(lambda: hook.count() >= 1, timeout_seconds=10, what="the first post")
    started = time.monotonic()
    notifier.stop(timeout_seconds=5.0)
    assert time.monotonic() - started < 1.0
    assert not _notifier_threads()
    assert hook.count() <= 2


def test_stop_with_a_thread_stuck_past_its_deadline_still_returns(hook: _Hook) -> None:
    hook.script = ["hang"]
    with httpx.Client(timeout=1.0) as slow:
        notifier = EventNotifier(webhook_url=hook.url, apprise_urls=[], on=["failed"], http=slow)
        notifier.start()
        notifier.notify("failed", job=1)
        wait_for(lambda: hook.count() >= 1, timeout_seconds=10, what="the hanging post")
        started = time.monotonic()
        with capture_logs() as logs:
            notifier.stop(timeout_seconds=0.2)
        assert time.monotonic() - started < 0.6
        assert "notify.stop_timed_out" in [e["event"] for e in logs]
        wait_for(lambda: not _notifier_threads(), timeout_seconds=5, what="the thread to end")


def test_secrets_in_the_webhook_url_never_reach_the_logs(hook: _Hook, http: httpx.Client) -> None:
    secret_url = hook.url.replace("http://", "http://alice:pa55word@") + "?token=T0KEN-XYZ"
    hook.script = [500]
    notifier = EventNotifier(
        webhook_url=secret_url, apprise_urls=[], on=["failed"], http=http, sleep=_Sleeps()
    )
    notifier.start()
    with capture_logs() as logs:
        notifier.notify("failed", job=1)
        wait_for(
            lambda: any(e["event"] == "notify.sent" for e in logs),
            timeout_seconds=10,
            what="notify.sent",
        )
        notifier.stop()
    assert hook.paths[-1] == "/hook?token=T0KEN-XYZ"  # the real URL was used
    text = repr(logs)
    assert "T0KEN-XYZ" not in text and "pa55word" not in text and "alice" not in text
    port = hook.url.split(":")[2].split("/")[0]
    assert {e["to"] for e in logs} == {f"http://127.0.0.1:{port}"}


def test_a_full_queue_drops_the_oldest_event_and_logs_it(hook: _Hook, http: httpx.Client) -> None:
    notifier = EventNotifier(
        webhook_url=hook.url, apprise_urls=[], on=["failed"], http=http, queue_max_events=2
    )
    with capture_logs() as logs:
        for job in (1, 2, 3):
            notifier.notify("failed", job=job)  # not started yet: the queue fills up
    assert [e["event"] for e in logs] == ["notify.dropped"]
    notifier.start()
    wait_for(lambda: hook.count() >= 2, timeout_seconds=10, what="two posts")
    notifier.stop()
    assert [body["job"] for body in hook.received] == [2, 3]


def test_missing_apprise_is_logged_once_without_the_url(
    monkeypatch: pytest.MonkeyPatch, http: httpx.Client
) -> None:
    # None in sys.modules makes `import apprise` raise ImportError, installed or not.
    monkeypatch.setitem(sys.modules, "apprise", None)
    notifier = EventNotifier(
        webhook_url="", apprise_urls=["tgram://123456:BOTTOKEN/987"], on=["failed"], http=http
    )
    notifier.start()
    with capture_logs() as logs:
        notifier.notify("failed", job=1)
        notifier.notify("failed", job=2)
        notifier.stop()
    missing = [e for e in logs if e["event"] == "notify.apprise_missing"]
    assert len(missing) == 1
    assert "BOTTOKEN" not in repr(logs)


def test_apprise_urls_get_each_event_when_apprise_is_installed(
    monkeypatch: pytest.MonkeyPatch, http: httpx.Client
) -> None:
    sent: list[dict[str, str]] = []
    added: list[str] = []

    class FakeApprise:
        def add(self, url: str) -> bool:
            added.append(url)
            return True

        def notify(self, *, title: str, body: str) -> bool:
            sent.append({"title": title, "body": body})
            return True

    monkeypatch.setitem(sys.modules, "apprise", types.SimpleNamespace(Apprise=FakeApprise))
    notifier = EventNotifier(
        webhook_url="", apprise_urls=["mailto://u:p@x.test"], on=["done"], http=http
    )
    notifier.start()
    with capture_logs() as logs:
        notifier.notify("done", folder="anime", file="a.mp4", output="out/a.studio-ghibli.mp4")
        wait_for(lambda: sent, timeout_seconds=10, what="an apprise notification")
        notifier.stop()
    assert added == ["mailto://u:p@x.test"]
    assert sent[0]["title"] == "mh-watchd: done"
    assert "out/a.studio-ghibli.mp4" in sent[0]["body"]
    assert [e["schemes"] for e in logs if e["event"] == "notify.apprise_sent"] == [["mailto://"]]


def test_unknown_events_are_refused_and_nothing_to_send_means_disabled(
    http: httpx.Client,
) -> None:
    with pytest.raises(ValueError, match="finished"):
        EventNotifier(webhook_url="http://x.test", apprise_urls=[], on=["finished"], http=http)
    notifier = EventNotifier(webhook_url="", apprise_urls=[], on=["failed"], http=http)
    assert not notifier.enabled
    notifier.start()
    assert not _notifier_threads()
    with pytest.raises(ValueError, match="exploded"):
        notifier.notify("exploded")
    notifier.notify("failed", job=1)  # disabled: silently nothing
    notifier.stop()


@pytest.mark.parametrize(
    ("url", "expected"),
    [
        ("https://user:pw@hooks.example.com/T0/B1/xyz?token=abc", "https://hooks.example.com"),
        ("http://127.0.0.1:8080/hook", "http://127.0.0.1:8080"),
        ("http://[::1]:9000/x", "http://[::1]:9000"),
    ],
)
def test_safe_url_keeps_only_scheme_and_host(url: str, expected: str) -> None:
    assert safe_url(url) == expected
