"""The Magic Hour HTTP client: every call the daemon makes to the service, over one httpx.Client.

The caller builds and closes the `httpx.Client` (see `build_http_client`) and injects it, so
tests run this real code against `httpx.MockTransport` or a loopback server.

Two rules hold everywhere in this module:
- `translate_failure` is the ONE place where httpx exceptions, HTTP statuses and malformed
  bodies become the error tree of `mh_watchd.core.errors`, given the operation.
- `MagicHourClient._with_retries` runs every request under the ONE retry policy
  (`retrying.api_request_policy` in `mh_watchd/adapters/retrying.py`): a tenacity loop over a
  single request, built from the numbers in `mh_watchd.core.backoff`, retrying only
  `TransientApiError` (never an `AmbiguousCreateError`).

Uploads stream from the file (a path, or a file the caller already opened without following
links) in 1 MiB chunks with an explicit Content-Length (object stores refuse chunked PUTs) and
hash exactly the bytes sent; downloads stream to the caller's path,
fsync it and check the byte count. The API token goes only on `/v1/` calls and never into an
exception text or a repr.
"""

from __future__ import annotations

import hashlib
import json
import os
import time
from collections.abc import Callable, Generator, Iterator, Mapping
from dataclasses import dataclass
from pathlib import Path
from types import TracebackType
from typing import Any, BinaryIO, TypeVar
from urllib.parse import quote, urlsplit, urlunsplit

import httpx

from mh_watchd import __version__
from mh_watchd.adapters import retrying
from mh_watchd.core.api import (
    Account,
    CreatedProject,
    CreateRequest,
    Download,
    Project,
    ProjectError,
    UploadUrl,
)
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

T = TypeVar("T")

DEFAULT_USER_AGENT = f"mh-watchd/{__version__}"
CHUNK_BYTES = 1024 * 1024
# Big transfers: a slow NAS or uplink may need minutes per chunk or for the store's answer;
# httpx's 5 s default would abort healthy uploads.
TRANSFER_TIMEOUT_SECONDS = 300.0
# Error bodies are read for their message only; a huge one is cut here.
ERROR_BODY_MAX_BYTES = 64 * 1024
SERVICE_MESSAGE_MAX_CHARS = 500

OPERATIONS: tuple[str, ...] = (
    "upload_urls", "upload", "create", "get", "download", "delete", "account",
)  # fmt: skip
# Presigned object-store URLs (no token): 403/404 there means the URL expired.
PRESIGNED_OPERATIONS: frozenset[str] = frozenset({"upload", "download"})

PROJECT_KEYS: tuple[str, ...] = (
    "id", "name", "status", "type", "created_at", "width", "height", "enabled",
    "start_seconds", "end_seconds", "credits_charged", "total_frame_cost", "fps", "error",
    "downloads", "download",
)  # fmt: skip

# Failures where the request surely never reached the service: safe to resend, even a create.
_NOT_SENT_EXCEPTIONS: tuple[type[httpx.HTTPError], ...] = (
    httpx.ConnectError,
    httpx.ConnectTimeout,
    httpx.PoolTimeout,
    httpx.ProxyError,
    httpx.UnsupportedProtocol,
)


@dataclass(frozen=True)
class UploadResult:
    """A finished upload: the byte count and the hex SHA-256 of exactly the bytes sent."""

    size: int
    sha256: str


@dataclass(frozen=True)
class DownloadResult:
    """A finished download: the byte count written to `dest` and their hex SHA-256."""

    size: int
    sha256: str


@dataclass(frozen=True)
class RequestRecord:
    """One HTTP attempt, for metrics: `status` is None when no response arrived."""

    operation: str
    status: int | None
    seconds: float
    retried: bool


class _UploadTally:
    """What one upload attempt has sent so far, and the running hash of exactly those bytes."""

    def __init__(self) -> None:
        self.sent = 0
        self.digest = hashlib.sha256()


class _Malformed(ValueError):
    """A 2xx body we cannot use; `translate_failure` turns it into the operation's error."""


