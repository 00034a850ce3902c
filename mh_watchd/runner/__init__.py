"""Performs the pipeline's effects through the adapters and reports each outcome as a value.

Workers call `Runner`'s methods from a bounded pool; they never change a job's state. The one
exception is delivery, whose sub-steps are checkpointed into the journal as they go (the target
of each step is recorded before the step is taken), so a restart can finish a half-done
delivery. The main loop (daemon.py) turns every outcome into the job's next state.

Inbox files are opened once, never through a symlink, and probed, hashed and uploaded from that
open file (`LocalFileSystem.open_candidate`); a link is never read, moved, archived or sent.
Outputs, archives and failed files go only into roots that exist (`makedirs_below`): a missing
outbox, archive or failed root is an unmounted share, never created, except a root inside the
job's own inbox (the default `.mh-done` and `.mh-failed`).

`Runner` is the façade the daemon calls; each part owns one concern:

- `intake`: `IntakeProbe`, a settled file probed and hashed from its open file.
- `transfers`: `Transfers`, upload and download, each refreshing an expired URL.
- `render`: `RenderRequests`, the create request and the project poll.
- `delivery`: `Delivery`, outputs placed in the outbox and the original filed on success.
- `failed`: `FailedFolder`, a failed original filed with its `.error.json`, and restored.
- `paths`: where a job's files live and how their folders are made (shared).
- `results`: `IntakeResult` and `StepOutcome`, the values handed back.
"""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

from mh_watchd.adapters.fs import FileSystem
from mh_watchd.adapters.journal import Journal
from mh_watchd.adapters.magic_hour import MagicHourClient
from mh_watchd.core.jobs import Job
from mh_watchd.runner.delivery import Delivery
from mh_watchd.runner.failed import FailedFolder
from mh_watchd.runner.intake import IntakeProbe
from mh_watchd.runner.paths import NAME_RESERVE_BYTES, original_path
from mh_watchd.runner.render import RenderRequests
from mh_watchd.runner.results import IntakeResult, StepOutcome
from mh_watchd.runner.transfers import Transfers

__all__ = [
    "NAME_RESERVE_BYTES",
    "IntakeResult",
    "Runner",
    "StepOutcome",
    "original_path",
]


class Runner:
    """Performs steps for the main loop. Every method is safe to call from a worker thread.

    A façade: each step is handed to the part that owns it, with the same arguments, and its
    result or exception is passed back unchanged.
    """

    def __init__(
        self,
        *,
        client_factory: Callable[[], MagicHourClient],
        fs: FileSystem,
        journal: Journal,
        temp_dir: Path,
        clock: Callable[[], float],
    ) -> None:
        self._intake = IntakeProbe(fs=fs)
        self._transfers = Transfers(
            client_factory=client_factory, fs=fs, temp_dir=temp_dir, clock=clock
        )
        self._render = RenderRequests(client_factory=client_factory, clock=clock)
        self._delivery = Delivery(fs=fs, journal=journal, clock=clock)
        self._failed = FailedFolder(fs=fs)

    def intake(
        self,
        folder: str,
        root: Path,
        rel_path: str,
        *,
        start_seconds: float,
        max_seconds: float,
        hash_now: bool,
    ) -> IntakeResult:
        """Probe a settled file; hash it when asked (a done version may share its path).

        The file is opened once without following links and read only through that open file.
        A link, or anything but a regular file, comes back `vanished` (and `link` for a link).
        See `IntakeProbe.probe`.
        """
        return self._intake.probe(
            folder,
            root,
            rel_path,
            start_seconds=start_seconds,
            max_seconds=max_seconds,
            hash_now=hash_now,
        )

    def upload(self, job: Job, progress: Callable[[int, int], None]) -> StepOutcome:
        """Convert if needed, then stream the original to a fresh upload URL (an expired URL
        is refreshed). A link or another file at the original's name fails the step with
        SourceChangedError before any byte is sent. See `Transfers.upload`."""
        return self._transfers.upload(job, progress)

    def create(self, job: Job) -> StepOutcome:
        """Send the one create request of this attempt."""
        return self._render.create(job)

    def poll(self, job: Job) -> StepOutcome:
        """GET the project once."""
        return self._render.poll(job)

    def download(self, job: Job, progress: Callable[[int, int], None]) -> StepOutcome:
        """Fetch every output to a hidden temp file in the outbox folder and verify it (an
        expired URL is refreshed). See `Transfers.download`."""
        return self._transfers.download(job, progress)

    def deliver(self, job: Job) -> StepOutcome:
        """Place every output without replacing anything, then file the original; safe to run
        again after a crash. See `Delivery.deliver`."""
        return self._delivery.deliver(job)

    def file_failure(self, job: Job, reason: str, *, request: str, service: str | None) -> str:
        """Move the original to the failed folder beside `<name>.error.json`; returns its path.

        A link at the original's name is left where it is (only the report is written). Raises
        OSError, FileNotFoundError naming the failed root when it is missing (never created).
        """
        return self._failed.file_failure(job, reason, request=request, service=service)

    def restore_failed(self, job: Job) -> str | None:
        """Move a failed original back to its inbox path (` (n)` if taken); drop its report.

        Returns the restored path relative to the inbox, None when there was no regular file to
        move (a link in the failed folder is never moved). Raises FileNotFoundError when the
        inbox is missing (never created), other OSErrors.
        """
        return self._failed.restore_failed(job)
