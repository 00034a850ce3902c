"""MagicHourClient against httpx.MockTransport handlers, plus one real loopback HTTP server.

Every row of the error table (operation x status/exception -> class), the one retry policy,
streaming uploads and downloads, and the token never leaking.
"""

from __future__ import annotations

import hashlib
import json
import os
import threading
from collections.abc import Callable, Iterator
from datetime import UTC, datetime, timedelta
from email.utils import format_datetime
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import httpx
import pytest

from mh_watchd import __version__
from mh_watchd.adapters.magic_hour import (
    CHUNK_BYTES,
    PROJECT_KEYS,
    DownloadResult,
    MagicHourClient,
    RequestRecord,
    UploadResult,
    build_http_client,
)
from mh_watchd.core import backoff
from mh_watchd.core.api import CreatedProject, CreateRequest, Style
from mh_watchd.core.errors import (
    AmbiguousCreateError,
    ApiError,
    AuthError,
    CreditsError,
    NotFoundError,
    NotSentError,
    PermanentApiError,
    RefusedError,
    SourceChangedError,
    TransientApiError,
    UrlExpiredError,
)

TOKEN = "mhk_live_S3CRET_t0ken_value"
BASE_URL = "https://api.test/prefix"
UPLOAD_URL = "https://store.test/bucket/abc.mp4?X-Amz-Signature=sig1"
DOWNLOAD_URL = "https://cdn.test/out/abc.mp4?X-Amz-Signature=sig2"
USER_AGENT = f"mh-watchd/{__version__}"

Handler = Callable[[httpx.Request], httpx.Response]

CREATE_REQUEST = CreateRequest(
    name="anime/beach.mp4",
    file_path="api-assets/acct/abc.mp4",
    start_seconds=0.0,
    end_seconds=1.5,
    fps_resolution="HALF",
    style=Style(art_style="Studio Ghibli", version="v2"),
)

ALL_OPERATIONS = ("upload_urls", "upload", "create", "get", "download", "delete", "account")
V1_OPERATIONS = ("upload_urls", "create", "get", "delete", "account")
PRESIGNED_OPERATIONS = ("upload", "download")
JSON_OPERATIONS = ("upload_urls", "create", "get", "account")
SAFE_OPERATIONS = ("upload_urls", "upload", "get", "download", "delete", "account")


def project_body(**overrides: object) -> dict[str, object]:
    """A complete GET /v1/video-projects/{id} body, as the service sends it."""
    download = {"url": DOWNLOAD_URL, "expires_at": "2030-01-02T00:00:00Z"}
    body: dict[str, object] = {
        "id": "clx7uu86w0a5qp55yxz315r6r",
        "name": "anime/beach.mp4",
        "status": "complete",
        "type": "VIDEO_TO_VIDEO",
        "created_at": "2030-01-01T00:00:00Z",
        "width": 1024,
        "height": 576,
        "enabled": True,
        "start_seconds": 0,
        "end_seconds": 1.5,
        "credits_charged": 45,
        "total_frame_cost": 45,
        "fps": 12.5,
        "error": None,
        "downloads": [download],
        "download": download,
    }
    body.update(overrides)
    return body


SUCCESS_BODIES: dict[str, object] = {
    "upload_urls": {
        "items": [
            {
                "upload_url": UPLOAD_URL,
                "file_path": "api-assets/acct/abc.mp4",
                "expires_at": "2030-01-01T01:00:00Z",
            }
        ]
    },
    "create": {
        "id": "clx7uu86w0a5qp55yxz315r6r",
        "credits_charged": 45,
        "estimated_frame_cost": 45,
    },
    "get": project_body(),
    "account": {
        "id": "acct",
        "email": "a@example.com",
        "credits": 1000,
        "tier": "creator",
        "subscription": None,
    },
}


def ok_response(operation: str, request: httpx.Request) -> httpx.Response:
    """The service's success answer for `operation` (the request body is consumed first)."""
    request.read()
    if operation == "delete":
        return httpx.Response(204)
    if operation == "upload":
        return httpx.Response(200)
    if operation == "download":
        return streamed(200, b"video-bytes")
    return httpx.Response(200, json=SUCCESS_BODIES[operation])


