"""Throughput: a burst of clips dropped at once, to the last delivered output, against the SDK.

Run: `.venv/bin/python -m bench.throughput [--n 200] [--sdk-sample 8]`.

Measured from outside: a real `mh-watchd run` subprocess against `mh-watchd emulator` (both on
127.0.0.1; the emulator with `--queue-seconds 0 --render-seconds 2`, so a project completes 2 s
after its create). The daemon runs with `settle_seconds = 0`, `observer = "native"`,
`max_active_renders = 16`, `api.poll_interval_seconds = 0.5` and the other keys at their
defaults (`max_parallel_uploads = 2`, `on_success = "archive"`). `--n` distinct real videos
(1 s, 160x120 H.264, made with PyAV) are written to a staging folder on the same filesystem and
`os.rename`d into the inbox in one burst, once the journal shows the daemon's start-up scan done.

- wall: from just before the first rename to the last `done` in the journal's events (the
  daemon's clock; the output is in the outbox and the original archived by then).
- ideal: settle + ceil(n / 16) * render_seconds, i.e. 16 renders always in flight and every
  other step free. wall / ideal is the overhead (target <= 1.2).
- CPU per job: user + system seconds of the daemon process (/proc/PID/stat) from the drop to
  the end, over n. The daemon probes, hashes, uploads, polls, downloads, verifies (PyAV) and
  files each clip, and journals every step.
- complete -> download: from the emulator's request log (`GET /_emulator/requests`), per
  project, the time of the first GET that answered `complete` to the first request of its
  download URL (target p50 < 50 ms). How many GETs each project took is reported too.

Beside it, what a user would otherwise write: the official `magic-hour` SDK's
`client.v1.video_to_video.generate(..., wait_for_completion=True, download_outputs=True)` in a
sequential loop (its polling interval set to the same 0.5 s by `MAGIC_HOUR_POLL_INTERVAL`), over
`--sdk-sample` clips against a fresh emulator with the same timings. Its mean seconds per clip
times n is the extrapolated SDK wall; the speed-up is that over the daemon's wall (target >=
16x). Its CPU per job is this process's `time.process_time()` over the loop, over the sample.

The emulator's render (real PyAV decode and encode) runs in its own process beside the simulated
render time: a project is complete when `render_seconds` have passed AND the render is done; a
1 s 160x120 clip renders in ~15 ms, so the renders never hold back completion. Its CPU is
reported for each phase. Results go to bench/results/throughput.json and a table to stdout.
"""

from __future__ import annotations

import argparse
import os
import shutil
import statistics
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import httpx
import magic_hour

