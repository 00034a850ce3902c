"""Kill -9 at every state, a bad API day, and account problems: every file delivered once."""

from __future__ import annotations

import json
import os
import subprocess
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest

from mh_watchd.adapters.samples import synthesize_clip
from mh_watchd.core.jobs import HoldReason, JobState
from mh_watchd.emulator import EmulatorOptions, EmulatorServer
from tests.e2e.conftest import (
    SCRIPT,
    DaemonProcess,
    Workspace,
    all_done,
    read_jobs,
    wait_jobs,
)

pytestmark = pytest.mark.slow


def status_json(ws: Workspace) -> dict[str, Any]:
    result = subprocess.run(
        [SCRIPT, "status", "--json", "-c", str(ws.config_path)],
        capture_output=True,
        text=True,
        timeout=30,
        check=True,
    )
    data: dict[str, Any] = json.loads(result.stdout)
    return data


def outputs_of(ws: Workspace, folder: str) -> list[Path]:
    return sorted(p for p in ws.outbox(folder).rglob("*") if p.is_file())


@pytest.mark.parametrize(
    ("state", "fault"),
    [
        (JobState.UPLOADING, {"route": "upload", "fault": "slow", "delay": 4.0, "times": 1}),
        (JobState.RENDERING, {"route": "get", "fault": "slow", "delay": 2.0, "times": 2}),
        (JobState.DOWNLOADING, {"route": "download", "fault": "slow", "delay": 4.0, "times": 1}),
    ],
)
def test_kill_9_in_a_state_then_restart_delivers_exactly_once(
    state: JobState,
    fault: dict[str, object],
    workspace: Workspace,
    emu: EmulatorServer,
    run_daemon: Callable[..., DaemonProcess],
) -> None:
    ws = workspace
    ws.folder("anime", style={"art_style": "Pixar"})
    synthesize_clip(ws.inbox("anime") / "clip.mp4", seconds=1.0)
    emu.set_faults({"rules": [fault]})
    proc = run_daemon()
    wait_jobs(
        ws.state_dir,
        lambda jobs: any(j.state is state for j in jobs),
        proc=proc,
        what=f"a job in {state.value}",
    )
    data = status_json(ws)
    active = [j for j in data["active"] if j["state"] == state.value]
    assert active, data
    if state in (JobState.UPLOADING, JobState.DOWNLOADING):
        assert 0 <= active[0]["progress_percent"] <= 100
    if state is JobState.RENDERING:
        assert active[0]["render_seconds"] >= 0 and active[0]["project_id"]
    proc.kill()
    emu.set_faults({"rules": []})
    proc2 = run_daemon()
    jobs = wait_jobs(ws.state_dir, all_done(1), proc=proc2, what="delivery after SIGKILL")
    assert proc2.stop() == 0
    assert len(jobs) == 1
    assert emu.state()["counts"]["creates"] == 1
    assert [p.name for p in outputs_of(ws, "anime")] == ["clip.pixar.mp4"]
    assert (ws.inbox("anime") / ".mh-done" / "clip.mp4").exists()


def test_kill_9_inside_create_holds_ambiguous_and_retry_delivers(
    workspace: Workspace,
    emu: EmulatorServer,
    run_daemon: Callable[..., DaemonProcess],
    daemon_env: dict[str, str],
) -> None:
    ws = workspace
    ws.folder("anime", style={"art_style": "Clay"})
    synthesize_clip(ws.inbox("anime") / "clip.mp4", seconds=1.0)
    emu.set_faults({"rules": [{"route": "create", "fault": "slow", "delay": 3.0, "times": 1}]})
    proc = run_daemon()
    wait_jobs(
        ws.state_dir,
        lambda jobs: any(j.state is JobState.SUBMITTING for j in jobs),
        proc=proc,
        what="a create in flight",
    )
    proc.kill()
    proc2 = run_daemon()
    jobs = wait_jobs(
        ws.state_dir,
        lambda jobs: jobs[0].hold_reason is HoldReason.AMBIGUOUS_CREATE,
        proc=proc2,
        what="the job held as ambiguous_create",
    )
    # The slow create still committed at the service: one project, never silently resent.
    assert jobs[0].state is JobState.HELD
    assert emu.state()["counts"]["create_requests"] == 1
    result = subprocess.run(
        [SCRIPT, "retry", "-c", str(ws.config_path), str(jobs[0].id)],
        env=daemon_env,
        capture_output=True,
        text=True,
        timeout=30,
    )
    assert result.returncode == 0, result.stderr
    assert "anime/clip.mp4" in result.stdout  # the name to look for in the web app
    wait_jobs(ws.state_dir, all_done(1), proc=proc2, what="delivery after retry")
    assert proc2.stop() == 0
    assert emu.state()["counts"]["create_requests"] == 2
    assert [p.name for p in outputs_of(ws, "anime")] == ["clip.clay.mp4"]


