"""Idle cost: CPU of a daemon watching big, quiet inboxes, native and polling, against watchdog.

Run: `.venv/bin/python -m bench.idle_cost [--folders 10] [--files 1000] [--seconds 60]`.

`--folders` inboxes of `--files` small files each (`file-NNNN.txt`, 16 bytes, flat). They are
`.txt` so that nothing is queued, yet the daemon still looks at every one of them: its scans
(`scan_tree`) list and lstat every regular file of an inbox and classify each
(`core.intake.classify` says `not_video`: left alone, logged once as `intake.not_a_video_name`,
then remembered by size, mtime and inode so later scans skip it), and its own poller lists and
stats them like any file when it (re)lists a directory. The results count those log lines as the
proof that the daemon saw every file.

Measured from outside: a real `mh-watchd run` subprocess (its `[api]` pointing at an idle
`mh-watchd emulator`), once with `observer = "native"` and once with `observer = "polling"`,
`rescan_seconds` at its default (300 s) unless `--rescan-seconds` is given. After READY=1 and
the start-up scans (the journal's `folders.last_scan_at`), a `--warmup-seconds` pause, then for
`--seconds` the CPU time of the daemon process over the wall time, as % of one core (from
/proc/PID/task/*/schedstat, to the nanosecond; /proc/PID/stat's user + system ticks of 10 ms are
reported beside it as a cross-check, with the thread counts at both ends), and its wake-ups
(context switches of all its threads, /proc/PID/task/*/status) per second. With the default
rescan period a 60 s window holds no rescan. The daemon's poller interval is fixed in the code
(2 s, doubling while idle up to 30 s); no config key sets it.

Beside it, what a user would otherwise use: watchdog's `Observer` (inotify) and
`PollingObserver` (its default 1 s interval), each in a child process scheduling a no-op handler
on the same inboxes (not recursive, as the daemon's folders are), measured the same way after
the same warm-up. Targets: native <= 0.3 %, polling <= 0.5 % of one core. Results, with the
ratios daemon / watchdog, go to bench/results/idle_cost.json and a table to stdout.
"""

from __future__ import annotations

import argparse
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import watchdog.version
from watchdog.events import FileSystemEvent, FileSystemEventHandler
from watchdog.observers import Observer
from watchdog.observers.api import BaseObserver
from watchdog.observers.polling import PollingObserver

from bench._harness import (
    REPO_ROOT,
    Daemon,
    Emulator,
    Workspace,
    add_code_argument,
    code_info,
    machine_info,
    process_cpu_seconds,
    process_thread_cpu_seconds,
    process_threads,
    process_wakeups,
    query,
    ratio,
    stamp,
    use_code,
    wait_first_scans,
    write_results,
)

RESULTS_PATH = Path(__file__).resolve().parent / "results" / "idle_cost.json"
TARGETS_PERCENT = {"native": 0.3, "polling": 0.5}
WATCHDOG_KINDS = {"native": "watchdog_observer", "polling": "watchdog_polling_observer"}
CHILD_READY_TIMEOUT_SECONDS = 120.0


def build_inboxes(base: Path, folders: int, files: int) -> list[Path]:
    """`folders` inboxes of `files` 16-byte .txt files each; returns the inboxes."""
    inboxes = []
    for f in range(folders):
        inbox = base / "trees" / f"f{f:02d}" / "in"
        inbox.mkdir(parents=True)
        for i in range(files):
            (inbox / f"file-{i:04d}.txt").write_bytes(b"not a video....\n")
        inboxes.append(inbox)
    return inboxes


def _window(pid: int, warmup: float, seconds: float) -> dict[str, Any]:
    """CPU % of one core and wake-ups per second of `pid` over `seconds`, after `warmup`."""
    time.sleep(warmup)
    threads0 = process_threads(pid)
    ns0, cpu0 = process_thread_cpu_seconds(pid), process_cpu_seconds(pid)
    wake0, t0 = process_wakeups(pid), time.monotonic()
    time.sleep(seconds)
    ns1, cpu1 = process_thread_cpu_seconds(pid), process_cpu_seconds(pid)
    wake1, t1 = process_wakeups(pid), time.monotonic()
    wall = t1 - t0
    return {
        "cpu_percent_of_one_core": round((ns1 - ns0) / wall * 100, 4),
        "cpu_seconds": round(ns1 - ns0, 4),
        "cpu_percent_from_proc_stat": round((cpu1 - cpu0) / wall * 100, 4),
        "window_seconds": round(wall, 3),
        "wakeups_per_second": round((wake1 - wake0) / wall, 2),
        "threads_at_start_and_end": [threads0, process_threads(pid)],
        "cpu_seconds_before_window": round(cpu0, 3),
    }


