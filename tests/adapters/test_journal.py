"""The journal on both back ends (`journal` runs on SQLite and on PostgreSQL: see conftest.py),
plus what only the SQLite file has, against real files, threads and child processes.

PostgreSQL's own schema, opening and concurrency are in test_journal_pg.py; claims and hosts in
test_journal_claims.py."""

from __future__ import annotations

import dataclasses
import os
import signal
import sqlite3
import stat
import subprocess
import sys
import textwrap
import threading
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from mh_watchd.adapters.journal import (
    JOURNAL_FILENAME,
    LOCK_FILENAME,
    MIGRATIONS,
    SCHEMA_VERSION,
    FolderStatus,
    Journal,
    JournalConflict,
    apply_migrations,
)
from mh_watchd.core.api import Style
from mh_watchd.core.errors import AlreadyRunningError, StateDirError
from mh_watchd.core.jobs import (
    HoldReason,
    IllegalTransition,
    Job,
    JobSettings,
    JobState,
    Output,
    hold,
    transition,
)
from tests.adapters.conftest import OpenJournal
from tests.factories import job_in

REPO_ROOT = Path(__file__).resolve().parents[2]
S = JobState

SETTINGS = JobSettings(
    style=Style(
        art_style="Studio Ghibli",
        model="Dreamshaper",
        prompt="soft light",
        prompt_type="append_default",
        version="v2",
    ),
    style_slug="studio-ghibli",
    fps_resolution="FULL",
    start_seconds=1.5,
    max_seconds=30.25,
    inbox="/srv/in",
    outbox="/srv/out",
    archive="/srv/in/.mh-done",
    failed="/srv/in/.mh-failed",
    on_success="keep",
)

# A held job with every field away from its default: the round trip must restore all of them.
FULL_JOB = Job(
    folder="anime",
    rel_path="trip/beach café.mp4",
    size=123_456_789,
    mtime_ns=1_700_000_000_123_456_789,
    inode=987_654_321,
    settings=SETTINGS,
    state=S.HELD,
    sha256="ab" * 32,
    resume_state=S.DOWNLOADING,
    hold_reason=HoldReason.OUTPUT_UNAVAILABLE,
    attempts=3,
    last_error="ENOSPC on /srv/out",
    due_at=1_700_000_100.125,
    duration_seconds=12.345678901234567,
    fps=29.97002997002997,
    start_seconds=1.5,
    end_seconds=13.75,
    upload_source="/srv/in/trip/beach café.mp4",
    upload_file_path="api-assets/id/1234.mp4",
    uploaded_at=1_700_000_050.5,
    project_id="cm0proj123",
    service_name="anime/trip/beach café.mp4",
    credits_estimate=740,
    credits_charged=730,
    credits_final=720,
    credits_day="2024-11-14",
    render_started_at=1_700_000_060.75,
    render_status="complete",
    outputs=(
        Output(index=0, temp_path="/srv/out/trip/.mh-tmp-1", final_path="/srv/out/trip/a.mp4"),
        Output(
            index=1,
            temp_path="/srv/out/trip/.mh-tmp-2",
            final_path="/srv/out/trip/beach café.studio-ghibli-2.mp4",
            size=4_567,
            sha256="cd" * 32,
            placed=True,
        ),
    ),
    archive_path="/srv/in/.mh-done/trip/beach café.mp4",
    failed_path="/srv/in/.mh-failed/trip/beach café.mp4",
    original_left=True,
    progress=0.75,
    created_at=1_700_000_000.25,
    updated_at=1_700_000_099.5,
)


def new_job(rel_path: str = "a.mp4", *, folder: str = "anime", **changes: object) -> Job:
    """A freshly queued job (no id yet)."""
    job = Job(
        folder=folder,
        rel_path=rel_path,
        size=1000,
        mtime_ns=5_000,
        inode=42,
        settings=SETTINGS,
        created_at=100.0,
        updated_at=100.0,
    )
    return dataclasses.replace(job, **changes)  # type: ignore[arg-type]


@pytest.fixture
def sqlite_journal(tmp_path: Path) -> Iterator[Journal]:
    """A journal in a SQLite file, for what only SQLite has (PRAGMAs, the file, child processes)."""
    with Journal.open(tmp_path / "state") as j:
        yield j