def streamed(status: int, data: bytes, headers: dict[str, str] | None = None) -> httpx.Response:
    """A response whose body is a stream (as from a real socket), with its Content-Length."""
    all_headers = {"Content-Length": str(len(data)), **(headers or {})}
    return httpx.Response(status, headers=all_headers, stream=httpx.ByteStream(data))


class StreamingTransport(httpx.BaseTransport):
    """Like httpx.MockTransport, but the handler gets the request body still as a stream
    (MockTransport reads it all first), so a test can watch chunks arrive as a socket would."""

    def __init__(self, handler: Handler) -> None:
        self.handler = handler

    def handle_request(self, request: httpx.Request) -> httpx.Response:
        return self.handler(request)


class Harness:
    """Builds clients over MockTransport; records sleeps, attempts and requests; closes all."""

    def __init__(self, tmp_path: Path) -> None:
        self.tmp_path = tmp_path
        self.sleeps: list[float] = []
        self.records: list[RequestRecord] = []
        self.requests: list[httpx.Request] = []
        self._http: list[httpx.Client] = []

    def client(
        self,
        handler: Handler,
        *,
        base_url: str = BASE_URL,
        headers: dict[str, str] | None = None,
        request_timeout_seconds: float = 60.0,
        streaming: bool = False,
    ) -> MagicHourClient:
        def recording(request: httpx.Request) -> httpx.Response:
            self.requests.append(request)
            return handler(request)

        transport: httpx.BaseTransport = (
            StreamingTransport(recording) if streaming else httpx.MockTransport(recording)
        )
        http = httpx.Client(transport=transport, headers=headers)
        self._http.append(http)
        return MagicHourClient(
            http,
            base_url=base_url,
            token=TOKEN,
            request_timeout_seconds=request_timeout_seconds,
            sleep=self.sleeps.append,
            on_request=self.records.append,
        )

    def source(self, data: bytes = b"0123456789" * 100, name: str = "src.mp4") -> Path:
        path = self.tmp_path / name
        path.write_bytes(data)
        return path

    def invoke(self, client: MagicHourClient, operation: str) -> object:
        """Call the client method behind `operation` with plausible arguments."""
        if operation == "upload_urls":
            return client.request_upload_url("mp4")
        if operation == "upload":
            return client.upload(UPLOAD_URL, self.source())
        if operation == "create":
            return client.create(CREATE_REQUEST)
        if operation == "get":
            return client.get_project("clx7uu86w0a5qp55yxz315r6r")
        if operation == "download":
            return client.download(DOWNLOAD_URL, self.tmp_path / "out.mp4")
        if operation == "delete":
            client.delete_project("clx7uu86w0a5qp55yxz315r6r")
            return None
        assert operation == "account"
        return client.get_account()

    def close(self) -> None:
        for http in self._http:
            http.close()


@pytest.fixture
def harness(tmp_path: Path) -> Iterator[Harness]:
    h = Harness(tmp_path)
    try:
        yield h
    finally:
        h.close()


def answer(status: int, message: str | None = None, **headers: str) -> Handler:
    """A handler that always answers `status` with the service's JSON error shape."""

    def handler(request: httpx.Request) -> httpx.Response:
        request.read()
        body = {"message": message or f"status {status}"}
        if request.method == "GET" and request.url.host == "cdn.test":
            return streamed(status, json.dumps(body).encode(), headers)
        return httpx.Response(status, json=body, headers=headers)

    return handler


def raises(exc_type: type[httpx.HTTPError]) -> Handler:
    def handler(request: httpx.Request) -> httpx.Response:
        raise exc_type("simulated network failure", request=request)  # type: ignore[call-arg]

    return handler


def sequence(*handlers: Handler) -> Handler:
    """A handler that uses the given handlers in turn, the last one for every later request."""
    calls = [0]

    def handler(request: httpx.Request) -> httpx.Response:
        current = handlers[min(calls[0], len(handlers) - 1)]
        calls[0] += 1
        return current(request)

    return handler


def ok(operation: str) -> Handler:
    return lambda request: ok_response(operation, request)


# -- the classification table ---------------------------------------------------------------

