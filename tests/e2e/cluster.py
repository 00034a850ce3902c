"""Several daemons sharing one PostgreSQL journal and one share: the harness the multi-host
end-to-end tests and the multi-host chaos scenario share."""

from __future__ import annotations

import os
import shutil
import time
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest

from mh_watchd.adapters.journal import Journal
from mh_watchd.core.errors import StateDirError
from mh_watchd.core.jobs import Job
from mh_watchd.emulator import EmulatorOptions, EmulatorServer
from tests.conftest import wait_for
from tests.e2e.conftest import DaemonProcess, Workspace

LEASE = 3  # seconds: a dead host's jobs move after this


def journal_jobs(url: str) -> list[Job]:
    try:
        with Journal.open(None, readonly=True, url=url) as journal:
            return journal.jobs()
    except StateDirError:
        return []  # not created yet, or the database is away


def journal_events(url: str, job_id: int) -> list[str]:
    with Journal.open(None, readonly=True, url=url) as journal:
        return [e.event for e in journal.events(job_id)]


class Cluster:
    """Daemons on one database and one inbox, each with a config (and state_dir) of its own.
    The second host reaches the share by another path (a link), as NAS mounts differ."""

    def __init__(self, root: Path, emu: EmulatorServer, url: str, env: dict[str, str]) -> None:
        self.root = root
        self.emu = emu
        self.url = url
        self.env = env
        self.share = root / "share"
        self.daemons: dict[str, DaemonProcess] = {}
        self._next_clip = 0

    # True: every host reaches the share by a link of its own (mnt-<host>), none by its path.
    every_host_linked = False

    def inbox_for(self, host: str) -> Path:
        if host == "host-a" and not self.every_host_linked:
            return self.share
        mount = self.root / f"mnt-{host}"
        if not mount.exists():
            mount.symlink_to(self.share, target_is_directory=True)
        return mount

    def folder(self, name: str) -> Path:
        """The folder `name` on the share (made on first use): in, out, archive, failed."""
        for sub in ("in", "out", "archive", "failed"):
            (self.share / name / sub).mkdir(parents=True, exist_ok=True)
        return self.share / name

    def start(
        self, host: str, extra: str = "", folder: str = "shared", lease: float = LEASE
    ) -> DaemonProcess:
        self.folder(folder)
        base = self.inbox_for(host) / folder
        ws = Workspace(
            root=self.root / host,
            base_url=self.emu.base_url,
            extra_daemon=(
                f'state_url = "{self.url}"\nhost_name = "{host}"\nlease_seconds = {lease}\n'
                f"max_active_renders = 3\n{extra}"
            ),
        )
        ws.root.mkdir(exist_ok=True)
        ws.folders.append(
            {
                "name": folder,
                "inbox": str(base / "in"),
                "outbox": str(base / "out"),
                "archive": str(base / "archive"),
                "failed": str(base / "failed"),
                "style": {"art_style": "Studio Ghibli"},
                "fps_resolution": "FULL",
            }
        )
        log = ws.root / "daemon.log"
        before = log.read_text(errors="replace").count('"daemon.started"') if log.exists() else 0
        proc = DaemonProcess(ws, self.env).start()
        self.daemons[host] = proc
        wait_for(
            lambda: proc.log_text().count('"daemon.started"') > before or not proc.alive(),
            timeout_seconds=30,
            what=f"{host} to start",
        )
        assert proc.alive(), proc.log_text()[-3000:]
        return proc

    def drop(self, clip: Path, count: int, folder: str = "shared") -> list[str]:
        """`count` copies of `clip`, each renamed into the inbox whole (as a finished copy)."""
        names = []
        base = self.folder(folder)
        for _ in range(count):
            self._next_clip += 1
            name = f"clip-{self._next_clip:03d}.mp4"
            temp = base / f".{name}.part"
            shutil.copyfile(clip, temp)
            os.rename(temp, base / "in" / name)
            names.append(name)
        return names

    def creates(self) -> int:
        return int(self.emu.state()["counts"]["create_requests"])

    def outputs(self) -> list[Path]:
        return sorted(p for p in self.share.glob("*/out/**/*") if p.is_file())

    def logs(self) -> str:
        return "\n".join(
            f"--- {host}\n{proc.log_text()[-3000:]}" for host, proc in self.daemons.items()
        )

    def wait_jobs(
        self, predicate: Callable[[list[Job]], bool], what: str, timeout: float = 90
    ) -> list[Job]:
        deadline = time.monotonic() + timeout
        while True:
            jobs = journal_jobs(self.url)
            if jobs and predicate(jobs):
                return jobs
            if time.monotonic() > deadline:
                summary = [(j.id, j.rel_path, j.state.value, j.hold_reason, j.holder) for j in jobs]
                pytest.fail(f"timed out waiting for {what}: {summary}\n{self.logs()}")
            time.sleep(0.2)


@pytest.fixture
def make_cluster(
    tmp_path: Path, pg_url: str, daemon_env: dict[str, str]
) -> Iterator[Callable[..., Cluster]]:
    made: list[tuple[Cluster, EmulatorServer]] = []

    def make(render_seconds: float = 0.4, seed: int = 11) -> Cluster:
        emu = EmulatorServer(
            EmulatorOptions(
                queue_seconds=0.2,
                render_seconds=render_seconds,
                seed=seed,
                data_dir=tmp_path / f"emulator-{len(made)}",
            )
        )
        emu.start()
        cluster = Cluster(tmp_path / f"cluster-{len(made)}", emu, pg_url, daemon_env)
        made.append((cluster, emu))
        return cluster

    yield make
    for cluster, emu in made:
        for proc in cluster.daemons.values():
            if proc.alive():
                proc.kill()
        emu.stop()
