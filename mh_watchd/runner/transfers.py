"""Transfers: the upload and download steps, each refreshing an expired presigned URL.

An upload reads the original only through one file opened without following links, which
must still be the file that settled; a download lands each output in a hidden temp file in
the outbox and verifies it there. Neither changes the job: each returns a `StepOutcome`.
"""

from __future__ import annotations

import stat
from collections.abc import Callable
from pathlib import Path, PurePosixPath
from typing import Any

from mh_watchd.adapters import media, retrying
from mh_watchd.adapters.fs import FileSystem, OpenCandidate
from mh_watchd.adapters.magic_hour import DownloadResult, MagicHourClient, UploadResult
from mh_watchd.core import naming
from mh_watchd.core.api import Project, estimate_credits
from mh_watchd.core.errors import InboxUnavailableError, MediaError, SourceChangedError
from mh_watchd.core.intake import trim, upload_extension
from mh_watchd.core.jobs import Job, Output
from mh_watchd.runner.paths import makedirs_in_root, original_path, output_name, rel_dir
from mh_watchd.runner.results import StepOutcome


class Transfers:
    """Uploads originals and downloads outputs. Safe to call from a worker thread."""

    def __init__(
        self,
        *,
        client_factory: Callable[[], MagicHourClient],
        fs: FileSystem,
        temp_dir: Path,
        clock: Callable[[], float],
    ) -> None:
        self._client_factory = client_factory
        self._fs = fs
        self._temp_dir = temp_dir
        self._clock = clock

    # ---------------------------------------------------------------- upload
    def upload(self, job: Job, progress: Callable[[int, int], None]) -> StepOutcome:
        """Convert if needed, then stream the file to a fresh upload URL.

        The original is opened once without following links and must still be the settled
        file (regular, the job's inode, size and mtime); it is probed, converted, hashed and
        sent only through that open file. A link or another file there raises
        SourceChangedError before any byte is sent. Every error comes back in the outcome.
        """
        assert job.id is not None
        try:
            opened = self._open_original(job)
            with opened.file:
                return self._upload_open(job, opened, progress)
        except Exception as exc:  # a worker's top: every error becomes an outcome
            return StepOutcome(job.id, "upload", {}, error=exc)

    def _open_original(self, job: Job) -> OpenCandidate:
        """Open the job's original as it settled; raise SourceChangedError otherwise."""
        try:
            opened = self._fs.open_candidate(
                Path(job.settings.inbox), job.rel_path, expect_inode=job.inode or None
            )
        except (FileNotFoundError, NotADirectoryError) as exc:
            self._check_inbox(job)
            raise SourceChangedError(
                f"{job.rel_path} disappeared before its upload finished"
            ) from exc
        if (opened.stat.st_size, opened.stat.st_mtime_ns) != (job.size, job.mtime_ns):
            opened.file.close()
            raise SourceChangedError(f"{job.rel_path} changed before its upload finished")
        return opened

    def _upload_open(
        self, job: Job, opened: OpenCandidate, progress: Callable[[int, int], None]
    ) -> StepOutcome:
        assert job.id is not None
        source = original_path(job)
        probed: dict[str, Any] = {}
        if job.end_seconds is None:
            # Never probed (a retried failure): check it is a video before sending it.
            info = media.probe_fileobj(opened.file, name=source.name)
            start, end = trim(
                info.duration_seconds,
                start_seconds=job.settings.start_seconds,
                max_seconds=job.settings.max_seconds,
            )
            probed = {
                "duration_seconds": info.duration_seconds,
                "fps": info.fps,
                "start_seconds": start,
                "end_seconds": end,
                "credits_estimate": estimate_credits(end - start, job.settings.fps_resolution),
            }
        extension = upload_extension(PurePosixPath(job.rel_path))
        converted: Path | None = None
        if extension != PurePosixPath(job.rel_path).suffix.lower().lstrip("."):
            converted = self._temp_dir / f"job-{job.id}.mp4"
            if not converted.exists():
                media.convert_to_mp4(opened.file, converted, name=source.name)
        client = self._client_factory()
        target = client.request_upload_url(extension)

        def send() -> UploadResult:
            if converted is not None:
                return client.upload(target.upload_url, converted, progress=progress)
            return client.upload(
                target.upload_url, opened.file, progress=progress, name=job.rel_path
            )

        def fresh_url() -> None:
            nonlocal target
            target = client.request_upload_url(extension)

        # An expired upload URL: ask for a new one, URL_REFRESH_ATTEMPTS times at most.
        result = retrying.with_fresh_urls(send, refresh=fresh_url)
        after = self._fs.stat(source)
        if after is None:
            self._check_inbox(job)
        if (
            after is None
            or not stat.S_ISREG(after.st_mode)
            or (after.st_size, after.st_mtime_ns, after.st_ino)
            != (job.size, job.mtime_ns, opened.stat.st_ino)
        ):
            # The name no longer holds the file that was sent (moved away, swapped for a link).
            raise SourceChangedError(f"{job.rel_path} changed while it was uploading")
        sha = job.sha256
        if converted is None:
            if sha is not None and sha != result.sha256:
                raise SourceChangedError(f"{job.rel_path} changed while it was uploading")
            sha = result.sha256
        elif sha is None:
            _, sha = self._fs.sha256_file(opened.file)
        return StepOutcome(
            job.id,
            "upload",
            {
                "upload_file_path": target.file_path,
                "upload_source": str(converted or source),
                "uploaded_at": self._clock(),
                "sha256": sha,
                "progress": 1.0,
                **probed,
            },
        )

    def _check_inbox(self, job: Job) -> None:
        """Raise InboxUnavailableError when the whole inbox is gone (an outage, not a loss)."""
        inbox = Path(job.settings.inbox)
        if self._fs.stat(inbox) is None or not inbox.is_dir():
            raise InboxUnavailableError(f"the inbox {inbox} is unavailable")

    # ---------------------------------------------------------------- download
    def download(self, job: Job, progress: Callable[[int, int], None]) -> StepOutcome:
        """Fetch every output to a hidden temp file in the outbox folder and verify it.

        The outbox folder is made below an existing outbox root only (FileNotFoundError
        naming the root otherwise); an output that fails verification is removed. Every error
        comes back in the outcome.
        """
        assert job.id is not None and job.project_id is not None
        try:
            client = self._client_factory()
            project = client.get_project(job.project_id)
            if project.status != "complete" or not project.downloads:
                raise MediaError(f"project {project.id} is {project.status} with no outputs")
            expected = project.end_seconds - project.start_seconds
            outputs: list[Output] = []
            outbox_dir = makedirs_in_root(self._fs, job, job.settings.outbox, rel_dir(job))
            for index in range(len(project.downloads)):
                final_name = output_name(job, index)
                temp = outbox_dir / naming.temp_name(final_name, f"{job.id}-{index}")
                result, project = self._download_output(
                    client, job.project_id, project, index, temp, progress
                )
                try:
                    media.verify_output(
                        temp, expected_size=result.size, expected_duration_seconds=expected
                    )
                except MediaError:
                    self._fs.remove(temp)
                    raise
                outputs.append(
                    Output(index=index, temp_path=str(temp), size=result.size, sha256=result.sha256)
                )
            return StepOutcome(
                job.id,
                "download",
                {"outputs": tuple(outputs), "credits_final": project.credits_charged},
                project=project,
            )
        except Exception as exc:
            return StepOutcome(job.id, "download", {}, error=exc)

    @staticmethod
    def _download_output(
        client: MagicHourClient,
        project_id: str,
        project: Project,
        index: int,
        temp: Path,
        progress: Callable[[int, int], None],
    ) -> tuple[DownloadResult, Project]:
        """Download output `index` of `project` to `temp`. An expired URL is refreshed by
        fetching the project again, URL_REFRESH_ATTEMPTS times at most (then UrlExpiredError).
        Returns the result and the project as last fetched."""
        current = project

        def fetch() -> DownloadResult:
            return client.download(current.downloads[index].url, temp, progress=progress)

        def fresh_project() -> None:
            nonlocal current
            current = client.get_project(project_id)

        result = retrying.with_fresh_urls(fetch, refresh=fresh_project)
        return result, current
