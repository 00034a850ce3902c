"""A throwaway PostgreSQL cluster for tests: initdb + pg_ctl, listening only on a Unix socket.

PostgreSQL refuses to run as root, so under root the server runs as `nobody` (via setpriv).
The data directory, server log and socket all live in one short private directory made with
tempfile.mkdtemp under /tmp (so the socket path stays far below the ~100-byte limit and the
unprivileged user can reach it without loosening pytest's 0700 tmp dirs); `base/data` and
`base/log` are symlinks to them so a failed run can be inspected from the test's tmp dir.
"""

from __future__ import annotations

import contextlib
import grp
import os
import pwd
import shlex
import shutil
import signal
import subprocess
import tempfile
import time
from pathlib import Path
from types import TracebackType
from urllib.parse import quote

USER = "mhtest"
COMMAND_TIMEOUT_SECONDS = 60.0
PG_CTL_WAIT_SECONDS = 30
LOG_TAIL_LINES = 40
# fsync and full_page_writes only guard against an OS crash, so turning them off keeps a killed
# server honest. synchronous_commit stays on: off, kill() loses the last commits (tested).
SERVER_SETTINGS = (
    "-c listen_addresses='' -c fsync=off -c full_page_writes=off -c max_connections=100"
)


def find_pg_bin() -> Path | None:
    """The directory holding initdb, pg_ctl and postgres, or None when PostgreSQL is absent."""
    candidates: list[Path] = []
    on_path = shutil.which("initdb")
    if on_path:
        candidates.append(Path(on_path).resolve().parent)

    def version(path: Path) -> tuple[int, str]:
        name = path.parent.name
        return (int(name), name) if name.isdigit() else (-1, name)

    candidates += sorted(Path("/usr/lib/postgresql").glob("*/bin"), key=version, reverse=True)
    for directory in candidates:
        if all(os.access(directory / tool, os.X_OK) for tool in ("initdb", "pg_ctl", "postgres")):
            return directory
    return None


def _process_alive(pid: int) -> bool:
    """True if `pid` exists and is not a zombie (a killed postmaster may stay one, unreaped)."""
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except FileNotFoundError:
        return False
    except OSError:
        try:
            os.kill(pid, 0)
        except ProcessLookupError:
            return False
        return True
    state = stat.rsplit(")", 1)[1].split()[0]
    return state not in ("Z", "X")


def _children(pid: int) -> list[int]:
    """The live processes whose parent is `pid` (the postmaster's backends and helpers)."""
    found = []
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            fields = (entry / "stat").read_text().rsplit(")", 1)[1].split()
        except OSError:
            continue
        if int(fields[1]) == pid and fields[0] not in ("Z", "X"):
            found.append(int(entry.name))
    return found


def _server_identity() -> tuple[int, int] | None:
    """(uid, gid) to run the server as: `nobody` under root, else None (the current user)."""
    if os.geteuid() != 0:
        return None
    nobody = pwd.getpwnam("nobody")
    try:
        gid = grp.getgrnam("nogroup").gr_gid
    except KeyError:
        gid = nobody.pw_gid
    return nobody.pw_uid, gid


