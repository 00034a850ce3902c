"""Peak memory and wall time of a big presigned upload, ours against the alternatives.

Run: `.venv/bin/python -m bench.upload_memory [--size-mib 1024]`.

A sparse file of `--size-mib` MiB is PUT to a loopback stdlib HTTP server (in a thread of this
process) that discards bodies, refuses chunked uploads with 501 and requires a Content-Length,
as object stores do. Each way of uploading runs in its own child process, which reports its
peak RSS (VmHWM from /proc/self/status) and the wall and CPU time of the upload alone:

- baseline: the child imports httpx and our client and uploads nothing (interpreter footprint)
- ours:     MagicHourClient.upload (1 MiB chunks, Content-Length, hashing what it sends)
- plain:    an httpx streaming PUT from a 1 MiB chunk generator with Content-Length
- sdk:      what magic-hour 0.90.0 does: httpx.Client(timeout=None).put(content=read_bytes())
- httpx_put_default_timeout: `httpx.put(url, content=path.read_bytes())` with httpx's default
            5 s timeouts (a write timeout makes httpcore re-slice the whole buffer per send)

Each mode runs `--repeat` times (default 3): the highest peak and the median times are kept.
Ours is slower than plain by the SHA-256 of every byte (the job's fingerprint), ~0.6 s/GiB here.

Results go to bench/results/upload_memory.json and a table on stdout. The file is deleted.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import resource
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Iterator
from datetime import UTC, datetime
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

CHUNK_BYTES = 1024 * 1024
MODES: tuple[str, ...] = ("baseline", "ours", "plain", "sdk", "httpx_put_default_timeout")
RESULTS_PATH = Path(__file__).resolve().parent / "results" / "upload_memory.json"
REPO_ROOT = Path(__file__).resolve().parent.parent
CHILD_TIMEOUT_SECONDS = 900.0


class _DiscardingStore(BaseHTTPRequestHandler):
    """Reads and discards PUT bodies; 501 for chunked, 411 without Content-Length."""

    received: list[int] = []  # noqa: RUF012 - one server per run, read after it stops

    def do_PUT(self) -> None:
        if "chunked" in self.headers.get("Transfer-Encoding", "").lower():
            self._answer(501)
            return
        length_header = self.headers.get("Content-Length")
        if length_header is None:
            self._answer(411)
            return
        remaining = int(length_header)
        buffer = bytearray(CHUNK_BYTES)
        view = memoryview(buffer)
        got = 0
        while remaining > 0:
            n = self.rfile.readinto(view[: min(CHUNK_BYTES, remaining)])
            if not n:
                break
            got += n
            remaining -= n
        self.received.append(got)
        self._answer(200 if remaining == 0 else 400)

    def _answer(self, status: int) -> None:
        self.send_response(status)
        self.send_header("Content-Length", "0")
        self.end_headers()

    def log_message(self, format: str, *args: Any) -> None:
        pass  # keep the table readable


def _peak_rss_mib() -> float:
    """This process's peak resident set (VmHWM), in MiB."""
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith("VmHWM:"):
            return int(line.split()[1]) / 1024
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024  # Linux: KiB


def _chunks(path: Path) -> Iterator[bytes]:
    with path.open("rb") as f:
        while chunk := f.read(CHUNK_BYTES):
            yield chunk


def _run_child(mode: str, url: str, path: Path) -> dict[str, object]:
    """Perform one upload the `mode` way in this (child) process; return its measurements."""
    import httpx

    from mh_watchd.adapters.magic_hour import MagicHourClient, build_http_client

    size = path.stat().st_size
    started = time.monotonic()
    cpu_started = time.process_time()
    status: int | None = None
    if mode == "ours":
        with build_http_client() as http:
            client = MagicHourClient(http, base_url=url, token="bench")
            client.upload(url, path)
            status = 200  # upload() raises on anything but 2xx
    elif mode == "plain":
        timeout = httpx.Timeout(60.0, read=300.0, write=300.0, pool=300.0)
        with httpx.Client(timeout=timeout) as http:
            headers = {"Content-Length": str(size)}
            status = http.put(url, content=_chunks(path), headers=headers).status_code
    elif mode == "sdk":
        with httpx.Client(timeout=None) as http:
            status = http.put(url, content=path.read_bytes()).status_code
    elif mode == "httpx_put_default_timeout":
        status = httpx.put(url, content=path.read_bytes()).status_code
    elif mode != "baseline":
        raise SystemExit(f"unknown mode {mode!r}")
    return {
        "mode": mode,
        "status": status,
        "peak_rss_mib": round(_peak_rss_mib(), 1),
        "wall_seconds": round(time.monotonic() - started, 2),
        "cpu_seconds": round(time.process_time() - cpu_started, 2),
    }


def _measure(mode: str, url: str, path: Path) -> dict[str, object]:
    """Run `mode` in a fresh child process and return what it reported."""
    command = [
        sys.executable, "-m", "bench.upload_memory", "--child", mode, "--url", url,
        "--file", str(path),
    ]  # fmt: skip
    done = subprocess.run(
        command,
        cwd=REPO_ROOT,
        capture_output=True,
        text=True,
        timeout=CHILD_TIMEOUT_SECONDS,
        check=False,
    )
    if done.returncode != 0:
        raise SystemExit(f"{mode} failed (exit {done.returncode}):\n{done.stderr[-2000:]}")
    result: dict[str, object] = json.loads(done.stdout.strip().splitlines()[-1])
    return result


