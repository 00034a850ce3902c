"""The journal: one SQLite file in the state_dir (or one PostgreSQL database shared by several
hosts, `daemon.state_url`) that makes the daemon durable.

Every job record, every state change (as an event), the CLI's requests to a running daemon,
per-folder watch status and a few key/value facts live here. Writes are one transaction each,
committed with `synchronous=FULL` in WAL mode before the call returns, so the daemon can
persist first and act second. `status` opens the same file read-only while the daemon runs.

sqlite3 errors are translated in one place (`journal_connection.translated`): an integrity
clash becomes `JournalConflict`, anything else `StateDirError` (the journal is unusable).

This module is the journal's public face; `Journal` is assembled from parts that each own some
tables, all sharing one connection and one lock (`JournalConnection`):

- journal_backend: what the journal needs of a database; the SQLite back end
- journal_pg: the PostgreSQL back end (psycopg 3, an optional extra), its schema, LISTEN
- journal_connection: opening/migrating the journal, transactions, the daemon lock
- journal_claims: which host holds which job (leases), and the hosts sharing the journal
- journal_schema: MIGRATIONS, SCHEMA_VERSION, apply_migrations
- journal_jobs: job rows and their events
- journal_requests: the CLI's requests to the daemon
- journal_charges: credits booked per project and spent per day
- journal_folders: per-folder watch status and key/value meta
- journal_history: compacting old events of finished jobs (history retention)
- journal_backup: a consistent online copy of the journal file
"""

from __future__ import annotations

import socket
from collections.abc import Callable
from pathlib import Path
from typing import Protocol

from mh_watchd.adapters.journal_backend import ClaimLost, OverBudget
from mh_watchd.adapters.journal_backup import JournalBackup
from mh_watchd.adapters.journal_charges import CreditCharges
from mh_watchd.adapters.journal_claims import Claimed, HostInfo, JobClaims
from mh_watchd.adapters.journal_connection import (
    BUSY_TIMEOUT_MS,
    JOURNAL_FILENAME,
    LOCK_FILENAME,
    STATE_DIR_MODE,
    JournalConflict,
)
from mh_watchd.adapters.journal_folders import FoldersAndMeta, FolderStatus
from mh_watchd.adapters.journal_history import EventHistory
from mh_watchd.adapters.journal_jobs import BulkEvent, JobEvent, JobRecords
from mh_watchd.adapters.journal_requests import CliRequests, Request
from mh_watchd.adapters.journal_schema import MIGRATIONS, SCHEMA_VERSION, apply_migrations
from mh_watchd.core.config import DaemonConfig

__all__ = [
    "BUSY_TIMEOUT_MS",
    "JOURNAL_FILENAME",
    "LOCK_FILENAME",
    "MIGRATIONS",
    "SCHEMA_VERSION",
    "STATE_DIR_MODE",
    "BulkEvent",
    "ClaimLost",
    "Claimed",
    "FolderStatus",
    "HostInfo",
    "JobEvent",
    "Journal",
    "JournalConflict",
    "Listening",
    "OverBudget",
    "Request",
    "apply_migrations",
    "host_name",
    "open_journal",
]


class Journal(
    JobRecords,
    JobClaims,
    CliRequests,
    CreditCharges,
    FoldersAndMeta,
    EventHistory,
    JournalBackup,
):
    """The daemon's durable memory, safe to share between threads (one lock around each call).

    Open it with `Journal.open(state_dir, readonly=...)`; close it (or use it as a context
    manager) when done. Its methods come from the parts it is made of, one per set of tables:
    JobRecords (jobs, events), CliRequests (requests), CreditCharges (charges), FoldersAndMeta
    (folders, meta), all on JournalConnection (the connection, transactions, the daemon lock).
    """

    def listen(self, on_notify: Callable[[str], None]) -> Listening:
        """Call `on_notify(what)` in a thread of its own when another host wakes this one
        ("request": a CLI request came; "released": jobs became free to claim). On SQLite there
        is one host, and nothing to hear."""
        from mh_watchd.adapters.journal_pg import PgBackend

        if isinstance(self._db, PgBackend):
            return self._db.listen(on_notify)
        return _NotListening()


def open_journal(daemon: DaemonConfig, *, readonly: bool = False) -> Journal:
    """The journal `daemon` names: PostgreSQL at `state_url` when set, else the SQLite file in
    `state_dir`. Raises StateDirError as `Journal.open` does."""
    return Journal.open(
        Path(str(daemon.state_dir)),
        readonly=readonly,
        url=daemon.state_url or None,
        timeout_seconds=daemon.state_timeout_seconds,
    )


def host_name(daemon: DaemonConfig) -> str:
    """This daemon's name among the hosts sharing a journal: daemon.host_name, else the
    machine's host name."""
    return daemon.host_name or socket.gethostname() or "localhost"


class Listening(Protocol):
    def stop(self, timeout: float = ...) -> None: ...


class _NotListening:
    def stop(self, timeout: float = 5.0) -> None:
        return None
