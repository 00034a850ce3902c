"""The `mh-watchd` command line: argparse subcommands mapped to exit codes. Nothing else."""

from __future__ import annotations

import argparse
import json
import os
import select
import sys
import urllib.parse
from collections.abc import Sequence
from pathlib import Path
from typing import TYPE_CHECKING, NoReturn

import structlog

from mh_watchd import __version__

if TYPE_CHECKING:
    from mh_watchd.adapters.journal import Journal
    from mh_watchd.core.config import Config

# Exit codes (sysexits.h), named once.
EX_OK = 0
EX_FAILURE = 1
EX_USAGE = 64
EX_DATAERR = 65
EX_UNAVAILABLE = 69
EX_CANTCREAT = 73
EX_TEMPFAIL = 75
EX_CONFIG = 78
# 128 + SIGPIPE: what a shell reports for a filter whose reader went away (`status | head`).
EX_SIGPIPE = 141


class _Parser(argparse.ArgumentParser):
    """argparse that exits 64 with a one-line hint instead of 2 with a wall of text."""

    def error(self, message: str) -> NoReturn:
        sys.stderr.write(f"{self.prog}: {message}\nTry '{self.prog} --help'.\n")
        raise SystemExit(EX_USAGE)


def build_parser() -> argparse.ArgumentParser:
    """The full command line, one subparser per command."""
    from mh_watchd import emulator

    parser = _Parser(
        prog="mh-watchd",
        description="Watch folders and restyle every video dropped in them with Magic Hour.",
    )
    parser.add_argument("--version", action="version", version=f"mh-watchd {__version__}")
    sub = parser.add_subparsers(dest="command", parser_class=_Parser, metavar="COMMAND")

    def with_config(p: argparse.ArgumentParser) -> None:
        p.add_argument(
            "-c",
            "--config",
            metavar="CONFIG",
            help="config file (default: $MH_WATCHD_CONFIG, else /etc/mh-watchd/config.toml)",
        )

    p = sub.add_parser("run", help="run the daemon in the foreground")
    with_config(p)
    p = sub.add_parser("check", help="validate the config, the folders and the API key")
    with_config(p)
    p.add_argument("--offline", action="store_true", help="skip the API key check")
    p = sub.add_parser("status", help="show jobs, folders, outages and credits")
    with_config(p)
    p.add_argument("--json", action="store_true", help="machine-readable output")
    p = sub.add_parser("retry", help="put failed or held jobs back in the queue")
    with_config(p)
    p.add_argument("job_ids", nargs="*", metavar="JOB_ID", help="journal id or project id")
    p.add_argument("--failed", action="store_true", help="every failed job")
    p.add_argument("--held", action="store_true", help="every held job")
    p = sub.add_parser("web", help="serve the web page read-only from the journal")
    with_config(p)
    p.add_argument(
        "--listen",
        metavar="ADDR",
        help="host:port to serve on (default: daemon.http_listen, else 127.0.0.1:9309)",
    )
    p = sub.add_parser("backup", help="copy the journal consistently, even while the daemon runs")
    with_config(p)
    p.add_argument("path", metavar="PATH", help="the backup file to write (outside state_dir)")
    p.add_argument("--force", action="store_true", help="replace PATH if it exists")
    p = sub.add_parser("emulator", help="run the Magic Hour API emulator")
    emulator.add_arguments(p)
    sub.add_parser("demo", help="the whole product offline, against the emulator")
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    """Run the command line; returns the process exit code."""
    try:
        try:
            return _main(argv)
        finally:
            # Flush here, not at interpreter exit, so a reader that went away is caught below
            # (also after argparse's SystemExit for `--help | head -1`).
            sys.stdout.flush()
    except BrokenPipeError:
        closed = _closed_output_fds()
        if not closed:
            raise  # some other pipe or socket: a real error, not `| head`
        return _quiet_after_broken_pipe(closed)


def _closed_output_fds() -> list[int]:
    """The descriptors of stdout and stderr that are pipes whose reader has gone away."""
    closed = []
    for stream in (sys.stdout, sys.stderr):
        try:
            fd = stream.fileno()
        except (AttributeError, OSError, ValueError):
            continue  # not a real file (pytest's capture, a closed stream)
        poller = select.poll()
        poller.register(fd, select.POLLOUT)
        # Linux reports POLLERR on the write end of a pipe that has no reader left.
        if any(events & (select.POLLERR | select.POLLHUP) for _, events in poller.poll(0)):
            closed.append(fd)
    return closed


