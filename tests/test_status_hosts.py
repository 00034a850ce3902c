"""`status` on a journal several hosts share: which host holds each active and held job, the
hosts section (pid, version, last seen on the database's clock, stale, jobs held), who is alive,
and which host reported each folder; on a one-host SQLite journal the text stays as it was.

Real journals: SQLite files and PostgreSQL databases (the `pg_url` fixture), two daemons'
Journal objects writing and a read-only one reading, as `mh-watchd status` does.
"""

from __future__ import annotations

import contextlib
import json
import os
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from mh_watchd import cli, report
from mh_watchd.adapters.journal import Journal
from mh_watchd.core.config import Config, parse
from mh_watchd.core.jobs import HoldReason, JobState
from tests.factories import job_in


def make_config(state_dir: Path, *, host: str = "desk", lease: float = 60.0) -> Config:
    return parse(
        {
            "daemon": {"state_dir": str(state_dir), "host_name": host, "lease_seconds": lease},
            "folder": [
                {
                    "name": "anime",
                    "inbox": "/m/anime/in",
                    "outbox": "/m/anime/out",
                    "style": {"art_style": "Oil Painting"},
                }
            ],
        }
    )


class Opener:
    """Opens journals on one store (the SQLite file in `state_dir`, or the PostgreSQL database
    at `url`); `host` makes one a daemon's journal (set_host, and register_host with a pid)."""

    def __init__(self, state_dir: Path, url: str | None) -> None:
        self.state_dir, self.url = state_dir, url
        self.opened: list[Journal] = []

    def __call__(
        self, host: str | None = None, *, pid: int = 0, version: str = "1.0", readonly: bool = False
    ) -> Journal:
        journal = Journal.open(self.state_dir, readonly=readonly, url=self.url)
        self.opened.append(journal)
        if host is not None:
            journal.set_host(host)
            if pid:
                journal.register_host(pid=pid, version=version)
        return journal

    def close(self) -> None:
        for journal in self.opened:
            journal.close()


@contextlib.contextmanager
def opener(state_dir: Path, url: str | None) -> Iterator[Opener]:
    journals = Opener(state_dir, url)
    try:
        yield journals
    finally:
        journals.close()


@pytest.fixture(params=["sqlite", "postgresql"])
def backend(request: pytest.FixtureRequest) -> str:
    return str(request.param)


@pytest.fixture
def open_journal(backend: str, tmp_path: Path, request: pytest.FixtureRequest) -> Iterator[Opener]:
    """Journals on SQLite, then on PostgreSQL (each test runs on both)."""
    url = request.getfixturevalue("pg_url") if backend == "postgresql" else None
    with opener(tmp_path / "state", url) as journals:
        yield journals


@pytest.fixture
def open_sqlite(tmp_path: Path) -> Iterator[Opener]:
    with opener(tmp_path / "state", None) as journals:
        yield journals


@pytest.fixture
def open_pg(tmp_path: Path, pg_url: str) -> Iterator[Opener]:
    with opener(tmp_path / "state", pg_url) as journals:
        yield journals


def age_host(journal: Journal, name: str, seconds: float) -> None:
    """Make host `name` last seen `seconds` earlier than now (it stopped renewing)."""
    with journal._writing() as conn:
        conn.execute(
            f"UPDATE hosts SET seen_at = {journal._dialect.now} - ? WHERE name = ?",
            (seconds, name),
        )


def queue(journal: Journal, rel_path: str, state: JobState = JobState.QUEUED, **kw: Any) -> int:
    job = journal.insert(job_in(state, rel_path=rel_path, **kw), event="job.queued")
    assert job.id is not None
    return job.id


@pytest.fixture
def two_hosts(open_journal: Opener) -> dict[str, int]:
    return make_two_hosts(open_journal)