STATUS_TABLE: list[tuple[str, int, type[ApiError]]] = [
    *[(op, 401, AuthError) for op in ALL_OPERATIONS],
    *[(op, 402, CreditsError) for op in ALL_OPERATIONS],
    *[(op, 429, RefusedError) for op in ALL_OPERATIONS],
    *[(op, s, PermanentApiError) for op in V1_OPERATIONS for s in (400, 403, 422)],
    *[(op, 404, NotFoundError) for op in V1_OPERATIONS],
    *[(op, s, UrlExpiredError) for op in PRESIGNED_OPERATIONS for s in (403, 404)],
    *[(op, s, PermanentApiError) for op in PRESIGNED_OPERATIONS for s in (400, 422)],
    *[(op, s, TransientApiError) for op in SAFE_OPERATIONS for s in (500, 504)],
    *[(op, s, RefusedError) for op in SAFE_OPERATIONS for s in (502, 503)],
    ("create", 502, RefusedError),
    ("create", 503, RefusedError),
    ("create", 500, AmbiguousCreateError),
    ("create", 504, AmbiguousCreateError),
    ("create", 409, AmbiguousCreateError),
    ("create", 418, AmbiguousCreateError),
    ("create", 302, AmbiguousCreateError),
]


@pytest.mark.parametrize(("operation", "status", "expected"), STATUS_TABLE)
def test_status_maps_to_error_class_and_only_transient_is_retried(
    harness: Harness, operation: str, status: int, expected: type[ApiError]
) -> None:
    client = harness.client(answer(status, "the service says no"))
    with pytest.raises(ApiError) as caught:
        harness.invoke(client, operation)
    err = caught.value
    assert type(err) is expected
    assert (err.operation, err.status) == (operation, status)
    assert err.service_message == "the service says no"
    assert "the service says no" in str(err)
    retried = issubclass(expected, TransientApiError)
    assert len(harness.requests) == (backoff.REQUEST_ATTEMPTS if retried else 1)
    assert [r.retried for r in harness.records] == [i > 0 for i in range(len(harness.requests))]
    assert all(r.status == status and r.operation == operation for r in harness.records)


NOT_SENT = (httpx.ConnectError, httpx.ConnectTimeout, httpx.PoolTimeout)
DROPPED = (
    httpx.ReadTimeout,
    httpx.WriteTimeout,
    httpx.RemoteProtocolError,
    httpx.ReadError,
    httpx.WriteError,
)
EXCEPTION_TABLE: list[tuple[str, type[httpx.HTTPError], type[ApiError]]] = [
    *[(op, exc, NotSentError) for op in ALL_OPERATIONS for exc in NOT_SENT],
    *[(op, exc, TransientApiError) for op in SAFE_OPERATIONS for exc in DROPPED],
    *[("create", exc, AmbiguousCreateError) for exc in DROPPED],
]


@pytest.mark.parametrize(("operation", "exc_type", "expected"), EXCEPTION_TABLE)
def test_network_failure_maps_to_error_class(
    harness: Harness, operation: str, exc_type: type[httpx.HTTPError], expected: type[ApiError]
) -> None:
    client = harness.client(raises(exc_type))
    with pytest.raises(ApiError) as caught:
        harness.invoke(client, operation)
    err = caught.value
    assert type(err) is expected
    assert err.status is None and err.operation == operation
    assert isinstance(err.__cause__, exc_type)
    retried = issubclass(expected, TransientApiError)
    assert len(harness.requests) == (backoff.REQUEST_ATTEMPTS if retried else 1)
    assert all(r.status is None for r in harness.records)


# -- create: never resent once it may have arrived -------------------------------------------


@pytest.mark.parametrize(
    "first",
    [answer(500), answer(504), raises(httpx.ReadTimeout), raises(httpx.RemoteProtocolError)],
    ids=["500", "504", "read-timeout", "reset-after-send"],
)
def test_create_is_never_resent_after_an_ambiguous_failure(
    harness: Harness, first: Handler
) -> None:
    client = harness.client(sequence(first, ok("create")))
    with pytest.raises(AmbiguousCreateError):
        client.create(CREATE_REQUEST)
    assert len(harness.requests) == 1
    assert harness.sleeps == []


@pytest.mark.parametrize(
    "first",
    [answer(502), answer(503), answer(429), raises(httpx.ConnectError)],
    ids=["502", "503", "429", "connect-error"],
)
def test_create_is_resent_when_the_service_surely_created_nothing(
    harness: Harness, first: Handler
) -> None:
    client = harness.client(sequence(first, ok("create")))
    created = client.create(CREATE_REQUEST)
    assert created == CreatedProject("clx7uu86w0a5qp55yxz315r6r", 45, 45)
    assert len(harness.requests) == 2
    assert harness.sleeps == [backoff.request_wait_seconds(1)]
    sent = [json.loads(r.content) for r in harness.requests]
    assert sent[0] == sent[1] == CREATE_REQUEST.to_json()


