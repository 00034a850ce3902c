"""The container image, built and run for real: `make image` on a Debian base made with
mmdebstrap (no image registry is needed), run with PUID/PGID/UMASK over a temp /data and the
emulator on the host network.

Needs root, podman, runc and mmdebstrap (`.ci/run` installs them); elsewhere it skips, naming
what is missing. The Debian base is cached per day under $MH_WATCHD_IMAGE_CACHE (default
/tmp/mh-watchd-image-cache), and podman's layer cache keeps a rebuild to seconds.
"""

from __future__ import annotations

import datetime
import json
import os
import shutil
import socket
import sqlite3
import subprocess
import time
import uuid
from collections.abc import Iterator
from pathlib import Path

import pytest

from mh_watchd.adapters.samples import synthesize_clip
from tests.conftest import wait_for

REPO = Path(__file__).resolve().parents[2]
TOOLS = ("podman", "runc", "mmdebstrap")
MISSING = [tool for tool in TOOLS if shutil.which(tool) is None]
IS_ROOT = os.geteuid() == 0
CACHE = Path(os.environ.get("MH_WATCHD_IMAGE_CACHE", "/tmp/mh-watchd-image-cache"))
IMAGE = "localhost/mh-watchd:image-test"
UID = GID = 1234
TOKEN = "image-test-key-0123456789"

pytestmark = [
    pytest.mark.image,
    pytest.mark.skipif(
        bool(MISSING),
        reason=f"container image test not run: {', '.join(MISSING)} not installed "
        "(apt-get install podman runc mmdebstrap uidmap slirp4netns fuse-overlayfs)",
    ),
    pytest.mark.skipif(
        not IS_ROOT, reason="container image test not run: it needs root (rootful podman)"
    ),
]

# podman's defaults that fail on some hosts (crun and the default rlimits; see the README).
CONTAINERS_CONF = """\
[containers]
default_ulimits = []
[engine]
runtime = "runc"
"""


def _env() -> dict[str, str]:
    return {**os.environ, "CONTAINERS_CONF": str(CACHE / "containers.conf")}


def podman(
    *args: str, check: bool = True, timeout: float = 120
) -> subprocess.CompletedProcess[str]:
    result = subprocess.run(
        ["podman", *args], env=_env(), capture_output=True, text=True, timeout=timeout
    )
    if check and result.returncode != 0:
        pytest.fail(f"podman {' '.join(args)} -> {result.returncode}\n{result.stderr[-3000:]}")
    return result


def _base_image() -> str:
    """A bare Debian bookworm with python3 (3.11, as the host's wheels), made once a day."""
    day = datetime.date.today().isoformat()
    tag = f"localhost/mh-watchd-base:bookworm-{day}"
    if podman("image", "exists", tag, check=False).returncode == 0:
        return tag
    # A new day: forget the older bases (their tarballs and images).
    for old in CACHE.glob("????-??-??"):
        if old.name != day:
            shutil.rmtree(old, ignore_errors=True)
    listed = podman("images", "--format", "{{.Repository}}:{{.Tag}}", check=False).stdout.split()
    for name in listed:
        if name.startswith("localhost/mh-watchd-base:"):
            podman("rmi", name, check=False)
    tarball = CACHE / day / "rootfs.tar"
    if not tarball.exists():
        tarball.parent.mkdir(parents=True, exist_ok=True)
        partial = tarball.with_name("rootfs.partial.tar")
        subprocess.run(
            [
                "mmdebstrap", "--quiet", "--variant=apt", "--format=tar",
                "--include=python3,python3-venv,ca-certificates", "bookworm", str(partial),
            ],
            check=True, timeout=300,
        )  # fmt: skip
        partial.rename(tarball)
    podman("import", "--quiet", str(tarball), tag, timeout=300)
    return tag


@pytest.fixture(scope="module")
def image() -> str:
    """Build the image with the Makefile's own target, from wheels made on the host."""
    CACHE.mkdir(parents=True, exist_ok=True)
    (CACHE / "containers.conf").write_text(CONTAINERS_CONF, encoding="utf-8")
    base = _base_image()
    started = time.monotonic()
    result = subprocess.run(
        ["make", "--no-print-directory", "image", f"BASE={base}", f"IMAGE={IMAGE}",
         "WHEELS=prebuilt", f"ENGINE={shutil.which('podman')}"],
        cwd=REPO, env=_env(), capture_output=True, text=True, timeout=600,
    )  # fmt: skip
    if result.returncode != 0:
        pytest.fail(f"make image failed:\n{result.stdout[-3000:]}\n{result.stderr[-3000:]}")
    # Each build leaves untagged images behind (its stages, the image the tag left): drop ours.
    for label in ("mh-watchd.stage", "org.opencontainers.image.title=mh-watchd"):
        podman("image", "prune", "--force", "--filter", f"label={label}", check=False)
    size = podman("image", "inspect", "--format", "{{.Size}}", IMAGE).stdout.strip()
    print(f"\nimage {IMAGE}: built in {time.monotonic() - started:.1f}s, {int(size) / 1e6:.0f} MB")
    return IMAGE


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


