"""The config file and the API key on disk: find, read, parse, and check what they point at.

`load()` turns a TOML file into a `Config` (or one `ConfigError`); `read_token()` finds the key
in `token_file`, a systemd credential or the environment; `check_environment()` is the
filesystem half of `mh-watchd check`, `check_extras()` the optional packages the config
needs. No error text ever holds the key itself.
"""

from __future__ import annotations

import errno
import importlib
import os
import tempfile
import tomllib
from collections.abc import Callable, Mapping
from pathlib import Path, PurePosixPath

from mh_watchd.core.config import ApiConfig, Config, FolderConfig, parse
from mh_watchd.core.errors import ConfigError

DEFAULT_CONFIG_PATH = Path("/etc/mh-watchd/config.toml")
CONFIG_ENV = "MH_WATCHD_CONFIG"
# systemd's LoadCredential=magic-hour-token:... lands here under $CREDENTIALS_DIRECTORY.
CREDENTIAL_NAME = "magic-hour-token"
# A key is a few dozen bytes; anything much bigger is the wrong file (and is not read whole).
MAX_TOKEN_FILE_BYTES = 4096
_PROBE_PREFIX = ".mh-watchd-check-"


def config_path(cli_value: str | None, environ: Mapping[str, str]) -> Path:
    """The config file to use: `-c` if given, else $MH_WATCHD_CONFIG, else the default."""
    if cli_value:
        return Path(cli_value)
    from_env = environ.get(CONFIG_ENV, "")
    return Path(from_env) if from_env else DEFAULT_CONFIG_PATH


def load(path: Path) -> Config:
    """Read, decode and parse the TOML file at `path`; relative paths in it are resolved
    against the file's directory.

    Raises ConfigError: file missing or unreadable, not UTF-8, TOML syntax error (with its line
    and column), or every problem `parse()` finds.
    """
    try:
        data = path.read_bytes()
    except FileNotFoundError:
        raise ConfigError(
            [f"{path}: no config at {path}; copy config.example.toml there or pass -c"]
        ) from None
    except IsADirectoryError:
        raise ConfigError([f"{path}: is a directory; pass the config file itself"]) from None
    except OSError as exc:
        raise ConfigError([f"{path}: cannot read the config: {exc.strerror}"]) from None
    try:
        text = data.decode("utf-8")
    except UnicodeDecodeError as exc:
        raise ConfigError(
            [f"{path}: not UTF-8 text (bad byte at offset {exc.start}); save it as UTF-8"]
        ) from None
    try:
        raw = tomllib.loads(text)
    except tomllib.TOMLDecodeError as exc:
        # tomllib's message names the line and column and never quotes the line itself.
        raise ConfigError([f"{path}: TOML syntax error: {exc}"]) from None
    # absolute() without resolve(): paths are relative to the file as the user named it.
    return parse(raw, base_dir=PurePosixPath(path.absolute().parent))


def read_token(api: ApiConfig, environ: Mapping[str, str]) -> str | None:
    """The API key, whitespace stripped, or None when the source that applies is empty.

    The first source present wins: `api.token_file`, then $CREDENTIALS_DIRECTORY/magic-hour-token,
    then $<token_env>. Raises ConfigError (naming the path, never the key) when a token file that
    applies cannot be read.
    """
    if api.token_file is not None:
        return _read_secret_file(Path(api.token_file), "api.token_file")
    credential = _credential_path(environ)
    if credential is not None and os.path.lexists(credential):
        return _read_secret_file(credential, "systemd credential")
    return _clean(environ.get(api.token_env))


def token_source(api: ApiConfig, environ: Mapping[str, str]) -> str:
    """Where `read_token()` takes the key from, in words for humans; never the key itself."""
    if api.token_file is not None:
        return f"token_file {api.token_file}"
    credential = _credential_path(environ)
    if credential is not None and os.path.lexists(credential):
        return f"systemd credential {CREDENTIAL_NAME}"
    if api.token_env in environ:
        return f"${api.token_env}"
    return f"${api.token_env} (not set)"


def check_environment(config: Config) -> list[str]:
    """The filesystem checks of `mh-watchd check`: one line per problem, each with a fix.

    Inboxes must be readable, writable directories (originals are moved out of them);
    outbox, archive (when used), failed and state_dir must exist or be creatable, and be
    writable. Returns the problems; an empty list means all is well. Creates nothing lasting.
    """
    problems: list[str] = []
    checked: set[Path] = set()
    for index, folder in enumerate(config.folders):
        where = f"folder[{index}]"
        inbox_problems = _check_inbox(f"{where}.inbox", folder)
        problems.extend(inbox_problems)
        for key in _output_keys(folder):
            path = Path(getattr(folder, key))
            if path in checked:
                continue  # a shared outbox is allowed and checked once
            if inbox_problems and path.is_relative_to(folder.inbox):
                continue  # (the default .mh-done/.mh-failed) the inbox's problem says it all
            checked.add(path)
            problems.extend(_check_output_dir(f"{where}.{key}", path))
    problems.extend(_check_output_dir("daemon.state_dir", Path(config.daemon.state_dir)))
    if config.api.token_file is not None:
        token_file = Path(config.api.token_file)
        try:
            with token_file.open("rb"):
                pass
        except OSError as exc:
            problems.append(
                f"api.token_file {token_file}: cannot read it ({exc.strerror}); "
                "fix the path or its permissions"
            )
    return problems


