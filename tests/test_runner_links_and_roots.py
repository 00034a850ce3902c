"""Runner steps on real files: symlinks are never read, moved or sent, and roots are never made.

A candidate is opened once with O_NOFOLLOW and checked on its descriptor (contract, "Which files
are inputs"); an outbox, archive or failed root that is missing is an unmounted share, so only
subfolders inside an existing root are created (contract, `output_unavailable`). The API is an
httpx.MockTransport behind the real MagicHourClient; files, links and folders are real.
"""

from __future__ import annotations

import dataclasses
import errno
import hashlib
import json
import os
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest

from mh_watchd.adapters.fs import LocalFileSystem
from mh_watchd.adapters.journal import Journal
from mh_watchd.adapters.magic_hour import MagicHourClient
from mh_watchd.core.api import Style
from mh_watchd.core.errors import SourceChangedError
from mh_watchd.core.jobs import Job, JobSettings, JobState, Output
from mh_watchd.runner import IntakeResult, Runner
from tests.conftest import ClipFactory

UPLOAD_URL = "https://store.test/bucket/abc.mp4?sig=1"
DOWNLOAD_URL = "https://cdn.test/out/abc.mp4?sig=2"
PROJECT_ID = "clx7uu86w0a5qp55yxz315r6r"


class Service:
    """A scripted Magic Hour: records every request and the bytes of every upload."""

    def __init__(self, video: bytes = b"", duration_seconds: float = 1.0) -> None:
        self.video = video
        self.duration_seconds = duration_seconds
        self.requests: list[httpx.Request] = []
        self.uploaded: list[bytes] = []
        self.on_upload: Callable[[], None] | None = None

    def __call__(self, request: httpx.Request) -> httpx.Response:
        self.requests.append(request)
        if request.url.host == "store.test":
            if self.on_upload is not None:
                self.on_upload()
            self.uploaded.append(request.read())
            return httpx.Response(200)
        if request.url.host == "cdn.test":
            return httpx.Response(200, content=self.video)
        if request.url.path.endswith("/upload-urls"):
            item = {
                "upload_url": UPLOAD_URL,
                "file_path": "api-assets/acct/abc.mp4",
                "expires_at": "2030-01-01T01:00:00Z",
            }
            return httpx.Response(200, json={"items": [item]})
        if request.url.path.endswith(f"/video-projects/{PROJECT_ID}"):
            return httpx.Response(200, json=self.project())
        return httpx.Response(404, json={"message": "no such route"})

    def project(self) -> dict[str, object]:
        download = {"url": DOWNLOAD_URL, "expires_at": "2030-01-02T00:00:00Z"}
        return {
            "id": PROJECT_ID,
            "name": "f/x.mp4",
            "status": "complete",
            "type": "VIDEO_TO_VIDEO",
            "created_at": "2030-01-01T00:00:00Z",
            "width": 160,
            "height": 120,
            "enabled": True,
            "start_seconds": 0,
            "end_seconds": self.duration_seconds,
            "credits_charged": 30,
            "total_frame_cost": 30,
            "fps": 24,
            "error": None,
            "downloads": [download],
            "download": download,
        }

    def sent_bytes(self) -> int:
        return sum(len(body) for body in self.uploaded)


