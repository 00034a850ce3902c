"""Requests from the command line (`mh-watchd retry`), handed over through the journal.

The CLI writes a request row; the daemon looks for new ones every `REQUEST_CHECK_SECONDS`
(and at once when another host's write wakes it) and answers each in the row. File moves a
retry needs run in the folder's worker.

On a shared journal a request is answered by one host: one that has the job's folder and may
write the job (it holds it, or nobody does). It claims the request first, so no two hosts move
the same file back.
"""

from __future__ import annotations

import dataclasses
import os
import stat
from concurrent.futures import Future
from pathlib import Path
from typing import Any

import structlog

from mh_watchd.core.jobs import HoldReason, Job, JobState, transition
from mh_watchd.core.tracker import Stats
from mh_watchd.service.account import AccountGate
from mh_watchd.service.context import Context
from mh_watchd.service.folders import FolderSupervisor
from mh_watchd.service.jobbook import JobBook
from mh_watchd.service.logctx import job_context

log = structlog.get_logger("mh_watchd")

REQUEST_CHECK_SECONDS = 1.0
# On a shared journal LISTEN/NOTIFY brings requests at once; this is the net under it.
SHARED_REQUEST_CHECK_SECONDS = 5.0
_S = JobState

Found = tuple[str, os.stat_result | None]
# A job that starts its render over: no project, no cost booked to it, no render status.
NO_RENDER: dict[str, Any] = dict(
    project_id=None,
    render_started_at=None,
    render_status=None,
    credits_charged=None,
    credits_final=None,
    credits_day=None,
)


