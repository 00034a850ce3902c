"""`status` and start-up on a journal that ran for years: 1,000,000 finished jobs.

Run: `.venv/bin/python -m bench.journal_scale [--jobs 1000000] [--events-per-job 12]`.

The journal is BUILT through the journal's own code: `Journal.open` creates and migrates it and
`Journal.insert_history` bulk-loads the jobs, each with its whole history of events, by the same
row encoding as `insert`/`save` (`job_values`, `_append_event`), one transaction per
`--chunk` jobs instead of one per event, so a million jobs take minutes, not hours. Jobs go to
4 folders in runs of 3; one in 100 ends `failed` (its original in the failed folder, with no
.error.json there), one in 200 `superseded`, the rest `done` (an output, an archived original,
credits booked to a day). Every job has `--events-per-job` events ending in its state.

Measured from outside, each the median of `--runs` runs: `mh-watchd status` and `status
--json` wall time, beside `mh-watchd --version` (the process-start floor: same interpreter,
same entry point, no journal), and the difference; daemon start-up to READY=1 (sd_notify, as
the other benchmarks; the folders are empty dirs, the API unreachable: start-up does not call
it), stopped with SIGTERM. The floor for the counts: the same `SELECT folder, state, count(*)
FROM jobs GROUP BY folder, state` by bare Python sqlite3 on the same file. And the file's size.

Targets (from issue 13): status (text and --json) < 200 ms beyond process start; start-up to
READY < 5 s. Results to bench/results/journal_scale.json and a table to stdout.
"""

from __future__ import annotations

import argparse
import dataclasses
import shutil
import sqlite3
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator, Sequence
from pathlib import Path
from typing import Any

from bench._harness import (
    JOURNAL_NAME,
    Daemon,
    Workspace,
    _command,
    add_code_argument,
    code_info,
    machine_info,
    stamp,
    use_code,
    write_results,
)
from mh_watchd.adapters.journal import BulkEvent, Journal
from mh_watchd.core.api import Style
from mh_watchd.core.jobs import Job, JobSettings, JobState, Output

RESULTS_PATH = Path(__file__).resolve().parent / "results" / "journal_scale.json"
FOLDERS = ("anime", "family", "studio", "travel")
TARGET_STATUS_MS = 200.0
TARGET_READY_SECONDS = 5.0
# The way a finished job goes; its events walk it, notes (from == to) fill the rest.
_PATH = (
    JobState.QUEUED,
    JobState.UPLOADING,
    JobState.SUBMITTING,
    JobState.RENDERING,
    JobState.DOWNLOADING,
    JobState.DELIVERING,
    JobState.DONE,
)
_START = 1_600_000_000.0  # jobs finish one a minute or so from here on


def _settings(root: Path, folder: str) -> JobSettings:
    inbox = root / folder / "in"
    return JobSettings(
        style=Style(art_style="Studio Ghibli", version="v2"),
        style_slug="studio-ghibli",
        fps_resolution="HALF",
        start_seconds=0.0,
        max_seconds=60.0,
        inbox=str(inbox),
        outbox=str(root / folder / "out"),
        archive=str(inbox / ".mh-done"),
        failed=str(inbox / ".mh-failed"),
        on_success="archive",
    )


def _final_state(i: int) -> JobState:
    if i % 100 == 7:
        return JobState.FAILED
    if i % 200 == 3:
        return JobState.SUPERSEDED
    return JobState.DONE


