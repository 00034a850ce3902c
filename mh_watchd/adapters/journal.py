"""The journal: one SQLite file in the state_dir that makes the daemon durable.

Every job record, every state change (as an event), the CLI's requests to a running daemon,
per-folder watch status and a few key/value facts live here. Writes are one transaction each,
committed with `synchronous=FULL` in WAL mode before the call returns, so the daemon can
persist first and act second. `status` opens the same file read-only while the daemon runs.

sqlite3 errors are translated in one place (`_translated`): an integrity clash becomes
`JournalConflict`, anything else `StateDirError` (the journal is unusable).
"""

from __future__ import annotations

import contextlib
import dataclasses
import fcntl
import json
import os
import sqlite3
import threading
from collections.abc import Collection, Iterator, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from mh_watchd.core.api import Style
from mh_watchd.core.errors import AlreadyRunningError, MhWatchdError, StateDirError
from mh_watchd.core.jobs import (
    TERMINAL_STATES,
    HoldReason,
    Job,
    JobSettings,
    JobState,
    Output,
    check_move,
)

JOURNAL_FILENAME = "journal.sqlite3"
LOCK_FILENAME = "mh-watchd.lock"
BUSY_TIMEOUT_MS = 5000
STATE_DIR_MODE = 0o750

# One entry per schema version: MIGRATIONS[n] takes a journal from version n to n + 1. Each
# entry is a tuple of single statements (executescript would commit mid-migration). Never edit
# a released entry; append a new one.
MIGRATIONS: tuple[tuple[str, ...], ...] = (
    (
        """
        CREATE TABLE jobs (
            id INTEGER PRIMARY KEY AUTOINCREMENT,  -- never reused: ids are shown to users
            folder TEXT NOT NULL,
            rel_path TEXT NOT NULL,
            size INTEGER NOT NULL,
            mtime_ns INTEGER NOT NULL,
            inode INTEGER NOT NULL,  -- stored as signed 64-bit, see _encode_inode
            settings TEXT NOT NULL,  -- JSON of JobSettings
            state TEXT NOT NULL,
            sha256 TEXT,
            resume_state TEXT,
            hold_reason TEXT,
            attempts INTEGER NOT NULL,
            last_error TEXT,
            due_at REAL,
            duration_seconds REAL,
            fps REAL,
            start_seconds REAL,
            end_seconds REAL,
            upload_source TEXT,
            upload_file_path TEXT,
            uploaded_at REAL,
            project_id TEXT,
            service_name TEXT,
            credits_estimate INTEGER,
            credits_charged INTEGER,
            credits_final INTEGER,
            credits_day TEXT,
            render_started_at REAL,
            render_status TEXT,
            outputs TEXT NOT NULL,  -- JSON list of Output
            archive_path TEXT,
            failed_path TEXT,
            original_left INTEGER NOT NULL CHECK (original_left IN (0, 1)),
            progress REAL NOT NULL,
            created_at REAL NOT NULL,
            updated_at REAL NOT NULL
        )
        """,
        "CREATE INDEX jobs_by_path ON jobs (folder, rel_path)",
        "CREATE INDEX jobs_by_state ON jobs (state)",
        "CREATE INDEX jobs_by_credits_day ON jobs (credits_day)",
        "CREATE UNIQUE INDEX jobs_by_project_id ON jobs (project_id) WHERE project_id IS NOT NULL",
        """
        CREATE TABLE events (
            id INTEGER PRIMARY KEY AUTOINCREMENT,
            job_id INTEGER NOT NULL REFERENCES jobs (id) ON DELETE CASCADE,
            at REAL NOT NULL,
            from_state TEXT,
            to_state TEXT NOT NULL,
            event TEXT NOT NULL,
            detail TEXT NOT NULL  -- JSON object
        )
        """,
        "CREATE INDEX events_by_job ON events (job_id, id)",
        """
        CREATE TABLE requests (
            id INTEGER PRIMARY KEY AUTOINCREMENT,
            kind TEXT NOT NULL,
            job_id INTEGER REFERENCES jobs (id) ON DELETE SET NULL,
            created_at REAL NOT NULL,
            detail TEXT NOT NULL,  -- JSON object
            handled_at REAL,
            result TEXT
        )
        """,
        "CREATE INDEX requests_pending ON requests (id) WHERE handled_at IS NULL",
        """
        CREATE TABLE folders (
            name TEXT PRIMARY KEY,
            watch_mode TEXT NOT NULL,
            watch_reason TEXT NOT NULL,
            outage TEXT,
            last_scan_at REAL,
            updated_at REAL NOT NULL
        )
        """,
        "CREATE TABLE meta (key TEXT PRIMARY KEY, value TEXT NOT NULL)",
    ),
    (
        # One row per project the service accepted, so a retried job's earlier render stays
        # booked to its day after the job record moves on to a new project.
        """
        CREATE TABLE charges (
            project_id TEXT PRIMARY KEY,
            job_id INTEGER REFERENCES jobs (id) ON DELETE SET NULL,
            day TEXT NOT NULL,
            credits INTEGER NOT NULL,
            updated_at REAL NOT NULL
        )
        """,
        "CREATE INDEX charges_by_day ON charges (day)",
    ),
    (
        # Before the `superseded` state, a job whose file changed or vanished before its create
        # was recorded as `failed` with last_error "superseded: ...". Make those rows what they
        # are (terminal, never paid for, never retried), with an event saying so, so that the
        # history still ends in the job's state. Only the exact lowercase prefix counts.
        """
        INSERT INTO events (job_id, at, from_state, to_state, event, detail)
        SELECT id, (julianday('now') - 2440587.5) * 86400.0, 'failed', 'superseded',
               'job.migrated_to_superseded', '{"schema_version": 3}'
        FROM jobs WHERE state = 'failed' AND substr(last_error, 1, 11) = 'superseded:'
        ORDER BY id
        """,
        """
        UPDATE jobs SET state = 'superseded'
        WHERE state = 'failed' AND substr(last_error, 1, 11) = 'superseded:'
        """,
    ),
)
SCHEMA_VERSION: int = len(MIGRATIONS)

