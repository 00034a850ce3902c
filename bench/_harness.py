"""What the daemon benchmarks share: a real `mh-watchd run` and `mh-watchd emulator` as
subprocesses, a config writer, small real clips, the journal read from outside, /proc CPU.

The benchmarks judge the daemon from outside, as a user would see it: by its journal (read-only
SQLite), its outputs, the emulator's counts and request log, and the CPU time the kernel charged
to its process. Nothing here imports the daemon's internals, so the numbers stay comparable
across a rewrite of the loop.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import math
import os
import platform
import signal
import socket
import sqlite3
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime
from fractions import Fraction
from pathlib import Path
from typing import Any

import av
import httpx

TOKEN = "mhk_live_bench_key"
TOKEN_ENV = "MH_BENCH_TOKEN"
READY_TIMEOUT_SECONDS = 60.0
STOP_TIMEOUT_SECONDS = 90.0
CLOCK_TICKS = os.sysconf("SC_CLK_TCK")
JOURNAL_NAME = "journal.sqlite3"


REPO_ROOT = Path(__file__).resolve().parent.parent
# Which code `mh-watchd` runs from: None = the installed package (this checkout's working
# tree), else a directory holding an `mh_watchd` package (e.g. a `git archive` of a commit).
_code_root: Path | None = None


def use_code(root: Path | None) -> None:
    """Run the daemon and the emulator from the `mh_watchd` package under `root` (None: the
    installed one). SystemExit when `root` holds no such package."""
    global _code_root
    if root is not None and not (root / "mh_watchd" / "__init__.py").is_file():
        raise SystemExit(f"--code {root}: no mh_watchd package there")
    _code_root = root.resolve() if root is not None else None


def add_code_argument(parser: argparse.ArgumentParser) -> None:
    """The `--code DIR` option every daemon benchmark takes."""
    parser.add_argument(
        "--code",
        type=Path,
        default=None,
        help="run mh-watchd from the mh_watchd package in DIR (e.g. `git archive HEAD mh_watchd "
        "| tar -x -C DIR`) instead of the installed one",
    )


def _command(*args: str) -> tuple[list[str], dict[str, str], str | None]:
    """argv, environment and cwd of an `mh-watchd ARGS...` subprocess."""
    env = dict(os.environ)
    if _code_root is not None:
        # `-m` puts the cwd first on sys.path: run from the code root so it is the one found.
        env["PYTHONPATH"] = os.pathsep.join(
            [str(_code_root), *filter(None, [env.get("PYTHONPATH")])]
        )
        return [sys.executable, "-m", "mh_watchd", *args], env, str(_code_root)
    script = Path(sys.executable).with_name("mh-watchd")
    argv = [str(script)] if script.exists() else [sys.executable, "-m", "mh_watchd"]
    return [*argv, *args], env, None


def code_info() -> dict[str, Any]:
    """Which code ran: the installed package or a --code directory, and the checkout's commit."""

    def git(*args: str) -> str:
        try:
            done = subprocess.run(
                ["git", *args], cwd=REPO_ROOT, capture_output=True, text=True, timeout=30
            )
        except OSError:
            return ""
        return done.stdout.strip()

    info: dict[str, Any] = {"checkout_head": git("rev-parse", "HEAD") or None}
    if _code_root is None:
        changed = git("status", "--porcelain", "--", "mh_watchd").splitlines()
        info["ran"] = "the installed package (this checkout's working tree)"
        info["uncommitted_changes_in_mh_watchd"] = [line[3:] for line in changed]
    else:
        info["ran"] = str(_code_root)
        source = _code_root / "SOURCE"
        if source.is_file():
            info["code_source"] = source.read_text().strip()
    return info


# -- measurements ---------------------------------------------------------------------------


def process_wakeups(pid: int) -> int:
    """Context switches (voluntary + involuntary) of every thread of process `pid` so far: how
    often it woke up. Threads that already exited are not counted."""
    total = 0
    for status in Path(f"/proc/{pid}/task").glob("*/status"):
        with contextlib.suppress(OSError):
            for line in status.read_text().splitlines():
                if line.startswith(("voluntary_ctxt_switches", "nonvoluntary_ctxt_switches")):
                    total += int(line.split(":")[1])
    return total


