"""Several hosts sharing one journal: claims under leases, fencing, takeovers, the per-path and
budget checks, requests taken once, and the hosts table.

Each host is its own Journal on the same journal (`set_host`), as each daemon has its own
connection. Every test runs on SQLite and on PostgreSQL (see conftest.py); the races between
real threads, which only PostgreSQL allows, are in test_journal_pg.py.
"""

from __future__ import annotations

import dataclasses
import sqlite3
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest

from mh_watchd.adapters.journal import (
    JOURNAL_FILENAME,
    Claimed,
    ClaimLost,
    Journal,
    JournalConflict,
    OverBudget,
)
from mh_watchd.core.jobs import HoldReason, Job, JobState, hold, transition
from tests.adapters.conftest import OpenJournal
from tests.conftest import wait_for
from tests.factories import job_in

S = JobState
DAY = "2024-11-14"

Host = Callable[..., Journal]
Query = Callable[..., list[dict[str, Any]]]


@pytest.fixture
def host(open_journal: OpenJournal) -> Host:
    """host("host-a", lease_seconds=60.0) -> a Journal writing as daemon "host-a"."""

    def factory(name: str, lease_seconds: float = 60.0) -> Journal:
        journal = open_journal()
        journal.set_host(name, lease_seconds=lease_seconds)
        return journal

    return factory


@pytest.fixture
def query(tmp_path: Path, journal_url: str | None) -> Query:
    """query(sql, *params) -> rows as dicts, on a connection of its own (not the journal's)."""

    def run(sql: str, *params: object) -> list[dict[str, Any]]:
        if journal_url is None:
            conn = sqlite3.connect(tmp_path / "state" / JOURNAL_FILENAME)
            try:
                conn.row_factory = sqlite3.Row
                return [dict(row) for row in conn.execute(sql, params).fetchall()]
            finally:
                conn.close()
        import psycopg
        from psycopg.rows import dict_row

        with psycopg.connect(journal_url, autocommit=True, row_factory=dict_row) as pg:
            return list(pg.execute(sql.replace("?", "%s"), params).fetchall())

    return run


def queued(rel_path: str, *, folder: str = "anime", **changes: Any) -> Job:
    return job_in(S.QUEUED, rel_path=rel_path, folder=folder, **changes)


def claim_row(query: Query, job_id: int | None) -> tuple[str | None, float | None]:
    """(holder, lease_until) as stored."""
    (row,) = query("SELECT holder, lease_until FROM jobs WHERE id = ?", job_id)
    return row["holder"], row["lease_until"]


def taken(claimed: list[Claimed]) -> list[tuple[int | None, str | None, str | None]]:
    return [(c.job.id, c.job.holder, c.taken_from) for c in claimed]


def event_names(journal: Journal, job: Job) -> list[str]:
    assert job.id is not None
    return [e.event for e in journal.events(job.id)]


# ---------------------------------------------------------------- holding and fencing


def test_database_now_is_the_wall_clock(journal: Journal) -> None:
    assert abs(journal.database_now() - time.time()) < 5.0


def test_insert_holds_an_unfinished_job_for_the_host_under_a_lease(
    host: Host, open_journal: OpenJournal, query: Query
) -> None:
    a = host("host-a", lease_seconds=30.0)
    tool = open_journal()  # the CLI: no host, holds nothing
    before = a.database_now()
    held = a.insert(queued("a.mp4"), event="job.queued")
    after = a.database_now()
    free = tool.insert(queued("b.mp4"), event="job.queued")
    done = a.insert(job_in(S.DONE, rel_path="c.mp4"), event="job.imported")

    assert held.holder == "host-a"
    assert tool.get(held.id or 0) == held
    holder, lease = claim_row(query, held.id)
    assert holder == "host-a"
    assert lease is not None and before + 30.0 <= lease <= after + 30.0
    assert (free.holder, claim_row(query, free.id)) == (None, (None, None))
    assert (done.holder, claim_row(query, done.id)) == (None, (None, None))
    assert tool.holders() == {"host-a": 1, "": 1}  # finished jobs are nobody's


