"""The journal's job records: each job's row and its append-only history of events.

Every write here stores the job row and its event in one transaction, so a job's history always
ends in the state its row shows.
"""

from __future__ import annotations

import dataclasses
import json
from collections.abc import Collection, Iterable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any

from mh_watchd.adapters.journal_backend import ClaimLost, Conn, OverBudget, lock_key
from mh_watchd.adapters.journal_charges import spent_on
from mh_watchd.adapters.journal_connection import JournalConflict, JournalConnection
from mh_watchd.adapters.journal_rows import (
    JOB_UPDATE_KEEP_CLAIM_SQL,
    TERMINAL_VALUES,
    dump_detail,
    encode_inode,
    job_from_row,
    job_insert_sql,
    job_update_sql,
    job_values,
)
from mh_watchd.core.jobs import Job, JobState, check_move

UNFINISHED_VALUES: tuple[str, ...] = tuple(
    sorted(s.value for s in JobState if s.value not in TERMINAL_VALUES)
)


@dataclass(frozen=True)
class JobEvent:
    """One journaled state change of a job (or a note on it when from == to)."""

    id: int
    job_id: int
    at: float
    from_state: JobState | None  # None for the event that created the job
    to_state: JobState
    event: str
    detail: Mapping[str, Any]


@dataclass(frozen=True)
class BulkEvent:
    """One event to bulk-load with its job (see `JobRecords.insert_history`)."""

    at: float
    from_state: JobState | None
    to_state: JobState
    event: str
    detail: Mapping[str, Any] | None = None