def test_bad_api_day_every_file_delivered_without_a_double_create(
    workspace: Workspace, emu: EmulatorServer, run_daemon: Callable[..., DaemonProcess]
) -> None:
    ws = workspace
    ws.folder("anime", style={"art_style": "Lego"})
    names = [f"clip{i}.mp4" for i in range(5)]
    for i, name in enumerate(names):
        synthesize_clip(ws.inbox("anime") / name, seconds=1.0, hue=i * 40)
    rules: list[dict[str, object]] = []
    for route in ("create", "get", "upload_urls", "upload", "download"):
        rules.append({"route": route, "fault": "status", "status": 503, "rate": 0.2})
        rules.append(
            {"route": route, "fault": "status", "status": 429, "rate": 0.1, "retry_after": 0}
        )
    rules.append({"route": "upload", "fault": "reset", "rate": 0.3})
    rules.append({"route": "download", "fault": "truncate", "rate": 0.3})
    # A presigned download URL that expired answers 403: the daemon must GET fresh ones.
    rules.append({"route": "download", "fault": "status", "status": 403, "times": 2})
    emu.set_faults({"seed": 3, "rules": rules})
    proc = run_daemon()
    jobs = wait_jobs(ws.state_dir, all_done(5), proc=proc, timeout_seconds=150, what="5 deliveries")
    assert proc.stop() == 0
    state = emu.state()
    assert state["counts"]["creates"] == 5
    assert sorted(p["name"] for p in state["projects"]) == sorted(f"anime/{n}" for n in names)
    assert len(outputs_of(ws, "anime")) == 5
    assert all(j.state is JobState.DONE for j in jobs)
    assert "Traceback" not in proc.log_text()


def test_402_holds_the_queue_and_topping_up_releases_it(
    workspace: Workspace, emu: EmulatorServer, run_daemon: Callable[..., DaemonProcess]
) -> None:
    ws = workspace
    ws.folder("anime", style={"art_style": "Comic"})
    emu.set_credits(0)
    synthesize_clip(ws.inbox("anime") / "a.mp4", seconds=1.0)
    synthesize_clip(ws.inbox("anime") / "b.mp4", seconds=1.0)
    proc = run_daemon()
    wait_jobs(
        ws.state_dir,
        lambda jobs: len(jobs) == 2 and all(j.hold_reason is HoldReason.CREDITS for j in jobs),
        proc=proc,
        what="both jobs held for credits",
    )
    assert emu.state()["counts"]["creates"] == 0
    emu.set_credits(1_000_000)
    wait_jobs(ws.state_dir, all_done(2), proc=proc, what="delivery after top-up")
    assert proc.stop() == 0
    assert emu.state()["counts"]["creates"] == 2


def test_401_holds_and_a_fixed_key_resumes_after_restart(
    workspace: Workspace,
    tmp_path: Path,
    run_daemon: Callable[..., DaemonProcess],
    daemon_env: dict[str, str],
) -> None:
    with EmulatorServer(
        EmulatorOptions(
            token="mhk_live_right",
            queue_seconds=0.2,
            render_seconds=0.3,
            data_dir=tmp_path / "emu401",
        )
    ) as server:
        ws = workspace
        ws.base_url = server.base_url
        ws.folder("anime", style={"art_style": "Comic"})
        synthesize_clip(ws.inbox("anime") / "a.mp4", seconds=1.0)
        proc = run_daemon(dict(daemon_env, MH_TEST_TOKEN="mhk_live_wrong"))
        wait_jobs(
            ws.state_dir,
            lambda jobs: jobs[0].hold_reason is HoldReason.AUTH,
            proc=proc,
            what="the job held for auth",
        )
        assert proc.stop() == 0
        assert server.state()["counts"]["creates"] == 0
        assert "mhk_live_wrong" not in proc.log_text()
        proc2 = run_daemon(dict(daemon_env, MH_TEST_TOKEN="mhk_live_right"))
        wait_jobs(ws.state_dir, all_done(1), proc=proc2, what="delivery with the fixed key")
        assert proc2.stop() == 0
        assert server.state()["counts"]["creates"] == 1


