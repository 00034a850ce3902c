"""The emulator's state: upload slots and assets, projects and their lifecycle, the ledger.

One lock guards everything; `cond` (on that lock) wakes the clock thread when due times change.
Status moves with the clock: `queued` for queue_seconds, then `rendering` (the render starts
then, in the worker pool) until render_seconds have passed AND the render finished, then
`complete` or `error`. Reads call `advance()` first, so a GET sees exactly what is due.

Ledger: the estimate (`core.api.estimate_credits`) is deducted at create (402 when short,
nothing created). At completion the charge is corrected to the frames actually rendered, two
credits per output frame (the estimate's own rate, which assumes 30 fps), never more than the
estimate; the difference is refunded. An error, a cancel, or deleting an unfinished project
refunds the whole charge and sets `credits_charged` to 0.

Request log (for benchmarks and tests that need to know *when*, not just how often): the newest
REQUEST_LOG_MAX answered requests of the API routes, oldest first, each
`{"at": unix seconds (the host's wall clock), "route", "project_id", "status"}`. Routes:
`upload_urls`, `upload` (stored), `create` (committed; an `after_commit` one included), `get`
(answered 200, with the project `status` it reported), `download` (its URL resolved to an
output and the body is about to be sent). Refused or faulted requests are not logged (the
counts have them); `project_id` is None for the upload routes and `status` is set on `get` only.
"""

from __future__ import annotations

import math
import os
import secrets
import string
import threading
import time
from collections import deque
from collections.abc import Callable
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from mh_watchd.core.api import TERMINAL_STATUSES, estimate_credits

from .protocol import CreateSpec, Problem, UploadItem
from .render import RenderResult

COUNT_NAMES: tuple[str, ...] = (
    "upload_urls",
    "uploads",  # stored uploads only
    "upload_requests",  # every PUT to an upload URL, refused or faulted included
    "creates",
    "create_requests",
    "gets",
    "downloads",
)
CREDITS_PER_OUTPUT_FRAME = 2
REQUEST_LOG_ROUTES: tuple[str, ...] = ("upload_urls", "upload", "create", "get", "download")
# Some tens of MB at most: enough for a benchmark of thousands of jobs polled for minutes.
REQUEST_LOG_MAX = 100_000
_ID_ALPHABET = string.ascii_lowercase + string.digits


def new_id() -> str:
    """Return an id shaped like the service's: 25 lowercase alphanumerics starting with 'c'."""
    return "c" + "".join(secrets.choice(_ID_ALPHABET) for _ in range(24))


def iso_timestamp(unix_seconds: float) -> str:
    """Return `unix_seconds` as the service writes times: ISO-8601 UTC with milliseconds."""
    moment = datetime.fromtimestamp(unix_seconds, UTC)
    return moment.strftime("%Y-%m-%dT%H:%M:%S.") + f"{moment.microsecond // 1000:03d}Z"


@dataclass
class UploadSlot:
    """A presigned upload URL: where its bytes go and until when it is valid."""

    token: str
    file_path: str
    extension: str
    disk_path: Path
    expires_mono: float
    expires_at: str


@dataclass
class Asset:
    """An `api-assets/...` path the emulator issued; usable by a create once uploaded."""

    file_path: str
    disk_path: Path
    uploaded: bool = False


@dataclass
class DownloadSlot:
    """A presigned download URL of one project output."""

    token: str
    project_id: str
    expires_mono: float
    expires_at: str


@dataclass(frozen=True)
class RenderJob:
    """What a render worker needs for one project."""

    project_id: str
    source: Path
    target: Path
    start_seconds: float
    end_seconds: float
    fps_resolution: str
    art_style: str


@dataclass
class ProjectRecord:
    """One video-to-video project, as the emulator tracks it."""

    id: str
    name: str | None
    file_path: str
    source: Path
    output: Path
    start_seconds: float
    end_seconds: float
    fps_resolution: str
    style: dict[str, Any]
    created_at: str
    created_mono: float
    estimate: int
    credits_charged: int
    status: str = "queued"
    error: dict[str, str] | None = None
    width: int = -1
    height: int = -1
    fps: float = 0.0
    render_done: bool = False
    result: RenderResult | None = None
    render_error: dict[str, str] | None = None
    deleted: bool = False
    download: DownloadSlot | None = None


