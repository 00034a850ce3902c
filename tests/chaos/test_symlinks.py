"""Symlinks, by every route: never followed, never sent, never moved.

Links to real videos outside the inbox arrive while the daemon runs (a file at the top level,
one in a subfolder of a recursive inbox, a symlinked directory full of videos), one is there at
start-up, and one replaces a settled file's name (same size and mtime as the file it replaces)
while that file waits for its upload slot. Judged from outside: the bytes the emulator received
(hashes of its stored uploads), its projects, the outbox, the archive and the links themselves.
"""

from __future__ import annotations

import os
import struct
import time
from collections.abc import Callable
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
    emulator_uploads,
    folder_scanned_after,
    inject,
    outputs_in,
    project_upload_sha,
    record,
    sha256,
)
from tests.conftest import wait_for
from tests.e2e.conftest import read_jobs, wait_jobs

pytestmark = [pytest.mark.slow, pytest.mark.chaos_long]


def pad_with_free_box(path: Path, total: int) -> None:
    """Grow an mp4 to exactly `total` bytes with a trailing `free` box (still a valid file)."""
    extra = total - path.stat().st_size
    assert extra >= 8
    with path.open("ab") as f:
        f.write(struct.pack(">I", extra) + b"free" + b"\0" * (extra - 8))