def run_child(script: str, *args: str) -> subprocess.Popen[str]:
    """Start `python -c script args...` from the repo root with line-buffered pipes."""
    return subprocess.Popen(
        [sys.executable, "-c", textwrap.dedent(script), *args],
        cwd=REPO_ROOT,
        stdin=subprocess.PIPE,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )


# ---------------------------------------------------------------- records


def test_full_job_fixture_sets_every_field() -> None:
    # Guards the round-trip test: a field added to Job must be set in FULL_JOB too.
    for f in dataclasses.fields(Job):
        if f.name in ("id", "holder"):  # the journal sets these (holder: the claim)
            continue
        default = f.default_factory() if callable(f.default_factory) else f.default
        assert getattr(FULL_JOB, f.name) != default, f"FULL_JOB leaves {f.name} at its default"


def test_fully_populated_job_round_trips_exactly(journal: Journal) -> None:
    stored = journal.insert(FULL_JOB, event="job.queued")
    assert stored.id is not None
    got = journal.get(stored.id)
    assert got == stored
    assert got is not None
    for f in dataclasses.fields(Job):
        # equal is not enough: 1 == 1.0 and a list == nothing; types must come back too
        assert type(getattr(got, f.name)) is type(getattr(stored, f.name)), f.name
    assert type(got.settings.style) is Style
    assert type(got.settings.start_seconds) is float
    assert all(type(o) is Output for o in got.outputs)
    assert type(got.outputs[1].placed) is bool


def test_minimal_job_round_trips_nones_and_defaults(journal: Journal) -> None:
    stored = journal.insert(new_job(progress=1, created_at=7), event="job.queued")
    assert stored.id is not None
    got = journal.get(stored.id)
    assert got == stored
    assert got is not None and got.outputs == () and got.sha256 is None
    # ints given for float fields come back as floats
    assert type(got.progress) is float and type(got.created_at) is float


def test_sqlite_schema_has_one_column_per_job_field(sqlite_journal: Journal) -> None:
    # PostgreSQL's schema: test_journal_pg.py
    raw = sqlite3.connect(sqlite_journal.path)
    try:
        columns = {row[1] for row in raw.execute("PRAGMA table_info(jobs)")}
        indexes = {row[1] for row in raw.execute("PRAGMA index_list(jobs)")}
    finally:
        raw.close()
    # Every Job field, plus the claim's lease (the holder is a Job field the journal sets).
    assert columns == {f.name for f in dataclasses.fields(Job)} | {"lease_until"}
    assert {"jobs_by_path", "jobs_by_state", "jobs_by_project_id"} <= indexes


def test_inode_beyond_signed_64_bits_round_trips_and_is_found(journal: Journal) -> None:
    big = (1 << 64) - 3  # some FUSE/SMB filesystems hand these out
    stored = journal.insert(new_job(inode=big), event="job.queued")
    assert stored.id is not None
    got = journal.get(stored.id)
    assert got is not None and got.inode == big
    assert journal.known_version("anime", "a.mp4", 1000, 5_000, big) == stored
    assert journal.known_version("anime", "a.mp4", 1000, 5_000, big - 1) is None


def test_get_of_unknown_id_is_none(journal: Journal) -> None:
    assert journal.get(12345) is None
    assert journal.by_project_id("cm-nope") is None


# ---------------------------------------------------------------- events and saves


def test_insert_and_save_append_events_in_order_with_from_and_to(journal: Journal) -> None:
    job = journal.insert(new_job(), event="job.queued", detail={"why": "settled"})
    job = transition(job, S.UPLOADING, updated_at=101.0)
    journal.save(job, event="upload.started")
    job = dataclasses.replace(job, progress=0.5, updated_at=102.0)
    journal.save(job, event="upload.progress", detail={"bytes": 500})
    job = hold(job, HoldReason.OUTAGE, updated_at=103.0)
    journal.save(job, event="job.held", detail={"path": Path("/srv/in")})
    assert job.id is not None

    events = journal.events(job.id)
    assert [(e.from_state, e.to_state, e.event, e.at) for e in events] == [
        (None, S.QUEUED, "job.queued", 100.0),
        (S.QUEUED, S.UPLOADING, "upload.started", 101.0),
        (S.UPLOADING, S.UPLOADING, "upload.progress", 102.0),
        (S.UPLOADING, S.HELD, "job.held", 103.0),
    ]
    assert [e.detail for e in events] == [
        {"why": "settled"},
        {},
        {"bytes": 500},
        {"path": "/srv/in"},  # a stray Path is recorded as text, not a crash
    ]
    assert all(e.job_id == job.id for e in events)
    assert journal.get(job.id) == job


