"""Intake never forgets a file because a listing or a stat pass began before it arrived: an
event that names a file after the pass began wins over the pass's older view."""

from __future__ import annotations

import os
from concurrent.futures import Future
from pathlib import Path, PurePosixPath

from mh_watchd.adapters.watcher import FsEvent
from mh_watchd.service.failures import FailureFiler
from mh_watchd.service.intake import Intake
from tests.service.test_scheduling import build

KEY = ("anime", "new.mp4")
OLD = ("anime", "old.mp4")


def test_a_file_renamed_in_during_a_rescan_is_kept(tmp_path: Path) -> None:
    ctx, book, _scheduler, _runner, mono = build(tmp_path)
    try:
        intake = Intake(ctx, book, FailureFiler(ctx, book), {})
        rt = ctx.folders["anime"]
        ctx.tracker.touched(OLD, mono.now)  # pending from before the rescan
        mono.now += 1.0
        rt.scan_started = mono.now  # the rescan starts listing...
        mono.now += 1.0
        intake.on_event(FsEvent("anime", PurePosixPath("new.mp4"), "changed"))  # ...a rename
        intake.on_scan(rt, [])  # the listing was taken before the rename: neither is in it
        assert ctx.tracker.is_pending(KEY), "the renamed-in file was forgotten"
        assert not ctx.tracker.is_pending(OLD)  # gone before the listing: forgotten
    finally:
        ctx.api_pool.shutdown()
        ctx.folders["anime"].close()
        ctx.journal.close()


def test_a_stat_pass_older_than_an_event_does_not_forget_the_file(tmp_path: Path) -> None:
    ctx, book, _scheduler, _runner, mono = build(tmp_path)
    try:
        intake = Intake(ctx, book, FailureFiler(ctx, book), {})
        rt = ctx.folders["anime"]
        rt.stat_started = mono.now  # a stat pass lstat's new.mp4: not there yet
        stale: Future[list[tuple[str, os.stat_result | None, bool]]] = Future()
        stale.set_result([("new.mp4", None, True)])
        rt.stat_future = stale
        mono.now += 1.0
        intake.on_event(FsEvent("anime", PurePosixPath("new.mp4"), "changed"))
        intake._stats_done(rt, stale, quick=False)
        assert ctx.tracker.is_pending(KEY), "a stale stat forgot a file an event named"
        assert ctx.loop.due(("stat", "anime")) is not None  # and it is looked at again
    finally:
        ctx.api_pool.shutdown()
        ctx.folders["anime"].close()
        ctx.journal.close()