def _quiet_after_broken_pipe(closed: list[int]) -> int:
    """`mh-watchd status | head -1`: stop writing, say nothing, exit like a Unix filter.

    The usual recipe (Python's signal docs): point the closed stream at /dev/null so the
    interpreter's final flush cannot fail again and print "Exception ignored ... BrokenPipe".
    The exit code is 141 (128 + SIGPIPE), what a shell reports for `cat`, `grep` or `yes` cut
    off by `head`: invisible in a plain pipeline, a failure under `set -o pipefail`, as theirs.
    """
    devnull = os.open(os.devnull, os.O_WRONLY)
    try:
        for fd in closed:
            os.dup2(devnull, fd)
    finally:
        os.close(devnull)
    return EX_SIGPIPE


def _main(argv: Sequence[str] | None) -> int:
    parser = build_parser()
    args = parser.parse_args(list(argv) if argv is not None else None)
    if args.command is None:
        parser.print_usage(sys.stderr)
        return EX_USAGE
    try:
        if args.command == "run":
            return cmd_run(args)
        if args.command == "check":
            return cmd_check(args)
        if args.command == "status":
            return cmd_status(args)
        if args.command == "retry":
            return cmd_retry(args, parser)
        if args.command == "web":
            return cmd_web(args)
        if args.command == "backup":
            return cmd_backup(args)
        if args.command == "emulator":
            from mh_watchd import emulator

            return emulator.run(args)
        if args.command == "demo":
            from mh_watchd.demo import run_demo

            return run_demo()
    except KeyboardInterrupt:
        return EX_FAILURE
    parser.error(f"unknown command {args.command}")


def _fail(message: str, code: int) -> int:
    sys.stderr.write(f"mh-watchd: {message}\n")
    return code


def _load_config(args: argparse.Namespace) -> tuple[Config, Path] | int:
    """The config named by `-c` (or the default) and its path; EX_CONFIG after printing every
    problem with it."""
    from mh_watchd.adapters import config_file
    from mh_watchd.core.errors import ConfigError

    path = config_file.config_path(args.config, os.environ)
    try:
        return config_file.load(path), path
    except ConfigError as exc:
        _print_config_error(exc, path)
        return EX_CONFIG


def _open_readonly(config: Config) -> Journal | int:
    """The config's journal, read-only; EX_UNAVAILABLE after saying why it cannot be read."""
    from mh_watchd.adapters.journal import open_journal
    from mh_watchd.core.errors import StateDirError

    try:
        return open_journal(config.daemon, readonly=True)
    except StateDirError as exc:
        return _fail(f"{exc} (has the daemon run yet?)", EX_UNAVAILABLE)


def _print_config_error(exc: Exception, path: Path) -> None:
    problems = getattr(exc, "problems", [str(exc)])
    sys.stderr.write(f"mh-watchd: {path}: {len(problems)} problem(s):\n")
    for line in problems:
        sys.stderr.write(f"  - {line}\n")
    for line in getattr(exc, "warnings", []):
        sys.stderr.write(f"  warning: {line}\n")


def cmd_run(args: argparse.Namespace) -> int:
    """`run`: the daemon in the foreground."""
    from mh_watchd.adapters import config_file, logs
    from mh_watchd.core.config import Config
    from mh_watchd.core.errors import AlreadyRunningError, ConfigError, StateDirError
    from mh_watchd.daemon import Daemon, Signals

    logs.configure_logging(log_format="auto")
    path = config_file.config_path(args.config, os.environ)
    try:
        config = config_file.load(path)
        token = config_file.read_token(config.api, os.environ)
    except ConfigError as exc:
        _print_config_error(exc, path)
        return EX_CONFIG
    assert isinstance(config, Config)
    # A password written into state_url (better kept in a pgpass file) never reaches a log.
    db_password = urllib.parse.urlsplit(config.daemon.state_url).password or ""
    secrets = [s for s in (token, config.daemon.http_token, db_password) if s]
    logs.configure_logging(log_format=config.daemon.log_format, secrets=secrets)
    log = structlog.get_logger("mh_watchd")
    for warning in config.warnings:
        log.warning("config.warning", message=warning)
    for problem in config_file.check_extras(config):
        # Not fatal: the daemon's real work goes on; `check` reports it as an error (69).
        log.error("config.missing_package", message=problem)
    if not token:
        return _fail(
            f"no API key: set ${config.api.token_env}, api.token_file, or a systemd credential "
            "named magic-hour-token",
            EX_CONFIG,
        )
    if len(token) < logs.MIN_SECRET_CHARS:
        log.warning(
            "config.token_suspicious",
            hint=f"the API key is only {len(token)} characters long; Magic Hour keys are much "
            "longer. Check the key file or variable (a key this short is not redacted from logs)",
        )
    os.umask(config.daemon.umask)
    # Handlers first: a SIGTERM during start-up is then a clean stop, not a kill.
    signals = Signals()
    signals.install()
    try:
        daemon = Daemon.open(config, token=token, config_path=path, signals=signals)
    except AlreadyRunningError as exc:
        return _fail(str(exc), EX_TEMPFAIL)
    except StateDirError as exc:
        return _fail(str(exc), EX_UNAVAILABLE)
    try:
        daemon.start()
    except StateDirError as exc:
        # The journal refused a write before anything was started (a full disk, I/O errors).
        daemon.shutdown()
        return _fail(
            f"{exc}; free space or fix the disk under daemon.state_dir, then start again",
            EX_UNAVAILABLE,
        )
    return daemon.run()