# Every Job field but `id` is a column of the same name (a test checks the schema agrees).
_JOB_COLUMNS: tuple[str, ...] = tuple(f.name for f in dataclasses.fields(Job) if f.name != "id")
_JOB_INSERT_SQL = (
    f"INSERT INTO jobs ({', '.join(_JOB_COLUMNS)}) VALUES ({', '.join('?' for _ in _JOB_COLUMNS)})"
)
_JOB_UPDATE_SQL = f"UPDATE jobs SET {', '.join(f'{c} = ?' for c in _JOB_COLUMNS)} WHERE id = ?"
_TERMINAL_VALUES: tuple[str, ...] = tuple(sorted(s.value for s in TERMINAL_STATES))

# SQLite integers are signed 64-bit, but st_ino is unsigned: some network and FUSE filesystems
# hand out inode numbers >= 2**63. Store them wrapped into the signed range (a bijection, so
# equality lookups still work) rather than crash on OverflowError.
_INODE_WRAP = 1 << 64
_INODE_SIGNED_MAX = (1 << 63) - 1


class JournalConflict(MhWatchdError):
    """A write lost a race or clashed with a stored record (state moved on, id unknown, taken).

    `job_id` and `actual_state` name the job and its stored state when that is what clashed.
    """

    def __init__(
        self, message: str, *, job_id: int | None = None, actual_state: JobState | None = None
    ) -> None:
        self.job_id = job_id
        self.actual_state = actual_state
        super().__init__(message)


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
class Request:
    """A request from the CLI (e.g. `retry`) for the daemon; handled once, then finished."""

    id: int
    kind: str
    job_id: int | None
    created_at: float
    detail: Mapping[str, Any]
    handled_at: float | None = None
    result: str | None = None


@dataclass(frozen=True)
class FolderStatus:
    """How the daemon last saw one folder: watch mode and why, outage, last full scan."""

    folder: str
    watch_mode: str
    watch_reason: str
    outage: str | None
    last_scan_at: float | None
    updated_at: float


def _encode_inode(inode: int) -> int:
    return inode - _INODE_WRAP if inode > _INODE_SIGNED_MAX else inode


