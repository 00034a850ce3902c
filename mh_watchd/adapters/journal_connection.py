"""The journal's connection: opening and migrating it, transactions, the daemon lock.

`JournalConnection` owns the one database connection (a `Backend`: SQLite by default, or
PostgreSQL when `daemon.state_url` is set) and the one threading lock every journal call goes
through; the other parts of `Journal` (jobs, requests, charges, folders) build on its
`_reading` / `_writing` transactions. Database errors are translated by the back end: an
integrity clash becomes `JournalConflict`, anything else `StateDirError`.

A journal written by a daemon knows the daemon's host name (`host`): the jobs it holds carry it
(see journal_claims), and on a shared database one daemon per host name may run.
"""

from __future__ import annotations

import contextlib
import fcntl
import os
import threading
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Self

from mh_watchd.adapters.journal_backend import (
    BUSY_TIMEOUT_MS,
    JOURNAL_FILENAME,
    Backend,
    Conn,
    Dialect,
    JournalConflict,
    SqliteBackend,
    lock_key,
    translated,
)
from mh_watchd.adapters.journal_schema import MIGRATIONS, SCHEMA_VERSION, apply_migrations
from mh_watchd.core.errors import AlreadyRunningError, StateDirError

__all__ = [
    "BUSY_TIMEOUT_MS",
    "JOURNAL_FILENAME",
    "LOCK_FILENAME",
    "STATE_DIR_MODE",
    "JournalConflict",
    "JournalConnection",
    "translated",
]

LOCK_FILENAME = "mh-watchd.lock"
STATE_DIR_MODE = 0o750
DEFAULT_LEASE_SECONDS = 60.0
HOST_LOCK_WAIT_SECONDS = 2.0


