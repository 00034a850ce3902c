"""Which host works on which job: claims under leases, and the hosts that share a journal.

A daemon (`set_host`) holds each unfinished job it works on: the job row names it (`holder`)
until `lease_until`, on the database's clock, so hosts with skewed clocks agree. The holder
renews its leases well before they run out (`renew_claims`); a host that stops renewing (it
died, or lost the database) loses its jobs to the next host that claims (`claim_jobs`), which
resumes them by the journal's rules, as after a restart. Claiming skips the rows another host is
claiming at that moment (`FOR UPDATE SKIP LOCKED` on PostgreSQL; SQLite has one writer).

`save` only writes jobs this host holds (journal_jobs), so a host that lost a job cannot write
over the new holder's progress.
"""

from __future__ import annotations

from collections.abc import Collection
from dataclasses import dataclass

from mh_watchd.adapters.journal_connection import JournalConnection
from mh_watchd.adapters.journal_jobs import UNFINISHED_VALUES, _append_event
from mh_watchd.adapters.journal_rows import job_from_row
from mh_watchd.core.jobs import Job, JobState

CLAIM_BATCH = 1000
_UNFINISHED_MARKS = ", ".join("?" for _ in UNFINISHED_VALUES)


@dataclass(frozen=True)
class HostInfo:
    """A daemon that uses (or used) this journal, by its host name."""

    name: str
    pid: int | None
    version: str | None
    started_at: float | None
    seen_at: float  # the database's clock at its last lease renewal


@dataclass(frozen=True)
class Claimed:
    """A job this host took, and who held it before (None: nobody, or this host itself)."""

    job: Job
    taken_from: str | None


class JobClaims(JournalConnection):
    """Claims on jobs (the `holder` and `lease_until` columns) and the `hosts` table."""

    @property
    def lease_seconds(self) -> float:
        return self._lease_seconds

    def register_host(self, *, pid: int, version: str) -> None:
        """Say this host (`set_host`) runs now: pid, version, start time."""
        now = self._dialect.now
        with self._writing() as conn:
            conn.execute(
                "INSERT INTO hosts (name, pid, version, started_at, seen_at)"
                f" VALUES (?, ?, ?, {now}, {now}) ON CONFLICT (name) DO UPDATE SET"
                " pid = excluded.pid, version = excluded.version,"
                " started_at = excluded.started_at, seen_at = excluded.seen_at",
                (self._need_host(), pid, version),
            )

    def hosts(self) -> list[HostInfo]:
        """Every host that used this journal, by name."""
        with self._reading() as conn:
            rows = conn.execute("SELECT * FROM hosts ORDER BY name").fetchall()
        return [
            HostInfo(
                name=row["name"],
                pid=row["pid"],
                version=row["version"],
                started_at=row["started_at"],
                seen_at=row["seen_at"],
            )
            for row in rows
        ]

    def database_now(self) -> float:
        """The database's clock (leases and `seen_at` are on it), in seconds since the epoch."""
        with self._reading() as conn:
            return float(conn.execute(f"SELECT {self._dialect.now} AS now").fetchone()["now"])

    def claim_jobs(
        self,
        *,
        folders: Collection[str] | None,
        include_own: bool = False,
        limit: int = CLAIM_BATCH,
    ) -> list[Claimed]:
        """Take unfinished jobs that nobody holds or whose lease ran out, in `folders` (None:
        every folder), at most `limit`, oldest first. `include_own` takes this host's own jobs
        too, whatever their lease (a restart: the host that held them is us).

        Returns what was taken, each with the host it was taken from. A takeover from another
        host is written to the job's history (`job.taken_over`).
        """
        host = self._need_host()
        if folders is not None and not folders:
            return []
        where = f"state IN ({_UNFINISHED_MARKS})"
        params: list[object] = list(UNFINISHED_VALUES)
        if folders is not None:
            where += f" AND folder IN ({', '.join('?' for _ in folders)})"
            params += sorted(folders)
        now = self._dialect.now
        free = f"holder IS NULL OR lease_until IS NULL OR lease_until < {now}"
        if include_own:
            free += " OR holder = ?"
            params.append(host)
        with self._writing() as conn:
            rows = conn.execute(
                f"SELECT id, holder, state, updated_at FROM jobs WHERE {where} AND ({free})"
                f" ORDER BY id LIMIT ?{self._dialect.skip_locked}",
                [*params, limit],
            ).fetchall()
            if not rows:
                return []
            ids = [int(r["id"]) for r in rows]
            marks = ", ".join("?" for _ in ids)
            conn.execute(
                f"UPDATE jobs SET holder = ?, lease_until = {now} + ? WHERE id IN ({marks})",
                [host, self._lease_seconds, *ids],
            )
            before = {int(r["id"]): r["holder"] for r in rows}
            for r in rows:
                if r["holder"] not in (None, host):
                    state = JobState(r["state"])
                    _append_event(
                        conn,
                        int(r["id"]),
                        float(r["updated_at"]),
                        state,
                        state,
                        "job.taken_over",
                        {"from_host": r["holder"], "to_host": host},
                    )
            jobs = conn.execute(
                f"SELECT * FROM jobs WHERE id IN ({marks}) ORDER BY id", ids
            ).fetchall()
        return [
            Claimed(
                job_from_row(row),
                before[int(row["id"])] if before[int(row["id"])] != host else None,
            )
            for row in jobs
        ]

    def renew_claims(self) -> set[int]:
        """Renew this host's leases; returns the ids of the unfinished jobs it still holds."""
        host = self._need_host()
        now = self._dialect.now
        with self._writing() as conn:
            rows = conn.execute(
                f"UPDATE jobs SET lease_until = {now} + ? WHERE holder = ?"
                f" AND state IN ({_UNFINISHED_MARKS}) RETURNING id",
                [self._lease_seconds, host, *UNFINISHED_VALUES],
            ).fetchall()
            conn.execute(f"UPDATE hosts SET seen_at = {now} WHERE name = ?", (host,))
        return {int(r["id"]) for r in rows}

    def release_claims(self, job_ids: Collection[int] | None = None) -> int:
        """Let go of this host's jobs (`job_ids`, or all), so another host may take them at
        once (a clean stop); returns how many. The other hosts are told."""
        host = self._need_host()
        sql = "UPDATE jobs SET holder = NULL, lease_until = NULL WHERE holder = ?"
        params: list[object] = [host]
        if job_ids is not None:
            if not job_ids:
                return 0
            sql += f" AND id IN ({', '.join('?' for _ in job_ids)})"
            params += sorted(job_ids)
        with self._writing() as conn:
            released = conn.execute(sql, params).rowcount
            if released:
                self._notify(conn, "released")
        return released

    def holders(self) -> dict[str, int]:
        """{host: number of unfinished jobs it holds} ("" for jobs nobody holds)."""
        with self._reading() as conn:
            rows = conn.execute(
                "SELECT COALESCE(holder, '') AS holder, COUNT(*) AS n FROM jobs"
                f" WHERE state IN ({_UNFINISHED_MARKS}) GROUP BY COALESCE(holder, '')",
                UNFINISHED_VALUES,
            ).fetchall()
        return {row["holder"]: int(row["n"]) for row in rows}

    def _need_host(self) -> str:
        if self._host is None:
            raise ValueError("claims need a host: call set_host() first")
        return self._host
