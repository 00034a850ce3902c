"""A journal of years (issue 13): the indexes `status` and start-up rely on, the bounded
queries, the bulk-loading path, and the report's bounded lists with exact totals."""

from __future__ import annotations

import dataclasses
import sqlite3
from collections.abc import Iterator
from pathlib import Path

import pytest

from mh_watchd import report
from mh_watchd.adapters.journal import BulkEvent, Journal
from mh_watchd.core.jobs import JobState
from tests.adapters.test_journal import new_job
from tests.web.test_app import make_config

S = JobState
LEGACY = "superseded: the file changed during upload"


@pytest.fixture
def journal(tmp_path: Path) -> Iterator[Journal]:
    j = Journal.open(tmp_path / "state")
    try:
        yield j
    finally:
        j.close()


def plan(journal: Journal, sql: str, *params: object) -> str:
    raw = sqlite3.connect(journal.path)
    try:
        rows = raw.execute(f"EXPLAIN QUERY PLAN {sql}", params).fetchall()
    finally:
        raw.close()
    return " | ".join(str(row[-1]) for row in rows)


def test_counts_come_from_a_covering_index_without_a_sort(journal: Journal) -> None:
    detail = plan(journal, "SELECT folder, state, COUNT(*) AS n FROM jobs GROUP BY folder, state")
    assert "COVERING INDEX jobs_by_folder_state" in detail
    assert "TEMP B-TREE" not in detail


def test_newest_of_a_state_walks_an_index_without_a_sort(journal: Journal) -> None:
    detail = plan(
        journal,
        "SELECT * FROM jobs WHERE state = ? ORDER BY updated_at DESC, id DESC LIMIT ?",
        "done",
        10,
    )
    assert "jobs_by_state_updated" in detail
    assert "TEMP B-TREE" not in detail


def test_unfinished_and_unfiled_failures_use_the_state_index(journal: Journal) -> None:
    values = ("delivering", "downloading", "held", "queued", "rendering", "submitting")
    detail = plan(
        journal,
        f"SELECT * FROM jobs WHERE state IN ({', '.join('?' for _ in values)}) ORDER BY id",
        *values,
    )
    assert "USING INDEX" in detail and "SCAN jobs" not in detail.replace("SCAN jobs USING", "")
    detail = plan(journal, "SELECT * FROM jobs WHERE state = ? AND failed_path IS NULL", "failed")
    assert "USING INDEX" in detail


def test_unfinished_is_every_state_but_the_finished_ones(journal: Journal) -> None:
    ids = {}
    for i, state in enumerate(JobState):
        stored = journal.insert(new_job(f"{i}.mp4", state=state), event="job.queued")
        ids[state] = stored.id
    got = [job.state for job in journal.unfinished()]
    assert got == [s for s in JobState if s not in (S.DONE, S.FAILED, S.SUPERSEDED)]


def test_failed_unfiled_is_exactly_the_failed_jobs_without_a_failed_path(
    journal: Journal,
) -> None:
    a = journal.insert(new_job("a.mp4", state=S.FAILED), event="job.failed")
    journal.insert(new_job("b.mp4", state=S.FAILED, failed_path="/f/b.mp4"), event="job.failed")
    journal.insert(new_job("c.mp4", state=S.DONE), event="job.done")
    assert [job.id for job in journal.failed_unfiled()] == [a.id]


def test_some_jobs_is_bounded_ordered_and_leaves_out_an_error_prefix(journal: Journal) -> None:
    ids = [
        journal.insert(new_job(f"{i}.mp4", state=S.FAILED, last_error=err), event="e").id
        for i, err in enumerate(["x", None, LEGACY, "y", "Superseded: real"])
    ]
    assert [j.id for j in journal.some_jobs([S.FAILED], limit=2)] == ids[:2]
    newest = journal.some_jobs(
        [S.FAILED], limit=3, newest_first=True, without_error_prefix="superseded:"
    )
    assert [j.id for j in newest] == [ids[4], ids[3], ids[1]]
    assert journal.some_jobs([], limit=3) == [] and journal.some_jobs([S.FAILED], limit=0) == []
    assert journal.counts_with_error_prefix(S.FAILED, "superseded:") == {"anime": 1}


def test_insert_history_writes_what_insert_writes(tmp_path: Path, journal: Journal) -> None:
    job = new_job("a.mp4", state=S.DONE, updated_at=30.0, created_at=10.0)
    history = [
        BulkEvent(10.0, None, S.QUEUED, "job.queued", {"k": 1}),
        BulkEvent(20.0, S.QUEUED, S.UPLOADING, "job.uploading"),
        BulkEvent(30.0, S.UPLOADING, S.DONE, "job.done"),
    ]
    assert journal.insert_history([(job, history)]) == 1
    (stored,) = journal.jobs()
    assert stored == dataclasses.replace(job, id=stored.id)
    assert stored.id is not None
    events = journal.events(stored.id)
    assert [(e.at, e.from_state, e.to_state, e.event, dict(e.detail)) for e in events] == [
        (10.0, None, S.QUEUED, "job.queued", {"k": 1}),
        (20.0, S.QUEUED, S.UPLOADING, "job.uploading", {}),
        (30.0, S.UPLOADING, S.DONE, "job.done", {}),
    ]
    with pytest.raises(ValueError):
        journal.insert_history([(job, history[:2])])  # ends in uploading, not done
    with pytest.raises(ValueError):
        journal.insert_history([(stored, history)])
    assert len(journal.jobs()) == 1


def test_report_lists_are_bounded_and_totals_exact(
    journal: Journal, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(report, "LIST_LIMIT", 2)
    failed = [
        journal.insert(new_job(f"f{i}.mp4", state=S.FAILED, last_error=f"bad {i}"), event="e").id
        for i in range(5)
    ]
    journal.insert(new_job("old.mp4", state=S.FAILED, last_error=LEGACY), event="e")
    held = [
        journal.insert(
            new_job(f"h{i}.mp4", state=S.HELD, hold_reason="auth", resume_state=S.QUEUED),
            event="e",
        ).id
        for i in range(3)
    ]
    queued = [journal.insert(new_job(f"q{i}.mp4", state=S.QUEUED), event="e").id for i in range(4)]
    data = report.build(journal, make_config(tmp_path / "state"), now=100.0)
    assert data["folders"][0]["counts"] == {
        "failed": 5,
        "held": 3,
        "queued": 4,
        "superseded": 1,
    }
    assert [j["id"] for j in data["failed"]] == failed[3:]  # the newest, in id order
    assert [j["id"] for j in data["held"]] == held[:2]
    assert [j["id"] for j in data["active"]] == queued[:2]
    assert data["totals"] == {"active": 4, "held": 3, "failed": 5}
    text = report.render(data)
    assert "... and 3 more (the 2 newest are shown)" in text
    assert text.count("... and 1 more (the 2 oldest are shown)") == 1
    assert "... and 2 more (the 2 oldest are shown)" in text
