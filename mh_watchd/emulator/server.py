"""The emulator's HTTP side: a threaded loopback server, its routes and the public server object.

Routes (see magic-hour-api.md): `POST /v1/files/upload-urls`, `PUT /_uploads/<token>`,
`POST /v1/video-to-video`, `GET|DELETE /v1/video-projects/<id>`, `GET /v1/account`,
`GET /_downloads/<token>/<name>.mp4`, and the control routes `GET /_emulator/state`,
`GET /_emulator/requests` (the request log: when each answered request came, see `store`),
`POST /_emulator/faults`, `POST /_emulator/credits`, `POST /_emulator/projects/<id>`.

Counts in the state document: `creates` counts projects created (an `after_commit` create
included) and `uploads` uploads stored (a refused, faulted or cut-off PUT is not one);
`create_requests` and `upload_requests` count every request to those routes, and every other
count is of requests that reached its route, whatever their answer (faulted, refused or
successful).
"""

from __future__ import annotations

import contextlib
import hmac
import json
import os
import re
import secrets
import shutil
import socket
import struct
import tempfile
import threading
from http import HTTPStatus
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

from mh_watchd.core.api import TIER_MAX_EDGE

from . import protocol
from .faults import ON_ARRIVAL, ON_BODY, ON_COMMIT, FaultPlan, FaultRule, parse_rules
from .lifecycle import Lifecycle
from .options import EmulatorOptions
from .protocol import Problem
from .store import Store

CHUNK_BYTES = 1024 * 1024
MAX_JSON_BYTES = 1024 * 1024
# Upload size caps by plan (magic-hour-api.md section 2).
UPLOAD_CAP_BYTES: dict[str, int] = {
    "free": 200 * 1000**2,
    "creator": 2 * 1000**3,
    "pro": 5 * 1000**3,
}
_PROJECT_RE = re.compile(r"^/v1/video-projects/([^/]+)$")
_UPLOAD_RE = re.compile(r"^/_uploads/([A-Za-z0-9_-]+)$")
_DOWNLOAD_RE = re.compile(r"^/_downloads/([A-Za-z0-9_-]+)/[^/]+$")
_FORCE_RE = re.compile(r"^/_emulator/projects/([^/]+)$")


def check_options(options: EmulatorOptions) -> None:
    """Raise ValueError naming the first option with a value the emulator cannot use."""
    if options.tier not in TIER_MAX_EDGE:
        raise ValueError(f"tier {options.tier!r} is not one of: {', '.join(TIER_MAX_EDGE)}")
    if not 0 <= options.port <= 65535:
        raise ValueError(f"port {options.port} is not between 0 and 65535")
    if options.credits < 0:
        raise ValueError(f"credits must be >= 0, got {options.credits}")
    for name in ("queue_seconds", "render_seconds"):
        if getattr(options, name) < 0:
            raise ValueError(f"{name} must be >= 0, got {getattr(options, name)}")
    if options.url_ttl_seconds <= 0:
        raise ValueError(f"url_ttl_seconds must be > 0, got {options.url_ttl_seconds}")
    if options.token is not None and not options.token.strip():
        raise ValueError("token must not be empty")
    parse_rules(options.faults)


class _Dropped(Exception):
    """The handler closed the connection on purpose, without (a complete) answer."""


class _HttpServer(ThreadingHTTPServer):
    daemon_threads = True
    # Bursts of concurrent clients must not be refused at the listen queue.
    request_queue_size = 128

    def __init__(self, address: tuple[str, int], emulator: EmulatorServer) -> None:
        self.emulator = emulator
        self.active: set[socket.socket] = set()
        self.active_lock = threading.Lock()
        if ":" in address[0]:
            self.address_family = socket.AF_INET6
        super().__init__(address, _Handler)

    def handle_error(self, request: Any, client_address: Any) -> None:
        # Quiet by default: a client that vanished mid-request is not news.
        return