def build_http_client(*, user_agent: str | None = None) -> httpx.Client:
    """Return a new httpx.Client with default limits, no base_url and our User-Agent.

    The caller owns it and must close it. A custom `user_agent` should start with
    "mh-watchd/" (the client sends its own otherwise).
    """
    return httpx.Client(
        headers={"User-Agent": user_agent or DEFAULT_USER_AGENT},
        timeout=httpx.Timeout(60.0),
        limits=httpx.Limits(),
        follow_redirects=False,
    )


def translate_failure(
    operation: str,
    failure: httpx.Response | httpx.HTTPError,
    *,
    detail: str | None = None,
    body: bytes | None = None,
    secret: str | None = None,
) -> ApiError:
    """Return the ApiError for a failed `operation`: an httpx exception, a non-2xx response,
    or a 2xx response whose body is unusable (`detail` says why).

    `body` is the (possibly cut) error body when the response was streamed; `secret` is
    scrubbed from every text the error carries.
    """
    if isinstance(failure, httpx.HTTPError):
        cls: type[ApiError]
        if isinstance(failure, _NOT_SENT_EXCEPTIONS):
            cls = NotSentError
        elif operation == "create":
            # Read/write timeouts and dropped connections may come after the service got it.
            cls = AmbiguousCreateError
        else:
            cls = TransientApiError
        where = _describe(_request_of(failure))
        text = f"{operation}: {type(failure).__name__}: {str(failure) or 'no detail'} ({where})"
        if detail:
            text += f" ({detail})"
        return cls(_scrub(text, secret), operation=operation)

    response = failure
    status = response.status_code
    service_message = _service_message(response, body)
    if service_message is not None:
        service_message = _scrub(service_message, secret)
    if response.is_success:
        cls = AmbiguousCreateError if operation == "create" else TransientApiError
    else:
        cls = _class_for_status(operation, status)
    text = f"{operation}: HTTP {status}"
    if response.reason_phrase:
        text += f" {response.reason_phrase}"
    text += f" from {_describe(_request_of(response))}"
    if service_message:
        text += f": {service_message}"
    if detail:
        text += f" ({detail})"
    return cls(
        _scrub(text, secret),
        operation=operation,
        status=status,
        service_message=service_message,
        retry_after_seconds=retrying.retry_after_seconds(response),
    )


def _class_for_status(operation: str, status: int) -> type[ApiError]:
    """The error class for a non-2xx `status` answered to `operation`."""
    if status == 401:
        return AuthError
    if status == 402:
        return CreditsError
    if status == 429:
        return RefusedError
    if operation in PRESIGNED_OPERATIONS and status in (403, 404):
        return UrlExpiredError
    if status in (400, 403, 422):
        return PermanentApiError
    if status == 404:
        return NotFoundError
    if status in (502, 503):
        # The docs: a 502 before an id means nothing was created (503 assumed the same).
        return RefusedError
    if operation == "create":
        # 500, 504 and anything unexpected: the project may exist. Never resend blindly.
        return AmbiguousCreateError
    if status >= 500 or status == 408:
        return TransientApiError
    if 400 <= status < 500:
        return PermanentApiError
    # 1xx/3xx: we follow no redirects, so this is the service misbehaving; try again later.
    return TransientApiError


def _request_of(failure: httpx.Response | httpx.HTTPError) -> httpx.Request | None:
    """The request behind a response or exception, when httpx attached one."""
    try:
        return failure.request
    except RuntimeError:
        return None


def _describe(request: httpx.Request | None) -> str:
    """'METHOD scheme://host/path' without the query (presigned URLs carry signatures)."""
    if request is None:
        return "an unknown request"
    parts = urlsplit(str(request.url))
    return f"{request.method} {urlunsplit((parts.scheme, parts.netloc, parts.path, '', ''))}"


def _scrub(text: str, secret: str | None) -> str:
    """`text` with `secret` replaced, so a service echoing the key cannot leak it."""
    return text.replace(secret, "[redacted]") if secret else text


def _service_message(response: httpx.Response, body: bytes | None) -> str | None:
    """The service's `{"message": ...}`, else a short snippet of a non-JSON body, else None."""
    try:
        raw = response.content if body is None else body
    except httpx.ResponseNotRead:
        return None
    if not raw:
        return None
    text = raw.decode("utf-8", errors="replace")
    try:
        parsed = json.loads(raw)
    except ValueError:
        parsed = None
    if isinstance(parsed, dict) and isinstance(parsed.get("message"), str):
        text = parsed["message"]
    text = " ".join(text.split())
    return text[:SERVICE_MESSAGE_MAX_CHARS] or None


