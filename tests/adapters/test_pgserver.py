"""The test-side PostgreSQL server (tests/pgserver.py): it starts, serves separate databases,
stops and comes back with its data, and recovers after its postmaster is killed."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import psycopg
import pytest

from tests.pgserver import PgServer, find_pg_bin


@pytest.fixture
def restarts(pg_server: PgServer) -> Iterator[PgServer]:
    """The session server, started again after the test if the test left it down."""
    yield pg_server
    if not pg_server.running:
        pg_server.start_again()


def connect(url: str) -> psycopg.Connection[tuple[object, ...]]:
    return psycopg.connect(url, autocommit=True, connect_timeout=5)


def test_server_runs_on_a_short_unix_socket_and_pg_url_is_a_fresh_database(
    pg_server: PgServer, pg_url: str
) -> None:
    assert pg_server.running
    assert pg_server.pid is not None
    socket = pg_server.socket_dir / ".s.PGSQL.5432"
    assert socket.is_socket()
    assert len(str(socket).encode()) < 100
    with connect(pg_url) as conn:
        row = conn.execute(
            "SELECT current_database(), current_user, current_setting('listen_addresses')"
        ).fetchone()
        assert row is not None
        database, user, listen = row
        assert isinstance(database, str)
        assert pg_url.startswith(f"postgresql://{user}@/{database}?host=")
        assert database.startswith("mh_t")
        assert listen == ""
        tables = conn.execute(
            "SELECT count(*) FROM information_schema.tables WHERE table_schema = 'public'"
        ).fetchone()
        assert tables == (0,)
        conn.execute("CREATE TABLE t (n int)")
        conn.execute("INSERT INTO t VALUES (1), (2)")
        assert conn.execute("SELECT sum(n) FROM t").fetchone() == (3,)


def test_two_databases_are_separate(pg_server: PgServer, pg_url: str) -> None:
    other = pg_server.create_database("other db")  # a name that needs quoting in SQL and URLs
    try:
        with connect(pg_url) as first, connect(other) as second:
            first.execute("CREATE TABLE only_here (n int)")
            assert second.execute("SELECT to_regclass('only_here')").fetchone() == (None,)
            assert second.execute("SELECT current_database()").fetchone() == ("other db",)
    finally:
        pg_server.drop_database("other db")
    with pytest.raises(psycopg.OperationalError, match="does not exist"), connect(other):
        pass


def test_stop_refuses_connections_and_start_again_keeps_the_data(
    restarts: PgServer, pg_url: str
) -> None:
    server = restarts
    with connect(pg_url) as conn:
        conn.execute("CREATE TABLE kept (n int)")
        conn.execute("INSERT INTO kept VALUES (42)")
        server.stop()
        assert not server.running
        with pytest.raises(psycopg.OperationalError):
            conn.execute("SELECT 1")
    with pytest.raises(psycopg.OperationalError), connect(pg_url):
        pass
    with pytest.raises(RuntimeError, match="not running"):
        server.stop()

    server.start_again()
    assert server.running
    with pytest.raises(RuntimeError, match="already running"):
        server.start_again()
    with connect(pg_url) as conn:
        assert conn.execute("SELECT n FROM kept").fetchall() == [(42,)]


def test_kill_then_start_again_recovers_committed_data(restarts: PgServer, pg_url: str) -> None:
    server = restarts
    with connect(pg_url) as conn:
        conn.execute("CREATE TABLE crash (n int)")
        conn.execute("INSERT INTO crash SELECT generate_series(1, 1000)")
        old_pid = server.pid
        server.kill()
        assert not server.running
        with pytest.raises(psycopg.OperationalError):
            conn.execute("SELECT 1")
    with pytest.raises(psycopg.OperationalError), connect(pg_url):
        pass

    server.start_again()
    assert server.running
    assert server.pid != old_pid
    assert "database system was interrupted" in server.log_tail(200)
    with connect(pg_url) as conn:
        assert conn.execute("SELECT count(*), sum(n) FROM crash").fetchone() == (1000, 500500)


def test_a_failed_start_raises_with_the_server_log_and_close_cleans_up(
    pg_server: PgServer, tmp_path: Path
) -> None:
    bin_dir = find_pg_bin()
    assert bin_dir == pg_server.bin_dir
    with PgServer.start(tmp_path / "own") as server:
        home = server.home
        assert (tmp_path / "own" / "log").resolve() == server.log_path
        server.stop()
        with (server.data_dir / "postgresql.conf").open("a") as conf:
            conf.write("\nno_such_setting = 1\n")
        with pytest.raises(RuntimeError, match="pg_ctl start failed") as failure:
            server.start_again()
        assert 'unrecognized configuration parameter "no_such_setting"' in str(failure.value)
        assert not server.running
    assert not home.exists()
    assert not (tmp_path / "own" / "log").is_symlink()