def test_save_with_stale_expect_state_raises_conflict_and_writes_nothing(
    journal: Journal,
) -> None:
    job = journal.insert(new_job(), event="job.queued")
    assert job.id is not None
    failed = transition(job, S.FAILED, last_error="not a video", updated_at=101.0)
    journal.save(failed, event="job.failed", expect_state=S.QUEUED)

    # the CLI read the job while it was queued; the daemon has failed it meanwhile
    stale_retry = transition(job, S.UPLOADING, updated_at=102.0)
    with pytest.raises(JournalConflict, match="is failed, not queued") as caught:
        journal.save(stale_retry, event="upload.started", expect_state=S.QUEUED)
    assert caught.value.job_id == job.id
    assert caught.value.actual_state is S.FAILED
    assert journal.get(job.id) == failed
    assert [e.event for e in journal.events(job.id)] == ["job.queued", "job.failed"]


def test_save_of_a_move_the_table_forbids_from_the_stored_state_raises(journal: Journal) -> None:
    job = journal.insert(new_job(), event="job.queued")
    assert job.id is not None
    journal.save(transition(job, S.FAILED), event="job.failed")
    rendering = dataclasses.replace(job, state=S.RENDERING)  # a stale copy driven elsewhere
    with pytest.raises(IllegalTransition, match="failed -> rendering"):
        journal.save(rendering, event="render.started")
    got = journal.get(job.id)
    assert got is not None and got.state is S.FAILED
    assert len(journal.events(job.id)) == 2


def test_save_of_unknown_job_and_insert_of_known_job_are_refused(journal: Journal) -> None:
    with pytest.raises(JournalConflict, match="job 99 is not in the journal"):
        journal.save(new_job(id=99), event="x")
    stored = journal.insert(new_job(), event="job.queued")
    with pytest.raises(ValueError, match="already in the journal"):
        journal.insert(stored, event="job.queued")
    with pytest.raises(ValueError, match="use insert"):
        journal.save(new_job(), event="x")
    assert len(journal.jobs()) == 1


def test_project_id_is_unique_across_jobs_and_found(journal: Journal) -> None:
    first = journal.insert(new_job("a.mp4", project_id="cm1"), event="job.queued")
    second = journal.insert(new_job("b.mp4"), event="job.queued")
    journal.insert(new_job("c.mp4"), event="job.queued")  # many jobs without a project: fine
    assert journal.by_project_id("cm1") == first
    with pytest.raises(JournalConflict):
        journal.save(dataclasses.replace(second, project_id="cm1"), event="render.started")
    assert second.id is not None
    assert journal.get(second.id) == second
    assert len(journal.events(second.id)) == 1


# ---------------------------------------------------------------- queries


def test_unfinished_lists_every_non_terminal_job_oldest_first(journal: Journal) -> None:
    ids: dict[str, int] = {}
    for name, state in [
        ("1", S.RENDERING),
        ("2", S.DONE),
        ("3", S.QUEUED),
        ("4", S.FAILED),
        ("5", S.HELD),
        ("6", S.DELIVERING),
    ]:
        extra: dict[str, Any] = {"state": state}
        if state is S.HELD:
            extra.update(hold_reason=HoldReason.AUTH, resume_state=S.SUBMITTING)
        job = journal.insert(new_job(f"{name}.mp4", **extra), event="job.imported")
        assert job.id is not None
        ids[name] = job.id
    assert [j.id for j in journal.unfinished()] == [ids["1"], ids["3"], ids["5"], ids["6"]]


