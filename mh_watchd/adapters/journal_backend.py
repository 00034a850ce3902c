"""What the journal needs of a database, and the SQLite back end (the zero-set-up default).

The journal's parts write one SQL dialect: `?` placeholders, `RETURNING`, `ON CONFLICT ... DO
UPDATE`, rows read by column name. A `Backend` runs it on SQLite (this module) or PostgreSQL
(`journal_pg`); the few things the two spell differently are a `Dialect`: the database's clock,
row locks, advisory locks and notifications.
"""

from __future__ import annotations

import contextlib
import hashlib
import sqlite3
from collections.abc import Iterable, Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Protocol

from mh_watchd.core.errors import MhWatchdError, StateDirError
from mh_watchd.core.jobs import JobState

JOURNAL_FILENAME = "journal.sqlite3"
BUSY_TIMEOUT_MS = 5000


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


class ClaimLost(JournalConflict):
    """Another host holds the job now (this host's lease ran out and it was taken over)."""

    def __init__(self, message: str, *, job_id: int, holder: str) -> None:
        self.holder = holder
        super().__init__(message, job_id=job_id)


class OverBudget(JournalConflict):
    """A create would take the day's spending (on every host) over daily_credit_limit."""

    def __init__(self, message: str, *, job_id: int, spent: int) -> None:
        self.spent = spent
        super().__init__(message, job_id=job_id)


class Row(Protocol):
    """A row read by column name (sqlite3.Row, or psycopg's dict rows)."""

    def __getitem__(self, key: str, /) -> Any: ...


class Cursor(Protocol):
    """What the journal reads of a cursor (sqlite3's and psycopg's both fit)."""

    @property
    def rowcount(self) -> int: ...

    def fetchone(self) -> Any: ...

    def fetchall(self) -> Sequence[Any]: ...


class Conn(Protocol):
    """What the journal's parts do with a connection inside `_reading` / `_writing`."""

    def execute(self, sql: str, params: Sequence[Any] = (), /) -> Cursor: ...

    def executemany(self, sql: str, params: Iterable[Sequence[Any]], /) -> object: ...


@dataclass(frozen=True)
class Dialect:
    """The SQL the two databases spell differently."""

    name: str
    now: str  # an expression: the database's clock, in seconds since the epoch
    for_update: str  # appended to a SELECT that is about to update its rows
    skip_locked: str  # appended to a SELECT that claims rows other hosts may be claiming
    advisory_lock: str | None  # a statement taking a transaction-scoped lock on a ? key
    notify: str | None  # a statement sending ? to the other hosts on commit

    @property
    def shared(self) -> bool:
        """True when several hosts may use this journal at once."""
        return self.advisory_lock is not None


SQLITE = Dialect(
    name="sqlite",
    now="((julianday('now') - 2440587.5) * 86400.0)",
    for_update="",  # BEGIN IMMEDIATE already holds the one write lock
    skip_locked="",
    advisory_lock=None,
    notify=None,
)


def lock_key(*parts: str) -> int:
    """A stable signed 64-bit key for an advisory lock on `parts`."""
    digest = hashlib.blake2b("\x1f".join(parts).encode(), digest_size=8).digest()
    return int.from_bytes(digest, "big", signed=True)


class Backend(Protocol):
    """One database connection as the journal uses it; not thread-safe (the journal locks)."""

    dialect: Dialect
    where: str  # names the database in messages: a file path, or a URL without its password

    def connection(self) -> Conn:
        """The connection, opened again first if it broke (raises StateDirError if it can't)."""
        ...

    def begin(self) -> None: ...

    def commit(self) -> None: ...

    def rollback(self) -> None:
        """Roll back the open transaction, if any; never raises."""
        ...

    def translated(self) -> contextlib.AbstractContextManager[None]:
        """Turn this database's errors into JournalConflict / StateDirError."""
        ...

    def close(self) -> None: ...


class SqliteBackend:
    """The journal in one SQLite file (WAL, synchronous=FULL): one host, nothing to set up."""

    dialect = SQLITE

    def __init__(self, conn: sqlite3.Connection, path: Path) -> None:
        self._conn = conn
        self.path = path
        self.where = str(path)

    @classmethod
    def connect(cls, path: Path, *, readonly: bool) -> SqliteBackend:
        """Open the file (read-only through a `mode=ro` URI). Raises StateDirError."""
        target = path.absolute().as_uri() + "?mode=ro" if readonly else str(path)
        try:
            # isolation_level=None: we issue BEGIN/COMMIT ourselves, so DDL in migrations and
            # every write is exactly one transaction. check_same_thread=False: the journal's
            # lock serializes every use of the connection instead.
            conn = sqlite3.connect(
                target,
                uri=readonly,
                isolation_level=None,
                check_same_thread=False,
                timeout=BUSY_TIMEOUT_MS / 1000,
            )
        except sqlite3.Error as exc:
            raise StateDirError(f"cannot open journal {path}: {exc}") from exc
        backend = cls(conn, path)
        try:
            with backend.translated():
                conn.row_factory = sqlite3.Row
                conn.execute(f"PRAGMA busy_timeout = {BUSY_TIMEOUT_MS}")
                conn.execute("PRAGMA foreign_keys = ON")
        except BaseException:
            conn.close()
            raise
        return backend

    @property
    def raw(self) -> sqlite3.Connection:
        """The sqlite3 connection (for PRAGMAs and migrations)."""
        return self._conn

    def connection(self) -> Conn:
        return self._conn

    def begin(self) -> None:
        # IMMEDIATE takes SQLite's write lock up front (waiting busy_timeout for the CLI).
        self._conn.execute("BEGIN IMMEDIATE")

    def commit(self) -> None:
        # synchronous=FULL: the commit is on disk when this returns (persist, then act).
        self._conn.execute("COMMIT")

    def rollback(self) -> None:
        # SQLite may already have rolled back (disk full, I/O error); a failed COMMIT (busy)
        # leaves the transaction open.
        if self._conn.in_transaction:
            with contextlib.suppress(sqlite3.Error):
                self._conn.execute("ROLLBACK")

    def translated(self) -> contextlib.AbstractContextManager[None]:
        return translated(self.path)

    def close(self) -> None:
        self._conn.close()


@contextlib.contextmanager
def translated(path: Path) -> Iterator[None]:
    """The one place sqlite3 errors on the journal file at `path` become ours."""
    try:
        yield
    except sqlite3.IntegrityError as exc:
        raise JournalConflict(f"journal {path}: {exc}") from exc
    except sqlite3.Error as exc:
        raise StateDirError(f"journal {path}: {exc}") from exc