def cmd_check(args: argparse.Namespace) -> int:
    """`check`: config, folders and (unless --offline) the API key."""
    import httpx

    from mh_watchd import __version__ as version
    from mh_watchd.adapters import config_file
    from mh_watchd.adapters.fs import LocalFileSystem
    from mh_watchd.adapters.magic_hour import MagicHourClient
    from mh_watchd.core.config import Config
    from mh_watchd.core.errors import ApiError, AuthError, ConfigError

    path = config_file.config_path(args.config, os.environ)
    try:
        config = config_file.load(path)
        token = config_file.read_token(config.api, os.environ) if not args.offline else None
    except ConfigError as exc:
        _print_config_error(exc, path)
        return EX_CONFIG
    assert isinstance(config, Config)
    for warning in config.warnings:
        print(f"warning: {warning}")
    if not args.offline and not token:
        return _fail(
            f"{path}: no API key: set ${config.api.token_env}, api.token_file, or a systemd "
            "credential named magic-hour-token (or run check --offline)",
            EX_CONFIG,
        )
    problems = config_file.check_environment(config)
    # A missing optional package (apprise) is the host's problem, not the config's: 69.
    problems += config_file.check_extras(config)
    state_problem = LocalFileSystem().state_dir_problem(Path(str(config.daemon.state_dir)))
    if state_problem:
        problems.append(
            f"daemon.state_dir {config.daemon.state_dir}: {state_problem}; use a local disk"
        )
    for problem in problems:
        print(f"problem: {problem}", file=sys.stderr)
    if problems:
        return EX_UNAVAILABLE
    print(f"config ok: {path} ({len(config.folders)} folder(s))")
    if args.offline:
        print("API key not checked (--offline)")
        return EX_OK
    assert token is not None
    with httpx.Client(headers={"User-Agent": f"mh-watchd/{version}"}) as http:
        client = MagicHourClient(
            http,
            base_url=config.api.base_url,
            token=token,
            request_timeout_seconds=config.api.request_timeout_seconds,
        )
        try:
            account = client.get_account()
        except AuthError:
            return _fail(
                f"the API key from {config_file.token_source(config.api, os.environ)} was "
                "refused (401): create a new key in the Magic Hour dashboard",
                EX_UNAVAILABLE,
            )
        except ApiError as exc:
            return _fail(f"the API at {config.api.base_url} is unreachable: {exc}", EX_UNAVAILABLE)
    print(f"API key ok: {account.email or account.id}, {account.credits} credits ({account.tier})")
    return EX_OK


def cmd_status(args: argparse.Namespace) -> int:
    """`status`: read the journal read-only and print what the daemon is doing."""
    from mh_watchd import report

    loaded = _load_config(args)
    if isinstance(loaded, int):
        return loaded
    config = loaded[0]
    journal = _open_readonly(config)
    if isinstance(journal, int):
        return journal
    try:
        data = report.build(journal, config)
    finally:
        journal.close()
    if args.json:
        print(json.dumps(data, indent=2, sort_keys=True))
    else:
        print(report.render(data))
    return EX_OK


