"""Files on their way in: watch events, stat passes, settling, and taking a file in as a job.

An event (or a rescan) makes a file pending in the tracker and asks its folder for a stat
pass at once; a pass that follows an event is confirmed by a second one straight away (two
identical stats settle a file), then passes come every `SETTLE_STAT_SECONDS` while anything
settles. A file whose path a running job holds waits for that job to move, with a slow timer
as a safety net. A settled, eligible file is probed and hashed in the folder's worker and
journaled as `queued` on the loop.
"""

from __future__ import annotations

import dataclasses
import stat
from concurrent.futures import Future
from pathlib import Path, PurePosixPath

import structlog

from mh_watchd.adapters.journal import ClaimLost, JournalConflict
from mh_watchd.adapters.watcher import FsEvent
from mh_watchd.core import naming
from mh_watchd.core.api import estimate_credits
from mh_watchd.core.config import FolderConfig
from mh_watchd.core.intake import (
    Verdict,
    classify,
    needs_journal,
    ready_marker_path,
    route_preset,
    take_verdict,
)
from mh_watchd.core.jobs import Job, JobSettings, JobState
from mh_watchd.core.tracker import Key
from mh_watchd.runner import IntakeResult
from mh_watchd.service.context import Context, FolderRuntime, ScanResult, Stats
from mh_watchd.service.failures import FailureFiler
from mh_watchd.service.folders import FolderSupervisor
from mh_watchd.service.jobbook import JobBook
from mh_watchd.service.logctx import file_context

log = structlog.get_logger("mh_watchd")

SETTLE_STAT_SECONDS = 0.5
# A file whose path a job holds is looked at this often even if the job never moves.
WAITING_STAT_SECONDS = 30.0