class Box:
    """One test container: its host folders and the podman calls on it."""

    def __init__(self, root: Path, image: str) -> None:
        self.name = f"mh-watchd-test-{uuid.uuid4().hex[:8]}"
        self.image = image
        self.config, self.state, self.data = root / "config", root / "state", root / "data"
        for path in (self.config, self.state, self.data):
            path.mkdir(parents=True)

    def run(self, *env: str) -> float:
        """Start it detached; returns the monotonic time of the start."""
        args = ["run", "-d", "--name", self.name, "--network", "host", "--stop-timeout", "90"]
        for pair in ("PUID=1234", "PGID=1234", "UMASK=002", f"MAGIC_HOUR_API_KEY={TOKEN}", *env):
            args += ["-e", pair]
        for host, inside in (
            (self.config, "/config"),
            (self.state, "/state"),
            (self.data, "/data"),
        ):
            args += ["-v", f"{host}:{inside}"]
        started = time.monotonic()
        podman(*args, self.image)
        return started

    def healthy(self) -> bool:
        running = podman("inspect", "--format", "{{.State.Running}}", self.name).stdout.strip()
        if running != "true":
            pytest.fail(f"the container stopped:\n{self.logs()}")
        return podman("healthcheck", "run", self.name, check=False).returncode == 0

    def wait_healthy(self, started: float) -> float:
        wait_for(self.healthy, timeout_seconds=60, what="the container to be healthy")
        return time.monotonic() - started

    def logs(self) -> str:
        result = podman("logs", self.name, check=False)
        return result.stdout + result.stderr

    def remove(self) -> None:
        podman("rm", "--force", "--time", "0", self.name, check=False)


@pytest.fixture
def box(tmp_path: Path, image: str) -> Iterator[Box]:
    made = Box(tmp_path, image)
    try:
        yield made
    finally:
        made.remove()


@pytest.fixture
def slow_emulator(tmp_path: Path) -> Iterator[object]:
    """The emulator on the host's loopback (the container shares the host network), with
    renders long enough to stop the container in the middle of one."""
    from mh_watchd.emulator import EmulatorOptions, EmulatorServer

    server = EmulatorServer(
        EmulatorOptions(
            queue_seconds=0.2, render_seconds=4.0, seed=1, data_dir=tmp_path / "emulator-data"
        )
    )
    server.start()
    try:
        yield server
    finally:
        server.stop()


def _emulator_state(server: object) -> dict[str, object]:
    import urllib.request

    url = f"{server.base_url}/_emulator/state"  # type: ignore[attr-defined]
    with urllib.request.urlopen(url, timeout=5) as response:
        state: dict[str, object] = json.load(response)
    return state


def _write_config(box: Box, api_url: str, http_port: int) -> None:
    (box.config / "config.toml").write_text(
        f"""
[api]
base_url = "{api_url}"
poll_interval_seconds = 0.5

[daemon]
state_dir = "/state"
http_listen = "127.0.0.1:{http_port}"
settle_seconds = 0.5
rescan_seconds = 5
stop_grace_seconds = 30

[[folder]]
name = "anime"
inbox = "/data/in"
outbox = "/data/out"
style = {{ art_style = "Studio Ghibli" }}
""",
        encoding="utf-8",
    )


def _drop_clip(box: Box, name: str, hue: int) -> None:
    """Make a clip beside the inbox, owned by the user, and rename it in (as a copy tool does)."""
    staged = synthesize_clip(box.data / ".staging" / name, seconds=1.0, hue=hue)
    os.chown(staged, UID, GID)
    staged.rename(box.data / "in" / name)


def _journal_jobs(box: Box) -> list[tuple[str, str, str | None]]:
    uri = f"file:{box.state / 'journal.sqlite3'}?mode=ro"
    conn = sqlite3.connect(uri, uri=True, timeout=5)
    try:
        rows = conn.execute("SELECT rel_path, state, hold_reason FROM jobs ORDER BY id").fetchall()
    finally:
        conn.close()
    return [(str(a), str(b), c) for a, b, c in rows]


def _outputs(box: Box) -> list[Path]:
    return sorted((box.data / "out").glob("*.mp4"))


