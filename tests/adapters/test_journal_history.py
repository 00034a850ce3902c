"""History retention: old events of finished jobs are compacted away, in short batches; job
rows, fingerprints, charges and the events of unfinished jobs stay. `journal` runs on SQLite and
on PostgreSQL (conftest.py)."""

from __future__ import annotations

import dataclasses

import pytest

from mh_watchd.adapters.journal import Journal
from mh_watchd.core.jobs import Job, JobState
from tests.factories import job_in

_S = JobState
DONE_PATH = (_S.UPLOADING, _S.SUBMITTING, _S.RENDERING, _S.DOWNLOADING, _S.DELIVERING, _S.DONE)
DAY = 86400.0
NOW = 1_000 * DAY
CUTOFF = NOW - 365 * DAY


def make_job(
    journal: Journal, name: str, path: tuple[JobState, ...], *, start: float, step: float = 60.0
) -> Job:
    """A job queued at `start`, then moved along `path`, one event every `step` seconds."""
    job = journal.insert(
        job_in(
            _S.QUEUED,
            rel_path=name,
            sha256=f"sha-{name}",
            inode=abs(hash(name)) % 10_000,
            created_at=start,
            updated_at=start,
        ),
        event="job.queued",
    )
    at = start
    for state in path:
        at += step
        job = journal.save(
            dataclasses.replace(job, state=state, updated_at=at), event=f"job.{state.value}"
        )
    return job


def event_times(journal: Journal, job: Job) -> list[float]:
    assert job.id is not None
    return [e.at for e in journal.events(job.id)]


def test_compaction_deletes_exactly_the_old_events_of_finished_jobs(journal: Journal) -> None:
    old = CUTOFF - 10 * DAY
    old_done = make_job(journal, "old-done.mp4", DONE_PATH, start=old)
    old_failed = make_job(journal, "old-failed.mp4", (_S.UPLOADING, _S.FAILED), start=old)
    old_superseded = make_job(journal, "old-sup.mp4", (_S.SUPERSEDED,), start=old)
    old_unfinished = make_job(journal, "old-rendering.mp4", DONE_PATH[:3], start=old)
    new_done = make_job(journal, "new-done.mp4", DONE_PATH, start=NOW - DAY)
    # Finished long ago but retried just now and done again: only its old events go.
    straddling = make_job(journal, "straddle.mp4", DONE_PATH, start=old)
    straddling = journal.save(
        dataclasses.replace(straddling, state=_S.QUEUED, updated_at=NOW - 60), event="job.retry"
    )
    for state in DONE_PATH:
        straddling = journal.save(
            dataclasses.replace(straddling, state=state, updated_at=NOW - 30), event="again"
        )
    assert old_done.id is not None
    journal.book_charge(job_id=old_done.id, project_id="p-old", day="1972-01-01", credits=7, at=old)
    before = {j.id: event_times(journal, j) for j in (old_unfinished, new_done)}

    done = journal.compact_history(CUTOFF)

    # Each old finished job keeps only its last event, the one ending in its state.
    for job in (old_done, old_failed, old_superseded):
        assert job.id is not None
        events = journal.events(job.id)
        assert len(events) == 1 and events[0].to_state is job.state
    assert event_times(journal, straddling) == [NOW - 60] + [NOW - 30] * len(DONE_PATH)
    # Unfinished and recent jobs are untouched.
    assert {j.id: event_times(journal, j) for j in (old_unfinished, new_done)} == before
    assert done.events_deleted == len(DONE_PATH) + 2 + 1 + len(DONE_PATH) + 1
    assert done.jobs_compacted == 4 and done.finished
    # Job rows, fingerprints and charges stay: a re-dropped file is still known and not paid.
    assert journal.find_done_version("anime", "old-done.mp4", 10, "sha-old-done.mp4") == old_done
    assert journal.known_version("anime", "old-failed.mp4", 10, 1, old_failed.inode) == old_failed
    assert journal.get(old_superseded.id or 0) == old_superseded
    assert journal.credits_spent("1972-01-01") == 7
    # A second run finds nothing more to do, and takes no write transaction for it.
    assert journal.compact_history(CUTOFF) == dataclasses.replace(
        done, events_deleted=0, jobs_compacted=0, batches=0
    )


def test_compaction_works_in_batches_and_can_stop_between_them(journal: Journal) -> None:
    old = CUTOFF - DAY
    jobs = [make_job(journal, f"f{i}.mp4", DONE_PATH, start=old) for i in range(5)]
    stops: list[int] = []

    def keep_going() -> bool:
        stops.append(1)
        return len(stops) <= 3

    partial = journal.compact_history(CUTOFF, batch_rows=4, job_window=2, keep_going=keep_going)
    assert not partial.finished and partial.batches >= 2
    assert 0 < partial.events_deleted <= 4 * partial.batches
    rest = journal.compact_history(CUTOFF, batch_rows=4, job_window=2)
    assert rest.finished
    # 6 of each job's 7 events go, at most 4 per transaction: at least 8 transactions in all.
    assert partial.events_deleted + rest.events_deleted == 5 * len(DONE_PATH)
    assert partial.batches + rest.batches >= 8
    for job in jobs:
        assert len(event_times(journal, job)) == 1


def test_a_cutoff_before_every_event_keeps_everything(journal: Journal) -> None:
    """history_days = 0 never calls compaction; a cutoff older than all history is a no-op."""
    job = make_job(journal, "a.mp4", DONE_PATH, start=NOW - 2 * DAY)
    before = event_times(journal, job)
    assert journal.compact_history(0.0).events_deleted == 0
    assert event_times(journal, job) == before


def test_an_empty_journal_compacts_to_nothing(journal: Journal) -> None:
    assert journal.compact_history(NOW).events_deleted == 0
    with pytest.raises(ValueError):
        journal.compact_history(NOW, batch_rows=0)
