"""http_status: a real server on a loopback port answers /healthz and /metrics, and hands
every other request to the web handler."""

from __future__ import annotations

import socket
from collections.abc import Iterator

import httpx
import pytest

from mh_watchd.adapters.http_status import (
    MAX_BODY_BYTES,
    HealthReport,
    StatusServer,
    WebRequest,
    WebResponse,
    parse_listen,
)
from mh_watchd.adapters.metrics import Metrics


class _Health:
    def __init__(self) -> None:
        self.report = HealthReport(healthy=True)
        self.calls = 0

    def __call__(self) -> HealthReport:
        self.calls += 1
        return self.report


@pytest.fixture
def health() -> _Health:
    return _Health()


@pytest.fixture
def metrics() -> Metrics:
    return Metrics()


@pytest.fixture
def server(health: _Health, metrics: Metrics) -> Iterator[StatusServer]:
    srv = StatusServer("127.0.0.1:0", health=health, metrics=metrics)
    assert srv.start() is True, srv.error
    try:
        yield srv
    finally:
        srv.stop()


@pytest.fixture
def client(server: StatusServer) -> Iterator[httpx.Client]:
    host, port = server.address
    with httpx.Client(base_url=f"http://{host}:{port}", timeout=5.0) as http:
        yield http


def test_healthz_is_200_with_outages_listed_but_not_unhealthy(
    client: httpx.Client, health: _Health
) -> None:
    health.report = HealthReport(
        healthy=True, outages=("nas",), details={"last_tick_seconds_ago": 1.5, "folders": 2}
    )
    response = client.get("/healthz")
    assert response.status_code == 200
    assert response.headers["content-type"] == "application/json"
    assert response.json() == {
        "status": "ok",
        "outages": ["nas"],
        "last_tick_seconds_ago": 1.5,
        "folders": 2,
    }
    assert health.calls == 1  # asked fresh on each request


def test_healthz_is_503_with_reasons_when_unhealthy(client: httpx.Client, health: _Health) -> None:
    health.report = HealthReport(
        healthy=False,
        reasons=("main loop has not ticked for 95 s", "journal is not writable"),
        outages=(),
        # a detail cannot override the status the report decides
        details={"status": "ok"},
    )
    response = client.get("/healthz")
    assert response.status_code == 503
    body = response.json()
    assert body["status"] == "unhealthy"
    assert body["reasons"] == ["main loop has not ticked for 95 s", "journal is not writable"]
    assert body["outages"] == []


def test_a_health_callable_that_raises_answers_503(
    client: httpx.Client, server: StatusServer
) -> None:
    def broken() -> HealthReport:
        raise RuntimeError("journal closed")

    server.health = broken
    response = client.get("/healthz")
    assert response.status_code == 503
    assert "journal closed" in response.json()["reasons"][0]


def test_metrics_exposes_every_series_with_labels(client: httpx.Client, metrics: Metrics) -> None:
    metrics.set_jobs({("anime", "rendering"): 2, ("anime", "done"): 5, ("noir", "queued"): 1})
    metrics.credits_charged("anime", 120)
    metrics.api_request("create", 200, 0.3, retried=False)
    metrics.api_request("create", 503, 0.1, retried=True)
    metrics.api_request("get", None, 5.0, retried=True)
    metrics.scanned("anime", 1_700_000_000.0)
    metrics.bytes_uploaded("anime", 1000)
    metrics.bytes_downloaded("anime", 2500)
    metrics.outage("noir", True)

    response = client.get("/metrics")
    assert response.status_code == 200
    assert response.headers["content-type"].startswith("text/plain")
    text = response.text
    expected = [
        'mh_watchd_jobs{folder="anime",state="rendering"} 2.0',
        'mh_watchd_jobs{folder="anime",state="done"} 5.0',
        'mh_watchd_jobs{folder="anime",state="queued"} 0.0',  # absent states are 0
        'mh_watchd_jobs{folder="noir",state="queued"} 1.0',
        'mh_watchd_credits_charged_total{folder="anime"} 120.0',
        'mh_watchd_api_requests_total{endpoint="create",status="200"} 1.0',
        'mh_watchd_api_requests_total{endpoint="create",status="503"} 1.0',
        'mh_watchd_api_requests_total{endpoint="get",status="none"} 1.0',
        'mh_watchd_api_request_seconds_count{endpoint="create"} 2.0',
        'mh_watchd_api_request_seconds_bucket{endpoint="get",le="5.0"} 1.0',
        'mh_watchd_api_request_seconds_bucket{endpoint="get",le="2.5"} 0.0',
        'mh_watchd_api_retries_total{endpoint="create"} 1.0',
        'mh_watchd_api_retries_total{endpoint="get"} 1.0',
        'mh_watchd_last_scan_timestamp_seconds{folder="anime"} 1.7e+09',
        'mh_watchd_bytes_uploaded_total{folder="anime"} 1000.0',
        'mh_watchd_bytes_downloaded_total{folder="anime"} 2500.0',
        'mh_watchd_folder_outage{folder="noir"} 1.0',
    ]
    missing = [line for line in expected if line not in text.splitlines()]
    assert not missing, missing


