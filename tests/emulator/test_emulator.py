"""The emulator over raw HTTP (httpx): validation, auth, presigned URLs, ledger, lifecycle,
rendering, faults, robustness, and the `run()` entry as a real process."""

from __future__ import annotations

import argparse
import hashlib
import json
import os
import re
import signal
import socket
import subprocess
import sys
import threading
import time
import tracemalloc
from collections.abc import Callable, Iterator
from concurrent.futures import ThreadPoolExecutor
from contextlib import ExitStack
from pathlib import Path
from typing import Any

import av
import httpx
import pytest

from mh_watchd.adapters.samples import synthesize_clip
from mh_watchd.core.api import ART_STYLES, estimate_credits
from mh_watchd.emulator import EmulatorOptions, EmulatorServer, add_arguments, run
from mh_watchd.emulator.render import output_size, render_video, style_filters
from tests.conftest import ClipFactory, wait_for

AUTH = {"Authorization": "Bearer mhk_live_test"}
PROJECT_KEYS = {
    "id", "name", "status", "type", "created_at", "width", "height", "enabled",
    "start_seconds", "end_seconds", "credits_charged", "total_frame_cost", "fps", "error",
    "downloads", "download",
}  # fmt: skip
ID_RE = re.compile(r"^c[a-z0-9]{24}$")

StartEmulator = Callable[..., EmulatorServer]


@pytest.fixture
def start_emulator(tmp_path: Path) -> Iterator[StartEmulator]:
    """Factory for emulators with fast timings (overridable); all stopped after the test."""
    with ExitStack() as stack:
        made = 0

        def start(**overrides: Any) -> EmulatorServer:
            nonlocal made
            made += 1
            fields: dict[str, Any] = {
                "queue_seconds": 0.05,
                "render_seconds": 0.1,
                "seed": 1,
                "data_dir": tmp_path / f"emulator-{made}",
            }
            fields.update(overrides)
            return stack.enter_context(EmulatorServer(EmulatorOptions(**fields)))

        yield start


@pytest.fixture
def emu(start_emulator: StartEmulator) -> EmulatorServer:
    return start_emulator()


@pytest.fixture
def api(emu: EmulatorServer) -> Iterator[httpx.Client]:
    with httpx.Client(base_url=emu.base_url, headers=AUTH, timeout=10) as client:
        yield client


def upload(client: httpx.Client, data: bytes, extension: str = "mp4") -> str:
    """Ask for an upload URL, PUT `data`, return the api-assets file_path."""
    answer = client.post(
        "/v1/files/upload-urls", json={"items": [{"extension": extension, "type": "video"}]}
    )
    assert answer.status_code == 200, answer.text
    item = answer.json()["items"][0]
    put = httpx.put(item["upload_url"], content=data)
    assert put.status_code == 200, put.text
    return str(item["file_path"])


def create_body(file_path: str, **overrides: Any) -> dict[str, Any]:
    body: dict[str, Any] = {
        "name": "folder/clip.mp4",
        "start_seconds": 0.0,
        "end_seconds": 1.0,
        "fps_resolution": "HALF",
        "assets": {"video_source": "file", "video_file_path": file_path},
        "style": {
            "art_style": "Studio Ghibli",
            "model": "default",
            "prompt": None,
            "prompt_type": "default",
            "version": "v2",
        },
    }
    body.update(overrides)
    return body


def create(client: httpx.Client, file_path: str, **overrides: Any) -> dict[str, Any]:
    answer = client.post("/v1/video-to-video", json=create_body(file_path, **overrides))
    assert answer.status_code == 200, answer.text
    return dict(answer.json())


def wait_project(client: httpx.Client, project_id: str, statuses: set[str]) -> dict[str, Any]:
    def reached() -> dict[str, Any] | None:
        body = client.get(f"/v1/video-projects/{project_id}").json()
        return body if body["status"] in statuses else None

    body = wait_for(reached, timeout_seconds=20, what=f"project in {statuses}")
    assert isinstance(body, dict)
    return body


@pytest.fixture(scope="module")
def clip_bytes(tmp_path_factory: pytest.TempPathFactory) -> bytes:
    """A real 2 s, 24 fps, 160x120 H.264 mp4, made once per module (synthesis is slow)."""
    path = tmp_path_factory.mktemp("clips") / "clip.mp4"
    return synthesize_clip(path, seconds=2.0, fps=24).read_bytes()


@pytest.fixture
def completed(api: httpx.Client, clip_bytes: bytes) -> dict[str, Any]:
    """A project rendered to completion: its GET body plus the asset's file_path."""
    file_path = upload(api, clip_bytes)
    project_id = create(api, file_path)["id"]
    body = wait_project(api, project_id, {"complete"})
    body["file_path"] = file_path
    return body


