"""MagicHourClient against the project's own emulator, over real loopback HTTP.

The client's unit tests use httpx.MockTransport; these prove the same classification holds
when the faults are real dropped connections, short bodies and statuses from a live server,
and check the emulator's request counts to show what reached it (a create is never resent
after it may have landed).
"""

from __future__ import annotations

import hashlib
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import av
import pytest

from mh_watchd.adapters.magic_hour import MagicHourClient, build_http_client
from mh_watchd.core import backoff
from mh_watchd.core.api import CreateRequest, Project, Style, estimate_credits
from mh_watchd.core.errors import (
    AmbiguousCreateError,
    AuthError,
    CreditsError,
    NotFoundError,
    RefusedError,
    TransientApiError,
    UrlExpiredError,
)
from mh_watchd.emulator import EmulatorOptions, EmulatorServer
from tests.conftest import ClipFactory, wait_for

TOKEN = "mhk_test_0123456789abcdef"
START_SECONDS = 0.5
END_SECONDS = 1.5


@pytest.fixture
def sleeps() -> list[float]:
    """The waits the client asked for; recorded instead of slept, so retries are instant."""
    return []


@pytest.fixture
def client(emulator: EmulatorServer, sleeps: list[float]) -> Iterator[MagicHourClient]:
    """A client on the `emulator` fixture, over a real httpx.Client closed after the test."""
    with build_http_client() as http:
        yield MagicHourClient(http, base_url=emulator.base_url, token=TOKEN, sleep=sleeps.append)


@pytest.fixture
def clip(make_clip: ClipFactory) -> Path:
    """A real 2 s, 24 fps, 160x120 mp4."""
    return make_clip("clip.mp4", seconds=2.0, fps=24)


def uploaded(client: MagicHourClient, clip: Path) -> str:
    """Upload `clip` through the client; return its `api-assets/...` file_path."""
    target = client.request_upload_url("mp4")
    client.upload(target.upload_url, clip)
    return target.file_path


def create_request(file_path: str) -> CreateRequest:
    """A 1 s HALF-rate Studio Ghibli create for an uploaded asset."""
    return CreateRequest(
        name="anime/clip.mp4",
        file_path=file_path,
        start_seconds=START_SECONDS,
        end_seconds=END_SECONDS,
        fps_resolution="HALF",
        style=Style(art_style="Studio Ghibli", version="v2"),
    )


def counts(emulator: EmulatorServer) -> dict[str, int]:
    """The emulator's request counters."""
    result: dict[str, int] = emulator.state()["counts"]
    return result


def fault(route: str, kind: str, **rule: Any) -> dict[str, Any]:
    """A one-rule fault plan."""
    return {"rules": [{"route": route, "fault": kind, **rule}]}


def completed_project(client: MagicHourClient, project_id: str) -> Project:
    """Poll `get_project` until the project is terminal; return it (asserted complete)."""
    latest: list[Project] = []

    def terminal() -> bool:
        latest.append(client.get_project(project_id))
        return latest[-1].is_terminal

    wait_for(terminal, timeout_seconds=15, what=f"project {project_id} to finish")
    assert latest[-1].status == "complete", latest[-1]
    return latest[-1]


def video_seconds(path: Path) -> float:
    """The container duration of a video file, in seconds (PyAV)."""
    with av.open(str(path)) as container:
        assert container.streams.video, "no video stream"
        assert container.duration is not None
        frames = sum(1 for _ in container.decode(video=0))
        assert frames > 0
        return container.duration / 1_000_000


# -- the whole round trip ---------------------------------------------------------------------


def test_happy_path_uploads_creates_polls_and_downloads_a_real_trimmed_video(
    client: MagicHourClient, emulator: EmulatorServer, clip: Path, tmp_path: Path
) -> None:
    target = client.request_upload_url("MP4")
    assert target.file_path.endswith(".mp4")
    sent = client.upload(target.upload_url, clip)
    assert sent.size == clip.stat().st_size
    assert sent.sha256 == hashlib.sha256(clip.read_bytes()).hexdigest()

    created = client.create(create_request(target.file_path))
    estimate = estimate_credits(END_SECONDS - START_SECONDS, "HALF")
    assert created.credits_charged == estimate
    assert created.estimated_frame_cost == estimate

    project = completed_project(client, created.id)
    assert project.id == created.id
    assert project.name == "anime/clip.mp4"
    assert project.download is not None and project.downloads == (project.download,)

    dest = tmp_path / "out.mp4"
    got = client.download(project.download.url, dest)
    data = dest.read_bytes()
    assert got.size == len(data) > 0
    assert got.sha256 == hashlib.sha256(data).hexdigest()
    assert video_seconds(dest) == pytest.approx(END_SECONDS - START_SECONDS, abs=0.25)

    seen = counts(emulator)
    assert seen["creates"] == 1
    assert seen["create_requests"] == 1
    assert seen["uploads"] == 1
    assert seen["downloads"] == 1