def process_thread_cpu_seconds(pid: int) -> float:
    """CPU seconds of the live threads of process `pid`, to the nanosecond (the first field of
    /proc/PID/task/*/schedstat); threads that already exited are not counted."""
    total = 0
    for schedstat in Path(f"/proc/{pid}/task").glob("*/schedstat"):
        with contextlib.suppress(OSError, ValueError, IndexError):
            total += int(schedstat.read_text().split()[0])
    return total / 1e9


def process_threads(pid: int) -> int:
    """How many threads process `pid` has now."""
    return len(list(Path(f"/proc/{pid}/task").iterdir()))


def process_cpu_seconds(pid: int) -> float:
    """User + system CPU seconds the kernel charged to process `pid` (all its threads), plus
    those of its waited-for children, from /proc/PID/stat."""
    raw = Path(f"/proc/{pid}/stat").read_text()
    # Field 2 (the command) may hold spaces or parentheses: split after its closing one.
    fields = raw[raw.rindex(")") + 2 :].split()
    # utime, stime, cutime, cstime are fields 14-17 of the file, 12-15 after the command.
    return sum(int(value) for value in fields[11:15]) / CLOCK_TICKS


def percentiles(samples_seconds: Sequence[float]) -> dict[str, Any]:
    """p50/p90/p99/min/max (in ms) of a list of seconds, with the sorted samples kept."""
    ms = sorted(x * 1000 for x in samples_seconds)
    if not ms:
        return {"n": 0}
    cuts = statistics.quantiles(ms, n=100, method="inclusive") if len(ms) > 1 else [ms[0]] * 99
    return {
        "n": len(ms),
        "p50_ms": round(statistics.median(ms), 3),
        "p90_ms": round(cuts[89], 3),
        "p99_ms": round(cuts[98], 3),
        "min_ms": round(ms[0], 3),
        "max_ms": round(ms[-1], 3),
        "samples_ms": [round(x, 3) for x in ms],
    }


def machine_info() -> dict[str, Any]:
    """The facts every result file carries about where it ran."""
    return {
        "python": platform.python_version(),
        "machine": {
            "cpus": os.cpu_count(),
            "platform": platform.platform(),
            "loadavg_at_end": [round(x, 2) for x in os.getloadavg()],
        },
    }


def stamp() -> str:
    """Now, as the results' `measured_at`."""
    return datetime.now(UTC).isoformat(timespec="seconds")


def write_results(path: Path, results: dict[str, Any]) -> None:
    """Write one benchmark's results as indented JSON."""
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(results, indent=2) + "\n")


def ratio(numerator: float, denominator: float) -> float | None:
    """numerator / denominator rounded to 4 digits, None when the denominator is 0."""
    return round(numerator / denominator, 4) if denominator else None


# -- clips ----------------------------------------------------------------------------------


def make_clip(path: Path, *, seconds: float = 1.0, fps: int = 24, seed: int = 0) -> Path:
    """Write a real 160x120 H.264 mp4 of `seconds`: a bar moving over a background coloured by
    `seed`, so clips with different seeds differ in content (and so in fingerprint)."""
    width, height = 160, 120
    path.parent.mkdir(parents=True, exist_ok=True)
    frames = max(1, round(seconds * fps))
    background = bytes(((seed * 37) % 256, (seed * 91 + 60) % 256, (seed * 53 + 120) % 256))
    bar = b"\xff\xff\xff"
    with av.open(str(path), mode="w") as container:
        stream = container.add_stream("libx264", rate=fps)
        stream.width, stream.height, stream.pix_fmt = width, height, "yuv420p"
        for i in range(frames):
            frame = av.VideoFrame(width, height, "rgb24")
            plane = frame.planes[0]
            x = (i * 6) % (width - 16)
            row = background * x + bar * 16 + background * (width - x - 16)
            row += b"\0" * (plane.line_size - width * 3)
            plane.update(row * height)
            frame.pts = i
            frame.time_base = Fraction(1, fps)
            for packet in stream.encode(frame):
                container.mux(packet)
        for packet in stream.encode():
            container.mux(packet)
    return path