def check_extras(config: Config, *, importable: Callable[[str], bool] | None = None) -> list[str]:
    """Optional packages the config needs but this installation lacks: one line each, with the fix.

    These are environment problems (the config is valid; the host is missing a package), so
    `check` reports them with the folder problems and exits 69. `importable` is for tests.
    """
    can_import = importable or _importable
    problems: list[str] = []
    if config.notify.apprise_urls and not can_import("apprise"):
        # The URLs themselves are never printed: they often carry tokens.
        problems.append(
            f"notify.apprise_urls: {len(config.notify.apprise_urls)} URL(s) set, but the "
            "apprise package is not installed, so those notifications would never be sent; "
            "install it (pip install 'mh-watchd[apprise]') or set apprise_urls = []"
        )
    return problems


def _importable(module: str) -> bool:
    try:
        importlib.import_module(module)
    except ImportError:
        return False
    return True


def _credential_path(environ: Mapping[str, str]) -> Path | None:
    directory = environ.get("CREDENTIALS_DIRECTORY", "")
    return Path(directory) / CREDENTIAL_NAME if directory else None


def _clean(value: str | None) -> str | None:
    if value is None:
        return None
    stripped = value.strip()
    return stripped or None


def _read_secret_file(path: Path, what: str) -> str | None:
    try:
        with path.open("rb") as handle:
            data = handle.read(MAX_TOKEN_FILE_BYTES + 1)
    except OSError as exc:
        raise ConfigError(
            [f"{what}: cannot read {path}: {exc.strerror}; fix the path or its permissions"]
        ) from None
    if len(data) > MAX_TOKEN_FILE_BYTES:
        raise ConfigError(
            [f"{what}: {path} is over {MAX_TOKEN_FILE_BYTES} bytes; it must hold only the key"]
        )
    try:
        text = data.decode("utf-8")
    except UnicodeDecodeError:
        raise ConfigError(
            [f"{what}: {path} is not UTF-8 text; it must hold only the key"]
        ) from None
    return _clean(text)


def _output_keys(folder: FolderConfig) -> tuple[str, ...]:
    # The archive is only written when originals are archived.
    if folder.on_success == "archive":
        return ("outbox", "archive", "failed")
    return ("outbox", "failed")


def _describe(exc: OSError) -> str:
    return exc.strerror or errno.errorcode.get(exc.errno or 0, "error")


def _check_inbox(where: str, folder: FolderConfig) -> list[str]:
    inbox = Path(folder.inbox)
    try:
        is_dir = inbox.is_dir()
        exists = is_dir or inbox.exists()
    except OSError as exc:
        return [f"{where} {inbox}: cannot be reached ({_describe(exc)}); check the share"]
    if not exists:
        return [f"{where} {inbox}: does not exist; create it (mkdir -p {inbox}) or mount the share"]
    if not is_dir:
        return [f"{where} {inbox}: is not a directory; point inbox at a folder"]
    if not os.access(inbox, os.R_OK | os.X_OK):
        return [f"{where} {inbox}: is not readable by uid {os.geteuid()}; fix its permissions"]
    problems: list[str] = []
    failure = _write_probe(inbox)
    if failure is not None:
        problems.append(
            f"{where} {inbox}: is not writable ({failure}), so originals cannot be moved to "
            "archive or failed; fix its permissions"
        )
    if folder.require_mount and not os.path.ismount(inbox):
        problems.append(
            f"{where} {inbox}: is not a mount point (require_mount = true); mount the share"
        )
    if folder.mount_marker and not (inbox / folder.mount_marker).exists():
        problems.append(
            f"{where} {inbox}: the mount_marker {folder.mount_marker!r} is missing; mount the "
            "share or create the marker file"
        )
    return problems


def _check_output_dir(where: str, path: Path) -> list[str]:
    """A directory the daemon writes into: it exists and is writable, or can be created."""
    try:
        if path.exists():
            if not path.is_dir():
                return [f"{where} {path}: exists but is not a directory; fix the path"]
            failure = _write_probe(path)
            if failure is not None:
                return [f"{where} {path}: is not writable ({failure}); fix its permissions"]
            return []
    except OSError as exc:
        return [f"{where} {path}: cannot be reached ({_describe(exc)}); check the share"]
    ancestor = _nearest_existing(path)
    if ancestor is None:
        return [f"{where} {path}: cannot be created (no existing parent); fix the path"]
    if not ancestor.is_dir():
        return [f"{where} {path}: cannot be created: {ancestor} is not a directory; fix the path"]
    if not os.access(ancestor, os.W_OK | os.X_OK):
        return [
            f"{where} {path}: does not exist and cannot be created: {ancestor} is not writable; "
            f"create it (mkdir -p {path}) as a user who may"
        ]
    return []


def _nearest_existing(path: Path) -> Path | None:
    for candidate in path.parents:
        try:
            if candidate.exists():
                return candidate
        except OSError:
            return None
    return None


def _write_probe(directory: Path) -> str | None:
    """None if a file can really be created in `directory`, else why not.

    os.access alone misleads on NFS with root squash, ACLs and (for root) mode bits, so a hidden
    file is created and removed; hidden names are never taken as inputs.
    """
    if not os.access(directory, os.W_OK | os.X_OK):
        return "permission denied"
    try:
        handle, name = tempfile.mkstemp(prefix=_PROBE_PREFIX, dir=directory)
    except OSError as exc:
        return _describe(exc)
    os.close(handle)
    try:
        os.unlink(name)
    except OSError as exc:
        return f"cannot remove a test file: {_describe(exc)}"
    return None