@pytest.mark.parametrize(
    ("body", "detail"),
    [
        (b"<html>gateway</html>", "not JSON"),
        (b"{}", "'id'"),
        (b'{"id": ""}', "'id' is empty"),
        (b'{"id": 42}', "'id'"),
        (b"[]", "not an object"),
    ],
)
def test_create_2xx_without_a_usable_id_is_ambiguous_and_not_resent(
    harness: Harness, body: bytes, detail: str
) -> None:
    client = harness.client(lambda request: httpx.Response(200, content=body))
    with pytest.raises(AmbiguousCreateError, match=detail) as caught:
        client.create(CREATE_REQUEST)
    assert caught.value.status == 200
    assert len(harness.requests) == 1


def test_create_with_an_id_but_no_numbers_keeps_the_id(harness: Harness) -> None:
    client = harness.client(lambda request: httpx.Response(200, json={"id": "p1"}))
    assert client.create(CREATE_REQUEST) == CreatedProject("p1", -1, -1)


# -- the retry policy ------------------------------------------------------------------------


def test_retries_exhausted_reraise_the_last_error_with_policy_waits(harness: Harness) -> None:
    client = harness.client(answer(503, "busy"))
    with pytest.raises(RefusedError, match="busy"):
        client.get_project("p1")
    assert len(harness.requests) == backoff.REQUEST_ATTEMPTS
    expected = [backoff.request_wait_seconds(n) for n in range(1, backoff.REQUEST_ATTEMPTS)]
    assert harness.sleeps == expected


def test_retry_after_seconds_is_honoured_via_the_injected_sleep(harness: Harness) -> None:
    client = harness.client(sequence(answer(429, "slow down", **{"Retry-After": "2"}), ok("get")))
    project = client.get_project("p1")
    assert project.status == "complete"
    assert harness.sleeps == [2.0]
    assert [(r.status, r.retried) for r in harness.records] == [(429, False), (200, True)]


def test_retry_after_http_date_is_measured_against_the_response_date(harness: Harness) -> None:
    headers = {
        "Date": "Wed, 21 Oct 2015 07:28:00 GMT",
        "Retry-After": "Wed, 21 Oct 2015 07:28:03 GMT",
    }
    client = harness.client(sequence(answer(503, **headers), ok("create")))
    client.create(CREATE_REQUEST)
    assert harness.sleeps == [3.0]


def test_long_retry_after_is_not_slept_in_the_request_but_handed_to_the_job(
    harness: Harness,
) -> None:
    later = format_datetime(datetime.now(UTC) + timedelta(seconds=60), usegmt=True)
    client = harness.client(answer(429, **{"Retry-After": later}))
    with pytest.raises(RefusedError) as caught:
        client.get_account()
    assert caught.value.retry_after_seconds is not None
    assert 55.0 <= caught.value.retry_after_seconds <= 61.0
    assert len(harness.requests) == 1
    assert harness.sleeps == []


def test_unusable_2xx_on_a_safe_route_is_transient(harness: Harness) -> None:
    client = harness.client(lambda request: httpx.Response(200, content=b"not json"))
    with pytest.raises(TransientApiError, match="not JSON") as caught:
        client.get_account()
    assert type(caught.value) is TransientApiError
    assert len(harness.requests) == backoff.REQUEST_ATTEMPTS


def test_upload_urls_without_items_is_transient(harness: Harness) -> None:
    client = harness.client(lambda request: httpx.Response(200, json={"items": []}))
    with pytest.raises(TransientApiError, match="items"):
        client.request_upload_url("mp4")


# -- parsing ---------------------------------------------------------------------------------


def test_get_project_parses_all_sixteen_keys(harness: Harness) -> None:
    error = {"code": "invalid_video_file", "message": "bad"}
    client = harness.client(
        lambda request: httpx.Response(200, json=project_body(status="error", error=error))
    )
    project = client.get_project("clx7uu86w0a5qp55yxz315r6r")
    assert project.status == "error" and project.is_terminal
    assert project.error is not None and project.error.code == "invalid_video_file"
    assert project.start_seconds == 0.0 and isinstance(project.start_seconds, float)
    assert project.fps == 12.5 and project.width == 1024 and project.enabled is True
    assert project.download is not None and project.download.url == DOWNLOAD_URL
    assert [d.url for d in project.downloads] == [DOWNLOAD_URL]
    assert harness.requests[0].url.path == "/prefix/v1/video-projects/clx7uu86w0a5qp55yxz315r6r"


