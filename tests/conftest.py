"""Fixtures shared by every test tier: synthesized clips and a live emulator on loopback."""

from __future__ import annotations

import threading
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest

from mh_watchd.adapters.samples import synthesize_clip

ClipFactory = Callable[..., Path]


@pytest.fixture
def make_clip(tmp_path: Path) -> ClipFactory:
    """Return a factory: make_clip("name.mp4", seconds=1.0, fps=24, ...) -> a real video file."""
    clips = tmp_path / "clips"

    def factory(name: str = "clip.mp4", **kwargs: object) -> Path:
        kwargs.setdefault("seconds", 1.0)
        return synthesize_clip(clips / name, **kwargs)  # type: ignore[arg-type]

    return factory


@pytest.fixture
def emulator(tmp_path: Path) -> Iterator[object]:
    """A running emulator (fast timings) on 127.0.0.1; yields the EmulatorServer."""
    from mh_watchd.emulator import EmulatorOptions, EmulatorServer

    server = EmulatorServer(
        EmulatorOptions(
            queue_seconds=0.2, render_seconds=0.5, seed=1, data_dir=tmp_path / "emulator-data"
        )
    )
    server.start()
    try:
        yield server
    finally:
        server.stop()


def wait_for(
    condition: Callable[[], object], *, timeout_seconds: float = 30.0, what: str = "condition"
) -> object:
    """Poll `condition` until it returns a truthy value; fail the test after the deadline."""
    deadline = time.monotonic() + timeout_seconds
    while True:
        value = condition()
        if value:
            return value
        if time.monotonic() > deadline:
            pytest.fail(f"timed out after {timeout_seconds}s waiting for {what}")
        time.sleep(0.05)


@pytest.fixture(autouse=True)
def no_leaked_threads() -> Iterator[None]:
    """Fail a test that leaves non-daemon threads running behind it."""
    before = set(threading.enumerate())
    yield
    deadline = time.monotonic() + 5.0
    while True:
        leaked = [
            t for t in threading.enumerate() if t not in before and t.is_alive() and not t.daemon
        ]
        if not leaked or time.monotonic() > deadline:
            break
        time.sleep(0.05)
    assert not leaked, f"threads leaked by the test: {[t.name for t in leaked]}"


def pytest_terminal_summary(terminalreporter: Any) -> None:
    """Say plainly which tests could not run here (a system package missing, say), so a run
    on a bare machine is never mistaken for a full one. CI installs what they need."""
    skipped = terminalreporter.stats.get("skipped", [])
    if not skipped:
        return
    reasons: dict[str, int] = {}
    for report in skipped:
        longrepr = report.longrepr
        reason = longrepr[2] if isinstance(longrepr, tuple) else str(longrepr)
        reason = reason.removeprefix("Skipped: ")
        reasons[reason] = reasons.get(reason, 0) + 1
    terminalreporter.write_sep("=", "NOT RUN on this machine", yellow=True, bold=True)
    for reason, count in sorted(reasons.items()):
        terminalreporter.write_line(f"{count} test(s): {reason}")


# --- PostgreSQL: one throwaway server per session, a fresh database per test ---------------
# (imported here, not at the top, so this section stays a pure append)

import itertools  # noqa: E402

from tests.pgserver import PgServer, find_pg_bin  # noqa: E402

_pg_database_numbers = itertools.count(1)


@pytest.fixture(scope="session")
def pg_server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[PgServer]:
    """A PostgreSQL server for the whole session (Unix socket only); skipped without one."""
    if find_pg_bin() is None:
        pytest.skip(
            "PostgreSQL server binaries (initdb, pg_ctl) not found: "
            "install Debian's postgresql package"
        )
    server = PgServer.start(tmp_path_factory.mktemp("pg"))
    try:
        yield server
    finally:
        server.close()


@pytest.fixture
def pg_url(pg_server: PgServer) -> Iterator[str]:
    """The URL of a new, empty database on the session server, dropped after the test."""
    if not pg_server.running:  # a previous test stopped or killed it and did not restart it
        pg_server.start_again()
    name = f"mh_t{next(_pg_database_numbers)}"
    url = pg_server.create_database(name)
    yield url
    pg_server.thaw()  # a test that failed while the server was frozen
    if pg_server.running:
        pg_server.drop_database(name)
