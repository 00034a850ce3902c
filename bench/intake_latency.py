"""Rename -> queued: how soon a video renamed into an inbox is a job in the journal.

Run: `.venv/bin/python -m bench.intake_latency [--n 40] [--max-gap-seconds 0.5]`.

Measured from outside: a real `mh-watchd run` subprocess against `mh-watchd emulator` (both on
127.0.0.1), with `settle_seconds = 0`, `observer = "native"` and one folder. Each of `--n`
distinct real videos (1 s, 160x120 H.264, made with PyAV) is written to a staging folder on the
same filesystem, then `os.rename`d into the inbox. The latency is from just before the rename
(`time.time()` here) to the job's `created_at` in the journal (the daemon's `time.time()` when
it inserted the `queued` job; same host clock), so it covers detection, settling (at least two
looks at the file even with settle 0), the local probe (PyAV opens and reads the video) and the
journal write. Renames start once the journal shows the start-up scan done (`folders.
last_scan_at`). The next rename waits until this job is in the journal, then a random pause of
up to `--max-gap-seconds`, so renames land at random points of any periodic loop. The emulator
renders for `--render-seconds` (an hour by default) and `max_active_renders = 1`, so the jobs
queue behind one render: only `queued` matters here.

Beside it, what a user would otherwise use: a bare watchdog `Observer` (inotify) with a handler,
timed from just before the same kind of rename to the handler's call (`time.perf_counter()` in
this process), `--n` times. It does no settling, probing or journaling: it is the floor.

Targets (from the issue): daemon p50 < 25 ms, p99 < 100 ms. With n = 40 the p99 is close to
the max. p50/p90/p99/max for both, and the ratios daemon / watchdog, go to
bench/results/intake_latency.json and a table to stdout.
"""

from __future__ import annotations

import argparse
import os
import random
import shutil
import sys
import tempfile
import threading
import time
from pathlib import Path
from typing import Any

import watchdog.version
from watchdog.events import FileSystemEvent, FileSystemEventHandler
from watchdog.observers import Observer

from bench._harness import (
    Daemon,
    Emulator,
    Workspace,
    add_code_argument,
    code_info,
    machine_info,
    make_clip,
    percentiles,
    query,
    ratio,
    stamp,
    use_code,
    wait_first_scans,
    wait_until,
    write_results,
)

RESULTS_PATH = Path(__file__).resolve().parent / "results" / "intake_latency.json"
EVENT_TIMEOUT_SECONDS = 30.0
TARGET_P50_MS = 25.0
TARGET_P99_MS = 100.0


class _Arrivals(FileSystemEventHandler):
    """Notes the perf_counter time of the first event naming each path."""

    def __init__(self) -> None:
        self.times: dict[str, float] = {}
        self.cond = threading.Condition()

    def on_any_event(self, event: FileSystemEvent) -> None:
        now = time.perf_counter()
        paths = {os.fsdecode(event.src_path), os.fsdecode(getattr(event, "dest_path", "") or "")}
        with self.cond:
            for path in paths - {""}:
                self.times.setdefault(path, now)
            self.cond.notify_all()

    def wait(self, path: str, timeout_seconds: float) -> float:
        with self.cond:
            if not self.cond.wait_for(lambda: path in self.times, timeout_seconds):
                raise SystemExit(f"watchdog saw no event for {path} in {timeout_seconds} s")
            return self.times[path]


def measure_watchdog(
    base: Path, clips: list[Path], rng: random.Random, max_gap: float
) -> list[float]:
    """Rename each clip into a folder watched by a bare watchdog Observer; their latencies."""
    inbox = base / "watchdog-in"
    inbox.mkdir()
    handler = _Arrivals()
    observer = Observer()
    observer.schedule(handler, str(inbox), recursive=False)
    observer.start()
    latencies = []
    try:
        for clip in clips:
            time.sleep(rng.uniform(0, max_gap))
            target = inbox / clip.name
            started = time.perf_counter()
            os.rename(clip, target)
            latencies.append(handler.wait(str(target), EVENT_TIMEOUT_SECONDS) - started)
    finally:
        observer.stop()
        observer.join()
    return latencies


