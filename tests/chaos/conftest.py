"""The chaos suite's own fixtures: real mounts (tmpfs, read-only binds, frozen ext4 images),
fault counting on the in-process emulator, outside judges (PyAV, bytes, hashes, /healthz) and
the totals file `make chaos` sums up.

The e2e harness (tests/e2e/conftest.py) is reused, not copied: its fixtures are imported here
so every chaos test gets the same emulator, environment and daemon launcher.

Pass size: `MH_CHAOS_PASS=long` (set by `make chaos`) makes the scaled scenarios bigger; the
default short pass runs every scenario too, just smaller, so `make test` stays fast.
"""

from __future__ import annotations

import contextlib
import errno
import hashlib
import json
import os
import socket
import subprocess
import time
import urllib.error
import urllib.request
from collections import Counter
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import av
import pytest

from mh_watchd.adapters.journal import Journal
from mh_watchd.core.errors import StateDirError
from mh_watchd.core.jobs import HoldReason, Job, JobState
from mh_watchd.emulator import EmulatorServer
from tests.conftest import wait_for
from tests.e2e import conftest as e2e
from tests.e2e.conftest import SCRIPT, DaemonProcess, Workspace

# The e2e harness's fixtures, registered for this folder by being bound here.
emu = e2e.emu
daemon_env = e2e.daemon_env
run_daemon = e2e.run_daemon

PASS = os.environ.get("MH_CHAOS_PASS", "short").strip().lower() or "short"
LONG = PASS == "long"


def size(short: int, long: int) -> int:
    """A scenario's size for this pass."""
    return long if LONG else short


# ---------------------------------------------------------------------------- workspace


class ChaosWorkspace(Workspace):
    """A Workspace whose config can turn /healthz on (`http_port`)."""

    http_port: int | None = None

    def write_config(self) -> Path:
        path = super().write_config()
        if self.http_port is not None:
            text = path.read_text().replace(
                'http_listen = ""\n', f'http_listen = "127.0.0.1:{self.http_port}"\n'
            )
            path.write_text(text)
        return path

    def add(self, name: str, *, make_outbox: bool = True, **keys: Any) -> dict[str, Any]:
        """A folder whose outbox root exists (the daemon never creates an outbox root), unless
        `make_outbox` is False: then the test alone decides whether the root is there."""
        outbox = Path(keys.get("outbox", self.root / name / "out"))
        existed = outbox.exists()
        entry = self.folder(name, **keys)
        outbox.mkdir(parents=True, exist_ok=True)
        if not make_outbox and not existed:
            outbox.rmdir()  # an unmounted share: the root is not there
        return entry

    @property
    def healthz_url(self) -> str:
        assert self.http_port is not None
        return f"http://127.0.0.1:{self.http_port}/healthz"


@pytest.fixture
def workspace(tmp_path: Path, emu: EmulatorServer) -> ChaosWorkspace:
    return ChaosWorkspace(root=tmp_path / "ws", base_url=emu.base_url)


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


# ---------------------------------------------------------------------------- mounts


def _run(*cmd: str, timeout: float = 30.0) -> subprocess.CompletedProcess[str]:
    return subprocess.run(cmd, capture_output=True, text=True, timeout=timeout, check=False)


