"""The render steps: the one create request of an attempt, and a poll of its project.

Both only talk to the API; neither changes the job: each returns a `StepOutcome`.
"""

from __future__ import annotations

from collections.abc import Callable
from pathlib import PurePosixPath

from mh_watchd.adapters.magic_hour import MagicHourClient
from mh_watchd.core import naming
from mh_watchd.core.api import CreateRequest
from mh_watchd.core.jobs import Job
from mh_watchd.runner.results import StepOutcome


class RenderRequests:
    """Creates and polls render projects. Safe to call from a worker thread."""

    def __init__(
        self, *, client_factory: Callable[[], MagicHourClient], clock: Callable[[], float]
    ) -> None:
        self._client_factory = client_factory
        self._clock = clock

    def create(self, job: Job) -> StepOutcome:
        """Send the one create request of this attempt; an error comes back in the outcome."""
        assert job.id is not None and job.upload_file_path is not None
        assert job.start_seconds is not None and job.end_seconds is not None
        request = CreateRequest(
            name=job.service_name or naming.service_name(job.folder, PurePosixPath(job.rel_path)),
            file_path=job.upload_file_path,
            start_seconds=job.start_seconds,
            end_seconds=job.end_seconds,
            fps_resolution=job.settings.fps_resolution,
            style=job.settings.style,
        )
        try:
            created = self._client_factory().create(request)
        except Exception as exc:
            return StepOutcome(job.id, "create", {}, error=exc)
        return StepOutcome(
            job.id,
            "create",
            {
                "project_id": created.id,
                # A missing number comes back as -1: keep the estimate rather than book it.
                "credits_charged": created.credits_charged
                if created.credits_charged >= 0
                else None,
                "render_started_at": self._clock(),
                "render_status": "queued",
            },
        )

    def poll(self, job: Job) -> StepOutcome:
        """GET the project once; an error comes back in the outcome."""
        assert job.id is not None and job.project_id is not None
        try:
            project = self._client_factory().get_project(job.project_id)
        except Exception as exc:
            return StepOutcome(job.id, "poll", {}, error=exc)
        return StepOutcome(
            job.id,
            "poll",
            {"render_status": project.status, "credits_final": project.credits_charged},
            project=project,
        )