def decode(data_or_path: bytes | Path, tmp_path: Path) -> tuple[float, float, int, int, int]:
    """Return (duration, fps, frames, width, height) of a video given as bytes or a path."""
    path = data_or_path if isinstance(data_or_path, Path) else tmp_path / "decoded.mp4"
    if isinstance(data_or_path, bytes):
        path.write_bytes(data_or_path)
    with av.open(str(path)) as container:
        stream = container.streams.video[0]
        frames = sum(1 for _ in container.decode(stream))
        assert container.duration is not None
        return (
            container.duration / 1_000_000,
            float(stream.average_rate or 0),
            frames,
            stream.width,
            stream.height,
        )


# -- validation and auth -------------------------------------------------------------------


@pytest.mark.parametrize(
    ("change", "status", "named"),
    [
        (lambda b: b.pop("end_seconds"), 400, "end_seconds is required"),
        (lambda b: b.update(end_seconds=0.5, start_seconds=0.5), 400, "end_seconds"),
        (lambda b: b.update(end_seconds=0.05, start_seconds=0.0), 400, "end_seconds"),
        (lambda b: b.update(start_seconds=-1), 400, "start_seconds"),
        (lambda b: b["style"].update(art_style="Studio Gibli"), 400, "style.art_style"),
        (lambda b: b["style"].update(prompt_type="custom"), 400, "style.prompt"),
        (lambda b: b["style"].update(prompt_type="append_default"), 400, "style.prompt"),
        (lambda b: b["style"].update(model="Nope"), 400, "style.model"),
        (lambda b: b.update(fps_resolution="QUARTER"), 400, "fps_resolution"),
        (lambda b: b.pop("style"), 400, "style is required"),
        (lambda b: b["assets"].pop("video_source"), 400, "assets.video_source"),
        (lambda b: b["assets"].pop("video_file_path"), 400, "assets.video_file_path"),
        (
            lambda b: b["assets"].update(video_file_path="api-assets/x/never-issued.mp4"),
            400,
            "assets.video_file_path",
        ),
        (
            lambda b: b["assets"].update(video_file_path="https://example.com/a.mp4"),
            422,
            "assets.video_file_path",
        ),
    ],
)
def test_create_rejects_a_bad_body_naming_the_field_and_charges_nothing(
    emu: EmulatorServer,
    api: httpx.Client,
    clip_bytes: bytes,
    change: Callable[[dict[str, Any]], object],
    status: int,
    named: str,
) -> None:
    body = create_body(upload(api, clip_bytes))
    change(body)
    answer = api.post("/v1/video-to-video", json=body)
    assert answer.status_code == status
    assert answer.headers["content-type"] == "application/json"
    assert named in answer.json()["message"]
    state = emu.state()
    assert state["projects"] == []
    assert state["credits"] == EmulatorOptions().credits
    assert state["counts"]["create_requests"] == 1
    assert state["counts"]["creates"] == 0


def test_end_before_start_message_names_both_fields(api: httpx.Client, clip_bytes: bytes) -> None:
    answer = api.post(
        "/v1/video-to-video",
        json=create_body(upload(api, clip_bytes), start_seconds=1.0, end_seconds=0.5),
    )
    assert answer.status_code == 400
    assert "end_seconds" in answer.json()["message"]
    assert "greater than start_seconds" in answer.json()["message"]


def test_studio_ghibli_accepts_every_version(api: httpx.Client, clip_bytes: bytes) -> None:
    file_path = upload(api, clip_bytes)
    for version in ("default", "v1", "v2"):
        style = {"art_style": "Studio Ghibli", "version": version}
        assert ID_RE.match(create(api, file_path, style=style)["id"])


def test_malformed_json_is_400_and_the_server_keeps_serving(api: httpx.Client) -> None:
    for body in (b"{not json", b"[1, 2]", b"\xff\xfe"):
        answer = api.post(
            "/v1/video-to-video", content=body, headers={"Content-Type": "application/json"}
        )
        assert answer.status_code == 400
        assert "message" in answer.json()
    assert api.get("/v1/account").status_code == 200


@pytest.mark.parametrize(
    ("path", "body"),
    [
        ("/v1/files/upload-urls", {"items": [{"extension": "mp4", "type": ["video"]}]}),
        ("/v1/files/upload-urls", {"items": [{"extension": {"a": 1}, "type": "video"}]}),
        ("/v1/files/upload-urls", {"items": "mp4"}),
        ("/v1/files/upload-urls", {"items": [None]}),
        ("/v1/video-to-video", {"start_seconds": "0", "end_seconds": 1}),
        ("/v1/video-to-video", {"assets": {"video_source": ["file"]}}),
        ("/v1/video-to-video", {"assets": [], "style": "Pixar"}),
        ("/v1/video-to-video", {"name": 5}),
        ("/_emulator/credits", {"credits": -1}),
        ("/_emulator/credits", {"credits": True}),
        ("/_emulator/faults", {"rules": {"route": "get"}}),
        ("/_emulator/projects/cunknown000000000000000000", {"status": "deleted"}),
    ],
)
def test_oddly_typed_bodies_get_a_4xx_never_a_500(
    emu: EmulatorServer, api: httpx.Client, path: str, body: dict[str, Any]
) -> None:
    answer = api.post(path, json=body)
    assert 400 <= answer.status_code < 500, answer.text
    assert answer.json()["message"]
    assert api.get("/v1/account").status_code == 200