@pytest.mark.parametrize("missing", PROJECT_KEYS)
def test_project_body_missing_any_key_is_transient(harness: Harness, missing: str) -> None:
    body = project_body()
    del body[missing]
    client = harness.client(lambda request: httpx.Response(200, json=body))
    with pytest.raises(TransientApiError, match=missing):
        client.get_project("p1")


def test_project_id_cannot_escape_the_route(harness: Harness) -> None:
    client = harness.client(ok("get"))
    client.get_project("../account")
    assert harness.requests[0].url.raw_path == b"/prefix/v1/video-projects/..%2Faccount"


def test_account_and_upload_url_parse(harness: Harness) -> None:
    client = harness.client(
        lambda request: ok_response(
            "account" if request.url.path.endswith("account") else "upload_urls", request
        )
    )
    account = client.get_account()
    assert (account.id, account.credits, account.tier) == ("acct", 1000, "creator")
    url = client.request_upload_url(".MOV")
    assert url.file_path == "api-assets/acct/abc.mp4" and url.upload_url == UPLOAD_URL
    assert json.loads(harness.requests[1].content) == {
        "items": [{"extension": "mov", "type": "video"}]
    }


# -- headers, prefix, token ------------------------------------------------------------------


def test_prefix_kept_bearer_only_on_v1_and_user_agent_everywhere(harness: Harness) -> None:
    def handler(request: httpx.Request) -> httpx.Response:
        path = request.url.path
        if request.url.host == "store.test":
            return ok_response("upload", request)
        if request.url.host == "cdn.test":
            return ok_response("download", request)
        if path.endswith("upload-urls"):
            return ok_response("upload_urls", request)
        if path.endswith("video-to-video"):
            return ok_response("create", request)
        if path.endswith("account"):
            return ok_response("account", request)
        return ok_response("delete" if request.method == "DELETE" else "get", request)

    client = harness.client(handler, base_url=BASE_URL + "/")
    for operation in ALL_OPERATIONS:
        harness.invoke(client, operation)
    v1 = [r for r in harness.requests if r.url.host == "api.test"]
    presigned = [r for r in harness.requests if r.url.host != "api.test"]
    assert [(r.method, r.url.path) for r in v1] == [
        ("POST", "/prefix/v1/files/upload-urls"),
        ("POST", "/prefix/v1/video-to-video"),
        ("GET", "/prefix/v1/video-projects/clx7uu86w0a5qp55yxz315r6r"),
        ("DELETE", "/prefix/v1/video-projects/clx7uu86w0a5qp55yxz315r6r"),
        ("GET", "/prefix/v1/account"),
    ]
    assert all(r.headers["Authorization"] == f"Bearer {TOKEN}" for r in v1)
    assert len(presigned) == 2
    assert all("Authorization" not in r.headers for r in presigned)
    assert all(r.headers["User-Agent"] == USER_AGENT for r in harness.requests)
    assert [r.operation for r in harness.records] == list(ALL_OPERATIONS)


def test_a_client_user_agent_starting_with_ours_is_kept(harness: Harness) -> None:
    client = harness.client(ok("account"), headers={"User-Agent": "mh-watchd/9.9 (nas)"})
    client.get_account()
    assert harness.requests[0].headers["User-Agent"] == "mh-watchd/9.9 (nas)"


def test_build_http_client_sets_user_agent_and_no_base_url() -> None:
    with build_http_client() as http:
        assert http.headers["User-Agent"] == USER_AGENT
        assert str(http.base_url) == ""
        assert http.follow_redirects is False