def test_another_hosts_save_raises_claim_lost_and_writes_nothing(host: Host) -> None:
    a, b = host("host-a"), host("host-b")
    job = a.insert(queued("a.mp4"), event="job.queued")
    assert job.id is not None

    with pytest.raises(ClaimLost, match="held by host 'host-a'") as caught:
        b.save(transition(job, S.UPLOADING, updated_at=5.0), event="upload.started")
    assert isinstance(caught.value, JournalConflict)
    assert (caught.value.job_id, caught.value.holder) == (job.id, "host-a")
    assert b.get(job.id) == job
    assert event_names(b, job) == ["job.queued"]

    moved = a.save(transition(job, S.UPLOADING, updated_at=5.0), event="upload.started")
    assert moved.holder == "host-a"
    assert b.get(job.id) == moved


def test_a_finished_save_leaves_the_job_held_by_nobody(host: Host, query: Query) -> None:
    a = host("host-a")
    job = a.insert(queued("a.mp4"), event="job.queued")
    failed = a.save(transition(job, S.FAILED, last_error="not a video"), event="job.failed")
    assert failed.holder is None
    assert a.get(job.id or 0) == failed
    assert claim_row(query, job.id) == (None, None)
    assert a.holders() == {}
    assert a.renew_claims() == set()
    # `retry` of the finished job by its host holds it again
    again = a.save(transition(failed, S.QUEUED), event="job.retried")
    assert (again.holder, claim_row(query, job.id)[0]) == ("host-a", "host-a")


def test_a_tool_saving_a_held_job_keeps_the_hosts_claim(
    host: Host, open_journal: OpenJournal, query: Query
) -> None:
    a = host("host-a")
    cli = open_journal()
    job = a.insert(queued("a.mp4"), event="job.queued")
    lease = claim_row(query, job.id)[1]
    held = cli.save(hold(job, HoldReason.AUTH, updated_at=3.0), event="job.held")
    assert held.holder == "host-a"
    assert claim_row(query, job.id) == ("host-a", lease)
    # a tool finishing a job frees it, like the host would
    failed = cli.save(transition(held, S.FAILED), event="job.failed")
    assert (failed.holder, claim_row(query, job.id)) == (None, (None, None))


def test_claims_need_a_host(journal: Journal) -> None:
    with pytest.raises(ValueError, match="set_host"):
        journal.claim_jobs(folders=None)
    with pytest.raises(ValueError, match="set_host"):
        journal.renew_claims()
    with pytest.raises(ValueError, match="set_host"):
        journal.release_claims()
    with pytest.raises(ValueError, match="set_host"):
        journal.register_host(pid=1, version="x")
    with pytest.raises(ValueError, match="empty"):
        journal.set_host("")
    assert journal.host is None


# ---------------------------------------------------------------- claiming


def test_claim_jobs_takes_only_free_unfinished_jobs_of_its_folders(
    host: Host, open_journal: OpenJournal
) -> None:
    tool = open_journal()
    anime = [tool.insert(queued(f"{n}.mp4"), event="job.queued") for n in range(3)]
    clay = tool.insert(queued("c.mp4", folder="clay"), event="job.queued")
    tool.insert(job_in(S.DONE, rel_path="d.mp4"), event="job.imported")
    b = host("host-b")
    theirs = b.insert(queued("b.mp4"), event="job.queued")  # a live lease of another host
    a = host("host-a")

    claimed = a.claim_jobs(folders=["anime"])
    assert taken(claimed) == [(j.id, "host-a", None) for j in anime]  # oldest first
    assert [c.job for c in claimed] == [a.get(j.id or 0) for j in anime]
    assert a.claim_jobs(folders=["anime"]) == []  # its own live jobs are not taken again
    assert a.claim_jobs(folders=[]) == []
    assert tool.get(clay.id or 0) == clay  # another folder: not taken
    assert tool.get(theirs.id or 0) == theirs  # never a live lease of another host
    assert tool.holders() == {"host-a": 3, "host-b": 1, "": 1}
    # nothing was taken from anyone: no takeover in any history
    assert all(event_names(tool, j) == ["job.queued"] for j in [*anime, clay, theirs])

    assert taken(b.claim_jobs(folders=["anime", "clay"])) == [(clay.id, "host-b", None)]

    dogs = [tool.insert(queued(f"{n}.mp4", folder="dogs"), event="e") for n in range(3)]
    assert taken(a.claim_jobs(folders=None, limit=2)) == [(j.id, "host-a", None) for j in dogs[:2]]
    assert tool.holders() == {"host-a": 5, "host-b": 2, "": 1}


