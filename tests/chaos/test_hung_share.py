"""Invariant 10: a hung share stalls only its own folder (a real kernel hang: fsfreeze).

Folder A's inbox and outbox live on a loop-mounted ext4 image that the test freezes: every write
there blocks in uninterruptible sleep until it is thawed. Folder B is on the normal disk. While A
is frozen, B's file is delivered in its normal time, /healthz stays 200 and answers promptly,
and within ~30 s `status --json` lists A in outage; once thawed, A recovers by itself and its
file is delivered once.

The test never touches A's filesystem between freeze and thaw, and always thaws before the
daemon is killed (a process stuck on a frozen filesystem cannot die until it is thawed).
"""

from __future__ import annotations

import time
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest

from mh_watchd.adapters.samples import synthesize_clip
from mh_watchd.core.jobs import Job, JobState
from mh_watchd.emulator import EmulatorServer
from tests.chaos.conftest import (
    ChaosWorkspace,
    DaemonProcess,
    Mounts,
    counts,
    decoded_duration,
    folder_status,
    free_port,
    healthz,
    outputs_in,
    record,
    status_json,
)
from tests.conftest import wait_for
from tests.e2e.conftest import read_jobs, wait_jobs

pytestmark = [pytest.mark.slow, pytest.mark.chaos_long]

B_BUDGET_SECONDS = 12.0  # a 1 s clip takes ~3-4 s from drop to done here
OUTAGE_DEADLINE_SECONDS = 50.0  # the contract's 30 s check deadline, plus a check period


@pytest.fixture
def thaw_first(
    mounts: Mounts,
    daemon: Callable[..., DaemonProcess],
) -> Iterator[Mounts]:
    """Set up after `daemon`, so torn down before it: thaw, then the daemon can be killed."""
    yield mounts
    for target in list(mounts.frozen):
        mounts.thaw(target)


def _folder(data: dict[str, object], name: str) -> dict[str, object]:
    folders = data["folders"]
    assert isinstance(folders, list)
    return next(f for f in folders if f["name"] == name)


def test_a_frozen_share_stalls_only_its_own_folder(
    workspace: ChaosWorkspace,
    thaw_first: Mounts,
    daemon: Callable[..., DaemonProcess],
    emu: EmulatorServer,
    tmp_path: Path,
) -> None:
    ws = workspace
    mounts = thaw_first
    share = mounts.ext4_image(tmp_path / "share-a.img", ws.root / "share-a", size_mib=24)
    (share / "in").mkdir()
    (share / "out").mkdir()
    ws.http_port = free_port()
    ws.add("a", inbox=str(share / "in"), outbox=str(share / "out"), style={"art_style": "Pixar"})
    ws.add("b", style={"art_style": "Pixar"})
    clip_a = synthesize_clip(tmp_path / "keep" / "a.mp4", seconds=1.0, hue=10).read_bytes()
    clip_b = synthesize_clip(tmp_path / "keep" / "b.mp4", seconds=1.0, hue=200).read_bytes()

    proc = daemon()
    wait_for(lambda: (healthz(ws) or (0, ""))[0] == 200, what="/healthz 200 at start")
    (share / "in" / "a.mp4").write_bytes(clip_a)

    def a_rendering(jobs: list[Job]) -> bool:
        return any(j.folder == "a" and j.state is JobState.RENDERING for j in jobs)

    wait_jobs(ws.state_dir, a_rendering, proc=proc, what="A's job rendering")
    frozen_at = time.monotonic()
    mounts.freeze(share)
    try:
        (ws.inbox("b") / "b.mp4").write_bytes(clip_b)
        dropped_b = time.monotonic()
        slowest_health = 0.0
        health_seen: list[object] = []

        def b_done_and_healthy(jobs: list[Job]) -> bool:
            nonlocal slowest_health
            t0 = time.monotonic()
            answer = healthz(ws, timeout=5.0)
            slowest_health = max(slowest_health, time.monotonic() - t0)
            health_seen.append(answer[0] if answer else None)
            if answer is None or answer[0] != 200:
                pytest.fail(f"/healthz while A is frozen: {answer!r} (outages are not unhealthy)")
            return any(j.folder == "b" and j.state is JobState.DONE for j in jobs)

        wait_jobs(
            ws.state_dir,
            b_done_and_healthy,
            proc=proc,
            timeout_seconds=B_BUDGET_SECONDS,
            what="B's file delivered in its normal time while A is frozen",
        )
        b_seconds = time.monotonic() - dropped_b
        assert slowest_health < 2.0, f"/healthz took {slowest_health:.1f} s to answer"

        outage: list[object] = []

        def a_in_outage() -> bool:
            answer = healthz(ws, timeout=5.0)
            if answer is None or answer[0] != 200:
                pytest.fail(f"/healthz while A is frozen: {answer!r} (outages are not unhealthy)")
            st = folder_status(ws, "a")
            return st is not None and bool(st.outage)

        wait_for(
            a_in_outage,
            timeout_seconds=max(1.0, OUTAGE_DEADLINE_SECONDS - (time.monotonic() - frozen_at)),
            what="the journal to list folder A in outage while its share is frozen",
        )
        outage_after = time.monotonic() - frozen_at
        # What a user sees: `status --json` (read from the journal, never from the share).
        shown = status_json(ws)
        outage.append(_folder(shown, "a")["outage"])
        assert _folder(shown, "a")["outage"], shown["folders"]
        assert _folder(shown, "b")["outage"] is None, shown["folders"]
    finally:
        mounts.thaw(share)

    def a_recovered(jobs: list[Job]) -> bool:
        return any(j.folder == "a" and j.state is JobState.DONE for j in jobs)

    jobs = wait_jobs(
        ws.state_dir,
        a_recovered,
        proc=proc,
        timeout_seconds=60,
        what="A's file delivered once its share was thawed",
    )
    wait_for(
        lambda: getattr(folder_status(ws, "a"), "outage", "?") is None,
        timeout_seconds=30,
        what="A's outage to end after the thaw",
    )
    assert _folder(status_json(ws), "a")["outage"] is None
    assert proc.stop() == 0
    c = counts(emu)
    out_a = outputs_in(share / "out")
    out_b = outputs_in(ws.outbox("b"))
    record(
        "hung_share",
        files=2,
        create_requests=c["create_requests"],
        duplicates=max(0, len(out_a) - 1) + max(0, len(out_b) - 1) + max(0, c["creates"] - 2),
        lost=int(not out_a) + int(not out_b),
    )
    assert b_seconds < B_BUDGET_SECONDS
    assert outage_after < OUTAGE_DEADLINE_SECONDS, outage
    assert c["creates"] == 2 and c["create_requests"] == 2, c
    assert [p.name for p in out_a] == ["a.pixar.mp4"]
    assert [p.name for p in out_b] == ["b.pixar.mp4"]
    assert decoded_duration(out_a[0]) is not None and decoded_duration(out_b[0]) is not None
    assert (share / "in" / ".mh-done" / "a.mp4").read_bytes() == clip_a
    assert (ws.inbox("b") / ".mh-done" / "b.mp4").read_bytes() == clip_b
    assert all(j.state is JobState.DONE for j in read_jobs(ws.state_dir)), jobs
