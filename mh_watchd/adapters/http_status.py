"""GET /healthz and GET /metrics on a small stdlib HTTP server in its own thread.

The daemon hands in a `health` callable (answered fresh on every request) and its `Metrics`.
A listen address that cannot be bound is not fatal: `start()` returns False, `error` says why,
and the daemon runs on without the endpoint.
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
        if path == "/healthz":
            self._health()
        elif path == "/metrics":
            body = generate_latest(self.server.owner.metrics.registry)
            self._reply(200, CONTENT_TYPE_LATEST, body)
        else:
            self._reply(404, "application/json", b'{"status":"not found"}\n')

    def _health(self) -> None:
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

    def _reply(self, status: int, content_type: str, body: bytes) -> None:
        self.send_response(status)
        self.send_header("Content-Type", content_type)
        self.send_header("Content-Length", str(len(body)))
        self.send_header("Cache-Control", "no-store")
        self.end_headers()
        self.wfile.write(body)

    def log_message(self, format: str, *args: Any) -> None:
        # Scrapes every few seconds would flood stderr; the daemon logs what matters itself.
        return


class StatusServer:
    """Serves /healthz and /metrics on `listen` ("host:port") from a background thread."""

    def __init__(
        self, listen: str, *, health: Callable[[], HealthReport], metrics: Metrics
    ) -> None:
        self.listen = listen
        self.health = health
        self.metrics = metrics
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
