"""A file saved again while it uploads: the old job ends `superseded` (never paid for), the new
content is delivered without a restart, and `retry --failed` never pays for the old one."""

from __future__ import annotations

import hashlib
from collections.abc import Callable
from pathlib import Path

import pytest

from mh_watchd.adapters.journal import Journal
from mh_watchd.adapters.samples import synthesize_clip
from mh_watchd.core.errors import StateDirError
from mh_watchd.core.jobs import Job, JobState
from mh_watchd.emulator import EmulatorServer
from tests.chaos.conftest import (
    ChaosWorkspace,
    DaemonProcess,
    cli,
    counts,
    decoded_duration,
    hold_for,
    inject,
    outputs_in,
    project_upload_sha,
    record,
    sha256,
)
from tests.conftest import wait_for
from tests.e2e.conftest import read_jobs, wait_jobs

pytestmark = [pytest.mark.slow, pytest.mark.chaos_long]


def _no_pending_requests(state_dir: Path) -> bool:
    try:
        journal = Journal.open(state_dir, readonly=True)
    except StateDirError:
        return False
    try:
        return not journal.pending_requests()
    finally:
        journal.close()


def test_saved_again_mid_upload_supersedes_and_delivers_the_new_version_once(
    workspace: ChaosWorkspace,
    daemon: Callable[..., DaemonProcess],
    daemon_env: dict[str, str],
    emu: EmulatorServer,
    tmp_path: Path,
) -> None:
    ws = workspace
    ws.add("anime", style={"art_style": "Pixar"})
    v1 = synthesize_clip(tmp_path / "keep" / "v1.mp4", seconds=1.0, hue=0).read_bytes()
    v2_path = synthesize_clip(tmp_path / "keep" / "v2.mp4", seconds=1.5, hue=120)
    v2 = v2_path.read_bytes()
    assert v1 != v2
    tally = inject(emu, {"rules": [{"route": "upload", "fault": "slow", "delay": 3.0, "times": 1}]})
    proc = daemon()
    source = ws.inbox("anime") / "clip.mp4"
    source.write_bytes(v1)
    # upload_requests counts a PUT as it arrives; uploads only once it is stored.
    wait_for(lambda: counts(emu)["upload_requests"] >= 1, timeout_seconds=30, what="v1 uploading")
    # Saved again in place (same inode) while the upload is on the wire.
    with source.open("r+b") as f:
        f.truncate(0)
        f.write(v2)

    v2_sha = sha256(v2_path)

    def resolved(jobs: list[Job]) -> bool:
        return any(j.sha256 == v2_sha and j.is_terminal for j in jobs) and all(
            j.is_terminal for j in jobs
        )

    jobs = wait_jobs(
        ws.state_dir,
        resolved,
        proc=proc,
        timeout_seconds=60,
        what="the new version's job finished without a restart (and the old one ended)",
    )
    jobs = sorted(jobs, key=lambda j: j.id or 0)
    c = counts(emu)
    outputs = outputs_in(ws.outbox("anime"))
    state = emu.state()
    made_from = {v2_sha: "v2", hashlib.sha256(v1).hexdigest(): "v1"}
    paid_for = [
        made_from.get(project_upload_sha(tmp_path, p) or "", "?") for p in state["projects"]
    ]
    record(
        "saved_again",
        files=1,
        faults=tally.total,
        create_requests=c["create_requests"],
        duplicates=max(0, c["creates"] - 1) + max(0, len(outputs) - 1),
        lost=0 if outputs else 1,
    )
    problems: list[str] = []
    old = jobs[0]
    if old.state is not JobState.SUPERSEDED:
        problems.append(
            f"the first job (saved again mid-upload) ended {old.state.value}, not superseded "
            f"(original_left={old.original_left}, last_error={old.last_error!r})"
        )
    new = [j for j in jobs if j.sha256 == v2_sha]
    if len(new) != 1 or new[0].state is not JobState.DONE:
        problems.append(f"the new version's job: {[(j.id, j.state.value) for j in new]}")
    if c["create_requests"] != 1 or c["creates"] != 1:
        problems.append(f"paid {c['creates']} times ({paid_for}), once expected: {c}")
    if paid_for != ["v2"]:
        problems.append(f"projects made from: {paid_for}; only the new bytes (v2) expected")
    if [p.name for p in outputs] != ["clip.pixar.mp4"]:
        problems.append(f"outputs: {[p.name for p in outputs]}")
    else:
        duration = decoded_duration(outputs[0])
        if duration is None or abs(duration - 1.5) >= 0.5:
            problems.append(f"the output decodes to {duration} s, the new version is 1.5 s")
    archived = ws.inbox("anime") / ".mh-done" / "clip.mp4"
    if not archived.exists() or archived.read_bytes() != v2:
        problems.append("the new version is not archived byte for byte")
    assert not problems, "\n".join(
        [*problems, f"jobs: {[(j.id, j.state.value, j.sha256, j.last_error) for j in jobs]}"]
    )

    # `retry --failed` never pays for the superseded version.
    result = cli(ws, daemon_env, "retry", "--failed")
    assert result.returncode == 0, result.stderr
    wait_for(
        lambda: _no_pending_requests(ws.state_dir),
        timeout_seconds=15,
        what="the daemon to act on the retry request",
    )
    hold_for(
        lambda: counts(emu)["create_requests"] == 1 and len(outputs_in(ws.outbox("anime"))) == 1,
        2.0,
        what=f"retry --failed must not pay again (it said: {result.stdout.strip()!r})",
        proc=proc,
        show=lambda: (counts(emu), [(j.id, j.state.value) for j in read_jobs(ws.state_dir)]),
    )
    assert read_jobs(ws.state_dir)[0].state is JobState.SUPERSEDED
    assert proc.stop() == 0
