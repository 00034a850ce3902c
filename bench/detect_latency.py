"""How soon a file renamed into an inbox shows up as an FsEvent: native events against the Poller.

Run: `.venv/bin/python -m bench.detect_latency [--n 50] [--interval-seconds 2.0]`.

A file is written in a staging folder beside the inbox (same filesystem), then `os.rename`d in;
the time is from just before the rename to the moment its ("changed") FsEvent is taken off the
watcher's queue. No settle period is involved: this is detection alone.

- native: NativeWatcher (inotify), `--n` renames back to back.
- poller: Poller held at its base interval (`--interval-seconds`, the daemon's 2.0 s default;
  idle backoff off: max interval = base). Each rename waits a random fraction of the interval
  after the previous detection, so renames land uniformly within the polling cycle. With the
  default backoff an idle poller's interval doubles after each quiet pass up to 30 s, so a file
  after an idle spell waits up to the current interval: that worst case is not measured here.

Median, p95 and max per watcher go to bench/results/detect_latency.json and a table to stdout.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import queue
import random
import shutil
import statistics
import sys
import tempfile
import time
from datetime import UTC, datetime
from pathlib import Path, PurePosixPath
from typing import Any

from mh_watchd.adapters.watcher import FsEvent, NativeWatcher, Poller

RESULTS_PATH = Path(__file__).resolve().parent / "results" / "detect_latency.json"
EVENT_TIMEOUT_SECONDS = 30.0


def _rename_and_wait(
    staging: Path, inbox: Path, name: str, sink: queue.Queue[FsEvent], *, before: float = 0.0
) -> float:
    """Rename staging/name into the inbox after `before` s; return seconds until its event."""
    (staging / name).write_bytes(b"\0" * 4096)
    while not sink.empty():
        sink.get_nowait()
    if before:
        time.sleep(before)
    want = PurePosixPath(name)
    started = time.perf_counter()
    os.rename(staging / name, inbox / name)
    deadline = started + EVENT_TIMEOUT_SECONDS
    while True:
        remaining = deadline - time.perf_counter()
        if remaining <= 0:
            raise SystemExit(f"no event for {name} within {EVENT_TIMEOUT_SECONDS} s")
        try:
            event = sink.get(timeout=remaining)
        except queue.Empty:
            continue
        if event.rel_path == want and event.kind == "changed":
            return time.perf_counter() - started


def _stats(latencies: list[float]) -> dict[str, Any]:
    ms = sorted(x * 1000 for x in latencies)
    return {
        "n": len(ms),
        "median_ms": round(statistics.median(ms), 3),
        "p95_ms": round(statistics.quantiles(ms, n=100, method="inclusive")[94], 3),
        "min_ms": round(ms[0], 3),
        "max_ms": round(ms[-1], 3),
        "samples_ms": [round(x, 3) for x in ms],
    }


def measure_native(base: Path, n: int) -> list[float]:
    """`n` renames into a natively watched inbox; returns their detection latencies."""
    inbox, staging = base / "native-in", base / "native-staging"
    inbox.mkdir()
    staging.mkdir()
    sink: queue.Queue[FsEvent] = queue.Queue()
    watcher = NativeWatcher("bench", inbox, recursive=False, sink=sink)
    watcher.start()
    try:
        return [_rename_and_wait(staging, inbox, f"n{i:03d}.mp4", sink) for i in range(n)]
    finally:
        watcher.stop()


def measure_poller(base: Path, n: int, interval_seconds: float, seed: int) -> list[float]:
    """`n` renames into a polled inbox, each at a random point of the cycle; their latencies."""
    inbox, staging = base / "poll-in", base / "poll-staging"
    inbox.mkdir()
    staging.mkdir()
    rng = random.Random(seed)
    sink: queue.Queue[FsEvent] = queue.Queue()
    poller = Poller(
        "bench",
        inbox,
        recursive=False,
        sink=sink,
        interval_seconds=interval_seconds,
        max_interval_seconds=interval_seconds,
    )
    poller.start()
    try:
        deadline = time.monotonic() + EVENT_TIMEOUT_SECONDS
        while poller.passes == 0 and time.monotonic() < deadline:
            time.sleep(0.01)  # the baseline pass; a bench may wait, a test may not
        # Passes are one interval apart: rename at a uniform random point of the cycle.
        return [
            _rename_and_wait(
                staging, inbox, f"p{i:03d}.mp4", sink, before=rng.uniform(0, interval_seconds)
            )
            for i in range(n)
        ]
    finally:
        poller.stop()


def main(argv: list[str] | None = None) -> int:
    """Run both measurements, write the JSON results and print a table; returns the exit code."""
    parser = argparse.ArgumentParser(prog="python -m bench.detect_latency", description=__doc__)
    parser.add_argument("--n", type=int, default=50)
    parser.add_argument("--interval-seconds", type=float, default=2.0)
    parser.add_argument("--seed", type=int, default=1)
    parser.add_argument("--output", type=Path, default=RESULTS_PATH)
    args = parser.parse_args(argv)
    if args.n < 2 or args.interval_seconds <= 0:
        parser.error("--n must be at least 2 and --interval-seconds positive")

    base = Path(tempfile.mkdtemp(prefix="mh-detect-latency-"))
    try:
        native = _stats(measure_native(base, args.n))
        poller = _stats(measure_poller(base, args.n, args.interval_seconds, args.seed))
    finally:
        shutil.rmtree(base, ignore_errors=True)

    results = {
        "benchmark": "detect_latency",
        "measured_at": datetime.now(UTC).isoformat(timespec="seconds"),
        "summary": "seconds from os.rename into the inbox to the FsEvent off the queue; no settle",
        "n": args.n,
        "poller_interval_seconds": args.interval_seconds,
        "poller_backoff": "off (max interval = base); with it, idle waits grow up to 30 s",
        "seed": args.seed,
        "python": platform.python_version(),
        "machine": {"cpus": os.cpu_count(), "platform": platform.platform()},
        "runs": {"native": native, "poller": poller},
    }
    args.output.parent.mkdir(parents=True, exist_ok=True)
    args.output.write_text(json.dumps(results, indent=2) + "\n")

    print(f"{'watcher':<10}{'n':>5}{'median ms':>12}{'p95 ms':>12}{'max ms':>12}")
    for name, row in (("native", native), ("poller", poller)):
        print(
            f"{name:<10}{row['n']:>5}{row['median_ms']:>12.2f}{row['p95_ms']:>12.2f}"
            f"{row['max_ms']:>12.2f}"
        )
    print(f"(poller held at its base interval of {args.interval_seconds} s, no idle backoff)")
    print(f"results: {args.output}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
