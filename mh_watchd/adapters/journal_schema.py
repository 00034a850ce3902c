"""The journal's schema: the ordered migrations and the one function that applies them.

A journal's `PRAGMA user_version` is the number of MIGRATIONS applied to it; SCHEMA_VERSION is
the version this mh-watchd writes. Opening a journal (see `JournalConnection.open`) migrates it.
"""

from __future__ import annotations

import sqlite3

from mh_watchd.core.errors import StateDirError

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
    (
        # Fast at a million finished jobs (issue 13). `status` counts jobs by folder and state
        # from this index alone (covering: no table rows read, no sort), and finds the newest
        # jobs of a state (recent deliveries) by walking the state's end of the second one
        # (its rowid tail orders ties by id) instead of sorting every done job.
        "CREATE INDEX jobs_by_folder_state ON jobs (folder, state)",
        "CREATE INDEX jobs_by_state_updated ON jobs (state, updated_at)",
    ),
    (
        # Several hosts, one queue (issue 13). A job is held by the host that works on it
        # under a lease it renews (on SQLite there is one host, and the lease only tells a
        # restart which jobs were its own); a CLI request is claimed by the host that handles
        # it; a folder's status names the host that saw it; each daemon's host says it is alive.
        "ALTER TABLE jobs ADD COLUMN holder TEXT",
        "ALTER TABLE jobs ADD COLUMN lease_until REAL",
        "CREATE INDEX jobs_by_holder ON jobs (holder) WHERE holder IS NOT NULL",
        "ALTER TABLE requests ADD COLUMN claimed_by TEXT",
        "ALTER TABLE folders ADD COLUMN host TEXT",
        """
        CREATE TABLE hosts (
            name TEXT PRIMARY KEY,
            pid INTEGER,
            version TEXT,
            started_at REAL,
            seen_at REAL NOT NULL
        )
        """,
    ),
)
SCHEMA_VERSION: int = len(MIGRATIONS)


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
