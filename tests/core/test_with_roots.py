"""Moving a job's paths to the roots another host reaches the same share by."""

from __future__ import annotations

import dataclasses

from mh_watchd.core.api import Style
from mh_watchd.core.jobs import Job, JobSettings, JobState, Output, Roots, with_roots

NAS = Roots(
    inbox="/volume1/video/in",
    outbox="/volume1/video/out",
    archive="/volume1/video/in/.mh-done",  # inside the inbox, as the default is
    failed="/volume1/video/in/.mh-failed",
)
DESK = Roots(
    inbox="/mnt/nas/video/in",
    outbox="/mnt/nas/video/out",
    archive="/mnt/nas/video/in/.mh-done",
    failed="/mnt/nas/video/in/.mh-failed",
)


def job_on(roots: Roots, **changes: object) -> Job:
    settings = JobSettings(
        style=Style(art_style="Studio Ghibli"),
        style_slug="studio-ghibli",
        fps_resolution="FULL",
        start_seconds=0.0,
        max_seconds=60.0,
        on_success="archive",
        **dataclasses.asdict(roots),
    )
    job = Job(
        folder="anime",
        rel_path="trip/beach.mp4",
        size=10,
        mtime_ns=1,
        inode=2,
        settings=settings,
        state=JobState.DELIVERING,
        outputs=(
            Output(
                index=0,
                temp_path=f"{roots.outbox}/trip/.beach.mh-tmp",
                final_path=f"{roots.outbox}/trip/beach.studio-ghibli.mp4",
                placed=True,
            ),
        ),
        archive_path=f"{roots.archive}/trip/beach.mp4",
        failed_path=f"{roots.failed}/trip/beach.mp4",
        upload_source=f"{roots.inbox}/trip/beach.mp4",
    )
    return dataclasses.replace(job, **changes)  # type: ignore[arg-type]


def test_every_path_moves_to_the_other_host_s_roots() -> None:
    assert with_roots(job_on(NAS), DESK) == job_on(DESK)
    assert with_roots(job_on(DESK), NAS) == job_on(NAS)


def test_same_roots_give_the_same_job() -> None:
    job = job_on(NAS)
    assert with_roots(job, NAS) is job


def test_the_most_specific_root_wins_for_an_archive_inside_the_inbox() -> None:
    moved = with_roots(job_on(NAS), dataclasses.replace(DESK, archive="/srv/archive"))
    assert moved.archive_path == "/srv/archive/trip/beach.mp4"
    assert moved.upload_source == "/mnt/nas/video/in/trip/beach.mp4"


def test_paths_outside_every_root_stay_and_prefixes_need_a_separator() -> None:
    job = job_on(
        NAS,
        upload_source="/var/lib/mh-watchd/tmp/job-7.mp4",  # another host's converted file
        archive_path="/volume1/video/in-old/beach.mp4",  # shares a prefix, not the root
    )
    moved = with_roots(job, DESK)
    assert moved.upload_source == "/var/lib/mh-watchd/tmp/job-7.mp4"
    assert moved.archive_path == "/volume1/video/in-old/beach.mp4"
    assert moved.settings.inbox == DESK.inbox
    assert moved.outputs[0].final_path == "/mnt/nas/video/out/trip/beach.studio-ghibli.mp4"


def test_unset_paths_stay_unset() -> None:
    job = job_on(NAS, outputs=(), archive_path=None, failed_path=None, upload_source=None)
    moved = with_roots(job, DESK)
    assert (moved.archive_path, moved.failed_path, moved.upload_source) == (None, None, None)
    assert moved.outputs == ()
