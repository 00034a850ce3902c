"""The container image's start-up, health check and starter config (see Containerfile).

`python -m mh_watchd.container entrypoint [ARGS...]` runs as root when the container starts, as
linuxserver.io images do: it gives the service user the uid/gid in $PUID/$PGID, takes
ownership of /state (never of /config or the media under /data), writes a commented starter
config on a first start, turns a token secret file into the credential the daemon reads, sets
$UMASK, then drops to that user with setpriv and execs `mh-watchd run -c /config/config.toml`
(or `mh-watchd ARGS...`). `healthcheck` asks the daemon's /healthz; `as-user` runs a command as
the service user (the `mh-watchd` wrapper on the image's PATH uses it, so `docker exec ...
mh-watchd status` never leaves root-owned files in /state); `starter-config` prints the
starter config.

Standard library only: this runs before anything else, and must not import the daemon.
"""

from __future__ import annotations

import os
import sys
import tomllib
import urllib.error
import urllib.request
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path

USER_NAME = "mhwatchd"
CONFIG_DIR = Path("/config")
STATE_DIR = Path("/state")
DATA_DIR = Path("/data")
RUN_DIR = Path("/run/mh-watchd")
VENV_BIN = Path("/opt/mh-watchd/bin")
DEFAULT_CONFIG = CONFIG_DIR / "config.toml"
# Where a token file is looked for, in order, when $MAGIC_HOUR_API_KEY_FILE is not set.
SECRET_FILES = (Path("/run/secrets/magic_hour_token"), CONFIG_DIR / "magic-hour-token")
CREDENTIAL_NAME = "magic-hour-token"  # what mh_watchd reads under $CREDENTIALS_DIRECTORY
DEFAULT_HTTP_LISTEN = "127.0.0.1:9309"
DEFAULT_DAEMON_UMASK = 0o002
EX_USAGE = 64
EX_CONFIG = 78

STARTER_CONFIG = """\
# mh-watchd: starter config, written by the container on its first start because
# /config/config.toml did not exist. Edit it, then restart the container (or send it SIGHUP:
# `docker kill -s HUP mh-watchd` reloads it without a restart).
# Every key with its default: config.example.toml in the source, or the project's README.
# Check an edit without starting anything: docker exec mh-watchd mh-watchd check --offline

[api]
# The API key never goes in this file. The container takes it from, in this order:
#   a secret file at /run/secrets/magic_hour_token (or the path in $MAGIC_HOUR_API_KEY_FILE),
#   the file /config/magic-hour-token,
#   the environment variable named here.
token_env = "MAGIC_HOUR_API_KEY"

[daemon]
# The journal (SQLite). It must be a local volume, never a NAS share: the daemon refuses
# NFS/SMB/FUSE here (SQLite is unsafe on them).
state_dir = "/state"
# /healthz (the container's HEALTHCHECK), /metrics and the web page. Inside the container, so
# only the container itself (and the health check) can reach it. To open the page from your
# LAN: http_listen = "0.0.0.0:9309", set http_token = "<a long random string>", and publish
# port 9309.
http_listen = "127.0.0.1:9309"
# auto: native file events on local disks, polling on network shares (SMB/NFS/FUSE), where
# events never arrive. A folder bind-mounted from the NAS's own disks gets native events.
observer = "auto"
# Permissions of everything the daemon creates; the container's $UMASK at first start.
umask = "{umask}"
# A safety net for the first days: at most this many credits a day (0 = no limit).
daily_credit_limit = 3000
# The container must be given longer than this to stop (compose: stop_grace_period: 90s;
# docker/podman run: --stop-timeout 90), so a request in flight is never cut off.
stop_grace_seconds = 60

[styles.ghibli]
art_style = "Studio Ghibli"

# One [[folder]] per inbox. Paths are inside the container: your share is mounted at /data.
# Drop a video into magic-hour/in on the share; the restyled one appears in magic-hour/out,
# and the original moves to magic-hour/in/.mh-done.
[[folder]]
name = "ghibli"
inbox = "/data/magic-hour/in"
outbox = "/data/magic-hour/out"
style = "ghibli"
fps_resolution = "HALF"     # FULL costs twice as much
max_seconds = 60            # only the first 60 s of each video are sent
"""


class ContainerError(Exception):
    """A start-up problem the user must fix (a bad PUID, say); the message says how."""


@dataclass(frozen=True)
class Identity:
    """Who the daemon runs as, from $PUID, $PGID and $UMASK."""

    uid: int
    gid: int
    umask: int


