"""The claim keeper over a real PostgreSQL journal: the jobs a host takes, keeps, loses and lets
go of, on a fake monotonic clock (leases themselves run on the database's clock)."""

from __future__ import annotations

import dataclasses
import time
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path, PurePosixPath

import pytest

from mh_watchd.adapters.fs import LocalFileSystem
from mh_watchd.adapters.journal import Journal
from mh_watchd.adapters.metrics import Metrics
from mh_watchd.core.config import ApiConfig, Config, DaemonConfig, FolderConfig, NotifyConfig
from mh_watchd.core.jobs import HoldReason, JobState, transition
from mh_watchd.core.tracker import IntakeTracker
from mh_watchd.service.claims import LEASE_SAFE_SHARE, ClaimKeeper
from mh_watchd.service.context import Context, JournalGate
from mh_watchd.service.jobbook import JobBook
from mh_watchd.service.loop import Loop
from tests.conftest import wait_for
from tests.factories import SETTINGS, job_in

LEASE = 1.0
_S = JobState


class Mono:
    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


class Host:
    """One host's journal, context, book and claim keeper (no steps run)."""

    def __init__(self, name: str, url: str | None, state: Path, folders: list[str]) -> None:
        self.journal = Journal.open(state, url=url)
        self.journal.set_host(name, lease_seconds=LEASE)
        self.mono = Mono()
        self.errors: list[BaseException] = []
        loop = Loop(monotonic=self.mono, on_error=self.errors.append, after_turn=lambda: None)
        self.config = Config(
            api=ApiConfig(),
            daemon=DaemonConfig(state_dir=PurePosixPath(state), lease_seconds=LEASE),
            styles={},
            folders=tuple(
                FolderConfig(
                    name=f,
                    inbox=PurePosixPath(f"/{name}/{f}/in"),
                    outbox=PurePosixPath(f"/{name}/{f}/out"),
                    archive=PurePosixPath(f"/{name}/{f}/in/.mh-done"),
                    failed=PurePosixPath(f"/{name}/{f}/in/.mh-failed"),
                    style=SETTINGS.style,
                    style_name=None,
                )
                for f in folders
            ),
            notify=NotifyConfig(),
        )
        self.pool = ThreadPoolExecutor(1)
        self.ctx = Context(
            config=self.config,
            journal=self.journal,
            fs=LocalFileSystem(),
            runner=None,  # type: ignore[arg-type]
            loop=loop,
            gate=JournalGate(self.journal, loop, clock=time.time, monotonic=self.mono),
            metrics=Metrics(),
            clock=time.time,
            monotonic=self.mono,
            tracker=IntakeTracker(0.0),
            api_pool=self.pool,
            alert=lambda *a, **k: None,
        )
        self.book = JobBook(self.ctx)
        self.keeper = ClaimKeeper(self.ctx, self.book)

    def close(self) -> None:
        self.pool.shutdown()
        self.journal.close()


@pytest.fixture
def hosts(tmp_path: Path, pg_url: str) -> Iterator[dict[str, Host]]:
    made = {
        "a": Host("host-a", pg_url, tmp_path / "a", ["anime"]),
        "b": Host("host-b", pg_url, tmp_path / "b", ["anime", "paint"]),
    }
    yield made
    for host in made.values():
        host.close()


def lease_ran_out(journal: Journal, job_id: int) -> bool:
    with journal._reading() as conn:
        row = conn.execute(
            f"SELECT lease_until < {journal._dialect.now} AS out FROM jobs WHERE id = ?",
            (job_id,),
        ).fetchone()
    return bool(row["out"])


