"""Several hosts, one queue: real `mh-watchd run` daemons sharing one PostgreSQL journal (a real
server the tests start) and one inbox, against the emulator. Counted from outside: create
requests on the emulator, jobs and events in the database, files in the outbox."""

from __future__ import annotations

import signal
import subprocess
import time
from collections.abc import Callable
from pathlib import Path

import av
import psycopg
import pytest

from mh_watchd.adapters.journal import Journal
from mh_watchd.core.api import estimate_credits
from mh_watchd.core.jobs import HoldReason, Job, JobState, transition
from tests.adapters.test_journal import new_job
from tests.conftest import ClipFactory, wait_for
from tests.e2e import cluster as cluster_harness
from tests.e2e.cluster import LEASE, Cluster, journal_events, journal_jobs
from tests.e2e.conftest import SCRIPT, DaemonProcess, Workspace
from tests.pgserver import PgServer

pytestmark = pytest.mark.timeout(300)
make_cluster = cluster_harness.make_cluster  # the harness's fixture, bound for this module

_S = JobState


def done_count(n: int) -> Callable[[list[Job]], bool]:
    return lambda jobs: sum(j.state is _S.DONE for j in jobs) >= n


def test_two_hosts_share_one_inbox_and_deliver_each_file_once(
    make_cluster: Callable[..., Cluster], make_clip: ClipFactory
) -> None:
    cluster = make_cluster()
    a = cluster.start("host-a")
    b = cluster.start("host-b")
    names = cluster.drop(make_clip("source.mp4", seconds=1.0), 30)

    jobs = cluster.wait_jobs(done_count(30), "30 files done")

    # One job per file, each delivered once, and exactly one create per file.
    assert sorted(j.rel_path for j in jobs) == names
    assert all(j.state is _S.DONE for j in jobs)
    assert cluster.creates() == 30
    outputs = cluster.outputs()
    assert len(outputs) == 30, outputs
    for out in outputs[:3]:  # real videos, not empty or half-written files
        with av.open(str(out)) as container:
            assert container.streams.video and container.duration
    # Both hosts worked the queue (each created some of the 30).
    for host, proc in (("host-a", a), ("host-b", b)):
        assert proc.log_text().count('"job.submitting"') > 0, f"{host} did no work"
    # A clean stop lets go of nothing it should not: no job is left held by anyone.
    assert a.stop() == 0 and b.stop() == 0
    assert all(j.holder is None for j in journal_jobs(cluster.url))


def test_a_killed_host_s_renders_are_taken_over_after_the_lease_without_a_second_create(
    make_cluster: Callable[..., Cluster], make_clip: ClipFactory
) -> None:
    cluster = make_cluster(render_seconds=6.0)
    a = cluster.start("host-a")
    names = cluster.drop(make_clip("source.mp4", seconds=1.0), 3)
    cluster.wait_jobs(
        lambda jobs: len(jobs) == 3 and all(j.state is _S.RENDERING for j in jobs),
        "host-a rendering all three",
    )
    assert {j.holder for j in journal_jobs(cluster.url)} == {"host-a"}
    b = cluster.start("host-b")
    a.kill()  # SIGKILL mid-render: no chance to let go of anything
    killed_at = time.monotonic()

    jobs = cluster.wait_jobs(done_count(3), "host-b to finish host-a's renders")
    taken_after = time.monotonic() - killed_at

    assert sorted(j.rel_path for j in jobs) == names
    assert cluster.creates() == 3, "a taken-over render was created again"
    assert len(cluster.outputs()) == 3
    for job in jobs:
        assert job.id is not None
        events = journal_events(cluster.url, job.id)
        assert "job.taken_over" in events, events
    # Not before host-a's lease could have run out.
    assert taken_after >= LEASE - 1
    assert '"job.taken_over"' in b.log_text()


def test_a_create_cut_off_on_a_dead_host_is_held_ambiguous_never_sent_again(
    make_cluster: Callable[..., Cluster], pg_url: str
) -> None:
    cluster = make_cluster()
    # host-a died inside its create: its job is `submitting` with no project id, and host-a
    # no longer renews the lease.
    with Journal.open(cluster.root / "dead-a", url=pg_url) as journal:
        journal.set_host("host-a", lease_seconds=0.5)
        job = journal.insert(new_job("lost.mp4", folder="shared"), event="job.queued")
        job = journal.save(transition(job, _S.UPLOADING), event="job.uploading")
        job = journal.save(
            transition(
                job,
                _S.SUBMITTING,
                upload_file_path="api-assets/x/lost.mp4",
                credits_day="2026-01-01",
            ),
            event="job.submitting",
        )
        assert job.holder == "host-a"
    b = cluster.start("host-b")
    jobs = cluster.wait_jobs(
        lambda jobs: jobs[0].state is _S.HELD, "host-b to take the cut-off create"
    )
    assert jobs[0].hold_reason is HoldReason.AMBIGUOUS_CREATE
    assert "host 'host-a' stopped inside the create request" in (jobs[0].last_error or "")
    assert jobs[0].holder == "host-b"
    assert cluster.creates() == 0
    assert b.alive()


