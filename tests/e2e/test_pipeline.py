"""The daemon end to end: inbox -> emulator -> outbox, as a user runs it."""

from __future__ import annotations

import signal
from collections.abc import Callable
from pathlib import Path

import av
import pytest

from mh_watchd.adapters.samples import synthesize_clip
from mh_watchd.core.jobs import JobState
from mh_watchd.emulator import EmulatorServer
from tests.e2e.conftest import DaemonProcess, Workspace, all_done, read_jobs, wait_jobs

pytestmark = pytest.mark.slow


def decode(path: Path) -> tuple[float, float, int]:
    """(duration seconds, fps, frames decoded) of a video file."""
    with av.open(str(path)) as container:
        stream = container.streams.video[0]
        frames = sum(1 for _ in container.decode(stream))
        fps = float(stream.average_rate or 0)
        duration = frames / fps if fps else 0.0
    return duration, fps, frames


def test_two_folders_two_styles_deliver_once_each_with_their_style_and_fps(
    workspace: Workspace, emu: EmulatorServer, run_daemon: Callable[..., DaemonProcess]
) -> None:
    ws = workspace
    ws.styles = '[styles.ghibli]\nart_style = "Studio Ghibli"\n'
    ws.folder("anime", style="ghibli", fps_resolution="HALF", recursive=True)
    ws.folder("paint", style={"art_style": "Oil Painting"}, fps_resolution="FULL")
    synthesize_clip(ws.inbox("anime") / "beach day.mp4", seconds=1.5, fps=24)
    synthesize_clip(ws.inbox("anime") / "trip" / "IMG_0001.MOV", seconds=1.0, fps=24)
    synthesize_clip(ws.inbox("paint") / "garden.mp4", seconds=1.0, fps=24)
    originals = {
        p.name: p.read_bytes()
        for p in [
            ws.inbox("anime") / "beach day.mp4",
            ws.inbox("anime") / "trip" / "IMG_0001.MOV",
            ws.inbox("paint") / "garden.mp4",
        ]
    }
    proc = run_daemon()
    jobs = wait_jobs(ws.state_dir, all_done(3), proc=proc, what="three deliveries")
    assert proc.stop() == 0

    expected = {
        ws.outbox("anime") / "beach day.studio-ghibli.mp4": (1.5, 12.0),
        ws.outbox("anime") / "trip" / "IMG_0001.studio-ghibli.mp4": (1.0, 12.0),
        ws.outbox("paint") / "garden.oil-painting.mp4": (1.0, 24.0),
    }
    for path, (seconds, fps) in expected.items():
        assert path.exists(), f"missing output {path}"
        duration, got_fps, _ = decode(path)
        assert got_fps == pytest.approx(fps)
        assert duration == pytest.approx(seconds, abs=0.2)
    # Nothing else in the outboxes: no temp files, no duplicates.
    outputs = sorted(p for p in ws.root.rglob("*") if "/out/" in str(p) and p.is_file())
    assert sorted(expected) == outputs

    state = emu.state()
    assert state["counts"]["creates"] == 3
    assert state["counts"]["create_requests"] == 3
    by_name = {p["name"]: p for p in state["projects"]}
    assert by_name["anime/beach day.mp4"]["style"]["art_style"] == "Studio Ghibli"
    assert by_name["anime/beach day.mp4"]["style"]["version"] == "v2"
    assert by_name["anime/beach day.mp4"]["fps_resolution"] == "HALF"
    assert by_name["anime/trip/IMG_0001.MOV"]["fps_resolution"] == "HALF"
    assert by_name["paint/garden.mp4"]["style"]["art_style"] == "Oil Painting"
    assert by_name["paint/garden.mp4"]["fps_resolution"] == "FULL"

    # Originals were archived byte for byte, mirroring their relative paths.
    assert (ws.inbox("anime") / ".mh-done" / "beach day.mp4").read_bytes() == originals[
        "beach day.mp4"
    ]
    assert (ws.inbox("anime") / ".mh-done" / "trip" / "IMG_0001.MOV").read_bytes() == originals[
        "IMG_0001.MOV"
    ]
    assert not (ws.inbox("paint") / "garden.mp4").exists()
    assert all(j.state is JobState.DONE and j.credits_charged for j in jobs)
    assert "Traceback" not in proc.log_text()


def test_sigterm_mid_work_exits_zero_quickly_and_a_restart_finishes(
    workspace: Workspace, emu: EmulatorServer, run_daemon: Callable[..., DaemonProcess]
) -> None:
    ws = workspace
    ws.folder("anime", style={"art_style": "Comic"})
    emu.set_faults({"rules": [{"route": "upload", "fault": "slow", "delay": 3.0, "times": 1}]})
    synthesize_clip(ws.inbox("anime") / "a.mp4", seconds=1.0)
    proc = run_daemon()
    wait_jobs(
        ws.state_dir,
        lambda jobs: any(j.state is JobState.UPLOADING for j in jobs),
        proc=proc,
        what="an upload in flight",
    )
    proc.signal(signal.SIGTERM)
    assert proc.wait(timeout=10) == 0
    proc2 = run_daemon()
    wait_jobs(ws.state_dir, all_done(1), proc=proc2, what="delivery after restart")
    assert proc2.stop() == 0
    assert emu.state()["counts"]["creates"] == 1
    assert len(read_jobs(ws.state_dir)) == 1