@pytest.mark.timeout(600)
def test_image_runs_as_puid_delivers_stops_cleanly_and_resumes(
    box: Box, slow_emulator: object
) -> None:
    for sub in ("in", "out", ".staging"):
        (box.data / sub).mkdir()
        os.chown(box.data / sub, UID, GID)  # the user's share, owned by the user
    _write_config(box, slow_emulator.base_url, _free_port())  # type: ignore[attr-defined]

    started = box.run()
    print(f"\nstart-up to healthy: {box.wait_healthy(started):.1f}s")

    # 1. A clip is delivered, owned by PUID:PGID, group-writable under UMASK=002.
    _drop_clip(box, "one.mp4", hue=0)
    wait_for(lambda: len(_outputs(box)) == 1, timeout_seconds=90, what="the first output")
    output = _outputs(box)[0]
    info = output.stat()
    assert (info.st_uid, info.st_gid) == (UID, GID), box.logs()
    assert info.st_mode & 0o020, f"{output} is {info.st_mode:o}: no group write"
    # The output is placed first, then the original is filed: wait for that second step.
    archived = box.data / "in" / ".mh-done" / "one.mp4"
    wait_for(archived.exists, timeout_seconds=30, what="the original to be archived")
    assert archived.stat().st_uid == UID

    # 2. status from a shell in the container works, and runs as the user: /state stays theirs.
    status = podman("exec", box.name, "mh-watchd", "status")
    assert "anime" in status.stdout, status.stdout
    status_json = podman("exec", box.name, "mh-watchd", "status", "--json")
    assert json.loads(status_json.stdout)
    not_theirs = [p for p in box.state.rglob("*") if p.lstat().st_uid != UID]
    assert not not_theirs, f"files in /state not owned by PUID: {not_theirs}"

    # 3. Stop while the second clip renders: a clean exit, nothing lost or ambiguous.
    _drop_clip(box, "two.mp4", hue=90)

    def rendering() -> bool:
        projects = _emulator_state(slow_emulator)["projects"]
        assert isinstance(projects, list)
        return len(projects) == 2 and projects[-1]["status"] in ("queued", "rendering")

    wait_for(rendering, timeout_seconds=60, what="the second clip to be rendering")
    stop_started = time.monotonic()
    podman("stop", "--time", "90", box.name)
    stop_seconds = time.monotonic() - stop_started
    exit_code = podman("inspect", "--format", "{{.State.ExitCode}}", box.name).stdout.strip()
    assert exit_code == "0", box.logs()
    print(f"podman stop while rendering: {stop_seconds:.1f}s, exit 0")
    jobs = _journal_jobs(box)
    assert [(path, state) for path, state, _ in jobs] == [
        ("one.mp4", "done"),
        ("two.mp4", "rendering"),
    ], jobs
    assert all(hold is None for _, _, hold in jobs), jobs

    # 4. Started again, it resumes polling the same project and delivers it; one create each.
    box_started = time.monotonic()
    podman("start", box.name)
    print(f"restart to healthy: {box.wait_healthy(box_started):.1f}s")
    wait_for(lambda: len(_outputs(box)) == 2, timeout_seconds=90, what="the second output")
    wait_for(
        lambda: [state for _, state, _ in _journal_jobs(box)] == ["done", "done"],
        timeout_seconds=30,
        what="both jobs done in the journal",
    )
    counts = _emulator_state(slow_emulator)["counts"]
    assert isinstance(counts, dict)
    assert counts["creates"] == 2, counts
    assert counts["create_requests"] == 2, counts
    podman("stop", "--time", "90", box.name)
    assert podman("inspect", "--format", "{{.State.ExitCode}}", box.name).stdout.strip() == "0"


@pytest.mark.timeout(600)
def test_first_start_writes_a_starter_config_and_runs(box: Box) -> None:
    started = box.run("TZ=Europe/Berlin")
    box.wait_healthy(started)
    config = box.config / "config.toml"
    assert config.stat().st_uid == UID
    assert config.stat().st_mode & 0o777 == 0o664
    text = config.read_text(encoding="utf-8")
    assert 'inbox = "/data/magic-hour/in"' in text
    assert 'state_dir = "/state"' in text
    assert "wrote a commented starter config" in box.logs()
    for sub in ("magic-hour/in", "magic-hour/out"):
        assert (box.data / sub).stat().st_uid == UID
    # The media root itself is never taken over: only what the container made is the user's.
    assert box.data.stat().st_uid == 0
    # TZ applies (the zone files come with the image even on a bare Debian base).
    zone = podman("exec", box.name, "date", "+%Z").stdout.strip()
    assert zone in ("CET", "CEST"), zone
    check = podman("exec", box.name, "mh-watchd", "check", "--offline", check=False)
    assert check.returncode == 0, check.stdout + check.stderr
    # The image can keep its journal in PostgreSQL: psycopg with its own libpq is installed.
    libpq = podman(
        "exec",
        box.name,
        "/opt/mh-watchd/bin/python",
        "-c",
        "import psycopg; print(psycopg.pq.__impl__, psycopg.pq.version())",
        check=False,
    )
    assert libpq.returncode == 0, libpq.stdout + libpq.stderr
    impl, version = libpq.stdout.split()
    assert impl == "binary" and int(version) >= 130000, libpq.stdout
    podman("stop", "--time", "90", box.name)