class RequestHandler:
    """Answers the journal's pending requests."""

    def __init__(
        self,
        ctx: Context,
        book: JobBook,
        account: AccountGate,
        supervisors: dict[str, FolderSupervisor],
    ) -> None:
        self._ctx = ctx
        self._book = book
        self._account = account
        self._supervisors = supervisors
        self._working: dict[int, Future[Found]] = {}

    def start(self) -> None:
        self._ctx.loop.after(0.0, self._check, key="requests")

    def check_now(self) -> None:
        """Look at the pending requests on this turn (another host said one came)."""
        self._ctx.loop.after(0.0, self._check, key="requests")

    def _check(self) -> None:
        ctx = self._ctx
        if ctx.stopping:
            return
        every = SHARED_REQUEST_CHECK_SECONDS if ctx.journal.shared else REQUEST_CHECK_SECONDS
        ctx.loop.after(every, self._check, key="requests")
        if ctx.gate.closed:
            return
        for request in ctx.journal.pending_requests():
            if request.id in self._working or not self._ours(request.id, request.job_id):
                continue
            result = self._handle(request.id, request.kind, request.job_id)
            if result is not None:
                self._finish(request.id, request.kind, request.job_id, result)

    def _ours(self, request_id: int, job_id: int | None) -> bool:
        """On a shared journal: is this request this host's to answer? (Then it is claimed.)"""
        ctx = self._ctx
        if not ctx.journal.shared:
            return True
        if job_id is not None:
            job = ctx.journal.get(job_id)
            if job is not None and (job.folder not in ctx.folders or not ctx.holds(job)):
                return False  # a host with the folder, or the job's holder, answers it
        return ctx.journal.claim_request(request_id)

    def _finish(self, request_id: int, kind: str, job_id: int | None, result: str) -> None:
        self._ctx.journal.finish_request(request_id, at=self._ctx.clock(), result=result)
        self._ctx.dirty = True
        log.info("request.handled", kind=kind, job_id=job_id, result=result)

    def _handle(self, request_id: int, kind: str, job_id: int | None) -> str | None:
        """The result of a request, or None when its file work went to a worker."""
        if kind != "retry" or job_id is None:
            return f"unknown request {kind}"
        job = self._ctx.journal.get(job_id)
        if job is None:
            return "unknown job"
        if job_id in self._ctx.in_flight:
            return "busy; try again in a moment"
        if job.state is _S.SUPERSEDED:
            return "superseded: the file changed before its upload finished; nothing to retry"
        if job.state in (_S.FAILED, _S.DONE):
            job = self._ctx.local(job)  # recorded by another host: this host's paths
            rt = self._ctx.folders.get(job.folder)
            pool = rt.io if rt is not None and not rt.closed else self._ctx.api_pool
            fut = pool.submit(self._find_files, job)
            self._working[request_id] = fut
            self._ctx.post_result(fut, lambda f: self._files_found(request_id, job_id, f))
            return None
        if job.state is _S.HELD:
            with job_context(job):
                return self._retry_held(job)
        return f"not retryable in state {job.state.value}"

    def _find_files(self, job: Job) -> Found:
        """Runs in the folder's worker: a failed original moved back to its inbox; returns the
        path (relative to the inbox) the file is at now and its lstat (None: not there)."""
        rel = job.rel_path
        if job.state is _S.FAILED:
            rel = self._ctx.runner.restore_failed(job) or job.rel_path
        st = self._ctx.fs.stat(Path(job.settings.inbox) / rel)
        if st is None or not stat.S_ISREG(st.st_mode):
            return rel, None
        return rel, st

    def _files_found(self, request_id: int, job_id: int, fut: Future[Found]) -> None:
        del self._working[request_id]
        try:
            result = self._requeue(job_id, *fut.result())
        except Exception as exc:
            log.warning("request.failed", request_id=request_id, error=str(exc))
            result = f"failed: {exc}"
        self._finish(request_id, "retry", job_id, result)

    def _requeue(self, job_id: int, rel: str, st: os.stat_result | None) -> str:
        job = self._ctx.journal.get(job_id)
        if job is None or job.state not in (_S.FAILED, _S.DONE) or job_id in self._ctx.in_flight:
            return "the job changed meanwhile; nothing done"
        job = self._ctx.local(job)
        if st is None:
            if job.state is _S.FAILED:
                return "the original is not in the failed folder or the inbox any more"
            return "the original is no longer in the inbox"
        stats: Stats = (st.st_size, st.st_mtime_ns, st.st_ino)
        with job_context(job):
            if job.state is _S.FAILED:
                new = self._fresh_version(job, stats, rel_path=rel, failed_path=None)
                self._book.save(new, "job.retried", {"from": "failed"})
            else:
                new = self._fresh_version(job, stats, archive_path=None, original_left=False)
                self._ctx.tracker.unskip((job.folder, job.rel_path))
                self._book.save(new, "job.retried", {"from": "done"})
        self._ctx.tracker.remember((job.folder, rel), stats)
        return "requeued"

    def _retry_held(self, job: Job) -> str:
        assert job.id is not None
        now = self._ctx.clock()
        reset: dict[str, Any] = dict(attempts=0, due_at=None, last_error=None, updated_at=now)
        if job.hold_reason in (HoldReason.AMBIGUOUS_CREATE, HoldReason.RENDER_OVERDUE):
            if job.project_id is not None:
                self._book.book(job, job.credits_final or job.credits_charged)
            elif job.credits_day is not None:
                # The lost create may have been charged: keep its estimate booked.
                self._ctx.journal.book_charge(
                    job_id=job.id,
                    project_id=f"unanswered-create:{job.id}:{now:.0f}",
                    day=job.credits_day,
                    credits=job.credits_estimate or 0,
                    at=now,
                )
            new = transition(job, _S.QUEUED, **NO_RENDER, **reset)
            self._book.save(
                new, "job.retried", {"from": job.hold_reason.value if job.hold_reason else ""}
            )
            return "requeued for a new create"
        self._account.recheck_now()
        for supervisor in self._supervisors.values():
            supervisor.check_now()
        self._book.save(dataclasses.replace(job, due_at=None, updated_at=now), "job.recheck", {})
        return "re-checking now"

    def _fresh_version(self, job: Job, stats: Stats, **changes: Any) -> Job:
        """`job` back in the queue for a new render of the file now at its path.

        Its earlier project stays booked in the journal's charges; the record starts over.
        """
        size, mtime_ns, inode = stats
        return transition(
            job,
            _S.QUEUED,
            size=size,
            mtime_ns=mtime_ns,
            inode=inode,
            sha256=None,
            upload_file_path=None,
            uploaded_at=None,
            outputs=(),
            **NO_RENDER,
            attempts=0,
            due_at=None,
            last_error=None,
            updated_at=self._ctx.clock(),
            **changes,
        )