class World:
    """An inbox, an outside folder, a journal and a Runner wired to a scripted service."""

    def __init__(self, tmp_path: Path, journal: Journal, http: httpx.Client) -> None:
        self.tmp = tmp_path
        self.inbox = tmp_path / "inbox"
        self.inbox.mkdir()
        self.elsewhere = tmp_path / "elsewhere"
        self.elsewhere.mkdir()
        self.state = tmp_path / "state"
        (self.state / "tmp").mkdir(parents=True, exist_ok=True)
        self.journal = journal
        self.service = Service()
        self.fs = LocalFileSystem()
        client = MagicHourClient(http, base_url="https://api.test", token="t", sleep=lambda s: None)
        self.runner = Runner(
            client_factory=lambda: client,
            fs=self.fs,
            journal=journal,
            temp_dir=self.state / "tmp",
            clock=lambda: 1_000.0,
        )

    def settings(self, **paths: str) -> JobSettings:
        return JobSettings(
            style=Style(art_style="Studio Ghibli", version="v2"),
            style_slug="studio-ghibli",
            fps_resolution="HALF",
            start_seconds=0.0,
            max_seconds=60.0,
            inbox=str(self.inbox),
            outbox=paths.get("outbox", str(self.tmp / "out")),
            archive=paths.get("archive", str(self.tmp / "archive")),
            failed=paths.get("failed", str(self.tmp / "failed")),
            on_success=paths.get("on_success", "archive"),
        )

    def job(
        self, rel: str, st: os.stat_result, *, paths: dict[str, Path] | None = None, **changes: Any
    ) -> Job:
        """A journaled job for `rel` with the facts of `st`, as intake would have recorded."""
        settings = self.settings(**{k: str(v) for k, v in (paths or {}).items()})
        job = Job(
            folder="f",
            rel_path=rel,
            size=st.st_size,
            mtime_ns=st.st_mtime_ns,
            inode=st.st_ino,
            settings=settings,
            duration_seconds=1.0,
            fps=24.0,
            start_seconds=0.0,
            end_seconds=1.0,
        )
        return self.journal.insert(dataclasses.replace(job, **changes), event="test.setup")

    def intake(self, rel: str, *, hash_now: bool = True) -> IntakeResult:
        return self.runner.intake(
            "f", self.inbox, rel, start_seconds=0.0, max_seconds=60.0, hash_now=hash_now
        )


@pytest.fixture
def world(tmp_path: Path) -> Iterator[World]:
    journal = Journal.open(tmp_path / "state")
    holder: list[World] = []

    def handler(request: httpx.Request) -> httpx.Response:
        return holder[0].service(request)

    http = httpx.Client(transport=httpx.MockTransport(handler))
    w = World(tmp_path, journal, http)
    holder.append(w)
    try:
        yield w
    finally:
        http.close()
        journal.close()


def no_progress(done: int, total: int) -> None:
    pass


def swap_for_link(name: Path, target: Path, *, like: os.stat_result) -> None:
    """Replace `name` with a symlink to `target` whose lstat size and mtime equal `like`'s."""
    name.unlink()
    name.symlink_to(target)
    os.utime(name, ns=(like.st_atime_ns, like.st_mtime_ns), follow_symlinks=False)


def tree(root: Path) -> set[str]:
    return {str(p.relative_to(root)) for p in root.rglob("*")}


# ------------------------------------------------------------------------------------ intake
def test_intake_of_a_link_to_a_video_outside_the_inbox_returns_link_and_reads_nothing(
    world: World, make_clip: ClipFactory
) -> None:
    private = make_clip("private.mp4")
    (world.inbox / "x.mp4").symlink_to(private)

    result = world.intake("x.mp4")

    assert result.link and result.vanished
    assert result.duration_seconds is None and result.sha256 is None
    assert (world.inbox / "x.mp4").is_symlink()  # left where it is


def test_intake_of_a_file_below_a_symlinked_directory_returns_link(
    world: World, make_clip: ClipFactory
) -> None:
    private_dir = make_clip("private/clip.mp4").parent
    (world.inbox / "sub").symlink_to(private_dir, target_is_directory=True)

    result = world.intake("sub/clip.mp4")

    assert result.link and result.vanished
    assert result.duration_seconds is None


def test_intake_of_a_fifo_is_not_a_candidate_and_does_not_block(world: World) -> None:
    os.mkfifo(world.inbox / "pipe.mp4")
    result = world.intake("pipe.mp4")
    assert result.vanished and not result.link


def test_intake_of_a_regular_video_probes_and_hashes_the_open_file(
    world: World, make_clip: ClipFactory
) -> None:
    clip = make_clip("clip.mp4")
    data = clip.read_bytes()
    (world.inbox / "trip").mkdir()
    (world.inbox / "trip" / "a.mp4").write_bytes(data)

    result = world.intake("trip/a.mp4")

    st = os.lstat(world.inbox / "trip" / "a.mp4")
    assert not result.vanished and not result.link and result.error is None
    assert (result.size, result.inode) == (st.st_size, st.st_ino)
    assert result.sha256 == hashlib.sha256(data).hexdigest()
    assert result.duration_seconds == pytest.approx(1.0, abs=0.1)