def test_bad_inputs_are_ignored_failed_or_delivered_and_never_stop_the_daemon(
    workspace: Workspace,
    emu: EmulatorServer,
    run_daemon: Callable[..., DaemonProcess],
    tmp_path: Path,
) -> None:
    ws = workspace
    ws.folder("anime", style={"art_style": "Ink"}, recursive=True)
    inbox = ws.inbox("anime")
    (inbox / "notes.mp4").write_text("this is not a video\n" * 50)
    (inbox / "empty.mp4").write_bytes(b"")
    good = synthesize_clip(tmp_path / "full.mp4", seconds=1.0)
    data = good.read_bytes()
    (inbox / "truncated.mp4").write_bytes(data[: len(data) // 2])
    os.mkfifo(inbox / "pipe.mp4")
    outside = synthesize_clip(tmp_path / "outside" / "secret.mp4", seconds=1.0)
    outside_bytes = outside.read_bytes()
    (inbox / "link.mp4").symlink_to(outside)
    (inbox / "._resource.mp4").write_bytes(data)
    (inbox / ".DS_Store").write_bytes(b"\0\1")
    (inbox / "@eaDir").mkdir()
    (inbox / "@eaDir" / "thumb.mp4").write_bytes(data)
    (inbox / "copying.mp4.part").write_bytes(data)
    synthesize_clip(inbox / "Été à la plage 🌊.mp4", seconds=1.0)
    synthesize_clip(inbox / "holiday.mkv", seconds=1.0, with_audio=True)
    proc = run_daemon()
    wait_jobs(
        ws.state_dir,
        lambda jobs: len(jobs) == 4 and all(j.is_terminal for j in jobs),
        proc=proc,
        what="two failures and two deliveries",
    )
    assert proc.alive()
    assert proc.stop() == 0
    by_path = {j.rel_path: j for j in read_jobs(ws.state_dir)}
    assert by_path["notes.mp4"].state is JobState.FAILED
    assert by_path["truncated.mp4"].state is JobState.FAILED
    assert by_path["Été à la plage 🌊.mp4"].state is JobState.DONE
    assert by_path["holiday.mkv"].state is JobState.DONE
    failed_dir = inbox / ".mh-failed"
    for name in ("notes.mp4", "truncated.mp4"):
        assert (failed_dir / name).exists()
        report = json.loads((failed_dir / f"{name}.error.json").read_text())
        assert "not a readable video" in report["what_happened"]
        assert report["what_to_do"]
    # Only the two real videos reached the API.
    counts = emu.state()["counts"]
    assert counts["upload_urls"] == 2
    assert counts["creates"] == 2
    assert sorted(p.name for p in outputs_of(ws, "anime")) == [
        "holiday.ink.mp4",
        "Été à la plage 🌊.ink.mp4",
    ]
    # Everything else is exactly where it was.
    for name in ("empty.mp4", "pipe.mp4", "._resource.mp4", ".DS_Store", "copying.mp4.part"):
        assert os.path.lexists(inbox / name), name
    assert (inbox / "link.mp4").is_symlink()
    assert outside.read_bytes() == outside_bytes
    assert (inbox / "@eaDir" / "thumb.mp4").exists()
    assert "Traceback" not in proc.log_text()


def test_daily_credit_limit_holds_what_does_not_fit_and_fails_what_never_could(
    workspace: Workspace, emu: EmulatorServer, run_daemon: Callable[..., DaemonProcess]
) -> None:
    ws = workspace
    ws.extra_daemon = "daily_credit_limit = 50\nmax_active_renders = 1"
    ws.folder("anime", style={"art_style": "Comic"}, fps_resolution="HALF")
    synthesize_clip(ws.inbox("anime") / "a.mp4", seconds=1.0)  # estimate 30
    synthesize_clip(ws.inbox("anime") / "b.mp4", seconds=1.0)  # 30 more would pass 50
    synthesize_clip(ws.inbox("anime") / "long.mp4", seconds=3.0)  # estimate 90 > 50 alone
    proc = run_daemon()
    jobs = wait_jobs(
        ws.state_dir,
        lambda js: (
            len(js) == 3
            and sum(j.state is JobState.DONE for j in js) == 1
            and sum(j.hold_reason is HoldReason.DAILY_LIMIT for j in js) == 1
            and sum(j.state is JobState.FAILED for j in js) == 1
        ),
        proc=proc,
        what="one done, one held for the daily limit, one failed",
    )
    assert proc.stop() == 0
    failed = next(j for j in jobs if j.state is JobState.FAILED)
    assert failed.rel_path == "long.mp4"
    assert "over_daily_limit" in (failed.last_error or "")
    report = json.loads((ws.inbox("anime") / ".mh-failed" / "long.mp4.error.json").read_text())
    assert "daily_credit_limit" in report["what_happened"]
    counts = emu.state()["counts"]
    assert counts["creates"] == 1
    assert counts["upload_urls"] == 2  # the held one was uploaded, the failed one never