# -- create: ambiguous outcomes are never resent ----------------------------------------------


def test_create_connection_reset_is_ambiguous_and_never_resent(
    client: MagicHourClient, emulator: EmulatorServer, clip: Path
) -> None:
    file_path = uploaded(client, clip)
    emulator.set_faults(fault("create", "reset", times=1))
    with pytest.raises(AmbiguousCreateError) as caught:
        client.create(create_request(file_path))
    assert caught.value.operation == "create"
    assert caught.value.status is None
    assert counts(emulator)["create_requests"] == 1


def test_create_dropped_after_commit_is_ambiguous_though_the_project_exists_and_is_charged(
    client: MagicHourClient, emulator: EmulatorServer, clip: Path
) -> None:
    file_path = uploaded(client, clip)
    before = emulator.state()["credits"]
    emulator.set_faults(fault("create", "after_commit"))
    with pytest.raises(AmbiguousCreateError):
        client.create(create_request(file_path))
    state = emulator.state()
    estimate = estimate_credits(END_SECONDS - START_SECONDS, "HALF")
    assert state["counts"]["creates"] == 1
    assert state["counts"]["create_requests"] == 1
    assert state["credits"] == before - estimate
    [project] = state["projects"]
    assert project["file_path"] == file_path
    assert project["credits_charged"] == estimate


def test_create_answered_500_is_ambiguous_and_never_resent(
    client: MagicHourClient, emulator: EmulatorServer, clip: Path
) -> None:
    file_path = uploaded(client, clip)
    emulator.set_faults(fault("create", "status", status=500, times=1))
    with pytest.raises(AmbiguousCreateError) as caught:
        client.create(create_request(file_path))
    assert caught.value.status == 500
    assert counts(emulator)["create_requests"] == 1
    assert counts(emulator)["creates"] == 0


# -- create: refusals are retried in the request ----------------------------------------------


def test_create_refused_503_twice_succeeds_on_the_third_request(
    client: MagicHourClient, emulator: EmulatorServer, clip: Path, sleeps: list[float]
) -> None:
    file_path = uploaded(client, clip)
    emulator.set_faults(fault("create", "status", status=503, times=2))
    created = client.create(create_request(file_path))
    assert created.id
    seen = counts(emulator)
    assert seen["create_requests"] == 3
    assert seen["creates"] == 1
    assert sleeps == [backoff.request_wait_seconds(1), backoff.request_wait_seconds(2)]


def test_create_refused_429_with_retry_after_0_succeeds_on_the_second_request(
    client: MagicHourClient, emulator: EmulatorServer, clip: Path, sleeps: list[float]
) -> None:
    file_path = uploaded(client, clip)
    emulator.set_faults(fault("create", "status", status=429, retry_after=0, times=1))
    created = client.create(create_request(file_path))
    assert created.id
    seen = counts(emulator)
    assert seen["create_requests"] == 2
    assert seen["creates"] == 1
    assert sleeps == [0.0]  # the service's Retry-After, not the policy's own wait


def test_create_refused_503_every_time_raises_refused_after_request_attempts(
    client: MagicHourClient, emulator: EmulatorServer, clip: Path
) -> None:
    file_path = uploaded(client, clip)
    emulator.set_faults(fault("create", "status", status=503))
    with pytest.raises(RefusedError) as caught:
        client.create(create_request(file_path))
    assert caught.value.status == 503
    seen = counts(emulator)
    assert seen["create_requests"] == backoff.REQUEST_ATTEMPTS
    assert seen["creates"] == 0


# -- safe routes and presigned transfers ------------------------------------------------------


def test_get_answered_500_once_is_retried_and_succeeds(
    client: MagicHourClient, emulator: EmulatorServer, clip: Path
) -> None:
    created = client.create(create_request(uploaded(client, clip)))
    emulator.set_faults(fault("get", "status", status=500, times=1))
    project = client.get_project(created.id)
    assert project.id == created.id
    assert counts(emulator)["gets"] == 2


