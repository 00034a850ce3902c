"""Where a job's files live and how the folders for them are made, shared by the steps.

Outputs, archives and failed files go only into roots that exist (`makedirs_in_root`): a
missing outbox, archive or failed root is an unmounted share, never created, except a root
inside the job's own inbox (the default `.mh-done` and `.mh-failed`).
"""

from __future__ import annotations

import os
import stat
from pathlib import Path, PurePosixPath

import structlog

from mh_watchd.adapters.fs import FileSystem
from mh_watchd.core import naming
from mh_watchd.core.jobs import Job

log = structlog.get_logger("mh_watchd")

# Room kept in every name for " (nnn)" and the hidden temp-name wrapping around it.
NAME_RESERVE_BYTES = 40


def original_path(job: Job) -> Path:
    """The original's path in its inbox."""
    return Path(job.settings.inbox) / job.rel_path


def rel_dir(job: Job) -> PurePosixPath:
    """The folder of the job's original, relative to its inbox."""
    return PurePosixPath(job.rel_path).parent


def outbox_dir(job: Job) -> Path:
    """The outbox folder the job's outputs go to (mirrors the original's folder)."""
    return Path(job.settings.outbox) / rel_dir(job)


def output_name(job: Job, index: int) -> str:
    """The file name of output `index`, shortened to keep NAME_RESERVE_BYTES free."""
    name = naming.output_rel_path(PurePosixPath(job.rel_path), job.settings.style_slug, index).name
    return naming.fit_name(name, reserve=NAME_RESERVE_BYTES)


def makedirs_in_root(fs: FileSystem, job: Job, root: str, sub: PurePosixPath) -> Path:
    """Create `root/sub` below an existing `root`; return it. Raises FileNotFoundError
    naming `root` when it is missing (an unmounted share). A root inside the job's own
    inbox (the default `.mh-done`, `.mh-failed`) may be created: the inbox proves the
    share is there."""
    inbox, target = Path(job.settings.inbox), Path(root)
    if target != inbox and target.is_relative_to(inbox):
        inner = PurePosixPath(target.relative_to(inbox).as_posix()) / sub
        return fs.makedirs_below(inbox, inner)
    return fs.makedirs_below(target, sub)


def original_stat(fs: FileSystem, job: Job) -> os.stat_result | None:
    """The lstat of the job's original when it is a regular file; None when gone or a link."""
    st = fs.stat(original_path(job))
    if st is not None and not stat.S_ISREG(st.st_mode):
        log.warning("job.original_not_a_file", folder=job.folder, file=job.rel_path, job_id=job.id)
        return None
    return st


def remove_converted(fs: FileSystem, job: Job) -> None:
    """Remove the mp4 converted for upload, if the job sent one instead of its original."""
    if job.upload_source and Path(job.upload_source) != original_path(job):
        fs.remove(Path(job.upload_source))