def test_an_expired_lease_is_taken_over_and_fences_the_old_holder(host: Host) -> None:
    a = host("host-a", lease_seconds=0.3)
    b = host("host-b")
    job = a.insert(queued("a.mp4"), event="job.queued")
    assert job.id is not None

    claimed = wait_for(
        lambda: b.claim_jobs(folders=["anime"]), timeout_seconds=10, what="the lease to run out"
    )
    assert isinstance(claimed, list)
    assert taken(claimed) == [(job.id, "host-b", "host-a")]
    events = b.events(job.id)
    assert [(e.event, e.from_state, e.to_state, e.detail) for e in events] == [
        ("job.queued", None, S.QUEUED, {}),
        ("job.taken_over", S.QUEUED, S.QUEUED, {"from_host": "host-a", "to_host": "host-b"}),
    ]
    assert events[1].at == job.updated_at  # the history's times stay the job's own

    # the old holder comes back: it holds nothing and can write nothing
    assert a.renew_claims() == set()
    with pytest.raises(ClaimLost) as caught:
        a.save(transition(job, S.UPLOADING), event="upload.started")
    assert caught.value.holder == "host-b"
    assert a.claim_jobs(folders=None) == []  # b's lease is live
    stored = a.get(job.id)
    assert stored is not None and (stored.state, stored.holder) == (S.QUEUED, "host-b")
    assert len(a.events(job.id)) == 2


def test_include_own_takes_this_hosts_live_jobs_but_never_anothers(host: Host) -> None:
    a, b = host("host-a"), host("host-b")
    mine = a.insert(queued("a.mp4"), event="job.queued")
    theirs = b.insert(queued("b.mp4"), event="job.queued")

    assert a.claim_jobs(folders=None) == []
    claimed = a.claim_jobs(folders=None, include_own=True)
    assert taken(claimed) == [(mine.id, "host-a", None)]  # a restart: taken from nobody
    assert event_names(a, mine) == ["job.queued"]
    assert taken(b.claim_jobs(folders=["anime"], include_own=True)) == [(theirs.id, "host-b", None)]
    assert a.holders() == {"host-a": 1, "host-b": 1}


def test_renew_claims_returns_the_held_jobs_and_extends_their_lease(
    host: Host, query: Query
) -> None:
    a = host("host-a", lease_seconds=0.3)
    b = host("host-b")
    first = a.insert(queued("1.mp4"), event="job.queued")
    second = a.insert(queued("2.mp4"), event="job.queued")
    a.insert(job_in(S.DONE, rel_path="3.mp4"), event="job.imported")
    b.insert(queued("4.mp4"), event="job.queued")
    short_lease = claim_row(query, first.id)[1]
    assert short_lease is not None

    a.set_host("host-a", lease_seconds=30.0)
    assert a.renew_claims() == {first.id, second.id}
    long_lease = claim_row(query, first.id)[1]
    assert long_lease is not None and long_lease >= short_lease + 29.0
    holder, lease = claim_row(query, second.id)
    assert holder == "host-a" and lease is not None and abs(lease - long_lease) < 1.0

    # past the lease it was given at insert, it is still a's
    wait_for(lambda: a.database_now() > short_lease, what="the first lease's end")
    assert b.claim_jobs(folders=None) == []

    # a short renewal lets it lapse, and then b takes over
    a.set_host("host-a", lease_seconds=0.2)
    assert a.renew_claims() == {first.id, second.id}
    got: list[Claimed] = []

    def take_both() -> bool:
        got.extend(b.claim_jobs(folders=None))
        return len(got) == 2

    wait_for(take_both, timeout_seconds=10, what="b to take over both jobs")
    assert sorted(taken(got)) == [(first.id, "host-b", "host-a"), (second.id, "host-b", "host-a")]
    assert a.renew_claims() == set()