def test_jobs_filter_by_state_and_folder_and_counts(journal: Journal) -> None:
    journal.insert(new_job("a.mp4", folder="anime"), event="e")
    journal.insert(new_job("b.mp4", folder="anime", state=S.DONE), event="e")
    journal.insert(new_job("c.mp4", folder="anime", state=S.DONE), event="e")
    journal.insert(new_job("a.mp4", folder="clay", state=S.DONE), event="e")

    assert [j.rel_path for j in journal.jobs()] == ["a.mp4", "b.mp4", "c.mp4", "a.mp4"]
    assert [j.rel_path for j in journal.jobs(states={S.DONE}, folder="anime")] == [
        "b.mp4",
        "c.mp4",
    ]
    assert [j.folder for j in journal.jobs(folder="clay")] == ["clay"]
    assert journal.jobs(states=[]) == []
    assert journal.counts_by_folder_and_state() == {
        ("anime", "queued"): 1,
        ("anime", "done"): 2,
        ("clay", "done"): 1,
    }


def test_latest_for_path_and_known_version_return_the_newest_match(journal: Journal) -> None:
    old = journal.insert(new_job(size=10, mtime_ns=1, inode=7, state=S.DONE), event="e")
    new = journal.insert(new_job(size=20, mtime_ns=2, inode=7), event="e")
    journal.insert(new_job("other.mp4", size=20, mtime_ns=2, inode=7), event="e")

    assert journal.latest_for_path("anime", "a.mp4") == new
    assert journal.latest_for_path("clay", "a.mp4") is None
    assert journal.known_version("anime", "a.mp4", 10, 1, 7) == old
    assert journal.known_version("anime", "a.mp4", 20, 2, 7) == new
    assert journal.known_version("anime", "a.mp4", 20, 2, 8) is None  # inode differs
    assert journal.known_version("anime", "a.mp4", 20, 3, 7) is None  # mtime differs


def test_find_done_version_only_matches_done_with_same_size_and_hash(journal: Journal) -> None:
    h1, h2 = "1" * 64, "2" * 64
    journal.insert(new_job(size=10, sha256=h1, state=S.FAILED), event="e")
    journal.insert(new_job(size=10, sha256=h1, state=S.RENDERING), event="e")
    assert journal.find_done_version("anime", "a.mp4", 10, h1) is None

    done = journal.insert(new_job(size=10, sha256=h1, state=S.DONE), event="e")
    assert journal.find_done_version("anime", "a.mp4", 10, h1) == done
    assert journal.find_done_version("anime", "a.mp4", 11, h1) is None  # other size
    assert journal.find_done_version("anime", "a.mp4", 10, h2) is None  # other content
    assert journal.find_done_version("anime", "b.mp4", 10, h1) is None  # other name
    assert journal.find_done_version("clay", "a.mp4", 10, h1) is None  # other folder


def test_credits_spent_uses_final_then_charged_then_estimate_per_job_by_day(
    journal: Journal,
) -> None:
    day, other = "2024-11-14", "2024-11-15"
    journal.insert(
        new_job(
            "f.mp4", credits_day=day, credits_estimate=1, credits_charged=10, credits_final=100
        ),
        event="e",
    )
    journal.insert(
        new_job("c.mp4", credits_day=day, credits_estimate=2, credits_charged=20), event="e"
    )
    journal.insert(new_job("e.mp4", credits_day=day, credits_estimate=3000), event="e")
    # a refund brought the final charge to zero: zero, not the charge, counts
    journal.insert(
        new_job("r.mp4", credits_day=day, credits_estimate=5, credits_charged=50, credits_final=0),
        event="e",
    )
    journal.insert(new_job("o.mp4", credits_day=other, credits_estimate=7), event="e")
    journal.insert(new_job("n.mp4", credits_estimate=9), event="e")  # never created: no day

    assert journal.credits_spent(day) == 100 + 20 + 3000 + 0
    assert journal.credits_spent(other) == 7
    assert journal.credits_spent("2024-01-01") == 0


def test_booked_charges_survive_a_retry_and_are_never_counted_twice(journal: Journal) -> None:
    day = "2024-11-14"
    job = journal.insert(
        new_job("a.mp4", credits_day=day, credits_estimate=30, project_id="p1"), event="e"
    )
    assert job.id is not None
    journal.book_charge(job_id=job.id, project_id="p1", day=day, credits=30, at=1.0)
    assert journal.credits_spent(day) == 30  # the booking, not the job's estimate as well
    journal.book_charge(job_id=job.id, project_id="p1", day=day, credits=24, at=2.0)
    assert journal.credits_spent(day) == 24  # the final GET corrected it
    # `retry` starts the job over: the first project's charge stays booked to its day.
    journal.save(
        dataclasses.replace(job, project_id=None, credits_day=None, credits_estimate=30),
        event="job.retried",
    )
    assert journal.credits_spent(day) == 24
    journal.save(
        dataclasses.replace(job, project_id="p2", credits_day=day, credits_charged=30),
        event="job.submitted",
    )
    assert journal.credits_spent(day) == 24 + 30


