"""The journal: one SQLite file in the state_dir that makes the daemon durable.

Every job record, every state change (as an event), the CLI's requests to a running daemon,
per-folder watch status and a few key/value facts live here. Writes are one transaction each,
committed with `synchronous=FULL` in WAL mode before the call returns, so the daemon can
persist first and act second. `status` opens the same file read-only while the daemon runs.

sqlite3 errors are translated in one place (`journal_connection.translated`): an integrity
clash becomes `JournalConflict`, anything else `StateDirError` (the journal is unusable).

This module is the journal's public face; `Journal` is assembled from parts that each own some
tables, all sharing one connection and one lock (`JournalConnection`):

- journal_connection: opening/migrating the file, transactions, the daemon lock, health probe
- journal_schema: MIGRATIONS, SCHEMA_VERSION, apply_migrations
- journal_jobs: job rows and their events
- journal_requests: the CLI's requests to the daemon
- journal_charges: credits booked per project and spent per day
- journal_folders: per-folder watch status and key/value meta
- journal_history: compacting old events of finished jobs (history retention)
- journal_backup: a consistent online copy of the journal file
"""

from __future__ import annotations

from mh_watchd.adapters.journal_backup import JournalBackup
from mh_watchd.adapters.journal_charges import CreditCharges
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

__all__ = [
    "BUSY_TIMEOUT_MS",
    "JOURNAL_FILENAME",
    "LOCK_FILENAME",
    "MIGRATIONS",
    "SCHEMA_VERSION",
    "STATE_DIR_MODE",
    "BulkEvent",
    "FolderStatus",
    "JobEvent",
    "Journal",
    "JournalConflict",
    "Request",
    "apply_migrations",
]


class Journal(JobRecords, CliRequests, CreditCharges, FoldersAndMeta, EventHistory, JournalBackup):
    """The daemon's durable memory, safe to share between threads (one lock around each call).

    Open it with `Journal.open(state_dir, readonly=...)`; close it (or use it as a context
    manager) when done. Its methods come from the parts it is made of, one per set of tables:
    JobRecords (jobs, events), CliRequests (requests), CreditCharges (charges), FoldersAndMeta
    (folders, meta), all on JournalConnection (the connection, transactions, the daemon lock).
    """
