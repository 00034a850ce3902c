"""Log context bound once per job or file: every event logged inside names it."""

from __future__ import annotations

from contextlib import AbstractContextManager

import structlog

from mh_watchd.core.jobs import Job


def job_context(job: Job) -> AbstractContextManager[object]:
    """Bind `folder`, `file` and `job_id` for the events logged inside (this thread only)."""
    return structlog.contextvars.bound_contextvars(
        folder=job.folder, file=job.rel_path, job_id=job.id
    )


def file_context(folder: str, rel_path: str) -> AbstractContextManager[object]:
    """Bind `folder` and `file` for the events logged inside (this thread only)."""
    return structlog.contextvars.bound_contextvars(folder=folder, file=rel_path)


def folder_context(folder: str) -> AbstractContextManager[object]:
    """Bind `folder` for the events logged inside (this thread only)."""
    return structlog.contextvars.bound_contextvars(folder=folder)
