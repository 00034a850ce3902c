"""The official magic_hour SDK (0.90.0), unchanged, against the emulator on loopback."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path
from typing import Any

import av
import httpx
import magic_hour
import pytest

from mh_watchd.emulator import EmulatorOptions, EmulatorServer
from tests.conftest import ClipFactory


@pytest.fixture
def http() -> Iterator[httpx.Client]:
    """The SDK's transport, closed after the test (the SDK never closes its own)."""
    with httpx.Client(timeout=30) as client:
        yield client


def _sdk(server: EmulatorServer, http: httpx.Client, token: str = "mhk_live_test") -> Any:
    return magic_hour.Client(token=token, base_url=server.base_url, httpx_client=http)


def _decoded(path: Path) -> tuple[float, float, int]:
    """Return (duration seconds, fps, decoded frame count) of a video file."""
    with av.open(str(path)) as container:
        stream = container.streams.video[0]
        frames = sum(1 for _ in container.decode(stream))
        assert container.duration is not None
        return container.duration / 1_000_000, float(stream.average_rate or 0), frames


@pytest.mark.parametrize(("fps_resolution", "expected_fps"), [("HALF", 12), ("FULL", 24)])
def test_sdk_generate_uploads_renders_and_downloads_a_trimmed_video(
    emulator: EmulatorServer,
    http: httpx.Client,
    make_clip: ClipFactory,
    tmp_path: Path,
    fps_resolution: str,
    expected_fps: int,
) -> None:
    clip = make_clip("input.mp4", seconds=2.0, fps=24)
    out_dir = tmp_path / "downloads"
    out_dir.mkdir()
    client = _sdk(emulator, http)

    result = client.v1.video_to_video.generate(
        assets={"video_source": "file", "video_file_path": str(clip)},
        start_seconds=0.5,
        end_seconds=1.5,
        fps_resolution=fps_resolution,
        style={"art_style": "Studio Ghibli", "version": "v2"},
        name="sdk/input.mp4",
        wait_for_completion=True,
        download_outputs=True,
        download_directory=str(out_dir),
    )

    assert result.status == "complete"
    assert result.downloaded_paths and len(result.downloaded_paths) == 1
    duration, fps, frames = _decoded(Path(result.downloaded_paths[0]))
    assert duration == pytest.approx(1.0, abs=0.15)
    assert fps == expected_fps
    assert frames == expected_fps
    assert result.fps == expected_fps
    state = emulator.state()
    assert state["counts"]["uploads"] == 1
    assert state["counts"]["creates"] == 1
    [project] = state["projects"]
    assert project["name"] == "sdk/input.mp4"
    assert project["file_path"].startswith("api-assets/")


def test_sdk_sees_401_for_a_wrong_key(http: httpx.Client, tmp_path: Path) -> None:
    options = EmulatorOptions(token="mhk_live_right", data_dir=tmp_path / "data")
    with EmulatorServer(options) as server:
        with pytest.raises(magic_hour.ApiError) as caught:
            _sdk(server, http, token="mhk_live_wrong").v1.account.list()
        assert caught.value.status_code == 401
        assert caught.value.body == {"message": "Unauthorized"}
        account = _sdk(server, http, token="mhk_live_right").v1.account.list()
        assert account.credits == options.credits
        assert account.tier == "creator"


def test_sdk_sees_404_not_found_for_an_unknown_project(
    emulator: EmulatorServer, http: httpx.Client
) -> None:
    with pytest.raises(magic_hour.ApiError) as caught:
        _sdk(emulator, http).v1.video_projects.get(id="cunknownprojectid00000000")
    assert caught.value.status_code == 404
    assert caught.value.body == {"message": "Not Found"}