# ------------------------------------------------------------------------------------ upload
def test_upload_raises_source_changed_when_the_name_became_a_link_and_sends_no_bytes(
    world: World,
) -> None:
    private = world.elsewhere / "private.mp4"
    private.write_bytes(b"PRIVATE" * 1000)
    original = world.inbox / "x.mp4"
    # As long as the link's own lstat size, so a size/mtime check on the name cannot tell.
    original.write_bytes(b"o" * len(os.fsencode(private)))
    st = os.lstat(original)
    job = world.job("x.mp4", st, state=JobState.UPLOADING)
    swap_for_link(original, private, like=st)
    assert os.lstat(original).st_size == st.st_size

    outcome = world.runner.upload(job, no_progress)

    assert isinstance(outcome.error, SourceChangedError), outcome.error
    assert world.service.uploaded == [] and world.service.sent_bytes() == 0
    assert original.is_symlink() and private.read_bytes() == b"PRIVATE" * 1000


def test_upload_raises_source_changed_when_the_name_holds_another_inode(world: World) -> None:
    original = world.inbox / "x.mp4"
    original.write_bytes(b"first" * 100)
    st = os.lstat(original)
    job = world.job("x.mp4", st, state=JobState.UPLOADING)
    other = world.inbox / ".other.tmp"
    other.write_bytes(b"other" * 100)
    os.utime(other, ns=(st.st_atime_ns, st.st_mtime_ns))
    os.replace(other, original)

    outcome = world.runner.upload(job, no_progress)

    assert isinstance(outcome.error, SourceChangedError), outcome.error
    assert world.service.sent_bytes() == 0


def test_upload_sends_the_opened_file_when_the_name_is_swapped_mid_upload(world: World) -> None:
    private = world.elsewhere / "private.mp4"
    private.write_bytes(b"PRIVATE" * 1000)
    original = world.inbox / "x.mp4"
    data = os.urandom(3 * 1024 * 1024 + 5)
    original.write_bytes(data)
    job = world.job("x.mp4", os.lstat(original), state=JobState.UPLOADING)

    def swap() -> None:
        swap_for_link(original, private, like=os.lstat(original))
        world.service.on_upload = None

    world.service.on_upload = swap
    outcome = world.runner.upload(job, no_progress)

    # Only the settled file's own bytes went out; the name then no longer held it.
    assert world.service.uploaded == [data]
    assert isinstance(outcome.error, SourceChangedError), outcome.error


def test_upload_of_a_file_to_convert_swapped_for_a_link_converts_nothing(
    world: World, make_clip: ClipFactory
) -> None:
    private = make_clip("private.mkv")
    original = world.inbox / "x.mkv"
    original.write_bytes(b"o" * len(os.fsencode(private)))
    st = os.lstat(original)
    job = world.job("x.mkv", st, state=JobState.UPLOADING)
    swap_for_link(original, private, like=st)

    outcome = world.runner.upload(job, no_progress)

    assert isinstance(outcome.error, SourceChangedError), outcome.error
    assert world.service.sent_bytes() == 0
    assert list((world.state / "tmp").iterdir()) == []


def test_upload_of_a_regular_file_sends_it_and_records_its_hash(world: World) -> None:
    original = world.inbox / "x.mp4"
    data = os.urandom(100_000)
    original.write_bytes(data)
    job = world.job("x.mp4", os.lstat(original), state=JobState.UPLOADING)

    outcome = world.runner.upload(job, no_progress)

    assert outcome.error is None, outcome.error
    assert world.service.uploaded == [data]
    assert outcome.changes["sha256"] == hashlib.sha256(data).hexdigest()
    assert outcome.changes["upload_source"] == str(original)


def test_upload_remuxes_from_the_open_file(world: World, make_clip: ClipFactory) -> None:
    original = world.inbox / "x.mkv"
    original.write_bytes(make_clip("clip.mkv").read_bytes())
    job = world.job("x.mkv", os.lstat(original), state=JobState.UPLOADING)

    outcome = world.runner.upload(job, no_progress)

    assert outcome.error is None, outcome.error
    converted = Path(outcome.changes["upload_source"])
    assert converted.parent == world.state / "tmp" and converted.suffix == ".mp4"
    assert world.service.uploaded == [converted.read_bytes()]
    assert outcome.changes["sha256"] == hashlib.sha256(original.read_bytes()).hexdigest()


# ---------------------------------------------------------------------------------- download
def downloading_job(world: World, make_clip: ClipFactory, **paths: Path) -> Job:
    world.service.video = make_clip("render.mp4", seconds=1.0).read_bytes()
    original = world.inbox / "trip" / "beach.mp4"
    original.parent.mkdir()
    original.write_bytes(b"original")
    return world.job(
        "trip/beach.mp4",
        os.lstat(original),
        paths=dict(paths),
        state=JobState.DOWNLOADING,
        project_id=PROJECT_ID,
    )


