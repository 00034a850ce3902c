"""Which jobs this daemon works on: the jobs it holds in the journal, under leases it renews.

On SQLite there is one host: at start-up it takes every unfinished job (its own from before a
restart included), as it always did, and its leases only tell a restart which jobs were its own.

On a shared journal (PostgreSQL) several daemons work one queue. Each takes the unfinished jobs
of the folders it has (by folder name) that nobody holds or whose holder stopped renewing, and
renews its own leases every third of `daemon.lease_seconds`. A job taken over from another host
is resumed by the same rules as after a restart (`JobBook.load` with `recovered`): a create
that was in flight is held `ambiguous_create`, never sent again. A host that finds it lost a
job (its lease ran out and another host took it) lets go of it; the journal refuses its writes
anyway (`ClaimLost`). A host that cannot renew in time (the database is away) starts no step,
so it never works on a job another host may take.
"""

from __future__ import annotations

import structlog

from mh_watchd.adapters.journal import Claimed
from mh_watchd.core.jobs import HoldReason, Job, JobState, hold
from mh_watchd.service.context import Context
from mh_watchd.service.jobbook import JobBook, after_restart
from mh_watchd.service.logctx import job_context

log = structlog.get_logger("mh_watchd")

# Steps start only while the last renewal is younger than this share of the lease: the rest
# is the margin for a step's first write against another host taking the job.
LEASE_SAFE_SHARE = 0.5


class ClaimKeeper:
    """Takes, renews and lets go of this host's jobs."""

    def __init__(self, ctx: Context, book: JobBook) -> None:
        self._ctx = ctx
        self._book = book
        self._renewed_mono: float | None = None

    @property
    def _lease(self) -> float:
        return self._ctx.journal.lease_seconds

    def _folders(self) -> list[str] | None:
        """The folders whose jobs this host takes (by name): all on a one-host journal."""
        if not self._ctx.journal.shared:
            return None
        return sorted(f.name for f in self._ctx.config.folders)

    # ------------------------------------------------------------------ start-up
    def take_all(self) -> int:
        """At start-up: take every job this host may work on, its own from before included.
        Returns how many. Raises StateDirError when the journal refuses."""
        taken = 0
        while True:
            batch = self._ctx.journal.claim_jobs(folders=self._folders(), include_own=True)
            self._take(batch)
            taken += len(batch)
            if len(batch) < 1000:
                break
        self._renewed_mono = self._ctx.monotonic()
        return taken

    def start(self) -> None:
        """Renew and claim every third of the lease, on a shared journal. One host renews
        nothing: its leases only tell its next start which jobs were its own, and an idle
        daemon must not write (a NAS disk that never sleeps)."""
        if self._ctx.journal.shared:
            self._ctx.loop.after(self._lease / 3, self._tick, key="claims")

    # ------------------------------------------------------------------ running
    def lease_ok(self) -> bool:
        """May a step start now? Not when the leases were not renewed in time (another host
        may take the jobs soon). Always on a one-host journal."""
        if not self._ctx.journal.shared:
            return True
        renewed = self._renewed_mono
        return renewed is not None and (
            self._ctx.monotonic() - renewed < self._lease * LEASE_SAFE_SHARE
        )

    def _tick(self) -> None:
        ctx = self._ctx
        if ctx.stopping:
            return
        ctx.loop.after(self._lease / 3, self._tick, key="claims")
        if ctx.gate.closed:
            return  # the gate's probe opens it again; the next tick renews
        self.renew()
        if ctx.journal.shared:
            self.claim_now()

    def renew(self) -> None:
        """Renew this host's leases; let go of the jobs another host holds now, and take up
        the ones held here that the book lacks (a takeover cut short by a refused write)."""
        ctx = self._ctx
        held = ctx.journal.renew_claims()
        self._renewed_mono = ctx.monotonic()
        orphans = sorted(held - set(self._book.jobs) - set(ctx.in_flight))
        found = [ctx.journal.get(job_id) for job_id in orphans]
        self._take([Claimed(job, None) for job in found if job is not None and not job.is_terminal])
        for job_id in [i for i in self._book.jobs if i not in held]:
            if job_id in ctx.in_flight:
                continue  # its outcome finds the job lost (the journal refuses the write)
            job = self._book.jobs[job_id]
            with job_context(job):
                log.warning("job.claim_lost", why="another host holds it now")
            self._book.forget(job_id)
            ctx.dirty = True

    def claim_now(self) -> None:
        """Take the jobs that became free (a host stopped or let go); shared journals only."""
        ctx = self._ctx
        if ctx.stopping or ctx.gate.closed or not ctx.journal.shared:
            return
        self._take(ctx.journal.claim_jobs(folders=self._folders()))

    def folders_changed(self, names: set[str]) -> None:
        """A reload on a shared journal: let go of the jobs of removed folders (another host
        may have them; not those mid-step) and take the free jobs of the folders added."""
        ctx = self._ctx
        gone = [
            j.id
            for j in self._book.unfinished()
            if j.folder not in names and j.id is not None and j.id not in ctx.in_flight
        ]
        ctx.journal.release_claims(gone)
        for job_id in gone:
            self._book.forget(job_id)
        self.claim_now()

    def _take(self, batch: list[Claimed]) -> None:
        ctx = self._ctx
        for claimed in batch:
            job = claimed.job
            assert job.id is not None
            if job.id in ctx.in_flight:
                continue  # ours already (a takeover can't be: a step runs only on held jobs)
            with job_context(job):
                if claimed.taken_from is not None:
                    log.warning(
                        "job.taken_over",
                        from_host=claimed.taken_from,
                        state=job.state.value,
                        project_id=job.project_id,
                    )
                job = self._recovered(job, claimed.taken_from)
                local = ctx.local(job)
                if local != job:  # recorded by a host that reaches the folder elsewhere
                    job = ctx.journal.save(
                        local, event="job.paths_local", detail={"inbox": local.settings.inbox}
                    )
            self._book.load(job)
            ctx.dirty = True

    def _recovered(self, job: Job, taken_from: str | None) -> Job:
        """A job taken at start-up or from another host, as the journal's rules resume it."""
        now = self._ctx.clock()
        # Wall clock may have jumped while we were down: never wait absurdly long.
        job = after_restart(job, now)
        if job.state is JobState.SUBMITTING and job.project_id is None:
            job = self._hold_unanswered_create(job, now, taken_from)
        return job

    def _hold_unanswered_create(self, job: Job, now: float, taken_from: str | None) -> Job:
        who = "the daemon" if taken_from is None else f"host {taken_from!r}"
        stopped = f"{who} stopped inside the create request"
        why = (
            f"{stopped}; look for {job.service_name!r} in the web app, then run "
            f"'mh-watchd retry {job.id}'"
        )
        held = self._ctx.journal.save(
            hold(job, HoldReason.AMBIGUOUS_CREATE, updated_at=now, last_error=why),
            event="job.create_ambiguous",
            detail={"why": stopped},
        )
        log.warning("job.create_ambiguous", why=why)
        self._ctx.alert("held", held, "ambiguous_create")
        return held

    # ------------------------------------------------------------------ stopping
    def release(self) -> None:
        """A clean stop: let go of every job, so the other hosts take them at once (a job
        whose step did not finish in the grace time is resumed by the journal's rules)."""
        ctx = self._ctx
        if not ctx.journal.shared:
            return
        released = ctx.journal.release_claims()
        if released:
            log.info("claims.released", jobs=released)