def _decode_inode(stored: int) -> int:
    return stored + _INODE_WRAP if stored < 0 else stored


def _dump_detail(detail: Mapping[str, Any] | None) -> str:
    # default=str: a Path or other stray value in a detail is recorded, never a crash mid-write.
    return json.dumps(dict(detail or {}), sort_keys=True, default=str)


def _encode_settings(settings: JobSettings) -> str:
    return json.dumps(dataclasses.asdict(settings), sort_keys=True)


def _decode_settings(text: str) -> JobSettings:
    data = json.loads(text)
    data["style"] = Style(**data["style"])
    # JSON writes 60.0 back as 60.0, but a caller may have stored an int; keep floats floats.
    data["start_seconds"] = float(data["start_seconds"])
    data["max_seconds"] = float(data["max_seconds"])
    return JobSettings(**data)


def _encode_outputs(outputs: tuple[Output, ...]) -> str:
    return json.dumps([dataclasses.asdict(o) for o in outputs], sort_keys=True)


def _decode_outputs(text: str) -> tuple[Output, ...]:
    return tuple(Output(**item) for item in json.loads(text))


def _job_values(job: Job) -> list[Any]:
    values: list[Any] = []
    for name in _JOB_COLUMNS:
        value = getattr(job, name)
        if name == "settings":
            value = _encode_settings(value)
        elif name == "outputs":
            value = _encode_outputs(value)
        elif name == "inode":
            value = _encode_inode(value)
        elif name == "original_left":
            value = int(value)
        values.append(value)
    return values


def _job_from_row(row: sqlite3.Row) -> Job:
    data: dict[str, Any] = {name: row[name] for name in _JOB_COLUMNS}
    data["id"] = row["id"]
    data["settings"] = _decode_settings(data["settings"])
    data["outputs"] = _decode_outputs(data["outputs"])
    data["inode"] = _decode_inode(data["inode"])
    data["original_left"] = bool(data["original_left"])
    data["state"] = JobState(data["state"])
    if data["resume_state"] is not None:
        data["resume_state"] = JobState(data["resume_state"])
    if data["hold_reason"] is not None:
        data["hold_reason"] = HoldReason(data["hold_reason"])
    return Job(**data)


def apply_migrations(conn: sqlite3.Connection, migrations: tuple[tuple[str, ...], ...]) -> int:
    """Bring `conn` (autocommit mode) to version len(migrations) in one transaction.

    Returns the version found before migrating. Raises StateDirError when the journal is newer
    than `migrations` know; a failing step rolls everything back and its sqlite3 error propagates.
    """
    # IMMEDIATE: two processes starting at once must not both migrate the same version.
    conn.execute("BEGIN IMMEDIATE")
    try:
        found = int(conn.execute("PRAGMA user_version").fetchone()[0])
        if found > len(migrations):
            raise StateDirError(
                f"the journal's schema version {found} is newer than this mh-watchd knows "
                f"({len(migrations)}); upgrade mh-watchd or restore an older journal"
            )
        for version in range(found, len(migrations)):
            for statement in migrations[version]:
                conn.execute(statement)
        if found != len(migrations):
            # PRAGMA cannot take a parameter; the value is an int we computed.
            conn.execute(f"PRAGMA user_version = {len(migrations)}")
        conn.execute("COMMIT")
    except BaseException:
        if conn.in_transaction:
            conn.execute("ROLLBACK")
        raise
    return found