def _ratio(a: object, b: object) -> float | None:
    if isinstance(a, int | float) and isinstance(b, int | float) and b:
        return round(a / b, 3)
    return None


def _summarize(samples: list[dict[str, object]]) -> dict[str, object]:
    """One mode's result: the highest peak RSS, the median wall and CPU time, every sample."""

    def values(key: str) -> list[float]:
        return [float(v) for s in samples if isinstance(v := s[key], int | float)]

    return {
        "peak_rss_mib": max(values("peak_rss_mib")),
        "wall_seconds": statistics.median(values("wall_seconds")),
        "cpu_seconds": statistics.median(values("cpu_seconds")),
        "server_bytes": int(min(values("server_bytes"))),
        "samples": samples,
    }


def run(size_mib: int, output: Path, repeat: int = 3) -> dict[str, object]:
    """Run every mode `repeat` times against a sparse file of `size_mib` MiB, each in a fresh
    child process; write the results to `output` and return them."""
    import httpx

    _DiscardingStore.received = []
    server = ThreadingHTTPServer(("127.0.0.1", 0), _DiscardingStore)
    thread = threading.Thread(target=server.serve_forever, name="bench-store")
    thread.start()
    runs: dict[str, dict[str, object]] = {}
    try:
        host, port = server.server_address[:2]
        url = f"http://{host!s}:{port}/bucket/sparse.mp4?X-Signature=bench"
        with tempfile.TemporaryDirectory(prefix="mh-bench-") as tmp:
            path = Path(tmp) / "sparse.mp4"
            with path.open("wb") as f:
                f.truncate(size_mib * CHUNK_BYTES)
            try:
                for mode in MODES:
                    samples: list[dict[str, object]] = []
                    for _ in range(repeat):
                        before = len(_DiscardingStore.received)
                        sample = _measure(mode, url, path)
                        got = _DiscardingStore.received[before:]
                        sample["server_bytes"] = got[-1] if got else 0
                        samples.append(sample)
                    runs[mode] = _summarize(samples)
                    print(f"  measured {mode} x{repeat}", file=sys.stderr)
            finally:
                path.unlink(missing_ok=True)
    finally:
        server.shutdown()
        server.server_close()
        thread.join(timeout=30)

    size = size_mib * CHUNK_BYTES
    for mode in MODES[1:]:
        if runs[mode]["server_bytes"] != size:
            raise SystemExit(f"{mode}: the server got {runs[mode]['server_bytes']} of {size}")

    def peak(mode: str) -> object:
        return runs[mode]["peak_rss_mib"]

    results: dict[str, object] = {
        "benchmark": "upload_memory",
        "measured_at": datetime.now(UTC).isoformat(timespec="seconds"),
        "size_mib": size_mib,
        "repeat": repeat,
        "summary": "peak_rss_mib is the highest of the samples; wall/cpu seconds the median",
        "chunk_bytes": CHUNK_BYTES,
        "python": platform.python_version(),
        "httpx": httpx.__version__,
        "machine": {"cpus": os.cpu_count(), "platform": platform.platform()},
        "runs": runs,
        "ratios": {
            "peak_rss_ours_over_plain": _ratio(peak("ours"), peak("plain")),
            "peak_rss_ours_over_sdk": _ratio(peak("ours"), peak("sdk")),
            "wall_ours_over_plain": _ratio(
                runs["ours"]["wall_seconds"], runs["plain"]["wall_seconds"]
            ),
            "wall_ours_over_sdk": _ratio(runs["ours"]["wall_seconds"], runs["sdk"]["wall_seconds"]),
        },
    }
    output.parent.mkdir(parents=True, exist_ok=True)
    output.write_text(json.dumps(results, indent=2) + "\n")
    return results


def _table(results: dict[str, Any]) -> str:
    lines = [
        f"upload of a {results['size_mib']} MiB file over loopback (httpx {results['httpx']})",
        f"{'mode':<27}{'peak RSS MiB':>14}{'wall s':>9}{'cpu s':>9}",
    ]
    for mode, run_ in results["runs"].items():
        lines.append(
            f"{mode:<27}{run_['peak_rss_mib']:>14.1f}{run_['wall_seconds']:>9.2f}"
            f"{run_['cpu_seconds']:>9.2f}"
        )
    ratios = results["ratios"]
    lines.append(
        f"peak RSS ours/plain = {ratios['peak_rss_ours_over_plain']}, "
        f"ours/sdk = {ratios['peak_rss_ours_over_sdk']}"
    )
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    """Entry point: the benchmark (default) or one measured child (`--child MODE`)."""
    parser = argparse.ArgumentParser(prog="python -m bench.upload_memory", description=__doc__)
    parser.add_argument("--size-mib", type=int, default=1024, help="file size (default 1024)")
    parser.add_argument("--repeat", type=int, default=3, help="runs per mode (default 3)")
    parser.add_argument("--output", type=Path, default=RESULTS_PATH, help=argparse.SUPPRESS)
    parser.add_argument("--child", choices=MODES, help=argparse.SUPPRESS)
    parser.add_argument("--url", help=argparse.SUPPRESS)
    parser.add_argument("--file", type=Path, help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    if args.child:
        print(json.dumps(_run_child(args.child, args.url, args.file)))
        return 0
    if args.size_mib < 1 or args.repeat < 1:
        parser.error("--size-mib and --repeat must be at least 1")
    results = run(args.size_mib, args.output, args.repeat)
    print(_table(results))
    print(f"written to {args.output}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