def test_download_into_a_missing_outbox_root_raises_and_creates_nothing(
    world: World, make_clip: ClipFactory
) -> None:
    share = world.tmp / "mnt" / "share"  # the mount point exists; the share is not mounted
    share.mkdir(parents=True)
    job = downloading_job(world, make_clip, outbox=share / "out")

    outcome = world.runner.download(job, no_progress)

    assert isinstance(outcome.error, OSError), outcome.error
    assert outcome.error.errno == errno.ENOENT
    assert str(share / "out") in str(outcome.error)
    assert list(share.iterdir()) == []


def test_download_into_an_existing_root_creates_the_subfolder(
    world: World, make_clip: ClipFactory
) -> None:
    out = world.tmp / "out"
    out.mkdir()
    job = downloading_job(world, make_clip, outbox=out)

    outcome = world.runner.download(job, no_progress)

    assert outcome.error is None, outcome.error
    (output,) = outcome.changes["outputs"]
    assert Path(output.temp_path).parent == out / "trip"
    assert Path(output.temp_path).read_bytes() == world.service.video


# ----------------------------------------------------------------------------------- deliver
def delivering_job(world: World, original: Path, st: os.stat_result, **paths: Path) -> Job:
    out = world.tmp / "out"
    (out / "trip").mkdir(parents=True, exist_ok=True)
    temp = out / "trip" / ".beach.studio-ghibli.mp4.1-0.mh-tmp"
    temp.write_bytes(b"render")
    output = Output(
        index=0, temp_path=str(temp), size=6, sha256=hashlib.sha256(b"render").hexdigest()
    )
    return world.job(
        "trip/beach.mp4",
        st,
        paths=dict(paths),
        state=JobState.DELIVERING,
        project_id=PROJECT_ID,
        sha256=hashlib.sha256(original.read_bytes()).hexdigest(),
        outputs=(output,),
    )


def test_deliver_never_archives_an_original_that_became_a_link(world: World) -> None:
    copy = world.elsewhere / "beach.mp4"
    data = b"o" * len(os.fsencode(copy))
    original = world.inbox / "trip" / "beach.mp4"
    original.parent.mkdir()
    original.write_bytes(data)
    st = os.lstat(original)
    archive = world.tmp / "archive"
    archive.mkdir()
    job = delivering_job(world, original, st, archive=archive)
    # The same bytes outside the inbox, and the name now a link to them that lstat cannot tell.
    copy.write_bytes(data)
    swap_for_link(original, copy, like=st)

    outcome = world.runner.deliver(job)

    assert outcome.error is None, outcome.error
    assert outcome.changes["original_left"] is True
    assert outcome.changes["archive_path"] is None
    assert original.is_symlink() and copy.read_bytes() == data
    assert tree(archive) == set()


def test_deliver_into_a_missing_archive_root_leaves_the_original_and_creates_nothing(
    world: World,
) -> None:
    original = world.inbox / "trip" / "beach.mp4"
    original.parent.mkdir()
    original.write_bytes(b"original bytes")
    share = world.tmp / "mnt" / "share"
    share.mkdir(parents=True)
    job = delivering_job(world, original, os.lstat(original), archive=share / "archive")

    outcome = world.runner.deliver(job)

    assert outcome.error is None, outcome.error
    assert outcome.changes["original_left"] is True
    assert original.read_bytes() == b"original bytes"
    assert list(share.iterdir()) == []


def test_deliver_creates_the_default_archive_inside_the_inbox(world: World) -> None:
    original = world.inbox / "trip" / "beach.mp4"
    original.parent.mkdir()
    original.write_bytes(b"original bytes")
    archive = world.inbox / ".mh-done"
    job = delivering_job(world, original, os.lstat(original), archive=archive)

    outcome = world.runner.deliver(job)

    assert outcome.error is None, outcome.error
    assert outcome.changes["archive_path"] == str(archive / "trip" / "beach.mp4")
    assert (archive / "trip" / "beach.mp4").read_bytes() == b"original bytes"