# ---------------------------------------------------------------- requests, folders, meta


def test_requests_lifecycle(journal: Journal) -> None:
    job = journal.insert(new_job(), event="e")
    assert job.id is not None
    r1 = journal.add_request("retry", job.id, at=10.0, detail={"by": "cli"})
    r2 = journal.add_request("retry_all_failed", None, at=11.0)
    assert [
        (r.id, r.kind, r.job_id, r.created_at, r.detail) for r in journal.pending_requests()
    ] == [
        (r1, "retry", job.id, 10.0, {"by": "cli"}),
        (r2, "retry_all_failed", None, 11.0, {}),
    ]

    journal.finish_request(r1, at=12.0, result="queued again")
    assert [r.id for r in journal.pending_requests()] == [r2]
    finished = journal.request(r1)
    assert finished is not None
    assert (finished.handled_at, finished.result) == (12.0, "queued again")
    with pytest.raises(JournalConflict, match="already finished"):
        journal.finish_request(r1, at=13.0, result="twice")
    with pytest.raises(JournalConflict, match="unknown"):
        journal.finish_request(999, at=13.0, result="nope")
    with pytest.raises(JournalConflict, match="job 999"):
        journal.add_request("retry", 999, at=14.0)
    assert [r.id for r in journal.pending_requests()] == [r2]


def test_folder_statuses_are_replaced_per_folder(journal: Journal) -> None:
    journal.set_folder_status(
        "anime",
        watch_mode="native",
        watch_reason="local ext4",
        outage=None,
        last_scan_at=None,
        at=1.0,
    )
    journal.set_folder_status(
        "clay", watch_mode="polling", watch_reason="cifs", outage="inbox missing",
        last_scan_at=2.5, at=3.0,
    )  # fmt: skip
    journal.set_folder_status(
        "anime", watch_mode="polling", watch_reason="inotify watches exhausted",
        outage=None, last_scan_at=4.0, at=5.0,
    )  # fmt: skip
    assert journal.folder_statuses() == {
        "anime": FolderStatus("anime", "polling", "inotify watches exhausted", None, 4.0, 5.0),
        "clay": FolderStatus("clay", "polling", "cifs", "inbox missing", 2.5, 3.0),
    }


def test_meta_values_are_stored_and_replaced(journal: Journal) -> None:
    assert journal.get_meta("daemon_pid") is None
    journal.set_meta("daemon_pid", "123")
    journal.set_meta("daemon_pid", "456")
    assert journal.get_meta("daemon_pid") == "456"


def test_writable_check_is_true_only_for_an_open_writable_journal(
    open_journal: OpenJournal,
) -> None:
    rw = open_journal()
    assert rw.writable_check() is True
    assert rw.get_meta("healthz") is None  # the probe write was rolled back
    ro = open_journal(readonly=True)
    assert ro.writable_check() is False
    ro.close()
    rw.close()
    assert rw.writable_check() is False  # closed


# ---------------------------------------------------------------- opening, migrations (SQLite)
# PostgreSQL's opening, versions and read-only checks: test_journal_pg.py


def test_open_creates_state_dir_0750_and_sets_pragmas(tmp_path: Path) -> None:
    state = tmp_path / "var" / "state"
    umask = os.umask(0o022)
    try:
        journal = Journal.open(state)
    finally:
        os.umask(umask)
    with journal:
        assert stat.S_IMODE(state.stat().st_mode) == 0o750
        assert journal.path == state / JOURNAL_FILENAME and journal.path.is_file()
        conn = journal._db.raw  # type: ignore[attr-defined]  # the pragmas are per connection
        assert conn.execute("PRAGMA journal_mode").fetchone()[0] == "wal"
        assert conn.execute("PRAGMA synchronous").fetchone()[0] == 2  # FULL
        assert conn.execute("PRAGMA foreign_keys").fetchone()[0] == 1
        assert conn.execute("PRAGMA busy_timeout").fetchone()[0] == 5000
        assert conn.execute("PRAGMA user_version").fetchone()[0] == SCHEMA_VERSION