class _Attempt:
    """Times one HTTP attempt and reports it to `on_request` however it ends."""

    def __init__(
        self,
        operation: str,
        retried: bool,
        sink: Callable[[RequestRecord], None] | None,
    ) -> None:
        self.operation = operation
        self.retried = retried
        self.sink = sink
        self.status: int | None = None
        self.started = 0.0

    def __enter__(self) -> _Attempt:
        self.started = time.monotonic()
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        if self.sink is not None:
            seconds = time.monotonic() - self.started
            self.sink(RequestRecord(self.operation, self.status, seconds, self.retried))


class MagicHourClient:
    """The Magic Hour API over an injected httpx.Client, with one retry policy."""

    def __init__(
        self,
        http: httpx.Client,
        *,
        base_url: str,
        token: str,
        request_timeout_seconds: float = 60.0,
        sleep: Callable[[float], None] = time.sleep,
        on_request: Callable[[RequestRecord], None] | None = None,
    ) -> None:
        self._http = http
        self._base_url = base_url.rstrip("/")
        self._token = token
        self._sleep = sleep
        self._on_request = on_request
        agent = http.headers.get("User-Agent", "")
        self._user_agent = agent if agent.startswith("mh-watchd/") else DEFAULT_USER_AGENT
        self._api_timeout = httpx.Timeout(request_timeout_seconds)
        transfer = max(TRANSFER_TIMEOUT_SECONDS, request_timeout_seconds)
        self._transfer_timeout = httpx.Timeout(
            connect=request_timeout_seconds, read=transfer, write=transfer, pool=transfer
        )

    def __repr__(self) -> str:
        return f"MagicHourClient(base_url={self._base_url!r})"

    @property
    def base_url(self) -> str:
        """The service's base URL, without a trailing slash (a path prefix is kept)."""
        return self._base_url

    # -- the /v1/ routes -------------------------------------------------------------------

    def request_upload_url(self, extension: str) -> UploadUrl:
        """Ask for one presigned upload URL for a video with this extension (sent lowercase).

        Returns the UploadUrl; raises an ApiError subclass (see `translate_failure`).
        """
        ext = extension.lower().lstrip(".")
        body = {"items": [{"extension": ext, "type": "video"}]}
        return self._call_json(
            "upload_urls", "POST", "/v1/files/upload-urls", body, _parse_upload_url
        )

    def create(self, request: CreateRequest) -> CreatedProject:
        """Create a video-to-video project. Returns its id and credits; never retried after it
        may have reached the service (raises AmbiguousCreateError then)."""
        return self._call_json(
            "create", "POST", "/v1/video-to-video", request.to_json(), _parse_created
        )

    def get_project(self, project_id: str) -> Project:
        """Return the project's current state (all 16 keys); NotFoundError for an unknown id."""
        path = f"/v1/video-projects/{quote(project_id, safe='')}"
        return self._call_json("get", "GET", path, None, _parse_project)

    def delete_project(self, project_id: str) -> None:
        """Delete a project for good (204). Raises NotFoundError for an unknown id."""
        path = f"/v1/video-projects/{quote(project_id, safe='')}"
        self._call_json("delete", "DELETE", path, None, None)

    def get_account(self) -> Account:
        """Return the account (balance, tier): a cheap key check. AuthError on a bad key."""
        return self._call_json("account", "GET", "/v1/account", None, _parse_account)

    # -- presigned transfers ---------------------------------------------------------------

    def upload(
        self,
        upload_url: str,
        source: Path | BinaryIO,
        *,
        progress: Callable[[int, int], None] | None = None,
        name: str | None = None,
    ) -> UploadResult:
        """PUT a file to a presigned URL, streamed in 1 MiB chunks with a Content-Length.

        `source` is a path, or a binary file already open (an inbox file opened without
        following links: only that open file is read, from byte 0, and it is left open);
        `name` names it in errors (default: the path's name). Returns its size and the SHA-256
        of the bytes sent. Raises SourceChangedError if the file changes while read,
        UrlExpiredError on 403/404, OSError if it cannot be opened. `progress(done, total)`
        follows each chunk (back to 0 on a retry).
        """
        if isinstance(source, Path):
            with source.open("rb") as opened:
                return self._upload_open(upload_url, opened, name or source.name, progress)
        return self._upload_open(upload_url, source, name or "the file", progress)

    def _upload_open(
        self,
        upload_url: str,
        source: BinaryIO,
        name: str,
        progress: Callable[[int, int], None] | None,
    ) -> UploadResult:
        """`upload` from the open file `source`."""
        baseline = os.fstat(source.fileno())

        def attempt(retried: bool) -> UploadResult:
            self._check_unchanged(source, baseline, name)
            source.seek(0)
            tally = _UploadTally()
            stream = self._upload_chunks(source, baseline, name, tally, progress)
            try:
                with _Attempt("upload", retried, self._on_request) as record:
                    try:
                        response = self._http.request(
                            "PUT",
                            upload_url,
                            content=stream,
                            headers={
                                "Content-Length": str(baseline.st_size),
                                "User-Agent": self._user_agent,
                            },
                            timeout=self._transfer_timeout,
                            follow_redirects=False,
                        )
                    except httpx.HTTPError as exc:
                        raise self._translate("upload", exc) from exc
                    record.status = response.status_code
            finally:
                stream.close()
            if not response.is_success:
                raise self._translate("upload", response)
            if tally.sent != baseline.st_size:
                # Only a misbehaving server answers 2xx before the whole body arrived.
                detail = f"answered after {tally.sent} of {baseline.st_size} bytes"
                raise self._translate("upload", response, detail=detail)
            return UploadResult(size=baseline.st_size, sha256=tally.digest.hexdigest())

        return self._with_retries(attempt)

    def download(
        self,
        url: str,
        dest: Path,
        *,
        progress: Callable[[int, int], None] | None = None,
    ) -> DownloadResult:
        """GET a presigned output URL into `dest` (created or truncated), streamed and fsynced.

        Returns the byte count and SHA-256. A body shorter than Content-Length raises
        TransientApiError; 403/404 raise UrlExpiredError (fetch the project for fresh URLs);
        OSError when `dest` cannot be written (e.g. ENOSPC).
        `progress(done, total)` follows each chunk; total is 0 when the length is unknown.
        """

        def attempt(retried: bool) -> DownloadResult:
            hasher = hashlib.sha256()
            done = 0
            expected: int | None = None
            with _Attempt("download", retried, self._on_request) as record:
                try:
                    with self._http.stream(
                        "GET",
                        url,
                        # Identity, so the bytes on disk are the bytes Content-Length counts.
                        headers={"User-Agent": self._user_agent, "Accept-Encoding": "identity"},
                        timeout=self._transfer_timeout,
                        follow_redirects=False,
                    ) as response:
                        record.status = response.status_code
                        if not response.is_success:
                            body = _read_capped(response)
                            raise self._translate("download", response, body=body)
                        expected = _content_length(response)
                        with dest.open("wb") as out:
                            for chunk in _body_chunks(response):
                                out.write(chunk)
                                hasher.update(chunk)
                                done += len(chunk)
                                if progress is not None:
                                    progress(done, expected or 0)
                            out.flush()
                            os.fsync(out.fileno())
                except httpx.HTTPError as exc:
                    raise self._translate("download", exc) from exc
            if expected is not None and done != expected:
                detail = f"got {done} of {expected} bytes"
                raise self._translate("download", response, detail=detail, body=b"")
            return DownloadResult(size=done, sha256=hasher.hexdigest())

        return self._with_retries(attempt)

    # -- internals -------------------------------------------------------------------------

    def _translate(
        self,
        operation: str,
        failure: httpx.Response | httpx.HTTPError,
        *,
        detail: str | None = None,
        body: bytes | None = None,
    ) -> ApiError:
        return translate_failure(operation, failure, detail=detail, body=body, secret=self._token)

    def _with_retries(self, attempt: Callable[[bool], T]) -> T:
        """Run `attempt(retried)` under the one retry policy; re-raise the last error."""
        policy = retrying.api_request_policy(sleep=self._sleep)
        tries = 0

        def once() -> T:
            nonlocal tries
            tries += 1
            return attempt(tries > 1)

        return policy(once)

    def _call_json(
        self,
        operation: str,
        method: str,
        path: str,
        body: Mapping[str, object] | None,
        parse: Callable[[Any], T] | None,
    ) -> T:
        """One /v1/ route: bearer auth, JSON in and out, parsed by `parse` (None: no body)."""
        url = self._base_url + path
        headers = {
            "Authorization": f"Bearer {self._token}",
            "User-Agent": self._user_agent,
            "Accept": "application/json",
        }

        def attempt(retried: bool) -> T:
            with _Attempt(operation, retried, self._on_request) as record:
                try:
                    response = self._http.request(
                        method,
                        url,
                        json=body,
                        headers=headers,
                        timeout=self._api_timeout,
                        follow_redirects=False,
                    )
                except httpx.HTTPError as exc:
                    raise self._translate(operation, exc) from exc
                record.status = response.status_code
            if not response.is_success:
                raise self._translate(operation, response)
            if parse is None:
                return None  # type: ignore[return-value]
            try:
                return parse(response.json())
            except ValueError as exc:  # _Malformed, or a body that is not JSON at all
                raise self._translate(operation, response, detail=_why(exc)) from exc

        return self._with_retries(attempt)

    def _upload_chunks(
        self,
        source: BinaryIO,
        baseline: os.stat_result,
        name: str,
        tally: _UploadTally,
        progress: Callable[[int, int], None] | None,
    ) -> Generator[bytes, None, None]:
        """Yield the file in chunks; the last chunk is held back until the file is verified
        unchanged, so the server never receives a complete body made of mixed versions."""
        size = baseline.st_size
        while True:
            want = min(CHUNK_BYTES, size - tally.sent)
            chunk = source.read(want) if want > 0 else b""
            if len(chunk) != want:  # a buffered read of a regular file is short only at EOF
                raise SourceChangedError(
                    f"{name}: ended after {tally.sent + len(chunk)} of {size} bytes while uploading"
                )
            last = tally.sent + want >= size
            if last:
                if source.read(1):
                    raise SourceChangedError(f"{name}: grew past {size} bytes while uploading")
                self._check_unchanged(source, baseline, name)
            tally.digest.update(chunk)
            if chunk:
                yield chunk
                tally.sent += len(chunk)
                if progress is not None:
                    progress(tally.sent, size)
            if last:
                return

    @staticmethod
    def _check_unchanged(source: BinaryIO, baseline: os.stat_result, name: str) -> None:
        """Raise SourceChangedError when the open file's size or mtime moved since `baseline`."""
        now = os.fstat(source.fileno())
        if now.st_size != baseline.st_size or now.st_mtime_ns != baseline.st_mtime_ns:
            raise SourceChangedError(
                f"{name}: changed while uploading ({baseline.st_size} -> {now.st_size} bytes)"
            )