class Mounts:
    """Real mounts for one test, always undone: frozen filesystems thawed, everything unmounted
    (lazily as the last resort), loop devices released."""

    def __init__(self) -> None:
        self.mounted: list[Path] = []
        self.frozen: list[Path] = []

    def _mount(self, *args: str, target: Path) -> None:
        target.mkdir(parents=True, exist_ok=True)
        result = _run("mount", *args, str(target))
        if result.returncode != 0:
            pytest.fail(
                f"the chaos suite needs real mounts (run as root on Linux): "
                f"`mount {' '.join(args)} {target}` failed: {result.stderr.strip()}"
            )
        self.mounted.append(target)

    def tmpfs(self, target: Path, size_bytes: int) -> Path:
        """A fresh tmpfs of `size_bytes` at `target`."""
        self._mount("-t", "tmpfs", "-o", f"size={size_bytes}", "tmpfs", target=target)
        return target

    def bind(self, source: Path, target: Path) -> Path:
        self._mount("--bind", str(source), target=target)
        return target

    def remount(self, target: Path, *, readonly: bool) -> None:
        opt = "remount,bind,ro" if readonly else "remount,bind,rw"
        result = _run("mount", "-o", opt, str(target))
        if result.returncode != 0:
            pytest.fail(f"`mount -o {opt} {target}` failed: {result.stderr.strip()}")

    def ext4_image(self, image: Path, target: Path, size_mib: int = 24) -> Path:
        """A loop-mounted ext4 filesystem of `size_mib` at `target` (one that fsfreeze can hang)."""
        image.parent.mkdir(parents=True, exist_ok=True)
        with image.open("wb") as f:
            f.truncate(size_mib * 1024 * 1024)
        made = _run("mkfs.ext4", "-q", "-F", str(image))
        if made.returncode != 0:
            pytest.fail(f"mkfs.ext4 {image} failed: {made.stderr.strip()}")
        self._mount("-o", "loop", str(image), target=target)
        return target

    def freeze(self, target: Path) -> None:
        result = _run("fsfreeze", "-f", str(target))
        if result.returncode != 0:
            pytest.fail(f"`fsfreeze -f {target}` failed: {result.stderr.strip()}")
        self.frozen.append(target)

    def thaw(self, target: Path) -> None:
        if target in self.frozen:
            _run("fsfreeze", "-u", str(target))
            self.frozen.remove(target)

    def umount(self, target: Path) -> None:
        self.thaw(target)
        if target not in self.mounted:
            return
        if _run("umount", str(target)).returncode != 0:
            _run("umount", "-l", str(target))
        self.mounted.remove(target)

    def cleanup(self) -> None:
        for target in list(self.frozen):
            self.thaw(target)
        for target in reversed(list(self.mounted)):
            self.umount(target)


@pytest.fixture
def mounts() -> Iterator[Mounts]:
    """Set up before the daemon fixture (see `daemon`), so it is torn down after it."""
    m = Mounts()
    try:
        yield m
    finally:
        m.cleanup()


@pytest.fixture
def daemon(
    mounts: Mounts,
    run_daemon: Callable[..., DaemonProcess],
) -> Callable[..., DaemonProcess]:
    """`run_daemon`, ordered after `mounts`: daemons are killed before anything is unmounted."""
    return run_daemon


# ---------------------------------------------------------------------------- filling disks


def fill(directory: Path, name: str = "filler.bin") -> Path:
    """Write one file in `directory` until the filesystem answers ENOSPC; returns it."""
    path = directory / name
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_APPEND, 0o600)
    try:
        for chunk in (b"\xa5" * (256 * 1024), b"\xa5" * 4096, b"\xa5"):
            while True:
                try:
                    written = os.write(fd, chunk)
                except OSError as exc:
                    if exc.errno != errno.ENOSPC:
                        raise
                    break
                if written < len(chunk):
                    break
    finally:
        os.close(fd)
    return path


def is_full(directory: Path) -> bool:
    st = os.statvfs(directory)
    return st.f_bavail * st.f_frsize < 4096


# ---------------------------------------------------------------------------- the emulator


class FaultTally:
    """Counts the emulator's faults that actually fired, by (route, fault)."""

    def __init__(self) -> None:
        self.fired: Counter[tuple[str, str]] = Counter()

    @property
    def total(self) -> int:
        return sum(self.fired.values())

    def on(self, route: str, *faults: str) -> int:
        return sum(
            n for (r, f), n in self.fired.items() if r == route and (not faults or f in faults)
        )


def inject(
    emu: EmulatorServer, plan: dict[str, Any], tally: FaultTally | None = None
) -> FaultTally:
    """Set the emulator's fault plan and count every fault that fires from now on."""
    emu.set_faults(plan)
    tally = tally or FaultTally()
    faults = emu.faults
    original = faults.pick

    def pick(route: str, kinds: frozenset[str]) -> Any:
        rule = original(route, kinds)
        if rule is not None:
            tally.fired[(route, rule.fault)] += 1
        return rule

    faults.pick = pick  # type: ignore[method-assign]
    return tally


