"""Journal fixtures for the adapter tests: one journal test suite, run on both back ends.

`journal_backend` is "sqlite" or "postgresql"; every test that takes `journal` or
`open_journal` runs once on each. PostgreSQL's `pg_url` (tests/conftest.py) is asked for only
on the postgresql runs, so the SQLite runs need no server.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from pathlib import Path

import pytest

from mh_watchd.adapters.journal import Journal

BACKENDS = ("sqlite", "postgresql")

OpenJournal = Callable[..., Journal]


@pytest.fixture(params=BACKENDS, ids=BACKENDS)
def journal_backend(request: pytest.FixtureRequest) -> str:
    """The journal's back end for this run: "sqlite" or "postgresql"."""
    return str(request.param)


@pytest.fixture
def journal_url(journal_backend: str, request: pytest.FixtureRequest) -> str | None:
    """The PostgreSQL database of this run (a fresh one per test), or None on SQLite."""
    if journal_backend == "postgresql":
        return str(request.getfixturevalue("pg_url"))
    return None


@pytest.fixture
def open_journal(tmp_path: Path, journal_url: str | None) -> Iterator[OpenJournal]:
    """A factory: open_journal(readonly=False, state_dir=None) -> a Journal on this run's back
    end, each call another connection to the same journal, as another host or the CLI has.

    The journal is the test's database, or the SQLite file in `state_dir` (default
    tmp_path/"state"); on PostgreSQL the state_dir only holds the daemon lock file. Whatever it
    opened is closed after the test."""
    opened: list[Journal] = []

    def factory(*, readonly: bool = False, state_dir: Path | None = None) -> Journal:
        state = state_dir if state_dir is not None else tmp_path / "state"
        if journal_url is None:
            journal = Journal.open(state, readonly=readonly)
        else:
            journal = Journal.open(state, readonly=readonly, url=journal_url)
        opened.append(journal)
        return journal

    yield factory
    for journal in reversed(opened):
        journal.close()


@pytest.fixture
def journal(open_journal: OpenJournal) -> Journal:
    """A writable journal on this run's back end (closed by `open_journal` after the test)."""
    return open_journal()