def _why(exc: ValueError) -> str:
    """A short reason for an unusable 2xx body."""
    if isinstance(exc, _Malformed):
        return str(exc)
    return "the body is not JSON"


def _read_capped(response: httpx.Response) -> bytes:
    """Up to ERROR_BODY_MAX_BYTES of a streamed (error) body."""
    data = bytearray()
    for chunk in response.iter_bytes():
        data += chunk
        if len(data) >= ERROR_BODY_MAX_BYTES:
            break
    return bytes(data[:ERROR_BODY_MAX_BYTES])


def _body_chunks(response: httpx.Response) -> Iterator[bytes]:
    """The raw body in chunks; a response already in memory (a test transport) is one chunk."""
    try:
        content = response.content
    except httpx.ResponseNotRead:
        yield from response.iter_raw(CHUNK_BYTES)
    else:
        yield content


def _content_length(response: httpx.Response) -> int | None:
    """The response's Content-Length as an int, or None when absent or garbled."""
    value = response.headers.get("Content-Length")
    if value is None:
        return None
    try:
        length = int(value)
    except ValueError:
        return None
    return length if length >= 0 else None


# -- parsing: JSON bodies into the frozen dataclasses of core/api.py ---------------------------


def _obj(value: object, what: str) -> dict[str, Any]:
    if not isinstance(value, dict):
        raise _Malformed(f"{what} is not an object")
    return value