def test_token_never_appears_in_client_repr_or_any_error(harness: Harness) -> None:
    echo = f"invalid key {TOKEN}"
    handlers: list[Handler] = [
        answer(401, echo),
        answer(402, echo),
        answer(403, echo),
        answer(404, echo),
        answer(500, echo),
        answer(503, echo),
        raises(httpx.ConnectError),
        raises(httpx.ReadTimeout),
        lambda request: httpx.Response(200, content=TOKEN.encode()),
    ]
    errors: list[ApiError] = []
    for handler in handlers:
        client = harness.client(handler)
        for operation in ALL_OPERATIONS:
            if operation not in JSON_OPERATIONS and handler is handlers[-1]:
                continue  # only JSON routes parse a 2xx body
            with pytest.raises(ApiError) as caught:
                harness.invoke(client, operation)
            errors.append(caught.value)
    assert len(errors) == len(handlers) * len(ALL_OPERATIONS) - 3
    for err in errors:
        for text in (str(err), repr(err), err.service_message or "", str(err.args)):
            assert TOKEN not in text
    assert any("[redacted]" in str(err) for err in errors)
    client = harness.client(ok("get"))
    assert TOKEN not in repr(client) and TOKEN not in str(client)
    assert repr(client) == f"MagicHourClient(base_url={BASE_URL!r})"


def test_presigned_query_string_stays_out_of_error_text(harness: Harness) -> None:
    client = harness.client(answer(403, "Request has expired"))
    with pytest.raises(UrlExpiredError) as caught:
        client.upload(UPLOAD_URL, harness.source())
    assert "X-Amz-Signature" not in str(caught.value)
    assert "store.test/bucket/abc.mp4" in str(caught.value)


# -- upload ----------------------------------------------------------------------------------


def test_upload_streams_chunks_with_content_length_and_no_auth(harness: Harness) -> None:
    data = os.urandom(2 * CHUNK_BYTES + 12345)
    seen: dict[str, object] = {}

    def handler(request: httpx.Request) -> httpx.Response:
        assert isinstance(request.stream, httpx.SyncByteStream)
        chunks = list(request.stream)
        seen["chunks"] = [len(c) for c in chunks]
        seen["body"] = b"".join(chunks)
        seen["headers"] = request.headers
        seen["timeout"] = request.extensions["timeout"]
        return httpx.Response(200)

    client = harness.client(handler, request_timeout_seconds=7.0, streaming=True)
    progress: list[tuple[int, int]] = []
    result = client.upload(
        UPLOAD_URL, harness.source(data), progress=lambda d, t: progress.append((d, t))
    )
    assert result == UploadResult(size=len(data), sha256=hashlib.sha256(data).hexdigest())
    assert seen["body"] == data
    assert seen["chunks"] == [CHUNK_BYTES, CHUNK_BYTES, 12345]
    headers = seen["headers"]
    assert isinstance(headers, httpx.Headers)
    assert headers["Content-Length"] == str(len(data))
    assert "Transfer-Encoding" not in headers
    assert "Authorization" not in headers
    assert "Content-Type" not in headers
    assert progress == [(CHUNK_BYTES, len(data)), (2 * CHUNK_BYTES, len(data)), (len(data),) * 2]
    timeout = seen["timeout"]
    assert isinstance(timeout, dict)
    assert timeout["connect"] == 7.0
    assert min(timeout["read"], timeout["write"], timeout["pool"]) >= 300.0


def test_upload_of_an_empty_file_sends_zero_length(harness: Harness) -> None:
    seen: list[httpx.Request] = []

    def handler(request: httpx.Request) -> httpx.Response:
        request.read()
        seen.append(request)
        return httpx.Response(200)

    client = harness.client(handler)
    result = client.upload(UPLOAD_URL, harness.source(b""))
    assert result == UploadResult(0, hashlib.sha256(b"").hexdigest())
    assert seen[0].headers["Content-Length"] == "0" and seen[0].content == b""


@pytest.mark.parametrize("change", ["grow", "shrink"])
def test_file_changing_mid_upload_raises_source_changed_before_the_body_completes(
    harness: Harness, change: str
) -> None:
    data = os.urandom(2 * CHUNK_BYTES + 100)
    path = harness.source(data)
    received: list[int] = []

    def handler(request: httpx.Request) -> httpx.Response:
        assert isinstance(request.stream, httpx.SyncByteStream)
        for chunk in request.stream:
            received.append(len(chunk))
            if len(received) == 1:
                if change == "grow":
                    with path.open("ab") as f:
                        f.write(b"appended by a slow copier")
                else:
                    os.truncate(path, CHUNK_BYTES + 10)
        return httpx.Response(200)

    client = harness.client(handler, streaming=True)
    with pytest.raises(SourceChangedError, match=r"src\.mp4"):
        client.upload(UPLOAD_URL, path)
    # The server never saw a complete body, and a changed file is not retried here.
    assert sum(received) < len(data)
    assert len(harness.requests) == 1