def say(message: str) -> None:
    """One plain line on stderr, where the container's log collects it."""
    print(f"mh-watchd-container: {message}", file=sys.stderr, flush=True)


def identity_from(environ: Mapping[str, str]) -> Identity:
    """Parse PUID/PGID (default 1000) and UMASK (octal, default 002). Raises ContainerError."""
    ids = []
    for name in ("PUID", "PGID"):
        raw = environ.get(name, "").strip() or "1000"
        if not raw.isdigit() or int(raw) > 2**31 - 2:
            raise ContainerError(f"{name}={raw!r} is not a numeric id; use the output of `id`")
        ids.append(int(raw))
    raw_umask = environ.get("UMASK", "").strip() or "002"
    try:
        umask = int(raw_umask, 8)
    except ValueError:
        umask = -1
    if not 0 <= umask <= 0o777:
        raise ContainerError(f"UMASK={raw_umask!r} is not an octal umask such as 002 or 022")
    return Identity(uid=ids[0], gid=ids[1], umask=umask)


def set_account(root: Path, ident: Identity) -> None:
    """Give USER_NAME the wanted uid/gid in <root>/etc/passwd and group (replacing an earlier
    start's entries). Another account may share the ids, as `usermod -o` allows."""
    group_lines = _without(root / "etc/group", USER_NAME)
    group_lines.append(f"{USER_NAME}:x:{ident.gid}:")
    _write_lines(root / "etc/group", group_lines)
    passwd_lines = _without(root / "etc/passwd", USER_NAME)
    passwd_lines.append(
        f"{USER_NAME}:x:{ident.uid}:{ident.gid}:mh-watchd:{CONFIG_DIR}:/usr/sbin/nologin"
    )
    _write_lines(root / "etc/passwd", passwd_lines)


def _without(path: Path, name: str) -> list[str]:
    try:
        lines = path.read_text(encoding="utf-8").splitlines()
    except FileNotFoundError:
        return []
    return [line for line in lines if line.split(":", 1)[0] != name]


def _write_lines(path: Path, lines: Sequence[str]) -> None:
    temp = path.with_name(path.name + ".mh-watchd-new")
    temp.write_text("".join(f"{line}\n" for line in lines), encoding="utf-8")
    os.chmod(temp, 0o644)
    os.replace(temp, path)


def own_state(state_dir: Path, ident: Identity) -> int:
    """chown -R the state dir to the service user (it holds only the daemon's own files, and
    a `docker exec` as root may have left some behind). Returns how many entries changed."""
    state_dir.mkdir(parents=True, exist_ok=True)
    changed = 0
    for path in [state_dir, *state_dir.rglob("*")]:
        info = path.lstat()
        if (info.st_uid, info.st_gid) != (ident.uid, ident.gid):
            os.lchown(path, ident.uid, ident.gid)
            changed += 1
    return changed