def test_upload_urls_refuse_non_video_extensions_with_422_listing_the_allowed(
    api: httpx.Client,
) -> None:
    answer = api.post(
        "/v1/files/upload-urls", json={"items": [{"extension": "mkv", "type": "video"}]}
    )
    assert answer.status_code == 422
    message = answer.json()["message"]
    assert "mkv" in message
    for allowed in ("mp4", "m4v", "mov", "webm"):
        assert allowed in message
    upper = api.post(
        "/v1/files/upload-urls", json={"items": [{"extension": "MOV", "type": "video"}]}
    )
    assert upper.status_code == 400
    assert "items[0].extension" in upper.json()["message"]
    missing = api.post("/v1/files/upload-urls", json={})
    assert missing.status_code == 400
    assert "items" in missing.json()["message"]


def test_upload_urls_come_back_in_request_order_with_all_keys(api: httpx.Client) -> None:
    answer = api.post(
        "/v1/files/upload-urls",
        json={"items": [{"extension": e, "type": "video"} for e in ("mp4", "mov", "webm")]},
    )
    items = answer.json()["items"]
    assert [i["file_path"].rsplit(".", 1)[1] for i in items] == ["mp4", "mov", "webm"]
    for item in items:
        assert set(item) == {"upload_url", "file_path", "expires_at"}
        assert item["file_path"].startswith("api-assets/")
        assert item["upload_url"].startswith(api.base_url.__str__().rstrip("/") + "/_uploads/")


@pytest.mark.parametrize(
    ("method", "path"),
    [
        ("POST", "/v1/files/upload-urls"),
        ("POST", "/v1/video-to-video"),
        ("GET", "/v1/video-projects/cxxxxxxxxxxxxxxxxxxxxxxxx"),
        ("DELETE", "/v1/video-projects/cxxxxxxxxxxxxxxxxxxxxxxxx"),
        ("GET", "/v1/account"),
    ],
)
def test_every_v1_route_answers_401_without_authorization(
    emu: EmulatorServer, method: str, path: str
) -> None:
    with httpx.Client(base_url=emu.base_url) as bare:
        answer = bare.request(method, path, json={})
        assert answer.status_code == 401
        assert answer.json() == {"message": "Unauthorized"}
        assert answer.headers["content-type"] == "application/json"
        blank = bare.request(method, path, json={}, headers={"Authorization": "Bearer"})
        assert blank.status_code == 401


def test_with_a_token_set_only_that_key_is_accepted(start_emulator: StartEmulator) -> None:
    server = start_emulator(token="mhk_live_right")
    with httpx.Client(base_url=server.base_url) as client:
        wrong = client.get("/v1/account", headers={"Authorization": "Bearer mhk_live_wrong"})
        assert wrong.status_code == 401
        right = client.get("/v1/account", headers={"Authorization": "Bearer mhk_live_right"})
        assert right.status_code == 200
        assert right.json()["credits"] == EmulatorOptions().credits
        assert set(right.json()) == {"id", "email", "credits", "tier", "subscription"}


def test_unknown_routes_and_projects_are_404_not_found(api: httpx.Client) -> None:
    for path in ("/v1/nothing-here", "/v1/video-projects/cunknown000000000000000000"):
        answer = api.get(path)
        assert answer.status_code == 404
        assert answer.json() == {"message": "Not Found"}


# -- presigned URLs ------------------------------------------------------------------------


def test_chunked_put_is_refused_with_501_and_nothing_is_stored(
    emu: EmulatorServer, api: httpx.Client, clip_bytes: bytes
) -> None:
    item = api.post(
        "/v1/files/upload-urls", json={"items": [{"extension": "mp4", "type": "video"}]}
    ).json()["items"][0]

    def chunks() -> Iterator[bytes]:
        yield clip_bytes[:1000]
        yield clip_bytes[1000:]

    answer = httpx.put(item["upload_url"], content=chunks())
    assert answer.status_code == 501
    assert "Content-Length" in answer.json()["message"]
    refused = api.post("/v1/video-to-video", json=create_body(item["file_path"]))
    assert refused.status_code == 400
    assert "not been uploaded" in refused.json()["message"]
    # The same URL still takes a proper PUT.
    assert httpx.put(item["upload_url"], content=clip_bytes).status_code == 200
    assert emu.state()["counts"]["uploads"] == 1


def test_only_a_stored_upload_counts_as_an_upload(
    emu: EmulatorServer, api: httpx.Client, clip_bytes: bytes
) -> None:
    item = api.post(
        "/v1/files/upload-urls", json={"items": [{"extension": "mp4", "type": "video"}]}
    ).json()["items"][0]

    def chunks() -> Iterator[bytes]:
        yield clip_bytes

    assert httpx.put(item["upload_url"], content=chunks()).status_code == 501
    counts = emu.state()["counts"]
    assert (counts["uploads"], counts["upload_requests"]) == (0, 1)
    assert httpx.put(item["upload_url"], content=clip_bytes).status_code == 200
    counts = emu.state()["counts"]
    assert (counts["uploads"], counts["upload_requests"]) == (1, 2)