def test_a_takeover_resumes_by_the_journal_s_rules_with_this_host_s_paths(
    hosts: dict[str, Host],
) -> None:
    a, b = hosts["a"], hosts["b"]
    # host-a recorded the job with its paths, went into its create and died there.
    job = a.journal.insert(
        job_in(_S.QUEUED, settings=a.ctx.local(job_in(_S.QUEUED)).settings), event="job.queued"
    )
    assert job.id is not None
    job = a.journal.save(transition(job, _S.UPLOADING), event="job.uploading")
    job = a.journal.save(
        transition(job, _S.SUBMITTING, upload_file_path="api-assets/x.mp4"),
        event="job.submitting",
    )
    assert b.keeper.take_all() == 0  # host-a's lease is live: not b's to take
    wait_for(lambda: lease_ran_out(b.journal, job.id or 0), what="host-a's lease to run out")

    assert b.keeper.take_all() == 1
    taken = b.book.jobs[job.id]
    assert taken.state is _S.HELD and taken.hold_reason is HoldReason.AMBIGUOUS_CREATE
    assert "host 'host-a' stopped inside the create request" in (taken.last_error or "")
    assert taken.settings.inbox == "/host-b/anime/in"  # b's own mount of the folder
    assert taken.holder == "host-b"
    stored = b.journal.get(job.id)
    assert stored == taken  # the book holds exactly the journal's row
    events = [e.event for e in b.journal.events(job.id)]
    assert events[-3:] == ["job.taken_over", "job.create_ambiguous", "job.paths_local"]


def test_a_host_only_takes_jobs_of_the_folders_it_has(hosts: dict[str, Host]) -> None:
    a, b = hosts["a"], hosts["b"]
    b.journal.set_host("host-b", lease_seconds=LEASE)
    paint = b.journal.insert(job_in(_S.QUEUED, folder="paint"), event="job.queued")
    b.journal.release_claims()
    assert a.keeper.take_all() == 0  # host-a has no "paint" folder
    assert b.keeper.take_all() == 1 and paint.id in b.book.jobs


def test_renewal_keeps_the_jobs_loses_the_taken_ones_and_adopts_orphans(
    hosts: dict[str, Host],
) -> None:
    a, b = hosts["a"], hosts["b"]
    kept = a.journal.insert(job_in(_S.QUEUED, rel_path="kept.mp4"), event="job.queued")
    lost = a.journal.insert(job_in(_S.QUEUED, rel_path="lost.mp4"), event="job.queued")
    assert a.keeper.take_all() == 2
    # An orphan: held here in the journal, missing from the book (a takeover cut short).
    orphan = a.journal.insert(job_in(_S.QUEUED, rel_path="orphan.mp4"), event="job.queued")
    assert orphan.id not in a.book.jobs
    # host-b takes `lost` once its lease ran out (host-a did not renew in time).
    wait_for(lambda: lease_ran_out(b.journal, lost.id or 0), what="the lease to run out")
    with b.journal._writing() as conn:  # only `lost`: the others stay host-a's
        conn.execute(
            f"UPDATE jobs SET lease_until = {b.journal._dialect.now} + 60 WHERE id != ?",
            (lost.id,),
        )
    assert [c.job.id for c in b.journal.claim_jobs(folders=["anime"])] == [lost.id]

    a.keeper.renew()
    assert sorted(a.book.jobs) == sorted([kept.id, orphan.id])  # type: ignore[type-var]
    assert a.journal.get(lost.id or 0).holder == "host-b"  # type: ignore[union-attr]


def test_steps_start_only_while_the_last_renewal_is_fresh(
    hosts: dict[str, Host], tmp_path: Path
) -> None:
    a = hosts["a"]
    assert not a.keeper.lease_ok()  # never renewed
    a.keeper.take_all()
    assert a.keeper.lease_ok()
    a.mono.now += LEASE * LEASE_SAFE_SHARE + 0.01
    assert not a.keeper.lease_ok()
    a.keeper.renew()
    assert a.keeper.lease_ok()
    one = Host("solo", None, tmp_path / "solo", ["anime"])  # SQLite: one host, always fine
    try:
        one.mono.now += 10_000
        assert one.keeper.lease_ok()
    finally:
        one.close()


def test_a_reload_that_drops_a_folder_lets_go_of_its_jobs(hosts: dict[str, Host]) -> None:
    b = hosts["b"]
    paint = b.journal.insert(job_in(_S.QUEUED, folder="paint"), event="job.queued")
    anime = b.journal.insert(job_in(_S.QUEUED, folder="anime"), event="job.queued")
    b.keeper.take_all()
    # As a reload does: the new config first, then the folders.
    b.ctx.config = dataclasses.replace(b.config, folders=b.config.folders[:1])
    b.keeper.folders_changed({"anime"})
    assert list(b.book.jobs) == [anime.id]
    assert b.journal.get(paint.id or 0).holder is None  # type: ignore[union-attr]
    assert b.journal.get(anime.id or 0).holder == "host-b"  # type: ignore[union-attr]
