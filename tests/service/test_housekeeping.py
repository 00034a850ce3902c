"""Housekeeping under a fake monotonic clock: a minute after start, then daily, old history is
compacted in a worker (not on the loop thread) and logged; a closed journal gate or
history_days = 0 skips it; stopping cancels it."""

from __future__ import annotations

import dataclasses
import threading
import time
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

import pytest
from structlog.testing import capture_logs

from mh_watchd.adapters.fs import LocalFileSystem
from mh_watchd.adapters.journal import Journal
from mh_watchd.adapters.metrics import Metrics
from mh_watchd.core.config import ApiConfig, Config, DaemonConfig, NotifyConfig
from mh_watchd.core.jobs import JobState
from mh_watchd.core.tracker import IntakeTracker
from mh_watchd.service import housekeeping
from mh_watchd.service.context import Context, JournalGate
from mh_watchd.service.housekeeping import Housekeeping
from mh_watchd.service.loop import Loop
from tests.adapters.test_journal_history import DAY, DONE_PATH, make_job

WALL_NOW = 2_000 * DAY


class Clock:
    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


@pytest.fixture
def ctx(tmp_path: Path) -> Iterator[Context]:
    mono = Clock()
    journal = Journal.open(tmp_path)
    loop = Loop(monotonic=mono, on_error=lambda exc: None, after_turn=lambda: None)
    config = Config(
        api=ApiConfig(),
        daemon=DaemonConfig(state_dir=tmp_path, history_days=30),  # type: ignore[arg-type]
        styles={},
        folders=(),
        notify=NotifyConfig(),
    )
    context = Context(
        config=config,
        journal=journal,
        fs=LocalFileSystem(),
        runner=None,  # type: ignore[arg-type]
        loop=loop,
        gate=JournalGate(journal, loop, clock=lambda: WALL_NOW, monotonic=mono),
        metrics=Metrics(),
        clock=lambda: WALL_NOW,
        monotonic=mono,
        tracker=IntakeTracker(0.0),
        api_pool=ThreadPoolExecutor(1),
        alert=lambda *a, **k: None,
    )
    yield context
    context.api_pool.shutdown()
    journal.close()


def turn_until(ctx: Context, condition: Any) -> None:
    deadline = time.monotonic() + 10.0
    while not condition():
        assert time.monotonic() < deadline, "condition not reached"
        ctx.loop.turn(0.05)


def named(logs: list[dict[str, Any]], event: str) -> list[dict[str, Any]]:
    return [entry for entry in logs if entry["event"] == event]


def test_history_is_compacted_a_minute_after_start_then_daily_off_the_loop_thread(
    ctx: Context,
) -> None:
    old = make_job(ctx.journal, "old.mp4", DONE_PATH, start=WALL_NOW - 40 * DAY)
    new = make_job(ctx.journal, "new.mp4", DONE_PATH, start=WALL_NOW - 10 * DAY)
    assert old.id is not None and new.id is not None
    worker_threads: list[str] = []
    compact = ctx.journal.compact_history

    def spy(*args: Any, **kwargs: Any) -> Any:
        worker_threads.append(threading.current_thread().name)
        return compact(*args, **kwargs)

    ctx.journal.compact_history = spy  # type: ignore[method-assign]
    part = Housekeeping(ctx)
    try:
        with capture_logs() as logs:
            part.start()
            for _ in range(3):
                ctx.loop.turn(0.0)
            assert not worker_threads  # not before its minute
            ctx.monotonic.now += housekeeping.FIRST_RUN_SECONDS  # type: ignore[attr-defined]
            turn_until(ctx, lambda: named(logs, "journal.history_compacted"))
        (entry,) = named(logs, "journal.history_compacted")
        assert entry["events_deleted"] == len(DONE_PATH) and entry["jobs_compacted"] == 1
        assert entry["history_days"] == 30 and entry["finished"] is True
        assert worker_threads and worker_threads[0].startswith("mh-housekeeping")
        assert len(ctx.journal.events(old.id)) == 1
        assert len(ctx.journal.events(new.id)) == len(DONE_PATH) + 1
        assert ctx.loop.due(housekeeping.TIMER_KEY) == pytest.approx(
            ctx.monotonic() + housekeeping.RUN_EVERY_SECONDS
        )
    finally:
        part.stop()
    assert ctx.loop.due(housekeeping.TIMER_KEY) is None


def test_a_closed_journal_gate_skips_the_run_and_tries_again_sooner(ctx: Context) -> None:
    old = make_job(ctx.journal, "old.mp4", DONE_PATH, start=WALL_NOW - 40 * DAY)
    assert old.id is not None
    ctx.gate.error = "disk full"
    part = Housekeeping(ctx)
    try:
        with capture_logs() as logs:
            part.run_now()
        assert named(logs, "journal.history_skipped")
        assert len(ctx.journal.events(old.id)) == len(DONE_PATH) + 1
        assert ctx.loop.due(housekeeping.TIMER_KEY) == pytest.approx(
            ctx.monotonic() + housekeeping.SKIPPED_RETRY_SECONDS
        )
    finally:
        part.stop()


def test_history_days_zero_keeps_every_event(ctx: Context) -> None:
    ctx.config = dataclasses.replace(
        ctx.config, daemon=dataclasses.replace(ctx.config.daemon, history_days=0)
    )
    old = make_job(ctx.journal, "old.mp4", DONE_PATH, start=WALL_NOW - 4000 * DAY)
    assert old.id is not None
    part = Housekeeping(ctx)
    try:
        part.run_now()
        for _ in range(3):
            ctx.loop.turn(0.01)
        assert len(ctx.journal.events(old.id)) == len(DONE_PATH) + 1
        assert ctx.journal.get(old.id) is not None and old.state is JobState.DONE
    finally:
        part.stop()


def test_a_stopping_daemon_starts_no_run(ctx: Context) -> None:
    old = make_job(ctx.journal, "old.mp4", DONE_PATH, start=WALL_NOW - 40 * DAY)
    assert old.id is not None
    part = Housekeeping(ctx)
    part.start()
    part.stop()
    assert ctx.loop.due(housekeeping.TIMER_KEY) is None
    part.run_now()  # a timer that fired anyway does nothing
    assert len(ctx.journal.events(old.id)) == len(DONE_PATH) + 1
