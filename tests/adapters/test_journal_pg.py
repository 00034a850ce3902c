"""The journal on a real PostgreSQL server: its schema and versions, hosts racing in real
threads (each with its own Journal and connection), the database going away and coming back,
the per-host daemon lock and LISTEN/NOTIFY.

The behaviour both back ends share is tested on both (test_journal.py, test_journal_claims.py,
test_journal_history.py); this file is what only a shared database has.
"""

from __future__ import annotations

import dataclasses
import sqlite3
import threading
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import psycopg
import pytest

from mh_watchd.adapters import journal_pg
from mh_watchd.adapters.journal import (
    JOURNAL_FILENAME,
    BulkEvent,
    Journal,
    JournalConflict,
    OverBudget,
)
from mh_watchd.adapters.journal_backup import BackupRefused
from mh_watchd.adapters.journal_pg import PG_SCHEMA_VERSION, Listener, redacted
from mh_watchd.core.errors import AlreadyRunningError, StateDirError
from mh_watchd.core.jobs import Job, JobState, transition
from tests.conftest import wait_for
from tests.factories import job_in
from tests.pgserver import PgServer

S = JobState
QUEUED_EVENT = BulkEvent(at=0.0, from_state=None, to_state=S.QUEUED, event="job.queued")
BOUND_SECONDS = 15.0  # a call on a database that went away must fail well within this

OpenHost = Callable[..., Journal]


@pytest.fixture
def open_host(pg_url: str, tmp_path: Path) -> Iterator[OpenHost]:
    """open_host("host-a", lease_seconds=60.0) -> a Journal on the test's database writing as
    that host (None: a tool, like the CLI), with a state_dir of its own (for the daemon lock;
    the daemon makes it before it opens the journal, as here)."""
    opened: list[Journal] = []

    def factory(name: str | None = None, *, lease_seconds: float = 60.0) -> Journal:
        state_dir = tmp_path / f"state-{len(opened)}"
        state_dir.mkdir()
        journal = Journal.open(state_dir, url=pg_url)
        opened.append(journal)
        if name is not None:
            journal.set_host(name, lease_seconds=lease_seconds)
        return journal

    yield factory
    for journal in reversed(opened):
        journal.close()


@pytest.fixture
def server(pg_server: PgServer) -> Iterator[PgServer]:
    """The session's server, started again after the test if the test left it down."""
    yield pg_server
    if not pg_server.running:
        pg_server.start_again()


def sql(url: str, statement: str, *params: object) -> list[dict[str, Any]]:
    """Run one statement on a connection of its own; the rows (if any) as dicts."""
    from psycopg.rows import dict_row

    with psycopg.connect(url, autocommit=True, row_factory=dict_row) as conn:
        cur = conn.execute(statement, params)
        return list(cur.fetchall()) if cur.description else []


def race(*calls: Callable[[], object], timeout: float = 60.0) -> list[object]:
    """Run each call in a thread of its own, all released at once; their results in order (an
    exception raised is the result). Fails if any thread is still running after `timeout`."""
    barrier = threading.Barrier(len(calls))
    results: list[object] = [None] * len(calls)

    def run(index: int, call: Callable[[], object]) -> None:
        try:
            barrier.wait(timeout=10)
            results[index] = call()
        except BaseException as exc:  # the caller asserts on it
            results[index] = exc

    threads = [
        threading.Thread(target=run, args=(i, call), name=f"race-{i}")
        for i, call in enumerate(calls)
    ]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(timeout)
    assert not any(t.is_alive() for t in threads), "a racing thread hung (a deadlock?)"
    return results


def bounded(call: Callable[[], object], seconds: float = BOUND_SECONDS) -> object:
    """`call()`'s result or the exception it raised; fails the test if it takes longer than
    `seconds` (the thread is a daemon: a hung call cannot hold up the run)."""
    outcome: list[object] = []

    def run() -> None:
        try:
            outcome.append(call())
        except BaseException as exc:
            outcome.append(exc)

    thread = threading.Thread(target=run, name="bounded-call", daemon=True)
    thread.start()
    thread.join(seconds)
    assert outcome, f"the call did not return within {seconds}s"
    return outcome[0]