def counts(emu: EmulatorServer) -> dict[str, int]:
    return dict(emu.state()["counts"])


def sha256(path: Path) -> str:
    h = hashlib.sha256()
    with path.open("rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            h.update(block)
    return h.hexdigest()


def emulator_uploads(tmp_path: Path) -> dict[str, str]:
    """sha256 -> file name of every complete upload the emulator stored (the `emu` fixture's
    data dir), so a test can tell exactly which bytes reached the service."""
    uploads = tmp_path / "emulator-data" / "uploads"
    found: dict[str, str] = {}
    if uploads.is_dir():
        for p in uploads.iterdir():
            if p.is_file() and not p.name.startswith("."):
                found[sha256(p)] = p.name
    return found


def project_upload_sha(tmp_path: Path, project: dict[str, Any]) -> str | None:
    """The sha256 of the upload a project was created from."""
    disk = tmp_path / "emulator-data" / "uploads" / Path(project["file_path"]).name
    return sha256(disk) if disk.is_file() else None


# ---------------------------------------------------------------------------- judging


def outputs_in(outbox: Path) -> list[Path]:
    """Visible files in an outbox tree (the daemon's temp files are hidden)."""
    if not outbox.is_dir():
        return []
    return sorted(
        p
        for p in outbox.rglob("*")
        if p.is_file() and not any(part.startswith(".") for part in p.relative_to(outbox).parts)
    )


def decoded_duration(path: Path) -> float | None:
    """Seconds of video PyAV decodes from `path` (every frame), or None when it does not decode."""
    try:
        with av.open(str(path)) as container:
            stream = container.streams.video[0]
            frames = 0
            last = 0.0
            for frame in container.decode(stream):
                frames += 1
                if frame.time is not None:
                    last = max(last, float(frame.time))
            if frames == 0:
                return None
            rate = float(stream.average_rate or 0) or 24.0
            return last + 1.0 / rate
    except (av.error.FFmpegError, IndexError, OSError):
        return None


def healthz(ws: ChaosWorkspace, timeout: float = 2.0) -> tuple[int, str] | None:
    """(status, body) of GET /healthz, or None when nothing answers in time."""
    try:
        with urllib.request.urlopen(ws.healthz_url, timeout=timeout) as resp:
            return int(resp.status), resp.read().decode(errors="replace")
    except urllib.error.HTTPError as exc:
        return int(exc.code), exc.read().decode(errors="replace")
    except (urllib.error.URLError, OSError, TimeoutError):
        return None


def status_json(ws: Workspace, timeout: float = 30.0) -> dict[str, Any]:
    result = subprocess.run(
        [SCRIPT, "status", "--json", "-c", str(ws.config_path)],
        capture_output=True,
        text=True,
        timeout=timeout,
        check=False,
    )
    assert result.returncode == 0, f"status --json exited {result.returncode}: {result.stderr}"
    data: dict[str, Any] = json.loads(result.stdout)
    return data


def cli(ws: Workspace, env: dict[str, str], *args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [SCRIPT, *args, "-c", str(ws.config_path)],
        env=env,
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )


def folder_status(ws: Workspace, folder: str) -> Any:
    """The journal's status row of `folder` (read-only), None before the daemon wrote one."""
    if not (ws.state_dir / "journal.sqlite3").exists():
        return None
    try:
        journal = Journal.open(ws.state_dir, readonly=True)
    except StateDirError:
        return None
    try:
        return journal.folder_statuses().get(folder)
    finally:
        journal.close()


def folder_scanned_after(ws: Workspace, folder: str, wall: float) -> bool:
    """True once the daemon journaled a full scan of `folder` that started after `wall`."""
    st = folder_status(ws, folder)
    return st is not None and st.last_scan_at is not None and st.last_scan_at > wall


def hold_for(
    check: Callable[[], object],
    seconds: float,
    *,
    what: str,
    proc: DaemonProcess | None = None,
    show: Callable[[], object] | None = None,
) -> None:
    """Assert `check()` stays truthy for `seconds` (observed every 0.1 s): a window watched, not
    slept through. Fails at the first observation that breaks it, showing `show()`."""
    deadline = time.monotonic() + seconds
    while True:
        value = check()
        if not value:
            seen = f"\nobserved: {show()}" if show is not None else ""
            tail = proc.log_text()[-3000:] if proc is not None else ""
            pytest.fail(f"broken while watching: {what}{seen}\n{tail}")
        if time.monotonic() > deadline:
            return
        time.sleep(0.1)


def eventually(condition: Callable[[], object], *, timeout_seconds: float) -> bool:
    """Poll `condition` until it holds (True) or the deadline passes (False, no failure): for
    tests that report every problem they find rather than stop at the first."""
    deadline = time.monotonic() + timeout_seconds
    while True:
        if condition():
            return True
        if time.monotonic() > deadline:
            return False
        time.sleep(0.1)


def log_events(proc: DaemonProcess) -> list[dict[str, Any]]:
    """The daemon's JSON log lines (others skipped)."""
    events = []
    for line in proc.log_text().splitlines():
        with contextlib.suppress(ValueError):
            doc = json.loads(line)
            if isinstance(doc, dict):
                events.append(doc)
    return events


def settle_ambiguous(
    names: set[str],
    *,
    wait_jobs: Callable[[Callable[[list[Job]], bool]], list[Job]],
    read_jobs: Callable[[], list[Job]],
    retry: Callable[[int], None],
    also: Callable[[dict[str, list[Job]]], bool] = lambda _by: True,
) -> Counter[str]:
    """Wait until every file in `names` is done or held `ambiguous_create` (and `also` holds
    for the jobs by file), retry the held ones (`retry(job_id)`, as a user would after looking
    in the web app), and again until none is held. Returns the retries per file: each may
    add at most one project (Invariant 5)."""
    retries: Counter[str] = Counter()

    def settled(jobs: list[Job]) -> bool:
        by: dict[str, list[Job]] = {}
        for j in jobs:
            by.setdefault(j.rel_path, []).append(j)
        return all(
            any(
                j.state is JobState.DONE or j.hold_reason is HoldReason.AMBIGUOUS_CREATE
                for j in by.get(name, [])
            )
            for name in names
        ) and also(by)

    while True:
        held = [j for j in wait_jobs(settled) if j.hold_reason is HoldReason.AMBIGUOUS_CREATE]
        if not held:
            return retries
        for j in held:
            assert j.id is not None
            retries[j.rel_path] += 1
            retry(j.id)
        retried = {j.id for j in held}

        def released(retried: set[int | None] = retried) -> bool:
            return not any(
                x.id in retried and x.hold_reason is HoldReason.AMBIGUOUS_CREATE
                for x in read_jobs()
            )

        wait_for(
            released, timeout_seconds=30, what="the retried ambiguous jobs to leave their hold"
        )


# ---------------------------------------------------------------------------- totals


def record(scenario: str, **totals: int) -> None:
    """Add one scenario's totals to `$MH_CHAOS_RESULTS` (when set) for `make chaos`'s summary.

    Keys summed by the summary: files, kills, faults, create_requests, duplicates, lost.
    """
    target = os.environ.get("MH_CHAOS_RESULTS")
    if not target:
        return
    path = Path(target)
    doc: dict[str, Any] = {"pass": PASS, "scenarios": []}
    if path.exists():
        with contextlib.suppress(ValueError):
            doc = json.loads(path.read_text())
    doc.setdefault("scenarios", []).append({"scenario": scenario, **totals})
    keys = ("files", "kills", "faults", "create_requests", "duplicates", "lost")
    doc["totals"] = {k: sum(int(s.get(k, 0)) for s in doc["scenarios"]) for k in keys}
    tmp = path.with_name(path.name + ".tmp")
    tmp.write_text(json.dumps(doc, indent=2, sort_keys=True))
    os.replace(tmp, path)