def measure_daemon(
    base: Path, clips: list[Path], rng: random.Random, max_gap: float, render_seconds: float
) -> tuple[list[float], dict[str, Any]]:
    """Rename each clip into a real daemon's inbox; latencies to `created_at`, and run facts."""
    with Emulator(queue_seconds=0, render_seconds=render_seconds) as emulator:
        ws = Workspace(
            root=base / "daemon",
            base_url=emulator.base_url,
            api={"poll_interval_seconds": 10},
            daemon={"settle_seconds": 0, "observer": "native", "max_active_renders": 1},
        )
        inbox = ws.add_folder("bench")
        with Daemon(ws) as daemon:
            ready_seconds = daemon.wait_ready()
            scan_seconds = wait_first_scans(ws, daemon)
            latencies = []
            for clip in clips:
                time.sleep(rng.uniform(0, max_gap))
                started = time.time()
                os.rename(clip, inbox / clip.name)

                def queued(name: str = clip.name) -> list[Any]:
                    return query(
                        ws.state_dir,
                        "SELECT created_at FROM jobs WHERE folder = 'bench' AND rel_path = ?",
                        name,
                    )

                rows = wait_until(
                    queued,
                    timeout_seconds=EVENT_TIMEOUT_SECONDS,
                    what=f"a job for {clip.name}",
                    daemon=daemon,
                )
                latencies.append(float(rows[0]["created_at"]) - started)
            states = {
                row["state"]: row["n"]
                for row in query(
                    ws.state_dir, "SELECT state, count(*) AS n FROM jobs GROUP BY state"
                )
            }
        facts = {
            "daemon_ready_seconds": round(ready_seconds, 3),
            "first_scan_after_ready_seconds": round(scan_seconds, 3),
            "job_states_at_end": states,
            "emulator_counts": emulator.state()["counts"],
            "config": ws.config_summary(),
        }
    return latencies, facts


def main(argv: list[str] | None = None) -> int:
    """Run both measurements, write the JSON results and print a table; returns the exit code."""
    parser = argparse.ArgumentParser(prog="python -m bench.intake_latency", description=__doc__)
    parser.add_argument("--n", type=int, default=40, help="renames per watcher")
    parser.add_argument(
        "--max-gap-seconds", type=float, default=0.5, help="random pause before each rename"
    )
    parser.add_argument(
        "--render-seconds", type=float, default=3600.0, help="emulator render time (long: idle)"
    )
    parser.add_argument("--seed", type=int, default=1)
    parser.add_argument("--tmp-dir", type=Path, default=None, help="where the folders go")
    parser.add_argument("--output", type=Path, default=RESULTS_PATH)
    add_code_argument(parser)
    args = parser.parse_args(argv)
    if args.n < 2 or args.max_gap_seconds < 0:
        parser.error("--n must be at least 2 and --max-gap-seconds >= 0")
    use_code(args.code)

    base = Path(tempfile.mkdtemp(prefix="mh-intake-latency-", dir=args.tmp_dir))
    try:
        staging = base / "staging"
        clips = [make_clip(staging / f"clip-{i:03d}.mp4", seed=i) for i in range(2 * args.n)]
        rng = random.Random(args.seed)
        watchdog_s = measure_watchdog(base, clips[: args.n], rng, args.max_gap_seconds)
        daemon_s, facts = measure_daemon(
            base, clips[args.n :], rng, args.max_gap_seconds, args.render_seconds
        )
    finally:
        shutil.rmtree(base, ignore_errors=True)

    daemon, baseline = percentiles(daemon_s), percentiles(watchdog_s)
    ratios = {
        f"daemon/watchdog_{key}": ratio(daemon[f"{key}_ms"], baseline[f"{key}_ms"])
        for key in ("p50", "p99", "max")
    }
    targets = {
        "p50_ms_below": TARGET_P50_MS,
        "p99_ms_below": TARGET_P99_MS,
        "met": daemon["p50_ms"] < TARGET_P50_MS and daemon["p99_ms"] < TARGET_P99_MS,
    }
    results = {
        "benchmark": "intake_latency",
        "measured_at": stamp(),
        "summary": (
            "seconds from os.rename into the inbox to the job's created_at in the journal "
            "(settle 0, native observer, probe included); watchdog: rename to handler call"
        ),
        "n": args.n,
        "max_gap_seconds": args.max_gap_seconds,
        "seed": args.seed,
        "clip": "1 s, 24 fps, 160x120 H.264 mp4 (PyAV), distinct content per rename",
        **machine_info(),
        "code": code_info(),
        "watchdog": watchdog.version.VERSION_STRING,
        "runs": {"daemon": daemon, "watchdog_observer": baseline},
        "ratios": ratios,
        "targets": targets,
        "daemon_run": facts,
    }
    write_results(args.output, results)

    print(f"{'watcher':<20}{'n':>5}{'p50 ms':>10}{'p90 ms':>10}{'p99 ms':>10}{'max ms':>10}")
    for name, row in (("mh-watchd daemon", daemon), ("watchdog Observer", baseline)):
        print(
            f"{name:<20}{row['n']:>5}{row['p50_ms']:>10.2f}{row['p90_ms']:>10.2f}"
            f"{row['p99_ms']:>10.2f}{row['max_ms']:>10.2f}"
        )
    for name, value in ratios.items():
        print(f"{name:<28}{value if value is not None else '-':>10}")
    print(
        f"target p50 < {TARGET_P50_MS:g} ms, p99 < {TARGET_P99_MS:g} ms: "
        f"{'met' if targets['met'] else 'NOT met'}"
    )
    print(f"results: {args.output}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
