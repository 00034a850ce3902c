"""The failed folder: a failed job's original filed beside its `<name>.error.json` report,
and moved back to its inbox when the job is retried.

The failed root is never created unless it lies inside the job's own inbox (the default
`.mh-failed`); a link is never moved, either way.
"""

from __future__ import annotations

import json
import stat
from pathlib import Path, PurePosixPath

from mh_watchd.adapters.fs import FileSystem
from mh_watchd.core import naming
from mh_watchd.core.jobs import Job
from mh_watchd.runner.paths import (
    NAME_RESERVE_BYTES,
    makedirs_in_root,
    original_path,
    original_stat,
    remove_converted,
)


def _reported_for(sidecar: Path, job: Job) -> bool:
    """True when `sidecar` is the `.error.json` this very job wrote."""
    try:
        report = json.loads(sidecar.read_bytes())
    except (OSError, ValueError):
        return False
    return isinstance(report, dict) and report.get("job_id") == job.id and job.id is not None


class FailedFolder:
    """Files failed originals away and restores them. Safe to call from a worker thread."""

    def __init__(self, *, fs: FileSystem) -> None:
        self._fs = fs

    def file_failure(self, job: Job, reason: str, *, request: str, service: str | None) -> str:
        """Move the original to the failed folder beside `<name>.error.json`; returns its path.

        A link at the original's name is left where it is (only the report is written). Raises
        OSError, FileNotFoundError naming the failed root when it is missing (never created).
        """
        rel = PurePosixPath(job.rel_path)
        failed_dir = makedirs_in_root(self._fs, job, job.settings.failed, rel.parent)
        source = original_path(job)
        target: Path | None = Path(job.failed_path) if job.failed_path else None
        if target is None or (target.exists() and self._fs.stat(source) is not None):
            for candidate in naming.collision_candidates(rel.name):
                path = failed_dir / naming.fit_name(candidate, reserve=NAME_RESERVE_BYTES)
                sidecar = path.with_name(naming.error_json_name(path.name))
                if _reported_for(sidecar, job) and not self._fs.stat(source):
                    # Filed before, but the journal could not record where: the same place.
                    target = path
                    break
                if not path.exists() and not sidecar.exists():
                    target = path
                    break
        assert target is not None
        report = {
            "file": job.rel_path,
            "folder": job.folder,
            "job_id": job.id,
            "project_id": job.project_id,
            "what_happened": reason,
            "request": request,
            "service_said": service,
            "what_to_do": _advice(reason),
            "retry": f"mh-watchd retry {job.id}",
        }
        sidecar = target.with_name(naming.error_json_name(target.name))
        self._fs.write_atomic(sidecar, (json.dumps(report, indent=2) + "\n").encode())
        if original_stat(self._fs, job) is not None:
            self._fs.move_noreplace(source, target)
        remove_converted(self._fs, job)
        return str(target)

    def restore_failed(self, job: Job) -> str | None:
        """Move a failed original back to its inbox path (` (n)` if taken); drop its report.

        Returns the restored path relative to the inbox, None when there was no regular file to
        move (a link in the failed folder is never moved). Raises FileNotFoundError when the
        inbox is missing (never created), other OSErrors.
        """
        if not job.failed_path:
            return None
        failed = Path(job.failed_path)
        sidecar = failed.with_name(naming.error_json_name(failed.name))
        rel = PurePosixPath(job.rel_path)
        restored = None
        st = self._fs.stat(failed)
        if st is not None and stat.S_ISREG(st.st_mode):
            dest_dir = self._fs.makedirs_below(Path(job.settings.inbox), rel.parent)
            for candidate in naming.collision_candidates(rel.name):
                if self._fs.move_noreplace(failed, dest_dir / candidate):
                    restored = str((dest_dir / candidate).relative_to(job.settings.inbox))
                    break
        self._fs.remove(sidecar)
        return restored


def _advice(reason: str) -> str:
    """The report's `what_to_do`: plain advice for the failure `reason`."""
    lowered = reason.lower()
    if "not a readable video" in lowered or "decode" in lowered:
        return (
            "The file is not a video the daemon can read. Check it plays, re-export it as "
            "mp4 if needed, and drop it into the inbox again."
        )
    if "start_seconds" in lowered or "too short" in lowered or "shorter" in lowered:
        return "Adjust start_seconds/max_seconds for this folder, or use a longer clip."
    if "daily" in lowered:
        return "Raise daemon.daily_credit_limit, shorten max_seconds, or use HALF fps."
    if "deleted in the web app" in lowered:
        return "The render was deleted at Magic Hour. Run the retry command to render it again."
    return (
        "Read what the service said above. When the cause is fixed, run the retry command "
        "below to try this file again."
    )