def test_release_claims_frees_jobs_at_once(host: Host, query: Query) -> None:
    a, b = host("host-a"), host("host-b")
    one, two, three = (a.insert(queued(f"{n}.mp4"), event="job.queued") for n in range(3))
    theirs = b.insert(queued("b.mp4"), event="job.queued")

    assert a.release_claims([]) == 0
    assert a.release_claims([theirs.id or 0]) == 0  # only its own
    assert a.release_claims([one.id or 0]) == 1
    assert claim_row(query, one.id) == (None, None)
    assert taken(b.claim_jobs(folders=None)) == [(one.id, "host-b", None)]  # free: no takeover
    assert event_names(b, one) == ["job.queued"]

    assert a.release_claims() == 2
    assert a.release_claims() == 0
    assert b.holders() == {"host-b": 2, "": 2}
    assert taken(b.claim_jobs(folders=None)) == [
        (two.id, "host-b", None),
        (three.id, "host-b", None),
    ]


# ---------------------------------------------------------------- per-path and budget checks


def test_insert_expecting_the_latest_job_of_a_path_refuses_when_another_came(
    host: Host,
) -> None:
    a, b = host("host-a"), host("host-b")
    first = a.insert(queued("a.mp4"), event="job.queued", expect_latest=0)

    with pytest.raises(JournalConflict, match="recorded meanwhile") as caught:
        b.insert(queued("a.mp4"), event="job.queued", expect_latest=0)
    assert caught.value.job_id == first.id
    assert b.jobs() == [first]

    second = b.insert(queued("a.mp4", size=11), event="job.queued", expect_latest=first.id)
    assert b.latest_for_path("anime", "a.mp4") == second
    with pytest.raises(JournalConflict, match=f"job {second.id} of this file"):
        a.insert(queued("a.mp4", size=12), event="job.queued", expect_latest=first.id)
    other_folder = a.insert(queued("a.mp4", folder="clay"), event="job.queued", expect_latest=0)
    assert [j.id for j in a.jobs()] == [first.id, second.id, other_folder.id]


def test_save_with_a_budget_refuses_a_spend_past_the_days_limit(host: Host) -> None:
    a, b = host("host-a"), host("host-b")
    b.insert(
        job_in(S.RENDERING, rel_path="x.mp4", credits_day=DAY, credits_charged=40),
        event="job.imported",
    )
    booked = b.insert(job_in(S.DONE, rel_path="y.mp4", project_id="p1"), event="job.imported")
    b.book_charge(job_id=booked.id or 0, project_id="p1", day=DAY, credits=20, at=1.0)
    job = a.insert(job_in(S.UPLOADING, rel_path="a.mp4"), event="job.queued")
    assert a.credits_spent(DAY) == 60

    too_big = transition(job, S.SUBMITTING, credits_day=DAY, credits_estimate=41, updated_at=2.0)
    with pytest.raises(OverBudget, match="60 of 100 credits") as caught:
        a.save(too_big, event="render.submitting", budget=(DAY, 100))
    assert isinstance(caught.value, JournalConflict)
    assert (caught.value.job_id, caught.value.spent) == (job.id, 60)
    assert a.get(job.id or 0) == job  # nothing written
    assert event_names(a, job) == ["job.queued"]
    assert a.credits_spent(DAY) == 60

    fits = dataclasses.replace(too_big, credits_estimate=40)  # exactly up to the limit
    assert a.save(fits, event="render.submitting", budget=(DAY, 100)) == fits
    assert a.credits_spent(DAY) == 100
    # saving it again does not count its own estimate twice
    again = dataclasses.replace(fits, attempts=1, updated_at=3.0)
    a.save(again, event="render.retry", budget=(DAY, 100))
    # another day is another budget; a limit of 0 is no limit
    other = a.insert(job_in(S.UPLOADING, rel_path="o.mp4"), event="job.queued")
    spend = transition(other, S.SUBMITTING, credits_day="2024-11-15", credits_estimate=100)
    a.save(spend, event="render.submitting", budget=("2024-11-15", 100))
    with pytest.raises(OverBudget):
        a.save(dataclasses.replace(spend, credits_day=DAY), event="x", budget=(DAY, 100))
    a.save(dataclasses.replace(spend, credits_day=DAY), event="x", budget=(DAY, 0))
    assert a.credits_spent(DAY) == 200