def make_two_hosts(open_journal: Opener) -> dict[str, int]:
    """nas-1 (pid 101) holds a queued job, desk (pid 202) a rendering and an ambiguous held
    one; a tool's journal (no host) queued one nobody holds; nas-1 finished one."""
    nas = open_journal("nas-1", pid=101, version="1.0.0")
    desk = open_journal("desk", pid=202, version="1.1.0")
    tool = open_journal()
    ids = {
        "nas_queued": queue(nas, "a.mp4"),
        "desk_rendering": queue(desk, "b.mp4", JobState.RENDERING, render_status="queued"),
        "desk_held": queue(desk, "c.mp4", JobState.HELD, hold_reason=HoldReason.AMBIGUOUS_CREATE),
        "nobody": queue(tool, "d.mp4"),
        "nas_done": queue(nas, "e.mp4", JobState.DONE),
    }
    nas.set_folder_status(
        "anime", watch_mode="native", watch_reason="inotify", outage=None, last_scan_at=1.0, at=1.0
    )
    return ids


def status(open_journal: Opener, config: Config) -> dict[str, Any]:
    reader = open_journal(readonly=True)
    return report.build(reader, config, now=1000.0)


def by_file(rows: list[dict[str, Any]]) -> dict[str, Any]:
    return {row["file"]: row.get("host") for row in rows}


def test_each_active_and_held_job_names_its_host_and_the_hosts_section_counts_them(
    open_journal: Opener, two_hosts: dict[str, int], backend: str, tmp_path: Path
) -> None:
    data = status(open_journal, make_config(tmp_path / "state"))
    assert by_file(data["active"]) == {"a.mp4": "nas-1", "b.mp4": "desk", "d.mp4": None}
    assert by_file(data["held"]) == {"c.mp4": "desk"}
    hosts = {h["name"]: h for h in data["hosts"]}
    assert sorted(hosts) == ["desk", "nas-1"]
    assert (hosts["desk"]["pid"], hosts["desk"]["version"]) == (202, "1.1.0")
    assert (hosts["nas-1"]["pid"], hosts["nas-1"]["version"]) == (101, "1.0.0")
    assert hosts["desk"]["jobs_held"] == 2 and hosts["nas-1"]["jobs_held"] == 1
    assert hosts["desk"]["this_host"] and not hosts["nas-1"]["this_host"]
    for h in hosts.values():
        assert not h["stale"] and 0 <= h["seen_seconds_ago"] < 60
        assert h["seen_at"] and h["started_at"]
    assert data["unheld_jobs"] == 1
    assert data["journal"]["shared"] is (backend == "postgresql")
    assert data["journal"]["stale_after_seconds"] == 180.0
    assert data["folders"][0]["host"] == "nas-1"
    assert data["daemon"]["alive_hosts"] == ["desk", "nas-1"]

    text = report.render(data)
    assert f"#{two_hosts['nas_queued']} anime/a.mp4 on nas-1: queued" in text
    assert f"#{two_hosts['desk_rendering']} anime/b.mp4 on desk: rendering" in text
    assert f"#{two_hosts['desk_held']} anime/c.mp4 on desk: ambiguous_create:" in text
    assert f"#{two_hosts['nobody']} anime/d.mp4: queued" in text  # nobody: nothing said
    assert "  desk (this host): pid 202, version 1.1.0, seen " in text
    assert "  nas-1: pid 101, version 1.0.0, seen " in text
    assert "; holds 2 jobs" in text and "; holds 1 job\n" in text
    assert "nobody holds 1 unfinished job " in text
    assert "watch native (inotify), reported by nas-1" in text
    assert "STALE" not in text


def test_shared_status_says_who_is_alive_by_seen_at_not_by_a_pid(
    open_pg: Opener, tmp_path: Path
) -> None:
    open_journal = open_pg
    make_two_hosts(open_journal)
    # Whichever host wrote the pid last, it is another machine's: status must not use it.
    open_journal("nas-1").set_meta("daemon_pid", str(os.getpid()))
    here = status(open_journal, make_config(tmp_path / "state", host="desk"))
    assert here["daemon"] == {
        "pid": 202,
        "running": True,
        "host": "desk",
        "alive_hosts": ["desk", "nas-1"],
    }
    assert report.render(here).splitlines()[0] == (
        "daemon: running on desk (pid 202); 2 of 2 host(s) alive"
    )
    assert "hosts (journal postgresql://" in report.render(here)

    laptop = status(open_journal, make_config(tmp_path / "state", host="laptop"))
    assert laptop["daemon"]["running"] is False and laptop["daemon"]["pid"] is None
    assert report.render(laptop).splitlines()[0] == (
        "daemon: not running on laptop; 2 of 2 host(s) alive"
    )