def cmd_backup(args: argparse.Namespace) -> int:
    """`backup PATH`: a consistent copy of the journal, whether or not the daemon runs.

    0 written; 69 no journal, or PATH's directory unwritable; 73 PATH exists (without --force)
    or lies inside the state_dir; 78 bad config.
    """
    from mh_watchd.adapters.journal_backup import BackupRefused
    from mh_watchd.core.errors import StateDirError

    loaded = _load_config(args)
    if isinstance(loaded, int):
        return loaded
    config = loaded[0]
    journal = _open_readonly(config)
    if isinstance(journal, int):
        return journal
    try:
        done = journal.backup(Path(args.path), force=args.force)
    except BackupRefused as exc:
        return _fail(str(exc), EX_CANTCREAT)
    except StateDirError as exc:
        return _fail(f"cannot copy the journal: {exc}", EX_UNAVAILABLE)
    except OSError as exc:
        return _fail(f"cannot write the backup {args.path}: {exc}", EX_UNAVAILABLE)
    finally:
        journal.close()
    print(f"backup written: {done.path} ({done.jobs} jobs, {done.size_bytes} bytes)")
    return EX_OK


def cmd_web(args: argparse.Namespace) -> int:
    """`web`: the web page, read-only, from the journal alone, until SIGTERM or SIGINT."""
    import signal
    import threading

    from mh_watchd.adapters import logs
    from mh_watchd.adapters.http_status import StatusServer
    from mh_watchd.core.config import DEFAULT_HTTP_LISTEN, is_loopback_listen
    from mh_watchd.web import WebApp

    loaded = _load_config(args)
    if isinstance(loaded, int):
        return loaded
    config, path = loaded
    listen = args.listen or config.daemon.http_listen or DEFAULT_HTTP_LISTEN
    if not is_loopback_listen(listen) and not config.daemon.http_token:
        return _fail(
            f"--listen {listen!r} is reachable from other machines: set daemon.http_token in "
            f"{path} (make one with `openssl rand -hex 24`), or listen on 127.0.0.1",
            EX_CONFIG,
        )
    logs.configure_logging(
        log_format=config.daemon.log_format,
        secrets=[config.daemon.http_token] if config.daemon.http_token else [],
    )
    journal = _open_readonly(config)
    if isinstance(journal, int):
        return journal
    stop = threading.Event()
    previous = {
        sig: signal.signal(sig, lambda *_: stop.set()) for sig in (signal.SIGTERM, signal.SIGINT)
    }
    server = StatusServer(
        listen, health=None, metrics=None, web=WebApp(journal, lambda: config, writable=False)
    )
    try:
        if not server.start():
            return _fail(f"cannot serve on {listen}: {server.error}", EX_UNAVAILABLE)
        host, port = server.address
        print(f"http://{'[' + host + ']' if ':' in host else host}:{port}/ (read-only)", flush=True)
        stop.wait()
    finally:
        server.stop()
        journal.close()
        for sig, handler in previous.items():
            signal.signal(sig, handler)
    return EX_OK


def cmd_retry(args: argparse.Namespace, parser: argparse.ArgumentParser) -> int:
    """`retry`: write retry requests to the journal; a running daemon acts within seconds.

    The web page's Retry buttons go through the same `retries.request_retries`.
    """
    import time

    from mh_watchd.adapters.journal import open_journal
    from mh_watchd.core.errors import StateDirError
    from mh_watchd.retries import request_retries

    if not args.job_ids and not args.failed and not args.held:
        sys.stderr.write("mh-watchd retry: give JOB_ID..., --failed or --held\n")
        return EX_USAGE
    loaded = _load_config(args)
    if isinstance(loaded, int):
        return loaded
    config = loaded[0]
    try:
        journal = open_journal(config.daemon)
    except StateDirError as exc:
        return _fail(str(exc), EX_UNAVAILABLE)
    try:
        outcome = request_retries(
            journal, job_ids=args.job_ids, failed=args.failed, held=args.held, now=time.time()
        )
    finally:
        journal.close()
    for line in outcome.problems:
        sys.stderr.write(f"mh-watchd retry: {line}\n")
    if not outcome.ok:
        return EX_DATAERR
    for target in outcome.requested:
        if target.warning:
            print(target.warning)
        print(f"job {target.id} ({target.folder}/{target.file}, {target.state}): retry requested")
    if not outcome.requested:
        print("nothing to retry")
    elif not outcome.daemon_running:
        print("the daemon is not running: it acts on these requests when it starts")
    _ = parser
    return EX_OK