def test_an_expired_upload_url_answers_403(
    start_emulator: StartEmulator, clip_bytes: bytes
) -> None:
    server = start_emulator(url_ttl_seconds=0.3)
    with httpx.Client(base_url=server.base_url, headers=AUTH) as client:
        item = client.post(
            "/v1/files/upload-urls", json={"items": [{"extension": "mp4", "type": "video"}]}
        ).json()["items"][0]
        wait_for(
            lambda: httpx.put(item["upload_url"], content=b"x").status_code == 403,
            timeout_seconds=5,
            what="the upload URL to expire",
        )
        answer = httpx.put(item["upload_url"], content=clip_bytes)
        assert answer.status_code == 403
        assert answer.headers["content-type"] == "application/json"


def test_an_expired_download_url_answers_403_and_a_get_gives_a_fresh_one(
    start_emulator: StartEmulator, clip_bytes: bytes, tmp_path: Path
) -> None:
    server = start_emulator(url_ttl_seconds=1.0)
    with httpx.Client(base_url=server.base_url, headers=AUTH) as client:
        project_id = create(client, upload(client, clip_bytes))["id"]
        first = wait_project(client, project_id, {"complete"})["downloads"][0]["url"]
        wait_for(
            lambda: httpx.get(first).status_code == 403,
            timeout_seconds=5,
            what="the download URL to expire",
        )
        fresh = client.get(f"/v1/video-projects/{project_id}").json()["downloads"][0]["url"]
        assert fresh != first
        answer = httpx.get(fresh)
        assert answer.status_code == 200
        assert answer.headers["content-length"] == str(len(answer.content))
        assert decode(answer.content, tmp_path)[2] == 12


