"""Promises kept on a bad day: a file settling when an outage starts is still taken, a stop
waits for a create in flight, and a wall-clock step back does not stall polling."""

from __future__ import annotations

import signal
import time
from collections.abc import Callable
from pathlib import Path

import pytest

from mh_watchd.adapters import config_file
from mh_watchd.adapters.journal import Journal
from mh_watchd.adapters.samples import synthesize_clip
from mh_watchd.core.jobs import JobState
from mh_watchd.daemon import Daemon
from mh_watchd.emulator import EmulatorServer
from tests.conftest import wait_for
from tests.e2e.conftest import TOKEN, DaemonProcess, Workspace, all_done, read_jobs, wait_jobs

pytestmark = pytest.mark.slow


def test_a_file_settling_when_an_outage_starts_is_taken_once_the_outage_ends(
    workspace: Workspace, emu: EmulatorServer, run_daemon: Callable[..., DaemonProcess]
) -> None:
    ws = workspace
    ws.extra_daemon = "rescan_seconds = 0.5"
    ws.folder("nas", style={"art_style": "Comic"}, mount_marker=".mounted", settle_seconds=6)
    marker = ws.inbox("nas") / ".mounted"
    marker.write_text("")
    proc = run_daemon()
    wait_for_log(proc, "daemon.started")
    synthesize_clip(ws.inbox("nas") / "a.mp4", seconds=1.0)
    written = time.time()
    # Two rescans see it while it settles, then the share "goes away" (its marker vanishes).
    wait_for(lambda: (last_scan(ws.state_dir) or 0) > written + 0.6, what="rescans while settling")
    assert time.time() - written < 4, "the rescans came too late for this test's premise"
    marker.unlink()
    wait_for_log(proc, "folder.outage_started")
    assert read_jobs(ws.state_dir) == []
    marker.write_text("")
    wait_jobs(ws.state_dir, all_done(1), proc=proc, timeout_seconds=30, what="taken after outage")
    assert proc.stop() == 0
    assert emu.state()["counts"]["create_requests"] == 1


def test_a_stop_waits_for_a_create_in_flight_so_it_is_not_left_ambiguous(
    workspace: Workspace, emu: EmulatorServer, run_daemon: Callable[..., DaemonProcess]
) -> None:
    ws = workspace
    ws.api_extra = "request_timeout_seconds = 40"  # the slow create must not time out
    ws.folder("anime", style={"art_style": "Comic"})
    synthesize_clip(ws.inbox("anime") / "a.mp4", seconds=1.0)
    # A create that takes 10 s: longer than the old fixed 8 s stop, well within the default
    # stop_grace_seconds (60).
    emu.set_faults({"rules": [{"route": "create", "fault": "slow", "delay": 10.0, "times": 1}]})
    proc = run_daemon()
    wait_jobs(
        ws.state_dir,
        lambda js: any(j.state is JobState.SUBMITTING for j in js),
        proc=proc,
        what="the create in flight",
    )
    proc.signal(signal.SIGTERM)
    assert proc.wait(timeout=30) == 0
    jobs = read_jobs(ws.state_dir)
    assert [j.state for j in jobs] == [JobState.RENDERING], [
        (j.hold_reason, j.last_error) for j in jobs
    ]
    assert jobs[0].project_id is not None
    proc = run_daemon()
    wait_jobs(ws.state_dir, all_done(1), proc=proc, what="delivery after the restart")
    assert proc.stop() == 0
    assert emu.state()["counts"]["create_requests"] == 1


def test_a_wall_clock_step_back_does_not_stall_polling(tmp_path: Path, emu: EmulatorServer) -> None:
    ws = Workspace(root=tmp_path / "ws", base_url=emu.base_url)
    ws.folder("anime", style={"art_style": "Comic"})
    ws.write_config()
    config = config_file.load(ws.config_path)
    step = {"seconds": 0.0}

    def wall() -> float:
        return time.time() - step["seconds"]

    daemon = Daemon.open(
        config,
        token=TOKEN,
        config_path=ws.config_path,
        environ={"MH_TEST_TOKEN": TOKEN},
        clock=wall,
    )
    daemon.start()
    try:
        synthesize_clip(ws.inbox("anime") / "a.mp4", seconds=1.0)
        journal = daemon.journal
        assert journal is not None

        def rendering() -> bool:
            return any(j.state is JobState.RENDERING for j in journal.jobs())

        assert daemon.run_until(rendering, 30)
        step["seconds"] = 3600.0  # NTP steps the clock back an hour mid-render
        assert daemon.run_until(
            lambda: any(j.state is JobState.DONE for j in journal.jobs()), 20
        ), [(j.state, j.due_at) for j in journal.jobs()]
    finally:
        daemon.shutdown()
    assert emu.state()["counts"]["create_requests"] == 1


def last_scan(state_dir: Path) -> float | None:
    """When the daemon last finished a full scan of folder "nas", as its journal says."""
    if not (state_dir / "journal.sqlite3").exists():
        return None
    journal = Journal.open(state_dir, readonly=True)
    try:
        status = journal.folder_statuses().get("nas")
    finally:
        journal.close()
    return status.last_scan_at if status else None


def wait_for_log(proc: DaemonProcess, event: str, *, timeout_seconds: float = 20.0) -> None:
    """Wait until the daemon's log holds `event`."""
    deadline = time.monotonic() + timeout_seconds
    while True:
        if f'"event": "{event}"' in proc.log_text():
            return
        if not proc.alive():
            pytest.fail(f"daemon exited waiting for {event}:\n{proc.log_text()[-3000:]}")
        if time.monotonic() > deadline:
            pytest.fail(f"no {event} within {timeout_seconds}s:\n{proc.log_text()[-3000:]}")
        time.sleep(0.05)
