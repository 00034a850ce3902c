"""The values the runner hands back to the main loop: an intake probe's result and a step's
outcome. Workers report through these and never change a job's state themselves."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from mh_watchd.core.api import Project


@dataclass(frozen=True)
class IntakeResult:
    """A settled file, probed: either facts for a new job, or why it cannot be one."""

    folder: str
    rel_path: str
    size: int
    mtime_ns: int
    inode: int
    duration_seconds: float | None = None
    fps: float | None = None
    start_seconds: float | None = None
    end_seconds: float | None = None
    sha256: str | None = None
    error: str | None = None  # not a video / trim impossible: the job fails before any upload
    vanished: bool = False  # gone or changed since it settled: forget it, the scan will tell
    busy: bool = False  # a process on this host still has it open for writing: not ready
    # A symlink (to a file or through a linked folder): never a candidate, left where it is.
    # `vanished` is set too, so a caller that knows only that forgets it the same way.
    link: bool = False


@dataclass(frozen=True)
class StepOutcome:
    """What one step did to one job: field changes on success, or the error it met."""

    job_id: int
    step: str
    changes: dict[str, Any]
    error: Exception | None = None
    project: Project | None = None
