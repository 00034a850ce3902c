"""The job record and its state machine: a table of legal moves, checked on every change.

A job is one version of one file: (folder, path relative to the inbox, fingerprint). Records
are frozen; `transition()` returns a new record or raises `IllegalTransition`.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass, field
from enum import StrEnum

from mh_watchd.core.api import Style
from mh_watchd.core.errors import MhWatchdError


class JobState(StrEnum):
    QUEUED = "queued"  # probed and waiting for an upload slot
    UPLOADING = "uploading"  # streaming the bytes to a presigned URL; a restart re-uploads
    SUBMITTING = "submitting"  # the create request is (about to be) in flight
    RENDERING = "rendering"  # the service accepted it; we poll its project id
    DOWNLOADING = "downloading"  # fetching outputs to temp files in the outbox
    DELIVERING = "delivering"  # placing outputs, then filing the original away
    DONE = "done"  # every output placed; the original filed (or left, see original_left)
    FAILED = "failed"  # permanent: the original sits in the failed folder with .error.json
    HELD = "held"  # waiting on a cause (hold_reason) before resuming `resume_state`
    # The file changed or vanished before its create: never paid for, never retried; the new
    # content (if any) is a job of its own.
    SUPERSEDED = "superseded"


class HoldReason(StrEnum):
    AUTH = "auth"  # 401
    CREDITS = "credits"  # 402
    DAILY_LIMIT = "daily_limit"  # spent today + estimate > daily_credit_limit
    OUTAGE = "outage"  # the inbox is missing, unreadable, unmounted
    OUTPUT_UNAVAILABLE = "output_unavailable"  # outbox/archive missing, unwritable or full
    AMBIGUOUS_CREATE = "ambiguous_create"  # a create may have reached the service: retry only
    RENDER_OVERDUE = "render_overdue"  # past render_timeout_minutes; still polled hourly


TERMINAL_STATES: frozenset[JobState] = frozenset(
    {JobState.DONE, JobState.FAILED, JobState.SUPERSEDED}
)
# Jobs counted against max_active_renders.
ACTIVE_RENDER_STATES: frozenset[JobState] = frozenset({JobState.SUBMITTING, JobState.RENDERING})

_S = JobState
LEGAL_MOVES: dict[JobState, frozenset[JobState]] = {
    _S.QUEUED: frozenset({_S.UPLOADING, _S.SUBMITTING, _S.FAILED, _S.HELD, _S.SUPERSEDED}),
    # uploading -> queued: a transient error waits for a retry; -> superseded: the source
    # changed or vanished mid-upload
    _S.UPLOADING: frozenset({_S.QUEUED, _S.SUBMITTING, _S.FAILED, _S.HELD, _S.SUPERSEDED}),
    # submitting -> queued: the upload is too old to reuse; submitting -> held: ambiguous create,
    # auth, credits or daily limit
    _S.SUBMITTING: frozenset(
        {_S.RENDERING, _S.QUEUED, _S.FAILED, _S.HELD, _S.SUBMITTING, _S.SUPERSEDED}
    ),
    # rendering -> held only as render_overdue; rendering -> submitting on `retry` of an
    # overdue render is done from held
    _S.RENDERING: frozenset({_S.DOWNLOADING, _S.FAILED, _S.HELD}),
    _S.DOWNLOADING: frozenset({_S.DELIVERING, _S.FAILED, _S.HELD, _S.RENDERING}),
    _S.DELIVERING: frozenset({_S.DONE, _S.HELD, _S.DOWNLOADING}),
    # done -> queued: `retry JOB_ID` of a done job renders that version again
    _S.DONE: frozenset({_S.QUEUED}),
    # failed -> queued: `retry` moved the original back
    _S.FAILED: frozenset({_S.QUEUED}),
    _S.HELD: frozenset(
        {
            _S.QUEUED,
            _S.UPLOADING,
            _S.SUBMITTING,
            _S.RENDERING,
            _S.DOWNLOADING,
            _S.DELIVERING,
            _S.FAILED,
            _S.HELD,
            _S.SUPERSEDED,
        }
    ),
    # superseded is final: the newer version is a job of its own
    _S.SUPERSEDED: frozenset(),
}


class IllegalTransition(MhWatchdError):
    """A move the state table does not allow; a bug, never guessed around."""


@dataclass(frozen=True)
class JobSettings:
    """What a job snapshots from its folder when it is queued; a reload never changes it."""

    style: Style
    style_slug: str
    fps_resolution: str
    start_seconds: float
    max_seconds: float
    inbox: str
    outbox: str
    archive: str
    failed: str
    on_success: str  # archive | keep | delete


@dataclass(frozen=True)
class Output:
    """One output of a job, with its delivery steps journaled."""

    index: int
    temp_path: str | None = None  # hidden temp file in the outbox folder
    final_path: str | None = None  # chosen once, never re-chosen
    size: int | None = None
    sha256: str | None = None
    placed: bool = False


@dataclass(frozen=True)
class Job:
    """One version of one file and everything the daemon knows about its progress."""

    folder: str
    rel_path: str  # posix path relative to the inbox
    size: int
    mtime_ns: int
    inode: int
    settings: JobSettings
    state: JobState = JobState.QUEUED
    id: int | None = None
    sha256: str | None = None  # fingerprint: size + sha256 of the content
    resume_state: JobState | None = None  # set while held
    hold_reason: HoldReason | None = None
    attempts: int = 0  # transient failures of the current step
    last_error: str | None = None
    due_at: float | None = None  # wall-clock time before which the job is not touched
    duration_seconds: float | None = None
    fps: float | None = None
    start_seconds: float | None = None
    end_seconds: float | None = None
    upload_source: str | None = None  # the file uploaded: the original or a remuxed temp file
    upload_file_path: str | None = None  # the service's api-assets/... path
    uploaded_at: float | None = None
    project_id: str | None = None
    service_name: str | None = None
    credits_estimate: int | None = None
    credits_charged: int | None = None  # from the create response
    credits_final: int | None = None  # from the final GET
    credits_day: str | None = None  # local calendar date (YYYY-MM-DD) the create was booked to
    render_started_at: float | None = None
    render_status: str | None = None  # the service's last status
    outputs: tuple[Output, ...] = field(default_factory=tuple)
    archive_path: str | None = None  # where the original was (or will be) filed
    failed_path: str | None = None
    original_left: bool = False
    progress: float = 0.0  # 0..1 upload or download progress, for status
    created_at: float = 0.0
    updated_at: float = 0.0
    # The host (daemon.host_name) that holds this unfinished job, as the journal last said;
    # written by the journal only (claims), never by a Job the daemon saves.
    holder: str | None = None

    @property
    def is_terminal(self) -> bool:
        return self.state in TERMINAL_STATES


def check_move(old: JobState, new: JobState) -> None:
    """Raise IllegalTransition unless the table allows `old -> new`."""
    if new not in LEGAL_MOVES[old]:
        raise IllegalTransition(f"illegal job move {old.value} -> {new.value}")


def transition(job: Job, new_state: JobState, **changes: object) -> Job:
    """Return `job` moved to `new_state` with `changes`; raises IllegalTransition.

    Moving into `held` needs `hold_reason` and records `resume_state` (the state to resume,
    defaulting to the current one); leaving `held` clears both.
    """
    check_move(job.state, new_state)
    if new_state is JobState.HELD:
        reason = changes.get("hold_reason", job.hold_reason)
        if reason is None:
            raise IllegalTransition("a held job needs a hold_reason")
        if job.state is JobState.RENDERING and reason is not HoldReason.RENDER_OVERDUE:
            raise IllegalTransition("a rendering job is only ever held as render_overdue")
        changes.setdefault(
            "resume_state", job.resume_state if job.state is JobState.HELD else job.state
        )
    else:
        changes.setdefault("hold_reason", None)
        changes.setdefault("resume_state", None)
    return dataclasses.replace(job, state=new_state, **changes)  # type: ignore[arg-type]


def hold(job: Job, reason: HoldReason, **changes: object) -> Job:
    """Hold `job` for `reason`, remembering the state it resumes to."""
    return transition(job, JobState.HELD, hold_reason=reason, **changes)


def release(job: Job, **changes: object) -> Job:
    """Resume a held job to the state it was held from."""
    if job.state is not JobState.HELD or job.resume_state is None:
        raise IllegalTransition("only a held job with a resume_state can be released")
    return transition(job, job.resume_state, **changes)


@dataclass(frozen=True)
class Roots:
    """Where one host reaches a folder: its inbox, outbox, archive and failed folders."""

    inbox: str
    outbox: str
    archive: str
    failed: str


def with_roots(job: Job, roots: Roots) -> Job:
    """`job` with every path it holds moved from the roots it was recorded with to `roots`.

    Hosts that share a journal may reach one share by different paths (/volume1/video on the
    NAS, /mnt/nas/video on the desktop). A job carries the paths of the host that recorded it;
    the host that holds it works with its own: the settings' roots, and each path inside them
    (outputs, the archived or failed original, the uploaded source). A path outside every root
    (a converted temp file in another host's state_dir) is left as it is. The same job when the
    roots are the same.
    """
    s = job.settings
    moves = sorted(
        (
            (s.inbox, roots.inbox),
            (s.outbox, roots.outbox),
            (s.archive, roots.archive),
            (s.failed, roots.failed),
        ),
        key=lambda pair: len(pair[0]),
        reverse=True,  # the most specific root first: an archive may lie inside the inbox
    )
    if all(old == new for old, new in moves):
        return job

    def moved(path: str | None) -> str | None:
        if path is None:
            return None
        for old, new in moves:
            if path == old:
                return new
            if path.startswith(old.rstrip("/") + "/"):
                return new.rstrip("/") + path[len(old.rstrip("/")) :]
        return path

    return dataclasses.replace(
        job,
        settings=dataclasses.replace(
            s, inbox=roots.inbox, outbox=roots.outbox, archive=roots.archive, failed=roots.failed
        ),
        outputs=tuple(
            dataclasses.replace(o, temp_path=moved(o.temp_path), final_path=moved(o.final_path))
            for o in job.outputs
        ),
        archive_path=moved(job.archive_path),
        failed_path=moved(job.failed_path),
        upload_source=moved(job.upload_source),
    )
