"""The shared journal's database hangs (its processes frozen: sockets open, nothing answers,
as with a network path that drops packets): the daemon must not hang with it. Each journal
call is cut off after `state_timeout_seconds`; the daemon holds everything (invariant 9),
/healthz still answers and says why, no create goes out meanwhile, and once the database
answers again every file is delivered once."""

from __future__ import annotations

import time
import urllib.error
import urllib.request
from collections.abc import Callable

import pytest

from mh_watchd.core.jobs import JobState
from tests.chaos.conftest import free_port, outputs_in, record
from tests.conftest import ClipFactory, wait_for
from tests.e2e import cluster as cluster_harness
from tests.e2e.cluster import Cluster
from tests.pgserver import PgServer

pytestmark = [pytest.mark.slow, pytest.mark.timeout(300)]
make_cluster = cluster_harness.make_cluster  # the harness's fixture, bound for this module

TIMEOUT = 2  # daemon.state_timeout_seconds


def healthz(port: int) -> tuple[int, str] | None:
    try:
        with urllib.request.urlopen(f"http://127.0.0.1:{port}/healthz", timeout=20) as resp:
            return int(resp.status), resp.read().decode(errors="replace")
    except urllib.error.HTTPError as exc:
        return int(exc.code), exc.read().decode(errors="replace")
    except (urllib.error.URLError, OSError, TimeoutError):
        return None


def test_a_frozen_database_is_an_outage_of_the_journal_not_a_hung_daemon(
    make_cluster: Callable[..., Cluster], make_clip: ClipFactory, pg_server: PgServer
) -> None:
    cluster = make_cluster(render_seconds=3.0)
    port = free_port()
    a = cluster.start(
        "host-a", f'http_listen = "127.0.0.1:{port}"\nstate_timeout_seconds = {TIMEOUT}\n'
    )
    names = cluster.drop(make_clip("source.mp4", seconds=1.0), 3)
    cluster.wait_jobs(
        lambda jobs: len(jobs) == 3 and any(j.state is JobState.RENDERING for j in jobs),
        "renders under way",
    )
    pg_server.freeze()
    frozen_at = time.monotonic()
    try:
        wait_for(
            lambda: (
                '"journal.call_cut_off"' in a.log_text()
                or '"journal.write_refused"' in a.log_text()
            ),
            timeout_seconds=30,
            what="the daemon to give up on the frozen database",
        )
        gave_up = time.monotonic() - frozen_at
        creates_during = cluster.creates()
        late = cluster.drop(make_clip("late.mp4", seconds=1.0), 1)  # seen, kept for later
        # The loop still turns: /healthz answers, unhealthy, naming the journal.
        answer = wait_for(lambda: healthz(port), timeout_seconds=30, what="/healthz to answer")
        assert isinstance(answer, tuple) and answer[0] == 503, answer
        assert "journal" in answer[1], answer
        assert a.alive()
        assert cluster.creates() == creates_during, "a create went out with no journal"
    finally:
        pg_server.thaw()

    jobs = cluster.wait_jobs(
        lambda jobs: len(jobs) == 4 and all(j.state is JobState.DONE for j in jobs),
        "every file done once the database answers again",
    )
    assert sorted(j.rel_path for j in jobs) == sorted(names + late)
    assert cluster.creates() == 4
    outputs = outputs_in(cluster.share / "shared" / "out")
    assert len(outputs) == 4, outputs
    assert '"journal.writable_again"' in a.log_text()
    assert "Traceback" not in a.log_text()
    assert a.stop() == 0
    record(
        "frozen_database",
        files=4,
        kills=0,
        faults=1,
        create_requests=cluster.creates(),
        duplicates=max(0, cluster.creates() - 4),
        lost=4 - len(outputs),
    )
    # Given up on within the time limit (plus the guard's margin and its look twice a second),
    # not after the kernel's TCP timeouts.
    assert gave_up < TIMEOUT + 10, f"took {gave_up:.1f} s to give up on the database"