def _str(data: Mapping[str, Any], key: str) -> str:
    value = data.get(key)
    if not isinstance(value, str):
        raise _Malformed(f"{key!r} is missing or not a string")
    return value


def _opt_str(data: Mapping[str, Any], key: str) -> str | None:
    value = data.get(key)
    if value is not None and not isinstance(value, str):
        raise _Malformed(f"{key!r} is not a string")
    return value


def _int(data: Mapping[str, Any], key: str) -> int:
    value = data.get(key)
    if isinstance(value, bool) or not isinstance(value, int):
        raise _Malformed(f"{key!r} is missing or not an integer")
    return value


def _num(data: Mapping[str, Any], key: str) -> float:
    value = data.get(key)
    if isinstance(value, bool) or not isinstance(value, int | float):
        raise _Malformed(f"{key!r} is missing or not a number")
    return float(value)


def _bool(data: Mapping[str, Any], key: str) -> bool:
    value = data.get(key)
    if not isinstance(value, bool):
        raise _Malformed(f"{key!r} is missing or not a boolean")
    return value


def _parse_upload_url(body: object) -> UploadUrl:
    items = _obj(body, "the body").get("items")
    if not isinstance(items, list) or not items:
        raise _Malformed("'items' is missing or empty")
    item = _obj(items[0], "items[0]")
    return UploadUrl(
        upload_url=_str(item, "upload_url"),
        file_path=_str(item, "file_path"),
        expires_at=_str(item, "expires_at"),
    )