def test_links_are_never_followed_sent_or_moved(
    workspace: ChaosWorkspace,
    mounts: Mounts,
    daemon: Callable[..., DaemonProcess],
    emu: EmulatorServer,
    tmp_path: Path,
) -> None:
    ws = workspace
    ws.add("links", style={"art_style": "Pixar"}, recursive=True)
    inbox = ws.inbox("links")
    outside = tmp_path / "outside"
    targets = {
        "startup": synthesize_clip(outside / "startup.mp4", seconds=1.0, hue=50),
        "top": synthesize_clip(outside / "top.mp4", seconds=1.0, hue=10),
        "sub": synthesize_clip(outside / "sub.mp4", seconds=1.0, hue=20),
        "dir_a": synthesize_clip(outside / "linkeddir" / "a.mp4", seconds=1.0, hue=30),
        "dir_b": synthesize_clip(outside / "linkeddir" / "b.mp4", seconds=1.0, hue=40),
        "swap": synthesize_clip(outside / "swap-target.mp4", seconds=1.0, hue=60),
    }
    # The victim and the video swapped in for it: the same size, and (below) the same mtime.
    keep = tmp_path / "keep"
    victim_src = synthesize_clip(keep / "victim.mp4", seconds=1.0, hue=70)
    same = max(victim_src.stat().st_size, targets["swap"].stat().st_size) + 64
    pad_with_free_box(victim_src, same)
    pad_with_free_box(targets["swap"], same)
    control = synthesize_clip(keep / "control.mp4", seconds=1.0, hue=90).read_bytes()
    target_bytes = {k: p.read_bytes() for k, p in targets.items()}
    target_sha = {sha256(p): k for k, p in targets.items()}

    links: dict[str, Path] = {}
    links["startup"] = inbox / "startup-link.mp4"
    links["startup"].symlink_to(targets["startup"])

    # The victim's upload URL request is held 3 s at the emulator: its name is swapped then,
    # after it settled and before a byte of it is uploaded.
    tally = inject(
        emu, {"rules": [{"route": "upload_urls", "fault": "slow", "delay": 3.0, "times": 1}]}
    )
    proc = daemon()
    wait_for(lambda: (ws.state_dir / "journal.sqlite3").exists(), what="the journal")

    links_made_at = time.time()
    links["top"] = inbox / "top-link.mp4"
    links["top"].symlink_to(targets["top"])
    (inbox / "sub").mkdir()
    links["sub"] = inbox / "sub" / "sub-link.mp4"
    links["sub"].symlink_to(targets["sub"])
    links["dir"] = inbox / "linkeddir"
    links["dir"].symlink_to(outside / "linkeddir", target_is_directory=True)
    victim = inbox / "victim.mp4"
    victim.write_bytes(victim_src.read_bytes())
    victim_mtime_ns = victim.stat().st_mtime_ns

    wait_for(
        lambda: counts(emu)["upload_urls"] >= 1,
        timeout_seconds=30,
        what="the victim's upload URL request on the wire",
    )
    jobs = read_jobs(ws.state_dir)
    assert [j.rel_path for j in jobs] == ["victim.mp4"], [(j.rel_path, j.state) for j in jobs]
    assert counts(emu)["uploads"] == 0, "the victim's bytes went out before the swap"
    # Swap its name for a link to another video of the same size and mtime.
    st = targets["swap"].stat()
    os.utime(targets["swap"], ns=(st.st_atime_ns, victim_mtime_ns))
    tmp_link = inbox / ".swap-link.tmp"
    tmp_link.symlink_to(targets["swap"])
    os.replace(tmp_link, victim)
    links["victim"] = victim
    (inbox / "control.mp4").write_bytes(control)

    def settled(jobs: list[Job]) -> bool:
        by = {j.rel_path: j for j in jobs}
        return (
            "control.mp4" in by
            and by["control.mp4"].state is JobState.DONE
            and "victim.mp4" in by
            and by["victim.mp4"].is_terminal
            and folder_scanned_after(ws, "links", links_made_at + 1.0)
        )

    wait_jobs(
        ws.state_dir,
        settled,
        proc=proc,
        timeout_seconds=60,
        what="control delivered, the victim's job ended, a full rescan after the links",
    )
    jobs = read_jobs(ws.state_dir)
    assert proc.stop() == 0

    uploads = emulator_uploads(tmp_path)
    sent_targets = sorted(target_sha[s] for s in uploads if s in target_sha)
    state = emu.state()
    outputs = outputs_in(ws.outbox("links"))
    archive = inbox / ".mh-done"
    archived = sorted(p for p in archive.rglob("*")) if archive.exists() else []
    record(
        "symlinks",
        files=8,
        faults=tally.total,
        create_requests=state["counts"]["create_requests"],
        duplicates=0,
        lost=0,
    )
    problems: list[str] = []
    if sent_targets:
        problems.append(f"link targets reached the service: {sent_targets}")
    link_rel = {"startup-link.mp4", "top-link.mp4", "sub/sub-link.mp4"}
    link_rel |= {"linkeddir/a.mp4", "linkeddir/b.mp4"}
    taken = sorted((j.rel_path, j.state.value) for j in jobs if j.rel_path in link_rel)
    if taken:
        problems.append(f"jobs made for links: {taken}")
    names = sorted(p["name"] for p in state["projects"])
    if any(n.removeprefix("links/") in link_rel for n in names):
        problems.append(f"projects created for links: {names}")
    # A victim project is legal only when made from the bytes that settled (its own content).
    for project in state["projects"]:
        own = project_upload_sha(tmp_path, project) == sha256(victim_src)
        if project["name"] == "links/victim.mp4" and not own:
            problems.append(f"the victim's project was not made from its own bytes: {project}")
    out_names = sorted(p.relative_to(ws.outbox("links")).as_posix() for p in outputs)
    if "control.pixar.mp4" not in out_names:
        problems.append(f"control not delivered: {out_names}")
    bad_outs = [
        n for n in out_names if n.startswith(("top-link", "startup-link", "sub/", "linkeddir"))
    ]
    if bad_outs:
        problems.append(f"outputs made from links: {bad_outs}")
    # The links are where they were, still links, their targets untouched.
    for key, link in links.items():
        if not os.path.islink(link):
            problems.append(f"{key}: {link} is no longer a symlink")
    for key, data in target_bytes.items():
        if not targets[key].exists() or targets[key].read_bytes() != data:
            problems.append(f"the link target {targets[key]} was moved or changed")
    # Nothing but real files archived: never a link, never a link target's bytes.
    for p in archived:
        if p.is_symlink():
            problems.append(f"a link was archived: {p}")
        elif p.is_file() and sha256(p) in target_sha:
            problems.append(f"a link target's bytes were archived: {p}")
    archived_names = sorted(p.relative_to(archive).as_posix() for p in archived if p.is_file())
    if not set(archived_names) <= {"control.mp4", "victim.mp4"}:
        problems.append(f"unexpected files archived: {archived_names}")
    victim_job = next(j for j in jobs if j.rel_path == "victim.mp4")
    assert not problems, "\n".join(
        [*problems, f"victim job: {victim_job.state.value} {victim_job.last_error!r}"]
    )