# -- the emulator -------------------------------------------------------------------------


class Emulator:
    """`mh-watchd emulator` as a subprocess on 127.0.0.1 (a free port), with its control API."""

    def __init__(self, *, queue_seconds: float, render_seconds: float, seed: int = 1) -> None:
        self.args, self.env, self.cwd = _command(
            "emulator",
            "--port",
            "0",
            "--queue-seconds",
            str(queue_seconds),
            "--render-seconds",
            str(render_seconds),
            "--seed",
            str(seed),
        )
        self.proc: subprocess.Popen[str] | None = None
        self.base_url = ""
        self._http = httpx.Client(timeout=30)

    def __enter__(self) -> Emulator:
        self.proc = subprocess.Popen(
            self.args,
            env=self.env,
            cwd=self.cwd,
            stdout=subprocess.PIPE,
            stderr=subprocess.DEVNULL,
            text=True,
        )
        assert self.proc.stdout is not None
        line = self.proc.stdout.readline().strip()
        if not line.startswith("http"):
            self.__exit__()
            raise SystemExit(f"the emulator did not start: {line!r}")
        self.base_url = line
        return self

    def __exit__(self, *exc_info: object) -> None:
        self._http.close()
        if self.proc is not None and self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
            try:
                self.proc.wait(30)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()

    def cpu_seconds(self) -> float:
        """CPU seconds charged to the emulator process so far (its renders included)."""
        assert self.proc is not None
        return process_cpu_seconds(self.proc.pid)

    def state(self) -> dict[str, Any]:
        """`GET /_emulator/state`."""
        return dict(self._http.get(f"{self.base_url}/_emulator/state").raise_for_status().json())

    def requests(self) -> list[dict[str, Any]]:
        """`GET /_emulator/requests`: answered API requests with their wall-clock times."""
        answer = self._http.get(f"{self.base_url}/_emulator/requests")
        if answer.status_code == 404:
            raise SystemExit("this emulator has no request log (GET /_emulator/requests)")
        return list(answer.raise_for_status().json()["requests"])


def complete_to_download(log: list[dict[str, Any]]) -> dict[str, float]:
    """Per project: seconds from the first GET that answered `complete` to the first download
    request of its output (projects never downloaded are left out)."""
    seen: dict[str, float] = {}
    fetched: dict[str, float] = {}
    for entry in log:
        project = entry.get("project_id")
        if project is None:
            continue
        if entry["route"] == "get" and entry["status"] == "complete":
            seen.setdefault(project, entry["at"])
        elif entry["route"] == "download":
            fetched.setdefault(project, entry["at"])
    return {p: fetched[p] - seen[p] for p in fetched if p in seen}


def gets_per_project(log: list[dict[str, Any]]) -> dict[str, int]:
    """How many project GETs each project got."""
    counts: dict[str, int] = {}
    for entry in log:
        if entry["route"] == "get" and entry["project_id"]:
            counts[entry["project_id"]] = counts.get(entry["project_id"], 0) + 1
    return counts


# -- the daemon -----------------------------------------------------------------------------


def _toml(value: Any) -> str:
    return json.dumps(value)  # strings, numbers, booleans and lists of them are valid TOML


