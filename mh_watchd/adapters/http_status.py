"""GET /healthz and GET /metrics on a small stdlib HTTP server in its own thread, and every
other path handed to an optional `web` handler (the web page and /api/, `mh_watchd.web`).

The daemon hands in a `health` callable (answered fresh on every request) and its `Metrics`.
/healthz and /metrics never ask for a token; the web handler does its own checks. A listen
address that cannot be bound is not fatal: `start()` returns False, `error` says why, and the
daemon runs on without the endpoint.
"""

from __future__ import annotations

import json
import socket
import socketserver
import threading
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any

from prometheus_client import CONTENT_TYPE_LATEST, generate_latest

from mh_watchd.adapters.metrics import Metrics


@dataclass(frozen=True)
class HealthReport:
    """What /healthz says: unhealthy `reasons` make it 503; `outages` are listed, never fatal."""

    healthy: bool
    reasons: tuple[str, ...] = ()
    outages: tuple[str, ...] = ()
    details: Mapping[str, Any] = field(default_factory=dict)


@dataclass(frozen=True)
class WebRequest:
    """One request for the web handler: header names lowercased, the body read in full."""

    method: str
    path: str
    query: str
    headers: Mapping[str, str]
    body: bytes
    client_ip: str


@dataclass(frozen=True)
class WebResponse:
    """The web handler's answer; `headers` are sent as they are (Set-Cookie, Location...)."""

    status: int
    content_type: str
    body: bytes
    headers: tuple[tuple[str, str], ...] = ()


WebHandler = Callable[[WebRequest], WebResponse]

# Bodies above this are refused unread (the API's requests are a few hundred bytes).
MAX_BODY_BYTES = 64 * 1024


def parse_listen(listen: str) -> tuple[str, int]:
    """Split "host:port" ("[::1]:9309", ":9309" = every interface) into (host, port).

    Raises ValueError when it is not host:port with a port in 0..65535.
    """
    host, sep, port_text = listen.strip().rpartition(":")
    if not sep or not port_text.isdigit():
        raise ValueError(f"http_listen {listen!r} is not host:port")
    port = int(port_text)
    if port > 65535:
        raise ValueError(f"http_listen {listen!r}: port {port} is out of range")
    if host.startswith("[") and host.endswith("]"):
        host = host[1:-1]
    elif ":" in host:
        raise ValueError(f"http_listen {listen!r}: write an IPv6 address as [addr]:port")
    return host or "0.0.0.0", port


class _Server(ThreadingHTTPServer):
    daemon_threads = True
    allow_reuse_address = True

    def __init__(self, address: tuple[str, int], owner: StatusServer) -> None:
        self.owner = owner
        if ":" in address[0]:
            self.address_family = socket.AF_INET6
        super().__init__(address, _Handler)

    def server_bind(self) -> None:
        # HTTPServer.server_bind calls socket.getfqdn(), a reverse DNS lookup that can hang for
        # seconds on a box without working DNS; the name is only used in CGI environments.
        socketserver.TCPServer.server_bind(self)
        host, port = self.server_address[:2]
        self.server_name = str(host)
        self.server_port = int(port)


