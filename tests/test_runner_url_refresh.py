"""Runner upload and download: an expired presigned URL (403) is refreshed, then given up on.

Upload asks for a new upload URL, download fetches the project again for fresh download URLs,
`backoff.URL_REFRESH_ATTEMPTS` times at most; after that the step's outcome is the last
UrlExpiredError. The API is an httpx.MockTransport behind the real MagicHourClient.
"""

from __future__ import annotations

import dataclasses
import os
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest

from mh_watchd.adapters.fs import LocalFileSystem
from mh_watchd.adapters.journal import Journal
from mh_watchd.adapters.magic_hour import MagicHourClient
from mh_watchd.core import backoff
from mh_watchd.core.errors import UrlExpiredError
from mh_watchd.core.jobs import Job, JobState
from mh_watchd.runner import Runner
from tests.conftest import ClipFactory
from tests.factories import SETTINGS, job_in

PROJECT_ID = "clx7uu86w0a5qp55yxz315r6r"
REFRESHES = backoff.URL_REFRESH_ATTEMPTS


class ExpiringService:
    """A Magic Hour whose presigned URLs answer 403 the first `*_expiries` times; every
    upload-URL request and project fetch hands out a new, numbered URL."""

    def __init__(self, *, upload_expiries: int = 0, download_expiries: int = 0) -> None:
        self.upload_expiries = upload_expiries
        self.download_expiries = download_expiries
        self.video = b""
        self.upload_urls_given = 0
        self.projects_given = 0
        self.puts: list[str] = []
        self.gets: list[str] = []

    def __call__(self, request: httpx.Request) -> httpx.Response:
        expired = httpx.Response(403, text="<Error><Code>AccessDenied</Code></Error>")
        if request.url.host == "store.test":
            request.read()
            self.puts.append(str(request.url))
            return expired if len(self.puts) <= self.upload_expiries else httpx.Response(200)
        if request.url.host == "cdn.test":
            self.gets.append(str(request.url))
            if len(self.gets) <= self.download_expiries:
                return expired
            return httpx.Response(200, content=self.video)
        if request.url.path.endswith("/upload-urls"):
            self.upload_urls_given += 1
            item = {
                "upload_url": f"https://store.test/bucket/x.mp4?sig={self.upload_urls_given}",
                "file_path": "api-assets/acct/x.mp4",
                "expires_at": "2030-01-01T01:00:00Z",
            }
            return httpx.Response(200, json={"items": [item]})
        if request.url.path.endswith(f"/video-projects/{PROJECT_ID}"):
            self.projects_given += 1
            return httpx.Response(200, json=self.project())
        return httpx.Response(404, json={"message": "no such route"})

    def project(self) -> dict[str, object]:
        url = f"https://cdn.test/out/x.mp4?sig={self.projects_given}"
        download = {"url": url, "expires_at": "2030-01-02T00:00:00Z"}
        return {
            "id": PROJECT_ID,
            "name": "f/x.mp4",
            "status": "complete",
            "type": "VIDEO_TO_VIDEO",
            "created_at": "2030-01-01T00:00:00Z",
            "width": 160,
            "height": 120,
            "enabled": True,
            "start_seconds": 0,
            "end_seconds": 1.0,
            "credits_charged": 30 + self.projects_given,
            "total_frame_cost": 30,
            "fps": 24,
            "error": None,
            "downloads": [download],
            "download": download,
        }


@dataclasses.dataclass
class World:
    tmp: Path
    inbox: Path
    service: ExpiringService
    runner: Runner

    def job(self, state: JobState, **changes: object) -> Job:
        original = self.inbox / "x.mp4"
        st = os.lstat(original)
        settings = dataclasses.replace(
            SETTINGS, inbox=str(self.inbox), outbox=str(self.tmp / "out")
        )
        return job_in(
            state,
            id=1,
            folder="f",
            rel_path="x.mp4",
            size=st.st_size,
            mtime_ns=st.st_mtime_ns,
            inode=st.st_ino,
            settings=settings,
            start_seconds=0.0,
            end_seconds=1.0,
            **changes,
        )


@pytest.fixture
def world(tmp_path: Path) -> Iterator[World]:
    inbox = tmp_path / "inbox"
    inbox.mkdir()
    (inbox / "x.mp4").write_bytes(os.urandom(10_000))
    (tmp_path / "out").mkdir()
    (tmp_path / "tmp").mkdir()
    service = ExpiringService()
    journal = Journal.open(tmp_path / "state")
    http = httpx.Client(transport=httpx.MockTransport(service))
    client = MagicHourClient(http, base_url="https://api.test", token="t", sleep=lambda s: None)
    runner = Runner(
        client_factory=lambda: client,
        fs=LocalFileSystem(),
        journal=journal,
        temp_dir=tmp_path / "tmp",
        clock=lambda: 1_000.0,
    )
    try:
        yield World(tmp_path, inbox, service, runner)
    finally:
        http.close()
        journal.close()


def no_progress(done: int, total: int) -> None:
    pass


def test_upload_gives_up_after_url_refresh_attempts_refreshes(world: World) -> None:
    world.service.upload_expiries = 100

    outcome = world.runner.upload(world.job(JobState.UPLOADING), no_progress)

    assert isinstance(outcome.error, UrlExpiredError), outcome.error
    assert world.service.upload_urls_given == 1 + REFRESHES
    # every URL was tried once, each a fresh one
    assert world.service.puts == [
        f"https://store.test/bucket/x.mp4?sig={n}" for n in range(1, REFRESHES + 2)
    ]


def test_upload_succeeds_on_the_last_fresh_url(world: World) -> None:
    world.service.upload_expiries = REFRESHES

    outcome = world.runner.upload(world.job(JobState.UPLOADING), no_progress)

    assert outcome.error is None, outcome.error
    assert world.service.upload_urls_given == 1 + REFRESHES
    assert world.service.puts[-1] == f"https://store.test/bucket/x.mp4?sig={REFRESHES + 1}"


def test_download_gives_up_after_url_refresh_attempts_refreshes(world: World) -> None:
    world.service.download_expiries = 100

    outcome = world.runner.download(
        world.job(JobState.DOWNLOADING, project_id=PROJECT_ID), no_progress
    )

    assert isinstance(outcome.error, UrlExpiredError), outcome.error
    # the first fetch, then one per refresh; each download used the latest project's URL
    assert world.service.projects_given == 1 + REFRESHES
    assert world.service.gets == [
        f"https://cdn.test/out/x.mp4?sig={n}" for n in range(1, REFRESHES + 2)
    ]


def test_download_after_an_expired_url_uses_the_refetched_project(
    world: World, make_clip: ClipFactory
) -> None:
    world.service.video = make_clip("render.mp4", seconds=1.0).read_bytes()
    world.service.download_expiries = 1

    outcome = world.runner.download(
        world.job(JobState.DOWNLOADING, project_id=PROJECT_ID), no_progress
    )

    assert outcome.error is None, outcome.error
    assert world.service.gets == [
        "https://cdn.test/out/x.mp4?sig=1",
        "https://cdn.test/out/x.mp4?sig=2",
    ]
    (output,) = outcome.changes["outputs"]
    assert Path(output.temp_path).read_bytes() == world.service.video
    # the project as last fetched is the one reported
    assert outcome.changes["credits_final"] == 32
    assert outcome.project is not None and outcome.project.credits_charged == 32