@dataclass
class Workspace:
    """A daemon's folders and config under one root: `<root>/<folder>/{in,out}`, `<root>/state`."""

    root: Path
    base_url: str
    api: dict[str, Any] = field(default_factory=dict)
    daemon: dict[str, Any] = field(default_factory=dict)
    folders: list[dict[str, Any]] = field(default_factory=list)

    @property
    def state_dir(self) -> Path:
        return self.root / "state"

    @property
    def config_path(self) -> Path:
        return self.root / "config.toml"

    def inbox(self, name: str) -> Path:
        for entry in self.folders:
            if entry["name"] == name:
                return Path(entry["inbox"])
        return self.root / name / "in"

    def outbox(self, name: str) -> Path:
        return self.root / name / "out"

    def add_folder(self, name: str, *, inbox: Path | None = None, **keys: Any) -> Path:
        """Add a [[folder]] (Studio Ghibli unless `style` is given) with its inbox (default
        `<root>/<name>/in`) and outbox `<root>/<name>/out`, both created; returns the inbox."""
        inbox = inbox or self.root / name / "in"
        inbox.mkdir(parents=True, exist_ok=True)
        self.outbox(name).mkdir(parents=True, exist_ok=True)
        entry = {"name": name, "inbox": str(inbox), "outbox": str(self.outbox(name)), **keys}
        self.folders.append(entry)
        return inbox

    def write_config(self) -> Path:
        """Write config.toml: the benchmark's [api] and [daemon] keys over quiet defaults."""
        api = {
            "base_url": self.base_url,
            "token_env": TOKEN_ENV,
            "request_timeout_seconds": 30,
            **self.api,
        }
        daemon = {
            "state_dir": str(self.state_dir),
            "http_listen": "",
            "log_format": "json",
            **self.daemon,
        }
        lines = ["[api]", *(f"{k} = {_toml(v)}" for k, v in api.items()), ""]
        lines += ["[daemon]", *(f"{k} = {_toml(v)}" for k, v in daemon.items()), ""]
        for entry in self.folders:
            lines.append("[[folder]]")
            lines += [f"{k} = {_toml(v)}" for k, v in entry.items() if k != "style"]
            lines.append("[folder.style]")
            style = entry.get("style") or {"art_style": "Studio Ghibli", "version": "v2"}
            lines += [f"{k} = {_toml(v)}" for k, v in style.items()]
            lines.append("")
        self.config_path.write_text("\n".join(lines))
        return self.config_path

    def config_summary(self) -> dict[str, Any]:
        """The [api] and [daemon] keys the benchmark set (for the results file)."""
        return {"api": dict(self.api), "daemon": dict(self.daemon)}


class _NotifySocket:
    """An sd_notify socket (as systemd offers one): READY=1 is the daemon's own word that the
    journal is open and every folder is watched. Drained all along, as systemd does, so the
    daemon never waits on a full queue."""

    def __init__(self, path: Path) -> None:
        self.path = path
        self.sock = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
        self.sock.bind(str(path))
        self.sock.settimeout(0.2)
        self.ready = threading.Event()
        self.messages = 0
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._drain, name="bench-notify", daemon=True)
        self._thread.start()

    def _drain(self) -> None:
        while not self._stop.is_set():
            try:
                data = self.sock.recv(4096)
            except TimeoutError:
                continue
            except OSError:
                return
            self.messages += 1
            if b"READY=1" in data.split(b"\n"):
                self.ready.set()

    def close(self) -> None:
        self._stop.set()
        self._thread.join()
        self.sock.close()
        self.path.unlink(missing_ok=True)