def test_a_host_unseen_for_over_three_leases_is_stale_and_its_jobs_say_so(
    open_journal: Opener, two_hosts: dict[str, int], backend: str, tmp_path: Path
) -> None:
    admin = open_journal()
    config = make_config(tmp_path / "state", host="desk", lease=10.0)  # stale after 30 s

    age_host(admin, "nas-1", 25.0)  # still within three leases
    data = status(open_journal, config)
    nas = next(h for h in data["hosts"] if h["name"] == "nas-1")
    assert not nas["stale"] and nas["seen_seconds_ago"] >= 25

    age_host(admin, "nas-1", 35.0)  # just past three leases
    data = status(open_journal, config)
    assert next(h for h in data["hosts"] if h["name"] == "nas-1")["stale"]

    age_host(admin, "nas-1", 2 * 3600.0)
    data = status(open_journal, config)
    nas = next(h for h in data["hosts"] if h["name"] == "nas-1")
    assert nas["stale"] and nas["seen_seconds_ago"] >= 7200
    assert nas["jobs_held"] == 1  # until another host claims them
    assert data["daemon"]["alive_hosts"] == ["desk"]
    text = report.render(data)
    assert "  nas-1: pid 101, version 1.0.0, seen 2 h ago, STALE; holds 1 job" in text
    assert f"#{two_hosts['nas_queued']} anime/a.mp4 on nas-1 (stale): queued" in text
    assert "anime/b.mp4 on desk: rendering" in text  # desk is fresh
    assert "stale when unseen for 30 s" in text
    if backend == "postgresql":
        assert text.splitlines()[0] == "daemon: running on desk (pid 202); 1 of 2 host(s) alive"

    age_host(admin, "desk", 2 * 3600.0)
    if backend == "postgresql":
        data = status(open_journal, config)
        assert data["daemon"]["running"] is False and data["daemon"]["alive_hosts"] == []


def test_a_host_holding_jobs_without_registering_is_listed_as_never_seen(
    open_journal: Opener, tmp_path: Path
) -> None:
    ghost = open_journal("ghost")  # set_host only: no register_host
    queue(ghost, "a.mp4")
    data = status(open_journal, make_config(tmp_path / "state"))
    assert data["hosts"] == [
        {
            "name": "ghost",
            "this_host": False,
            "pid": None,
            "version": None,
            "started_at": None,
            "seen_at": None,
            "seen_seconds_ago": None,
            "stale": True,
            "jobs_held": 1,
        }
    ]
    text = report.render(data)
    assert "  ghost: never registered, STALE; holds 1 job" in text
    assert "anime/a.mp4 on ghost (stale): queued" in text


def test_one_host_on_sqlite_keeps_the_text_as_it_was(open_sqlite: Opener, tmp_path: Path) -> None:
    open_journal = open_sqlite
    desk = open_journal("desk", pid=os.getpid(), version="1.1.0")
    desk.set_meta("daemon_pid", str(os.getpid()))  # the daemon, alive on this machine
    job_id = queue(desk, "a.mp4")
    desk.set_folder_status(
        "anime", watch_mode="native", watch_reason="inotify", outage=None, last_scan_at=1.0, at=1.0
    )
    data = status(open_journal, make_config(tmp_path / "state", host="desk"))
    # The document still says it all...
    assert data["daemon"] == {
        "pid": os.getpid(),
        "running": True,
        "host": "desk",
        "alive_hosts": ["desk"],
    }
    assert by_file(data["active"]) == {"a.mp4": "desk"}
    assert [(h["name"], h["jobs_held"], h["this_host"]) for h in data["hosts"]] == [
        ("desk", 1, True)
    ]
    assert data["journal"]["shared"] is False
    # ...and the text is what it was before hosts existed.
    text = report.render(data)
    assert text.splitlines()[0] == f"daemon: running (pid {os.getpid()})"
    assert f"  #{job_id} anime/a.mp4: queued" in text
    assert "  anime: queued 1; watch native (inotify)\n" in text
    assert "host" not in text and " on desk" not in text