def test_the_daily_limit_holds_across_both_hosts(
    make_cluster: Callable[..., Cluster], make_clip: ClipFactory
) -> None:
    # Each host has a folder of its own, so each alone would spend the whole limit: room for
    # two creates today (the emulator charges about 48 credits at create and 68 at the end
    # for these clips, against an estimate of 60: a third never fits, whichever is known).
    estimate = estimate_credits(1.0, "FULL")
    limit = 2 * estimate + estimate // 2
    cluster = make_cluster(render_seconds=1.0)
    extra = f"daily_credit_limit = {limit}\n"
    cluster.start("host-a", extra, folder="a-side")
    cluster.start("host-b", extra, folder="b-side")
    clip = make_clip("source.mp4", seconds=1.0)
    cluster.drop(clip, 3, folder="a-side")
    cluster.drop(clip, 3, folder="b-side")

    jobs = cluster.wait_jobs(
        lambda jobs: (
            len(jobs) == 6
            and sum(j.state is _S.DONE for j in jobs) == 2
            and sum(j.hold_reason is HoldReason.DAILY_LIMIT for j in jobs) == 4
        ),
        "two done and four held for the day's limit",
    )
    assert cluster.creates() == 2
    assert {j.holder for j in jobs if j.state is _S.HELD} == {"host-a", "host-b"}
    # And it stays that way while both keep checking: still two.
    time.sleep(2.0)
    assert cluster.creates() == 2
    assert sum(j.state is _S.DONE for j in journal_jobs(cluster.url)) == 2


def test_a_host_whose_database_goes_away_holds_everything_and_resumes(
    make_cluster: Callable[..., Cluster], make_clip: ClipFactory, pg_server: PgServer
) -> None:
    cluster = make_cluster(render_seconds=2.0)
    a = cluster.start("host-a")
    cluster.drop(make_clip("source.mp4", seconds=1.0), 4)
    cluster.wait_jobs(
        lambda jobs: len(jobs) == 4 and any(j.state is _S.RENDERING for j in jobs),
        "renders under way",
    )
    pg_server.stop()
    try:
        wait_for(
            lambda: '"journal.write_refused"' in a.log_text(),
            timeout_seconds=30,
            what="the daemon to notice the database is gone",
        )
        creates_during = cluster.creates()
        cluster.drop(make_clip("late.mp4", seconds=1.0), 1)  # seen, not recorded yet
        time.sleep(2.0)
        assert a.alive()
        assert cluster.creates() == creates_during, "a create was sent with no journal"
    finally:
        pg_server.start_again()

    jobs = cluster.wait_jobs(done_count(5), "every file done once the database is back")
    assert len(jobs) == 5
    assert cluster.creates() == 5
    assert len(cluster.outputs()) == 5
    assert '"journal.writable_again"' in a.log_text()
    a.signal(signal.SIGTERM)
    assert a.wait(30) == 0


def test_a_retry_from_any_host_wakes_the_holder_at_once(
    make_cluster: Callable[..., Cluster], tmp_path: Path
) -> None:
    # Long leases: nothing but the database's notification makes a host look before its
    # 5 s request check.
    cluster = make_cluster()
    a = cluster.start("host-a", lease=30)
    cluster.start("host-b", lease=30)
    broken = tmp_path / "broken.mp4"
    broken.write_text("not a video at all\n")
    cluster.drop(broken, 1)
    job = cluster.wait_jobs(lambda jobs: jobs[0].state is _S.FAILED, "the broken file failed")[0]
    assert job.id is not None

    for attempt in range(3):
        wait_for(
            lambda: cluster.wait_jobs(lambda jobs: jobs[0].state is _S.FAILED, "failed again"),
            what="the job to fail again",
        )
        asked = time.monotonic()
        out = subprocess.run(
            [SCRIPT, "retry", str(job.id), "-c", str(a.ws.config_path)],
            env=cluster.env,
            capture_output=True,
            text=True,
            timeout=30,
        )
        assert out.returncode == 0, out.stderr
        handled = wait_for(
            lambda n=attempt: _newest_request_handled(cluster.url, after=n),
            timeout_seconds=10,
            what=f"retry {attempt + 1} to be handled",
        )
        assert handled
        took = time.monotonic() - asked
        assert took < 1.5, f"retry {attempt + 1} took {took:.2f} s: no wake-up from the database"


def _newest_request_handled(url: str, *, after: int) -> bool:
    """True once more than `after` requests exist and the newest is answered."""
    with psycopg.connect(url) as conn:
        row = conn.execute("SELECT count(*), max(id) FROM requests").fetchone()
        assert row is not None
        count, newest = row
        if count <= after:
            return False
        done = conn.execute("SELECT handled_at FROM requests WHERE id = %s", (newest,))
        answer = done.fetchone()
    return answer is not None and answer[0] is not None