def took_lock(journal: Journal) -> bool:
    """True once `journal.acquire_lock()` succeeds; False while another holds the lock."""
    try:
        journal.acquire_lock()
    except AlreadyRunningError:
        return False
    return True


def answers(journal: Journal) -> bool:
    """True when the journal answers a query; False while it raises StateDirError."""
    try:
        journal.get_meta("probe")
    except StateDirError:
        return False
    return True


def queued(rel_path: str, *, folder: str = "anime", **changes: Any) -> Job:
    return job_in(S.QUEUED, rel_path=rel_path, folder=folder, **changes)


# ---------------------------------------------------------------- schema, versions, opening


def test_schema_has_one_column_per_job_field_and_matches_sqlite(
    open_host: OpenHost, pg_url: str, tmp_path: Path
) -> None:
    open_host()
    columns: dict[str, set[str]] = {}
    for row in sql(
        pg_url,
        "SELECT table_name, column_name FROM information_schema.columns"
        " WHERE table_schema = 'public'",
    ):
        columns.setdefault(row["table_name"], set()).add(row["column_name"])
    indexes = {row["indexname"] for row in sql(pg_url, "SELECT indexname FROM pg_indexes")}

    assert columns["jobs"] == {f.name for f in dataclasses.fields(Job)} | {"lease_until"}
    assert {"jobs_by_path", "jobs_by_state", "jobs_by_project_id", "jobs_by_holder"} <= indexes
    assert sql(pg_url, "SELECT version FROM mh_schema") == [{"version": PG_SCHEMA_VERSION}]

    # kept in step with SQLite's schema: the same tables with the same columns
    with Journal.open(tmp_path / "sqlite"):
        pass
    lite = sqlite3.connect(tmp_path / "sqlite" / JOURNAL_FILENAME)
    try:
        tables = [
            r[0]
            for r in lite.execute(
                "SELECT name FROM sqlite_master WHERE type = 'table' AND name NOT LIKE 'sqlite_%'"
            )
        ]
        sqlite_columns = {
            t: {r[1] for r in lite.execute(f"PRAGMA table_info({t})")} for t in tables
        }
    finally:
        lite.close()
    assert {t: c for t, c in columns.items() if t != "mh_schema"} == sqlite_columns


def test_opening_again_keeps_the_data_and_hosts_opening_at_once_migrate_once(
    pg_url: str, tmp_path: Path
) -> None:
    opened = race(*(lambda: Journal.open(tmp_path, url=pg_url) for _ in range(4)))
    try:
        assert all(isinstance(j, Journal) for j in opened), opened
        journals = [j for j in opened if isinstance(j, Journal)]
        job = journals[0].insert(queued("a.mp4"), event="job.queued")
    finally:
        for j in opened:
            if isinstance(j, Journal):
                j.close()
    with Journal.open(tmp_path, url=pg_url) as again:
        assert again.jobs() == [job]
        assert again.shared is True
    assert sql(pg_url, "SELECT version FROM mh_schema") == [{"version": PG_SCHEMA_VERSION}]


def test_readonly_open_of_a_database_without_a_journal_is_refused_and_creates_nothing(
    pg_url: str, tmp_path: Path
) -> None:
    with pytest.raises(StateDirError, match="no journal yet in the database"):
        Journal.open(tmp_path, readonly=True, url=pg_url)
    assert sql(pg_url, "SELECT to_regclass('mh_schema') AS t") == [{"t": None}]
    assert not tmp_path.joinpath(JOURNAL_FILENAME).exists()


