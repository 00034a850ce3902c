"""The journal migration that turns the old way of recording a superseded job (state `failed`,
last_error "superseded: ...") into the `superseded` state."""

from __future__ import annotations

import sqlite3
from pathlib import Path

from mh_watchd.adapters.journal import (
    JOURNAL_FILENAME,
    MIGRATIONS,
    SCHEMA_VERSION,
    Journal,
    apply_migrations,
)
from mh_watchd.adapters.journal_rows import JOB_COLUMNS, job_values
from mh_watchd.core.jobs import JobState
from tests.adapters.test_journal import new_job

S = JobState
# The schema version released before the superseded state existed.
OLD_VERSION = 2


def build_old_journal(state_dir: Path) -> None:
    """A journal exactly as an mh-watchd at schema version 2 left it, with three jobs."""
    state_dir.mkdir()
    conn = sqlite3.connect(state_dir / JOURNAL_FILENAME, isolation_level=None)
    try:
        assert apply_migrations(conn, MIGRATIONS[:OLD_VERSION]) == 0
        assert conn.execute("PRAGMA user_version").fetchone()[0] == OLD_VERSION
    finally:
        conn.close()
    # Rows written as that version wrote them: every Job column (no claims yet), one event.
    jobs = [
        new_job(
            "a.mp4",
            state=S.FAILED,
            last_error="superseded: the file changed during upload; taken again as a new version",
        ),
        new_job("b.mp4", state=S.FAILED, last_error="not a readable video"),
        new_job("c.mp4", state=S.FAILED, last_error="Superseded by nothing: a real failure"),
        new_job("d.mp4", state=S.DONE),
    ]
    conn = sqlite3.connect(state_dir / JOURNAL_FILENAME, isolation_level=None)
    try:
        for job in jobs:
            job_id = conn.execute(
                f"INSERT INTO jobs ({', '.join(JOB_COLUMNS)})"
                f" VALUES ({', '.join('?' for _ in JOB_COLUMNS)})",
                job_values(job),
            ).lastrowid
            conn.execute(
                "INSERT INTO events (job_id, at, from_state, to_state, event, detail)"
                " VALUES (?, ?, NULL, ?, ?, '{}')",
                (job_id, job.updated_at, job.state.value, f"job.{job.state.value}"),
            )
    finally:
        conn.close()


def test_the_superseded_migration_is_the_next_schema_version() -> None:
    assert SCHEMA_VERSION >= OLD_VERSION + 1
    assert any("'superseded'" in statement for statement in MIGRATIONS[OLD_VERSION])


def test_old_superseded_failures_become_superseded_on_open(tmp_path: Path) -> None:
    state = tmp_path / "state"
    build_old_journal(state)
    with Journal.open(state) as journal:
        by_path = {j.rel_path: j for j in journal.jobs()}
        assert by_path["a.mp4"].state is S.SUPERSEDED
        # The reason stays readable; nothing else about the row changes.
        assert by_path["a.mp4"].last_error is not None
        assert by_path["a.mp4"].last_error.startswith("superseded:")
        assert by_path["b.mp4"].state is S.FAILED  # a real failure stays failed
        assert by_path["c.mp4"].state is S.FAILED  # only the exact prefix counts
        assert by_path["d.mp4"].state is S.DONE
        # The history says what happened, and ends in the job's state.
        events = journal.events(by_path["a.mp4"].id or 0)
        assert (events[-1].from_state, events[-1].to_state) == (S.FAILED, S.SUPERSEDED)
        assert events[-1].event == "job.migrated_to_superseded"
        assert [j.rel_path for j in journal.jobs(states=[S.FAILED])] == ["b.mp4", "c.mp4"]
        assert journal.counts_by_folder_and_state() == {
            ("anime", "done"): 1,
            ("anime", "failed"): 2,
            ("anime", "superseded"): 1,
        }
    raw = sqlite3.connect(state / JOURNAL_FILENAME)
    try:
        assert raw.execute("PRAGMA user_version").fetchone()[0] == SCHEMA_VERSION
    finally:
        raw.close()