def test_state_dir_that_is_a_file_is_refused(tmp_path: Path) -> None:
    not_a_dir = tmp_path / "state"
    not_a_dir.write_text("x")
    with pytest.raises(StateDirError):
        Journal.open(not_a_dir)


def test_database_at_user_version_0_is_migrated(tmp_path: Path) -> None:
    state = tmp_path / "state"
    state.mkdir()
    raw = sqlite3.connect(state / JOURNAL_FILENAME)
    raw.execute("CREATE TABLE leftover (x)")  # a file that exists but was never migrated
    raw.commit()
    assert raw.execute("PRAGMA user_version").fetchone()[0] == 0
    raw.close()

    with Journal.open(state) as journal:
        job = journal.insert(new_job(), event="job.queued")
        assert journal.get(job.id or 0) == job
    raw = sqlite3.connect(state / JOURNAL_FILENAME)
    try:
        assert raw.execute("PRAGMA user_version").fetchone()[0] == SCHEMA_VERSION
        tables = {r[0] for r in raw.execute("SELECT name FROM sqlite_master WHERE type='table'")}
    finally:
        raw.close()
    assert {"jobs", "events", "requests", "folders", "meta", "leftover"} <= tables


def test_a_failing_migration_step_rolls_back_every_step(tmp_path: Path) -> None:
    conn = sqlite3.connect(tmp_path / "j.sqlite3", isolation_level=None)
    try:
        steps = (("CREATE TABLE one (x)",), ("CREATE TABLE two (x)", "THIS IS NOT SQL"))
        with pytest.raises(sqlite3.OperationalError):
            apply_migrations(conn, steps)
        assert conn.execute("PRAGMA user_version").fetchone()[0] == 0
        assert conn.execute("SELECT name FROM sqlite_master").fetchall() == []
        assert not conn.in_transaction

        assert apply_migrations(conn, steps[:1]) == 0
        assert apply_migrations(conn, steps[:1]) == 1  # already there: nothing to do
        assert conn.execute("PRAGMA user_version").fetchone()[0] == 1
    finally:
        conn.close()


def test_journal_from_a_newer_mh_watchd_is_refused(tmp_path: Path) -> None:
    state = tmp_path / "state"
    Journal.open(state).close()
    raw = sqlite3.connect(state / JOURNAL_FILENAME)
    raw.execute(f"PRAGMA user_version = {SCHEMA_VERSION + 1}")
    raw.close()
    with pytest.raises(StateDirError, match="newer than this mh-watchd knows"):
        Journal.open(state)
    with pytest.raises(StateDirError, match="newer than this mh-watchd knows"):
        Journal.open(state, readonly=True)
    raw = sqlite3.connect(state / JOURNAL_FILENAME)
    try:  # refused, and left as it was
        assert raw.execute("PRAGMA user_version").fetchone()[0] == SCHEMA_VERSION + 1
    finally:
        raw.close()


def test_migrations_list_defines_schema_version() -> None:
    assert len(MIGRATIONS) == SCHEMA_VERSION >= 1


def test_readonly_open_of_missing_journal_is_refused(tmp_path: Path) -> None:
    with pytest.raises(StateDirError, match="no journal yet at"):
        Journal.open(tmp_path / "nowhere", readonly=True)
    (tmp_path / "empty").mkdir()
    with pytest.raises(StateDirError, match="no journal yet at"):
        Journal.open(tmp_path / "empty", readonly=True)
    assert not (tmp_path / "nowhere").exists()  # read-only creates nothing


def test_readonly_open_of_an_unmigrated_journal_is_refused(tmp_path: Path) -> None:
    (tmp_path / "state").mkdir()
    path = tmp_path / "state" / JOURNAL_FILENAME
    path.write_bytes(b"")  # an empty file is a version-0 DB: a daemon is creating it
    with pytest.raises(StateDirError, match="no journal yet"):
        Journal.open(tmp_path / "state", readonly=True)
    conn = sqlite3.connect(path)
    conn.execute("PRAGMA user_version = 1")  # an older schema, before the charges table
    conn.close()
    with pytest.raises(StateDirError, match="start the daemon once"):
        Journal.open(tmp_path / "state", readonly=True)