def test_set_jobs_zeroes_states_and_folders_that_are_no_longer_counted(
    client: httpx.Client, metrics: Metrics
) -> None:
    metrics.set_jobs({("anime", "rendering"): 2})
    metrics.set_jobs({("noir", "done"): 1})
    lines = client.get("/metrics").text.splitlines()
    assert 'mh_watchd_jobs{folder="anime",state="rendering"} 0.0' in lines
    assert 'mh_watchd_jobs{folder="noir",state="done"} 1.0' in lines


def test_other_paths_are_404(client: httpx.Client) -> None:
    assert client.get("/").status_code == 404
    assert client.get("/healthz/extra").status_code == 404
    assert client.get("/metrics?x=1").status_code == 200


def test_start_on_a_port_already_taken_returns_false(health: _Health, metrics: Metrics) -> None:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        port = taken.getsockname()[1]
        srv = StatusServer(f"127.0.0.1:{port}", health=health, metrics=metrics)
        assert srv.start() is False
        assert srv.error is not None and "in use" in srv.error
        srv.stop()  # harmless when it never started


def test_a_malformed_listen_address_returns_false(health: _Health, metrics: Metrics) -> None:
    srv = StatusServer("localhost", health=health, metrics=metrics)
    assert srv.start() is False
    assert srv.error is not None and "host:port" in srv.error


def test_stop_closes_the_port_and_can_be_called_twice(server: StatusServer) -> None:
    host, port = server.address
    server.stop()
    server.stop()
    with pytest.raises(httpx.ConnectError), httpx.Client(timeout=2.0) as http:
        http.get(f"http://{host}:{port}/healthz")


@pytest.mark.parametrize(
    ("listen", "expected"),
    [
        ("127.0.0.1:9309", ("127.0.0.1", 9309)),
        ("[::1]:9309", ("::1", 9309)),
        (":9309", ("0.0.0.0", 9309)),
        ("localhost:0", ("localhost", 0)),
    ],
)
def test_parse_listen_accepts_host_port_forms(listen: str, expected: tuple[str, int]) -> None:
    assert parse_listen(listen) == expected


@pytest.mark.parametrize("listen", ["9309", "host:", "host:99999", "::1:9309", "a:b"])
def test_parse_listen_rejects_malformed_addresses(listen: str) -> None:
    with pytest.raises(ValueError):
        parse_listen(listen)


class _Web:
    """A web handler that records what it was handed and answers a fixed response."""

    def __init__(self) -> None:
        self.requests: list[WebRequest] = []

    def __call__(self, request: WebRequest) -> WebResponse:
        self.requests.append(request)
        if request.path == "/boom":
            raise RuntimeError("a bug in a page")
        return WebResponse(201, "text/plain", b"page", (("X-Test", "yes"),))


@pytest.fixture
def web_client(health: _Health, metrics: Metrics) -> Iterator[tuple[httpx.Client, _Web]]:
    web = _Web()
    srv = StatusServer("127.0.0.1:0", health=health, metrics=metrics, web=web)
    assert srv.start() is True, srv.error
    host, port = srv.address
    try:
        with httpx.Client(base_url=f"http://{host}:{port}", timeout=5.0) as http:
            yield http, web
    finally:
        srv.stop()


def test_other_paths_and_posts_go_to_the_web_handler_healthz_and_metrics_stay_open(
    web_client: tuple[httpx.Client, _Web],
) -> None:
    http, web = web_client
    assert http.get("/healthz").status_code == 200  # never handed to the web handler
    assert http.get("/metrics").status_code == 200
    assert web.requests == []
    response = http.post("/api/retry?x=1", content=b'{"failed": true}', headers={"X-A": "b"})
    assert (response.status_code, response.text, response.headers["x-test"]) == (201, "page", "yes")
    request = web.requests[0]
    assert (request.method, request.path, request.query) == ("POST", "/api/retry", "x=1")
    assert request.body == b'{"failed": true}'
    assert request.headers["x-a"] == "b" and request.client_ip == "127.0.0.1"
    assert http.get("/").status_code == 201


def test_a_web_handler_that_raises_answers_500_and_the_server_runs_on(
    web_client: tuple[httpx.Client, _Web],
) -> None:
    http, _ = web_client
    response = http.get("/boom")
    assert response.status_code == 500 and "RuntimeError" in response.text
    assert "a bug in a page" not in response.text  # no detail that could carry a secret
    assert http.get("/healthz").status_code == 200


def test_a_body_over_the_limit_is_refused_unread(web_client: tuple[httpx.Client, _Web]) -> None:
    http, web = web_client
    response = http.post("/api/retry", content=b"x" * (MAX_BODY_BYTES + 1))
    assert response.status_code == 413
    assert web.requests == []