# ---------------------------------------------------------------- requests and hosts


def test_claim_request_lets_exactly_one_host_take_a_request(
    host: Host, open_journal: OpenJournal, query: Query
) -> None:
    cli = open_journal()
    a, b = host("host-a"), host("host-b")
    first = cli.add_request("retry_all_failed", None, at=1.0)
    second = cli.add_request("retry_all_failed", None, at=2.0)

    assert a.claim_request(first) is True
    assert b.claim_request(first) is False
    assert a.claim_request(first) is True  # already its own
    assert b.claim_request(second) is True
    assert a.claim_request(second) is False
    assert [r["claimed_by"] for r in query("SELECT claimed_by FROM requests ORDER BY id")] == [
        "host-a",
        "host-b",
    ]

    a.finish_request(first, at=3.0, result="done")
    assert a.claim_request(first) is False  # finished
    assert b.claim_request(12345) is False  # unknown
    assert [r.id for r in cli.pending_requests()] == [second]


def test_register_host_lists_the_hosts_and_holders_counts_their_jobs(
    host: Host, open_journal: OpenJournal
) -> None:
    a, b = host("host-a"), host("host-b")
    tool = open_journal()
    before = a.database_now()
    b.register_host(pid=202, version="1.1")
    a.register_host(pid=101, version="1.0")
    after = a.database_now()

    hosts = tool.hosts()
    assert [(h.name, h.pid, h.version) for h in hosts] == [
        ("host-a", 101, "1.0"),
        ("host-b", 202, "1.1"),
    ]
    for info in hosts:
        assert info.started_at is not None
        assert before <= info.started_at <= info.seen_at <= after

    # a restart registers again: same row, new pid and start
    first_seen = hosts[0].seen_at
    wait_for(lambda: a.database_now() > first_seen, what="the database clock to move")
    a.register_host(pid=103, version="1.2")
    (again,) = [h for h in tool.hosts() if h.name == "host-a"]
    assert (again.pid, again.version) == (103, "1.2")
    assert again.started_at is not None and again.started_at > first_seen

    # renewing leases is a sign of life
    wait_for(lambda: a.database_now() > again.seen_at, what="the database clock to move")
    a.renew_claims()
    (renewed,) = [h for h in tool.hosts() if h.name == "host-a"]
    assert renewed.seen_at > again.seen_at and renewed.started_at == again.started_at

    a.insert(queued("1.mp4"), event="e")
    a.insert(queued("2.mp4"), event="e")
    b.insert(queued("3.mp4"), event="e")
    tool.insert(queued("4.mp4"), event="e")
    a.insert(job_in(S.DONE, rel_path="5.mp4"), event="e")
    assert tool.holders() == {"host-a": 2, "host-b": 1, "": 1}
    assert len(tool.hosts()) == 2  # holding jobs does not register a host


def test_listening_on_sqlite_hears_nothing_and_stops(tmp_path: Path) -> None:
    heard: list[str] = []
    with Journal.open(tmp_path / "state") as journal:
        journal.set_host("host-a")
        listening = journal.listen(heard.append)
        journal.add_request("retry_all_failed", None, at=1.0)
        job = journal.insert(queued("a.mp4"), event="e")
        assert journal.release_claims([job.id or 0]) == 1
        listening.stop(timeout=1.0)
    assert heard == []
    assert journal.shared is False
