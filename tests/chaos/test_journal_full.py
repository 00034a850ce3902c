"""Invariant 9: the journal refuses writes (its disk is full) while a step is on the wire.

The state_dir is a real 8 MiB tmpfs. A slow fault holds one request at the emulator while the
test fills the tmpfs to ENOSPC, so the step's outcome cannot be journaled. Judged from outside:
no new paid or visible side effect while the disk is full, /healthz answers 503 naming the
journal, and once the filler is removed the job finishes by itself, exactly once.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import pytest

from mh_watchd.adapters.samples import synthesize_clip
from mh_watchd.core.jobs import HoldReason, JobState
from mh_watchd.emulator import EmulatorServer
from tests.chaos.conftest import (
    ChaosWorkspace,
    DaemonProcess,
    Mounts,
    counts,
    decoded_duration,
    fill,
    free_port,
    healthz,
    hold_for,
    inject,
    is_full,
    outputs_in,
    record,
)
from tests.conftest import wait_for
from tests.e2e.conftest import all_done, read_jobs, wait_jobs

pytestmark = [pytest.mark.slow, pytest.mark.chaos_long]

STATE_TMPFS_BYTES = 8 * 1024 * 1024
DELAY = 2.0


@dataclass(frozen=True)
class Step:
    route: str  # the emulator route held by the slow fault
    counter: str  # the count that shows the request arrived


STEPS = {
    "upload": Step("upload", "upload_requests"),  # the PUT arrived (stored ones: "uploads")
    "create": Step("create", "create_requests"),
    "rendering": Step("get", "gets"),
    "download": Step("download", "downloads"),
}
# Requests that are side effects (a poll is a read): none may start while the journal is full.
# A request counts as it arrives (the one held on the wire may still finish meanwhile).
SIDE_EFFECTS = ("upload_urls", "upload_requests", "create_requests", "downloads")


def side_effects(emu: EmulatorServer) -> dict[str, int]:
    c = counts(emu)
    return {k: c[k] for k in SIDE_EFFECTS}


def _setup(ws: ChaosWorkspace, mounts: Mounts, tmp_path: Path) -> tuple[Path, bytes]:
    mounts.tmpfs(ws.state_dir, STATE_TMPFS_BYTES)
    ws.http_port = free_port()
    ws.add("anime", style={"art_style": "Pixar"})
    clip = synthesize_clip(tmp_path / "keep" / "clip.mp4", seconds=1.0)
    original = clip.read_bytes()
    return ws.inbox("anime") / "clip.mp4", original


@pytest.mark.parametrize("step", list(STEPS))
def test_journal_full_mid_step_stops_side_effects_then_resumes_by_itself(
    step: str,
    workspace: ChaosWorkspace,
    mounts: Mounts,
    daemon: Callable[..., DaemonProcess],
    emu: EmulatorServer,
    tmp_path: Path,
) -> None:
    ws = workspace
    spec = STEPS[step]
    source, original = _setup(ws, mounts, tmp_path)
    tally = inject(
        emu, {"rules": [{"route": spec.route, "fault": "slow", "delay": DELAY, "times": 1}]}
    )
    source.write_bytes(original)
    proc = daemon()

    wait_for(
        lambda: counts(emu)[spec.counter] >= 1 or not proc.alive(),
        timeout_seconds=60,
        what=f"the {spec.route} request on the wire",
    )
    assert proc.alive(), proc.log_text()[-3000:]
    filler = fill(ws.state_dir)
    assert is_full(ws.state_dir), "the tmpfs did not fill"
    frozen = side_effects(emu)
    outputs_before = outputs_in(ws.outbox("anime"))

    # While the journal refuses writes: 503 naming the journal, and nothing new starts.
    def unhealthy_naming_journal() -> bool:
        answer = healthz(ws)
        return answer is not None and answer[0] == 503 and "journal" in answer[1].lower()

    try:
        wait_for(
            unhealthy_naming_journal,
            timeout_seconds=DELAY + 10,
            what="/healthz 503 naming the journal while its disk is full",
        )

        def nothing_new() -> bool:
            return (
                side_effects(emu) == frozen
                and outputs_in(ws.outbox("anime")) == outputs_before
                and source.exists()
                and proc.alive()
            )

        hold_for(
            nothing_new,
            DELAY + 0.5,
            what=f"no new side effect while the journal is full (step {step}): requests stay "
            f"{frozen}, no output placed, the original in place",
            proc=proc,
            show=lambda: (counts(emu), [p.name for p in outputs_in(ws.outbox("anime"))]),
        )
        hold_for(
            unhealthy_naming_journal,
            1.0,
            what="/healthz stays 503 while the journal is full",
            proc=proc,
            show=lambda: healthz(ws),
        )
    finally:
        filler.unlink()

    jobs = wait_jobs(
        ws.state_dir,
        all_done(1),
        proc=proc,
        timeout_seconds=60,
        what=f"the job resuming by itself after the journal disk was freed (step {step})",
    )
    wait_for(
        lambda: (healthz(ws) or (0, ""))[0] == 200, what="/healthz 200 again", timeout_seconds=15
    )
    assert proc.stop() == 0
    c = counts(emu)
    outputs = outputs_in(ws.outbox("anime"))
    record(
        f"journal_full[{step}]",
        files=1,
        faults=tally.total + 1,
        create_requests=c["create_requests"],
        duplicates=max(0, len(outputs) - 1) + max(0, c["creates"] - 1),
        lost=0 if outputs else 1,
    )
    assert len(jobs) == 1, [(j.rel_path, j.state) for j in jobs]
    assert c["create_requests"] == 1, c
    assert c["creates"] == 1, c
    assert [p.name for p in outputs] == ["clip.pixar.mp4"]
    assert decoded_duration(outputs[0]) is not None
    archived = ws.inbox("anime") / ".mh-done" / "clip.mp4"
    assert archived.read_bytes() == original
    assert not source.exists()


def test_kill_9_while_the_journal_is_full_after_the_create_answered_never_creates_twice(
    workspace: ChaosWorkspace,
    mounts: Mounts,
    daemon: Callable[..., DaemonProcess],
    emu: EmulatorServer,
    tmp_path: Path,
) -> None:
    ws = workspace
    source, original = _setup(ws, mounts, tmp_path)
    inject(emu, {"rules": [{"route": "create", "fault": "slow", "delay": DELAY, "times": 1}]})
    source.write_bytes(original)
    proc = daemon()
    wait_for(
        lambda: counts(emu)["create_requests"] >= 1 or not proc.alive(),
        timeout_seconds=60,
        what="the create on the wire",
    )
    assert proc.alive(), proc.log_text()[-3000:]
    filler = fill(ws.state_dir)
    assert is_full(ws.state_dir)
    # The create commits at the service and its answer goes back to a daemon that cannot
    # journal it; give the daemon a moment with the answer in hand, then kill it.
    wait_for(lambda: counts(emu)["creates"] >= 1, timeout_seconds=DELAY + 10, what="the create")
    hold_for(lambda: proc.alive(), 1.0, what="the daemon alive with the answer", proc=proc)
    before_kill = counts(emu)["create_requests"]
    proc.kill()
    filler.unlink()

    proc2 = daemon()
    jobs = wait_jobs(
        ws.state_dir,
        lambda js: any(
            j.state is JobState.DONE or j.hold_reason is HoldReason.AMBIGUOUS_CREATE for j in js
        ),
        proc=proc2,
        timeout_seconds=60,
        what="the job delivered, or held as ambiguous_create",
    )
    hold_for(
        lambda: counts(emu)["create_requests"] == 1,
        2.0,
        what=f"no second create without a retry (create_requests was {before_kill} at the kill)",
        proc=proc2,
        show=lambda: counts(emu),
    )
    jobs = read_jobs(ws.state_dir)
    assert proc2.stop() == 0
    c = counts(emu)
    outputs = outputs_in(ws.outbox("anime"))
    record(
        "journal_full[kill_after_create]",
        files=1,
        kills=1,
        faults=1,
        create_requests=c["create_requests"],
        duplicates=max(0, c["creates"] - 1) + max(0, len(outputs) - 1),
        lost=0,
    )
    assert before_kill == 1, f"a second create went out while the journal was full: {c}"
    assert c["create_requests"] == 1, c
    assert len(jobs) == 1, [(j.rel_path, j.state) for j in jobs]
    job = jobs[0]
    if job.state is JobState.DONE:
        assert [p.name for p in outputs] == ["clip.pixar.mp4"]
        assert (ws.inbox("anime") / ".mh-done" / "clip.mp4").read_bytes() == original
    else:
        assert job.state is JobState.HELD and job.hold_reason is HoldReason.AMBIGUOUS_CREATE
        assert outputs == []
        assert source.read_bytes() == original


def test_a_file_dropped_while_the_journal_is_full_is_taken_once_it_takes_writes_again(
    workspace: ChaosWorkspace,
    mounts: Mounts,
    daemon: Callable[..., DaemonProcess],
    emu: EmulatorServer,
    tmp_path: Path,
) -> None:
    """Its intake cannot be recorded, so it is forgotten; the daemon lists every inbox again
    as soon as the journal takes writes, not at the next periodic rescan (5 min here)."""
    ws = workspace
    ws.extra_daemon = "rescan_seconds = 300"
    source, original = _setup(ws, mounts, tmp_path)
    proc = daemon()
    wait_for(
        lambda: '"event": "daemon.started"' in proc.log_text() or not proc.alive(),
        timeout_seconds=30,
        what="the daemon started",
    )
    filler = fill(ws.state_dir)
    assert is_full(ws.state_dir)
    try:
        source.write_bytes(original)
        wait_for(
            lambda: (healthz(ws) or (0, ""))[0] == 503,
            timeout_seconds=20,
            what="/healthz 503 once the intake could not be journaled",
        )
        hold_for(
            lambda: counts(emu)["upload_urls"] == 0 and source.exists(),
            1.0,
            what="nothing sent while the journal is full",
            proc=proc,
        )
    finally:
        filler.unlink()
    wait_jobs(
        ws.state_dir,
        all_done(1),
        proc=proc,
        timeout_seconds=40,
        what="the file taken and delivered once the journal took writes again",
    )
    assert proc.stop() == 0
    c = counts(emu)
    outputs = outputs_in(ws.outbox("anime"))
    record(
        "journal_full[intake]",
        files=1,
        create_requests=c["create_requests"],
        duplicates=max(0, c["creates"] - 1) + max(0, len(outputs) - 1),
        lost=0 if outputs else 1,
    )
    assert c["create_requests"] == 1, c
    assert [p.name for p in outputs] == ["clip.pixar.mp4"]
    assert (ws.inbox("anime") / ".mh-done" / "clip.mp4").read_bytes() == original


def test_a_daemon_started_on_a_full_journal_disk_exits_69_and_says_why(
    workspace: ChaosWorkspace,
    mounts: Mounts,
    daemon: Callable[..., DaemonProcess],
    emu: EmulatorServer,
    tmp_path: Path,
) -> None:
    ws = workspace
    source, original = _setup(ws, mounts, tmp_path)
    first = daemon()
    wait_for(
        lambda: '"event": "daemon.started"' in first.log_text() or not first.alive(),
        timeout_seconds=30,
        what="the journal created",
    )
    assert first.stop() == 0
    filler = fill(ws.state_dir)
    try:
        source.write_bytes(original)
        second = daemon()
        rc = second.wait(timeout=60)
        text = second.log_text()
    finally:
        filler.unlink()
    assert rc == 69, text[-3000:]
    assert "Traceback" not in text, text[-3000:]
    assert "free space" in text
    assert counts(emu)["upload_urls"] == 0
    assert source.read_bytes() == original