def test_a_newer_schema_version_is_refused_and_left_as_it_was(
    open_host: OpenHost, pg_url: str, tmp_path: Path
) -> None:
    open_host().close()
    sql(pg_url, "UPDATE mh_schema SET version = %s", PG_SCHEMA_VERSION + 1)
    with pytest.raises(StateDirError, match="newer than this mh-watchd knows"):
        Journal.open(tmp_path, url=pg_url)
    with pytest.raises(StateDirError, match="newer than this mh-watchd knows"):
        Journal.open(tmp_path, readonly=True, url=pg_url)
    assert sql(pg_url, "SELECT version FROM mh_schema") == [{"version": PG_SCHEMA_VERSION + 1}]


def test_an_unreachable_database_is_a_state_dir_error_without_the_password(
    tmp_path: Path,
) -> None:
    url = f"postgresql://mh:s3cret-pw@/journal?host={tmp_path}/no-such-socket-dir"
    caught = bounded(lambda: Journal.open(tmp_path, url=url))
    assert isinstance(caught, StateDirError)
    assert "cannot reach the journal database" in str(caught)
    assert "s3cret-pw" not in str(caught)
    assert "mh:***@" in str(caught)


def test_the_journal_names_its_database_without_the_password(
    pg_server: PgServer, pg_url: str, tmp_path: Path
) -> None:
    with_password = pg_url.replace("mhtest@", "mhtest:pw-not-checked@")  # trust auth ignores it
    with Journal.open(tmp_path, url=with_password) as journal:
        assert "pw-not-checked" not in journal.where
        assert journal.where == pg_url.replace("mhtest@", "mhtest:***@")


def test_backup_is_refused_on_a_shared_database(open_host: OpenHost, tmp_path: Path) -> None:
    journal = open_host()
    with pytest.raises(BackupRefused, match="pg_dump"):
        journal.backup(tmp_path / "copy.sqlite3")
    assert not (tmp_path / "copy.sqlite3").exists()


@pytest.mark.parametrize(
    ("url", "shown"),
    [
        (
            "postgresql://mh:s3cret@db.example:5432/journal",
            "postgresql://mh:***@db.example:5432/journal",
        ),
        ("postgresql://mh@db.example/journal", "postgresql://mh@db.example/journal"),
        ("postgresql://db.example/journal", "postgresql://db.example/journal"),
        ("postgresql://mh:p@ss:w@[::1]:5433/j", "postgresql://mh:***@[::1]:5433/j"),
        ("postgresql://mh:p%40ss@db/j?sslmode=require", "postgresql://mh:***@db/j?sslmode=require"),
        ("postgresql://:s3cret@db/j", "postgresql://:***@db/j"),
        (
            "postgresql://mh@db/j?sslmode=require&password=s3cret",
            "postgresql://mh@db/j?sslmode=require&password=***",
        ),
    ],
)
def test_redacted_hides_the_password_and_keeps_the_rest(url: str, shown: str) -> None:
    assert redacted(url) == shown


# ---------------------------------------------------------------- hosts racing


def test_two_hosts_claiming_at_once_take_every_job_exactly_once(open_host: OpenHost) -> None:
    tool = open_host()
    a, b = open_host("host-a"), open_host("host-b")
    for round_ in range(3):
        folder = f"race-{round_}"
        tool.insert_history((queued(f"{n}.mp4", folder=folder), [QUEUED_EVENT]) for n in range(200))

        def claim_all(journal: Journal, folder: str = folder) -> list[list[int]]:
            batches: list[list[int]] = []
            while claimed := journal.claim_jobs(folders=[folder], limit=20):
                batches.append([c.job.id or 0 for c in claimed])
                assert all(c.taken_from is None for c in claimed)
            return batches

        results = race(lambda: claim_all(a), lambda: claim_all(b))
        assert not [r for r in results if isinstance(r, BaseException)], results
        by_a, by_b = (r for r in results if isinstance(r, list))
        assert all(len(batch) <= 20 for batch in by_a + by_b)
        ids_a = [i for batch in by_a for i in batch]
        ids_b = [i for batch in by_b for i in batch]
        everything = [j.id for j in tool.jobs(folder=folder)]
        assert len(everything) == 200
        assert sorted(ids_a + ids_b) == everything  # every job once: no double claim, no gap
        held = {j.id: j.holder for j in tool.jobs(folder=folder)}
        assert {held[i] for i in ids_a} <= {"host-a"} and {held[i] for i in ids_b} <= {"host-b"}
    assert sum(tool.holders().values()) == 600
    assert all(len(tool.events(j.id or 0)) == 1 for j in tool.jobs()[::37])  # no takeovers