class Store:
    """All emulator state behind one lock; see the module docstring for the rules."""

    def __init__(
        self,
        *,
        credits: int,
        queue_seconds: float,
        render_seconds: float,
        url_ttl_seconds: float,
        tier: str,
        clock: Callable[[], float] = time.monotonic,
        wall_clock: Callable[[], float] = time.time,
    ) -> None:
        self.cond = threading.Condition(threading.RLock())
        self.account_id = new_id()
        self.tier = tier
        self._credits = credits
        self._queue_seconds = queue_seconds
        self._render_seconds = render_seconds
        self._ttl = url_ttl_seconds
        self._clock = clock
        self._wall = wall_clock
        self._data_dir: Path | None = None
        self._uploads: dict[str, UploadSlot] = {}
        self._assets: dict[str, Asset] = {}
        self._projects: dict[str, ProjectRecord] = {}
        self._downloads: dict[str, DownloadSlot] = {}
        self._counts = dict.fromkeys(COUNT_NAMES, 0)
        self._request_log: deque[dict[str, Any]] = deque(maxlen=REQUEST_LOG_MAX)
        self.on_render: Callable[[RenderJob], None] = lambda job: None

    def attach(self, data_dir: Path) -> None:
        """Use `data_dir` for uploads and outputs (created if missing)."""
        (data_dir / "uploads").mkdir(parents=True, exist_ok=True)
        (data_dir / "outputs").mkdir(parents=True, exist_ok=True)
        with self.cond:
            self._data_dir = data_dir

    @property
    def data_dir(self) -> Path:
        """The directory holding uploads and outputs; RuntimeError before `attach`."""
        if self._data_dir is None:
            raise RuntimeError("the emulator has not been started")
        return self._data_dir

    # -- counts and ledger -------------------------------------------------------------------

    def count(self, name: str) -> None:
        """Add one to the request counter `name` (one of COUNT_NAMES)."""
        with self.cond:
            self._counts[name] += 1

    def log_request(
        self, route: str, *, project_id: str | None = None, status: str | None = None
    ) -> None:
        """Append an answered request of `route` (one of REQUEST_LOG_ROUTES) to the request log,
        stamped with the wall clock now; ValueError for another route."""
        if route not in REQUEST_LOG_ROUTES:
            raise ValueError(f"route must be one of: {', '.join(REQUEST_LOG_ROUTES)}")
        with self.cond:
            self._request_log.append(
                {"at": self._wall(), "route": route, "project_id": project_id, "status": status}
            )

    def request_log(self) -> list[dict[str, Any]]:
        """Return the request log, oldest first (copies: the caller may keep them)."""
        with self.cond:
            return [dict(entry) for entry in self._request_log]

    @property
    def credits(self) -> int:
        """The account balance."""
        with self.cond:
            return self._credits

    def set_credits(self, credits: int) -> None:
        """Set the account balance."""
        with self.cond:
            self._credits = credits

    def account(self) -> dict[str, Any]:
        """Return the `GET /v1/account` body."""
        with self.cond:
            return {
                "id": self.account_id,
                "email": "emulator@example.invalid",
                "credits": self._credits,
                "tier": self.tier,
                "subscription": None,
            }

    # -- uploads -----------------------------------------------------------------------------

    def issue_upload(self, item: UploadItem, base_url: str) -> dict[str, str]:
        """Create an upload slot and its asset; return the `items[]` entry of the answer."""
        token = secrets.token_urlsafe(24)
        name = secrets.token_hex(12)
        file_path = f"api-assets/{self.account_id}/{name}.{item.extension}"
        disk_path = self.data_dir / "uploads" / f"{name}.{item.extension}"
        now_wall = self._wall()
        slot = UploadSlot(
            token=token,
            file_path=file_path,
            extension=item.extension,
            disk_path=disk_path,
            expires_mono=self._clock() + self._ttl,
            expires_at=iso_timestamp(now_wall + self._ttl),
        )
        with self.cond:
            self._uploads[token] = slot
            self._assets[file_path] = Asset(file_path=file_path, disk_path=disk_path)
        signed_at = datetime.fromtimestamp(now_wall, UTC).strftime("%Y%m%dT%H%M%SZ")
        return {
            "upload_url": (
                f"{base_url}/_uploads/{token}?X-Amz-Date={signed_at}"
                f"&X-Amz-Expires={math.ceil(self._ttl)}&X-Amz-Signature={secrets.token_hex(16)}"
            ),
            "file_path": file_path,
            "expires_at": slot.expires_at,
        }

    def upload_slot(self, token: str) -> UploadSlot:
        """Return the live slot for `token`; Problem 404 when unknown, 403 when expired."""
        with self.cond:
            slot = self._uploads.get(token)
            if slot is None:
                raise Problem(404, "Not Found")
            if self._clock() >= slot.expires_mono:
                raise Problem(403, "Request has expired")
            return slot

    def finish_upload(self, token: str, written: Path) -> None:
        """Move a fully received upload into place and mark its asset usable."""
        with self.cond:
            slot = self._uploads[token]
            os.replace(written, slot.disk_path)
            self._assets[slot.file_path].uploaded = True

    # -- projects ----------------------------------------------------------------------------

    def create(self, spec: CreateSpec) -> ProjectRecord:
        """Charge the estimate and create a queued project.

        Raises Problem 400 for an asset not issued or not uploaded, 402 when the balance is short.
        """
        with self.cond:
            asset = self._assets.get(spec.file_path)
            if asset is None:
                raise Problem(
                    400, f"assets.video_file_path {spec.file_path!r} is not a known upload"
                )
            if not asset.uploaded:
                raise Problem(
                    400, f"assets.video_file_path {spec.file_path!r} has not been uploaded yet"
                )
            estimate = estimate_credits(spec.end_seconds - spec.start_seconds, spec.fps_resolution)
            if self._credits < estimate:
                raise Problem(402, "Payment required")
            self._credits -= estimate
            project_id = new_id()
            record = ProjectRecord(
                id=project_id,
                name=spec.name,
                file_path=spec.file_path,
                source=asset.disk_path,
                output=self.data_dir / "outputs" / f"{project_id}.mp4",
                start_seconds=spec.start_seconds,
                end_seconds=spec.end_seconds,
                fps_resolution=spec.fps_resolution,
                style=dict(spec.style),
                created_at=iso_timestamp(self._wall()),
                created_mono=self._clock(),
                estimate=estimate,
                credits_charged=estimate,
                # Before completion the service reports an estimate: 30 fps, halved for HALF.
                fps=30.0 if spec.fps_resolution == "FULL" else 15.0,
            )
            self._projects[project_id] = record
            self._counts["creates"] += 1
            self.cond.notify_all()
            return record

    def project_body(self, project_id: str, base_url: str) -> dict[str, Any]:
        """Return the 16-key `GET /v1/video-projects/{id}` body; Problem 404 when unknown."""
        with self.cond:
            self.advance()
            record = self._live(project_id)
            downloads: list[dict[str, str]] = []
            if record.status == "complete":
                slot = self._download_slot(record)
                downloads.append(
                    {
                        "url": f"{base_url}/_downloads/{slot.token}/{record.id}.mp4",
                        "expires_at": slot.expires_at,
                    }
                )
            return {
                "id": record.id,
                "name": record.name,
                "status": record.status,
                "type": "VIDEO_TO_VIDEO",
                "created_at": record.created_at,
                "width": record.width,
                "height": record.height,
                "enabled": True,
                "start_seconds": record.start_seconds,
                "end_seconds": record.end_seconds,
                "credits_charged": record.credits_charged,
                "total_frame_cost": record.credits_charged,
                "fps": record.fps,
                "error": dict(record.error) if record.error else None,
                "downloads": downloads,
                "download": downloads[0] if downloads else None,
            }

    def delete(self, project_id: str) -> None:
        """Delete a project for good (refunding it when unfinished); Problem 404 when unknown."""
        with self.cond:
            self.advance()
            record = self._live(project_id)
            if record.status not in TERMINAL_STATUSES:
                self._refund(record)
                record.status = "canceled"
            record.deleted = True
            record.download = None
            record.output.unlink(missing_ok=True)
            self.cond.notify_all()

    def force_end(self, project_id: str, status: str, error: dict[str, str] | None) -> None:
        """End a project as `error` or `canceled` (refunded); Problem 404 when unknown."""
        with self.cond:
            self.advance()
            record = self._live(project_id)
            self._refund(record)
            record.status = status
            if status == "error":
                record.error = error or {
                    "code": "unknown_error",
                    "message": "The render failed (forced by the emulator's control API).",
                }
            else:
                record.error = error
            record.download = None
            record.output.unlink(missing_ok=True)
            self.cond.notify_all()

    def download_file(self, token: str) -> Path:
        """Return the output file behind a download token (logging the download); Problem 403
        expired, 404 gone."""
        with self.cond:
            slot = self._downloads.get(token)
            if slot is None:
                raise Problem(404, "Not Found")
            if self._clock() >= slot.expires_mono:
                raise Problem(403, "Request has expired")
            record = self._projects.get(slot.project_id)
            if record is None or record.deleted or record.status != "complete":
                raise Problem(404, "Not Found")
            self.log_request("download", project_id=record.id)
            return record.output

    # -- lifecycle ---------------------------------------------------------------------------

    def advance(self) -> None:
        """Apply every status change that is due now; hand new renders to `on_render`."""
        with self.cond:
            now = self._clock()
            for record in self._projects.values():
                if record.deleted or record.status in TERMINAL_STATUSES:
                    continue
                started = record.created_mono + self._queue_seconds
                if record.status == "queued" and now >= started:
                    record.status = "rendering"
                    self.on_render(
                        RenderJob(
                            project_id=record.id,
                            source=record.source,
                            target=record.output,
                            start_seconds=record.start_seconds,
                            end_seconds=record.end_seconds,
                            fps_resolution=record.fps_resolution,
                            art_style=str(record.style["art_style"]),
                        )
                    )
                if (
                    record.status == "rendering"
                    and record.render_done
                    and now >= started + self._render_seconds
                ):
                    self._finish(record)

    def seconds_to_next_change(self) -> float | None:
        """Seconds until the next timed status change, or None when none is pending."""
        with self.cond:
            now = self._clock()
            due: list[float] = []
            for record in self._projects.values():
                if record.deleted or record.status in TERMINAL_STATUSES:
                    continue
                started = record.created_mono + self._queue_seconds
                if record.status == "queued":
                    due.append(started)
                elif record.render_done:
                    due.append(started + self._render_seconds)
            return max(0.0, min(due) - now) if due else None

    def render_finished(
        self,
        project_id: str,
        result: RenderResult | None,
        error: dict[str, str] | None,
    ) -> None:
        """Record a worker's outcome (a result, or an error body) and apply what is due."""
        with self.cond:
            record = self._projects[project_id]
            if record.deleted or record.status in TERMINAL_STATUSES:
                # Ended (forced or deleted) while it rendered: the output has no use.
                record.output.unlink(missing_ok=True)
                return
            record.render_done = True
            record.result = result
            record.render_error = error
            self.advance()
            self.cond.notify_all()

    def _finish(self, record: ProjectRecord) -> None:
        result = record.result
        if result is None:
            self._refund(record)
            record.status = "error"
            record.error = record.render_error or {
                "code": "unknown_error",
                "message": "The render failed.",
            }
            return
        actual = min(record.estimate, result.frames * CREDITS_PER_OUTPUT_FRAME)
        self._credits += record.credits_charged - actual
        record.credits_charged = actual
        record.width, record.height, record.fps = result.width, result.height, result.fps
        record.status = "complete"

    def _refund(self, record: ProjectRecord) -> None:
        self._credits += record.credits_charged
        record.credits_charged = 0

    def _live(self, project_id: str) -> ProjectRecord:
        record = self._projects.get(project_id)
        if record is None or record.deleted:
            raise Problem(404, "Not Found")
        return record

    def _download_slot(self, record: ProjectRecord) -> DownloadSlot:
        now = self._clock()
        slot = record.download
        # Reuse a URL while it has most of its life left, so polling does not mint a new one
        # each time; past half its life, a GET hands out a fresh one.
        if slot is not None and slot.expires_mono - now > self._ttl / 2:
            return slot
        for token in [t for t, s in self._downloads.items() if s.expires_mono <= now]:
            del self._downloads[token]
        slot = DownloadSlot(
            token=secrets.token_urlsafe(24),
            project_id=record.id,
            expires_mono=now + self._ttl,
            expires_at=iso_timestamp(self._wall() + self._ttl),
        )
        self._downloads[slot.token] = slot
        record.download = slot
        return slot

    # -- inspection --------------------------------------------------------------------------

    def state(self) -> dict[str, Any]:
        """Return the `GET /_emulator/state` document."""
        with self.cond:
            self.advance()
            projects = [
                {
                    "id": r.id,
                    "name": r.name,
                    "status": r.status,
                    "start_seconds": r.start_seconds,
                    "end_seconds": r.end_seconds,
                    "fps_resolution": r.fps_resolution,
                    "style": dict(r.style),
                    "file_path": r.file_path,
                    "credits_charged": r.credits_charged,
                    "deleted": r.deleted,
                    "width": r.width,
                    "height": r.height,
                    "fps": r.fps,
                }
                for r in self._projects.values()
            ]
            return {"credits": self._credits, "projects": projects, "counts": dict(self._counts)}
