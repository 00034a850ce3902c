"""The emulator's request log (`GET /_emulator/requests`): when each answered API request came."""

from __future__ import annotations

import time
from pathlib import Path

import httpx

from mh_watchd.emulator import EmulatorOptions, EmulatorServer
from tests.conftest import ClipFactory, wait_for

AUTH = {"Authorization": "Bearer mhk_live_test"}


def _create_body(file_path: str) -> dict[str, object]:
    return {
        "name": "folder/clip.mp4",
        "start_seconds": 0.0,
        "end_seconds": 1.0,
        "fps_resolution": "HALF",
        "assets": {"video_source": "file", "video_file_path": file_path},
        "style": {"art_style": "Studio Ghibli", "version": "v2"},
    }


def test_the_log_holds_each_answered_request_in_order_with_wall_clock_times(
    emulator: EmulatorServer, make_clip: ClipFactory
) -> None:
    clip = make_clip("clip.mp4", seconds=1.0)
    before = time.time()
    with httpx.Client(base_url=emulator.base_url, headers=AUTH, timeout=10) as client:
        item = client.post(
            "/v1/files/upload-urls", json={"items": [{"extension": "mp4", "type": "video"}]}
        ).json()["items"][0]
        assert httpx.put(item["upload_url"], content=clip.read_bytes()).status_code == 200
        project_id = client.post("/v1/video-to-video", json=_create_body(item["file_path"])).json()[
            "id"
        ]

        def complete() -> dict[str, object] | None:
            body = client.get(f"/v1/video-projects/{project_id}").json()
            return body if body["status"] == "complete" else None

        body = wait_for(complete, timeout_seconds=20, what="completion")
        assert isinstance(body, dict)
        assert httpx.get(body["download"]["url"]).status_code == 200
        after = time.time()
        served = client.get("/_emulator/requests")

    assert served.status_code == 200
    log = served.json()["requests"]
    assert log == emulator.requests()
    routes = [entry["route"] for entry in log]
    assert routes[:3] == ["upload_urls", "upload", "create"]
    assert routes[-1] == "download"
    assert set(routes[3:-1]) == {"get"}
    assert [e["status"] for e in log if e["route"] == "get"][-1] == "complete"
    assert {e["status"] for e in log if e["route"] == "get"} <= {"queued", "rendering", "complete"}
    assert all(e["project_id"] == project_id for e in log[2:])
    assert all(e["project_id"] is None and e["status"] is None for e in log[:2])
    times = [e["at"] for e in log]
    assert times == sorted(times)
    assert before <= times[0] and times[-1] <= after


def test_refused_and_faulted_requests_are_counted_but_not_logged(tmp_path: Path) -> None:
    options = EmulatorOptions(
        faults={"rules": [{"route": "get", "fault": "status", "status": 503, "times": 1}]},
        data_dir=tmp_path / "data",
    )
    with (
        EmulatorServer(options) as server,
        httpx.Client(base_url=server.base_url, headers=AUTH, timeout=10) as client,
    ):
        assert client.get("/v1/video-projects/cunknownprojectid00000000").status_code == 503
        assert client.get("/v1/video-projects/cunknownprojectid00000000").status_code == 404
        assert client.post("/v1/files/upload-urls", json={"items": []}).status_code >= 400
        assert server.state()["counts"]["gets"] == 2
        assert client.get("/_emulator/requests").json() == {"requests": []}