def test_hosts_recording_the_same_new_file_at_once_make_exactly_one_job(
    open_host: OpenHost,
) -> None:
    hosts = [open_host(f"host-{n}") for n in range(8)]
    for round_ in range(3):
        path = f"same-{round_}.mp4"
        results = race(
            *(
                lambda j=j, path=path: j.insert(queued(path), event="job.queued", expect_latest=0)
                for j in hosts
            )
        )
        made = [r for r in results if isinstance(r, Job)]
        refused = [r for r in results if isinstance(r, JournalConflict)]
        assert (len(made), len(refused)) == (1, 7), results
        assert all(r.job_id == made[0].id for r in refused)
        assert [j.id for j in hosts[0].jobs() if j.rel_path == path] == [made[0].id]


def test_hosts_spending_the_last_credits_at_once_only_one_fits(open_host: OpenHost) -> None:
    a, b = open_host("host-a"), open_host("host-b")
    for round_ in range(5):
        day = f"2024-11-{10 + round_:02d}"
        moves = []
        for host, name in ((a, "a"), (b, "b")):
            job = host.insert(
                job_in(S.UPLOADING, rel_path=f"{name}-{round_}.mp4"), event="job.queued"
            )
            moves.append(
                (host, transition(job, S.SUBMITTING, credits_day=day, credits_estimate=60))
            )
        results = race(
            *(
                lambda h=h, m=m, day=day: h.save(m, event="render.submitting", budget=(day, 100))
                for h, m in moves
            )
        )
        made = [r for r in results if isinstance(r, Job)]
        refused = [r for r in results if isinstance(r, OverBudget)]
        assert (len(made), len(refused)) == (1, 1), results
        assert refused[0].spent == 60
        assert a.credits_spent(day) == 60
        loser = a.get(refused[0].job_id or 0)
        assert loser is not None and loser.state is S.UPLOADING  # nothing written


# ---------------------------------------------------------------- the database going away


@pytest.mark.parametrize("how", ["stop", "kill"])
def test_calls_fail_fast_while_the_database_is_down_and_work_again_after(
    server: PgServer, open_host: OpenHost, how: str
) -> None:
    daemon = open_host("host-a")
    daemon.acquire_lock()
    job = daemon.insert(queued("a.mp4"), event="job.queued")

    if how == "stop":
        server.stop()
    else:
        server.kill()  # a crash: the server never says goodbye to its clients
    for call in (
        lambda: daemon.get(job.id or 0),
        lambda: daemon.set_meta("k", "v"),
        daemon.renew_claims,
        lambda: daemon.get(job.id or 0),  # the reconnect fails fast too
    ):
        outcome = bounded(call)
        assert isinstance(outcome, StateDirError), outcome
    assert bounded(daemon.writable_check) is False
    server.start_again()

    # the same Journal works again at once, with the same claims
    assert daemon.get(job.id or 0) == job
    daemon.set_meta("k", "v")
    assert daemon.get_meta("k") == "v"
    assert daemon.renew_claims() == {job.id}
    assert daemon.writable_check() is True
    # ...and still holds its host name: one daemon per host name
    twin = open_host("host-a")
    with pytest.raises(AlreadyRunningError, match="runs as host 'host-a'"):
        twin.acquire_lock()
    open_host("host-b").acquire_lock()
    daemon.close()
    # free once the daemon is gone (its server process ends, and drops the lock, just after
    # the connection closes)
    wait_for(lambda: took_lock(twin), timeout_seconds=10, what="the host name to be free")


