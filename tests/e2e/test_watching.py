"""Intake as a NAS needs it: slow copies, renames, polling, outages, presets, missed events."""

from __future__ import annotations

import json
import os
import queue
import subprocess
import time
from collections.abc import Callable
from pathlib import Path

import av
import pytest

from mh_watchd.adapters import config_file
from mh_watchd.adapters.fs import LocalFileSystem
from mh_watchd.adapters.samples import synthesize_clip
from mh_watchd.core.jobs import JobState
from mh_watchd.daemon import Daemon
from mh_watchd.emulator import EmulatorServer
from tests.e2e.conftest import (
    SCRIPT,
    TOKEN,
    DaemonProcess,
    Workspace,
    all_done,
    read_jobs,
    wait_jobs,
)

pytestmark = pytest.mark.slow


def duration_of(path: Path) -> float:
    with av.open(str(path)) as container:
        stream = container.streams.video[0]
        frames = sum(1 for _ in container.decode(stream))
        return frames / float(stream.average_rate or 1)


def test_a_file_copied_slowly_into_the_inbox_makes_one_job_with_its_full_length(
    workspace: Workspace,
    emu: EmulatorServer,
    run_daemon: Callable[..., DaemonProcess],
    tmp_path: Path,
) -> None:
    ws = workspace
    ws.extra_daemon = ""
    ws.folder("anime", style={"art_style": "Comic"}, fps_resolution="FULL", settle_seconds=1.0)
    source = synthesize_clip(tmp_path / "src.mp4", seconds=2.0, fps=24)
    data = source.read_bytes()
    proc = run_daemon()
    wait_jobs_started(ws)
    target = ws.inbox("anime") / "slow.mp4"
    chunk = max(1, len(data) // 8)
    with open(target, "wb") as out:
        for start in range(0, len(data), chunk):
            out.write(data[start : start + chunk])
            out.flush()
            time.sleep(0.4)  # a slow SMB copy: pauses shorter than settle_seconds
    jobs = wait_jobs(ws.state_dir, all_done(1), proc=proc, what="the slow copy delivered")
    assert proc.stop() == 0
    assert len(jobs) == 1
    assert jobs[0].size == len(data)
    assert emu.state()["counts"]["creates"] == 1
    assert duration_of(ws.outbox("anime") / "slow.comic.mp4") == pytest.approx(2.0, abs=0.1)


def test_a_file_renamed_into_the_inbox_is_queued_within_settle_plus_a_fraction(
    workspace: Workspace, emu: EmulatorServer, run_daemon: Callable[..., DaemonProcess]
) -> None:
    ws = workspace
    ws.folder("anime", style={"art_style": "Comic"}, settle_seconds=0.5)
    ws.extra_daemon = ""
    staged = synthesize_clip(ws.root / "staging" / "ready.mp4", seconds=1.0)
    proc = run_daemon()
    wait_jobs_started(ws)
    time.sleep(0.5)  # let the watcher settle in before the rename we time
    renamed_at = time.time()
    os.rename(staged, ws.inbox("anime") / "ready.mp4")
    jobs = wait_jobs(ws.state_dir, lambda js: len(js) == 1, proc=proc, what="the job")
    delay = jobs[0].created_at - renamed_at
    assert proc.stop() == 0
    # settle 0.5 s plus the stat passes (two observations) and the probe.
    assert delay < 0.5 + 1.5, f"queued {delay:.2f} s after the rename"


def test_polling_mode_delivers(
    workspace: Workspace, emu: EmulatorServer, run_daemon: Callable[..., DaemonProcess]
) -> None:
    ws = workspace
    ws.folder("anime", style={"art_style": "Comic"}, observer="polling", recursive=True)
    proc = run_daemon()
    wait_jobs_started(ws)
    synthesize_clip(ws.inbox("anime") / "sub" / "a.mp4", seconds=1.0)
    wait_jobs(ws.state_dir, all_done(1), proc=proc, what="a delivery while polling")
    status = status_json(ws)
    assert proc.stop() == 0
    assert status["folders"][0]["watch_mode"] == "polling"
    assert (ws.outbox("anime") / "sub" / "a.comic.mp4").exists()


def test_subfolder_presets_route_to_their_style(
    workspace: Workspace, emu: EmulatorServer, run_daemon: Callable[..., DaemonProcess]
) -> None:
    ws = workspace
    ws.styles = (
        '[styles.ghibli]\nart_style = "Studio Ghibli"\n[styles.vangogh]\nart_style = "Van Gogh"\n'
    )
    ws.folder("mixed", style={"art_style": "Comic"}, recursive=True)
    synthesize_clip(ws.inbox("mixed") / "Ghibli" / "a.mp4", seconds=1.0)
    synthesize_clip(ws.inbox("mixed") / "vangogh" / "b.mp4", seconds=1.0)
    synthesize_clip(ws.inbox("mixed") / "other" / "c.mp4", seconds=1.0)
    proc = run_daemon()
    wait_jobs(ws.state_dir, all_done(3), proc=proc, what="three deliveries")
    assert proc.stop() == 0
    styles = {p["name"]: p["style"]["art_style"] for p in emu.state()["projects"]}
    assert styles == {
        "mixed/Ghibli/a.mp4": "Studio Ghibli",
        "mixed/vangogh/b.mp4": "Van Gogh",
        "mixed/other/c.mp4": "Comic",
    }
    assert (ws.outbox("mixed") / "Ghibli" / "a.studio-ghibli.mp4").exists()
    assert (ws.outbox("mixed") / "vangogh" / "b.van-gogh.mp4").exists()


def test_inbox_renamed_away_is_an_outage_and_work_resumes_when_it_returns(
    workspace: Workspace,
    emu: EmulatorServer,
    run_daemon: Callable[..., DaemonProcess],
) -> None:
    ws = workspace
    ws.extra_daemon = "max_parallel_uploads = 1"
    ws.folder("nas", style={"art_style": "Comic"})
    synthesize_clip(ws.inbox("nas") / "a.mp4", seconds=1.0)
    synthesize_clip(ws.inbox("nas") / "b.mp4", seconds=1.0)
    emu.set_faults({"rules": [{"route": "upload", "fault": "slow", "delay": 3.0, "times": 1}]})
    proc = run_daemon()
    wait_jobs(
        ws.state_dir,
        lambda jobs: len(jobs) == 2 and any(j.state is JobState.UPLOADING for j in jobs),
        proc=proc,
        what="one upload in flight and one queued",
    )
    away = ws.root / "nas-away"
    os.rename(ws.root / "nas" / "in", away)

    def outage_shown() -> dict[str, object] | None:
        data = status_json(ws)
        return data if data["folders"][0]["outage"] else None

    from tests.conftest import wait_for

    data = wait_for(outage_shown, timeout_seconds=20, what="the outage in status --json")
    assert isinstance(data, dict)
    # The upload in flight ends during the outage: both jobs wait, held, none failed.
    jobs = wait_jobs(
        ws.state_dir,
        lambda js: all(j.state is JobState.HELD for j in js),
        proc=proc,
        what="both jobs held for the outage",
    )
    assert {j.hold_reason.value for j in jobs if j.hold_reason} == {"outage"}
    assert emu.state()["counts"]["creates"] == 0
    os.rename(away, ws.root / "nas" / "in")
    wait_jobs(ws.state_dir, all_done(2), proc=proc, what="both delivered after the outage")
    synthesize_clip(ws.inbox("nas") / "c.mp4", seconds=1.0)
    wait_jobs(ws.state_dir, all_done(3), proc=proc, what="a new file after the outage")
    assert proc.stop() == 0
    assert emu.state()["counts"]["creates"] == 3
    assert "outage" in proc.log_text()


def test_a_missed_event_is_caught_by_the_rescan(tmp_path: Path, emu: EmulatorServer) -> None:
    """The watcher's events are all dropped; the periodic rescan still finds the file."""
    ws = Workspace(root=tmp_path / "ws", base_url=emu.base_url)
    ws.folder("anime", style={"art_style": "Comic"}, observer="native")
    ws.extra_daemon = ""
    cfg = ws.write_config().read_text().replace("rescan_seconds = 2", "rescan_seconds = 1.5")
    ws.config_path.write_text(cfg)
    config = config_file.load(ws.config_path)

    class Deaf(queue.Queue):  # type: ignore[type-arg]
        def put(self, item: object, block: bool = True, timeout: float | None = None) -> None:
            return None  # the handler is "disabled": nothing reaches the loop

    daemon = Daemon.open(
        config,
        token=TOKEN,
        config_path=ws.config_path,
        environ={"MH_TEST_TOKEN": TOKEN},
        events=Deaf(),
    )
    daemon.start()
    try:
        assert daemon.run_until(lambda: daemon.folders["anime"].last_scan_mono is not None, 10)
        synthesize_clip(ws.inbox("anime") / "late.mp4", seconds=1.0)
        assert daemon.run_until(
            lambda: any(j.state is JobState.DONE for j in daemon.journal.jobs()),
            30,
        )
    finally:
        daemon.shutdown()
    assert emu.state()["counts"]["creates"] == 1


def test_auto_mode_polls_a_remote_filesystem_and_watches_a_local_one(
    tmp_path: Path, emu: EmulatorServer
) -> None:
    ws = Workspace(root=tmp_path / "ws", base_url=emu.base_url)
    ws.folder("nas", style={"art_style": "Comic"})
    ws.folder("local", style={"art_style": "Comic"})
    ws.write_config()
    nas = ws.inbox("nas")
    # A recorded mountinfo: the NAS inbox is a CIFS mount, everything else local ext4.
    mountinfo = tmp_path / "mountinfo"
    mountinfo.write_text(
        "22 1 8:1 / / rw,relatime shared:1 - ext4 /dev/sda1 rw\n"
        f"90 22 0:50 / {nas} rw,relatime shared:60 - cifs //nas/media rw,vers=3.0\n"
    )
    config = config_file.load(ws.config_path)
    daemon = Daemon.open(
        config,
        token=TOKEN,
        config_path=ws.config_path,
        environ={"MH_TEST_TOKEN": TOKEN},
        fs=LocalFileSystem(mountinfo_path=mountinfo),
    )
    daemon.start()
    try:
        modes = {n: (rt.watch_mode, rt.watch_reason) for n, rt in daemon.folders.items()}
    finally:
        daemon.shutdown()
    assert modes["nas"][0] == "polling"
    assert "cifs" in modes["nas"][1]
    assert modes["local"][0] == "native"
    assert "ext4" in modes["local"][1]


def wait_jobs_started(ws: Workspace) -> None:
    from tests.conftest import wait_for

    wait_for(lambda: (ws.state_dir / "journal.sqlite3").exists(), what="the journal")


def status_json(ws: Workspace) -> dict[str, object]:
    env = dict(os.environ)
    result = subprocess.run(
        [SCRIPT, "status", "--json", "-c", str(ws.config_path)],
        env=env,
        capture_output=True,
        text=True,
        timeout=30,
        check=True,
    )
    data = json.loads(result.stdout)
    assert isinstance(data, dict)
    return data


def test_a_file_still_open_for_writing_waits_until_it_is_closed(
    workspace: Workspace,
    emu: EmulatorServer,
    run_daemon: Callable[..., DaemonProcess],
    tmp_path: Path,
) -> None:
    ws = workspace
    ws.folder("anime", style={"art_style": "Comic"}, settle_seconds=0.3)
    data = synthesize_clip(tmp_path / "src.mp4", seconds=1.0).read_bytes()
    proc = run_daemon()
    wait_jobs_started(ws)
    with open(ws.inbox("anime") / "held.mp4", "wb") as out:
        out.write(data)
        out.flush()
        # Quiet for many settle periods, but a writer still holds it: never taken meanwhile.
        deadline = time.monotonic() + 3.0
        while time.monotonic() < deadline:
            assert read_jobs(ws.state_dir) == []
            time.sleep(0.1)
    wait_jobs(ws.state_dir, all_done(1), proc=proc, what="delivery once closed")
    assert proc.stop() == 0
    assert emu.state()["counts"]["creates"] == 1


def test_ready_marker_mode_takes_a_file_only_once_its_marker_exists(
    workspace: Workspace, emu: EmulatorServer, run_daemon: Callable[..., DaemonProcess]
) -> None:
    ws = workspace
    ws.folder("anime", style={"art_style": "Comic"}, ready_marker=".done")
    synthesize_clip(ws.inbox("anime") / "clip.mp4", seconds=1.0)
    proc = run_daemon()
    wait_jobs_started(ws)
    deadline = time.monotonic() + 2.0
    while time.monotonic() < deadline:  # settled long ago, but no marker yet
        assert read_jobs(ws.state_dir) == []
        time.sleep(0.1)
    (ws.inbox("anime") / "clip.mp4.done").write_bytes(b"")
    wait_jobs(ws.state_dir, all_done(1), proc=proc, what="delivery after the marker")
    assert proc.stop() == 0
    assert emu.state()["counts"]["upload_urls"] == 1


def test_an_unwritable_outbox_holds_the_job_and_delivers_once_it_is_back(
    workspace: Workspace, emu: EmulatorServer, run_daemon: Callable[..., DaemonProcess]
) -> None:
    ws = workspace
    ws.folder("anime", style={"art_style": "Comic"})
    # The outbox's place is taken by a regular file: it cannot be created or written.
    ws.outbox("anime").rmdir()
    ws.outbox("anime").write_text("not a directory")
    synthesize_clip(ws.inbox("anime") / "a.mp4", seconds=1.0)
    proc = run_daemon()
    jobs = wait_jobs(
        ws.state_dir,
        lambda js: (
            bool(js)
            and js[0].hold_reason is not None
            and js[0].hold_reason.value == "output_unavailable"
        ),
        proc=proc,
        what="the job held for its outbox",
    )
    assert jobs[0].project_id is not None  # rendered at the service, waiting to be fetched
    assert ws.outbox("anime").is_file()  # nothing was created in its place
    ws.outbox("anime").unlink()
    ws.outbox("anime").mkdir()  # the share is back (the daemon never creates a root)
    wait_jobs(ws.state_dir, all_done(1), proc=proc, what="delivery once the outbox is back")
    assert proc.stop() == 0
    assert emu.state()["counts"]["creates"] == 1
    assert (ws.outbox("anime") / "a.comic.mp4").exists()


def test_a_done_file_restored_into_the_inbox_is_not_sent_again(
    workspace: Workspace, emu: EmulatorServer, run_daemon: Callable[..., DaemonProcess]
) -> None:
    import shutil

    ws = workspace
    ws.folder("anime", style={"art_style": "Comic"})
    synthesize_clip(ws.inbox("anime") / "a.mp4", seconds=1.0)
    proc = run_daemon()
    jobs = wait_jobs(ws.state_dir, all_done(1), proc=proc, what="the first delivery")
    # A sync tool puts the archived original back: same path, same content, new inode.
    shutil.copy2(ws.inbox("anime") / ".mh-done" / "a.mp4", ws.inbox("anime") / "a.mp4")
    from tests.conftest import wait_for

    wait_for(lambda: "intake.already_done" in proc.log_text(), what="the skip to be logged")
    assert proc.stop() == 0
    assert emu.state()["counts"]["upload_urls"] == 1
    assert len(read_jobs(ws.state_dir)) == 1
    assert (ws.inbox("anime") / "a.mp4").exists()  # left alone
    line = next(x for x in proc.log_text().splitlines() if "intake.already_done" in x)
    assert f"mh-watchd retry {jobs[0].id}" in line
    assert "a.comic.mp4" in line  # names the earlier output


def test_a_recursive_inbox_that_does_not_fit_inotify_watches_polls_and_says_how_to_fix_it(
    tmp_path: Path, emu: EmulatorServer
) -> None:
    ws = Workspace(root=tmp_path / "ws", base_url=emu.base_url)
    ws.folder("big", style={"art_style": "Comic"}, recursive=True, observer="native")
    for i in range(6):
        (ws.inbox("big") / f"d{i}").mkdir()
    ws.write_config()

    class TightInotify(LocalFileSystem):
        def inotify_limits(self) -> tuple[int | None, int | None]:
            return 100, 99  # a limit nearly spent by other programs

    config = config_file.load(ws.config_path)
    daemon = Daemon.open(
        config,
        token=TOKEN,
        config_path=ws.config_path,
        environ={"MH_TEST_TOKEN": TOKEN},
        fs=TightInotify(),
    )
    daemon.start()
    try:
        mode, reason = daemon.folders["big"].watch_mode, daemon.folders["big"].watch_reason
    finally:
        daemon.shutdown()
    assert mode == "polling"
    assert "fs.inotify.max_user_watches" in reason