def write_starter(config_path: Path, ident: Identity, data_dir: Path) -> bool:
    """Write the starter config when there is none; make its folders when /data is a mount
    (a share of the user's) and they are missing. Returns True when it wrote the config."""
    if config_path.exists() or config_path.is_symlink():
        return False
    config_path.parent.mkdir(parents=True, exist_ok=True)
    text = STARTER_CONFIG.replace("{umask}", f"{ident.umask:04o}")
    fd = os.open(config_path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    with os.fdopen(fd, "w", encoding="utf-8") as handle:
        handle.write(text)
        os.fchmod(handle.fileno(), 0o666 & ~ident.umask)
    os.chown(config_path, ident.uid, ident.gid)
    say(f"no config at {config_path}: wrote a commented starter config there; edit it")
    say("the starter watches /data/magic-hour/in and delivers to /data/magic-hour/out")
    if os.path.ismount(data_dir):
        for sub in ("magic-hour", "magic-hour/in", "magic-hour/out"):
            path = data_dir / sub
            if not path.exists():
                path.mkdir()
                os.chown(path, ident.uid, ident.gid)
                os.chmod(path, 0o777 & ~ident.umask)
                say(f"made {path} (owned {ident.uid}:{ident.gid})")
    return True


def install_token(environ: dict[str, str], ident: Identity, run_dir: Path) -> str | None:
    """Copy a token secret file to <run_dir>/credentials/magic-hour-token, readable only by the
    service user, and point $CREDENTIALS_DIRECTORY at it. Returns the source path, or None.

    Secret files are often readable by root alone, hence the copy: a new key needs a restart
    (as under systemd's LoadCredential). `api.token_file` in the config still wins."""
    if "CREDENTIALS_DIRECTORY" in environ:
        return None  # set by the user: theirs to manage
    named = environ.get("MAGIC_HOUR_API_KEY_FILE", "").strip()
    candidates = [Path(named)] if named else list(SECRET_FILES)
    source = next((path for path in candidates if path.is_file()), None)
    if source is None:
        if named:
            raise ContainerError(f"MAGIC_HOUR_API_KEY_FILE={named}: no such file")
        return None
    credentials = run_dir / "credentials"
    credentials.mkdir(parents=True, exist_ok=True)
    os.chown(credentials, ident.uid, ident.gid)
    os.chmod(credentials, 0o700)
    target = credentials / CREDENTIAL_NAME
    target.unlink(missing_ok=True)
    fd = os.open(target, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o400)
    with os.fdopen(fd, "wb") as handle:
        handle.write(source.read_bytes())
    os.chown(target, ident.uid, ident.gid)
    environ["CREDENTIALS_DIRECTORY"] = str(credentials)
    return str(source)


def read_daemon_table(config_path: Path) -> dict[str, object]:
    """The [daemon] table of the config, or {} when it cannot be read (the daemon says why)."""
    try:
        raw = tomllib.loads(config_path.read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, tomllib.TOMLDecodeError):
        return {}
    daemon = raw.get("daemon", {})
    return daemon if isinstance(daemon, dict) else {}


def warn_umask_mismatch(config_path: Path, ident: Identity, environ: Mapping[str, str]) -> None:
    """The daemon applies `daemon.umask` from the config to everything it writes; say so when
    an explicit $UMASK differs, since the config is what counts."""
    if not environ.get("UMASK", "").strip():
        return
    raw = read_daemon_table(config_path).get("umask")
    try:
        configured = int(raw, 8) if isinstance(raw, str) else DEFAULT_DAEMON_UMASK
    except ValueError:
        return
    if configured != ident.umask:
        say(
            f"UMASK={ident.umask:03o} but daemon.umask in {config_path} is {configured:03o}; "
            "the daemon writes with the config's value: set daemon.umask to change it"
        )


def setpriv_argv(ident: Identity, command: Sequence[str]) -> list[str]:
    """The command line that runs `command` as the service user, with no privileges left."""
    return [
        "setpriv",
        f"--reuid={ident.uid}",
        f"--regid={ident.gid}",
        "--clear-groups",
        "--no-new-privs",
        "--",
        *command,
    ]


def daemon_command(args: Sequence[str], config_path: Path) -> list[str]:
    """`mh-watchd run -c CONFIG` by default; `mh-watchd ARGS...` when the container was given
    a command (`docker run IMAGE check --offline`)."""
    exe = str(VENV_BIN / "mh-watchd")
    if not args or list(args) == ["run"]:
        return [exe, "run", "-c", str(config_path)]
    return [exe, *args]


def prepare(environ: dict[str, str], config_path: Path) -> Identity:
    """Everything the entrypoint does as root before dropping privileges."""
    ident = identity_from(environ)
    if ident.uid == 0:
        say("PUID=0: the daemon runs as root; set PUID/PGID to the owner of your media")
    set_account(Path("/"), ident)
    changed = own_state(STATE_DIR, ident)
    if changed:
        say(f"{STATE_DIR}: ownership set to {ident.uid}:{ident.gid} ({changed} entries)")
    if not os.path.ismount(DATA_DIR):
        say(f"{DATA_DIR} is not a mounted volume: mount your media share there")
    if not os.path.ismount(CONFIG_DIR) and config_path.is_relative_to(CONFIG_DIR):
        say(f"{CONFIG_DIR} is not a mounted volume: the config would be lost with the container")
    write_starter(config_path, ident, DATA_DIR)
    source = install_token(environ, ident, RUN_DIR)
    if source:
        say(f"API key taken from the file {source}")
    warn_umask_mismatch(config_path, ident, environ)
    RUN_DIR.mkdir(parents=True, exist_ok=True)
    (RUN_DIR / "identity").write_text(
        f"{ident.uid} {ident.gid} {ident.umask:o}\n", encoding="utf-8"
    )
    _check_timezone(environ)
    environ.update(HOME=str(CONFIG_DIR), USER=USER_NAME, LOGNAME=USER_NAME)
    return ident


def _check_timezone(environ: Mapping[str, str]) -> None:
    zone = environ.get("TZ", "").strip()
    if zone and not zone.startswith(":") and not Path("/usr/share/zoneinfo", zone).is_file():
        say(f"TZ={zone!r} is not a known time zone; local time is UTC")


def entrypoint(args: Sequence[str]) -> int:
    """Prepare as root, then exec the daemon (or `mh-watchd ARGS`) as the service user."""
    environ = dict(os.environ)
    config_path = Path(environ.get("MH_WATCHD_CONFIG", "") or DEFAULT_CONFIG)
    command = daemon_command(args, config_path)
    if os.geteuid() != 0:
        # Started with --user: nothing to adjust, and nothing we could.
        say(f"running as uid {os.geteuid()} (container --user); PUID/PGID are not used")
        ident = identity_from(environ)
        os.umask(ident.umask)
        write_starter_if_possible(config_path, ident)
        os.execvpe(command[0], command, environ)
    try:
        ident = prepare(environ, config_path)
    except (ContainerError, OSError) as exc:
        say(f"cannot start: {exc}")
        return EX_CONFIG
    os.umask(ident.umask)
    say(f"starting as {ident.uid}:{ident.gid}, umask {ident.umask:03o}: {' '.join(command)}")
    argv = setpriv_argv(ident, command)
    os.execvpe(argv[0], argv, environ)


def write_starter_if_possible(config_path: Path, ident: Identity) -> None:
    """Under --user: write the starter config as ourselves, if /config lets us."""
    if config_path.exists():
        return
    try:
        config_path.parent.mkdir(parents=True, exist_ok=True)
        with open(config_path, "x", encoding="utf-8") as handle:
            handle.write(STARTER_CONFIG.replace("{umask}", f"{ident.umask:04o}"))
    except OSError as exc:
        say(f"no config at {config_path} and cannot write one: {exc.strerror}")
        return
    say(f"no config at {config_path}: wrote a commented starter config there; edit it")


def as_user(args: Sequence[str]) -> int:
    """Run `args` as the service user the entrypoint chose (root until it has run)."""
    if not args:
        say("usage: python -m mh_watchd.container as-user COMMAND [ARGS...]")
        return EX_USAGE
    command = list(args)
    if os.geteuid() == 0:
        try:
            uid, gid, umask = (RUN_DIR / "identity").read_text(encoding="utf-8").split()
        except (OSError, ValueError):
            pass  # the entrypoint has not run (docker run --entrypoint ...): stay as we are
        else:
            os.umask(int(umask, 8))
            command = setpriv_argv(Identity(int(uid), int(gid), int(umask, 8)), command)
    os.execvp(command[0], command)


def health_url(config_path: Path) -> str | None:
    """http://HOST:PORT/healthz from the config's daemon.http_listen; None when it is off."""
    listen = read_daemon_table(config_path).get("http_listen", DEFAULT_HTTP_LISTEN)
    if not isinstance(listen, str) or not listen:
        return None
    host, _, port = listen.rpartition(":")
    if host in ("0.0.0.0", "", "*"):
        host = "127.0.0.1"
    elif host == "[::]":
        host = "[::1]"
    return f"http://{host}:{port}/healthz"


def healthcheck(config_path: Path, timeout: float = 5.0) -> int:
    """0 when /healthz answers 200, else 1 with the reason on stdout (docker shows it)."""
    url = health_url(config_path)
    if url is None:
        print(f"daemon.http_listen is off in {config_path}: no /healthz to ask")
        return 1
    try:
        with urllib.request.urlopen(url, timeout=timeout) as response:
            print(f"{url}: {response.status} {response.read(2000).decode(errors='replace')}")
            return 0 if response.status == 200 else 1
    except urllib.error.HTTPError as exc:
        print(f"{url}: {exc.code} {exc.read(2000).decode(errors='replace')}")
    except (OSError, ValueError) as exc:
        print(f"{url}: no answer ({exc})")
    return 1


def main(argv: Sequence[str] | None = None) -> int:
    args = list(sys.argv[1:] if argv is None else argv)
    config_path = Path(os.environ.get("MH_WATCHD_CONFIG", "") or DEFAULT_CONFIG)
    command, rest = (args[0], args[1:]) if args else ("", [])
    if command == "entrypoint":
        return entrypoint(rest)
    if command == "healthcheck":
        return healthcheck(config_path)
    if command == "as-user":
        return as_user(rest)
    if command == "starter-config":
        sys.stdout.write(STARTER_CONFIG.replace("{umask}", "0002"))
        return 0
    say("usage: python -m mh_watchd.container entrypoint|healthcheck|as-user|starter-config")
    return EX_USAGE


if __name__ == "__main__":
    sys.exit(main())
