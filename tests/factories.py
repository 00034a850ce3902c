"""Job records for the pure tests: one settings snapshot and one way to put a job in a state."""

from __future__ import annotations

import dataclasses

from mh_watchd.core.api import Style
from mh_watchd.core.jobs import HoldReason, Job, JobSettings, JobState

SETTINGS = JobSettings(
    style=Style(art_style="Studio Ghibli", version="v2"),
    style_slug="studio-ghibli",
    fps_resolution="HALF",
    start_seconds=0.0,
    max_seconds=60.0,
    inbox="/in",
    outbox="/out",
    archive="/in/.mh-done",
    failed="/in/.mh-failed",
    on_success="archive",
)


def job_in(
    state: JobState,
    *,
    hold_reason: HoldReason = HoldReason.OUTAGE,
    resume_state: JobState = JobState.QUEUED,
    **changes: object,
) -> Job:
    """A job record in `state`; a held one is held for `hold_reason`, resuming `resume_state`.

    The fields are not checked against the state table: tests put records anywhere.
    """
    job = Job(folder="anime", rel_path="a.mp4", size=10, mtime_ns=1, inode=2, settings=SETTINGS)
    if state is JobState.HELD:
        changes = {"hold_reason": hold_reason, "resume_state": resume_state, **changes}
    return dataclasses.replace(job, state=state, **changes)  # type: ignore[arg-type]
