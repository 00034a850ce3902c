"""The daemon's parts over a real journal, driven turn by turn on a fake monotonic clock: the
loop holds no job state the journal lacks, a quiet poll costs no journal write, and a job's
next poll is a timer, not a tick."""

from __future__ import annotations

import dataclasses
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path, PurePosixPath
from typing import Any

import pytest

from mh_watchd.adapters.fs import LocalFileSystem
from mh_watchd.adapters.journal import Journal
from mh_watchd.adapters.metrics import Metrics
from mh_watchd.core.api import Project
from mh_watchd.core.config import ApiConfig, Config, DaemonConfig, FolderConfig, NotifyConfig
from mh_watchd.core.jobs import HoldReason, JobState
from mh_watchd.core.tracker import IntakeTracker
from mh_watchd.runner import StepOutcome
from mh_watchd.service.account import AccountGate
from mh_watchd.service.context import Context, FolderRuntime, JournalGate
from mh_watchd.service.failures import FailureFiler
from mh_watchd.service.jobbook import JobBook
from mh_watchd.service.loop import Loop
from mh_watchd.service.outcomes import OutcomeApplier
from mh_watchd.service.scheduler import Scheduler
from tests.factories import SETTINGS, job_in

POLL_SECONDS = 10.0


class Clock:
    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


class FakeRunner:
    """Steps that answer at once: a create makes project p1, polls say "rendering"."""

    def __init__(self) -> None:
        self.calls: list[str] = []

    def create(self, job: Any) -> StepOutcome:
        self.calls.append("create")
        changes = {"project_id": "p1", "credits_charged": 5, "render_status": "queued"}
        return StepOutcome(job.id, "create", {**changes, "render_started_at": time.time()})

    def poll(self, job: Any) -> StepOutcome:
        self.calls.append("poll")
        project = Project(
            id="p1",
            name="anime/a.mp4",
            status="rendering",
            type="VIDEO_TO_VIDEO",
            created_at="2026-12-05T00:00:00Z",
            width=160,
            height=120,
            enabled=True,
            start_seconds=0.0,
            end_seconds=1.0,
            credits_charged=5,
            total_frame_cost=5,
            fps=24.0,
            error=None,
        )
        return StepOutcome(
            job.id,
            "poll",
            {"render_status": "rendering", "credits_final": 5},
            project=project,
        )


def build(tmp_path: Path) -> tuple[Context, JobBook, Scheduler, FakeRunner, Clock]:
    mono = Clock()
    journal = Journal.open(tmp_path)
    errors: list[BaseException] = []
    book_holder: list[Scheduler] = []
    loop = Loop(
        monotonic=mono,
        on_error=errors.append,
        after_turn=lambda: [s.schedule() for s in book_holder] and None,
    )
    runner = FakeRunner()
    config = Config(
        api=ApiConfig(poll_interval_seconds=POLL_SECONDS),
        daemon=DaemonConfig(state_dir=tmp_path),  # type: ignore[arg-type]
        styles={},
        folders=(),
        notify=NotifyConfig(),
    )
    ctx = Context(
        config=config,
        journal=journal,
        fs=LocalFileSystem(),
        runner=runner,  # type: ignore[arg-type]
        loop=loop,
        gate=JournalGate(journal, loop, clock=time.time, monotonic=mono),
        metrics=Metrics(),
        clock=time.time,
        monotonic=mono,
        tracker=IntakeTracker(0.0),
        api_pool=ThreadPoolExecutor(2),
        alert=lambda *a, **k: None,
    )
    folder = FolderConfig(
        name="anime",
        inbox=PurePosixPath(tmp_path / "in"),
        outbox=PurePosixPath(tmp_path / "out"),
        archive=PurePosixPath(tmp_path / "in/.mh-done"),
        failed=PurePosixPath(tmp_path / "in/.mh-failed"),
        style=SETTINGS.style,
        style_name=None,
    )
    ctx.folders["anime"] = FolderRuntime.create(folder)
    book = JobBook(ctx)
    account = AccountGate(ctx, book, client=lambda: None, probe_seconds=600)  # type: ignore[arg-type,return-value]
    progress: dict[int, float] = {}
    outcomes = OutcomeApplier(ctx, book, account, FailureFiler(ctx, book), progress=progress)
    scheduler = Scheduler(ctx, book, account, progress=progress, on_done=outcomes.step_done)
    book_holder.append(scheduler)
    return ctx, book, scheduler, runner, mono