class Journal:
    """The daemon's durable memory, safe to share between threads (one lock around each call)."""

    def __init__(self, conn: sqlite3.Connection, state_dir: Path, *, readonly: bool) -> None:
        """Wrap an open, migrated connection; use `Journal.open` instead."""
        self._conn = conn
        self._state_dir = state_dir
        self._path = state_dir / JOURNAL_FILENAME
        self._readonly = readonly
        self._lock = threading.Lock()
        self._lock_fd: int | None = None
        self._closed = False

    # ------------------------------------------------------------------ lifecycle

    @classmethod
    def open(cls, state_dir: Path, *, readonly: bool = False) -> Journal:
        """Open (creating and migrating unless `readonly`) the journal in `state_dir`.

        Returns the Journal. Raises StateDirError when the directory or file is unusable, when
        `readonly` finds no journal or an older schema, or when the schema is newer than ours.
        """
        path = state_dir / JOURNAL_FILENAME
        if readonly:
            if not path.is_file():
                raise StateDirError(f"no journal yet at {path}")
            conn = cls._connect(path.absolute().as_uri() + "?mode=ro", path, uri=True)
            try:
                cls._check_readonly_version(conn, path)
            except BaseException:
                conn.close()
                raise
            return cls(conn, state_dir, readonly=True)

        try:
            state_dir.mkdir(mode=STATE_DIR_MODE, parents=True, exist_ok=True)
        except OSError as exc:
            raise StateDirError(f"cannot create state_dir {state_dir}: {exc}") from exc
        if not state_dir.is_dir():
            raise StateDirError(f"state_dir {state_dir} is not a directory")
        conn = cls._connect(str(path), path, uri=False)
        try:
            with _translated(path):
                mode = conn.execute("PRAGMA journal_mode = WAL").fetchone()[0]
                if str(mode).lower() != "wal":
                    raise StateDirError(
                        f"journal {path} cannot use WAL mode (got {mode!r}); "
                        "is the state_dir on a local filesystem?"
                    )
                conn.execute("PRAGMA synchronous = FULL")
                apply_migrations(conn, MIGRATIONS)
        except BaseException:
            conn.close()
            raise
        return cls(conn, state_dir, readonly=False)

    @staticmethod
    def _connect(target: str, path: Path, *, uri: bool) -> sqlite3.Connection:
        try:
            # isolation_level=None: we issue BEGIN/COMMIT ourselves, so DDL in migrations and
            # every write is exactly one transaction. check_same_thread=False: self._lock
            # serializes every use of the connection instead.
            conn = sqlite3.connect(
                target,
                uri=uri,
                isolation_level=None,
                check_same_thread=False,
                timeout=BUSY_TIMEOUT_MS / 1000,
            )
        except sqlite3.Error as exc:
            raise StateDirError(f"cannot open journal {path}: {exc}") from exc
        try:
            with _translated(path):
                conn.row_factory = sqlite3.Row
                conn.execute(f"PRAGMA busy_timeout = {BUSY_TIMEOUT_MS}")
                conn.execute("PRAGMA foreign_keys = ON")
        except BaseException:
            conn.close()
            raise
        return conn

    @staticmethod
    def _check_readonly_version(conn: sqlite3.Connection, path: Path) -> None:
        with _translated(path):
            conn.execute("PRAGMA query_only = ON")
            found = int(conn.execute("PRAGMA user_version").fetchone()[0])
        if found > SCHEMA_VERSION:
            raise StateDirError(
                f"the journal's schema version {found} is newer than this mh-watchd knows "
                f"({SCHEMA_VERSION}); upgrade mh-watchd"
            )
        if found == 0:
            # A daemon is creating it right now (its first transaction is not committed yet).
            raise StateDirError(f"no journal yet at {path}")
        if found < SCHEMA_VERSION:
            raise StateDirError(
                f"the journal at {path} has schema version {found}, this mh-watchd needs "
                f"{SCHEMA_VERSION}; start the daemon once to upgrade it"
            )

    def close(self) -> None:
        """Close the connection and release the daemon lock, if held. Safe to call twice."""
        with self._lock:
            if self._closed:
                return
            self._closed = True
            self._conn.close()
            if self._lock_fd is not None:
                os.close(self._lock_fd)  # closing the descriptor drops the flock
                self._lock_fd = None

    def __enter__(self) -> Journal:
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.close()

    @property
    def path(self) -> Path:
        """The journal file."""
        return self._path

    @property
    def readonly(self) -> bool:
        """True when opened read-only (for `status`)."""
        return self._readonly

    # ------------------------------------------------------------------ single instance

    def acquire_lock(self) -> None:
        """Take the state_dir's exclusive daemon lock and write our pid into the lock file.

        Returns once held (again: a no-op). Raises AlreadyRunningError naming the holder's pid
        when another process (or Journal) holds it, StateDirError when the file is unusable.
        """
        with self._lock:
            if self._lock_fd is not None:
                return
            if self._readonly:
                raise StateDirError("a read-only journal cannot take the daemon lock")
            lock_path = self._state_dir / LOCK_FILENAME
            try:
                fd = os.open(lock_path, os.O_RDWR | os.O_CREAT | os.O_CLOEXEC, 0o644)
            except OSError as exc:
                raise StateDirError(f"cannot open lock file {lock_path}: {exc}") from exc
            try:
                fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
            except BlockingIOError:
                pid = _read_pid(fd)
                os.close(fd)
                who = f"pid {pid}" if pid is not None else "a process whose pid is not known yet"
                raise AlreadyRunningError(
                    f"another mh-watchd ({who}) is running on state_dir {self._state_dir}",
                    pid=pid,
                ) from None
            except OSError as exc:
                os.close(fd)
                raise StateDirError(f"cannot lock {lock_path}: {exc}") from exc
            try:
                os.ftruncate(fd, 0)
                os.pwrite(fd, f"{os.getpid()}\n".encode(), 0)
                os.fsync(fd)
            except OSError as exc:
                os.close(fd)
                raise StateDirError(f"cannot write lock file {lock_path}: {exc}") from exc
            self._lock_fd = fd

    # ------------------------------------------------------------------ transactions

    @contextlib.contextmanager
    def _reading(self) -> Iterator[sqlite3.Connection]:
        with self._lock, _translated(self._path):
            yield self._conn

    @contextlib.contextmanager
    def _writing(self) -> Iterator[sqlite3.Connection]:
        # Callers hold no lock; this takes it, so one transaction at a time per Journal, and
        # BEGIN IMMEDIATE takes SQLite's write lock up front (waiting busy_timeout for the CLI).
        with self._lock, _translated(self._path):
            self._conn.execute("BEGIN IMMEDIATE")
            try:
                yield self._conn
                # synchronous=FULL: the commit is on disk when this returns (persist, then act).
                self._conn.execute("COMMIT")
            except BaseException:
                # SQLite may already have rolled back (disk full, I/O error); a failed COMMIT
                # (busy) leaves the transaction open.
                if self._conn.in_transaction:
                    self._conn.execute("ROLLBACK")
                raise

    # ------------------------------------------------------------------ jobs

    def insert(self, job: Job, *, event: str, detail: Mapping[str, Any] | None = None) -> Job:
        """Store a new job (its timestamps as given) with its first event, in one transaction.

        Returns the job with its new `id`. Raises ValueError if it already has one,
        JournalConflict if its project_id belongs to another job.
        """
        if job.id is not None:
            raise ValueError(f"job {job.id} is already in the journal; use save()")
        with self._writing() as conn:
            job_id = conn.execute(_JOB_INSERT_SQL, _job_values(job)).lastrowid
            assert job_id is not None  # an INSERT always sets it
            _append_event(conn, job_id, job.updated_at, None, job.state, event, detail)
        return dataclasses.replace(job, id=job_id)

    def save(
        self,
        job: Job,
        *,
        event: str,
        detail: Mapping[str, Any] | None = None,
        expect_state: JobState | None = None,
    ) -> Job:
        """Update a stored job and append its event (at `job.updated_at`) in one transaction.

        Returns `job`. Raises JournalConflict when the job is unknown, when its stored state is
        not `expect_state` (if given) or its project_id belongs to another job; IllegalTransition
        when the stored state cannot move to `job.state`. Nothing is written when it raises.
        """
        if job.id is None:
            raise ValueError("a job without an id is not in the journal yet; use insert()")
        with self._writing() as conn:
            row = conn.execute("SELECT state FROM jobs WHERE id = ?", (job.id,)).fetchone()
            if row is None:
                raise JournalConflict(f"job {job.id} is not in the journal", job_id=job.id)
            stored = JobState(row["state"])
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
            conn.execute(_JOB_UPDATE_SQL, [*_job_values(job), job.id])
            _append_event(conn, job.id, job.updated_at, stored, job.state, event, detail)
        return job

    def get(self, job_id: int) -> Job | None:
        """Return the job with this id, or None."""
        return self._one("SELECT * FROM jobs WHERE id = ?", (job_id,))

    def by_project_id(self, project_id: str) -> Job | None:
        """Return the job that owns this Magic Hour project id, or None."""
        return self._one("SELECT * FROM jobs WHERE project_id = ?", (project_id,))

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

    def unfinished(self) -> list[Job]:
        """Return every job not done or failed, oldest (lowest id) first."""
        marks = ", ".join("?" for _ in _TERMINAL_VALUES)
        return self._many(
            f"SELECT * FROM jobs WHERE state NOT IN ({marks}) ORDER BY id", _TERMINAL_VALUES
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
            (folder, rel_path, size, mtime_ns, _encode_inode(inode)),
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

    def credits_spent(self, day: str) -> int:
        """Return credits spent on `day` (YYYY-MM-DD, by credits_day).

        Each job counts its best-known charge: final, else charged at create, else the estimate.
        """
        with self._reading() as conn:
            booked = conn.execute(
                "SELECT COALESCE(SUM(credits), 0) AS spent FROM charges WHERE day = ?", (day,)
            ).fetchone()
            # Jobs whose project is not booked yet (a create in flight or ambiguous) count too.
            row = conn.execute(
                "SELECT COALESCE(SUM(COALESCE(credits_final, credits_charged, credits_estimate,"
                " 0)), 0) AS spent FROM jobs WHERE credits_day = ? AND (project_id IS NULL"
                " OR project_id NOT IN (SELECT project_id FROM charges))",
                (day,),
            ).fetchone()
        return int(booked["spent"]) + int(row["spent"])

    def book_charge(
        self, *, job_id: int, project_id: str, day: str, credits: int, at: float
    ) -> None:
        """Record (or correct) what the service charged for one project, booked to `day`."""
        with self._writing() as conn:
            conn.execute(
                "INSERT INTO charges (project_id, job_id, day, credits, updated_at)"
                " VALUES (?, ?, ?, ?, ?) ON CONFLICT (project_id) DO UPDATE SET"
                " credits = excluded.credits, updated_at = excluded.updated_at",
                (project_id, job_id, day, credits, at),
            )

    def _one(self, sql: str, params: Collection[Any]) -> Job | None:
        with self._reading() as conn:
            row = conn.execute(sql, tuple(params)).fetchone()
        return _job_from_row(row) if row is not None else None

    def _many(self, sql: str, params: Collection[Any]) -> list[Job]:
        with self._reading() as conn:
            rows = conn.execute(sql, tuple(params)).fetchall()
        return [_job_from_row(row) for row in rows]

    # ------------------------------------------------------------------ requests

    def add_request(
        self,
        kind: str,
        job_id: int | None,
        *,
        at: float,
        detail: Mapping[str, Any] | None = None,
    ) -> int:
        """Queue a request (e.g. "retry") for the daemon. Returns its id.

        Raises JournalConflict when `job_id` names no job.
        """
        with self._writing() as conn:
            if (
                job_id is not None
                and not conn.execute("SELECT 1 FROM jobs WHERE id = ?", (job_id,)).fetchone()
            ):
                raise JournalConflict(f"job {job_id} is not in the journal", job_id=job_id)
            request_id = conn.execute(
                "INSERT INTO requests (kind, job_id, created_at, detail) VALUES (?, ?, ?, ?)",
                (kind, job_id, at, _dump_detail(detail)),
            ).lastrowid
        assert request_id is not None
        return request_id

    def pending_requests(self) -> list[Request]:
        """Return requests not yet finished, in the order they were made."""
        with self._reading() as conn:
            rows = conn.execute(
                "SELECT * FROM requests WHERE handled_at IS NULL ORDER BY id"
            ).fetchall()
        return [_request_from_row(row) for row in rows]

    def request(self, request_id: int) -> Request | None:
        """Return one request, finished or not, or None (the CLI polls it for the result)."""
        with self._reading() as conn:
            row = conn.execute("SELECT * FROM requests WHERE id = ?", (request_id,)).fetchone()
        return _request_from_row(row) if row is not None else None

    def finish_request(self, request_id: int, *, at: float, result: str) -> None:
        """Mark a request handled with a one-line `result`.

        Raises JournalConflict when it is unknown or already finished.
        """
        with self._writing() as conn:
            changed = conn.execute(
                "UPDATE requests SET handled_at = ?, result = ?"
                " WHERE id = ? AND handled_at IS NULL",
                (at, result, request_id),
            ).rowcount
            if changed != 1:
                raise JournalConflict(f"request {request_id} is unknown or already finished")

    # ------------------------------------------------------------------ folders and meta

    def set_folder_status(
        self,
        folder: str,
        *,
        watch_mode: str,
        watch_reason: str,
        outage: str | None,
        last_scan_at: float | None,
        at: float,
    ) -> None:
        """Record how the daemon watches `folder` now (replacing what was recorded before)."""
        with self._writing() as conn:
            conn.execute(
                "INSERT INTO folders (name, watch_mode, watch_reason, outage, last_scan_at,"
                " updated_at) VALUES (?, ?, ?, ?, ?, ?) ON CONFLICT (name) DO UPDATE SET"
                " watch_mode = excluded.watch_mode, watch_reason = excluded.watch_reason,"
                " outage = excluded.outage, last_scan_at = excluded.last_scan_at,"
                " updated_at = excluded.updated_at",
                (folder, watch_mode, watch_reason, outage, last_scan_at, at),
            )

    def folder_statuses(self) -> dict[str, FolderStatus]:
        """Return the last recorded status of every folder, by folder name."""
        with self._reading() as conn:
            rows = conn.execute("SELECT * FROM folders ORDER BY name").fetchall()
        return {
            row["name"]: FolderStatus(
                folder=row["name"],
                watch_mode=row["watch_mode"],
                watch_reason=row["watch_reason"],
                outage=row["outage"],
                last_scan_at=row["last_scan_at"],
                updated_at=row["updated_at"],
            )
            for row in rows
        }

    def set_meta(self, key: str, value: str) -> None:
        """Store a small fact (daemon pid, heartbeat, notes) under `key`, replacing the old one."""
        with self._writing() as conn:
            conn.execute(
                "INSERT INTO meta (key, value) VALUES (?, ?)"
                " ON CONFLICT (key) DO UPDATE SET value = excluded.value",
                (key, value),
            )

    def get_meta(self, key: str) -> str | None:
        """Return the fact stored under `key`, or None."""
        with self._reading() as conn:
            row = conn.execute("SELECT value FROM meta WHERE key = ?", (key,)).fetchone()
        return str(row["value"]) if row is not None else None

    def set_progress(self, job_id: int, progress: float) -> None:
        """Store a transfer's progress (0..1) for `status`; no event, no state change."""
        with self._writing() as conn:
            conn.execute("UPDATE jobs SET progress = ? WHERE id = ?", (progress, job_id))

    def writable_check(self) -> bool:
        """Return True when a tiny write (rolled back) succeeds now; False otherwise (/healthz)."""
        with self._lock:
            if self._readonly or self._closed:
                return False
            try:
                self._conn.execute("BEGIN IMMEDIATE")
                try:
                    self._conn.execute(
                        "INSERT OR REPLACE INTO meta (key, value) VALUES ('healthz', 'probe')"
                    )
                finally:
                    self._conn.execute("ROLLBACK")
            except sqlite3.Error:
                return False
            return True


@contextlib.contextmanager
def _translated(path: Path) -> Iterator[None]:
    """The one place sqlite3 errors become ours."""
    try:
        yield
    except sqlite3.IntegrityError as exc:
        raise JournalConflict(f"journal {path}: {exc}") from exc
    except sqlite3.Error as exc:
        raise StateDirError(f"journal {path}: {exc}") from exc


def _append_event(
    conn: sqlite3.Connection,
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
            _dump_detail(detail),
        ),
    )


def _request_from_row(row: sqlite3.Row) -> Request:
    return Request(
        id=row["id"],
        kind=row["kind"],
        job_id=row["job_id"],
        created_at=row["created_at"],
        detail=json.loads(row["detail"]),
        handled_at=row["handled_at"],
        result=row["result"],
    )


def _read_pid(fd: int) -> int | None:
    try:
        text = os.pread(fd, 64, 0).decode("ascii", "replace").strip()
    except OSError:
        return None
    return int(text) if text.isdigit() else None