class JobRecords(JournalConnection):
    """Jobs and their events: insert, save (with a state check), lookups, counts, progress.

    Owns the `jobs` and `events` tables (reads `jobs` only through `job_from_row`).
    """

    def insert(
        self,
        job: Job,
        *,
        event: str,
        detail: Mapping[str, Any] | None = None,
        expect_latest: int | None = None,
    ) -> Job:
        """Store a new job (its timestamps as given) with its first event, in one transaction;
        a daemon's journal (`set_host`) holds it under a lease.

        `expect_latest`, when given, is the id of the newest job of this path the caller saw
        (0: none): if another job of the path was recorded meanwhile (by another host seeing
        the same file), nothing is written and JournalConflict says so. Returns the job with
        its new `id`. Raises ValueError if it already has one, JournalConflict if its
        project_id belongs to another job.
        """
        if job.id is not None:
            raise ValueError(f"job {job.id} is already in the journal; use save()")
        with self._writing() as conn:
            if expect_latest is not None:
                self._check_latest(conn, job.folder, job.rel_path, expect_latest)
            job_id = self._insert_row(conn, job)
            _append_event(conn, job_id, job.updated_at, None, job.state, event, detail)
        return dataclasses.replace(job, id=job_id, holder=self._holder_for(job))

    def _holder_for(self, job: Job) -> str | None:
        return None if job.is_terminal else self._host

    def _insert_row(self, conn: Conn, job: Job) -> int:
        holder = self._holder_for(job)
        lease = self._lease_seconds if holder is not None else None
        sql = job_insert_sql(self._dialect.now)
        return int(conn.execute(sql, [*job_values(job), holder, lease]).fetchone()["id"])

    def _check_latest(self, conn: Conn, folder: str, rel_path: str, expect: int) -> None:
        if self._dialect.advisory_lock is not None:
            # Two hosts recording the same new file: the second waits here, then sees the first.
            conn.execute(self._dialect.advisory_lock, (lock_key("path", folder, rel_path),))
        row = conn.execute(
            "SELECT COALESCE(MAX(id), 0) AS latest FROM jobs WHERE folder = ? AND rel_path = ?",
            (folder, rel_path),
        ).fetchone()
        if int(row["latest"]) != expect:
            raise JournalConflict(
                f"{folder}/{rel_path}: job {row['latest']} of this file was recorded meanwhile "
                "(another host saw it too)",
                job_id=int(row["latest"]),
            )

    def insert_history(self, jobs: Iterable[tuple[Job, Sequence[BulkEvent]]]) -> int:
        """Bulk-load jobs, each with its whole history, in ONE transaction; returns how many.

        For tools that build large journals (bench/journal_scale.py, imports): rows are written
        by the same encoding as `insert`/`save` (`job_values`, `_append_event`), so the file is
        what a daemon would have written, only without one commit per event. Each job must have
        no id, and its last event must end in `job.state`. Nothing is written when it raises.
        """
        count = 0
        with self._writing() as conn:
            for job, history in jobs:
                if job.id is not None:
                    raise ValueError(f"job {job.id} is already in the journal; use save()")
                if not history or history[-1].to_state is not job.state:
                    raise ValueError("a job's history must end in its state")
                job_id = self._insert_row(conn, job)
                for ev in history:
                    _append_event(
                        conn, job_id, ev.at, ev.from_state, ev.to_state, ev.event, ev.detail
                    )
                count += 1
        return count

    def save(
        self,
        job: Job,
        *,
        event: str,
        detail: Mapping[str, Any] | None = None,
        expect_state: JobState | None = None,
        budget: tuple[str, int] | None = None,
    ) -> Job:
        """Update a stored job and append its event (at `job.updated_at`) in one transaction.

        A daemon's journal (`set_host`) writes only the jobs its host holds, or nobody does
        (it takes those), renewing the lease; a finished job is held by nobody. `budget`
        (day, limit) is for a move that spends: it is refused when the day's spending by every
        host, this job's estimate included, would pass the limit.

        Returns `job` (with its holder). Raises ClaimLost when another host holds the job,
        OverBudget when `budget` refuses it, JournalConflict when the job is unknown, when its
        stored state is not `expect_state` (if given) or its project_id belongs to another job;
        IllegalTransition when the stored state cannot move to `job.state`. Nothing is written
        when it raises.
        """
        if job.id is None:
            raise ValueError("a job without an id is not in the journal yet; use insert()")
        with self._writing() as conn:
            if budget is not None:
                self._check_budget(conn, job, *budget)
            row = conn.execute(
                f"SELECT state, holder FROM jobs WHERE id = ?{self._dialect.for_update}",
                (job.id,),
            ).fetchone()
            if row is None:
                raise JournalConflict(f"job {job.id} is not in the journal", job_id=job.id)
            stored = JobState(row["state"])
            self._check_holder(job.id, row["holder"])
            if expect_state is not None and stored is not expect_state:
                raise JournalConflict(
                    f"job {job.id} is {stored.value}, not {expect_state.value}: it changed "
                    "meanwhile",
                    job_id=job.id,
                    actual_state=stored,
                )
            if stored is not job.state:
                # A stale copy of the record must not drive the job somewhere the table forbids.
                check_move(stored, job.state)
            holder = self._write_row(conn, job, row["holder"])
            _append_event(conn, job.id, job.updated_at, stored, job.state, event, detail)
            if job.is_terminal and row["holder"] is not None:
                self._notify(conn, "released")
        return dataclasses.replace(job, holder=holder)

    def _check_holder(self, job_id: int, holder: str | None) -> None:
        if self._host is not None and holder is not None and holder != self._host:
            raise ClaimLost(
                f"job {job_id} is held by host {holder!r} now", job_id=job_id, holder=holder
            )

    def _write_row(self, conn: Conn, job: Job, holder: str | None) -> str | None:
        """The UPDATE of `save`; returns the holder it leaves."""
        if self._host is None and not job.is_terminal:
            conn.execute(JOB_UPDATE_KEEP_CLAIM_SQL, [*job_values(job), job.id])
            return holder
        new = self._holder_for(job)
        lease = self._lease_seconds if new is not None else None
        sql = job_update_sql(self._dialect.now)
        conn.execute(sql, [*job_values(job), new, lease, job.id])
        return new

    def _check_budget(self, conn: Conn, job: Job, day: str, limit: int) -> None:
        if self._dialect.advisory_lock is not None:
            # Hosts spending on the same day take turns here, so two never both fit in the
            # last credits.
            conn.execute(self._dialect.advisory_lock, (lock_key("budget", day),))
        spent = spent_on(conn, day, except_job=job.id)
        estimate = job.credits_estimate or 0
        if limit and spent + estimate > limit:
            assert job.id is not None
            raise OverBudget(
                f"job {job.id}: {spent} of {limit} credits are spent or booked today "
                f"({day}) on every host; its estimate of {estimate} does not fit",
                job_id=job.id,
                spent=spent,
            )

    def get(self, job_id: int) -> Job | None:
        """Return the job with this id, or None."""
        return self._one("SELECT * FROM jobs WHERE id = ?", (job_id,))

    def by_project_id(self, project_id: str) -> Job | None:
        """Return the job that owns this Magic Hour project id, or None."""
        return self._one("SELECT * FROM jobs WHERE project_id = ?", (project_id,))

    def newest(self, state: JobState, limit: int) -> list[Job]:
        """The `limit` jobs in `state` changed last, newest first (a bounded query: a year's
        journal holds tens of thousands of done jobs, and the web page asks every few seconds)."""
        return self._many(
            "SELECT * FROM jobs WHERE state = ? ORDER BY updated_at DESC, id DESC LIMIT ?",
            (state.value, limit),
        )

    def jobs(
        self, *, states: Collection[JobState] | None = None, folder: str | None = None
    ) -> list[Job]:
        """Return jobs (all, or only in `states` and/or `folder`), in id order."""
        clauses: list[str] = []
        params: list[Any] = []
        if states is not None:
            if not states:
                return []
            clauses.append(f"state IN ({', '.join('?' for _ in states)})")
            params.extend(JobState(s).value for s in states)
        if folder is not None:
            clauses.append("folder = ?")
            params.append(folder)
        where = f" WHERE {' AND '.join(clauses)}" if clauses else ""
        return self._many(f"SELECT * FROM jobs{where} ORDER BY id", params)

    def some_jobs(
        self,
        states: Collection[JobState],
        *,
        limit: int,
        newest_first: bool = False,
        without_error_prefix: str | None = None,
    ) -> list[Job]:
        """At most `limit` jobs in `states`, by id (lowest first, or highest with
        `newest_first`), leaving out those whose last_error starts with `without_error_prefix`.

        A bounded query for reports: a journal of years can hold tens of thousands of failed jobs.
        """
        if not states or limit <= 0:
            return []
        values = sorted(JobState(s).value for s in states)
        where = f"state IN ({', '.join('?' for _ in values)})"
        params: list[Any] = list(values)
        if without_error_prefix is not None:
            where += " AND (last_error IS NULL OR substr(last_error, 1, CAST(? AS INTEGER)) != ?)"
            params += [len(without_error_prefix), without_error_prefix]
        order = "DESC" if newest_first else "ASC"
        return self._many(
            f"SELECT * FROM jobs WHERE {where} ORDER BY id {order} LIMIT ?", [*params, limit]
        )

    def counts_with_error_prefix(self, state: JobState, prefix: str) -> dict[str, int]:
        """{folder: number of jobs in `state` whose last_error starts with `prefix`} (exact)."""
        with self._reading() as conn:
            rows = conn.execute(
                "SELECT folder, COUNT(*) AS n FROM jobs WHERE state = ?"
                " AND substr(last_error, 1, CAST(? AS INTEGER)) = ? GROUP BY folder",
                (state.value, len(prefix), prefix),
            ).fetchall()
        return {row["folder"]: int(row["n"]) for row in rows}

    def failed_unfiled(self) -> list[Job]:
        """Failed jobs whose original was never filed (failed_path NULL), oldest first."""
        return self._many(
            "SELECT * FROM jobs WHERE state = ? AND failed_path IS NULL ORDER BY id",
            (JobState.FAILED.value,),
        )

    def unfinished(self) -> list[Job]:
        """Return every job not done or failed, oldest (lowest id) first.

        Asks for the unfinished states by name (`state IN (...)`, on the state index): `NOT IN`
        the finished ones would read every row of a journal that holds a million finished jobs.
        """
        marks = ", ".join("?" for _ in UNFINISHED_VALUES)
        return self._many(
            f"SELECT * FROM jobs WHERE state IN ({marks}) ORDER BY id", UNFINISHED_VALUES
        )

    def latest_for_path(self, folder: str, rel_path: str) -> Job | None:
        """Return the newest job of this file path in any state, or None."""
        return self._one(
            "SELECT * FROM jobs WHERE folder = ? AND rel_path = ? ORDER BY id DESC LIMIT 1",
            (folder, rel_path),
        )

    def find_done_version(self, folder: str, rel_path: str, size: int, sha256: str) -> Job | None:
        """Return the newest `done` job of exactly this file version (path, size, hash), or None."""
        return self._one(
            "SELECT * FROM jobs WHERE folder = ? AND rel_path = ? AND size = ? AND sha256 = ?"
            " AND state = ? ORDER BY id DESC LIMIT 1",
            (folder, rel_path, size, sha256, JobState.DONE.value),
        )

    def known_version(
        self, folder: str, rel_path: str, size: int, mtime_ns: int, inode: int
    ) -> Job | None:
        """Return the newest job of this path with this size, mtime and inode, or None.

        Lets intake skip re-hashing a file the journal already knows.
        """
        return self._one(
            "SELECT * FROM jobs WHERE folder = ? AND rel_path = ? AND size = ? AND mtime_ns = ?"
            " AND inode = ? ORDER BY id DESC LIMIT 1",
            (folder, rel_path, size, mtime_ns, encode_inode(inode)),
        )

    def events(self, job_id: int) -> list[JobEvent]:
        """Return the job's events in the order they were written."""
        with self._reading() as conn:
            rows = conn.execute(
                "SELECT * FROM events WHERE job_id = ? ORDER BY id", (job_id,)
            ).fetchall()
        return [
            JobEvent(
                id=row["id"],
                job_id=row["job_id"],
                at=row["at"],
                from_state=JobState(row["from_state"]) if row["from_state"] else None,
                to_state=JobState(row["to_state"]),
                event=row["event"],
                detail=json.loads(row["detail"]),
            )
            for row in rows
        ]

    def counts_by_folder_and_state(self) -> dict[tuple[str, str], int]:
        """Return {(folder, state value): number of jobs} for every pair that has jobs."""
        with self._reading() as conn:
            rows = conn.execute(
                "SELECT folder, state, COUNT(*) AS n FROM jobs GROUP BY folder, state"
            ).fetchall()
        return {(row["folder"], row["state"]): int(row["n"]) for row in rows}

    def set_progress(self, job_id: int, progress: float) -> None:
        """Store a transfer's progress (0..1) for `status`; no event, no state change."""
        with self._writing() as conn:
            conn.execute("UPDATE jobs SET progress = ? WHERE id = ?", (progress, job_id))

    def _one(self, sql: str, params: Collection[Any]) -> Job | None:
        with self._reading() as conn:
            row = conn.execute(sql, tuple(params)).fetchone()
        return job_from_row(row) if row is not None else None

    def _many(self, sql: str, params: Collection[Any]) -> list[Job]:
        with self._reading() as conn:
            rows = conn.execute(sql, tuple(params)).fetchall()
        return [job_from_row(row) for row in rows]


def _append_event(
    conn: Conn,
    job_id: int,
    at: float,
    from_state: JobState | None,
    to_state: JobState,
    event: str,
    detail: Mapping[str, Any] | None,
) -> None:
    conn.execute(
        "INSERT INTO events (job_id, at, from_state, to_state, event, detail)"
        " VALUES (?, ?, ?, ?, ?, ?)",
        (
            job_id,
            at,
            from_state.value if from_state is not None else None,
            to_state.value,
            event,
            dump_detail(detail),
        ),
    )
