"""The journal's CLI requests: what the CLI asks a running daemon to do, and the answers.

The CLI queues a request (`add_request`), the daemon handles each pending one once and records
a one-line result (`finish_request`), and the CLI polls `request` for that result.
"""

from __future__ import annotations

import json
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

from mh_watchd.adapters.journal_backend import Row
from mh_watchd.adapters.journal_connection import JournalConflict, JournalConnection
from mh_watchd.adapters.journal_rows import dump_detail


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


class CliRequests(JournalConnection):
    """The `requests` table: queue, list pending, read one, finish once."""

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
            request_id = int(
                conn.execute(
                    "INSERT INTO requests (kind, job_id, created_at, detail)"
                    " VALUES (?, ?, ?, ?) RETURNING id",
                    (kind, job_id, at, dump_detail(detail)),
                ).fetchone()["id"]
            )
            self._notify(conn, "request")
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

    def claim_request(self, request_id: int) -> bool:
        """Take a pending request for this host (`set_host`), so no other host handles it too.

        Returns True when it is this host's to handle (taken now, or already), False when it is
        finished or another host took it.
        """
        with self._writing() as conn:
            changed = conn.execute(
                "UPDATE requests SET claimed_by = ? WHERE id = ? AND handled_at IS NULL"
                " AND (claimed_by IS NULL OR claimed_by = ?)",
                (self._host, request_id, self._host),
            ).rowcount
        return changed == 1

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


def _request_from_row(row: Row) -> Request:
    return Request(
        id=row["id"],
        kind=row["kind"],
        job_id=row["job_id"],
        created_at=row["created_at"],
        detail=json.loads(row["detail"]),
        handled_at=row["handled_at"],
        result=row["result"],
    )
