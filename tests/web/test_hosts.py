"""The web page and /api/status on a journal several hosts share: each job's host, the Hosts
section (stale hosts marked), who is alive in the header; a one-host SQLite page stays as it
was. WebApp over real journals (SQLite and PostgreSQL), called with WebRequests."""

from __future__ import annotations

import json
import re
from collections.abc import Iterator
from pathlib import Path

import pytest

from mh_watchd.adapters.http_status import WebResponse
from mh_watchd.core.config import Config
from mh_watchd.web import WebApp
from tests.test_status_hosts import Opener, age_host, make_config, make_two_hosts, opener, queue
from tests.web.test_app import request, text


@pytest.fixture
def pg(tmp_path: Path, pg_url: str) -> Iterator[Opener]:
    with opener(tmp_path / "state", pg_url) as journals:
        yield journals


@pytest.fixture
def sqlite(tmp_path: Path) -> Iterator[Opener]:
    with opener(tmp_path / "state", None) as journals:
        yield journals


def app_for(journals: Opener, config: Config, *, writable: bool = True) -> WebApp:
    """The page over a read-only journal, as `mh-watchd web` serves it (the daemon's own page
    reads its own journal the same way)."""
    reader = journals(readonly=True)
    return WebApp(reader, lambda: config, writable=writable, clock=lambda: 1000.0)


def get(app: WebApp, path: str) -> WebResponse:
    response = app(request("GET", path, origin=None))
    assert response.status == 200
    return response


def section(page: str, anchor: str) -> str:
    start = page.index(f'<section id="{anchor}">')
    return page[start : page.index("</section>", start)]


def job_item(page: str, file: str) -> str:
    """The <li> of the job whose file is `file`."""
    match = re.search(rf'<li>(?:(?!</li>).)*class="file">{re.escape(file)}<.*?</li>', page, re.S)
    assert match, f"{file} is not on the page"
    return match.group(0)


def test_api_status_names_the_host_of_each_job_and_lists_the_hosts(
    pg: Opener, tmp_path: Path
) -> None:
    make_two_hosts(pg)
    data = json.loads(get(app_for(pg, make_config(tmp_path / "state")), "/api/status").body)
    assert {j["file"]: j["host"] for j in data["active"]} == {
        "a.mp4": "nas-1",
        "b.mp4": "desk",
        "d.mp4": None,
    }
    assert {j["file"]: j["host"] for j in data["held"]} == {"c.mp4": "desk"}
    assert [(h["name"], h["pid"], h["jobs_held"]) for h in data["hosts"]] == [
        ("desk", 202, 2),
        ("nas-1", 101, 1),
    ]
    assert data["unheld_jobs"] == 1 and data["journal"]["shared"] is True
    assert data["daemon"]["running"] is True and data["daemon"]["host"] == "desk"


def test_page_shows_hosts_and_the_host_of_each_job_and_folder(pg: Opener, tmp_path: Path) -> None:
    make_two_hosts(pg)
    age_host(pg(), "nas-1", 3600.0)
    page = text(get(app_for(pg, make_config(tmp_path / "state")), "/"))
    assert "daemon running on desk</span> (pid 202)" in page
    assert '<a href="#hosts">1 of 2 host(s) alive</a>' in page
    hosts = section(page, "hosts")
    assert 'desk <span class="muted">(this host)</span>' in hosts
    assert "<td>nas-1</td><td>101</td><td>1.0.0</td>" in hosts
    assert "1 h ago (stale)" in hosts and hosts.count("(stale)") == 1
    assert "Nobody holds 1 unfinished job(s)" in hosts
    assert "postgresql://" in hosts and "a host unseen for 3 min is stale" in hosts
    on = '<span class="muted">on <span class="host">{}</span></span>'
    assert on.format("nas-1") + ' <span class="warn">(stale)</span>' in job_item(page, "a.mp4")
    assert on.format("desk") in job_item(page, "b.mp4")
    assert on.format("desk") in job_item(page, "c.mp4")  # held
    assert 'class="host"' not in job_item(page, "d.mp4")  # nobody holds it
    assert on.format("nas-1") in section(page, "folders")  # reported it last


def test_read_only_page_on_a_shared_journal_names_the_running_hosts(
    pg: Opener, tmp_path: Path
) -> None:
    make_two_hosts(pg)
    config = make_config(tmp_path / "state", host="laptop")  # no daemon here
    page = text(get(app_for(pg, config, writable=False), "/"))
    assert "daemon not running on laptop</span>" in page
    assert "Daemons run on desk, nas-1: retry from a daemon" in page


def test_a_host_name_from_the_journal_is_escaped(pg: Opener, tmp_path: Path) -> None:
    evil = pg("<b>evil</b>", pid=1)  # the journal is input too: config checks names, not it
    queue(evil, "a.mp4")
    page = text(get(app_for(pg, make_config(tmp_path / "state")), "/"))
    assert "<b>evil</b>" not in page
    assert "&lt;b&gt;evil&lt;/b&gt;" in section(page, "hosts")
    assert "&lt;b&gt;evil&lt;/b&gt;" in job_item(page, "a.mp4")


def test_one_host_sqlite_page_names_no_hosts(sqlite: Opener, tmp_path: Path) -> None:
    desk = sqlite("desk", pid=202)
    queue(desk, "a.mp4")
    app = app_for(sqlite, make_config(tmp_path / "state", host="desk"))
    page = text(get(app, "/"))
    assert 'id="hosts"' not in page and 'class="host"' not in page
    assert "daemon not running</span>" in page  # no pid recorded; not "on desk"
    data = json.loads(get(app, "/api/status").body)
    assert data["active"][0]["host"] == "desk"
    assert [h["name"] for h in data["hosts"]] == ["desk"]


def test_sqlite_page_names_hosts_once_another_host_name_holds_jobs(
    sqlite: Opener, tmp_path: Path
) -> None:
    queue(sqlite("old-name", pid=7), "a.mp4")
    page = text(get(app_for(sqlite, make_config(tmp_path / "state", host="desk")), "/"))
    assert "<td>old-name</td><td>7</td>" in section(page, "hosts")
    assert '<span class="host">old-name</span>' in job_item(page, "a.mp4")
