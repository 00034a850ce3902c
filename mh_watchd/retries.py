"""Retry requests: the one path by which `mh-watchd retry` and the web page's Retry buttons
(and `POST /api/retry`) put failed or held jobs back in the queue.

Nothing here touches a job: it checks what was asked, then writes one "retry" request per job
to the journal. The running daemon acts on them within seconds; a stopped one when it starts.
"""

from __future__ import annotations

import os
from collections.abc import Sequence
from dataclasses import dataclass

from mh_watchd.adapters.journal import Journal
from mh_watchd.core.jobs import HoldReason, Job, JobState
from mh_watchd.report import is_superseded, superseded_message


@dataclass(frozen=True)
class RetryTarget:
    """One job a retry was requested for, and what the user must know about it."""

    id: int
    folder: str
    file: str
    state: str
    # Set for a held `ambiguous_create`: the service name to look for before paying twice.
    warning: str | None = None

    def as_dict(self) -> dict[str, object]:
        return {
            "id": self.id,
            "folder": self.folder,
            "file": self.file,
            "state": self.state,
            "warning": self.warning,
        }


@dataclass(frozen=True)
class RetryOutcome:
    """What `request_retries` did: `problems` non-empty means nothing was written."""

    requested: tuple[RetryTarget, ...] = ()
    problems: tuple[str, ...] = ()
    daemon_running: bool = False

    @property
    def ok(self) -> bool:
        return not self.problems


def _resolve(journal: Journal, raw: str) -> Job | str:
    """The job named by a journal id or a project id, or why it cannot be retried."""
    job = journal.get(int(raw)) if raw.isdigit() else journal.by_project_id(raw)
    if job is None:
        return f"{raw}: no such job"
    if is_superseded(job):
        # Never retried: its file is gone or changed; the newer content is its own job.
        return superseded_message(job, journal.latest_for_path(job.folder, job.rel_path))
    if job.state not in (JobState.FAILED, JobState.HELD, JobState.DONE):
        return f"{raw}: {job.state.value}, not failed, held or done; nothing to retry"
    return job


# On a shared journal a host counts as running when it renewed its leases this recently (a
# daemon renews every third of daemon.lease_seconds; 60 s by default).
SHARED_ALIVE_SECONDS = 180.0


def daemon_running(journal: Journal) -> bool:
    """True when a daemon will see the requests: on SQLite, the pid the daemon recorded in
    the journal is alive on this machine; on a shared journal, some host renewed lately."""
    if journal.shared:
        now = journal.database_now()
        return any(now - h.seen_at < SHARED_ALIVE_SECONDS for h in journal.hosts())
    pid = journal.get_meta("daemon_pid")
    if not pid or not pid.isdigit():
        return False
    try:
        os.kill(int(pid), 0)
    except PermissionError:
        return True
    except OSError:
        return False
    return True


def _target(job: Job) -> RetryTarget:
    assert job.id is not None
    warning = None
    if job.hold_reason is HoldReason.AMBIGUOUS_CREATE:
        warning = (
            f"job {job.id}: a create may already have reached Magic Hour. Look for a project "
            f"named {job.service_name!r} in the web app before paying twice; creating again now."
        )
    return RetryTarget(job.id, job.folder, job.rel_path, job.state.value, warning)


def request_retries(
    journal: Journal,
    *,
    job_ids: Sequence[str] = (),
    failed: bool = False,
    held: bool = False,
    now: float,
) -> RetryOutcome:
    """Write a retry request for each named job, every failed and/or every held job.

    All or nothing: an unknown, superseded or non-retryable id makes `problems` say why and
    nothing is written. Raises StateDirError when the journal refuses the write.
    """
    targets: list[Job] = []
    problems: list[str] = []
    for raw in job_ids:
        found = _resolve(journal, str(raw).strip())
        if isinstance(found, str):
            problems.append(found)
        else:
            targets.append(found)
    if failed:
        targets += [j for j in journal.jobs(states=[JobState.FAILED]) if not is_superseded(j)]
    if held:
        targets += journal.jobs(states=[JobState.HELD])
    running = daemon_running(journal)
    if problems:
        return RetryOutcome(problems=tuple(problems), daemon_running=running)
    seen: set[int] = set()
    requested = []
    for job in targets:
        assert job.id is not None
        if job.id in seen:
            continue
        seen.add(job.id)
        journal.add_request("retry", job.id, at=now)
        requested.append(_target(job))
    return RetryOutcome(requested=tuple(requested), daemon_running=running)
