"""Performs the pipeline's effects through the adapters and reports each outcome as a value.

Workers call these methods from a bounded pool; they never change a job's state. The one
exception is delivery, whose sub-steps are checkpointed into the journal as they go (the target
of each step is recorded before the step is taken), so a restart can finish a half-done
delivery. The main loop (daemon.py) turns every outcome into the job's next state.

Inbox files are opened once, never through a symlink, and probed, hashed and uploaded from that
open file (`LocalFileSystem.open_candidate`); a link is never read, moved, archived or sent.
Outputs, archives and failed files go only into roots that exist (`makedirs_below`): a missing
outbox, archive or failed root is an unmounted share, never created, except a root inside the
job's own inbox (the default `.mh-done` and `.mh-failed`).
"""

from __future__ import annotations

import dataclasses
import errno
import json
import os
import stat
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path, PurePosixPath
from typing import Any

import structlog

from mh_watchd.adapters import media, retrying
from mh_watchd.adapters.fs import (
    FileSystem,
    NotACandidateError,
    OpenCandidate,
    open_files_under,
)
from mh_watchd.adapters.journal import Journal
from mh_watchd.adapters.magic_hour import DownloadResult, MagicHourClient, UploadResult
from mh_watchd.core import naming
from mh_watchd.core.api import CreateRequest, Project, estimate_credits
from mh_watchd.core.errors import (
    InboxUnavailableError,
    MediaError,
    SourceChangedError,
)
from mh_watchd.core.intake import trim, upload_extension
from mh_watchd.core.jobs import Job, Output

log = structlog.get_logger("mh_watchd")

# Room kept in every name for " (nnn)" and the hidden temp-name wrapping around it.
NAME_RESERVE_BYTES = 40


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


def original_path(job: Job) -> Path:
    """The original's path in its inbox."""
    return Path(job.settings.inbox) / job.rel_path