def test_readonly_journal_cannot_write_but_sees_live_writes(open_journal: OpenJournal) -> None:
    rw = open_journal()
    ro = open_journal(readonly=True)
    assert ro.readonly and not rw.readonly
    job = rw.insert(new_job(), event="job.queued")
    assert job.id is not None
    assert ro.get(job.id) == job  # `status` while the daemon runs

    # SQLite: "attempt to write a readonly database"; PostgreSQL: "read-only transaction"
    with pytest.raises(StateDirError, match=r"read-?only"):
        ro.set_meta("k", "v")
    with pytest.raises(StateDirError, match=r"read-?only"):
        ro.insert(new_job("b.mp4"), event="job.queued")
    with pytest.raises(StateDirError, match=r"read-?only"):
        ro.save(transition(job, S.UPLOADING), event="upload.started")
    with pytest.raises(StateDirError, match="read-only journal cannot take"):
        ro.acquire_lock()

    assert rw.get_meta("k") is None
    assert rw.jobs() == [job]
    assert len(rw.events(job.id)) == 1
    assert ro.get(job.id) == job  # a refused write leaves the read-only journal usable


def test_use_after_close_raises_state_dir_error_and_close_is_idempotent(
    open_journal: OpenJournal,
) -> None:
    journal = open_journal()
    journal.set_meta("x", "1")
    journal.close()
    journal.close()
    with pytest.raises(StateDirError):
        journal.get_meta("x")
    with pytest.raises(StateDirError):
        journal.set_meta("x", "2")
    assert open_journal().get_meta("x") == "1"


# ---------------------------------------------------------------- single instance (SQLite)
# PostgreSQL's per-host lock: test_journal_pg.py

_LOCK_AND_WAIT = """
    import os, sys
    from pathlib import Path
    from mh_watchd.adapters.journal import Journal
    journal = Journal.open(Path(sys.argv[1]))
    journal.acquire_lock()
    print("locked", os.getpid(), flush=True)
    sys.stdin.read()  # hold the lock until the parent closes stdin or kills us
"""

_TRY_LOCK = """
    import sys
    from pathlib import Path
    from mh_watchd.adapters.journal import Journal
    from mh_watchd.core.errors import AlreadyRunningError
    with Journal.open(Path(sys.argv[1])) as journal:
        try:
            journal.acquire_lock()
        except AlreadyRunningError as exc:
            print("refused", exc.pid, exc, flush=True)
            sys.exit(75)
    print("acquired", flush=True)
"""


def test_second_journal_cannot_take_the_lock_and_is_told_the_pid(tmp_path: Path) -> None:
    state = tmp_path / "state"
    with Journal.open(state) as first, Journal.open(state) as second:
        first.acquire_lock()
        first.acquire_lock()  # taking it again is a no-op
        assert (state / LOCK_FILENAME).read_text() == f"{os.getpid()}\n"
        with pytest.raises(AlreadyRunningError, match=f"pid {os.getpid()}") as caught:
            second.acquire_lock()
        assert caught.value.pid == os.getpid()
        first.close()  # releasing it lets the second one in
        second.acquire_lock()


def test_lock_held_by_another_process_is_refused_until_it_is_killed(tmp_path: Path) -> None:
    state = tmp_path / "state"
    Journal.open(state).close()
    with run_child(_LOCK_AND_WAIT, str(state)) as child, Journal.open(state) as ours:
        assert child.stdout is not None
        line = child.stdout.readline().split()
        assert line == ["locked", str(child.pid)], child.stderr.read() if child.stderr else ""
        with pytest.raises(AlreadyRunningError, match=f"pid {child.pid}") as caught:
            ours.acquire_lock()
        assert caught.value.pid == child.pid

        child.send_signal(signal.SIGKILL)  # a crashed daemon leaves no stale lock behind
        assert child.wait(timeout=10) == -signal.SIGKILL
        ours.acquire_lock()
        assert (state / LOCK_FILENAME).read_text() == f"{os.getpid()}\n"