def measure_daemon(
    base: Path, inboxes: list[Path], mode: str, args: argparse.Namespace, base_url: str
) -> dict[str, Any]:
    """One daemon with every inbox as a folder, in `mode`; its idle window."""
    daemon_keys: dict[str, Any] = {"observer": mode}
    if args.rescan_seconds is not None:
        daemon_keys["rescan_seconds"] = args.rescan_seconds
    ws = Workspace(root=base / f"daemon-{mode}", base_url=base_url, daemon=daemon_keys)
    for i, inbox in enumerate(inboxes):
        ws.add_folder(f"f{i:02d}", inbox=inbox)
    with Daemon(ws) as daemon:
        ready = daemon.wait_ready()
        scans = wait_first_scans(ws, daemon)
        started_wall = time.time()
        window = _window(daemon.pid, args.warmup_seconds, args.seconds)
        ended_wall = time.time()
        folders = query(ws.state_dir, "SELECT name, watch_mode, last_scan_at FROM folders")
        jobs = query(ws.state_dir, "SELECT count(*) AS n FROM jobs")[0]["n"]
    modes = sorted({row["watch_mode"] for row in folders})
    if modes != [mode]:
        raise SystemExit(f"the daemon watched in {modes}, not {mode}")
    window.update(
        {
            "ready_seconds": round(ready, 3),
            "first_scans_after_ready_seconds": round(scans, 3),
            "watch_modes": modes,
            "jobs_queued": jobs,
            "not_a_video_logged": daemon.log_events("intake.not_a_video_name"),
            "folders_rescanned_during_warmup_and_window": sum(
                1 for row in folders if (row["last_scan_at"] or 0) > started_wall
            ),
            "measured_for_seconds_after_ready": round(ended_wall - started_wall, 1),
            "config": ws.config_summary(),
        }
    )
    return window


def measure_watchdog(inboxes: list[Path], kind: str, args: argparse.Namespace) -> dict[str, Any]:
    """A child process running watchdog's `kind` observer on the inboxes; its idle window."""
    child = subprocess.Popen(
        [sys.executable, "-m", "bench.idle_cost", "--child", kind, *map(str, inboxes)],
        cwd=REPO_ROOT,
        stdin=subprocess.PIPE,
        stdout=subprocess.PIPE,
        text=True,
    )
    try:
        assert child.stdout is not None
        started = time.monotonic()
        line = child.stdout.readline().strip()
        if line != "ready":
            raise SystemExit(f"the watchdog child did not start: {line!r}")
        ready = time.monotonic() - started
        window = _window(child.pid, args.warmup_seconds, args.seconds)
        window["ready_seconds"] = round(ready, 3)
        return window
    finally:
        if child.stdin is not None:
            child.stdin.close()  # the child stops its observer at EOF
        try:
            child.wait(30)
        except subprocess.TimeoutExpired:
            child.kill()
            child.wait()


class _Quiet(FileSystemEventHandler):
    """A handler that only counts, as a user's would before doing any work."""

    def __init__(self) -> None:
        self.events = 0

    def on_any_event(self, event: FileSystemEvent) -> None:
        self.events += 1


def child_main(kind: str, roots: list[str]) -> int:
    """In the child: watch `roots` with watchdog's `kind` observer until stdin closes."""
    observer: BaseObserver = PollingObserver() if kind == "polling" else Observer()
    handler = _Quiet()
    for root in roots:
        observer.schedule(handler, root, recursive=False)
    observer.start()
    print("ready", flush=True)
    sys.stdin.read()
    observer.stop()
    observer.join()
    return 0