def test_uploads_are_streamed_to_disk_not_held_in_memory(
    emu: EmulatorServer, api: httpx.Client
) -> None:
    size = 24 * 1024 * 1024
    block = os.urandom(1024 * 1024)
    item = api.post(
        "/v1/files/upload-urls", json={"items": [{"extension": "mp4", "type": "video"}]}
    ).json()["items"][0]

    def body() -> Iterator[bytes]:
        for _ in range(size // len(block)):
            yield block

    tracemalloc.start()
    try:
        answer = httpx.put(
            item["upload_url"], content=body(), headers={"Content-Length": str(size)}
        )
        _, peak = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
    assert answer.status_code == 200
    assert peak < 8 * 1024 * 1024, f"peak {peak} bytes while receiving {size}"
    stored = list((emu.options.data_dir or Path()).joinpath("uploads").glob("*.mp4"))
    assert len(stored) == 1
    assert stored[0].stat().st_size == size
    expected = hashlib.sha256(block * (size // len(block))).hexdigest()
    assert hashlib.sha256(stored[0].read_bytes()).hexdigest() == expected


# -- lifecycle, ledger, delete -------------------------------------------------------------


def test_a_project_goes_queued_rendering_complete_with_all_16_keys(
    start_emulator: StartEmulator, clip_bytes: bytes, tmp_path: Path
) -> None:
    server = start_emulator(queue_seconds=0.3, render_seconds=0.3)
    with httpx.Client(base_url=server.base_url, headers=AUTH) as client:
        created = create(client, upload(client, clip_bytes), start_seconds=0.5, end_seconds=1.5)
        assert ID_RE.match(created["id"])
        seen: list[str] = []

        def complete() -> bool:
            body = client.get(f"/v1/video-projects/{created['id']}").json()
            assert set(body) == PROJECT_KEYS
            if not seen or seen[-1] != body["status"]:
                seen.append(body["status"])
            return bool(body["status"] == "complete")

        wait_for(complete, timeout_seconds=20, what="completion")
        assert seen == ["queued", "rendering", "complete"]
        body = client.get(f"/v1/video-projects/{created['id']}").json()
        assert body["type"] == "VIDEO_TO_VIDEO"
        assert (body["width"], body["height"], body["fps"]) == (128, 64, 12.0)
        assert body["download"] == body["downloads"][0]
        video = httpx.get(body["download"]["url"])
        duration, fps, frames, width, height = decode(video.content, tmp_path)
        assert duration == pytest.approx(1.0, abs=0.1)
        assert (fps, frames, width, height) == (12, 12, 128, 64)


def test_create_charges_the_estimate_and_completion_settles_to_rendered_frames(
    start_emulator: StartEmulator, clip_bytes: bytes
) -> None:
    server = start_emulator(credits=1000)
    with httpx.Client(base_url=server.base_url, headers=AUTH) as client:
        created = create(client, upload(client, clip_bytes))
        estimate = estimate_credits(1.0, "HALF")
        assert created["credits_charged"] == created["estimated_frame_cost"] == estimate == 30
        assert client.get("/v1/account").json()["credits"] == 1000 - estimate
        body = wait_project(client, created["id"], {"complete"})
        # 24 fps input, HALF: 12 output frames at two credits each.
        assert body["credits_charged"] == body["total_frame_cost"] == 24
        assert client.get("/v1/account").json()["credits"] == 1000 - 24
        assert server.state()["projects"][0]["credits_charged"] == 24


def test_a_short_balance_is_402_and_creates_nothing(
    emu: EmulatorServer, api: httpx.Client, clip_bytes: bytes
) -> None:
    file_path = upload(api, clip_bytes)
    emu.set_credits(29)
    answer = api.post("/v1/video-to-video", json=create_body(file_path))
    assert answer.status_code == 402
    assert answer.json() == {"message": "Payment required"}
    state = emu.state()
    assert state["credits"] == 29
    assert state["projects"] == []
    assert (state["counts"]["create_requests"], state["counts"]["creates"]) == (1, 0)
    control = httpx.post(f"{emu.base_url}/_emulator/credits", json={"credits": 30})
    assert control.status_code == 200
    assert create(api, file_path)["credits_charged"] == 30
    assert emu.state()["credits"] == 0


def test_forcing_an_error_through_the_control_route_refunds_the_charge(
    start_emulator: StartEmulator, clip_bytes: bytes
) -> None:
    server = start_emulator(credits=100, queue_seconds=30)
    with httpx.Client(base_url=server.base_url, headers=AUTH) as client:
        project_id = create(client, upload(client, clip_bytes))["id"]
        assert server.state()["credits"] == 70
        error = {"code": "processing_timeout", "message": "took too long"}
        forced = httpx.post(
            f"{server.base_url}/_emulator/projects/{project_id}",
            json={"status": "error", "error": error},
        )
        assert forced.status_code == 200
        body = client.get(f"/v1/video-projects/{project_id}").json()
        assert body["status"] == "error"
        assert body["error"] == error
        assert body["credits_charged"] == 0
        assert body["downloads"] == []
        assert client.get("/v1/account").json()["credits"] == 100


def test_force_end_canceled_refunds_and_unknown_ids_raise(
    emu: EmulatorServer, api: httpx.Client, clip_bytes: bytes
) -> None:
    project_id = create(api, upload(api, clip_bytes))["id"]
    emu.force_end(project_id, "canceled")
    body = api.get(f"/v1/video-projects/{project_id}").json()
    assert (body["status"], body["error"], body["credits_charged"]) == ("canceled", None, 0)
    assert emu.state()["credits"] == EmulatorOptions().credits
    with pytest.raises(KeyError):
        emu.force_end("cunknown000000000000000000", "error")
    with pytest.raises(ValueError, match="status"):
        emu.force_end(project_id, "complete")


def test_an_upload_that_does_not_decode_ends_in_invalid_video_file_refunded(
    emu: EmulatorServer, api: httpx.Client
) -> None:
    created = create(api, upload(api, b"this is not a video at all" * 100))
    assert created["credits_charged"] == 30
    body = wait_project(api, created["id"], {"error", "complete"})
    assert body["status"] == "error"
    assert body["error"]["code"] == "invalid_video_file"
    assert body["credits_charged"] == 0
    assert emu.state()["credits"] == EmulatorOptions().credits


def test_delete_is_204_then_the_project_and_its_download_are_404(
    api: httpx.Client, completed: dict[str, Any]
) -> None:
    url = completed["downloads"][0]["url"]
    assert httpx.get(url).status_code == 200
    deleted = api.delete(f"/v1/video-projects/{completed['id']}")
    assert deleted.status_code == 204
    assert deleted.content == b""
    assert api.get(f"/v1/video-projects/{completed['id']}").status_code == 404
    assert httpx.get(url).status_code == 404
    assert api.delete(f"/v1/video-projects/{completed['id']}").status_code == 404


# -- rendering -----------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("size", "tier", "expected"),
    [
        ((1280, 720), "free", (576, 320)),
        ((720, 1280), "free", (320, 576)),
        ((1920, 1080), "creator", (1024, 576)),
        ((1920, 1080), "pro", (1472, 768)),
        ((160, 120), "creator", (128, 64)),
        ((100, 40), "free", (64, 64)),
    ],
)
def test_output_size_caps_the_long_edge_and_floors_sides_to_64(
    size: tuple[int, int], tier: str, expected: tuple[int, int]
) -> None:
    assert output_size(*size, tier) == expected


def test_a_1280x720_input_on_the_free_tier_renders_576x320(
    start_emulator: StartEmulator, make_clip: ClipFactory, tmp_path: Path
) -> None:
    server = start_emulator(tier="free")
    # Two frames: synthesizing big frames in pure Python is the slow part of this test.
    clip = make_clip("big.mp4", seconds=0.5, fps=4, width=1280, height=720)
    with httpx.Client(base_url=server.base_url, headers=AUTH) as client:
        file_path = upload(client, clip.read_bytes())
        created = create(client, file_path, end_seconds=0.5, fps_resolution="FULL")
        body = wait_project(client, created["id"], {"complete"})
        assert (body["width"], body["height"], body["fps"]) == (576, 320, 4.0)
        video = httpx.get(body["downloads"][0]["url"]).content
    duration, fps, frames, width, height = decode(video, tmp_path)
    assert (width, height) == (576, 320)
    assert (fps, frames) == (4, 2)
    assert duration == pytest.approx(0.5, abs=0.1)


def _first_frame_rgb(path: Path, size: tuple[int, int] | None = None) -> bytes:
    with av.open(str(path)) as container:
        frame = next(container.decode(video=0))
        if size is not None:
            frame = frame.reformat(width=size[0], height=size[1])
        return bytes(frame.to_rgb().planes[0])


def _mean_difference(a: bytes, b: bytes) -> float:
    assert len(a) == len(b)
    return sum(abs(x - y) for x, y in zip(a, b, strict=True)) / len(a)


def test_art_styles_give_visibly_different_pixels(make_clip: ClipFactory, tmp_path: Path) -> None:
    clip = make_clip("styles.mp4", seconds=0.5, fps=8)
    frames: dict[str, bytes] = {}
    for style in ("Studio Ghibli", "Van Gogh", "Pixar"):
        out = tmp_path / f"{style}.mp4"
        result = render_video(
            clip,
            out,
            start_seconds=0.0,
            end_seconds=0.5,
            fps_resolution="FULL",
            art_style=style,
            tier="creator",
        )
        assert result.frames == 4
        frames[style] = _first_frame_rgb(out)
    original = _first_frame_rgb(clip, (128, 64))
    for style, rgb in frames.items():
        assert _mean_difference(rgb, original) > 10, f"{style} barely changed the input"
    assert _mean_difference(frames["Studio Ghibli"], frames["Van Gogh"]) > 10
    assert _mean_difference(frames["Van Gogh"], frames["Pixar"]) > 10
    assert len({str(style_filters(style)) for style in ART_STYLES}) == len(ART_STYLES)


# -- faults --------------------------------------------------------------------------------


def _route_request(
    route: str, api: httpx.Client, completed: dict[str, Any], clip_bytes: bytes
) -> Callable[[], httpx.Response]:
    """Return a callable making one request on `route` (fresh upload slot for `upload`)."""
    if route == "upload_urls":
        return lambda: api.post(
            "/v1/files/upload-urls", json={"items": [{"extension": "mp4", "type": "video"}]}
        )
    if route == "create":
        return lambda: api.post("/v1/video-to-video", json=create_body(completed["file_path"]))
    if route == "get":
        return lambda: api.get(f"/v1/video-projects/{completed['id']}")
    if route == "download":
        return lambda: api.get(completed["downloads"][0]["url"])
    url = api.post(
        "/v1/files/upload-urls", json={"items": [{"extension": "mp4", "type": "video"}]}
    ).json()["items"][0]["upload_url"]
    return lambda: api.put(url, content=clip_bytes)


ROUTES = ("create", "get", "upload_urls", "upload", "download")


@pytest.mark.parametrize("route", ROUTES)
def test_status_fault_answers_that_status_with_retry_after_then_recovers(
    emu: EmulatorServer,
    api: httpx.Client,
    completed: dict[str, Any],
    clip_bytes: bytes,
    route: str,
) -> None:
    request = _route_request(route, api, completed, clip_bytes)
    emu.set_faults(
        {
            "rules": [
                {"route": route, "fault": "status", "status": 503, "times": 2, "retry_after": 2}
            ]
        }
    )
    for _ in range(2):
        answer = request()
        assert answer.status_code == 503
        assert answer.headers["retry-after"] == "2"
        assert answer.headers["content-type"] == "application/json"
        assert "message" in answer.json()
    assert request().status_code == 200


@pytest.mark.parametrize("route", ROUTES)
def test_reset_fault_drops_the_connection_without_an_answer(
    emu: EmulatorServer,
    api: httpx.Client,
    completed: dict[str, Any],
    clip_bytes: bytes,
    route: str,
) -> None:
    request = _route_request(route, api, completed, clip_bytes)
    before = emu.state()
    emu.set_faults({"rules": [{"route": route, "fault": "reset", "times": 1}]})
    with pytest.raises(httpx.TransportError):
        request()
    after = emu.state()
    assert after["counts"]["creates"] == before["counts"]["creates"]
    assert after["credits"] == before["credits"]
    assert request().status_code == 200


def test_reset_mid_upload_leaves_the_asset_unusable(emu: EmulatorServer, api: httpx.Client) -> None:
    item = api.post(
        "/v1/files/upload-urls", json={"items": [{"extension": "mp4", "type": "video"}]}
    ).json()["items"][0]
    emu.set_faults({"rules": [{"route": "upload", "fault": "reset", "times": 1}]})
    with pytest.raises(httpx.TransportError):
        httpx.put(item["upload_url"], content=os.urandom(4 * 1024 * 1024))
    refused = api.post("/v1/video-to-video", json=create_body(item["file_path"]))
    assert refused.status_code == 400
    uploads_dir = (emu.options.data_dir or Path()) / "uploads"
    assert list(uploads_dir.iterdir()) == []


def test_slow_fault_delays_then_answers_normally_and_a_slow_create_commits(
    emu: EmulatorServer, api: httpx.Client, completed: dict[str, Any]
) -> None:
    emu.set_faults(
        {
            "rules": [
                {"route": "get", "fault": "slow", "delay": 0.4, "times": 1},
                {"route": "create", "fault": "slow", "delay": 0.4, "times": 1},
            ]
        }
    )
    started = time.monotonic()
    assert api.get(f"/v1/video-projects/{completed['id']}").status_code == 200
    assert time.monotonic() - started >= 0.4
    started = time.monotonic()
    with pytest.raises(httpx.ReadTimeout):
        api.post("/v1/video-to-video", json=create_body(completed["file_path"]), timeout=0.1)
    wait_for(lambda: emu.state()["counts"]["creates"] == 2, timeout_seconds=5, what="commit")
    assert time.monotonic() - started >= 0.35


def test_truncate_fault_sends_full_length_but_half_the_body(
    emu: EmulatorServer, api: httpx.Client, completed: dict[str, Any]
) -> None:
    url = completed["downloads"][0]["url"]
    full = httpx.get(url).content
    emu.set_faults({"rules": [{"route": "download", "fault": "truncate", "times": 1}]})
    received = bytearray()
    with pytest.raises(httpx.RemoteProtocolError), httpx.stream("GET", url) as answer:
        assert answer.status_code == 200
        assert answer.headers["content-length"] == str(len(full))
        for piece in answer.iter_raw():
            received += piece
    assert bytes(received) == full[: len(full) // 2]
    assert httpx.get(url).content == full
    assert emu.state()["counts"]["downloads"] == 3


def test_after_commit_fault_creates_and_charges_but_never_answers(
    emu: EmulatorServer, api: httpx.Client, clip_bytes: bytes
) -> None:
    file_path = upload(api, clip_bytes)
    emu.set_faults({"rules": [{"route": "create", "fault": "after_commit", "times": 1}]})
    with pytest.raises(httpx.TransportError):
        api.post("/v1/video-to-video", json=create_body(file_path))
    state = emu.state()
    assert (state["counts"]["create_requests"], state["counts"]["creates"]) == (1, 1)
    [project] = state["projects"]
    assert project["credits_charged"] == 30
    assert state["credits"] == EmulatorOptions().credits - 30
    # The project lives on and renders like any other.
    assert wait_project(api, project["id"], {"complete"})["status"] == "complete"
    # A validation failure does not consume the rule's turn: only commits do.
    emu.set_faults({"rules": [{"route": "create", "fault": "after_commit", "times": 1}]})
    assert (
        api.post("/v1/video-to-video", json=create_body(file_path, end_seconds=0)).status_code
        == 400
    )
    with pytest.raises(httpx.TransportError):
        api.post("/v1/video-to-video", json=create_body(file_path))
    counts = emu.state()["counts"]
    assert (counts["create_requests"], counts["creates"]) == (3, 2)


def test_rate_faults_are_deterministic_for_a_seed(
    emu: EmulatorServer, api: httpx.Client, completed: dict[str, Any]
) -> None:
    plan = {"seed": 7, "rules": [{"route": "get", "fault": "status", "status": 502, "rate": 0.5}]}

    def pattern() -> list[int]:
        emu.set_faults(plan)
        return [api.get(f"/v1/video-projects/{completed['id']}").status_code for _ in range(16)]

    first = pattern()
    assert set(first) == {200, 502}
    assert pattern() == first


def test_faults_posted_to_the_control_route_apply_and_bad_plans_are_400(
    emu: EmulatorServer, api: httpx.Client
) -> None:
    control = f"{emu.base_url}/_emulator/faults"
    bad = httpx.post(control, json={"rules": [{"route": "get", "fault": "explode"}]})
    assert bad.status_code == 400
    assert "rules[0].fault" in bad.json()["message"]
    wrong_route = httpx.post(control, json={"rules": [{"route": "get", "fault": "truncate"}]})
    assert wrong_route.status_code == 400
    with pytest.raises(ValueError, match=r"rules\[0\]\.status"):
        emu.set_faults({"rules": [{"route": "get", "fault": "status"}]})
    rule = {"route": "upload_urls", "fault": "status", "status": 429, "times": 1}
    assert httpx.post(control, json={"rules": [rule]}).status_code == 200
    body = {"items": [{"extension": "mp4", "type": "video"}]}
    assert api.post("/v1/files/upload-urls", json=body).status_code == 429
    assert api.post("/v1/files/upload-urls", json=body).status_code == 200
    assert emu.state()["counts"]["upload_urls"] == 2


# -- robustness ----------------------------------------------------------------------------


def test_many_concurrent_clients_are_all_served(
    emu: EmulatorServer, completed: dict[str, Any]
) -> None:
    def client_session(index: int) -> list[int]:
        statuses = []
        with httpx.Client(base_url=emu.base_url, headers=AUTH, timeout=20) as client:
            for _ in range(5):
                statuses.append(client.get(f"/v1/video-projects/{completed['id']}").status_code)
                statuses.append(client.get("/v1/account").status_code)
        return statuses

    with ThreadPoolExecutor(max_workers=24) as pool:
        results = list(pool.map(client_session, range(24)))
    assert all(status == 200 for statuses in results for status in statuses)
    assert emu.state()["counts"]["gets"] >= 24 * 5


def test_garbage_on_the_socket_gets_an_answer_and_breaks_nothing(
    emu: EmulatorServer, api: httpx.Client
) -> None:
    host, port = emu.base_url.removeprefix("http://").split(":")
    with socket.create_connection((host, int(port)), timeout=5) as raw:
        raw.sendall(b"\x00\x01 nonsense that is not http\r\n\r\n")
        reply = raw.recv(4096)
    assert reply.startswith(b"HTTP/1.1 400")
    with socket.create_connection((host, int(port)), timeout=5) as raw:
        raw.sendall(b"POST /v1/video-to-video HTTP/1.1\r\nContent-Length: nope\r\n\r\n")
        reply = raw.recv(4096)
    assert reply.startswith(b"HTTP/1.1 400")
    assert api.get("/v1/account").status_code == 200


def test_stop_closes_idle_keep_alive_connections_and_joins_threads(
    tmp_path: Path,
) -> None:
    server = EmulatorServer(EmulatorOptions(data_dir=tmp_path / "d"))
    server.start()
    with httpx.Client(base_url=server.base_url, headers=AUTH) as client:
        assert client.get("/v1/account").status_code == 200
        started = time.monotonic()
        server.stop()
        assert time.monotonic() - started < 5
        with pytest.raises(httpx.TransportError):
            client.get("/v1/account")
    assert not [t for t in threading.enumerate() if t.name.startswith("emulator-")]


def test_a_temporary_data_dir_is_removed_on_stop() -> None:
    server = EmulatorServer(EmulatorOptions())
    server.start()
    data_dir = server.store.data_dir
    assert data_dir.is_dir()
    server.stop()
    assert not data_dir.exists()


def test_bad_options_are_refused_before_anything_starts() -> None:
    with pytest.raises(ValueError, match="tier"):
        EmulatorServer(EmulatorOptions(tier="business"))
    with pytest.raises(ValueError, match="faults"):
        EmulatorServer(EmulatorOptions(faults={"rulez": []}))


# -- run() ---------------------------------------------------------------------------------


def _args(*argv: str) -> argparse.Namespace:
    parser = argparse.ArgumentParser()
    add_arguments(parser)
    return parser.parse_args(list(argv))


def test_run_exits_64_for_bad_faults_or_tier(
    capsys: pytest.CaptureFixture[str], tmp_path: Path
) -> None:
    assert run(_args("--faults", "{nope")) == 64
    assert "--faults" in capsys.readouterr().err
    assert run(_args("--faults", f"@{tmp_path / 'missing.json'}")) == 64
    assert "cannot read" in capsys.readouterr().err
    assert run(_args("--tier", "gold")) == 64
    assert "tier" in capsys.readouterr().err


def test_run_exits_69_when_the_port_is_taken(capsys: pytest.CaptureFixture[str]) -> None:
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        port = taken.getsockname()[1]
        assert run(_args("--port", str(port))) == 69
    captured = capsys.readouterr()
    assert captured.out == ""
    assert "cannot listen" in captured.err


def test_run_as_a_process_prints_the_url_first_and_exits_0_on_sigterm(tmp_path: Path) -> None:
    faults = tmp_path / "faults.json"
    faults.write_text(json.dumps({"rules": [{"route": "get", "fault": "status", "status": 500}]}))
    process = subprocess.Popen(
        [sys.executable, "-m", "mh_watchd.emulator", "--port", "0",
         "--token", "mhk_live_x", "--credits", "77", "--faults", f"@{faults}"],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )  # fmt: skip
    try:
        assert process.stdout is not None
        first = process.stdout.readline().strip()
        assert re.fullmatch(r"http://127\.0\.0\.1:\d+", first), first
        with httpx.Client(base_url=first) as client:
            account = client.get("/v1/account", headers={"Authorization": "Bearer mhk_live_x"})
            assert account.json()["credits"] == 77
            assert client.get("/v1/account").status_code == 401
            faulted = client.get(
                "/v1/video-projects/cxxxxxxxxxxxxxxxxxxxxxxxx",
                headers={"Authorization": "Bearer mhk_live_x"},
            )
            assert faulted.status_code == 500
        process.send_signal(signal.SIGTERM)
        out, err = process.communicate(timeout=15)
    finally:
        if process.poll() is None:
            process.kill()
            process.communicate()
    assert process.returncode == 0
    assert out == ""
    assert err == "", "the emulator must be quiet: no per-request log lines"