from bench._harness import (
    TOKEN,
    Daemon,
    Emulator,
    Workspace,
    add_code_argument,
    ceil_div,
    code_info,
    complete_to_download,
    gets_per_project,
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

RESULTS_PATH = Path(__file__).resolve().parent / "results" / "throughput.json"
TARGET_WALL_OVER_IDEAL = 1.2
TARGET_SPEEDUP = 16.0
TARGET_COMPLETE_TO_DOWNLOAD_P50_MS = 50.0
STYLE = {"art_style": "Studio Ghibli", "version": "v2"}


def run_daemon(base: Path, clips: list[Path], args: argparse.Namespace) -> dict[str, Any]:
    """Drop every clip into a real daemon's inbox at once; the run's measurements."""
    n = len(clips)
    with Emulator(queue_seconds=0, render_seconds=args.render_seconds) as emulator:
        ws = Workspace(
            root=base / "daemon",
            base_url=emulator.base_url,
            api={"poll_interval_seconds": args.poll_interval_seconds},
            daemon={
                "settle_seconds": args.settle_seconds,
                "observer": "native",
                "max_active_renders": args.max_active_renders,
            },
        )
        inbox = ws.add_folder("bench")
        with Daemon(ws) as daemon:
            daemon.wait_ready()
            wait_first_scans(ws, daemon)
            emulator_cpu0 = emulator.cpu_seconds()
            cpu0 = daemon.cpu_seconds()
            dropped_at = time.time()
            for clip in clips:
                os.rename(clip, inbox / clip.name)
            renamed_in = time.time() - dropped_at

            def all_done() -> bool:
                rows = query(ws.state_dir, "SELECT count(*) AS n FROM jobs WHERE state = 'done'")
                return bool(rows) and rows[0]["n"] >= n

            wait_until(
                all_done,
                timeout_seconds=args.timeout_seconds,
                what=f"{n} jobs done",
                every_seconds=0.2,
                daemon=daemon,
            )
            cpu = daemon.cpu_seconds() - cpu0
            emulator_cpu = emulator.cpu_seconds() - emulator_cpu0
            done_at = query(
                ws.state_dir, "SELECT max(at) AS t FROM events WHERE to_state = 'done'"
            )[0]["t"]
            queued = query(
                ws.state_dir, "SELECT min(created_at) AS first, max(created_at) AS last FROM jobs"
            )[0]
        outputs = len(list(ws.outbox("bench").rglob("*.mp4")))
        log = emulator.requests()
        counts = emulator.state()["counts"]
    wall = float(done_at) - dropped_at
    gets = gets_per_project(log)
    return {
        "wall_seconds": round(wall, 3),
        "renames_took_seconds": round(renamed_in, 4),
        "first_queued_after_seconds": round(float(queued["first"]) - dropped_at, 3),
        "last_queued_after_seconds": round(float(queued["last"]) - dropped_at, 3),
        "outputs_in_outbox": outputs,
        "cpu_seconds": round(cpu, 3),
        "cpu_seconds_per_job": round(cpu / n, 4),
        "emulator_cpu_seconds": round(emulator_cpu, 3),
        "complete_to_download": percentiles(list(complete_to_download(log).values())),
        "gets_per_project_median": statistics.median(gets.values()) if gets else None,
        "emulator_counts": counts,
        "config": ws.config_summary(),
    }


def run_sdk(base: Path, clips: list[Path], args: argparse.Namespace) -> dict[str, Any]:
    """The SDK's generate() over each clip in turn, against a fresh emulator."""
    os.environ["MAGIC_HOUR_POLL_INTERVAL"] = str(args.poll_interval_seconds)
    downloads = base / "sdk-downloads"
    downloads.mkdir()
    per_clip: list[float] = []
    with Emulator(queue_seconds=0, render_seconds=args.render_seconds) as emulator:
        client: Any = magic_hour.Client(token=TOKEN, base_url=emulator.base_url)
        emulator_cpu0 = emulator.cpu_seconds()
        cpu0 = time.process_time()
        for clip in clips:
            started = time.perf_counter()
            result = client.v1.video_to_video.generate(
                assets={"video_source": "file", "video_file_path": str(clip)},
                start_seconds=0.0,
                end_seconds=1.0,
                fps_resolution="HALF",
                style=STYLE,
                name=f"sdk/{clip.name}",
                wait_for_completion=True,
                download_outputs=True,
                download_directory=str(downloads),
            )
            per_clip.append(time.perf_counter() - started)
            if result.status != "complete" or not result.downloaded_paths:
                raise SystemExit(f"the SDK did not finish {clip.name}: {result.status}")
        cpu = time.process_time() - cpu0
        emulator_cpu = emulator.cpu_seconds() - emulator_cpu0
        log = emulator.requests()
    gets = gets_per_project(log)
    mean = statistics.fmean(per_clip)
    return {
        "sample": len(clips),
        "seconds_per_clip": [round(x, 3) for x in per_clip],
        "mean_seconds_per_clip": round(mean, 3),
        "extrapolated_wall_seconds": round(mean * args.n, 1),
        "cpu_seconds": round(cpu, 3),
        "cpu_seconds_per_job": round(cpu / len(clips), 4),
        "emulator_cpu_seconds": round(emulator_cpu, 3),
        "complete_to_download": percentiles(list(complete_to_download(log).values())),
        "gets_per_project_median": statistics.median(gets.values()) if gets else None,
        "poll_interval": f"MAGIC_HOUR_POLL_INTERVAL={args.poll_interval_seconds}",
        "sdk": getattr(magic_hour, "__version__", None) or _sdk_version(),
        "httpx": httpx.__version__,
    }


def _sdk_version() -> str | None:
    from importlib.metadata import PackageNotFoundError, version

    try:
        return version("magic-hour")
    except PackageNotFoundError:
        return None


def main(argv: list[str] | None = None) -> int:
    """Run both phases, write the JSON results and print a table; returns the exit code."""
    parser = argparse.ArgumentParser(prog="python -m bench.throughput", description=__doc__)
    parser.add_argument("--n", type=int, default=200, help="clips dropped at once")
    parser.add_argument("--sdk-sample", type=int, default=8, help="clips through the SDK loop")
    parser.add_argument("--render-seconds", type=float, default=2.0)
    parser.add_argument("--max-active-renders", type=int, default=16)
    parser.add_argument("--poll-interval-seconds", type=float, default=0.5)
    parser.add_argument("--settle-seconds", type=float, default=0.0)
    parser.add_argument("--timeout-seconds", type=float, default=1800.0)
    parser.add_argument("--tmp-dir", type=Path, default=None, help="where the folders go")
    parser.add_argument("--output", type=Path, default=RESULTS_PATH)
    add_code_argument(parser)
    args = parser.parse_args(argv)
    if args.n < 1 or args.sdk_sample < 1 or args.max_active_renders < 1:
        parser.error("--n, --sdk-sample and --max-active-renders must be positive")
    use_code(args.code)

    base = Path(tempfile.mkdtemp(prefix="mh-throughput-", dir=args.tmp_dir))
    try:
        staging = base / "staging"
        clips = [make_clip(staging / f"clip-{i:04d}.mp4", seed=i) for i in range(args.n)]
        sample = [
            make_clip(base / "sdk-in" / f"sdk-{i:03d}.mp4", seed=args.n + i)
            for i in range(args.sdk_sample)
        ]
        daemon = run_daemon(base, clips, args)
        sdk = run_sdk(base, sample, args)
    finally:
        shutil.rmtree(base, ignore_errors=True)

    batches = ceil_div(args.n, args.max_active_renders)
    ideal = args.settle_seconds + batches * args.render_seconds
    wall_over_ideal = ratio(daemon["wall_seconds"], ideal)
    speedup = ratio(sdk["extrapolated_wall_seconds"], daemon["wall_seconds"])
    cpu_ratio = ratio(daemon["cpu_seconds_per_job"], sdk["cpu_seconds_per_job"])
    c2d = daemon["complete_to_download"]
    targets = {
        "wall_over_ideal_at_most": TARGET_WALL_OVER_IDEAL,
        "speedup_at_least": TARGET_SPEEDUP,
        "complete_to_download_p50_ms_below": TARGET_COMPLETE_TO_DOWNLOAD_P50_MS,
        "met": {
            "wall_over_ideal": wall_over_ideal is not None
            and wall_over_ideal <= TARGET_WALL_OVER_IDEAL,
            "speedup": speedup is not None and speedup >= TARGET_SPEEDUP,
            "complete_to_download_p50": c2d.get("p50_ms", float("inf"))
            < TARGET_COMPLETE_TO_DOWNLOAD_P50_MS,
        },
    }
    results = {
        "benchmark": "throughput",
        "measured_at": stamp(),
        "summary": (
            "n clips renamed into one inbox at once -> last job done (daemon), against the "
            "magic-hour SDK's generate() in a sequential loop over a sample, extrapolated to n"
        ),
        "n": args.n,
        "sdk_sample": args.sdk_sample,
        "render_seconds": args.render_seconds,
        "emulator_queue_seconds": 0,
        "max_active_renders": args.max_active_renders,
        "poll_interval_seconds": args.poll_interval_seconds,
        "settle_seconds": args.settle_seconds,
        "clip": "1 s, 24 fps, 160x120 H.264 mp4 (PyAV), distinct content per clip; HALF",
        **machine_info(),
        "code": code_info(),
        "ideal_seconds": ideal,
        "ideal": f"settle + ceil({args.n} / {args.max_active_renders}) * render_seconds",
        "ratios": {
            "daemon_wall/ideal": wall_over_ideal,
            "sdk_extrapolated_wall/daemon_wall (speed-up)": speedup,
            "daemon_cpu_per_job/sdk_cpu_per_job": cpu_ratio,
            "daemon_complete_to_download_p50/sdk": ratio(
                c2d.get("p50_ms", 0.0), sdk["complete_to_download"].get("p50_ms", 0.0)
            ),
        },
        "targets": targets,
        "runs": {"daemon": daemon, "sdk_loop": sdk},
    }
    write_results(args.output, results)

    sdk_c2d = sdk["complete_to_download"]
    print(
        f"n = {args.n} clips; ideal = {ideal:g} s ({batches} batches of {args.render_seconds:g} s)"
    )
    print(f"{'':<26}{'wall s':>10}{'cpu s/job':>11}{'c->dl p50 ms':>14}{'gets/job':>10}")
    print(
        f"{'mh-watchd daemon':<26}{daemon['wall_seconds']:>10.1f}"
        f"{daemon['cpu_seconds_per_job']:>11.4f}{c2d.get('p50_ms', float('nan')):>14.1f}"
        f"{daemon['gets_per_project_median'] or 0:>10g}"
    )
    print(
        f"{'SDK loop (extrapolated)':<26}{sdk['extrapolated_wall_seconds']:>10.1f}"
        f"{sdk['cpu_seconds_per_job']:>11.4f}{sdk_c2d.get('p50_ms', float('nan')):>14.1f}"
        f"{sdk['gets_per_project_median'] or 0:>10g}"
    )
    print(f"wall / ideal: {wall_over_ideal} (target <= {TARGET_WALL_OVER_IDEAL})")
    print(f"speed-up over the SDK loop: {speedup}x (target >= {TARGET_SPEEDUP:g}x)")
    print(f"daemon CPU per job / SDK CPU per job: {cpu_ratio}")
    print(
        f"complete -> download p50: {c2d.get('p50_ms')} ms "
        f"(target < {TARGET_COMPLETE_TO_DOWNLOAD_P50_MS:g} ms)"
    )
    print(f"results: {args.output}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