class _Handler(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"
    server_version = "mh-emulator/1"
    # An idle keep-alive connection is closed after this long.
    timeout = 60
    # Headers and body go out in two writes; with Nagle on, each answer waits ~40 ms on the
    # client's delayed ACK.
    disable_nagle_algorithm = True
    server: _HttpServer

    # -- plumbing ----------------------------------------------------------------------------

    def setup(self) -> None:
        super().setup()
        with self.server.active_lock:
            self.server.active.add(self.connection)

    def finish(self) -> None:
        with self.server.active_lock:
            self.server.active.discard(self.connection)
        with contextlib.suppress(OSError):
            super().finish()

    def log_message(self, format: str, *args: Any) -> None:
        return

    def send_error(self, code: int, message: str | None = None, explain: str | None = None) -> None:
        # http.server answers malformed requests in HTML (and garbage without a status line,
        # as HTTP/0.9); the service speaks JSON over HTTP/1.1.
        self.close_connection = True
        if getattr(self, "request_version", "HTTP/0.9") == "HTTP/0.9":
            self.request_version = "HTTP/1.1"
        with contextlib.suppress(OSError):
            self._send_json(code, {"message": message or _phrase(code)})

    def do_GET(self) -> None:
        self._dispatch("GET")

    def do_POST(self) -> None:
        self._dispatch("POST")

    def do_PUT(self) -> None:
        self._dispatch("PUT")

    def do_DELETE(self) -> None:
        self._dispatch("DELETE")

    @property
    def emulator(self) -> EmulatorServer:
        return self.server.emulator

    @property
    def store(self) -> Store:
        return self.server.emulator.store

    def _dispatch(self, method: str) -> None:
        path = self.path.partition("?")[0]
        try:
            self._route(method, path)
        except Problem as problem:
            self._send_json(problem.status, {"message": problem.message}, problem.headers)
        except _Dropped:
            self.close_connection = True
        except (ConnectionError, TimeoutError):
            self.close_connection = True
        except Exception as exc:  # the top of a handler thread: answer 500, never die
            self.close_connection = True
            with contextlib.suppress(OSError):
                self._send_json(500, {"message": f"Internal emulator error: {exc!r}"})

    def _route(self, method: str, path: str) -> None:
        routes: dict[tuple[str, str], Any] = {
            ("POST", "/v1/files/upload-urls"): self._upload_urls,
            ("POST", "/v1/video-to-video"): self._create,
            ("GET", "/v1/account"): self._account,
            ("GET", "/_emulator/state"): self._state,
            ("GET", "/_emulator/requests"): self._requests,
            ("POST", "/_emulator/faults"): self._set_faults,
            ("POST", "/_emulator/credits"): self._set_credits,
        }
        action = routes.get((method, path))
        if action is not None:
            action()
            return
        patterns = (
            ("GET", _PROJECT_RE, self._get_project),
            ("DELETE", _PROJECT_RE, self._delete_project),
            ("PUT", _UPLOAD_RE, self._upload),
            ("GET", _DOWNLOAD_RE, self._download),
            ("POST", _FORCE_RE, self._force_end),
        )
        for verb, pattern, handler in patterns:
            match = pattern.match(path)
            if match and verb == method:
                handler(match.group(1))
                return
        self._read_body()
        raise Problem(404, "Not Found")

    def _send_json(self, status: int, doc: object, headers: dict[str, str] | None = None) -> None:
        body = json.dumps(doc).encode("utf-8")
        self.send_response(status)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(body)))
        for key, value in (headers or {}).items():
            self.send_header(key, value)
        if self.close_connection:
            self.send_header("Connection", "close")
        self.end_headers()
        self.wfile.write(body)

    def _drop(self, *, reset: bool) -> None:
        """Close the connection without answering; `reset` sends a TCP RST, not a FIN."""
        self.close_connection = True
        if reset:
            with contextlib.suppress(OSError):
                self.connection.setsockopt(
                    socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0)
                )
        raise _Dropped()

    def _content_length(self) -> int | None:
        raw = self.headers.get("Content-Length")
        if raw is None:
            return None
        try:
            length = int(raw)
        except ValueError:
            length = -1
        if length < 0:
            self.close_connection = True
            raise Problem(400, f"Content-Length {raw!r} is not a valid length")
        return length

    def _is_chunked(self) -> bool:
        return "chunked" in self.headers.get("Transfer-Encoding", "").lower()

    def _read_body(self, limit: int = MAX_JSON_BYTES) -> bytes:
        """Read the whole (small) request body, chunked or not; Problem 413 past `limit`."""
        if self._is_chunked():
            return self._read_chunked(limit)
        length = self._content_length() or 0
        if length > limit:
            self.close_connection = True
            raise Problem(413, f"Request body over {limit} bytes")
        return self.rfile.read(length) if length else b""

    def _read_chunked(self, limit: int | None) -> bytes:
        """Read a chunked body; keep at most `limit` bytes (None: read and discard all)."""
        kept = bytearray()
        while True:
            line = self.rfile.readline(1024)
            try:
                size = int(line.split(b";")[0].strip() or b"x", 16)
            except ValueError as exc:
                self.close_connection = True
                raise Problem(400, "Malformed chunked body") from exc
            if size == 0:
                break
            remaining = size
            while remaining:
                piece = self.rfile.read(min(remaining, CHUNK_BYTES))
                if not piece:
                    raise ConnectionError("client went away mid-body")
                remaining -= len(piece)
                if limit is not None:
                    kept += piece
                    if len(kept) > limit:
                        self.close_connection = True
                        raise Problem(413, f"Request body over {limit} bytes")
            self.rfile.readline(1024)
        # Trailers, up to the blank line.
        while self.rfile.readline(1024) not in (b"\r\n", b"\n", b""):
            pass
        return bytes(kept)

    def _discard_body(self) -> None:
        """Read and drop the body, so an early answer does not leave bytes unread."""
        if self._is_chunked():
            self._read_chunked(None)
            return
        remaining = self._content_length() or 0
        while remaining:
            piece = self.rfile.read(min(remaining, CHUNK_BYTES))
            if not piece:
                raise ConnectionError("client went away mid-body")
            remaining -= len(piece)

    def _fault_on_arrival(self, route: str, *, body_read: bool) -> None:
        """Apply a `status`, `reset` or `slow` rule that fires for `route` now."""
        rule = self.emulator.faults.pick(route, ON_ARRIVAL)
        if rule is None:
            return
        if rule.fault == "slow":
            self.emulator.stopping.wait(rule.delay)
            return
        if rule.fault == "reset":
            if not body_read:
                # Take part of the body first, as a connection lost mid-upload would.
                length = self._content_length() or 0
                self.rfile.read(min(length, 64 * 1024))
            self._drop(reset=True)
        if not body_read:
            self._discard_body()
        raise _status_problem(rule)

    def _authorize(self) -> None:
        header = self.headers.get("Authorization", "")
        scheme, _, key = header.partition(" ")
        key = key.strip()
        if scheme.lower() != "bearer" or not key:
            raise Problem(401, "Unauthorized")
        expected = self.emulator.options.token
        if expected is not None and not hmac.compare_digest(key.encode(), expected.encode()):
            raise Problem(401, "Unauthorized")

    def _api_request(self, route: str | None) -> dict[str, Any]:
        """Read the body, apply arrival faults and auth; return the body as a JSON object."""
        body = self._read_body()
        if route is not None:
            self._fault_on_arrival(route, body_read=True)
        self._authorize()
        return protocol.parse_json_object(body)

    # -- /v1 routes --------------------------------------------------------------------------

    def _upload_urls(self) -> None:
        self.store.count("upload_urls")
        items = protocol.parse_upload_items(self._api_request("upload_urls"))
        base = self.emulator.base_url
        issued = [self.store.issue_upload(item, base) for item in items]
        self.store.log_request("upload_urls")
        self._send_json(200, {"items": issued})

    def _create(self) -> None:
        self.store.count("create_requests")
        spec = protocol.parse_create(self._api_request("create"))
        record = self.store.create(spec)
        self.store.log_request("create", project_id=record.id)
        if self.emulator.faults.pick("create", ON_COMMIT) is not None:
            self._drop(reset=False)
        self._send_json(
            200,
            {
                "id": record.id,
                "credits_charged": record.credits_charged,
                "estimated_frame_cost": record.estimate,
            },
        )

    def _get_project(self, project_id: str) -> None:
        self.store.count("gets")
        self._read_body()
        self._fault_on_arrival("get", body_read=True)
        self._authorize()
        body = self.store.project_body(project_id, self.emulator.base_url)
        self.store.log_request("get", project_id=project_id, status=str(body["status"]))
        self._send_json(200, body)

    def _delete_project(self, project_id: str) -> None:
        self._read_body()
        self._authorize()
        self.store.delete(project_id)
        self.send_response(204)
        self.end_headers()

    def _account(self) -> None:
        self._read_body()
        self._authorize()
        self._send_json(200, self.store.account())

    # -- presigned URLs ----------------------------------------------------------------------

    def _upload(self, token: str) -> None:
        self.store.count("upload_requests")
        self._fault_on_arrival("upload", body_read=False)
        if self._is_chunked() or self.headers.get("Content-Length") is None:
            # Object stores refuse a plain PUT without a length (S3: 501 NotImplemented).
            self._discard_body()
            raise Problem(
                501,
                "A header you provided implies functionality that is not implemented: "
                "Transfer-Encoding (send Content-Length)",
            )
        length = self._content_length() or 0
        try:
            slot = self.store.upload_slot(token)
        except Problem:
            self._discard_body()
            raise
        if length > UPLOAD_CAP_BYTES[self.store.tier]:
            self.close_connection = True
            raise Problem(413, f"Upload over the {self.store.tier} plan's size limit")
        partial = slot.disk_path.with_name(f".{slot.disk_path.name}.{secrets.token_hex(4)}.part")
        try:
            with partial.open("wb") as out:
                remaining = length
                while remaining:
                    piece = self.rfile.read(min(remaining, CHUNK_BYTES))
                    if not piece:
                        raise ConnectionError("client went away mid-upload")
                    out.write(piece)
                    remaining -= len(piece)
            self.store.finish_upload(token, partial)
        finally:
            partial.unlink(missing_ok=True)
        # Only now is it an upload: the bytes are stored and the asset usable.
        self.store.count("uploads")
        self.store.log_request("upload")
        self.send_response(200)
        self.send_header("Content-Length", "0")
        self.send_header("ETag", f'"{secrets.token_hex(16)}"')
        self.end_headers()

    def _download(self, token: str) -> None:
        self.store.count("downloads")
        self._read_body()
        self._fault_on_arrival("download", body_read=True)
        path = self.store.download_file(token)
        try:
            source = path.open("rb")
        except FileNotFoundError as exc:
            raise Problem(404, "Not Found") from exc
        with source:
            size = os.fstat(source.fileno()).st_size
            truncate = self.emulator.faults.pick("download", ON_BODY) is not None
            self.send_response(200)
            self.send_header("Content-Type", "video/mp4")
            self.send_header("Content-Length", str(size))
            self.end_headers()
            remaining = size // 2 if truncate else size
            while remaining:
                piece = source.read(min(remaining, CHUNK_BYTES))
                if not piece:
                    break
                self.wfile.write(piece)
                remaining -= len(piece)
        if truncate:
            self._drop(reset=False)

    # -- control routes ----------------------------------------------------------------------

    def _state(self) -> None:
        self._read_body()
        self._send_json(200, self.store.state())

    def _requests(self) -> None:
        self._read_body()
        self._send_json(200, {"requests": self.store.request_log()})

    def _set_faults(self) -> None:
        doc = protocol.parse_json_object(self._read_body())
        try:
            self.emulator.set_faults(doc)
        except ValueError as exc:
            raise Problem(400, str(exc)) from exc
        self._send_json(200, {"rules": len(doc.get("rules", []))})

    def _set_credits(self) -> None:
        credits = protocol.parse_credits(protocol.parse_json_object(self._read_body()))
        self.store.set_credits(credits)
        self._send_json(200, {"credits": credits})

    def _force_end(self, project_id: str) -> None:
        status, error = protocol.parse_force_end(protocol.parse_json_object(self._read_body()))
        self.store.force_end(project_id, status, error)
        self._send_json(200, self.store.project_body(project_id, self.emulator.base_url))


