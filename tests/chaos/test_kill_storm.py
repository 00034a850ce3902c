"""SIGKILL at random points over many files, under a fault storm on every route, with bad
inputs mixed in: every good file delivered exactly once, every bad one failed with its report.

A create cut off by a kill may leave its job held `ambiguous_create` (Invariant 5): the test
reads which jobs the journal holds so, retries them explicitly, and allows exactly one extra
project per such retry, never more. Every other create is accounted for: create requests =
projects created + creates the emulator refused on purpose (503/429 faults).
"""

from __future__ import annotations

import json
import random
import time
from collections import Counter
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest

from mh_watchd.adapters.samples import synthesize_clip
from mh_watchd.core.jobs import HoldReason, Job, JobState
from mh_watchd.emulator import EmulatorServer
from tests.chaos.conftest import (
    LONG,
    ChaosWorkspace,
    DaemonProcess,
    FaultTally,
    cli,
    counts,
    decoded_duration,
    hold_for,
    inject,
    outputs_in,
    record,
    settle_ambiguous,
    size,
)
from tests.e2e.conftest import read_jobs, wait_jobs

pytestmark = [pytest.mark.slow, pytest.mark.chaos_long]

SEEDS = [11, 23, 37] if LONG else [11]
GOOD_FILES = size(short=6, long=32)
KILLS = size(short=4, long=22)
KILL_STATES = (
    JobState.UPLOADING,
    JobState.SUBMITTING,
    JobState.RENDERING,
    JobState.DOWNLOADING,
    JobState.DELIVERING,
)
STYLE_SLUG = "pixar"


def storm_plan(seed: int) -> dict[str, Any]:
    """15% 503 and 5% 429 everywhere, resets on transfers, truncated downloads, slow creates
    (to widen the window a kill lands inside a create). No after_commit: see its own test."""
    rules: list[dict[str, Any]] = [
        {"route": "create", "fault": "slow", "delay": 0.8, "rate": 0.25},
        {"route": "upload", "fault": "reset", "rate": 0.1},
        {"route": "download", "fault": "reset", "rate": 0.1},
        {"route": "download", "fault": "truncate", "rate": 0.15},
    ]
    for route in ("create", "get", "upload_urls", "upload", "download"):
        rules.append({"route": route, "fault": "status", "status": 503, "rate": 0.15})
        rules.append(
            {"route": route, "fault": "status", "status": 429, "rate": 0.05, "retry_after": 0}
        )
    return {"seed": seed, "rules": rules}


def _summary(jobs: list[Job]) -> list[tuple[object, ...]]:
    return [
        (j.id, j.rel_path, j.state.value, j.hold_reason.value if j.hold_reason else None)
        for j in sorted(jobs, key=lambda j: j.id or 0)
    ]