# ----------------------------------------------------------------------------------- failing
def test_file_failure_leaves_a_link_where_it_is(world: World) -> None:
    original = world.inbox / "x.mp4"
    original.write_bytes(b"bytes")
    job = world.job("x.mp4", os.lstat(original), state=JobState.FAILED)
    failed = world.tmp / "failed"
    failed.mkdir()
    private = world.elsewhere / "private.mp4"
    private.write_bytes(b"private")
    original.unlink()
    original.symlink_to(private)

    path = world.runner.file_failure(job, "not a readable video", request="probe", service=None)

    assert original.is_symlink() and os.readlink(original) == str(private)
    assert tree(failed) == {"x.mp4.error.json"}
    assert json.loads((failed / "x.mp4.error.json").read_text())["file"] == "x.mp4"
    assert path == str(failed / "x.mp4")


def test_file_failure_into_a_missing_failed_root_raises_and_creates_nothing(
    world: World,
) -> None:
    original = world.inbox / "sub" / "x.mp4"
    original.parent.mkdir()
    original.write_bytes(b"bytes")
    share = world.tmp / "mnt" / "share"
    share.mkdir(parents=True)
    job = world.job(
        "sub/x.mp4", os.lstat(original), paths={"failed": share / "failed"}, state=JobState.FAILED
    )

    with pytest.raises(FileNotFoundError, match="share/failed"):
        world.runner.file_failure(job, "not a readable video", request="probe", service=None)

    assert list(share.iterdir()) == []
    assert original.read_bytes() == b"bytes"


def test_file_failure_creates_the_default_failed_root_inside_the_inbox(world: World) -> None:
    original = world.inbox / "sub" / "x.mp4"
    original.parent.mkdir()
    original.write_bytes(b"bytes")
    failed = world.inbox / ".mh-failed"
    job = world.job(
        "sub/x.mp4", os.lstat(original), paths={"failed": failed}, state=JobState.FAILED
    )

    path = world.runner.file_failure(job, "not a readable video", request="probe", service=None)

    assert path == str(failed / "sub" / "x.mp4")
    assert (failed / "sub" / "x.mp4").read_bytes() == b"bytes"
    assert (failed / "sub" / "x.mp4.error.json").is_file()


def test_filing_again_after_the_journal_lost_the_path_reuses_the_first_report(
    world: World,
) -> None:
    """The journal refused the write recording where the original went; the next start
    files the job again: same place, one report, no ` (2)` copy."""
    original = world.inbox / "x.mp4"
    original.write_bytes(b"bytes")
    failed = world.inbox / ".mh-failed"
    job = world.job("x.mp4", os.lstat(original), paths={"failed": failed}, state=JobState.FAILED)
    failed.mkdir()
    (failed / "x.mp4.error.json").write_text('{"job_id": 999}')  # another job's report
    (failed / "x.mp4").write_bytes(b"another job's original")

    first = world.runner.file_failure(job, "not a readable video", request="probe", service=None)
    again = world.runner.file_failure(job, "not a readable video", request="probe", service=None)

    assert first == again == str(failed / "x (2).mp4")
    assert tree(failed) == {"x.mp4", "x.mp4.error.json", "x (2).mp4", "x (2).mp4.error.json"}
    assert (failed / "x (2).mp4").read_bytes() == b"bytes"


def test_restore_failed_never_moves_a_link_into_the_inbox(world: World) -> None:
    failed = world.tmp / "failed"
    failed.mkdir()
    private = world.elsewhere / "private.mp4"
    private.write_bytes(b"private")
    (failed / "x.mp4").symlink_to(private)
    (failed / "x.mp4.error.json").write_text("{}")
    st = os.lstat(private)
    job = world.job("x.mp4", st, state=JobState.FAILED, failed_path=str(failed / "x.mp4"))

    restored = world.runner.restore_failed(job)

    assert restored is None
    assert tree(world.inbox) == set()
    assert (failed / "x.mp4").is_symlink()


def test_restore_failed_never_creates_a_missing_inbox(world: World) -> None:
    failed = world.tmp / "failed"
    (failed / "sub").mkdir(parents=True)
    (failed / "sub" / "x.mp4").write_bytes(b"bytes")
    job = world.job(
        "sub/x.mp4",
        os.lstat(failed / "sub" / "x.mp4"),
        state=JobState.FAILED,
        failed_path=str(failed / "sub" / "x.mp4"),
    )
    world.inbox.rmdir()  # the inbox share is not mounted

    with pytest.raises(FileNotFoundError):
        world.runner.restore_failed(job)

    assert not world.inbox.exists()
    assert (failed / "sub" / "x.mp4").read_bytes() == b"bytes"