class Intake:
    """Takes settled files in as jobs; owns the stat passes and the intakes under way."""

    def __init__(
        self,
        ctx: Context,
        book: JobBook,
        failures: FailureFiler,
        supervisors: dict[str, FolderSupervisor],
    ) -> None:
        self._ctx = ctx
        self._book = book
        self._failures = failures
        self._supervisors = supervisors
        self.futures: dict[Key, Future[IntakeResult]] = {}
        # Intakes that finished while the journal refused writes: recorded once it takes them.
        self._kept: list[tuple[Key, Future[IntakeResult]]] = []

    # ------------------------------------------------------------------ events and rescans
    def on_event(self, event: FsEvent) -> None:
        rt = self._ctx.folders.get(event.folder)
        if rt is None or rt.outage or rt.closed:
            return
        supervisor = self._supervisors.get(event.folder)
        if supervisor is not None and supervisor.event(event):
            return
        key = (event.folder, event.rel_path.as_posix())
        if event.kind == "changed":
            # The next stat pass gives it an observation; the event restarts its quiet period.
            self._ctx.tracker.touched(key, self._ctx.monotonic())
            self._ctx.tracker.stop_waiting(key)
            rt.quick_confirm = True
            self.request_stat(rt)
        elif event.kind == "deleted":
            self._ctx.tracker.forget(key)

    def on_scan(self, rt: FolderRuntime, files: ScanResult) -> None:
        """A rescan's listing: new or changed files start settling; vanished ones are forgotten."""
        tracker, name = self._ctx.tracker, rt.config.name
        now = self._ctx.monotonic()
        seen = set()
        for rel, size, mtime_ns, inode in files:
            key = (name, rel)
            seen.add(key)
            stats = (size, mtime_ns, inode)
            # A big NAS tree is mostly unchanged files: only new or changed ones cost a
            # journal lookup.
            if tracker.unchanged_since_scan(key, stats):
                continue
            if self.verdict(rt, rel, size, mtime_ns, inode) == "skip":
                tracker.remember(key, stats)
                continue
            # "take" settles it; "later" keeps it settling until the job on its path lets go.
            tracker.observe(key, stats, now)
        for key in tracker.pending(name) + tracker.scanned_keys(name):
            if key in seen or key in self.futures:
                continue
            if tracker.changed_since(key, rt.scan_started):
                continue  # an event named it after the listing began: it may be newer
            tracker.forget(key)
        if tracker.pending(name):
            self.request_stat(rt)

    def job_saved(self, job: Job) -> None:
        """A job was written: a file waiting on its path is looked at again now."""
        key = (job.folder, job.rel_path)
        tracker = self._ctx.tracker
        if job.state is JobState.SUPERSEDED:
            tracker.touched(key, self._ctx.monotonic())  # its new content is a job of its own
        elif not tracker.stop_waiting(key):
            return
        rt = self._ctx.folders.get(job.folder)
        if rt is not None:
            self.request_stat(rt)

    # ------------------------------------------------------------------ stat passes
    def request_stat(self, rt: FolderRuntime, delay_seconds: float = 0.0) -> None:
        if rt.stat_future is not None:
            rt.stat_again = rt.stat_again or delay_seconds == 0.0
            return
        when = self._ctx.monotonic() + delay_seconds
        name = rt.config.name
        self._ctx.loop.at(when, lambda: self._run_stat(name), key=("stat", name))

    def _run_stat(self, name: str, *, waiting: bool = False) -> None:
        rt = self._ctx.folders.get(name)
        if rt is None or rt.outage or rt.closed or self._ctx.stopping:
            return
        if rt.stat_future is not None:
            rt.stat_again = True
            return
        tracker = self._ctx.tracker
        keys = tracker.pending(name) if waiting else tracker.settling(name)
        rels = [rel for _, rel in keys if (name, rel) not in self.futures]
        if not rels:
            return
        quick, rt.quick_confirm = rt.quick_confirm, False
        root = Path(str(rt.config.inbox))
        rt.stat_started = self._ctx.monotonic()
        fut = rt.io.submit(stat_many, self._ctx, root, rels, rt.config.ready_marker)
        rt.stat_future = fut
        self._ctx.post_result(fut, lambda f: self._stats_done(rt, f, quick=quick))

    def _stats_done(self, rt: FolderRuntime, fut: Future[Stats], *, quick: bool) -> None:
        if rt.stat_future is not fut:
            return
        rt.stat_future = None
        name = rt.config.name
        try:
            results = fut.result()
        except Exception as exc:
            log.warning("intake.stat_failed", folder=name, error=str(exc))
            results = []
        if rt.outage or rt.closed:
            return
        tracker, now = self._ctx.tracker, self._ctx.monotonic()
        for rel, st, marker_ready in results:
            key = (name, rel)
            if tracker.changed_since(key, rt.stat_started):
                rt.stat_again = True  # an event came after this stat: look again instead
                continue
            if st is None or not stat.S_ISREG(st.st_mode):
                tracker.forget(key)  # gone, or a link / not a file now: never taken
                continue
            stats = (st.st_size, st.st_mtime_ns, st.st_ino)
            verdict = self.verdict(rt, rel, *stats)
            if verdict == "skip":
                tracker.forget(key)
                tracker.remember(key, stats)
                continue
            # Takeable once settled only with its marker there and no job on its path.
            tracker.observe(key, stats, now, eligible=marker_ready and verdict == "take")
            if verdict == "later":
                tracker.wait_for_job(key)
        self._start_ready(rt)
        self._next_stat(rt, quick=quick)

    def _next_stat(self, rt: FolderRuntime, *, quick: bool) -> None:
        tracker, name = self._ctx.tracker, rt.config.name
        if rt.stat_again or quick:
            rt.stat_again = False
            self.request_stat(rt)  # an event came meanwhile, or an event's file to confirm
        elif tracker.settling(name):
            self.request_stat(rt, SETTLE_STAT_SECONDS)
        if tracker.waiting(name):
            self._ctx.loop.after(
                WAITING_STAT_SECONDS,
                lambda: self._run_stat(name, waiting=True),
                key=("later", name),
            )

    def verdict(self, rt: FolderRuntime, rel: str, size: int, mtime_ns: int, inode: int) -> str:
        """ "take" it in, "skip" this version for good, or look again "later" (the pure
        `core.intake.take_verdict`, with the journal asked only when it must be)."""
        folder = rt.config
        kind = classify(
            PurePosixPath(rel),
            size=size,
            include=folder.include,
            exclude=folder.exclude,
            min_size_bytes=folder.min_size_bytes,
            ready_marker=folder.ready_marker,
        )
        key = (folder.name, rel)
        tracker = self._ctx.tracker
        if kind is Verdict.NOT_VIDEO and tracker.first_not_video(key):
            log.info("intake.not_a_video_name", folder=folder.name, file=rel)
        skipped = tracker.is_skipped(key, (size, mtime_ns, inode))
        running = key in self.futures
        if not needs_journal(kind, skipped=skipped, intake_running=running):
            return take_verdict(kind, skipped=skipped, intake_running=running).value
        journal = self._ctx.journal
        if journal.known_version(folder.name, rel, size, mtime_ns, inode) is not None:
            return take_verdict(kind, skipped=False, intake_running=False, known_version=True)
        latest = journal.latest_for_path(folder.name, rel)
        return take_verdict(
            kind,
            skipped=False,
            intake_running=False,
            latest_finished=latest is None or latest.is_terminal,
            latest_started=latest is not None
            and (
                latest.upload_file_path is not None
                or latest.id in self._ctx.in_flight
                or not self._ctx.holds(latest)  # another host works on this file
            ),
        ).value

    # ------------------------------------------------------------------ taking files in
    def _start_ready(self, rt: FolderRuntime) -> None:
        ctx, name = self._ctx, rt.config.name
        if ctx.gate.closed or ctx.stopping:
            return
        now = ctx.monotonic()
        for key in ctx.tracker.pending(name):
            if key in self.futures:
                continue
            if not ctx.tracker.ready(key, now, rt.config.settle_seconds):
                continue  # still settling, its marker missing, or a job holds its path
            ctx.tracker.taken(key)
            rel = key[1]
            folder = self.effective_folder(rt.config, rel)
            latest = ctx.journal.latest_for_path(name, rel)
            fut = rt.io.submit(
                ctx.runner.intake,
                name,
                Path(str(folder.inbox)),
                rel,
                start_seconds=folder.start_seconds,
                max_seconds=folder.max_seconds,
                hash_now=latest is not None and latest.state is JobState.DONE,
            )
            self.futures[key] = fut
            ctx.post_result(fut, lambda f, key=key: self._intake_done(key, f))  # type: ignore[misc]

    def _intake_done(self, key: Key, fut: Future[IntakeResult]) -> None:
        if self.futures.get(key) is not fut:
            return
        if self._ctx.gate.closed:
            self._kept.append((key, fut))  # recorded once the journal takes writes again
            return
        del self.futures[key]
        self._record(key, fut)

    def apply_kept(self) -> None:
        """The journal takes writes again: record the intakes that finished meanwhile."""
        kept, self._kept = self._kept, []
        for key, fut in kept:
            self.futures.pop(key, None)
            self._record(key, fut)

    def _record(self, key: Key, fut: Future[IntakeResult]) -> None:
        try:
            result = fut.result()
        except Exception as exc:
            log.warning("intake.failed", folder=key[0], file=key[1], error=str(exc))
            self._ctx.tracker.forget(key)  # seen afresh by the next stat pass or rescan
            return
        try:
            with file_context(*key):
                self._apply(result)
        except Exception:
            self._ctx.tracker.forget(key)  # not recorded: the next rescan takes it again
            raise

    def _apply(self, r: IntakeResult) -> None:
        ctx = self._ctx
        key = (r.folder, r.rel_path)
        rt = ctx.folders.get(r.folder)
        if rt is None:
            return
        if r.vanished:  # gone, changed, or a link (never a candidate)
            ctx.tracker.forget(key)
            return
        now_mono = ctx.monotonic()
        stats = (r.size, r.mtime_ns, r.inode)
        if r.busy:
            ctx.tracker.observe(key, stats, now_mono)
            ctx.tracker.touched(key, now_mono)
            log.debug("intake.still_open_for_writing")
            self.request_stat(rt, SETTLE_STAT_SECONDS)
            return
        if r.sha256 is not None:
            done = ctx.journal.find_done_version(r.folder, r.rel_path, r.size, r.sha256)
            if done is not None:
                ctx.tracker.skip(key, stats)
                log.info(
                    "intake.already_done",
                    job_id=done.id,
                    output=[o.final_path for o in done.outputs],
                    hint=f"mh-watchd retry {done.id} renders it again",
                )
                return
        latest = ctx.journal.latest_for_path(r.folder, r.rel_path)
        if latest is not None and not latest.is_terminal:
            self._refresh(rt, latest, r)
            return
        try:
            self._queue(rt, r, expect_latest=(latest.id or 0) if latest is not None else 0)
        except JournalConflict as exc:
            if isinstance(exc, ClaimLost):
                raise
            # Another host recorded this file first: its job, not ours. Looked at again when
            # it changes (or that job lets go of it).
            log.info("intake.recorded_elsewhere", job_id=exc.job_id)
            ctx.tracker.remember(key, stats)

    def _refresh(self, rt: FolderRuntime, latest: Job, r: IntakeResult) -> None:
        """The same path came back changed before its upload: refresh that job's facts."""
        key = (r.folder, r.rel_path)
        if not self._ctx.holds(latest):
            # Another host holds that job: the file is its to look at.
            self._ctx.tracker.remember(key, (r.size, r.mtime_ns, r.inode))
            return
        if latest.upload_file_path is not None or latest.id in self._ctx.in_flight:
            # A job started on this path meanwhile: look again once it lets go.
            self._ctx.tracker.touched(key, self._ctx.monotonic())
            self.request_stat(rt, SETTLE_STAT_SECONDS)
            return
        updated = dataclasses.replace(
            latest,
            size=r.size,
            mtime_ns=r.mtime_ns,
            inode=r.inode,
            sha256=r.sha256,
            duration_seconds=r.duration_seconds,
            fps=r.fps,
            start_seconds=r.start_seconds,
            end_seconds=r.end_seconds,
            updated_at=self._ctx.clock(),
        )
        self._book.save(updated, "job.source_refreshed", {})
        self._ctx.tracker.remember(key, (r.size, r.mtime_ns, r.inode))

    def _queue(self, rt: FolderRuntime, r: IntakeResult, *, expect_latest: int) -> None:
        ctx = self._ctx
        now = ctx.clock()
        settings = self.settings_for(rt.config, r.rel_path)
        job = Job(
            folder=r.folder,
            rel_path=r.rel_path,
            size=r.size,
            mtime_ns=r.mtime_ns,
            inode=r.inode,
            settings=settings,
            sha256=r.sha256,
            duration_seconds=r.duration_seconds,
            fps=r.fps,
            start_seconds=r.start_seconds,
            end_seconds=r.end_seconds,
            service_name=naming.service_name(r.folder, PurePosixPath(r.rel_path)),
            created_at=now,
            updated_at=now,
        )
        if r.error is None:
            assert r.start_seconds is not None and r.end_seconds is not None
            estimate = estimate_credits(r.end_seconds - r.start_seconds, settings.fps_resolution)
            job = dataclasses.replace(job, credits_estimate=estimate)
        job = self._book.insert(job, "job.queued", {"size": r.size}, expect_latest=expect_latest)
        ctx.tracker.remember((r.folder, r.rel_path), (r.size, r.mtime_ns, r.inode))
        log.info("job.queued", job_id=job.id, estimate=job.credits_estimate)
        limit = ctx.config.daemon.daily_credit_limit
        if r.error is not None:
            self._failures.fail(
                job, r.error, request="local probe (nothing was sent)", service=None
            )
        elif limit and job.credits_estimate and job.credits_estimate > limit:
            self._failures.fail(
                job,
                f"over_daily_limit: this clip alone is estimated at {job.credits_estimate} "
                f"credits, more than daemon.daily_credit_limit = {limit}",
                request="local estimate (nothing was sent)",
                service=None,
            )

    # ------------------------------------------------------------------ settings
    def effective_folder(self, folder: FolderConfig, rel: str) -> FolderConfig:
        """The folder's settings for `rel`: a first-level subfolder named after a preset uses
        that preset's style (the folder's own fps/trim keys still win)."""
        config = self._ctx.config
        name = route_preset(
            PurePosixPath(rel),
            recursive=folder.recursive,
            preset_names=[p.name for p in config.styles.values()],
        )
        preset = config.preset(name) if name is not None else None
        return folder.with_preset(preset) if preset is not None else folder

    def settings_for(self, folder: FolderConfig, rel: str) -> JobSettings:
        f = self.effective_folder(folder, rel)
        return JobSettings(
            style=f.style,
            style_slug=naming.style_slug(f.style.art_style),
            fps_resolution=f.fps_resolution,
            start_seconds=f.start_seconds,
            max_seconds=f.max_seconds,
            inbox=str(f.inbox),
            outbox=str(f.outbox),
            archive=str(f.archive),
            failed=str(f.failed),
            on_success=f.on_success,
        )


def stat_many(ctx: Context, root: Path, rels: list[str], marker: str) -> Stats:
    """Runs in the folder's worker: lstat each pending file (None when it is gone) and whether
    its ready marker exists (True when the folder uses none)."""
    results = []
    for rel in rels:
        st = ctx.fs.stat(root / rel)
        ready = True
        if marker and st is not None:
            ready = ctx.fs.stat(root / ready_marker_path(PurePosixPath(rel), marker)) is not None
        results.append((rel, st, ready))
    return results