def test_sqlite_names_hosts_once_another_host_name_holds_jobs(
    open_sqlite: Opener, tmp_path: Path
) -> None:
    open_journal = open_sqlite
    old = open_journal("old-name", pid=7, version="1.0.0")  # the machine before its rename
    queue(old, "a.mp4")
    text = report.render(status(open_journal, make_config(tmp_path / "state", host="desk")))
    assert text.splitlines()[0] == "daemon: not running"  # no pid recorded: as before
    assert "  old-name: pid 7, version 1.0.0, seen " in text
    assert "anime/a.mp4 on old-name: queued" in text


def test_status_asks_the_same_few_queries_for_many_jobs(
    open_journal: Opener, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """No query per job: the hosts section costs three queries however many jobs there are."""
    desk = open_journal("desk", pid=202)
    for i in range(30):
        queue(desk, f"{i}.mp4")
    reader = open_journal(readonly=True)
    calls: list[str] = []
    for name in ("hosts", "holders", "database_now", "get", "events", "get_meta"):
        real = getattr(reader, name)

        def counted(*args: Any, _real: Any = real, _name: str = name, **kw: Any) -> Any:
            calls.append(_name)
            return _real(*args, **kw)

        monkeypatch.setattr(reader, name, counted)
    data = report.build(reader, make_config(tmp_path / "state"), now=1000.0)
    assert len(data["active"]) == 30
    assert sorted(calls) == sorted(
        ["hosts", "holders", "database_now"]
        + (["get_meta"] if not reader.shared else [])  # the local pid, SQLite only
    )


def test_the_status_command_reads_a_shared_journal_from_state_url(
    open_pg: Opener, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """`mh-watchd status` with daemon.state_url: the hosts, each job's host, as JSON and text."""
    ids = make_two_hosts(open_pg)
    assert open_pg.url is not None
    config = tmp_path / "config.toml"
    config.write_text(
        "[api]\n"
        'token_env = "MH_TEST_NO_SUCH_KEY"\n'
        "[daemon]\n"
        f'state_dir = "{tmp_path / "state"}"\n'
        f'state_url = "{open_pg.url}"\n'
        'host_name = "nas-1"\n'
        "[[folder]]\n"
        'name = "anime"\n'
        f'inbox = "{tmp_path / "in"}"\n'
        f'outbox = "{tmp_path / "out"}"\n'
        '[folder.style]\nart_style = "Oil Painting"\n'
    )
    assert cli.main(["status", "--json", "-c", str(config)]) == 0
    data = json.loads(capsys.readouterr().out)
    assert by_file(data["active"]) == {"a.mp4": "nas-1", "b.mp4": "desk", "d.mp4": None}
    assert [(h["name"], h["this_host"]) for h in data["hosts"]] == [
        ("desk", False),
        ("nas-1", True),
    ]
    assert data["daemon"]["running"] is True and data["daemon"]["pid"] == 101
    assert cli.main(["status", "-c", str(config)]) == 0
    text = capsys.readouterr().out
    assert text.startswith("daemon: running on nas-1 (pid 101); 2 of 2 host(s) alive\n")
    assert f"#{ids['desk_held']} anime/c.mp4 on desk: ambiguous_create:" in text


def test_one_sqlite_host_is_alive_while_its_pid_is_however_long_ago_it_renewed(
    open_sqlite: Opener, tmp_path: Path
) -> None:
    """One host renews nothing (an idle daemon does not write): its pid says it runs."""
    desk = open_sqlite("desk", pid=os.getpid())
    queue(desk, "a.mp4")
    age_host(desk, "desk", 2 * 3600.0)
    config = make_config(tmp_path / "state", host="desk")
    desk.set_meta("daemon_pid", str(os.getpid()))  # as the running daemon records it
    alive = status(open_sqlite, config)
    assert [h["stale"] for h in alive["hosts"]] == [False]
    assert alive["daemon"]["running"] is True
    desk.set_meta("daemon_pid", "999999999")  # above any pid_max: no such process
    gone = status(open_sqlite, config)
    assert [h["stale"] for h in gone["hosts"]] == [True]