def test_file_changed_between_attempts_is_not_resent(harness: Harness) -> None:
    path = harness.source(b"a" * 5000)

    def first(request: httpx.Request) -> httpx.Response:
        request.read()
        with path.open("ab") as f:
            f.write(b"b")
        return httpx.Response(503)

    client = harness.client(sequence(first, ok("upload")))
    with pytest.raises(SourceChangedError):
        client.upload(UPLOAD_URL, path)
    assert len(harness.requests) == 1


def test_upload_retry_restarts_the_stream_from_byte_zero(harness: Harness) -> None:
    data = os.urandom(CHUNK_BYTES + 999)
    bodies: list[bytes] = []

    def handler(request: httpx.Request) -> httpx.Response:
        bodies.append(request.read())
        return httpx.Response(500 if len(bodies) == 1 else 200)

    client = harness.client(handler)
    progress: list[int] = []
    result = client.upload(
        UPLOAD_URL, harness.source(data), progress=lambda d, t: progress.append(d)
    )
    assert bodies == [data, data]
    assert result.sha256 == hashlib.sha256(data).hexdigest()
    assert progress == [CHUNK_BYTES, len(data), CHUNK_BYTES, len(data)]
    assert [(r.status, r.retried) for r in harness.records] == [(500, False), (200, True)]


def test_upload_answered_before_the_whole_body_is_transient(harness: Harness) -> None:
    # The handler never reads the body, as a broken store might answer early.
    client = harness.client(lambda request: httpx.Response(200), streaming=True)
    with pytest.raises(TransientApiError, match="answered after 0 of"):
        client.upload(UPLOAD_URL, harness.source())


def test_upload_streams_an_already_open_file_and_leaves_it_open(harness: Harness) -> None:
    data = os.urandom(2 * CHUNK_BYTES + 3)
    path = harness.source(data)
    decoy = harness.source(b"private", name="private.mp4")
    seen: dict[str, object] = {}

    def handler(request: httpx.Request) -> httpx.Response:
        assert isinstance(request.stream, httpx.SyncByteStream)
        chunks = list(request.stream)
        seen["chunks"] = [len(c) for c in chunks]
        seen["body"] = b"".join(chunks)
        seen["length"] = request.headers["Content-Length"]
        return httpx.Response(200)

    client = harness.client(handler, streaming=True)
    with path.open("rb") as opened:
        opened.read(10)  # wherever it stands, the upload starts at byte 0
        # The name now points elsewhere: only the open file is read.
        path.unlink()
        path.symlink_to(decoy)
        result = client.upload(UPLOAD_URL, opened, name="src.mp4")
        assert not opened.closed
    assert result == UploadResult(size=len(data), sha256=hashlib.sha256(data).hexdigest())
    assert seen["body"] == data
    assert seen["chunks"] == [CHUNK_BYTES, CHUNK_BYTES, 3]
    assert seen["length"] == str(len(data))


def test_upload_of_an_open_file_changing_mid_upload_names_it(harness: Harness) -> None:
    data = os.urandom(2 * CHUNK_BYTES + 100)
    path = harness.source(data)

    def handler(request: httpx.Request) -> httpx.Response:
        assert isinstance(request.stream, httpx.SyncByteStream)
        for _ in request.stream:
            os.truncate(path, CHUNK_BYTES + 10)
        return httpx.Response(200)

    client = harness.client(handler, streaming=True)
    with path.open("rb") as opened, pytest.raises(SourceChangedError, match=r"beach\.mp4"):
        client.upload(UPLOAD_URL, opened, name="trip/beach.mp4")


# -- download --------------------------------------------------------------------------------


def test_download_writes_exact_bytes_over_an_older_file(harness: Harness) -> None:
    data = os.urandom(2 * CHUNK_BYTES + 7)
    dest = harness.tmp_path / "out.mp4.part"
    dest.write_bytes(b"stale" * 1_000_000)  # longer than the new body: must be truncated

    client = harness.client(lambda request: streamed(200, data))
    progress: list[tuple[int, int]] = []
    result = client.download(DOWNLOAD_URL, dest, progress=lambda d, t: progress.append((d, t)))
    assert dest.read_bytes() == data
    assert result == DownloadResult(size=len(data), sha256=hashlib.sha256(data).hexdigest())
    assert progress[-1] == (len(data), len(data))
    request = harness.requests[0]
    assert "Authorization" not in request.headers
    assert request.headers["Accept-Encoding"] == "identity"
    assert request.headers["User-Agent"] == USER_AGENT