def _parse_created(body: object) -> CreatedProject:
    data = _obj(body, "the body")
    project_id = _str(data, "id")
    if not project_id:
        raise _Malformed("'id' is empty")

    # With an id in hand the project is known: never turn it into an ambiguous create over a
    # missing number. -1 means "not stated"; the final GET has the real charge.
    def number(key: str) -> int:
        value = data.get(key)
        return value if isinstance(value, int) and not isinstance(value, bool) else -1

    return CreatedProject(
        id=project_id,
        credits_charged=number("credits_charged"),
        estimated_frame_cost=number("estimated_frame_cost"),
    )


def _parse_download(value: object, what: str) -> Download:
    data = _obj(value, what)
    return Download(url=_str(data, "url"), expires_at=_str(data, "expires_at"))


def _parse_project(body: object) -> Project:
    data = _obj(body, "the body")
    missing = [key for key in PROJECT_KEYS if key not in data]
    if missing:
        raise _Malformed(f"missing keys: {', '.join(missing)}")
    error: ProjectError | None = None
    if data["error"] is not None:
        err = _obj(data["error"], "'error'")
        error = ProjectError(code=_str(err, "code"), message=_str(err, "message"))
    downloads = data["downloads"]
    if not isinstance(downloads, list):
        raise _Malformed("'downloads' is not a list")
    download = data["download"]
    return Project(
        id=_str(data, "id"),
        name=_opt_str(data, "name"),
        status=_str(data, "status"),
        type=_str(data, "type"),
        created_at=_str(data, "created_at"),
        width=_int(data, "width"),
        height=_int(data, "height"),
        enabled=_bool(data, "enabled"),
        start_seconds=_num(data, "start_seconds"),
        end_seconds=_num(data, "end_seconds"),
        credits_charged=_int(data, "credits_charged"),
        total_frame_cost=_int(data, "total_frame_cost"),
        fps=_num(data, "fps"),
        error=error,
        downloads=tuple(
            _parse_download(item, f"downloads[{i}]") for i, item in enumerate(downloads)
        ),
        download=None if download is None else _parse_download(download, "'download'"),
    )


def _parse_account(body: object) -> Account:
    data = _obj(body, "the body")
    return Account(
        id=_str(data, "id"),
        email=_opt_str(data, "email") or "",
        credits=_int(data, "credits"),
        tier=_opt_str(data, "tier") or "",
        subscription=data.get("subscription"),
    )