def _phrase(status: int) -> str:
    try:
        return HTTPStatus(status).phrase
    except ValueError:
        return "Error"


def _status_problem(rule: FaultRule) -> Problem:
    status = rule.status or 500
    phrase = _phrase(status)
    headers: dict[str, str] = {}
    if rule.retry_after is not None:
        seconds = rule.retry_after
        headers["Retry-After"] = str(int(seconds)) if seconds == int(seconds) else str(seconds)
    return Problem(status, f"{phrase} (emulated fault)", headers)


class EmulatorServer:
    """A Magic Hour API emulator on a loopback port; see the package docstring."""

    def __init__(self, options: EmulatorOptions) -> None:
        """Check `options` (ValueError names a bad one); nothing is bound until `start()`."""
        check_options(options)
        self.options = options
        rules, plan_seed = parse_rules(options.faults)
        self.faults = FaultPlan(rules, plan_seed if plan_seed is not None else options.seed)
        self.stopping = threading.Event()
        self.store = Store(
            credits=options.credits,
            queue_seconds=options.queue_seconds,
            render_seconds=options.render_seconds,
            url_ttl_seconds=options.url_ttl_seconds,
            tier=options.tier,
        )
        self._lifecycle = Lifecycle(self.store, options.tier)
        self._httpd: _HttpServer | None = None
        self._thread: threading.Thread | None = None
        self._temp_dir: Path | None = None
        self._base_url = ""
        self._started = False

    def __enter__(self) -> EmulatorServer:
        self.start()
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.stop()

    @property
    def base_url(self) -> str:
        """The root URL clients use, e.g. `http://127.0.0.1:40123`; RuntimeError before start."""
        if not self._base_url:
            raise RuntimeError("the emulator has not been started")
        return self._base_url

    def start(self) -> None:
        """Bind the port and serve in a background thread.

        Raises OSError when the address cannot be bound (port taken), RuntimeError on reuse.
        """
        if self._started:
            raise RuntimeError("an EmulatorServer starts once")
        self._started = True
        if self.options.data_dir is None:
            self._temp_dir = Path(tempfile.mkdtemp(prefix="mh-emulator-"))
            data_dir = self._temp_dir
        else:
            data_dir = self.options.data_dir
        try:
            self.store.attach(data_dir)
            httpd = _HttpServer((self.options.host, self.options.port), self)
        except OSError:
            self._remove_temp_dir()
            raise
        self._httpd = httpd
        host, port = httpd.server_address[:2]
        shown = str(host)
        if shown in ("0.0.0.0", ""):
            shown = "127.0.0.1"
        elif shown == "::":
            shown = "::1"
        if ":" in shown:
            shown = f"[{shown}]"
        self._base_url = f"http://{shown}:{port}"
        self._lifecycle.start()
        self._thread = threading.Thread(
            target=httpd.serve_forever,
            kwargs={"poll_interval": 0.1},
            name="emulator-http",
            daemon=True,
        )
        self._thread.start()

    def stop(self) -> None:
        """Stop serving, close every connection and socket, join threads, remove a temp dir."""
        self.stopping.set()
        httpd, self._httpd = self._httpd, None
        if httpd is not None:
            httpd.shutdown()
            with httpd.active_lock:
                connections = list(httpd.active)
            for connection in connections:
                # Wakes handler threads blocked on idle keep-alive reads.
                with contextlib.suppress(OSError):
                    connection.shutdown(socket.SHUT_RDWR)
            httpd.server_close()  # joins the handler threads
        if self._thread is not None:
            self._thread.join()
            self._thread = None
        if self._started:
            self._lifecycle.stop()
        self._remove_temp_dir()

    def _remove_temp_dir(self) -> None:
        if self._temp_dir is not None:
            shutil.rmtree(self._temp_dir, ignore_errors=True)
            self._temp_dir = None

    def state(self) -> dict[str, Any]:
        """Return the `GET /_emulator/state` document: credits, projects, request counts."""
        return self.store.state()

    def requests(self) -> list[dict[str, Any]]:
        """Return the `GET /_emulator/requests` log: answered API requests, oldest first."""
        return self.store.request_log()

    def set_faults(self, faults: dict[str, Any]) -> None:
        """Replace the fault plan (its counters and generator restart); ValueError if invalid."""
        rules, plan_seed = parse_rules(faults)
        self.faults = FaultPlan(rules, plan_seed if plan_seed is not None else self.options.seed)

    def set_credits(self, credits: int) -> None:
        """Set the account balance; ValueError when negative."""
        if credits < 0:
            raise ValueError(f"credits must be >= 0, got {credits}")
        self.store.set_credits(credits)

    def force_end(self, project_id: str, status: str, error: dict[str, str] | None = None) -> None:
        """End a project as `error` or `canceled`, refunding it.

        Raises KeyError for an unknown project, ValueError for another status.
        """
        if status not in protocol.FORCE_END_STATUSES:
            raise ValueError(f"status must be one of: {', '.join(protocol.FORCE_END_STATUSES)}")
        try:
            self.store.force_end(project_id, status, error)
        except Problem as exc:
            raise KeyError(project_id) from exc
