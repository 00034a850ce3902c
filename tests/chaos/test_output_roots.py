"""Outbox, archive and failed roots that are missing, read-only or full (real mounts).

One daemon, four folders: `outbox` (its outbox root is bad), `archive` (its archive root is
bad), `failed` (its failed root is bad, and it gets a file that is not a video) and `control`
(all fine: proof the daemon is working while the others wait). While the condition lasts: no
root is created by the daemon, nothing shows in a bad outbox, the originals stay where they
were. Once the test clears the condition, every job finishes by itself, each good file is
delivered once and paid once.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from pathlib import Path

import pytest

from mh_watchd.adapters.samples import synthesize_clip
from mh_watchd.core.jobs import HoldReason, Job, JobState
from mh_watchd.emulator import EmulatorServer
from tests.chaos.conftest import (
    ChaosWorkspace,
    DaemonProcess,
    Mounts,
    counts,
    decoded_duration,
    eventually,
    fill,
    hold_for,
    outputs_in,
    record,
)
from tests.e2e.conftest import read_jobs, wait_jobs

pytestmark = [pytest.mark.slow, pytest.mark.chaos_long]

ROOT_TMPFS_BYTES = 2 * 1024 * 1024


class BadRoot:
    """One root directory in one bad condition, and the way to clear it."""

    def __init__(self, condition: str, path: Path, mounts: Mounts) -> None:
        self.condition = condition
        self.path = path
        self.mounts = mounts
        self.filler: Path | None = None
        path.parent.mkdir(parents=True, exist_ok=True)  # the share's parent exists
        if condition == "readonly":
            path.mkdir()
            mounts.bind(path, path)
            mounts.remount(path, readonly=True)
        elif condition == "full":
            mounts.tmpfs(path, ROOT_TMPFS_BYTES)
            self.filler = fill(path, ".filler")

    def still_bad(self) -> bool:
        if self.condition == "missing":
            return not self.path.exists()  # the daemon never creates a root
        return True

    def clear(self) -> None:
        if self.condition == "missing":
            self.path.mkdir(exist_ok=True)  # (unless the daemon made it: a problem reported)
        elif self.condition == "readonly":
            self.mounts.remount(self.path, readonly=False)
        elif self.filler is not None:
            self.filler.unlink()


def _by_folder(jobs: list[Job]) -> dict[str, list[Job]]:
    found: dict[str, list[Job]] = {}
    for j in jobs:
        found.setdefault(j.folder, []).append(j)
    return found


def _positions_taken(jobs: list[Job]) -> bool:
    """Control done, and every bad-root folder's job has taken a position: waiting (held), or
    finished (judged afterwards), or for the outbox folder possibly not taken in at all."""
    by = _by_folder(jobs)
    control = by.get("control", [])
    if not control or control[0].state is not JobState.DONE:
        return False
    outbox = by.get("outbox", [])
    if outbox and not (outbox[0].state is JobState.HELD or outbox[0].is_terminal):
        return False
    archive = by.get("archive", [])
    if not archive or not (archive[0].state is JobState.HELD or archive[0].is_terminal):
        return False
    failed = by.get("failed", [])
    return bool(failed) and failed[0].is_terminal


@pytest.mark.parametrize("condition", ["missing", "readonly", "full"])
def test_bad_output_roots_wait_then_deliver_once(
    condition: str,
    workspace: ChaosWorkspace,
    mounts: Mounts,
    daemon: Callable[..., DaemonProcess],
    emu: EmulatorServer,
    tmp_path: Path,
) -> None:
    ws = workspace
    share = ws.root / "share"
    bad_outbox = BadRoot(condition, share / "outbox-out", mounts)
    bad_archive = BadRoot(condition, share / "archive-done", mounts)
    bad_failed = BadRoot(condition, share / "failed-failed", mounts)
    roots = {"outbox": bad_outbox, "archive": bad_archive, "failed": bad_failed}
    ws.add("control", style={"art_style": "Pixar"})
    ws.add(
        "outbox",
        make_outbox=condition != "missing",  # a read-only or full root is there, mounted
        outbox=str(bad_outbox.path),
        style={"art_style": "Pixar"},
    )
    ws.add("archive", archive=str(bad_archive.path), style={"art_style": "Pixar"})
    ws.add("failed", failed=str(bad_failed.path), style={"art_style": "Pixar"})

    originals: dict[str, bytes] = {}
    for i, name in enumerate(("control", "outbox", "archive")):
        clip = synthesize_clip(tmp_path / "keep" / f"{name}.mp4", seconds=1.0, hue=40 * i)
        originals[name] = clip.read_bytes()
    not_video = b"this is not a video\n" * 40
    problems: list[str] = []

    proc = daemon()
    for name, data in originals.items():
        (ws.inbox(name) / "clip.mp4").write_bytes(data)
    (ws.inbox("failed") / "notes.mp4").write_bytes(not_video)

    wait_jobs(
        ws.state_dir,
        _positions_taken,
        proc=proc,
        timeout_seconds=30,
        what=f"control delivered while the {condition} roots wait (every other job held or "
        "finished)",
    )

    def while_bad() -> list[str]:
        found = [
            f"the {k} root {r.path} was created" for k, r in roots.items() if not r.still_bad()
        ]
        shown = outputs_in(bad_outbox.path)
        if shown:
            found.append(f"outputs shown in the bad outbox: {[p.name for p in shown]}")
        left = ws.inbox("outbox") / "clip.mp4"
        if not left.exists() or left.read_bytes() != originals["outbox"]:
            found.append("the outbox folder's original left the inbox")
        by = _by_folder(read_jobs(ws.state_dir))
        job = by.get("outbox", [None])[0]
        if job is not None and job.hold_reason is not HoldReason.OUTPUT_UNAVAILABLE:
            found.append(
                f"the outbox job is {job.state.value}/{job.hold_reason}, not held "
                f"output_unavailable (last_error {job.last_error!r})"
            )
        job = by["archive"][0]
        if job.hold_reason is not HoldReason.OUTPUT_UNAVAILABLE and not (
            job.state is JobState.DONE and job.original_left
        ):
            found.append(
                f"the archive job is {job.state.value}/{job.hold_reason}, neither held "
                f"output_unavailable nor done with original_left (last_error {job.last_error!r})"
            )
        return found

    # Watch the waiting for a moment: the first thing that breaks is a problem.
    deadline = time.monotonic() + 1.5
    while time.monotonic() < deadline and not problems:
        problems += [f"while {condition}: {p}" for p in while_bad()]
        time.sleep(0.1)
    before_clear = {j.folder: j for j in read_jobs(ws.state_dir)}

    for root in roots.values():
        root.clear()

    def finished(jobs: list[Job]) -> bool:
        by = _by_folder(jobs)
        return (
            all(by.get(n) and by[n][0].state is JobState.DONE for n in ("outbox", "archive"))
            and (bad_failed.path / "notes.mp4.error.json").exists()
            and not (ws.inbox("failed") / "notes.mp4").exists()
        )

    if not eventually(lambda: finished(read_jobs(ws.state_dir)), timeout_seconds=30):
        seen = [
            (j.folder, j.state.value, j.hold_reason, j.last_error) for j in read_jobs(ws.state_dir)
        ]
        problems.append(
            f"after clearing ({condition}), not every job finished by itself within 30 s "
            f"(outbox and archive jobs done, notes.mp4 filed with its .error.json): {seen}"
        )
    jobs = read_jobs(ws.state_dir)
    assert proc.stop() == 0
    c = counts(emu)
    by = _by_folder(jobs)
    outs = {n: outputs_in(ws.outbox(n) if n != "outbox" else bad_outbox.path) for n in originals}
    duplicates = sum(max(0, len(o) - 1) for o in outs.values()) + max(0, c["creates"] - 3)
    lost = sum(1 for o in outs.values() if not o)
    record(
        f"output_roots[{condition}]",
        files=4,
        create_requests=c["create_requests"],
        duplicates=duplicates,
        lost=lost,
    )
    if c["create_requests"] != 3 or c["creates"] != 3:  # control, outbox, archive
        problems.append(f"create requests: {c} (3 expected: never for the bad file)")
    for name in originals:
        if len(outs[name]) != 1:
            problems.append(f"{name}: outputs {[p.name for p in outs[name]]}")
        elif decoded_duration(outs[name][0]) is None:
            problems.append(f"{name}: the output does not decode")
    waited = before_clear.get("outbox")
    if waited is not None and waited.state is JobState.DONE:
        problems.append("the outbox job was delivered before its outbox root was usable")
    # The archive job: archived byte for byte once the root came back, or left in the inbox
    # (original_left) when it was done before.
    archive_job = by["archive"][0]
    kept = ws.inbox("archive") / "clip.mp4"
    archived = bad_archive.path / "clip.mp4"
    if archive_job.original_left:
        if not kept.exists() or kept.read_bytes() != originals["archive"]:
            problems.append("archive job: original_left, but the original is not in the inbox")
    elif not archived.exists() or archived.read_bytes() != originals["archive"]:
        problems.append("archive job: the original is not archived byte for byte")
    # The failed one: the original filed beside its .error.json, nothing sent.
    filed = bad_failed.path / "notes.mp4"
    if not filed.exists() or filed.read_bytes() != not_video:
        problems.append("notes.mp4 not filed in the failed root")
    if not (bad_failed.path / "notes.mp4.error.json").is_file():
        problems.append("notes.mp4.error.json missing in the failed root")
    if (ws.inbox("failed") / "notes.mp4").exists():
        problems.append("notes.mp4 still in the inbox")
    if by["failed"][0].state is not JobState.FAILED:
        problems.append(f"the bad file's job is {by['failed'][0].state.value}, not failed")
    assert not problems, "\n".join(problems)


def test_a_failure_filed_while_the_failed_root_is_missing_is_filed_after_a_restart(
    workspace: ChaosWorkspace,
    daemon: Callable[..., DaemonProcess],
    emu: EmulatorServer,
) -> None:
    """The failed folder is an unmounted share when a file fails; the daemon stops before it
    is back. The next daemon files the original (and its .error.json) once the root is back,
    and never creates the root itself."""
    ws = workspace
    failed_root = ws.root / "share" / "failed-root"
    failed_root.parent.mkdir(parents=True)
    ws.add("anime", failed=str(failed_root), style={"art_style": "Pixar"})
    bad = ws.inbox("anime") / "notes.mp4"
    proc = daemon()
    bad.write_bytes(b"this is not a video\n" * 40)
    wait_jobs(
        ws.state_dir,
        lambda js: bool(js) and js[0].state is JobState.FAILED,
        proc=proc,
        what="the bad file failed",
    )
    # A missing failed folder holds back only filing failures, never deliveries.
    synthesize_clip(ws.inbox("anime") / "good.mp4", seconds=1.0)
    wait_jobs(
        ws.state_dir,
        lambda js: any(j.rel_path == "good.mp4" and j.state is JobState.DONE for j in js),
        proc=proc,
        what="a good file delivered while the failed root is missing",
    )
    hold_for(
        lambda: bad.exists() and not failed_root.exists(),
        1.0,
        what="the original waits in the inbox; the failed root is not created",
        proc=proc,
    )
    assert proc.stop() == 0
    failed_root.mkdir()  # the share is mounted again, with the daemon down
    proc = daemon()
    jobs = wait_jobs(
        ws.state_dir,
        lambda js: js[0].failed_path is not None,
        proc=proc,
        timeout_seconds=30,
        what="the original filed by the restarted daemon",
    )
    assert proc.stop() == 0
    assert not bad.exists()
    filed = failed_root / "notes.mp4"
    assert jobs[0].failed_path == str(filed)
    assert filed.read_bytes() == b"this is not a video\n" * 40
    assert (failed_root / "notes.mp4.error.json").exists()
    assert counts(emu)["create_requests"] == 1  # the good file only