def test_truncated_download_is_transient_and_the_partial_file_is_short(
    client: MagicHourClient, emulator: EmulatorServer, clip: Path, tmp_path: Path
) -> None:
    created = client.create(create_request(uploaded(client, clip)))
    project = completed_project(client, created.id)
    assert project.download is not None
    # A clean download first gives the real length to compare the short one with.
    full = client.download(project.download.url, tmp_path / "full.mp4")
    assert full.size == (tmp_path / "full.mp4").stat().st_size > 0

    emulator.set_faults(fault("download", "truncate"))
    partial = tmp_path / "partial.mp4"
    with pytest.raises(TransientApiError) as caught:
        client.download(project.download.url, partial)
    assert caught.value.operation == "download"
    assert str(full.size) in str(caught.value)  # the error names the length it expected
    assert counts(emulator)["downloads"] == 1 + backoff.REQUEST_ATTEMPTS
    # Whatever was left at dest is shorter than the real output, never a complete-looking file.
    assert not partial.exists() or partial.stat().st_size < full.size


def test_upload_reset_once_is_retried_transparently(
    client: MagicHourClient, emulator: EmulatorServer, clip: Path
) -> None:
    target = client.request_upload_url("mp4")
    emulator.set_faults(fault("upload", "reset", times=1))
    sent = client.upload(target.upload_url, clip)
    assert sent.size == clip.stat().st_size
    assert sent.sha256 == hashlib.sha256(clip.read_bytes()).hexdigest()
    # Two requests reached the emulator (the reset one and the retry); one upload was stored.
    assert counts(emulator)["upload_requests"] == 2
    assert counts(emulator)["uploads"] == 1
    # The asset is usable: the emulator accepts a create for it.
    assert client.create(create_request(target.file_path)).id


# -- account and identity errors --------------------------------------------------------------


def test_create_without_credits_raises_credits_error_and_creates_nothing(
    client: MagicHourClient, emulator: EmulatorServer, clip: Path
) -> None:
    file_path = uploaded(client, clip)
    emulator.set_credits(0)
    with pytest.raises(CreditsError) as caught:
        client.create(create_request(file_path))
    assert caught.value.status == 402
    seen = counts(emulator)
    assert seen["create_requests"] == 1
    assert seen["creates"] == 0


def test_wrong_token_raises_auth_error_that_never_shows_the_token(tmp_path: Path) -> None:
    wrong = "mhk_live_wrong_5ecret_token_text"
    options = EmulatorOptions(token="mhk_live_right", data_dir=tmp_path / "emulator-right")
    with EmulatorServer(options) as server, build_http_client() as http:
        bad = MagicHourClient(http, base_url=server.base_url, token=wrong, sleep=lambda s: None)
        good = MagicHourClient(
            http, base_url=server.base_url, token="mhk_live_right", sleep=lambda s: None
        )
        assert good.request_upload_url("mp4").file_path  # the server does accept its key
        for call in (lambda: bad.request_upload_url("mp4"), bad.get_account):
            with pytest.raises(AuthError) as caught:
                call()
            assert caught.value.status == 401
            for text in (str(caught.value), repr(caught.value), repr(bad)):
                assert wrong not in text
                assert "5ecret" not in text


def test_unknown_project_raises_not_found_with_the_service_message(
    client: MagicHourClient, emulator: EmulatorServer
) -> None:
    with pytest.raises(NotFoundError) as caught:
        client.get_project("cnosuchproject00000000000")
    assert caught.value.status == 404
    assert caught.value.service_message == "Not Found"
    assert counts(emulator)["gets"] == 1


def test_an_expired_upload_url_raises_url_expired(clip: Path, tmp_path: Path) -> None:
    ttl = 0.2
    options = EmulatorOptions(url_ttl_seconds=ttl, data_dir=tmp_path / "emulator-ttl")
    with EmulatorServer(options) as server, build_http_client() as http:
        client = MagicHourClient(http, base_url=server.base_url, token=TOKEN, sleep=lambda s: None)
        target = client.request_upload_url("mp4")
        # The URL was issued before this moment, so it is surely dead once `ttl` has passed.
        issued_by = time.monotonic()
        wait_for(
            lambda: time.monotonic() > issued_by + ttl + 0.05,
            timeout_seconds=5,
            what="the upload URL to expire",
        )
        with pytest.raises(UrlExpiredError) as caught:
            client.upload(target.upload_url, clip)
        assert caught.value.status == 403
        assert server.state()["counts"]["upload_requests"] == 1
        assert server.state()["counts"]["uploads"] == 0