class PgServer:
    """One running (or stopped) throwaway cluster; make it with PgServer.start(base)."""

    def __init__(self, bin_dir: Path, base: Path, home: Path) -> None:
        self.bin_dir = bin_dir
        self.base = base
        self.home = home
        self.data_dir = home / "data"
        self.log_path = home / "log"
        self.socket_dir = home
        self._identity = _server_identity()
        self._pid: int | None = None
        self._frozen: list[int] = []  # pids `freeze` stopped

    @classmethod
    def start(cls, base: Path, bin_dir: Path | None = None) -> PgServer:
        """initdb a new cluster and start it; raises RuntimeError (with the log tail) on failure."""
        bin_dir = bin_dir or find_pg_bin()
        if bin_dir is None:
            raise RuntimeError("PostgreSQL server binaries (initdb, pg_ctl) not found")
        base.mkdir(parents=True, exist_ok=True)
        home = Path(tempfile.mkdtemp(prefix="mhpg", dir="/tmp"))
        server = cls(bin_dir, base, home)
        try:
            server._prepare()
            server._run(
                [
                    str(bin_dir / "initdb"),
                    *("-D", str(server.data_dir), "-A", "trust", "-U", USER),
                    *("--no-sync", "-E", "UTF8", "--locale=C", "--no-instructions"),
                ],
                what="initdb",
            )
            server._pg_ctl_start()
        except BaseException:
            server.close()
            raise
        return server

    def _prepare(self) -> None:
        """Make the data dir and log file, owned by the server user, and the base symlinks."""
        self.home.chmod(0o755)
        self.data_dir.mkdir(mode=0o700)
        self.log_path.touch(mode=0o600)
        if self._identity is not None:
            for path in (self.home, self.data_dir, self.log_path):
                os.chown(path, *self._identity)
        for name, target in (("data", self.data_dir), ("log", self.log_path)):
            link = self.base / name
            with contextlib.suppress(FileNotFoundError):
                link.unlink()
            link.symlink_to(target)

    def url(self, dbname: str = "postgres") -> str:
        """A libpq URL for `dbname` on this server's Unix socket."""
        host = quote(str(self.socket_dir), safe="")
        return f"postgresql://{USER}@/{quote(dbname, safe='')}?host={host}"

    def create_database(self, name: str) -> str:
        """CREATE DATABASE `name` and return its URL."""
        self._admin("CREATE DATABASE {}", name)
        return self.url(name)

    def drop_database(self, name: str) -> None:
        """DROP DATABASE `name` if it exists, closing any sessions still connected to it."""
        self._admin("DROP DATABASE IF EXISTS {} WITH (FORCE)", name)

    @property
    def running(self) -> bool:
        """True while the postmaster we started is alive."""
        return self._pid is not None and _process_alive(self._pid)

    @property
    def pid(self) -> int | None:
        """The postmaster's pid while running."""
        return self._pid if self.running else None

    def stop(self, mode: str = "fast") -> None:
        """pg_ctl stop -m `mode` (smart, fast or immediate) and wait for the server to exit."""
        if not self.running:
            raise RuntimeError("PostgreSQL server is not running")
        self._run(
            [
                str(self.bin_dir / "pg_ctl"),
                *("-D", str(self.data_dir), "-m", mode, "-w", "-t", str(PG_CTL_WAIT_SECONDS)),
                "stop",
            ],
            what=f"pg_ctl stop -m {mode}",
        )
        self._pid = None

    def start_again(self) -> None:
        """Start the stopped (or killed) cluster on the same data dir and socket."""
        if self.running:
            raise RuntimeError("PostgreSQL server is already running")
        self._remove_stale_lock_files()
        self._pg_ctl_start()

    def freeze(self) -> None:
        """SIGSTOP the postmaster and every backend: the server hangs, sockets stay open (a
        frozen database, or a network path dropping packets, as a client sees it)."""
        pid = self._read_pid()
        if pid is None or not _process_alive(pid):
            raise RuntimeError("PostgreSQL server is not running")
        self._frozen = [pid, *_children(pid)]
        for p in self._frozen:
            os.kill(p, signal.SIGSTOP)

    def thaw(self) -> None:
        """SIGCONT what `freeze` stopped (backends first, then the postmaster)."""
        frozen, self._frozen = self._frozen, []
        for p in reversed(frozen):
            with contextlib.suppress(ProcessLookupError):
                os.kill(p, signal.SIGCONT)

    def kill(self) -> None:
        """SIGKILL the postmaster, as in a crash, and wait until its children are gone too."""
        pid = self._read_pid()
        if pid is None or not _process_alive(pid):
            raise RuntimeError("PostgreSQL server is not running")
        children = _children(pid)
        os.kill(pid, signal.SIGKILL)
        deadline = time.monotonic() + 10.0
        while True:
            alive = [p for p in (pid, *children) if _process_alive(p)]
            if not alive:
                break
            if time.monotonic() > deadline:
                for straggler in alive:
                    with contextlib.suppress(ProcessLookupError):
                        os.kill(straggler, signal.SIGKILL)
                deadline = time.monotonic() + 10.0
            time.sleep(0.02)
        self._pid = None

    def close(self) -> None:
        """Stop the server if it is running and remove its files."""
        self.thaw()  # a test that failed while the server was frozen
        if self.running:
            try:
                self.stop("fast")
            except RuntimeError:
                self.kill()
        shutil.rmtree(self.home, ignore_errors=True)
        for name in ("data", "log"):
            link = self.base / name
            if link.is_symlink():
                link.unlink()

    def __enter__(self) -> PgServer:
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.close()

    def log_tail(self, lines: int = LOG_TAIL_LINES) -> str:
        """The last `lines` lines of the server log ('' if there is none yet)."""
        try:
            text = self.log_path.read_text(errors="replace")
        except OSError:
            return ""
        return "\n".join(text.splitlines()[-lines:])

    def _pg_ctl_start(self) -> None:
        options = f"-k {shlex.quote(str(self.socket_dir))} {SERVER_SETTINGS}"
        self._run(
            [
                str(self.bin_dir / "pg_ctl"),
                *("-D", str(self.data_dir), "-l", str(self.log_path)),
                *("-w", "-t", str(PG_CTL_WAIT_SECONDS), "-o", options, "start"),
            ],
            what="pg_ctl start",
        )
        self._pid = self._read_pid()
        if self._pid is None:
            raise RuntimeError(f"pg_ctl start left no postmaster.pid\n{self.log_tail()}")

    def _read_pid(self) -> int | None:
        try:
            first = (self.data_dir / "postmaster.pid").read_text().split("\n", 1)[0]
        except FileNotFoundError:
            return None
        return int(first) if first.strip().isdigit() else None

    def _remove_stale_lock_files(self) -> None:
        """Drop the lock files of a killed postmaster that lingers as a zombie (nobody reaped
        it): PostgreSQL takes a zombie's pid for a live server and would refuse to start."""
        pid = self._read_pid()
        if pid is None or _process_alive(pid):
            return
        with contextlib.suppress(OSError):
            os.kill(pid, 0)  # raises if the pid is truly gone: PostgreSQL copes with that
            (self.data_dir / "postmaster.pid").unlink()
            for lock in self.socket_dir.glob(".s.PGSQL.*.lock"):
                lock.unlink()

    def _admin(self, template: str, name: str) -> None:
        """Run `template` with `name` quoted as an identifier, on database postgres."""
        import psycopg
        from psycopg import sql

        statement = sql.SQL(template).format(sql.Identifier(name))
        with psycopg.connect(self.url(), autocommit=True, connect_timeout=10) as conn:
            conn.execute(statement)

    def _run(self, command: list[str], *, what: str) -> None:
        if self._identity is not None:
            uid, gid = self._identity
            command = ["setpriv", f"--reuid={uid}", f"--regid={gid}", "--clear-groups", *command]
        env = {k: v for k, v in os.environ.items() if not k.startswith("PG")}
        env["LC_ALL"] = "C"
        try:
            result = subprocess.run(
                command,
                cwd=self.home,
                env=env,
                stdin=subprocess.DEVNULL,
                capture_output=True,
                text=True,
                timeout=COMMAND_TIMEOUT_SECONDS,
                check=False,
            )
        except subprocess.TimeoutExpired as exc:
            raise RuntimeError(
                f"{what} timed out after {COMMAND_TIMEOUT_SECONDS}s\n"
                f"--- server log tail ---\n{self.log_tail()}"
            ) from exc
        if result.returncode != 0:
            raise RuntimeError(
                f"{what} failed (exit {result.returncode}): {shlex.join(command)}\n"
                f"--- output ---\n{result.stdout}{result.stderr}"
                f"--- server log tail ---\n{self.log_tail()}"
            )