def test_short_download_is_transient_and_retried_until_whole(harness: Harness) -> None:
    data = os.urandom(10_000)

    def truncated(request: httpx.Request) -> httpx.Response:
        response = streamed(200, data[:4000])
        response.headers["Content-Length"] = str(len(data))
        return response

    client = harness.client(truncated)
    with pytest.raises(TransientApiError, match="got 4000 of 10000 bytes"):
        client.download(DOWNLOAD_URL, harness.tmp_path / "a.mp4")
    assert len(harness.requests) == backoff.REQUEST_ATTEMPTS

    client = harness.client(sequence(truncated, lambda request: streamed(200, data)))
    result = client.download(DOWNLOAD_URL, harness.tmp_path / "b.mp4")
    assert (harness.tmp_path / "b.mp4").read_bytes() == data
    assert result.size == len(data)


def test_expired_download_url_keeps_the_store_message(harness: Harness) -> None:
    client = harness.client(answer(403, "Request has expired"))
    with pytest.raises(UrlExpiredError) as caught:
        client.download(DOWNLOAD_URL, harness.tmp_path / "x.mp4")
    assert caught.value.service_message == "Request has expired"
    assert len(harness.requests) == 1


# -- one real socket -------------------------------------------------------------------------


class _StoreHandler(BaseHTTPRequestHandler):
    """A tiny object store: PUT needs Content-Length (chunked gets 501), GET returns it."""

    store: dict[str, bytes]
    seen: list[dict[str, str]]

    def do_PUT(self) -> None:
        self.seen.append(dict(self.headers))
        if "chunked" in self.headers.get("Transfer-Encoding", "").lower():
            self.send_error(501)
            return
        length = int(self.headers["Content-Length"])
        data = bytearray()
        while len(data) < length:
            piece = self.rfile.read(min(65536, length - len(data)))
            if not piece:
                break
            data += piece
        self.store[self.path.split("?")[0]] = bytes(data)
        self.send_response(200)
        self.send_header("Content-Length", "0")
        self.end_headers()

    def do_GET(self) -> None:
        self.seen.append(dict(self.headers))
        data = self.store[self.path.split("?")[0]]
        self.send_response(200)
        self.send_header("Content-Length", str(len(data)))
        self.end_headers()
        self.wfile.write(data)

    def log_message(self, format: str, *args: object) -> None:
        pass


def test_upload_and_download_stream_over_a_real_socket(tmp_path: Path) -> None:
    class Handler(_StoreHandler):
        store: dict[str, bytes] = {}  # noqa: RUF012 - one server, one test
        seen: list[dict[str, str]] = []  # noqa: RUF012

    server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    thread = threading.Thread(target=server.serve_forever, name="store-server")
    thread.start()
    try:
        host, port = server.server_address[:2]
        base = f"http://{host!s}:{port}"
        data = os.urandom(3 * CHUNK_BYTES + 4321)
        source = tmp_path / "big.mp4"
        source.write_bytes(data)
        with build_http_client() as http:
            client = MagicHourClient(http, base_url=base, token=TOKEN, sleep=lambda s: None)
            uploaded = client.upload(f"{base}/bucket/big.mp4?sig=1", source)
            downloaded = client.download(f"{base}/bucket/big.mp4", tmp_path / "back.mp4")
    finally:
        server.shutdown()
        server.server_close()
        thread.join(timeout=10)
    digest = hashlib.sha256(data).hexdigest()
    assert Handler.store["/bucket/big.mp4"] == data
    assert uploaded == UploadResult(len(data), digest)
    assert downloaded == DownloadResult(len(data), digest)
    assert (tmp_path / "back.mp4").read_bytes() == data
    put_headers = {k.lower(): v for k, v in Handler.seen[0].items()}
    assert put_headers["content-length"] == str(len(data))
    assert "transfer-encoding" not in put_headers and "authorization" not in put_headers
    assert put_headers["user-agent"] == USER_AGENT