@pytest.mark.timeout(1800 if LONG else 300)
@pytest.mark.parametrize("seed", SEEDS)
def test_sigkill_storm_delivers_every_good_file_exactly_once(
    seed: int,
    workspace: ChaosWorkspace,
    daemon: Callable[..., DaemonProcess],
    daemon_env: dict[str, str],
    emu: EmulatorServer,
    tmp_path: Path,
) -> None:
    ws = workspace
    rng = random.Random(seed)
    ws.add("storm", style={"art_style": "Pixar"})
    inbox = ws.inbox("storm")
    keep = tmp_path / "keep"
    good: dict[str, bytes] = {}
    for i in range(GOOD_FILES):
        name = f"clip{i:02d}.mkv" if i % 5 == 4 else f"clip{i:02d}.mp4"
        good[name] = synthesize_clip(keep / name, seconds=1.0, hue=(i * 37) % 256).read_bytes()
    whole = next(iter(good.values()))
    bad = {
        "truncated.mp4": whole[: len(whole) // 2],
        "notes.mp4": b"this is not a video, just a text file renamed\n" * 30,
    }
    waiting = {"empty.mp4": b""}  # an empty file waits in place (min_size_bytes = 1)

    # Drop the files in waves: a third now, the rest between kills.
    pending = list(good.items()) + list(bad.items()) + list(waiting.items())
    rng.shuffle(pending)
    first = max(1, len(pending) // 3)

    def drop(batch: list[tuple[str, bytes]]) -> None:
        for name, data in batch:
            (inbox / name).write_bytes(data)

    drop(pending[:first])
    pending = pending[first:]
    tally = inject(emu, storm_plan(seed), FaultTally())
    proc = daemon()
    kills = 0
    kill_log: list[str] = []
    for k in range(KILLS):
        target = rng.choice((*KILL_STATES, None))
        deadline = time.monotonic() + 8.0
        while time.monotonic() < deadline:
            if target is None:
                break
            if any(j.state is target for j in read_jobs(ws.state_dir)):
                break
            if not proc.alive():
                pytest.fail(f"the daemon died by itself:\n{proc.log_text()[-3000:]}")
            time.sleep(0.05)
        jitter = rng.uniform(0.0, 0.5) if target is not None else rng.uniform(0.3, 2.5)
        hold_for(proc.alive, jitter, what="the daemon alive before a kill", proc=proc)
        proc.kill()
        kills += 1
        kill_log.append(f"kill {k + 1}: at {target.value if target else 'a random time'}")
        if pending:
            take = max(1, len(pending) // max(1, KILLS - k))
            drop(pending[:take])
            pending = pending[take:]
        proc = daemon()
    drop(pending)

    budget = 900.0 if LONG else 150.0

    def retry(job_id: int) -> None:
        result = cli(ws, daemon_env, "retry", str(job_id))
        assert result.returncode == 0, result.stderr

    ambiguous_retries = settle_ambiguous(
        set(good),
        wait_jobs=lambda settled: wait_jobs(
            ws.state_dir,
            settled,
            proc=proc,
            timeout_seconds=budget,
            what=f"every good file done or held ambiguous (seed {seed})",
        ),
        read_jobs=lambda: read_jobs(ws.state_dir),
        retry=retry,
        # and every bad file failed
        also=lambda by: all(any(j.state is JobState.FAILED for j in by.get(n, [])) for n in bad),
    )

    jobs = read_jobs(ws.state_dir)
    hold_for(proc.alive, 0.5, what="the daemon alive at the end", proc=proc)
    assert proc.stop() == 0
    state = emu.state()
    c = state["counts"]
    outbox = ws.outbox("storm")
    outputs = outputs_in(outbox)
    outs_by_stem: Counter[str] = Counter()
    for p in outputs:
        stem = p.name.split(".")[0].split(" (")[0]
        outs_by_stem[stem] += 1
    projects_by_name = Counter(p["name"] for p in state["projects"])

    problems: list[str] = []
    duplicates = 0
    lost = 0
    for name, data in good.items():
        stem = name.rsplit(".", 1)[0]
        allowed = 1 + ambiguous_retries[name]
        made = projects_by_name[f"storm/{name}"]
        n_out = outs_by_stem[stem]
        if made > allowed:
            duplicates += made - allowed
            problems.append(f"{name}: {made} projects, at most {allowed} allowed")
        if n_out > 1:
            duplicates += n_out - 1
            problems.append(f"{name}: {n_out} outputs")
        if n_out == 0:
            lost += 1
            problems.append(f"{name}: no output")
        else:
            out = outbox / f"{stem}.{STYLE_SLUG}.mp4"
            duration = decoded_duration(out) if out.exists() else None
            if duration is None or abs(duration - 1.0) > 0.5:
                problems.append(f"{name}: output {out.name} does not decode to ~1 s ({duration})")
        archived = inbox / ".mh-done" / name
        if not archived.exists() or archived.read_bytes() != data:
            problems.append(f"{name}: original not archived byte for byte")
            left = inbox / name
            if n_out and not (left.exists() and left.read_bytes() == data):
                lost += 1  # delivered, but the original is neither archived nor in place

    for name, data in bad.items():
        failed = inbox / ".mh-failed" / name
        report = inbox / ".mh-failed" / f"{name}.error.json"
        if not failed.exists() or failed.read_bytes() != data:
            problems.append(f"{name}: not moved to the failed folder intact")
        if not report.exists():
            problems.append(f"{name}: no .error.json")
        else:
            doc = json.loads(report.read_text())
            if not doc.get("what_happened") or not doc.get("what_to_do"):
                problems.append(f"{name}: .error.json says too little: {doc}")
        if any(p == f"storm/{name}" for p in projects_by_name):
            problems.append(f"{name}: a bad file reached the service")
    for name, data in waiting.items():
        if not (inbox / name).exists() or (inbox / name).read_bytes() != data:
            problems.append(f"{name}: the empty file did not wait in place")
    refused = tally.on("create", "status")
    if c["create_requests"] != c["creates"] + refused:
        problems.append(
            f"create requests {c['create_requests']} != projects {c['creates']} + refused "
            f"{refused}: a create went out that neither made a project nor was refused"
        )
    if c["creates"] > len(good) + sum(ambiguous_retries.values()):
        problems.append(
            f"{c['creates']} projects for {len(good)} good files and "
            f"{sum(ambiguous_retries.values())} ambiguous retries"
        )
    extra_jobs = [
        (j.rel_path, j.state.value)
        for j in jobs
        if j.state not in (JobState.DONE, JobState.FAILED, JobState.SUPERSEDED)
    ]
    if extra_jobs:
        problems.append(f"jobs left unfinished: {extra_jobs}")
    if "Traceback" in proc.log_text():  # every run's log: they share one file
        problems.append("a traceback in the daemon's log")

    record(
        f"kill_storm[seed={seed}]",
        files=len(good) + len(bad) + len(waiting),
        kills=kills,
        faults=tally.total,
        create_requests=c["create_requests"],
        duplicates=duplicates,
        lost=lost,
        ambiguous_retries=sum(ambiguous_retries.values()),
    )
    assert not problems, "\n".join(
        [
            *problems,
            f"ambiguous retries: {dict(ambiguous_retries)}",
            f"faults fired: {dict(tally.fired)}",
            f"counts: {c}",
            *kill_log,
            f"jobs: {_summary(jobs)}",
        ]
    )
    assert duplicates == 0 and lost == 0


def test_after_commit_create_is_held_ambiguous_and_never_resent_without_retry(
    workspace: ChaosWorkspace,
    daemon: Callable[..., DaemonProcess],
    daemon_env: dict[str, str],
    emu: EmulatorServer,
    tmp_path: Path,
) -> None:
    ws = workspace
    ws.add("anime", style={"art_style": "Pixar"})
    tally = inject(emu, {"rules": [{"route": "create", "fault": "after_commit", "times": 1}]})
    proc = daemon()
    clip = synthesize_clip(tmp_path / "keep" / "clip.mp4", seconds=1.0).read_bytes()
    (ws.inbox("anime") / "clip.mp4").write_bytes(clip)
    jobs = wait_jobs(
        ws.state_dir,
        lambda js: any(j.hold_reason is HoldReason.AMBIGUOUS_CREATE for j in js),
        proc=proc,
        timeout_seconds=40,
        what="the job held as ambiguous_create after a create committed without an answer",
    )
    hold_for(
        lambda: counts(emu)["create_requests"] == 1,
        2.0,
        what="no second create without a retry",
        proc=proc,
        show=lambda: counts(emu),
    )
    assert counts(emu)["creates"] == 1
    result = cli(ws, daemon_env, "retry", str(jobs[0].id))
    assert result.returncode == 0, result.stderr
    assert "anime/clip.mp4" in result.stdout
    wait_jobs(
        ws.state_dir,
        lambda js: all(j.state is JobState.DONE for j in js),
        proc=proc,
        timeout_seconds=40,
        what="delivery after the retry",
    )
    assert proc.stop() == 0
    c = counts(emu)
    outputs = outputs_in(ws.outbox("anime"))
    record(
        "after_commit",
        files=1,
        faults=tally.total,
        create_requests=c["create_requests"],
        duplicates=max(0, len(outputs) - 1) + max(0, c["creates"] - 2),
        lost=0 if outputs else 1,
    )
    assert c["create_requests"] == 2, c  # the committed one, and the one `retry` asked for
    assert [p.name for p in outputs] == ["clip.pixar.mp4"]