class Runner:
    """Performs steps for the main loop. Every method is safe to call from a worker thread."""

    def __init__(
        self,
        *,
        client_factory: Callable[[], MagicHourClient],
        fs: FileSystem,
        journal: Journal,
        temp_dir: Path,
        clock: Callable[[], float],
    ) -> None:
        self._client_factory = client_factory
        self._fs = fs
        self._journal = journal
        self._temp_dir = temp_dir
        self._clock = clock

    # ---------------------------------------------------------------- intake
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
        """
        gone = IntakeResult(folder, rel_path, 0, 0, 0, vanished=True)
        try:
            opened = self._fs.open_candidate(root, rel_path)
        except NotACandidateError as exc:
            if exc.link:
                log.info("intake.link_ignored", folder=folder, file=rel_path)
            return dataclasses.replace(gone, link=exc.link)
        except (FileNotFoundError, NotADirectoryError):
            return gone
        with opened.file:
            return self._intake_open(
                folder, root, rel_path, opened, start_seconds, max_seconds, hash_now
            )

    def _intake_open(
        self,
        folder: str,
        root: Path,
        rel_path: str,
        opened: OpenCandidate,
        start_seconds: float,
        max_seconds: float,
        hash_now: bool,
    ) -> IntakeResult:
        st = opened.stat
        base = IntakeResult(folder, rel_path, st.st_size, st.st_mtime_ns, st.st_ino)
        if Path(os.path.realpath(root / rel_path)) in open_files_under(root):
            # Quiet is not finished: a local writer (a slow copy, a download client) holds it.
            return dataclasses.replace(base, busy=True)
        try:
            info = media.probe_fileobj(opened.file, name=PurePosixPath(rel_path).name)
            start, end = trim(
                info.duration_seconds, start_seconds=start_seconds, max_seconds=max_seconds
            )
        except MediaError as exc:
            return dataclasses.replace(base, error=str(exc))
        sha = None
        if hash_now:
            size, sha = self._fs.sha256_file(opened.file)
            if size != st.st_size:
                return dataclasses.replace(base, vanished=True)
        return dataclasses.replace(
            base,
            duration_seconds=info.duration_seconds,
            fps=info.fps,
            start_seconds=start,
            end_seconds=end,
            sha256=sha,
        )

    # ---------------------------------------------------------------- upload
    def upload(self, job: Job, progress: Callable[[int, int], None]) -> StepOutcome:
        """Convert if needed, then stream the file to a fresh upload URL.

        The original is opened once without following links and must still be the settled
        file (regular, the job's inode, size and mtime); it is probed, converted, hashed and
        sent only through that open file. A link or another file there raises
        SourceChangedError before any byte is sent.
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

    # ---------------------------------------------------------------- create
    def create(self, job: Job) -> StepOutcome:
        """Send the one create request of this attempt."""
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

    # ---------------------------------------------------------------- poll
    def poll(self, job: Job) -> StepOutcome:
        """GET the project once."""
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

    # ---------------------------------------------------------------- download
    def download(self, job: Job, progress: Callable[[int, int], None]) -> StepOutcome:
        """Fetch every output to a hidden temp file in the outbox folder and verify it."""
        assert job.id is not None and job.project_id is not None
        try:
            client = self._client_factory()
            project = client.get_project(job.project_id)
            if project.status != "complete" or not project.downloads:
                raise MediaError(f"project {project.id} is {project.status} with no outputs")
            expected = project.end_seconds - project.start_seconds
            outputs: list[Output] = []
            outbox_dir = self._makedirs_in_root(job, job.settings.outbox, self._rel_dir(job))
            for index in range(len(project.downloads)):
                final_name = self._output_name(job, index)
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

    # ---------------------------------------------------------------- deliver
    def deliver(self, job: Job) -> StepOutcome:
        """Place every output without replacing anything, then file the original.

        Each target is journaled before its step; a target that already holds the journaled
        size and hash counts as done, so this is safe to run again after a crash.
        """
        assert job.id is not None
        try:
            current = job
            outputs = list(current.outputs)
            for i, out in enumerate(outputs):
                if out.placed:
                    continue
                out = self._place_output(current, out)
                outputs[i] = out
                current = self._journal.save(
                    dataclasses.replace(current, outputs=tuple(outputs), updated_at=self._clock()),
                    event="delivery.output_placed",
                    detail={"path": out.final_path},
                )
            archive_path, left = self._file_original(current)
            self._remove_converted(current)
            return StepOutcome(
                job.id,
                "deliver",
                {"outputs": tuple(outputs), "archive_path": archive_path, "original_left": left},
            )
        except Exception as exc:
            return StepOutcome(job.id, "deliver", {}, error=exc)

    def _place_output(self, job: Job, out: Output) -> Output:
        outbox_dir = self._outbox_dir(job)
        if out.final_path is not None:
            final = Path(out.final_path)
            if self._matches(final, out):
                return dataclasses.replace(out, placed=True)
            # When someone else's file took the journaled name meanwhile, choose again below.
            temp = Path(out.temp_path) if out.temp_path else None
            if temp is not None and temp.exists() and self._fs.place_noreplace(temp, final):
                return dataclasses.replace(out, placed=True)
        if not out.temp_path or not Path(out.temp_path).exists():
            raise MediaError(f"the downloaded output {out.temp_path} is gone; downloading again")
        name = self._output_name(job, out.index)
        for candidate in naming.collision_candidates(name):
            final = outbox_dir / naming.fit_name(candidate, reserve=NAME_RESERVE_BYTES // 2)
            if final.exists() or final.is_symlink():
                continue
            # Record the target before taking it (a restart then finds it by size and hash).
            chosen = dataclasses.replace(out, final_path=str(final))
            self._journal.save(
                dataclasses.replace(
                    job,
                    outputs=tuple(chosen if o.index == out.index else o for o in job.outputs),
                    updated_at=self._clock(),
                ),
                event="delivery.target_chosen",
                detail={"path": str(final)},
            )
            if self._fs.place_noreplace(Path(out.temp_path), final):
                return dataclasses.replace(chosen, placed=True)
        raise OSError(errno.EEXIST, f"no free output name for {name} in {outbox_dir}")

    def _matches(self, path: Path, out: Output) -> bool:
        st = self._fs.stat(path)
        if st is None or out.size is None or st.st_size != out.size:
            return False
        _, sha = self._fs.sha256_file(path)
        return sha == out.sha256

    def _file_original(self, job: Job) -> tuple[str | None, bool]:
        """Archive, keep or delete the original; returns (archive path, original_left).

        A name that is now a symlink (or anything but a regular file) is never moved or
        deleted: it counts as the original gone.
        """
        source = original_path(job)
        policy = job.settings.on_success
        st = self._original_stat(job)
        if job.archive_path is not None and st is None:
            return job.archive_path, False  # filed before a crash
        if st is None:
            log.warning("delivery.original_missing", folder=job.folder, file=job.rel_path)
            return None, True
        if (st.st_size, st.st_mtime_ns) != (job.size, job.mtime_ns) and not self._same_content(
            job, st
        ):
            # A new version sits there now: never file it as done.
            log.info("delivery.original_changed", folder=job.folder, file=job.rel_path)
            return None, True
        if policy == "keep":
            return None, False
        if policy == "delete":
            try:
                source.unlink()
            except OSError as exc:
                log.warning("delivery.delete_failed", file=job.rel_path, error=str(exc))
                return None, True
            return None, False
        rel = PurePosixPath(job.rel_path)
        try:
            archive_dir = self._makedirs_in_root(job, job.settings.archive, rel.parent)
            for candidate in naming.collision_candidates(rel.name):
                target = archive_dir / naming.fit_name(candidate, reserve=NAME_RESERVE_BYTES)
                if target.exists() or target.is_symlink():
                    continue
                self._journal.save(
                    dataclasses.replace(job, archive_path=str(target), updated_at=self._clock()),
                    event="delivery.archive_chosen",
                    detail={"path": str(target)},
                )
                if self._fs.move_noreplace(source, target):
                    return str(target), False
        except OSError as exc:
            log.warning("delivery.archive_failed", file=job.rel_path, error=str(exc))
        return None, True

    def _original_stat(self, job: Job) -> os.stat_result | None:
        """The lstat of the job's original when it is a regular file; None when gone or a link."""
        st = self._fs.stat(original_path(job))
        if st is not None and not stat.S_ISREG(st.st_mode):
            log.warning(
                "job.original_not_a_file", folder=job.folder, file=job.rel_path, job_id=job.id
            )
            return None
        return st

    def _same_content(self, job: Job, st: os.stat_result) -> bool:
        """Whether the original (of lstat `st`) still holds the job's bytes, read without
        following links; False when it cannot be read as that file."""
        if st.st_size != job.size:
            return False
        try:
            opened = self._fs.open_candidate(
                Path(job.settings.inbox), job.rel_path, expect_inode=st.st_ino
            )
        except (SourceChangedError, FileNotFoundError, NotADirectoryError):
            return False
        with opened.file:
            size, sha = self._fs.sha256_file(opened.file)
        return size == job.size and sha == job.sha256

    def _remove_converted(self, job: Job) -> None:
        if job.upload_source and Path(job.upload_source) != original_path(job):
            self._fs.remove(Path(job.upload_source))

    # ---------------------------------------------------------------- failing
    def file_failure(self, job: Job, reason: str, *, request: str, service: str | None) -> str:
        """Move the original to the failed folder beside `<name>.error.json`; returns its path.

        A link at the original's name is left where it is (only the report is written). Raises
        OSError, FileNotFoundError naming the failed root when it is missing (never created).
        """
        rel = PurePosixPath(job.rel_path)
        failed_dir = self._makedirs_in_root(job, job.settings.failed, rel.parent)
        source = original_path(job)
        target: Path | None = Path(job.failed_path) if job.failed_path else None
        if target is None or (target.exists() and self._fs.stat(source) is not None):
            for candidate in naming.collision_candidates(rel.name):
                path = failed_dir / naming.fit_name(candidate, reserve=NAME_RESERVE_BYTES)
                sidecar = path.with_name(naming.error_json_name(path.name))
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
        if self._original_stat(job) is not None:
            self._fs.move_noreplace(source, target)
        self._remove_converted(job)
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

    # ---------------------------------------------------------------- helpers
    def _outbox_dir(self, job: Job) -> Path:
        return Path(job.settings.outbox) / self._rel_dir(job)

    @staticmethod
    def _rel_dir(job: Job) -> PurePosixPath:
        return PurePosixPath(job.rel_path).parent

    def _makedirs_in_root(self, job: Job, root: str, sub: PurePosixPath) -> Path:
        """Create `root/sub` below an existing `root`; return it. Raises FileNotFoundError
        naming `root` when it is missing (an unmounted share). A root inside the job's own
        inbox (the default `.mh-done`, `.mh-failed`) may be created: the inbox proves the
        share is there."""
        inbox, target = Path(job.settings.inbox), Path(root)
        if target != inbox and target.is_relative_to(inbox):
            inner = PurePosixPath(target.relative_to(inbox).as_posix()) / sub
            return self._fs.makedirs_below(inbox, inner)
        return self._fs.makedirs_below(target, sub)

    def _output_name(self, job: Job, index: int) -> str:
        name = naming.output_rel_path(
            PurePosixPath(job.rel_path), job.settings.style_slug, index
        ).name
        return naming.fit_name(name, reserve=NAME_RESERVE_BYTES)


def _advice(reason: str) -> str:
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