def test_a_daemon_whose_host_name_was_taken_while_it_was_away_stays_out(
    server: PgServer, open_host: OpenHost
) -> None:
    daemon = open_host("host-a")
    daemon.acquire_lock()
    server.stop()
    assert isinstance(bounded(lambda: daemon.get_meta("k")), StateDirError)
    server.start_again()
    usurper = open_host("host-a")
    usurper.acquire_lock()  # the daemon's session, and its lock, died with the server

    for _ in range(2):  # refused each time, not only on the call that reconnected
        with pytest.raises(StateDirError, match="took this daemon's host name"):
            daemon.get_meta("k")
    assert daemon.writable_check() is False

    usurper.close()
    # the name is free again (once the usurper's server process is gone): it takes it back
    wait_for(lambda: answers(daemon), timeout_seconds=10, what="the daemon to take its name back")
    assert daemon.get_meta("k") is None
    with pytest.raises(AlreadyRunningError):
        open_host("host-a").acquire_lock()


def test_a_daemon_lock_needs_a_host_name_on_a_shared_journal(open_host: OpenHost) -> None:
    with pytest.raises(StateDirError, match="needs a host name"):
        open_host().acquire_lock()
    first, second = open_host("host-a"), open_host("host-a")
    first.acquire_lock()
    first.acquire_lock()  # again: a no-op
    with pytest.raises(AlreadyRunningError):
        second.acquire_lock()


# ---------------------------------------------------------------- notifications


def test_listen_hears_requests_and_released_jobs_of_other_hosts(open_host: OpenHost) -> None:
    daemon, other, cli = open_host("host-a"), open_host("host-b"), open_host()
    heard: list[str] = []
    listening = daemon.listen(heard.append)
    try:
        assert isinstance(listening, Listener)
        wait_for(listening.connected.is_set, timeout_seconds=10, what="LISTEN")

        with pytest.raises(JournalConflict):
            cli.add_request("retry", 999, at=1.0)  # rolled back: tells nobody
        assert other.release_claims() == 0  # nothing released: tells nobody
        cli.add_request("retry_all_failed", None, at=1.0)
        wait_for(lambda: "request" in heard, timeout_seconds=10, what="the request")
        assert heard == ["request"]

        released = other.insert(queued("a.mp4"), event="job.queued")
        finishing = other.insert(queued("b.mp4"), event="job.queued")
        assert other.release_claims([released.id or 0]) == 1
        wait_for(lambda: "released" in heard, timeout_seconds=10, what="the release")
        assert heard == ["request", "released"]

        other.save(transition(finishing, S.FAILED), event="job.failed")  # a finished job frees
        wait_for(lambda: len(heard) == 3, timeout_seconds=10, what="the finished job")
        assert heard == ["request", "released", "released"]
    finally:
        listening.stop(timeout=5.0)
    assert not [t for t in threading.enumerate() if t.name == "mh-watchd-listen"]


def test_listening_goes_on_after_the_database_comes_back(
    server: PgServer, open_host: OpenHost, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(journal_pg, "LISTEN_RETRY_SECONDS", 0.2)  # the pause between tries
    daemon = open_host("host-a")
    heard: list[str] = []
    listening = daemon.listen(heard.append)
    try:
        assert isinstance(listening, Listener)
        wait_for(listening.connected.is_set, timeout_seconds=10, what="LISTEN")
        server.stop()
        wait_for(lambda: not listening.connected.is_set(), timeout_seconds=10, what="the loss")
        server.start_again()
        wait_for(listening.connected.is_set, timeout_seconds=15, what="LISTEN again")
        open_host().add_request("retry_all_failed", None, at=1.0)
        wait_for(lambda: heard == ["request"], timeout_seconds=10, what="the request")
    finally:
        listening.stop(timeout=5.0)
    assert not [t for t in threading.enumerate() if t.name == "mh-watchd-listen"]