def _history(final: JobState, at: float, events: int) -> list[BulkEvent]:
    """`events` events from the job's creation to `final`, a few seconds apart."""
    stop = _PATH.index(JobState.DELIVERING) if final is not JobState.DONE else len(_PATH) - 1
    if final is JobState.SUPERSEDED:
        stop = 1
    out: list[BulkEvent] = []
    prev: JobState | None = None
    for k in range(events):
        walked = _PATH[min(stop, k * (stop + 1) // max(events - 1, 1))]
        to = final if k == events - 1 else walked
        name = "job.queued" if prev is None else (f"job.{to.value}" if to is not prev else "note")
        out.append(BulkEvent(at + k * 5.0, prev, to, name, {"step": k}))
        prev = to
    return out


def _jobs(root: Path, n: int, events: int) -> Iterator[tuple[Job, list[BulkEvent]]]:
    settings = {name: _settings(root, name) for name in FOLDERS}
    for i in range(n):
        folder = FOLDERS[(i // 3) % len(FOLDERS)]  # not i % 4: failures spread over all
        s = settings[folder]
        state = _final_state(i)
        at = _START + i * 60.0
        done_at = at + (events - 1) * 5.0
        name = f"{i // 1000:04d}/clip-{i:07d}.mp4"
        job = Job(
            folder=folder,
            rel_path=name,
            size=10_000_000 + i,
            mtime_ns=int(at * 1e9),
            inode=1_000_000 + i,
            settings=s,
            state=state,
            sha256=f"{i:064x}",
            attempts=0,
            duration_seconds=12.0,
            fps=24.0,
            created_at=at,
            updated_at=done_at,
        )
        if state is JobState.DONE:
            job = _done(job, s, i, done_at)
        elif state is JobState.FAILED:
            job = _failed(job, s, i)
        else:
            job = _superseded(job)
        yield job, _history(state, at, events)


def _done(job: Job, s: JobSettings, i: int, done_at: float) -> Job:
    day = time.strftime("%Y-%m-%d", time.localtime(done_at))
    return dataclasses.replace(
        job,
        upload_source=f"{s.inbox}/{job.rel_path}",
        upload_file_path=f"api-assets/bench/{i}.mp4",
        uploaded_at=done_at - 40,
        project_id=f"bench-{i}",
        service_name=f"clip-{i:07d}",
        credits_estimate=120,
        credits_charged=120,
        credits_final=118,
        credits_day=day,
        render_started_at=done_at - 30,
        render_status="complete",
        outputs=(Output(0, final_path=f"{s.outbox}/clip-{i:07d}.ghibli.mp4", placed=True),),
        archive_path=f"{s.archive}/{job.rel_path}",
        progress=1.0,
    )


def _failed(job: Job, s: JobSettings, i: int) -> Job:
    return dataclasses.replace(
        job,
        project_id=f"bench-{i}",
        last_error="the service said the video could not be rendered (422)",
        failed_path=f"{s.failed}/{job.rel_path}",
    )


def _superseded(job: Job) -> Job:
    return dataclasses.replace(job, last_error="the file changed before its upload finished")


def build(root: Path, state_dir: Path, n: int, events: int, chunk: int) -> float:
    """Build the journal; returns the seconds it took."""
    started = time.monotonic()
    source = _jobs(root, n, events)
    with Journal.open(state_dir) as journal:
        loaded = 0
        while loaded < n:
            batch = [item for _, item in zip(range(min(chunk, n - loaded)), source, strict=False)]
            loaded += journal.insert_history(batch)
            print(f"  built {loaded}/{n} jobs", file=sys.stderr, flush=True)
    return time.monotonic() - started


def _timed_run(args: Sequence[str]) -> float:
    argv, env, cwd = _command(*args)
    started = time.perf_counter()
    done = subprocess.run(argv, env=env, cwd=cwd, capture_output=True, check=False)
    elapsed = time.perf_counter() - started
    if done.returncode != 0:
        raise SystemExit(f"mh-watchd {' '.join(args)} exited {done.returncode}: {done.stderr!r}")
    return elapsed


def median_ms(args: Sequence[str], runs: int) -> dict[str, Any]:
    _timed_run(args)  # warm the page cache and the .pyc files
    samples = [_timed_run(args) for _ in range(runs)]
    return {
        "median_ms": round(statistics.median(samples) * 1000, 1),
        "min_ms": round(min(samples) * 1000, 1),
        "runs": runs,
    }


def sql_floor_ms(path: Path, runs: int) -> dict[str, Any]:
    """The counts by bare sqlite3 on the same file: connect, GROUP BY, fetch; median of runs."""
    samples = []
    for _ in range(runs + 1):
        started = time.perf_counter()
        conn = sqlite3.connect(f"file:{path}?mode=ro", uri=True)
        rows = conn.execute(
            "SELECT folder, state, count(*) FROM jobs GROUP BY folder, state"
        ).fetchall()
        conn.close()
        samples.append(time.perf_counter() - started)
    return {"median_ms": round(statistics.median(samples[1:]) * 1000, 1), "groups": len(rows)}


def startup_seconds(ws: Workspace, runs: int) -> list[float]:
    times = []
    for _ in range(runs):
        with Daemon(ws) as daemon:
            times.append(round(daemon.wait_ready(), 3))
    return times


def main(argv: list[str] | None = None) -> int:
    """Build the journal, measure, write the JSON results and print a table."""
    parser = argparse.ArgumentParser(prog="python -m bench.journal_scale", description=__doc__)
    parser.add_argument("--jobs", type=int, default=1_000_000, help="finished jobs to build")
    parser.add_argument("--events-per-job", type=int, default=12)
    parser.add_argument("--chunk", type=int, default=50_000, help="jobs per transaction")
    parser.add_argument("--runs", type=int, default=5, help="runs per timed command")
    parser.add_argument("--tmp-dir", type=Path, default=None, help="where the journal goes")
    parser.add_argument(
        "--keep", type=Path, default=None, help="keep the built workspace here (reused if there)"
    )
    parser.add_argument("--output", type=Path, default=RESULTS_PATH)
    add_code_argument(parser)
    args = parser.parse_args(argv)
    if args.jobs < 1 or args.events_per_job < 2:
        parser.error("--jobs must be at least 1 and --events-per-job at least 2")
    use_code(args.code)

    root = args.keep or Path(tempfile.mkdtemp(prefix="mh-journal-scale-", dir=args.tmp_dir))
    try:
        ws = Workspace(root=root, base_url="http://127.0.0.1:9", api={}, daemon={})
        for name in FOLDERS:
            ws.add_folder(name)
        ws.write_config()
        path = ws.state_dir / JOURNAL_NAME
        build_s = None
        if not path.exists():
            build_s = round(
                build(root, ws.state_dir, args.jobs, args.events_per_job, args.chunk), 1
            )
        cfg = ["-c", str(ws.config_path)]
        floor = median_ms(["--version"], args.runs)
        status = median_ms(["status", *cfg], args.runs)
        status_json = median_ms(["status", *cfg, "--json"], args.runs)
        sql = sql_floor_ms(path, args.runs)
        ready = startup_seconds(ws, 3)
        size = path.stat().st_size
        with sqlite3.connect(f"file:{path}?mode=ro", uri=True) as conn:
            jobs_n = conn.execute("SELECT count(*) FROM jobs").fetchone()[0]
            events_n = conn.execute("SELECT max(id) FROM events").fetchone()[0]
    finally:
        if args.keep is None:
            shutil.rmtree(root, ignore_errors=True)

    beyond = {
        "status": round(status["median_ms"] - floor["median_ms"], 1),
        "status_json": round(status_json["median_ms"] - floor["median_ms"], 1),
    }
    ready_median = statistics.median(ready)
    targets = {
        "status_ms_beyond_start_below": TARGET_STATUS_MS,
        "ready_seconds_below": TARGET_READY_SECONDS,
        "met": max(beyond.values()) < TARGET_STATUS_MS and ready_median < TARGET_READY_SECONDS,
    }
    results = {
        "benchmark": "journal_scale",
        "measured_at": stamp(),
        "summary": (
            "mh-watchd status / status --json wall time minus mh-watchd --version, and start-up "
            "to READY=1, on a journal of --jobs finished jobs built by Journal.insert_history"
        ),
        "jobs": jobs_n,
        "events": events_n,
        "events_per_job": args.events_per_job,
        "build_seconds": build_s,
        "journal_bytes": size,
        **machine_info(),
        "code": code_info(),
        "runs": {
            "version_floor": floor,
            "status": status,
            "status_json": status_json,
            "sql_group_by_floor": sql,
            "ready_seconds": ready,
        },
        "beyond_process_start_ms": beyond,
        "targets": targets,
    }
    write_results(args.output, results)

    print(f"journal: {jobs_n} jobs, {events_n} events, {size / 1e6:.0f} MB (built in {build_s} s)")
    print(f"{'what':<34}{'median ms':>12}{'beyond start':>14}")
    print(f"{'mh-watchd --version (floor)':<34}{floor['median_ms']:>12.1f}{'':>14}")
    print(f"{'mh-watchd status':<34}{status['median_ms']:>12.1f}{beyond['status']:>14.1f}")
    print(
        f"{'mh-watchd status --json':<34}{status_json['median_ms']:>12.1f}"
        f"{beyond['status_json']:>14.1f}"
    )
    print(f"{'bare sqlite3 GROUP BY (floor)':<34}{sql['median_ms']:>12.1f}{'':>14}")
    print(f"{'start-up to READY=1':<34}{ready_median * 1000:>12.1f}{'':>14}  runs {ready}")
    print(
        f"target status < {TARGET_STATUS_MS:g} ms beyond start, READY < "
        f"{TARGET_READY_SECONDS:g} s: {'met' if targets['met'] else 'NOT met'}"
    )
    print(f"results: {args.output}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
