"""CPU per rescan pass on a big tree: our Poller against watchdog's PollingObserver snapshot diff.

Run: `.venv/bin/python -m bench.poller_cost [--files 100000] [--per-dir 100] [--repeat 3]`.

Builds a tree of `--files` empty files, `--per-dir` to a directory, in a temp dir, lets the
directory timestamps age past the Poller's same-tick guard, takes each watcher's baseline, then
`--repeat` times (each round after a pause like the one between real passes) measures the CPU
time (time.process_time, this process only) of one pass of:

- poll_once_idle:      our Poller.poll_once() with nothing changed (stats each directory only)
- poll_once_new_file:  our Poller.poll_once() after one file was created (re-lists one directory)
- full_walk_changed:   our Poller.full_walk() after one file grew in place (re-stats everything)
- watchdog_diff:       what one PollingObserver pass does, after one file grew in place: a new
                       watchdog.utils.dirsnapshot.DirectorySnapshot and a DirectorySnapshotDiff
                       against the previous one

Every pass is checked to have found exactly the change made. Medians go to
bench/results/poller_cost.json with the ratios ours/watchdog, and a table to stdout. The tree is
deleted afterwards.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import queue
import shutil
import statistics
import sys
import tempfile
import time
from collections.abc import Callable
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import watchdog.version
from watchdog.utils.dirsnapshot import DirectorySnapshot, DirectorySnapshotDiff

from mh_watchd.adapters.watcher import FRESH_DIR_NS, FsEvent, Poller

RESULTS_PATH = Path(__file__).resolve().parent / "results" / "poller_cost.json"
MODES = ("poll_once_idle", "poll_once_new_file", "full_walk_changed", "watchdog_diff")


def build_tree(root: Path, files: int, per_dir: int) -> int:
    """Create `files` empty files, `per_dir` per directory, under root; return the dir count."""
    dirs = 0
    for start in range(0, files, per_dir):
        directory = root / f"d{dirs:05d}"
        directory.mkdir()
        dirs += 1
        for i in range(min(per_dir, files - start)):
            os.close(os.open(directory / f"f{i:04d}.mp4", os.O_CREAT | os.O_WRONLY, 0o644))
    return dirs


def _timed(action: Callable[[], Any]) -> tuple[Any, float, float]:
    cpu, wall = time.process_time(), time.perf_counter()
    result = action()
    return result, time.process_time() - cpu, time.perf_counter() - wall


def _grow(path: Path) -> None:
    with path.open("ab") as fh:
        fh.write(b"grown")


def measure(root: Path, dirs: int, per_dir: int, repeat: int) -> dict[str, list[dict[str, Any]]]:
    """Run every mode `repeat` times on the tree; return the samples by mode."""
    sink: queue.Queue[FsEvent] = queue.Queue()
    poller = Poller("bench", root, recursive=True, sink=sink)
    time.sleep(FRESH_DIR_NS / 1e9 + 0.1)  # a tree at rest: older than the same-tick guard
    poller.poll_once()  # our baseline
    snapshot = DirectorySnapshot(str(root), recursive=True)
    samples: dict[str, list[dict[str, Any]]] = {mode: [] for mode in MODES}

    def run(mode: str, action: Callable[[], Any], want: int) -> Any:
        listed, statted = poller.dirs_listed, poller.files_statted
        result, cpu, wall = _timed(action)
        found = result if isinstance(result, int) else _diff_size(result)
        if found != want:
            raise SystemExit(f"{mode}: expected {want} change(s), found {found}")
        samples[mode].append(
            {
                "cpu_seconds": round(cpu, 5),
                "wall_seconds": round(wall, 5),
                "dirs_listed": poller.dirs_listed - listed,
                "files_statted": poller.files_statted - statted,
            }
        )
        while not sink.empty():
            sink.get_nowait()
        return result

    def settle() -> None:
        # Real passes are seconds apart: let the last change age past the same-tick guard and
        # take the one re-listing it causes outside the measurements.
        time.sleep(FRESH_DIR_NS / 1e9 + 0.1)
        poller.poll_once()
        while not sink.empty():
            sink.get_nowait()

    for r in range(repeat):
        target = root / f"d{(r * 7919) % dirs:05d}"
        settle()
        run("poll_once_idle", poller.poll_once, 0)
        (target / f"new-{r}.mp4").write_bytes(b"new")
        run("poll_once_new_file", poller.poll_once, 1)
        # The created file's directory is re-listed once more on the next pass (the same-tick
        # guard); let that happen outside the measurements, as it would between real passes.
        poller.poll_once()
        _grow(target / f"f{r % per_dir:04d}.mp4")
        run("full_walk_changed", poller.full_walk, 1)
        # watchdog's reference pass (unmeasured), so its measured pass sees this one change only.
        snapshot = DirectorySnapshot(str(root), recursive=True)
        _grow(target / f"f{r % per_dir:04d}.mp4")

        def watchdog_pass() -> DirectorySnapshotDiff:
            nonlocal snapshot
            new = DirectorySnapshot(str(root), recursive=True)
            diff = DirectorySnapshotDiff(snapshot, new)
            snapshot = new
            return diff

        run("watchdog_diff", watchdog_pass, 1)
    return samples


def _diff_size(diff: DirectorySnapshotDiff) -> int:
    return len(diff.files_created) + len(diff.files_deleted) + len(diff.files_modified)


def summarize(samples: dict[str, list[dict[str, Any]]]) -> dict[str, dict[str, Any]]:
    """Medians per mode, with the samples kept."""
    out: dict[str, dict[str, Any]] = {}
    for mode, rows in samples.items():
        out[mode] = {
            "cpu_seconds_median": round(statistics.median(r["cpu_seconds"] for r in rows), 5),
            "wall_seconds_median": round(statistics.median(r["wall_seconds"] for r in rows), 5),
            "dirs_listed": rows[-1]["dirs_listed"],
            "files_statted": rows[-1]["files_statted"],
            "samples": rows,
        }
    return out


def main(argv: list[str] | None = None) -> int:
    """Run the benchmark, write the JSON results and print a table; returns the exit code."""
    parser = argparse.ArgumentParser(prog="python -m bench.poller_cost", description=__doc__)
    parser.add_argument("--files", type=int, default=100_000)
    parser.add_argument("--per-dir", type=int, default=100)
    parser.add_argument("--repeat", type=int, default=3)
    parser.add_argument("--tmp-dir", type=Path, default=None, help="where to build the tree")
    parser.add_argument("--output", type=Path, default=RESULTS_PATH)
    args = parser.parse_args(argv)
    if args.files < 1 or args.per_dir < 1 or args.repeat < 1:
        parser.error("--files, --per-dir and --repeat must be positive")

    base = Path(tempfile.mkdtemp(prefix="mh-poller-cost-", dir=args.tmp_dir))
    try:
        root = base / "inbox"
        root.mkdir()
        started = time.perf_counter()
        dirs = build_tree(root, args.files, args.per_dir)
        build_seconds = time.perf_counter() - started
        summary = summarize(measure(root, dirs, args.per_dir, args.repeat))
    finally:
        shutil.rmtree(base, ignore_errors=True)

    watchdog_cpu = summary["watchdog_diff"]["cpu_seconds_median"]
    ratios = {
        f"{mode}/watchdog_diff": round(summary[mode]["cpu_seconds_median"] / watchdog_cpu, 4)
        for mode in MODES
        if mode != "watchdog_diff"
    }
    results = {
        "benchmark": "poller_cost",
        "measured_at": datetime.now(UTC).isoformat(timespec="seconds"),
        "files": args.files,
        "dirs": dirs,
        "per_dir": args.per_dir,
        "repeat": args.repeat,
        "build_seconds": round(build_seconds, 2),
        "tree_parent": str(args.tmp_dir or tempfile.gettempdir()),
        "summary": "CPU seconds (process_time) of one pass, median of the repeats; page cache warm",
        "python": platform.python_version(),
        "watchdog": watchdog.version.VERSION_STRING,
        "machine": {"cpus": os.cpu_count(), "platform": platform.platform()},
        "runs": summary,
        "ratios_cpu": ratios,
    }
    args.output.parent.mkdir(parents=True, exist_ok=True)
    args.output.write_text(json.dumps(results, indent=2) + "\n")

    print(f"{args.files} files in {dirs} directories (built in {build_seconds:.1f} s)")
    print(f"{'pass':<22}{'cpu ms':>10}{'wall ms':>10}{'dirs listed':>13}{'files stat':>12}")
    for mode in MODES:
        row = summary[mode]
        print(
            f"{mode:<22}{row['cpu_seconds_median'] * 1000:>10.1f}"
            f"{row['wall_seconds_median'] * 1000:>10.1f}"
            f"{row['dirs_listed'] if mode != 'watchdog_diff' else '-':>13}"
            f"{row['files_statted'] if mode != 'watchdog_diff' else '-':>12}"
        )
    for name, ratio in ratios.items():
        print(f"{name:<40}{ratio:>8.3f}")
    print(f"results: {args.output}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
