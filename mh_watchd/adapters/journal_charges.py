"""The journal's credit bookkeeping: what each accepted project cost, and spend per day."""

from __future__ import annotations

from mh_watchd.adapters.journal_backend import Conn
from mh_watchd.adapters.journal_connection import JournalConnection


class CreditCharges(JournalConnection):
    """The `charges` table (one row per project the service accepted) and daily spend.

    A retried job's earlier render stays booked to its day after the job moves on to a new
    project; `credits_spent` adds the jobs whose project is not booked yet.
    """

    def credits_spent(self, day: str) -> int:
        """Return credits spent on `day` (YYYY-MM-DD, by credits_day), on every host.

        Each job counts its best-known charge: final, else charged at create, else the estimate.
        """
        with self._reading() as conn:
            return spent_on(conn, day)

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


def spent_on(conn: Conn, day: str, *, except_job: int | None = None) -> int:
    """Credits spent on `day` as `credits_spent` counts them, leaving out job `except_job`."""
    booked = conn.execute(
        "SELECT COALESCE(SUM(credits), 0) AS spent FROM charges WHERE day = ?", (day,)
    ).fetchone()
    # Jobs whose project is not booked yet (a create in flight or ambiguous) count too.
    row = conn.execute(
        "SELECT COALESCE(SUM(COALESCE(credits_final, credits_charged, credits_estimate,"
        " 0)), 0) AS spent FROM jobs WHERE credits_day = ? AND id != ? AND (project_id"
        " IS NULL OR project_id NOT IN (SELECT project_id FROM charges))",
        (day, except_job if except_job is not None else 0),
    ).fetchone()
    return int(booked["spent"]) + int(row["spent"])
