"""End-to-end harness: the real `mh-watchd` console script as a subprocess, on tmp folders,
against the emulator on loopback."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pytest

from mh_watchd.adapters.journal import Journal
from mh_watchd.core.errors import StateDirError
from mh_watchd.core.jobs import Job, JobState
from mh_watchd.emulator import EmulatorOptions, EmulatorServer
from tests.conftest import wait_for

TOKEN = "mhk_live_e2e_test_key"
SCRIPT = str(Path(sys.executable).with_name("mh-watchd"))


@dataclass
class Workspace:
    root: Path
    base_url: str
    extra_daemon: str = ""
    folders: list[dict[str, Any]] = field(default_factory=list)
    styles: str = ""
    api_extra: str = ""

    @property
    def config_path(self) -> Path:
        return self.root / "config.toml"

    @property
    def state_dir(self) -> Path:
        return self.root / "state"

    def folder(self, name: str, **keys: Any) -> dict[str, Any]:
        entry: dict[str, Any] = {
            "name": name,
            "inbox": str(self.root / name / "in"),
            "outbox": str(self.root / name / "out"),
        }
        entry.update(keys)
        self.folders.append(entry)
        (self.root / name / "in").mkdir(parents=True, exist_ok=True)
        # The daemon never creates an outbox root (a missing one is an unmounted share).
        Path(entry["outbox"]).mkdir(parents=True, exist_ok=True)
        return entry

    def inbox(self, name: str) -> Path:
        return self.root / name / "in"

    def outbox(self, name: str) -> Path:
        return self.root / name / "out"

    def write_config(self) -> Path:
        overridden = {
            line.split("=", 1)[0].strip()
            for line in (self.extra_daemon + "\n" + self.api_extra).splitlines()
            if "=" in line
        }
        lines = [
            "[api]",
            f'base_url = "{self.base_url}"',
            'token_env = "MH_TEST_TOKEN"',
            "poll_interval_seconds = 0.3",
            "account_probe_seconds = 1",
            "request_timeout_seconds = 10",
            self.api_extra,
            "",
            "[daemon]",
            f'state_dir = "{self.state_dir}"',
            "settle_seconds = 0.3",
            "rescan_seconds = 2",
            'http_listen = ""',
            'log_format = "json"',
            self.extra_daemon,
            "",
            self.styles,
        ]
        # A key set in extra_daemon / api_extra replaces the harness's default for it.
        lines = [
            line
            for line in lines
            if line in (self.extra_daemon, self.api_extra)
            or "=" not in line
            or line.split("=", 1)[0].strip() not in overridden
        ]
        for f in self.folders:
            lines.append("[[folder]]")
            style = f.get("style")
            for key, value in f.items():
                if key == "style" and isinstance(value, dict):
                    continue
                lines.append(f"{key} = {json.dumps(value)}")
            if isinstance(style, dict):
                lines.append("[folder.style]")
                for key, value in style.items():
                    lines.append(f"{key} = {json.dumps(value)}")
            lines.append("")
        self.config_path.write_text("\n".join(lines))
        return self.config_path


class DaemonProcess:
    """One `mh-watchd run` subprocess with its log captured to a file."""

    def __init__(self, ws: Workspace, env: dict[str, str]) -> None:
        self.ws = ws
        self.env = env
        self.proc: subprocess.Popen[bytes] | None = None
        self.log_path = ws.root / "daemon.log"
        self._log = None

    def start(self) -> DaemonProcess:
        self.ws.write_config()
        self._log = open(self.log_path, "ab")  # noqa: SIM115 - closed in wait()
        self.proc = subprocess.Popen(
            [SCRIPT, "run", "-c", str(self.ws.config_path)],
            env=self.env,
            stdout=self._log,
            stderr=subprocess.STDOUT,
        )
        return self

    def signal(self, sig: int) -> None:
        assert self.proc is not None
        self.proc.send_signal(sig)

    def wait(self, timeout: float = 20.0) -> int:
        assert self.proc is not None
        try:
            rc = self.proc.wait(timeout=timeout)
        finally:
            if self._log is not None:
                self._log.close()
                self._log = None
        return rc

    def stop(self, timeout: float = 20.0) -> int:
        self.signal(signal.SIGTERM)
        return self.wait(timeout)

    def kill(self) -> None:
        self.signal(signal.SIGKILL)
        self.wait(10)

    def log_text(self) -> str:
        return self.log_path.read_text(errors="replace")

    def alive(self) -> bool:
        return self.proc is not None and self.proc.poll() is None


def read_jobs(state_dir: Path) -> list[Job]:
    """Every job in the journal (read-only; empty until the daemon created it)."""
    if not (state_dir / "journal.sqlite3").exists():
        return []
    try:
        journal = Journal.open(state_dir, readonly=True)
    except StateDirError:
        return []  # the daemon is creating it: its first transaction is not committed yet
    try:
        return journal.jobs()
    finally:
        journal.close()


def jobs_in(state_dir: Path, *states: JobState) -> list[Job]:
    return [j for j in read_jobs(state_dir) if j.state in states]


@pytest.fixture
def emu(tmp_path: Path) -> Iterator[EmulatorServer]:
    server = EmulatorServer(
        EmulatorOptions(
            queue_seconds=0.2, render_seconds=0.4, seed=7, data_dir=tmp_path / "emulator-data"
        )
    )
    server.start()
    try:
        yield server
    finally:
        server.stop()


@pytest.fixture
def workspace(tmp_path: Path, emu: EmulatorServer) -> Workspace:
    return Workspace(root=tmp_path / "ws", base_url=emu.base_url)


@pytest.fixture
def daemon_env() -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("MAGIC_HOUR")}
    env.pop("NOTIFY_SOCKET", None)
    env["MH_TEST_TOKEN"] = TOKEN
    return env


@pytest.fixture
def run_daemon(
    workspace: Workspace, daemon_env: dict[str, str]
) -> Iterator[Callable[..., DaemonProcess]]:
    started: list[DaemonProcess] = []

    def start(env: dict[str, str] | None = None) -> DaemonProcess:
        proc = DaemonProcess(workspace, env or daemon_env).start()
        started.append(proc)
        return proc

    yield start
    for proc in started:
        if proc.alive():
            proc.kill()
        elif proc._log is not None:
            proc.wait(1)


def wait_jobs(
    state_dir: Path,
    predicate: Callable[[list[Job]], bool],
    *,
    timeout_seconds: float = 60.0,
    what: str = "jobs",
    proc: DaemonProcess | None = None,
) -> list[Job]:
    """Wait until the journal's jobs satisfy `predicate`; show the daemon's log on timeout."""
    deadline = time.monotonic() + timeout_seconds
    while True:
        jobs = read_jobs(state_dir)
        if jobs and predicate(jobs):
            return jobs
        if proc is not None and not proc.alive():
            pytest.fail(f"daemon exited while waiting for {what}:\n{proc.log_text()[-4000:]}")
        if time.monotonic() > deadline:
            summary = [(j.id, j.rel_path, j.state.value, j.hold_reason, j.last_error) for j in jobs]
            tail = proc.log_text()[-4000:] if proc is not None else ""
            pytest.fail(f"timed out waiting for {what}: {summary}\n{tail}")
        time.sleep(0.1)


def all_done(n: int) -> Callable[[list[Job]], bool]:
    def check(jobs: list[Job]) -> bool:
        done = [j for j in jobs if j.state is JobState.DONE]
        return len(done) >= n

    return check


__all__ = [
    "TOKEN",
    "DaemonProcess",
    "Workspace",
    "all_done",
    "jobs_in",
    "read_jobs",
    "wait_for",
    "wait_jobs",
]