def main(argv: list[str] | None = None) -> int:
    """Run the four measurements, write the JSON results and print a table; the exit code."""
    parser = argparse.ArgumentParser(prog="python -m bench.idle_cost", description=__doc__)
    parser.add_argument("--folders", type=int, default=10)
    parser.add_argument("--files", type=int, default=1000, help="files per folder")
    parser.add_argument("--seconds", type=float, default=60.0, help="measured window")
    parser.add_argument("--warmup-seconds", type=float, default=15.0)
    parser.add_argument(
        "--rescan-seconds", type=float, default=None, help="daemon.rescan_seconds (default 300)"
    )
    parser.add_argument("--tmp-dir", type=Path, default=None, help="where the folders go")
    parser.add_argument("--output", type=Path, default=RESULTS_PATH)
    parser.add_argument("--child", choices=("native", "polling"), help=argparse.SUPPRESS)
    parser.add_argument("roots", nargs="*", help=argparse.SUPPRESS)
    add_code_argument(parser)
    args = parser.parse_args(argv)
    if args.child:
        return child_main(args.child, args.roots)
    if args.folders < 1 or args.files < 1 or args.seconds <= 0 or args.warmup_seconds < 0:
        parser.error("--folders, --files and --seconds must be positive")
    use_code(args.code)

    base = Path(tempfile.mkdtemp(prefix="mh-idle-cost-", dir=args.tmp_dir))
    runs: dict[str, dict[str, Any]] = {}
    try:
        inboxes = build_inboxes(base, args.folders, args.files)
        with Emulator(queue_seconds=1, render_seconds=2) as emulator:
            for mode in ("native", "polling"):
                print(f"daemon, observer = {mode!r} ...", flush=True)
                runs[f"daemon_{mode}"] = measure_daemon(
                    base, inboxes, mode, args, emulator.base_url
                )
        for mode, name in WATCHDOG_KINDS.items():
            print(f"{name} ...", flush=True)
            runs[name] = measure_watchdog(inboxes, mode, args)
    finally:
        shutil.rmtree(base, ignore_errors=True)

    def pct(name: str) -> float:
        return float(runs[name]["cpu_percent_of_one_core"])

    ratios = {
        f"daemon_{mode}/{name}": ratio(pct(f"daemon_{mode}"), pct(name))
        for mode, name in WATCHDOG_KINDS.items()
    }
    met = {mode: pct(f"daemon_{mode}") <= limit for mode, limit in TARGETS_PERCENT.items()}
    targets: dict[str, Any] = {
        f"daemon_{mode}_percent_at_most": limit for mode, limit in TARGETS_PERCENT.items()
    }
    targets["met"] = met
    results = {
        "benchmark": "idle_cost",
        "measured_at": stamp(),
        "summary": (
            "CPU % of one core (/proc/PID/task/*/schedstat) of an idle process watching the "
            "inboxes, over a window after a warm-up; the daemon in native and polling mode, "
            "watchdog's Observer and PollingObserver (default 1 s) in a child process"
        ),
        "folders": args.folders,
        "files_per_folder": args.files,
        "files": "file-NNNN.txt, 16 bytes, flat (not videos: scanned, classified, never queued)",
        "window_seconds": args.seconds,
        "warmup_seconds": args.warmup_seconds,
        "rescan_seconds": args.rescan_seconds or "default (300)",
        **machine_info(),
        "code": code_info(),
        "watchdog": watchdog.version.VERSION_STRING,
        "runs": runs,
        "ratios_cpu": ratios,
        "ratios_note": "a null ratio: the watchdog side used no measurable CPU in the window",
        "targets": targets,
    }
    write_results(args.output, results)

    print(
        f"{args.folders} folders x {args.files} files, {args.seconds:g} s window after "
        f"{args.warmup_seconds:g} s warm-up"
    )
    print(f"{'watcher':<30}{'cpu % core':>12}{'wakeups/s':>12}{'threads':>9}")
    for name, row in runs.items():
        print(
            f"{name:<30}{row['cpu_percent_of_one_core']:>12.4f}"
            f"{row['wakeups_per_second']:>12.1f}{row['threads_at_start_and_end'][1]:>9}"
        )
    for name, value in ratios.items():
        shown = f"{value:>10}" if value is not None else "  - (watchdog used no measurable CPU)"
        print(f"{name:<48}{shown}")
    for mode, limit in TARGETS_PERCENT.items():
        print(f"target daemon {mode} <= {limit} %: {'met' if met[mode] else 'NOT met'}")
    print(f"results: {args.output}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
