"""Two hosts, one PostgreSQL journal, one share: SIGKILL either host at random points, restart
the database mid-run, slow and refused creates: every file delivered exactly once, never paid
for twice, nothing lost.

A kill inside a create can leave a job held `ambiguous_create`, on the host that takes it over
or on the restarted one (Invariant 5): as in the one-host storm, the test retries those jobs
and allows exactly one extra project per retry, never more. Every other create is accounted
for: create requests = projects created + creates the emulator refused on purpose.
"""

from __future__ import annotations

import random
import subprocess
import time
from collections import Counter
from collections.abc import Callable
from pathlib import Path

import pytest

from mh_watchd.adapters.samples import synthesize_clip
from mh_watchd.core.jobs import JobState
from tests.chaos.conftest import (
    LONG,
    FaultTally,
    decoded_duration,
    inject,
    outputs_in,
    record,
    settle_ambiguous,
    size,
)
from tests.e2e import cluster as cluster_harness
from tests.e2e.cluster import Cluster, journal_jobs
from tests.e2e.conftest import SCRIPT
from tests.pgserver import PgServer

pytestmark = [pytest.mark.slow, pytest.mark.chaos_long]
make_cluster = cluster_harness.make_cluster  # the harness's fixture, bound for this module

SEEDS = [5, 17] if LONG else [5]
FILES = size(short=6, long=30)
KILLS = size(short=3, long=14)
HOSTS = ("host-a", "host-b")
TARGETS = (JobState.UPLOADING, JobState.SUBMITTING, JobState.RENDERING, JobState.DELIVERING)


def storm_plan(seed: int) -> dict[str, object]:
    """Slow creates (a kill lands inside one more often), some refused, some 503s on polls."""
    return {
        "seed": seed,
        "rules": [
            {"route": "create", "fault": "slow", "delay": 0.8, "rate": 0.3},
            {"route": "create", "fault": "status", "status": 503, "rate": 0.1},
            {"route": "get", "fault": "status", "status": 503, "rate": 0.1},
        ],
    }


@pytest.mark.timeout(1800 if LONG else 300)
@pytest.mark.parametrize("seed", SEEDS)
def test_two_hosts_under_kills_and_a_database_restart_deliver_every_file_once(
    seed: int,
    make_cluster: Callable[..., Cluster],
    pg_server: PgServer,
    tmp_path: Path,
) -> None:
    rng = random.Random(seed)
    cluster = make_cluster(render_seconds=1.5, seed=seed)
    tally = inject(cluster.emu, storm_plan(seed), FaultTally())
    keep = tmp_path / "keep"
    clips = [synthesize_clip(keep / f"c{i}.mp4", seconds=1.0, hue=i * 40) for i in range(4)]
    for host in HOSTS:
        cluster.start(host)

    dropped: dict[str, bytes] = {}

    def drop(n: int) -> None:
        for _ in range(n):
            clip = clips[len(dropped) % len(clips)]
            (name,) = cluster.drop(clip, 1)
            dropped[name] = clip.read_bytes()

    waves = [FILES // 3] + [0] * KILLS
    for i in range(FILES - FILES // 3):
        waves[1 + i % KILLS] += 1
    drop(waves[0])
    restart_at = KILLS // 2
    kills = 0
    for k in range(KILLS):
        host = rng.choice(HOSTS)
        target = rng.choice((*TARGETS, None))
        deadline = time.monotonic() + 8.0
        while target is not None and time.monotonic() < deadline:
            if any(j.state is target and j.holder == host for j in journal_jobs(cluster.url)):
                break
            time.sleep(0.05)
        time.sleep(rng.uniform(0.0, 0.4) if target else rng.uniform(0.3, 2.0))
        cluster.daemons[host].kill()
        kills += 1
        drop(waves[k + 1])
        if k == restart_at:
            pg_server.stop()  # both hosts lose the journal: they hold, then resume
            time.sleep(rng.uniform(1.0, 3.0))
            pg_server.start_again()
        cluster.start(host)

    config = cluster.daemons["host-a"].ws.config_path

    def retry(job_id: int) -> None:
        out = subprocess.run(
            [SCRIPT, "retry", str(job_id), "-c", str(config)],
            env=cluster.env,
            capture_output=True,
            text=True,
            timeout=60,
        )
        assert out.returncode == 0, out.stderr

    ambiguous_retries = settle_ambiguous(
        set(dropped),
        wait_jobs=lambda settled: cluster.wait_jobs(
            settled, f"every file done or held ambiguous (seed {seed})", 240
        ),
        read_jobs=lambda: journal_jobs(cluster.url),
        retry=retry,
    )

    for proc in cluster.daemons.values():
        assert proc.stop(timeout=60) == 0
    jobs = journal_jobs(cluster.url)
    state = cluster.emu.state()
    c = state["counts"]
    projects_by_name = Counter(p["name"] for p in state["projects"])
    outbox = cluster.share / "shared" / "out"
    archive = cluster.share / "shared" / "archive"
    outs_by_stem = Counter(p.name.split(".")[0].split(" (")[0] for p in outputs_in(outbox))

    problems: list[str] = []
    duplicates = lost = 0
    for name, data in dropped.items():
        stem = name.rsplit(".", 1)[0]
        allowed = 1 + ambiguous_retries[name]
        made = projects_by_name[f"shared/{name}"]
        if made > allowed:
            duplicates += made - allowed
            problems.append(f"{name}: {made} projects, at most {allowed} allowed")
        n_out = outs_by_stem[stem]
        if n_out > 1:
            duplicates += n_out - 1
            problems.append(f"{name}: {n_out} outputs")
        if n_out == 0:
            lost += 1
            problems.append(f"{name}: no output")
        else:
            duration = decoded_duration(outbox / f"{stem}.studio-ghibli.mp4")
            if duration is None or abs(duration - 1.0) > 0.5:
                problems.append(f"{name}: the output does not decode to ~1 s ({duration})")
        archived = archive / name
        if not archived.exists() or archived.read_bytes() != data:
            problems.append(f"{name}: original not archived byte for byte")
            if not (cluster.share / "shared" / "in" / name).exists():
                lost += 1
    one_job_each = Counter(j.rel_path for j in jobs if j.state is JobState.DONE)
    problems += [f"{n}: {k} done jobs" for n, k in one_job_each.items() if k != 1]
    unfinished = [(j.rel_path, j.state.value) for j in jobs if not j.is_terminal]
    if unfinished:
        problems.append(f"jobs left unfinished: {unfinished}")
    if any(j.holder is not None for j in jobs):
        problems.append("a job is still held after both hosts stopped cleanly")
    refused = tally.on("create", "status")
    if c["create_requests"] != c["creates"] + refused:
        problems.append(
            f"create requests {c['create_requests']} != projects {c['creates']} + refused "
            f"{refused}: a create went out that neither made a project nor was refused"
        )
    logs = cluster.logs()
    if "Traceback" in "".join(p.log_text() for p in cluster.daemons.values()):
        problems.append("a traceback in a daemon's log")

    record(
        f"two_hosts_storm[seed={seed}]",
        files=len(dropped),
        kills=kills,
        faults=tally.total,
        create_requests=c["create_requests"],
        duplicates=duplicates,
        lost=lost,
        ambiguous_retries=sum(ambiguous_retries.values()),
    )
    assert not problems, "\n".join([*problems, logs])