def test_another_process_is_refused_while_we_hold_the_lock(tmp_path: Path) -> None:
    state = tmp_path / "state"
    with Journal.open(state) as ours:
        ours.acquire_lock()
        with run_child(_TRY_LOCK, str(state)) as child:
            out, err = child.communicate(timeout=30)
        assert child.returncode == 75, err
        assert out.startswith(f"refused {os.getpid()} another mh-watchd (pid {os.getpid()})")
    with run_child(_TRY_LOCK, str(state)) as child:
        out, err = child.communicate(timeout=30)
    assert (child.returncode, out) == (0, "acquired\n"), err


# ---------------------------------------------------------------- durability, threads

_SAVE_AND_WAIT = """
    import sys
    from pathlib import Path
    from mh_watchd.adapters.journal import Journal
    from mh_watchd.core.api import Style
    from mh_watchd.core.jobs import Job, JobSettings, JobState, transition
    settings = JobSettings(Style("Clay"), "clay", "HALF", 0.0, 60.0, "/i", "/o", "/a", "/f",
                           "archive")
    journal = Journal.open(Path(sys.argv[1]))
    job = journal.insert(Job("anime", "a.mp4", 1, 2, 3, settings), event="job.queued")
    job = transition(job, JobState.UPLOADING, progress=0.25, updated_at=9.0)
    journal.save(job, event="upload.started")
    print(job.id, flush=True)
    sys.stdin.read()  # never closes the journal: the parent kills us
"""


def test_a_job_saved_by_a_process_that_is_then_sigkilled_survives(tmp_path: Path) -> None:
    state = tmp_path / "state"
    with run_child(_SAVE_AND_WAIT, str(state)) as child:
        assert child.stdout is not None
        line = child.stdout.readline()
        assert line.strip().isdigit(), child.stderr.read() if child.stderr else ""
        child.send_signal(signal.SIGKILL)
        assert child.wait(timeout=10) == -signal.SIGKILL
    job_id = int(line)
    with Journal.open(state) as journal:
        job = journal.get(job_id)
        assert job is not None
        assert (job.state, job.progress, job.updated_at) == (S.UPLOADING, 0.25, 9.0)
        assert [e.event for e in journal.events(job_id)] == ["job.queued", "upload.started"]


def test_four_threads_saving_through_one_journal(journal: Journal) -> None:
    rounds = 50
    jobs = [journal.insert(new_job(f"{n}.mp4"), event="job.queued") for n in range(4)]
    errors: list[BaseException] = []

    def work(job: Job) -> None:
        try:
            for i in range(rounds):
                # alternate real moves and same-state progress saves
                state = S.UPLOADING if i % 2 == 0 else S.QUEUED
                job = dataclasses.replace(job, state=state, attempts=i, updated_at=200.0 + i)
                journal.save(job, event=f"step.{i}", detail={"i": i})
                journal.get(job.id or 0)  # reads interleave with the other threads' writes
        except BaseException as exc:  # collected: an exception in a thread fails nothing
            errors.append(exc)

    threads = [threading.Thread(target=work, args=(job,), name=f"saver-{n}") for n, job in
               enumerate(jobs)]  # fmt: skip
    for t in threads:
        t.start()
    for t in threads:
        t.join(timeout=60)
    assert not any(t.is_alive() for t in threads)
    assert errors == []
    for job in jobs:
        assert job.id is not None
        events = journal.events(job.id)
        assert [e.event for e in events] == ["job.queued"] + [f"step.{i}" for i in range(rounds)]
        assert [e.detail for e in events[1:]] == [{"i": i} for i in range(rounds)]
        final = journal.get(job.id)
        assert final is not None and (final.state, final.attempts) == (S.QUEUED, rounds - 1)


def test_newest_lists_the_last_changed_jobs_of_a_state_first(journal: Journal) -> None:
    for i, at in enumerate((30.0, 10.0, 20.0)):
        job = job_in(JobState.DONE, rel_path=f"{i}.mp4", updated_at=at, created_at=at)
        journal.insert(job, event="job.done", detail={})
    journal.insert(job_in(JobState.QUEUED, rel_path="q.mp4"), event="job.queued", detail={})
    newest = journal.newest(JobState.DONE, 2)
    assert [(j.rel_path, j.updated_at) for j in newest] == [("0.mp4", 30.0), ("2.mp4", 20.0)]