def turn_until(ctx: Context, condition: Any) -> None:
    deadline = time.monotonic() + 10.0
    while not condition():
        assert time.monotonic() < deadline, "condition not reached"
        ctx.loop.turn(0.2)


def test_a_quiet_poll_is_a_timer_and_no_journal_write(tmp_path: Path) -> None:
    ctx, book, _scheduler, runner, mono = build(tmp_path)
    now = time.time()
    queued = job_in(
        JobState.QUEUED,
        upload_file_path="api-assets/a.mp4",
        uploaded_at=now,
        credits_estimate=5,
        created_at=now,
        updated_at=now,
    )
    job = book.insert(queued, "job.queued", {})
    assert job.id is not None
    try:
        # The pass journals `submitting` before the create runs; the create's outcome moves the
        # job to rendering, with its first poll a poll interval away on the monotonic clock.
        turn_until(ctx, lambda: runner.calls == ["create"] and not ctx.in_flight)
        journaled = ctx.journal.get(job.id)
        assert journaled is not None and journaled.state is JobState.RENDERING
        for _ in range(3):  # nothing is due: no tick polls early
            ctx.loop.turn(0.0)
        assert runner.calls == ["create"]
        assert ctx.loop.due(("job", job.id)) == pytest.approx(mono.now + POLL_SECONDS, abs=1.0)
        mono.now += POLL_SECONDS
        # The first poll sees the render running and its cost: a real change, journaled.
        turn_until(ctx, lambda: runner.calls.count("poll") == 1 and not ctx.in_flight)
        events_after_first_poll = len(ctx.journal.events(job.id))
        assert ctx.journal.events(job.id)[-1].event == "job.render_progress"
        assert ctx.loop.due(("job", job.id)) == pytest.approx(mono.now + POLL_SECONDS, abs=1.0)
        mono.now += POLL_SECONDS
        turn_until(ctx, lambda: runner.calls.count("poll") == 2 and not ctx.in_flight)
        # The second poll changed nothing: no journal write, and the book's row is the journal's.
        assert len(ctx.journal.events(job.id)) == events_after_first_poll
        assert book.jobs[job.id] == ctx.journal.get(job.id)
        assert ctx.loop.due(("job", job.id)) == pytest.approx(mono.now + POLL_SECONDS, abs=1.0)
    finally:
        ctx.api_pool.shutdown()
        ctx.folders["anime"].close()
        ctx.journal.close()


def test_a_create_another_host_s_spending_no_longer_fits_is_held_not_sent(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The pass decides on the day's spending it read; the write checks it again with every
    host's spending (another host may have spent meanwhile), and the create waits."""
    ctx, book, _scheduler, runner, _mono = build(tmp_path)
    ctx.config = dataclasses.replace(
        ctx.config, daemon=dataclasses.replace(ctx.config.daemon, daily_credit_limit=100)
    )
    now = time.time()
    day = time.strftime("%Y-%m-%d", time.localtime(now))
    # What another host spent today, already in the journal...
    ctx.journal.insert(
        job_in(
            JobState.DONE,
            rel_path="b.mp4",
            credits_estimate=70,
            credits_final=70,
            credits_day=day,
            created_at=now,
            updated_at=now,
        ),
        event="job.done",
    )
    # ...that this pass has not seen yet (it read the spending a moment before).
    monkeypatch.setattr(ctx.journal, "credits_spent", lambda _day: 0)
    job = book.insert(
        job_in(
            JobState.QUEUED,
            upload_file_path="api-assets/a.mp4",
            uploaded_at=now,
            credits_estimate=40,
            created_at=now,
        ),
        "job.queued",
        {},
    )
    assert job.id is not None
    try:
        turn_until(ctx, lambda: book.jobs[job.id].state is JobState.HELD)  # type: ignore[index]
        held = ctx.journal.get(job.id)
        assert held is not None and held.hold_reason is HoldReason.DAILY_LIMIT
        assert "spent today 70 (every host) + estimate 40 > limit 100" in (held.last_error or "")
        assert runner.calls == []  # never sent
        assert held.credits_day is None  # nothing booked for a create that was not made
    finally:
        ctx.api_pool.shutdown()
        ctx.folders["anime"].close()
        ctx.journal.close()