class _Handler(BaseHTTPRequestHandler):
    server: _Server
    server_version = "mh-watchd"
    sys_version = ""

    def do_GET(self) -> None:
        path = self.path.split("?", 1)[0]
        owner = self.server.owner
        if path == "/healthz" and owner.health is not None:
            self._health()
        elif path == "/metrics" and owner.metrics is not None:
            body = generate_latest(owner.metrics.registry)
            self._reply(200, CONTENT_TYPE_LATEST, body)
        else:
            self._web("GET")

    def do_POST(self) -> None:
        self._web("POST")

    def do_HEAD(self) -> None:
        self._reply(405, "application/json", b'{"status":"method not allowed"}\n')

    def _web(self, method: str) -> None:
        web = self.server.owner.web
        if web is None:
            self._reply(404, "application/json", b'{"status":"not found"}\n')
            return
        length_text = self.headers.get("Content-Length", "0") or "0"
        length = int(length_text) if length_text.isdigit() else -1
        if length < 0 or length > MAX_BODY_BYTES:
            self.close_connection = True
            self._reply(413, "text/plain; charset=utf-8", b"request body too large\n")
            return
        path, _, query = self.path.partition("?")
        request = WebRequest(
            method=method,
            path=path,
            query=query,
            headers={k.lower(): v for k, v in self.headers.items()},
            body=self.rfile.read(length) if length else b"",
            client_ip=str(self.client_address[0]),
        )
        try:
            response = web(request)
        except Exception as exc:  # one bad request must never take the server thread down
            body = f"internal error: {type(exc).__name__}\n".encode()
            self._reply(500, "text/plain; charset=utf-8", body)
            return
        self._reply(response.status, response.content_type, response.body, response.headers)

    def _health(self) -> None:
        assert self.server.owner.health is not None
        try:
            report = self.server.owner.health()
        except Exception as exc:  # a broken probe is itself a reason to be unhealthy
            report = HealthReport(healthy=False, reasons=(f"health check raised {exc!r}",))
        body: dict[str, Any] = dict(report.details)
        body["status"] = "ok" if report.healthy else "unhealthy"
        body["outages"] = list(report.outages)
        if not report.healthy:
            body["reasons"] = list(report.reasons)
        data = (json.dumps(body, default=str, sort_keys=True) + "\n").encode("utf-8")
        self._reply(200 if report.healthy else 503, "application/json", data)

    def _reply(
        self,
        status: int,
        content_type: str,
        body: bytes,
        headers: tuple[tuple[str, str], ...] = (),
    ) -> None:
        self.send_response(status)
        self.send_header("Content-Type", content_type)
        self.send_header("Content-Length", str(len(body)))
        self.send_header("Cache-Control", "no-store")
        for name, value in headers:
            self.send_header(name, value)
        self.end_headers()
        self.wfile.write(body)

    def log_message(self, format: str, *args: Any) -> None:
        # Scrapes every few seconds would flood stderr; the daemon logs what matters itself.
        return


class StatusServer:
    """Serves /healthz, /metrics and the `web` handler on `listen` ("host:port") from a
    background thread. Without `health` or `metrics` that path goes to `web` (or is 404)."""

    def __init__(
        self,
        listen: str,
        *,
        health: Callable[[], HealthReport] | None,
        metrics: Metrics | None,
        web: WebHandler | None = None,
    ) -> None:
        self.listen = listen
        self.health = health
        self.metrics = metrics
        self.web = web
        self.error: str | None = None
        self._server: _Server | None = None
        self._thread: threading.Thread | None = None

    def start(self) -> bool:
        """Bind and start serving; False (with `error` set, nothing raised) if it cannot bind."""
        if self._server is not None:
            return True
        try:
            address = parse_listen(self.listen)
            server = _Server(address, self)
        except (OSError, ValueError) as exc:
            self.error = str(exc)
            return False
        self.error = None
        self._server = server
        self._thread = threading.Thread(
            target=server.serve_forever,
            kwargs={"poll_interval": 0.2},
            name="mh-watchd-http-status",
        )
        self._thread.start()
        return True

    def stop(self) -> None:
        """Stop serving, join the thread and close the socket; safe to call twice."""
        server, thread = self._server, self._thread
        self._server = self._thread = None
        if server is None:
            return
        server.shutdown()
        if thread is not None:
            thread.join()
        server.server_close()

    @property
    def address(self) -> tuple[str, int]:
        """The bound (host, port), the real port when 0 was asked; raises RuntimeError if down."""
        if self._server is None:
            raise RuntimeError("the status server is not running")
        host, port = self._server.server_address[:2]
        return str(host), int(port)