def test_a_clean_stop_lets_the_other_host_take_the_jobs_at_once(
    make_cluster: Callable[..., Cluster], make_clip: ClipFactory
) -> None:
    cluster = make_cluster(render_seconds=4.0)
    a = cluster.start("host-a", lease=30)
    cluster.drop(make_clip("source.mp4", seconds=1.0), 3)
    cluster.wait_jobs(
        lambda jobs: len(jobs) == 3 and all(j.state is _S.RENDERING for j in jobs),
        "host-a rendering all three",
    )
    b = cluster.start("host-b", lease=30)
    assert a.stop() == 0
    stopped = time.monotonic()
    # host-b's own claim pass comes every 10 s; the release wakes it at once.
    cluster.wait_jobs(
        lambda jobs: all(j.holder == "host-b" or j.state is _S.DONE for j in jobs),
        "host-b to hold host-a's jobs",
        timeout=5,
    )
    assert time.monotonic() - stopped < 3.0
    cluster.wait_jobs(done_count(3), "host-b to finish them")
    assert cluster.creates() == 3
    assert b.alive()


def test_a_host_that_mounts_the_share_elsewhere_finishes_taken_jobs_by_its_own_paths(
    make_cluster: Callable[..., Cluster], make_clip: ClipFactory
) -> None:
    cluster = make_cluster(render_seconds=4.0)
    cluster.every_host_linked = True  # /…/mnt-host-a and /…/mnt-host-b: one share
    a = cluster.start("host-a")
    names = cluster.drop(make_clip("source.mp4", seconds=1.0), 2)
    cluster.wait_jobs(
        lambda jobs: len(jobs) == 2 and all(j.state is _S.RENDERING for j in jobs),
        "host-a rendering both",
    )
    assert all(
        j.settings.inbox.startswith(str(cluster.root / "mnt-host-a"))
        for j in journal_jobs(cluster.url)
    )
    b = cluster.start("host-b")
    a.kill()
    (cluster.root / "mnt-host-a").unlink()  # host-a's mount path means nothing on host-b

    jobs = cluster.wait_jobs(done_count(2), "host-b to deliver by its own paths")
    assert cluster.creates() == 2
    share = cluster.share / "shared"
    assert sorted(p.name for p in (share / "out").iterdir()) == sorted(
        n.replace(".mp4", ".studio-ghibli.mp4") for n in names
    )
    assert sorted(p.name for p in (share / "archive").iterdir()) == names
    mount_b = str(cluster.root / "mnt-host-b")
    for job in jobs:
        assert job.settings.inbox == f"{mount_b}/shared/in"
        assert job.archive_path is not None and job.archive_path.startswith(mount_b)
        assert all((o.final_path or "").startswith(mount_b) for o in job.outputs)
        assert job.id is not None
        assert "job.paths_local" in journal_events(cluster.url, job.id)
    assert b.alive()


def test_one_daemon_per_host_name_on_a_database(
    make_cluster: Callable[..., Cluster], tmp_path: Path
) -> None:
    cluster = make_cluster()
    first = cluster.start("host-a")
    # Another machine (its own state_dir and lock file) that was given the same host name.
    twin = Workspace(
        root=tmp_path / "twin",
        base_url=cluster.emu.base_url,
        extra_daemon=f'state_url = "{cluster.url}"\nhost_name = "host-a"\n',
    )
    twin.root.mkdir()
    twin.folder("shared", style={"art_style": "Studio Ghibli"})
    proc = DaemonProcess(twin, cluster.env).start()
    assert proc.wait(30) == 75
    assert "another mh-watchd runs as host 'host-a'" in proc.log_text()
    assert first.alive()
    # Once the first stops, the name is free again.
    assert first.stop() == 0
    again = DaemonProcess(twin, cluster.env).start()
    wait_for(lambda: '"daemon.started"' in again.log_text(), what="the twin to start")
    assert again.stop() == 0


def test_a_database_that_cannot_be_reached_at_start_is_a_clear_error_without_the_password(
    make_cluster: Callable[..., Cluster], pg_server: PgServer, tmp_path: Path
) -> None:
    cluster = make_cluster()
    with_password = cluster.url.replace("postgresql://mhtest@", "postgresql://mhtest:s3cr3t-pw@")
    assert with_password != cluster.url
    ws = Workspace(
        root=tmp_path / "cold",
        base_url=cluster.emu.base_url,
        extra_daemon=f'state_url = "{with_password}"\nhost_name = "cold"\n',
    )
    ws.root.mkdir()
    ws.folder("shared", style={"art_style": "Studio Ghibli"})
    pg_server.stop()
    try:
        proc = DaemonProcess(ws, cluster.env).start()
        assert proc.wait(30) == 69  # EX_UNAVAILABLE: systemd starts it again in a while
        text = proc.log_text()
    finally:
        pg_server.start_again()
    assert "cannot reach the journal database postgresql://mhtest:***@" in text, text
    assert "s3cr3t-pw" not in text
