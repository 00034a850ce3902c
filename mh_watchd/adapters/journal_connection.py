"""The journal's SQLite connection: opening and migrating it, transactions, the daemon lock.

`JournalConnection` owns the one connection and the one threading lock every journal call goes
through; the other parts of `Journal` (jobs, requests, charges, folders) build on its
`_reading` / `_writing` transactions. sqlite3 errors are translated in one place (`translated`):
an integrity clash becomes `JournalConflict`, anything else `StateDirError`.
"""

from __future__ import annotations

import contextlib
import fcntl
import os
import sqlite3
import threading
from collections.abc import Iterator
from pathlib import Path
from typing import Self

from mh_watchd.adapters.journal_schema import MIGRATIONS, SCHEMA_VERSION, apply_migrations
from mh_watchd.core.errors import AlreadyRunningError, MhWatchdError, StateDirError
from mh_watchd.core.jobs import JobState

JOURNAL_FILENAME = "journal.sqlite3"
LOCK_FILENAME = "mh-watchd.lock"
BUSY_TIMEOUT_MS = 5000
STATE_DIR_MODE = 0o750


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


class JournalConnection:
    """The journal's connection, lifecycle and daemon lock; the base of every part of `Journal`.

    Contract for the parts built on it: touch the connection only inside `_reading()` (queries)
    or `_writing()` (exactly one BEGIN IMMEDIATE ... COMMIT transaction, rolled back when the
    body raises). Both hold the instance's lock, so calls from several threads never interleave,
    and both translate sqlite3 errors into JournalConflict / StateDirError.
    """

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
    def open(cls, state_dir: Path, *, readonly: bool = False) -> Self:
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
            with translated(path):
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
            with translated(path):
                conn.row_factory = sqlite3.Row
                conn.execute(f"PRAGMA busy_timeout = {BUSY_TIMEOUT_MS}")
                conn.execute("PRAGMA foreign_keys = ON")
        except BaseException:
            conn.close()
            raise
        return conn

    @staticmethod
    def _check_readonly_version(conn: sqlite3.Connection, path: Path) -> None:
        with translated(path):
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

    def __enter__(self) -> Self:
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
        with self._lock, translated(self._path):
            yield self._conn

    @contextlib.contextmanager
    def _writing(self) -> Iterator[sqlite3.Connection]:
        # Callers hold no lock; this takes it, so one transaction at a time per Journal, and
        # BEGIN IMMEDIATE takes SQLite's write lock up front (waiting busy_timeout for the CLI).
        with self._lock, translated(self._path):
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

    # ------------------------------------------------------------------ health

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
def translated(path: Path) -> Iterator[None]:
    """The one place sqlite3 errors become ours."""
    try:
        yield
    except sqlite3.IntegrityError as exc:
        raise JournalConflict(f"journal {path}: {exc}") from exc
    except sqlite3.Error as exc:
        raise StateDirError(f"journal {path}: {exc}") from exc


def _read_pid(fd: int) -> int | None:
    try:
        text = os.pread(fd, 64, 0).decode("ascii", "replace").strip()
    except OSError:
        return None
    return int(text) if text.isdigit() else None