class Daemon:
    """`mh-watchd run -c CONFIG` as a subprocess, its log in `<root>/daemon.log`."""

    def __init__(self, ws: Workspace) -> None:
        self.ws = ws
        self.proc: subprocess.Popen[bytes] | None = None
        self.log_path = ws.root / "daemon.log"
        self._notify: _NotifySocket | None = None

    @property
    def pid(self) -> int:
        assert self.proc is not None
        return self.proc.pid

    def __enter__(self) -> Daemon:
        self.ws.write_config()
        # A short path: AF_UNIX addresses are limited to 108 bytes.
        notify_path = Path(tempfile.mkdtemp(prefix="mh-bench-")) / "notify"
        self._notify = _NotifySocket(notify_path)
        argv, env, cwd = _command("run", "-c", str(self.ws.config_path))
        env = {k: v for k, v in env.items() if not k.startswith("MAGIC_HOUR")}
        env.pop("WATCHDOG_USEC", None)
        env[TOKEN_ENV] = TOKEN
        env["NOTIFY_SOCKET"] = str(notify_path)
        with self.log_path.open("ab") as log:
            self.proc = subprocess.Popen(
                argv,
                env=env,
                cwd=cwd,
                stdout=log,
                stderr=subprocess.STDOUT,
            )
        return self

    def wait_ready(self, timeout_seconds: float = READY_TIMEOUT_SECONDS) -> float:
        """Block until READY=1; returns the seconds it took. SystemExit if the daemon died."""
        assert self._notify is not None and self.proc is not None
        started = time.monotonic()
        while not self._notify.ready.wait(0.1):
            if self.proc.poll() is not None:
                raise SystemExit(f"the daemon exited ({self.proc.returncode}):\n{self.log_tail()}")
            if time.monotonic() - started > timeout_seconds:
                raise SystemExit(f"the daemon was not ready in {timeout_seconds} s")
        return time.monotonic() - started

    def cpu_seconds(self) -> float:
        """CPU seconds charged to the daemon process so far."""
        return process_cpu_seconds(self.pid)

    def alive(self) -> bool:
        return self.proc is not None and self.proc.poll() is None

    def log_tail(self, chars: int = 4000) -> str:
        try:
            return self.log_path.read_text(errors="replace")[-chars:]
        except OSError:
            return ""

    def log_events(self, event: str) -> int:
        """How many JSON log lines have `"event": event`."""
        needle = f'"event": "{event}"'
        count = 0
        with contextlib.suppress(OSError), self.log_path.open(errors="replace") as fh:
            for line in fh:
                if needle in line or f'"event":"{event}"' in line:
                    count += 1
        return count

    def __exit__(self, *exc_info: object) -> None:
        if self.proc is not None and self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
            try:
                self.proc.wait(STOP_TIMEOUT_SECONDS)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()
        if self._notify is not None:
            self._notify.close()
            self._notify.path.parent.rmdir()
            self._notify = None


# -- the journal, read from outside ---------------------------------------------------------


@contextlib.contextmanager
def journal(state_dir: Path) -> Iterator[sqlite3.Connection | None]:
    """A read-only connection to the daemon's journal, or None while there is none yet."""
    path = state_dir / JOURNAL_NAME
    if not path.exists():
        yield None
        return
    conn = sqlite3.connect(f"file:{path}?mode=ro", uri=True, timeout=5)
    conn.row_factory = sqlite3.Row
    try:
        yield conn
    finally:
        conn.close()


def query(state_dir: Path, sql: str, *params: Any) -> list[sqlite3.Row]:
    """Rows of a read-only query on the journal; [] before it exists or while it is locked."""
    try:
        with journal(state_dir) as conn:
            return [] if conn is None else list(conn.execute(sql, params))
    except sqlite3.OperationalError:
        return []  # not created yet (no table), or busy: look again later


def wait_until(
    condition: Callable[[], Any],
    *,
    timeout_seconds: float,
    what: str,
    every_seconds: float = 0.01,
    daemon: Daemon | None = None,
) -> Any:
    """Poll `condition` until it returns a truthy value; SystemExit after the deadline or when
    the daemon died (with its log's tail)."""
    deadline = time.monotonic() + timeout_seconds
    while True:
        value = condition()
        if value:
            return value
        if daemon is not None and not daemon.alive():
            raise SystemExit(f"the daemon exited while waiting for {what}:\n{daemon.log_tail()}")
        if time.monotonic() > deadline:
            tail = daemon.log_tail() if daemon is not None else ""
            raise SystemExit(f"timed out after {timeout_seconds} s waiting for {what}\n{tail}")
        time.sleep(every_seconds)


def ceil_div(a: int, b: int) -> int:
    return math.ceil(a / b)


def wait_first_scans(ws: Workspace, daemon: Daemon, timeout_seconds: float = 120.0) -> float:
    """Wait until the journal shows a finished scan of every folder (`folders.last_scan_at`);
    returns the seconds waited. The benchmarks start only then: the start-up scan is not what
    they measure (and in the current daemon a file renamed in while a scan runs is forgotten
    by that scan's older listing until the next rescan)."""
    started = time.monotonic()
    names = {str(entry["name"]) for entry in ws.folders}

    def scanned() -> bool:
        rows = query(ws.state_dir, "SELECT name FROM folders WHERE last_scan_at IS NOT NULL")
        return names <= {row["name"] for row in rows}

    wait_until(
        scanned,
        timeout_seconds=timeout_seconds,
        what="the first scans",
        daemon=daemon,
        every_seconds=0.05,
    )
    return time.monotonic() - started