class JournalConnection:
    """The journal's connection, lifecycle and daemon lock; the base of every part of `Journal`.

    Contract for the parts built on it: touch the connection only inside `_reading()` (queries)
    or `_writing()` (exactly one transaction, rolled back when the body raises). Both hold the
    instance's lock, so calls from several threads never interleave, and both translate the
    database's errors into JournalConflict / StateDirError.
    """

    def __init__(self, backend: Backend, state_dir: Path | None, *, readonly: bool) -> None:
        """Wrap an open, migrated back end; use `Journal.open` instead."""
        self._db = backend
        self._dialect: Dialect = backend.dialect
        self._state_dir = state_dir
        self._path = (
            backend.path
            if isinstance(backend, SqliteBackend)
            else Path(state_dir or ".") / JOURNAL_FILENAME
        )
        self._readonly = readonly
        self._lock = threading.Lock()
        self._lock_fd: int | None = None
        self._closed = False
        self._host: str | None = None
        self._lease_seconds = DEFAULT_LEASE_SECONDS

    # ------------------------------------------------------------------ lifecycle

    @classmethod
    def open(
        cls,
        state_dir: Path | None,
        *,
        readonly: bool = False,
        url: str | None = None,
        timeout_seconds: float = 30.0,
    ) -> Self:
        """Open (creating and migrating unless `readonly`) the journal: the SQLite file in
        `state_dir`, or the PostgreSQL database at `url` ("postgresql://...").

        Returns the Journal. Raises StateDirError when the directory, file or database is
        unusable, when `readonly` finds no journal or an older schema, or when the schema is
        newer than ours. `timeout_seconds` bounds each call to a PostgreSQL journal.
        """
        if url:
            from mh_watchd.adapters.journal_pg import PgBackend

            pg = PgBackend.open(url, readonly=readonly, timeout_seconds=timeout_seconds)
            return cls(pg, state_dir, readonly=readonly)
        if state_dir is None:
            raise StateDirError("no state_dir and no state_url: nowhere to keep the journal")
        path = state_dir / JOURNAL_FILENAME
        if readonly:
            if not path.is_file():
                raise StateDirError(f"no journal yet at {path}")
            backend = SqliteBackend.connect(path, readonly=True)
            try:
                cls._check_readonly_version(backend)
            except BaseException:
                backend.close()
                raise
            return cls(backend, state_dir, readonly=True)

        try:
            state_dir.mkdir(mode=STATE_DIR_MODE, parents=True, exist_ok=True)
        except OSError as exc:
            raise StateDirError(f"cannot create state_dir {state_dir}: {exc}") from exc
        if not state_dir.is_dir():
            raise StateDirError(f"state_dir {state_dir} is not a directory")
        backend = SqliteBackend.connect(path, readonly=False)
        conn = backend.raw
        try:
            with backend.translated():
                mode = conn.execute("PRAGMA journal_mode = WAL").fetchone()[0]
                if str(mode).lower() != "wal":
                    raise StateDirError(
                        f"journal {path} cannot use WAL mode (got {mode!r}); "
                        "is the state_dir on a local filesystem?"
                    )
                conn.execute("PRAGMA synchronous = FULL")
                apply_migrations(conn, MIGRATIONS)
        except BaseException:
            backend.close()
            raise
        return cls(backend, state_dir, readonly=False)

    @staticmethod
    def _check_readonly_version(backend: SqliteBackend) -> None:
        path = backend.path
        with backend.translated():
            backend.raw.execute("PRAGMA query_only = ON")
            found = int(backend.raw.execute("PRAGMA user_version").fetchone()[0])
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
            self._db.close()
            if self._lock_fd is not None:
                os.close(self._lock_fd)  # closing the descriptor drops the flock
                self._lock_fd = None

    def __enter__(self) -> Self:
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.close()

    @property
    def path(self) -> Path:
        """The journal file (SQLite); for PostgreSQL, where it would be in the state_dir."""
        return self._path

    @property
    def where(self) -> str:
        """Names the journal in messages: its file, or its database URL without a password."""
        return self._db.where

    @property
    def readonly(self) -> bool:
        """True when opened read-only (for `status`)."""
        return self._readonly

    @property
    def shared(self) -> bool:
        """True when several hosts may use this journal at once (PostgreSQL)."""
        return self._dialect.shared

    @property
    def host(self) -> str | None:
        """The host name the jobs this journal writes are held by (None: a tool, no claims)."""
        return self._host

    def set_host(self, host: str, *, lease_seconds: float = DEFAULT_LEASE_SECONDS) -> None:
        """Write as daemon `host`: new and saved jobs are held by it, under leases of
        `lease_seconds` (renewed by `renew_claims`)."""
        if not host:
            raise ValueError("a host name cannot be empty")
        self._host = host
        self._lease_seconds = float(lease_seconds)

    # ------------------------------------------------------------------ single instance

    def acquire_lock(self) -> None:
        """Take the state_dir's exclusive daemon lock and write our pid into the lock file; on
        a shared database also the lock of this host name, so one daemon runs per host name.

        Returns once held (again: a no-op). Raises AlreadyRunningError naming the holder's pid
        when another process (or Journal) holds it, StateDirError when the file is unusable.
        """
        with self._lock:
            if self._lock_fd is not None:
                return
            if self._readonly:
                raise StateDirError("a read-only journal cannot take the daemon lock")
            if self._state_dir is None:
                raise StateDirError("the daemon lock needs a state_dir")
            fd = _flock_state_dir(self._state_dir)
            if self._dialect.shared:
                try:
                    self._take_host_lock()
                except BaseException:
                    os.close(fd)
                    raise
            self._lock_fd = fd

    def _take_host_lock(self) -> None:
        from mh_watchd.adapters.journal_pg import PgBackend

        assert isinstance(self._db, PgBackend)
        host = self._host
        if host is None:
            raise StateDirError("a daemon on a shared journal needs a host name")
        # A daemon restarted at once may find its former self's lock not yet let go: the
        # server frees a closed session's locks a moment after the close returns.
        deadline = time.monotonic() + HOST_LOCK_WAIT_SECONDS
        while True:
            with self._db.translated():
                taken = self._db.session_lock(lock_key("host", host))
            if taken or time.monotonic() >= deadline:
                break
            time.sleep(0.1)
        if not taken:
            raise AlreadyRunningError(
                f"another mh-watchd runs as host {host!r} on the journal at {self.where}; "
                "give each daemon its own daemon.host_name",
                pid=None,
            )

    # ------------------------------------------------------------------ transactions

    @contextlib.contextmanager
    def _reading(self) -> Iterator[Conn]:
        with self._lock, self._db.translated():
            yield self._db.connection()

    @contextlib.contextmanager
    def _writing(self) -> Iterator[Conn]:
        # Callers hold no lock; this takes it, so one transaction at a time per Journal.
        with self._lock, self._db.translated():
            conn = self._db.connection()
            self._db.begin()
            try:
                yield conn
                self._db.commit()
            except BaseException:
                self._db.rollback()
                raise

    def _notify(self, conn: Conn, what: str) -> None:
        """Inside a write: wake the other hosts with `what` once it commits (shared only)."""
        if self._dialect.notify is not None:
            conn.execute(self._dialect.notify, (what,))

    # ------------------------------------------------------------------ health

    def writable_check(self) -> bool:
        """Return True when a tiny write (rolled back) succeeds now; False otherwise (/healthz)."""
        with self._lock:
            if self._readonly or self._closed:
                return False
            try:
                with self._db.translated():
                    conn = self._db.connection()
                    self._db.begin()
                    try:
                        conn.execute(
                            "INSERT INTO meta (key, value) VALUES ('healthz', 'probe')"
                            " ON CONFLICT (key) DO UPDATE SET value = excluded.value"
                        )
                    finally:
                        self._db.rollback()
            except StateDirError:
                return False
            return True


def _flock_state_dir(state_dir: Path) -> int:
    lock_path = state_dir / LOCK_FILENAME
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
            f"another mh-watchd ({who}) is running on state_dir {state_dir}", pid=pid
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
    return fd


def _read_pid(fd: int) -> int | None:
    try:
        text = os.pread(fd, 64, 0).decode("ascii", "replace").strip()
    except OSError:
        return None
    return int(text) if text.isdigit() else None
