"""A failed job: `failed` committed first, then its original filed away in the folder's worker,
now or, while the failed folder's share is away, once the folder check passes again."""

from __future__ import annotations

import contextlib
import dataclasses
from concurrent.futures import Future

import structlog

from mh_watchd.adapters.journal import JournalConflict
from mh_watchd.core.jobs import Job, JobState
from mh_watchd.service.context import Context, FolderRuntime
from mh_watchd.service.jobbook import JobBook

log = structlog.get_logger("mh_watchd")

# Why it failed, the request that met the failure, and what the service said.
Reason = tuple[str, str, str | None]


class FailureFiler:
    """Commits failures and files failed originals into the folder's failed folder."""

    def __init__(self, ctx: Context, book: JobBook) -> None:
        self._ctx = ctx
        self._book = book
        # folder -> job id -> reason: originals waiting for their share to answer.
        self.deferred: dict[str, dict[int, Reason]] = {}
        self.futures: list[Future[None]] = []

    def load(self) -> None:
        """At start-up: failed jobs whose original was never filed (the failed folder was away
        when the daemon stopped) are filed once their folder's check passes."""
        for job in self._ctx.journal.failed_unfiled():
            if job.id is not None:
                self.deferred.setdefault(job.folder, {})[job.id] = (
                    job.last_error or "failed",
                    "(recorded before a restart)",
                    None,
                )

    def fail(self, job: Job, reason: str, *, request: str, service: str | None) -> None:
        """Commit `failed`, then file the original away in the folder's worker."""
        failed = self._book.move(
            job, JobState.FAILED, "job.failed", last_error=reason, _detail={"why": reason}
        )
        self._ctx.alert("failed", failed, reason)
        self.file(failed, (reason, request, service))

    def file(self, failed: Job, reason: Reason) -> None:
        rt = self._ctx.folders.get(failed.folder)
        assert failed.id is not None
        if rt is None or rt.outage or rt.failed_problem or rt.closed:
            # The failed folder's share is away: file it once the folder check passes.
            self.deferred.setdefault(failed.folder, {})[failed.id] = reason
            return
        fut = rt.io.submit(self._file_it, failed, reason)
        self.futures = [f for f in self.futures if not f.done()]
        self.futures.append(fut)
        self._ctx.post_result(fut, lambda f: self._filed(f, failed, reason))

    def _file_it(self, failed: Job, reason: Reason) -> None:
        """Runs in the folder's worker: move the original, then record where it went."""
        why, request, service = reason
        path = self._ctx.runner.file_failure(failed, why, request=request, service=service)
        journal = self._ctx.journal
        assert failed.id is not None
        current = journal.get(failed.id)
        if current is None or current.state is not JobState.FAILED:
            return
        with contextlib.suppress(JournalConflict):  # a `retry` took it meanwhile
            journal.save(
                dataclasses.replace(current, failed_path=path, updated_at=self._ctx.clock()),
                event="job.original_filed",
                detail={"path": path},
                expect_state=JobState.FAILED,
            )

    def _filed(self, fut: Future[None], failed: Job, reason: Reason) -> None:
        exc = fut.exception()
        if exc is not None:
            log.error("job.failed_filing_error", job_id=failed.id, error=str(exc))
            assert failed.id is not None
            self.deferred.setdefault(failed.folder, {})[failed.id] = reason

    def file_deferred(self, rt: FolderRuntime) -> None:
        """The folder's shares answer again: file what waited for them."""
        waiting = self.deferred.pop(rt.config.name, None)
        if not waiting:
            return
        for job_id, reason in waiting.items():
            job = self._ctx.journal.get(job_id)
            if job is not None and job.state is JobState.FAILED and job.failed_path is None:
                self.file(job, reason)
