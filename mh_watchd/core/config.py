"""The configuration as data: a plain dict (from TOML) in, frozen dataclasses out.

`parse()` validates everything at once and raises one `ConfigError` whose `problems` list every
issue, each prefixed with its key path (`api.base_url`, `styles.ghibli.art_style`,
`folder[0].style.art_style`; `[[folder]]` entries are counted from 0, like TOML arrays).
Pure: no I/O, no environment; relative paths are resolved against a `base_dir` argument.
"""

from __future__ import annotations

import difflib
import ipaddress
import math
import re
import urllib.parse
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field, replace
from pathlib import PurePosixPath
from types import MappingProxyType
from typing import Any

from mh_watchd.core.api import (
    ART_STYLES,
    FPS_RESOLUTIONS,
    MODELS,
    PROMPT_REQUIRED_TYPES,
    PROMPT_TYPES,
    VERSIONS,
    Style,
)
from mh_watchd.core.errors import ConfigError

OBSERVERS: tuple[str, ...] = ("auto", "native", "polling")
LOG_FORMATS: tuple[str, ...] = ("auto", "json", "console")
ON_SUCCESS: tuple[str, ...] = ("archive", "keep", "delete")
NOTIFY_EVENTS: tuple[str, ...] = ("failed", "held", "outage", "done")

DEFAULT_BASE_URL = "https://api.magichour.ai"
DEFAULT_TOKEN_ENV = "MAGIC_HOUR_API_KEY"
DEFAULT_STATE_DIR = PurePosixPath("/var/lib/mh-watchd")
DEFAULT_HTTP_LISTEN = "127.0.0.1:9309"
DEFAULT_UMASK = 0o002
DEFAULT_NOTIFY_ON: frozenset[str] = frozenset({"failed", "held", "outage"})
DEFAULT_ARCHIVE_NAME = ".mh-done"
DEFAULT_FAILED_NAME = ".mh-failed"
DEFAULT_FPS_RESOLUTION = "HALF"
DEFAULT_START_SECONDS = 0.0
DEFAULT_MAX_SECONDS = 60.0

FOLDER_NAME_RE = re.compile(r"^[a-z0-9][a-z0-9_-]{0,39}$")
GHIBLI = "Studio Ghibli"

TOP_KEYS: tuple[str, ...] = ("api", "daemon", "styles", "folder", "notify")
API_KEYS: tuple[str, ...] = (
    "base_url", "token_env", "token_file", "request_timeout_seconds", "poll_interval_seconds",
    "render_timeout_minutes", "account_probe_seconds",
)  # fmt: skip
DAEMON_KEYS: tuple[str, ...] = (
    "state_dir", "max_parallel_uploads", "max_active_renders", "daily_credit_limit",
    "settle_seconds", "rescan_seconds", "observer", "log_format", "http_listen", "umask",
    "stop_grace_seconds", "http_token", "history_days", "state_url", "host_name",
    "lease_seconds", "state_timeout_seconds",
)  # fmt: skip
STYLE_KEYS: tuple[str, ...] = ("art_style", "model", "prompt", "prompt_type", "version")
# Keys a preset (or an inline [folder.style]) may set besides the style itself; folder keys of
# the same name override them.
TRIM_KEYS: tuple[str, ...] = ("fps_resolution", "start_seconds", "max_seconds")
PRESET_KEYS: tuple[str, ...] = STYLE_KEYS + TRIM_KEYS
FOLDER_KEYS: tuple[str, ...] = (
    "name", "inbox", "outbox", "archive", "failed", "style", "fps_resolution", "start_seconds",
    "max_seconds", "recursive", "on_success", "settle_seconds", "observer", "ready_marker",
    "include", "exclude", "min_size_bytes", "require_mount", "mount_marker",
)  # fmt: skip
NOTIFY_KEYS: tuple[str, ...] = ("webhook_url", "apprise_urls", "on")
# Keys that would put the API key itself in the file. Their values are never echoed.
SECRET_KEYS: frozenset[str] = frozenset({"token", "api_key", "apikey", "api_token", "key"})

_ENV_NAME_RE = re.compile(r"^[A-Za-z_][A-Za-z0-9_]*$")
_UMASK_RE = re.compile(r"^(0o)?[0-7]{1,4}$")
_PORT_RE = re.compile(r"^[0-9]{1,5}$")
_BARE_KEY_RE = re.compile(r"^[A-Za-z0-9_-]+$")


@dataclass(frozen=True)
class ApiConfig:
    """[api]: where the service is and where the key comes from (never the key itself)."""

    base_url: str = DEFAULT_BASE_URL
    token_env: str = DEFAULT_TOKEN_ENV
    token_file: PurePosixPath | None = None
    request_timeout_seconds: float = 60.0
    poll_interval_seconds: float = 10.0
    render_timeout_minutes: float = 180.0
    # While jobs are held for the key (401) or credits (402), GET /v1/account this often.
    account_probe_seconds: float = 600.0


@dataclass(frozen=True)
class DaemonConfig:
    """[daemon]: process-wide settings."""

    state_dir: PurePosixPath = DEFAULT_STATE_DIR
    max_parallel_uploads: int = 2
    max_active_renders: int = 4
    daily_credit_limit: int = 0
    settle_seconds: float = 10.0
    rescan_seconds: float = 300.0
    observer: str = "auto"
    log_format: str = "auto"
    http_listen: str = DEFAULT_HTTP_LISTEN
    umask: int = DEFAULT_UMASK
    # On SIGTERM no new step starts; steps in flight get this long to finish.
    stop_grace_seconds: float = 60.0
    # The web page's and /api/'s shared secret; required off loopback. Never logged or shown.
    http_token: str = field(default="", repr=False)
    # Events of finished jobs older than this many days are compacted; 0 keeps them forever.
    history_days: int = 365
    # "postgresql://..." puts the journal in PostgreSQL, shared by several hosts; "" keeps it
    # in state_dir (SQLite). Never logged with its password.
    state_url: str = field(default="", repr=False)
    # This daemon's name among the hosts sharing a journal ("" = the machine's host name).
    host_name: str = ""
    # A host holds its jobs under leases this long, renewed every third of it; a host that
    # stops renewing loses its jobs to another after this long.
    lease_seconds: float = 60.0
    # A journal call to the database (state_url) that takes longer fails: the daemon holds
    # everything until the database answers again.
    state_timeout_seconds: float = 30.0


@dataclass(frozen=True)
class Preset:
    """A named [styles.X] preset: a style plus optional trim settings folders may override."""

    name: str
    style: Style
    fps_resolution: str | None = None
    start_seconds: float | None = None
    max_seconds: float | None = None


@dataclass(frozen=True)
class FolderConfig:
    """One [[folder]] with every default filled in and its preset merged."""

    name: str
    inbox: PurePosixPath
    outbox: PurePosixPath
    archive: PurePosixPath
    failed: PurePosixPath
    style: Style
    style_name: str | None  # the preset's name, or None for an inline [folder.style]
    fps_resolution: str = DEFAULT_FPS_RESOLUTION
    start_seconds: float = DEFAULT_START_SECONDS
    max_seconds: float = DEFAULT_MAX_SECONDS
    recursive: bool = False
    on_success: str = "archive"
    settle_seconds: float = 10.0
    observer: str = "auto"
    ready_marker: str = ""
    include: tuple[str, ...] = ()
    exclude: tuple[str, ...] = ()
    min_size_bytes: int = 1
    require_mount: bool = False
    mount_marker: str = ""
    # Which of TRIM_KEYS the [[folder]] table set itself (they beat any preset's values).
    overrides: frozenset[str] = frozenset()

    def with_preset(self, preset: Preset) -> FolderConfig:
        """This folder with `preset`'s style (for a recursive subfolder named after a preset).

        The folder's own fps_resolution/start_seconds/max_seconds keys still win over the
        preset's; returns a new FolderConfig.
        """
        trims = _merge_trims(
            own={key: getattr(self, key) for key in self.overrides},
            preset=preset,
        )
        return replace(self, style=preset.style, style_name=preset.name, **trims)


@dataclass(frozen=True)
class NotifyConfig:
    """[notify]: where alerts go and which events send one."""

    webhook_url: str = ""
    apprise_urls: tuple[str, ...] = ()
    on: frozenset[str] = DEFAULT_NOTIFY_ON


@dataclass(frozen=True)
class Config:
    """The whole validated configuration."""

    api: ApiConfig
    daemon: DaemonConfig
    # Read-only; left out of the hash because a mapping proxy is not hashable.
    styles: Mapping[str, Preset] = field(hash=False)
    folders: tuple[FolderConfig, ...]
    notify: NotifyConfig
    warnings: tuple[str, ...] = ()

    def folder(self, name: str) -> FolderConfig | None:
        """The folder called `name` (exact match), or None."""
        for folder in self.folders:
            if folder.name == name:
                return folder
        return None

    def preset(self, name: str) -> Preset | None:
        """The preset called `name`, compared case-insensitively, or None."""
        wanted = name.casefold()
        for key, preset in self.styles.items():
            if key.casefold() == wanted:
                return preset
        return None


def parse(raw: Mapping[str, Any], *, base_dir: PurePosixPath | None = None) -> Config:
    """Validate a config dict (as tomllib returns it) and return the frozen Config.

    Relative paths are resolved against `base_dir` (the config file's directory); without it
    they are a problem. Raises ConfigError listing every problem (and the warnings) at once.
    """
    report = _Report()
    if not isinstance(raw, Mapping):
        raise ConfigError(["(top level): must be a table"])
    top = _Reader(raw, "", TOP_KEYS, report)
    api = _parse_api(top.table("api"), report, base_dir)
    daemon = _parse_daemon(top.table("daemon"), report, base_dir)
    presets = _parse_presets(top.table("styles"), report)
    folders = _parse_folders(raw.get("folder"), report, base_dir, daemon, presets)
    notify = _parse_notify(top.table("notify"), report)
    _check_layout(folders, daemon, report)
    if report.problems:
        raise ConfigError(report.problems, report.warnings)
    return Config(
        api=api,
        daemon=daemon,
        styles=MappingProxyType({preset.name: preset for preset in presets}),
        folders=tuple(draft.folder for draft in folders),
        notify=notify,
        warnings=tuple(report.warnings),
    )


# --- reading tables -----------------------------------------------------------------------


class _Report:
    """Problems and warnings collected while parsing, each already prefixed with its path."""

    def __init__(self) -> None:
        self.problems: list[str] = []
        self.warnings: list[str] = []

    def problem(self, path: str, message: str) -> None:
        self.problems.append(f"{path}: {message}")

    def warn(self, path: str, message: str) -> None:
        self.warnings.append(f"{path}: {message}")


def _join(path: str, key: str) -> str:
    shown = key if _BARE_KEY_RE.match(key) else '"' + key.replace('"', '\\"') + '"'
    return f"{path}.{shown}" if path else shown


def _suggest(value: str, choices: Iterable[str]) -> str | None:
    """The choice closest to `value`, compared case-insensitively, or None."""
    by_lower = {choice.casefold(): choice for choice in choices}
    lowered = value.casefold()
    if lowered in by_lower:
        return by_lower[lowered]
    close = difflib.get_close_matches(lowered, list(by_lower), n=1, cutoff=0.6)
    return by_lower[close[0]] if close else None


def _type_name(value: object) -> str:
    if isinstance(value, bool):
        return "a boolean"
    if isinstance(value, int):
        return "an integer"
    if isinstance(value, float):
        return "a float"
    if isinstance(value, str):
        return "a string"
    if isinstance(value, Mapping):
        return "a table"
    if isinstance(value, list | tuple):
        return "an array"
    return "a date or time" if hasattr(value, "isoformat") else type(value).__name__


def _not_one_of(value: str, choices: Sequence[str], noun: str) -> str:
    suggestion = _suggest(value, choices)
    if suggestion is not None:
        return f"{value!r} is not {noun}; did you mean {suggestion!r}?"
    if len(choices) <= 10:
        return f"{value!r} is not {noun} (one of: {', '.join(choices)})"
    return f"{value!r} is not {noun} (see the list in config.example.toml)"


class _Reader:
    """Reads one table; records unknown keys and type errors, returning defaults instead."""

    def __init__(
        self, raw: Mapping[str, Any], path: str, allowed: Sequence[str], report: _Report
    ) -> None:
        self.raw = raw
        self.path = path
        self.report = report
        for key in raw:
            if key in allowed:
                continue
            if str(key).casefold() in SECRET_KEYS:
                report.problem(
                    self.at(key),
                    "put the key in token_file or the environment, never in the config",
                )
                continue
            suggestion = _suggest(str(key), allowed)
            hint = (
                f"did you mean {suggestion!r}?"
                if suggestion
                else f"expected one of: {', '.join(allowed)}"
            )
            report.problem(self.at(key), f"unknown key; {hint}")

    def at(self, key: str) -> str:
        return _join(self.path, key)

    def has(self, key: str) -> bool:
        return key in self.raw

    def problem(self, key: str, message: str) -> None:
        self.report.problem(self.at(key), message)

    def warn(self, key: str, message: str) -> None:
        self.report.warn(self.at(key), message)

    def table(self, key: str) -> Mapping[str, Any]:
        value = self.raw.get(key, {})
        if isinstance(value, Mapping):
            return value
        self.problem(key, f"must be a table, not {_type_name(value)}")
        return {}

    def opt_string(self, key: str) -> str | None:
        if key not in self.raw:
            return None
        value = self.raw[key]
        if isinstance(value, str):
            if "\x00" in value:
                self.problem(key, "must not contain a NUL character")
                return None
            return value
        self.problem(key, f"must be a string, not {_type_name(value)}")
        return None

    def string(self, key: str, default: str) -> str:
        value = self.opt_string(key)
        return default if value is None else value

    def opt_number(self, key: str, *, positive: bool = False) -> float | None:
        """A non-negative int or float (strictly positive when `positive`), or None if absent."""
        if key not in self.raw:
            return None
        value = self.raw[key]
        if isinstance(value, bool) or not isinstance(value, int | float):
            self.problem(key, f"must be a number, not {_type_name(value)}")
            return None
        if not math.isfinite(value):
            self.problem(key, "must be a finite number")
            return None
        if positive and value <= 0:
            self.problem(key, f"must be greater than 0, not {value}")
            return None
        if value < 0:
            self.problem(key, f"must not be negative, not {value}")
            return None
        return float(value)

    def number(self, key: str, default: float, *, positive: bool = False) -> float:
        value = self.opt_number(key, positive=positive)
        return default if value is None else value

    def integer(self, key: str, default: int, *, minimum: int) -> int:
        if key not in self.raw:
            return default
        value = self.raw[key]
        if isinstance(value, bool) or not isinstance(value, int):
            self.problem(key, f"must be an integer, not {_type_name(value)}")
            return default
        if value < minimum:
            self.problem(key, f"must be at least {minimum}, not {value}")
            return default
        return value

    def boolean(self, key: str, default: bool) -> bool:
        if key not in self.raw:
            return default
        value = self.raw[key]
        if isinstance(value, bool):
            return value
        self.problem(key, f"must be true or false, not {_type_name(value)}")
        return default

    def strings(self, key: str, default: tuple[str, ...]) -> tuple[str, ...]:
        if key not in self.raw:
            return default
        value = self.raw[key]
        if not isinstance(value, list | tuple):
            self.problem(key, f"must be an array of strings, not {_type_name(value)}")
            return default
        items: list[str] = []
        for index, item in enumerate(value):
            if not isinstance(item, str) or not item:
                what = "an empty string" if isinstance(item, str) else _type_name(item)
                self.report.problem(
                    f"{self.at(key)}[{index}]", f"must be a non-empty string, not {what}"
                )
                continue
            items.append(item)
        return tuple(items)

    def opt_choice(self, key: str, choices: Sequence[str], noun: str) -> str | None:
        value = self.opt_string(key)
        if value is None:
            return None
        if value not in choices:
            self.problem(key, _not_one_of(value, choices, noun))
            return None
        return value

    def choice(self, key: str, default: str, choices: Sequence[str], noun: str) -> str:
        value = self.opt_choice(key, choices, noun)
        return default if value is None else value

    def opt_path(self, key: str, base_dir: PurePosixPath | None) -> PurePosixPath | None:
        """An absolute, lexically normalised path, or None if absent or invalid."""
        value = self.opt_string(key)
        if value is None:
            return None
        if not value.strip():
            self.problem(key, "must not be empty")
            return None
        if value.startswith("~"):
            self.problem(key, f"{value!r}: '~' is not expanded here; write the full path")
            return None
        path = PurePosixPath(value)
        if not path.is_absolute():
            if base_dir is None or not base_dir.is_absolute():
                self.problem(key, f"{value!r} must be an absolute path")
                return None
            path = base_dir / path
        return _normalize(path)


def _normalize(path: PurePosixPath) -> PurePosixPath:
    """Collapse ".." lexically (PurePosixPath already drops "." and doubled slashes)."""
    parts: list[str] = []
    for part in path.parts[1:]:
        if part == "..":
            if parts:
                parts.pop()
        else:
            parts.append(part)
    return PurePosixPath("/", *parts)


def _http_url(reader: _Reader, key: str, value: str) -> str | None:
    """`value` if it is an http(s) URL with a host (trailing "/" removed), else a problem."""
    try:
        parts = urllib.parse.urlsplit(value)
        _ = parts.port  # raises ValueError on a bad port
    except ValueError:
        parts = None
    if parts is None or parts.scheme not in ("http", "https") or not parts.hostname:
        reader.problem(key, f"{value!r} is not an http(s) URL like 'https://host/path'")
        return None
    return value.rstrip("/")


# --- sections ---------------------------------------------------------------------------


def _parse_api(
    raw: Mapping[str, Any], report: _Report, base_dir: PurePosixPath | None
) -> ApiConfig:
    reader = _Reader(raw, "api", API_KEYS, report)
    base_url = DEFAULT_BASE_URL
    given_url = reader.opt_string("base_url")
    if given_url is not None:
        base_url = _http_url(reader, "base_url", given_url) or DEFAULT_BASE_URL
    token_env = reader.string("token_env", DEFAULT_TOKEN_ENV)
    if token_env.startswith("mhk_"):
        # Somebody pasted the key itself: say so without repeating it.
        reader.problem(
            "token_env",
            "looks like an API key; token_env names an environment variable that holds the key "
            "(put the key in token_file or the environment, never in the config)",
        )
    elif not _ENV_NAME_RE.match(token_env):
        reader.problem("token_env", "must be an environment variable name like MAGIC_HOUR_API_KEY")
    return ApiConfig(
        base_url=base_url,
        token_env=token_env,
        token_file=reader.opt_path("token_file", base_dir),
        request_timeout_seconds=reader.number("request_timeout_seconds", 60.0, positive=True),
        poll_interval_seconds=reader.number("poll_interval_seconds", 10.0, positive=True),
        render_timeout_minutes=reader.number("render_timeout_minutes", 180.0, positive=True),
        account_probe_seconds=reader.number("account_probe_seconds", 600.0, positive=True),
    )


def _parse_umask(reader: _Reader) -> int:
    if not reader.has("umask"):
        return DEFAULT_UMASK
    value = reader.raw["umask"]
    if isinstance(value, str) and _UMASK_RE.match(value):
        number = int(value.removeprefix("0o"), 8)
        if number <= 0o777:
            return number
    elif isinstance(value, int) and not isinstance(value, bool) and 0 <= value <= 0o777:
        return value
    reader.problem("umask", 'must be an octal string like "0002" or "0022" (at most 0777)')
    return DEFAULT_UMASK


def _parse_http_listen(reader: _Reader) -> str:
    value = reader.string("http_listen", DEFAULT_HTTP_LISTEN)
    if value == "":
        return value
    host, sep, port = value.rpartition(":")
    bracketed = host.startswith("[") and host.endswith("]")
    if (
        sep
        and host
        and _PORT_RE.match(port)
        and 1 <= int(port) <= 65535
        and (":" not in host or bracketed)
    ):
        return value
    reader.problem(
        "http_listen",
        f'{value!r} must be "host:port" like "127.0.0.1:9309" (port 1-65535, IPv6 hosts in '
        '[brackets]), or "" to turn the HTTP endpoint off',
    )
    return DEFAULT_HTTP_LISTEN


HTTP_TOKEN_MIN_LENGTH = 16


def is_loopback_listen(listen: str) -> bool:
    """True when "host:port" binds only this machine (127.0.0.0/8, ::1, localhost).

    An empty host (":9309") or 0.0.0.0 / [::] means every interface: not loopback.
    """
    host = listen.strip().rpartition(":")[0].strip("[]").lower()
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False  # a host name: it may resolve to anything


def _parse_http_token(reader: _Reader, listen: str) -> str:
    """`daemon.http_token`, required when `listen` is reachable from other machines.

    Problems never repeat the token's value.
    """
    token = reader.string("http_token", "")
    if token and (len(token) < HTTP_TOKEN_MIN_LENGTH or token != token.strip()):
        reader.problem(
            "http_token",
            f"must be at least {HTTP_TOKEN_MIN_LENGTH} characters without surrounding spaces; "
            "make one with `openssl rand -hex 24`",
        )
        return ""
    if listen and not token and not is_loopback_listen(listen):
        reader.problem(
            "http_token",
            f"required because http_listen {listen!r} is reachable from other machines: set "
            "daemon.http_token (make one with `openssl rand -hex 24`), or bind http_listen to "
            '"127.0.0.1:9309" (or "" to turn it off)',
        )
    return token


def _parse_daemon(
    raw: Mapping[str, Any], report: _Report, base_dir: PurePosixPath | None
) -> DaemonConfig:
    reader = _Reader(raw, "daemon", DAEMON_KEYS, report)
    http_listen = _parse_http_listen(reader)
    return DaemonConfig(
        state_dir=reader.opt_path("state_dir", base_dir) or DEFAULT_STATE_DIR,
        max_parallel_uploads=reader.integer("max_parallel_uploads", 2, minimum=1),
        max_active_renders=reader.integer("max_active_renders", 4, minimum=1),
        daily_credit_limit=reader.integer("daily_credit_limit", 0, minimum=0),
        settle_seconds=reader.number("settle_seconds", 10.0),
        rescan_seconds=reader.number("rescan_seconds", 300.0, positive=True),
        observer=reader.choice("observer", "auto", OBSERVERS, "an observer"),
        log_format=reader.choice("log_format", "auto", LOG_FORMATS, "a log format"),
        http_listen=http_listen,
        umask=_parse_umask(reader),
        stop_grace_seconds=reader.number("stop_grace_seconds", 60.0),
        http_token=_parse_http_token(reader, http_listen),
        history_days=_parse_history_days(reader),
        state_url=_parse_state_url(reader),
        host_name=_parse_host_name(reader),
        lease_seconds=_parse_lease_seconds(reader),
        state_timeout_seconds=_parse_state_timeout(reader),
    )


_HOST_NAME_RE = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._-]{0,62}$")
MIN_LEASE_SECONDS = 2.0
MAX_LEASE_SECONDS = 3600.0


def _parse_state_url(reader: _Reader) -> str:
    """daemon.state_url: "" or a PostgreSQL URL (its password, if any, is never echoed)."""
    url = reader.string("state_url", "").strip()
    if url and not url.startswith(("postgresql://", "postgres://")):
        shown = url.split("://", 1)[0] + "://..." if "://" in url else "this value"
        reader.problem(
            "state_url",
            f"{shown} is not a PostgreSQL URL; write it like "
            '"postgresql://mh-watchd@db.lan/mh_watchd" (keep the password in ~/.pgpass or '
            "PGPASSFILE), or leave it out to keep the journal in daemon.state_dir",
        )
        return ""
    return url


def _parse_host_name(reader: _Reader) -> str:
    """daemon.host_name: letters, digits, dot, dash, underscore; "" = the machine's name."""
    name = reader.string("host_name", "")
    if name and not _HOST_NAME_RE.match(name):
        reader.problem(
            "host_name",
            f"{name!r} must be 1-63 letters, digits, '.', '-' or '_', starting with a letter "
            "or digit (it names this daemon among the hosts sharing a journal)",
        )
        return ""
    return name


def _parse_state_timeout(reader: _Reader) -> float:
    value = reader.number("state_timeout_seconds", 30.0, positive=True)
    if not 1.0 <= value <= 600.0:
        reader.problem("state_timeout_seconds", f"must be between 1 and 600 seconds, not {value:g}")
        return 30.0
    return value


def _parse_lease_seconds(reader: _Reader) -> float:
    value = reader.number("lease_seconds", 60.0, positive=True)
    if not MIN_LEASE_SECONDS <= value <= MAX_LEASE_SECONDS:
        reader.problem(
            "lease_seconds",
            f"must be between {MIN_LEASE_SECONDS:g} and {MAX_LEASE_SECONDS:g} seconds, "
            f"not {value:g}",
        )
        return 60.0
    return value


def _parse_history_days(reader: _Reader) -> int:
    """daemon.history_days: a whole number of days, 0 = keep every event forever."""
    value = reader.raw.get("history_days", 365)
    if isinstance(value, bool) or not isinstance(value, int):
        reader.problem(
            "history_days",
            f"must be a whole number of days (0 keeps history forever), not {_type_name(value)}",
        )
        return 365
    if value < 0:
        reader.problem(
            "history_days", f"must be 0 (keep history forever) or more days, not {value}"
        )
        return 365
    return value


def _parse_style(reader: _Reader) -> Style:
    """The style keys of a preset or an inline [folder.style] table (art_style required)."""
    art_style = reader.opt_string("art_style")
    if art_style is None and not reader.has("art_style"):
        reader.problem("art_style", 'required (for example "Studio Ghibli")')
    elif art_style is not None and art_style not in ART_STYLES:
        reader.problem("art_style", _not_one_of(art_style, ART_STYLES, "an art style"))
        art_style = None
    model = reader.choice("model", "default", MODELS, "a model")
    prompt = reader.opt_string("prompt")
    prompt_type = reader.choice("prompt_type", "default", PROMPT_TYPES, "a prompt type")
    version = reader.choice("version", "default", VERSIONS, "a version")
    if prompt_type in PROMPT_REQUIRED_TYPES and (prompt is None or not prompt.strip()):
        if not reader.has("prompt"):
            reader.problem("prompt", f"required when prompt_type is {prompt_type!r}")
        elif prompt is not None:
            reader.problem("prompt", f"must not be empty when prompt_type is {prompt_type!r}")
    elif prompt_type == "default" and prompt:
        reader.warn(
            "prompt",
            "set but prompt_type is 'default', so the service may ignore it; "
            "use prompt_type = 'custom' or 'append_default'",
        )
    if art_style == GHIBLI:
        if version == "default":
            version = "v2"  # the service renders Studio Ghibli only with v2
        elif version != "v2":
            reader.warn(
                "version",
                f"{version!r} with Studio Ghibli: the service documents only 'v2' for it; "
                "leave version unset to send 'v2'",
            )
    return Style(
        art_style=art_style or ART_STYLES[0],
        model=model,
        prompt=prompt,
        prompt_type=prompt_type,
        version=version,
    )


def _parse_trims(reader: _Reader) -> dict[str, Any]:
    """The TRIM_KEYS the table sets (absent or invalid keys are left out)."""
    values: dict[str, Any] = {
        "fps_resolution": reader.opt_choice("fps_resolution", FPS_RESOLUTIONS, "an fps_resolution"),
        "start_seconds": reader.opt_number("start_seconds"),
        "max_seconds": reader.opt_number("max_seconds"),
    }
    return {key: value for key, value in values.items() if value is not None}


def _merge_trims(own: Mapping[str, Any], preset: Preset | None) -> dict[str, Any]:
    """Folder keys beat preset keys, which beat the defaults."""
    merged: dict[str, Any] = {
        "fps_resolution": DEFAULT_FPS_RESOLUTION,
        "start_seconds": DEFAULT_START_SECONDS,
        "max_seconds": DEFAULT_MAX_SECONDS,
    }
    if preset is not None:
        for key in TRIM_KEYS:
            value = getattr(preset, key)
            if value is not None:
                merged[key] = value
    merged.update(own)
    return merged


def _preset_from(name: str, reader: _Reader) -> Preset:
    style = _parse_style(reader)
    trims = _parse_trims(reader)
    return Preset(name=name, style=style, **trims)


def _parse_presets(raw: Mapping[str, Any], report: _Report) -> list[Preset]:
    presets: list[Preset] = []
    seen: dict[str, str] = {}
    for name, table in raw.items():
        path = _join("styles", name)
        if not isinstance(table, Mapping):
            report.problem(path, f"must be a table like [styles.{name}], not {_type_name(table)}")
            continue
        if not name.strip():
            report.problem(path, "a preset needs a non-empty name")
            continue
        if name.casefold() in seen:
            report.problem(
                path,
                f"same name as styles.{seen[name.casefold()]} "
                "(preset names are compared case-insensitively)",
            )
            continue
        seen[name.casefold()] = name
        presets.append(_preset_from(name, _Reader(table, path, PRESET_KEYS, report)))
    return presets


def _parse_folders(
    raw: object,
    report: _Report,
    base_dir: PurePosixPath | None,
    daemon: DaemonConfig,
    presets: Sequence[Preset],
) -> list[_FolderDraft]:
    if raw is None:
        report.problem("folder", "at least one [[folder]] is required")
        return []
    if isinstance(raw, Mapping):
        report.problem("folder", "must be an array of tables: write [[folder]], not [folder]")
        return []
    if not isinstance(raw, list | tuple):
        report.problem("folder", f"must be an array of tables ([[folder]]), not {_type_name(raw)}")
        return []
    if not raw:
        report.problem("folder", "at least one [[folder]] is required")
    drafts: list[_FolderDraft] = []
    names: dict[str, int] = {}
    for index, table in enumerate(raw):
        path = f"folder[{index}]"
        if not isinstance(table, Mapping):
            report.problem(path, f"must be a table, not {_type_name(table)}")
            continue
        reader = _Reader(table, path, FOLDER_KEYS, report)
        draft = _parse_folder(reader, index, base_dir, daemon, presets)
        if draft.folder.name in names:
            report.problem(
                f"{path}.name",
                f"{draft.folder.name!r} is already used by folder[{names[draft.folder.name]}]",
            )
        elif draft.folder.name:
            names[draft.folder.name] = index
        drafts.append(draft)
    return drafts


@dataclass(frozen=True)
class _FolderDraft:
    """A parsed folder plus what the layout checks need to know about it."""

    index: int
    folder: FolderConfig
    inbox_ok: bool  # the inbox parsed; layout checks skip a folder without one
    explicit: frozenset[str]  # which of outbox/archive/failed the table set


def _parse_folder_style(
    reader: _Reader, presets: Sequence[Preset]
) -> tuple[Style, str | None, Mapping[str, Any]]:
    """(style, preset name or None, the trims the preset or inline table sets)."""
    placeholder = Style(art_style=ART_STYLES[0])
    if not reader.has("style"):
        reader.problem("style", "required: a preset name from [styles] or an inline [folder.style]")
        return placeholder, None, {}
    value = reader.raw["style"]
    if isinstance(value, str):
        by_name = {preset.name.casefold(): preset for preset in presets}
        preset = by_name.get(value.casefold())
        if preset is not None:
            return preset.style, preset.name, _merge_trims({}, preset)
        names = [preset.name for preset in presets]
        suggestion = _suggest(value, names)
        if suggestion is not None:
            hint = f"did you mean {suggestion!r}?"
        elif names:
            hint = f"defined: {', '.join(names)}"
        else:
            hint = "define [styles.NAME] or use an inline [folder.style] table"
        reader.problem("style", f"no preset named {value!r} in [styles]; {hint}")
        return placeholder, None, {}
    if isinstance(value, Mapping):
        inline = _Reader(value, reader.at("style"), PRESET_KEYS, reader.report)
        preset = _preset_from("", inline)
        return preset.style, None, _merge_trims({}, preset)
    reader.problem("style", f"must be a preset name or an inline table, not {_type_name(value)}")
    return placeholder, None, {}


def _parse_folder(
    reader: _Reader,
    index: int,
    base_dir: PurePosixPath | None,
    daemon: DaemonConfig,
    presets: Sequence[Preset],
) -> _FolderDraft:
    name = reader.opt_string("name")
    if name is None:
        if not reader.has("name"):
            reader.problem("name", "required (lowercase letters, digits, '-' and '_')")
        name = ""
    elif not FOLDER_NAME_RE.match(name):
        lowered = name.lower()
        hint = f"; did you mean {lowered!r}?" if FOLDER_NAME_RE.match(lowered) else ""
        reader.problem(
            "name",
            f"{name!r} must be 1-40 characters: lowercase letters, digits, '-' and '_', "
            f"starting with a letter or digit{hint}",
        )
    paths: dict[str, PurePosixPath | None] = {}
    for key in ("inbox", "outbox"):
        paths[key] = reader.opt_path(key, base_dir)
        if not reader.has(key):
            reader.problem(key, "required (an absolute path)")
    for key in ("archive", "failed"):
        paths[key] = reader.opt_path(key, base_dir)
    inbox = paths["inbox"] or PurePosixPath("/")
    style, style_name, inherited = _parse_folder_style(reader, presets)
    own = _parse_trims(reader)
    trims = {**_merge_trims({}, None), **inherited, **own}
    ready_marker = reader.string("ready_marker", "")
    if "/" in ready_marker:
        reader.problem(
            "ready_marker", f"{ready_marker!r} must be a suffix like '.done', not a path"
        )
    mount_marker = reader.string("mount_marker", "")
    marker_path = PurePosixPath(mount_marker)
    if mount_marker and (marker_path.is_absolute() or ".." in marker_path.parts):
        reader.problem(
            "mount_marker", f"{mount_marker!r} must be a file name relative to the inbox"
        )
    folder = FolderConfig(
        name=name,
        inbox=inbox,
        outbox=paths["outbox"] or PurePosixPath("/"),
        archive=paths["archive"] or inbox / DEFAULT_ARCHIVE_NAME,
        failed=paths["failed"] or inbox / DEFAULT_FAILED_NAME,
        style=style,
        style_name=style_name,
        recursive=reader.boolean("recursive", False),
        on_success=reader.choice("on_success", "archive", ON_SUCCESS, "an on_success action"),
        settle_seconds=reader.number("settle_seconds", daemon.settle_seconds),
        observer=reader.choice("observer", daemon.observer, OBSERVERS, "an observer"),
        ready_marker=ready_marker,
        include=reader.strings("include", ()),
        exclude=reader.strings("exclude", ()),
        min_size_bytes=reader.integer("min_size_bytes", 1, minimum=0),
        require_mount=reader.boolean("require_mount", False),
        mount_marker=mount_marker,
        overrides=frozenset(own),
        **trims,
    )
    return _FolderDraft(
        index=index,
        folder=folder,
        inbox_ok=paths["inbox"] is not None,
        explicit=frozenset(
            key for key in ("outbox", "archive", "failed") if paths[key] is not None
        ),
    )


def _parse_notify(raw: Mapping[str, Any], report: _Report) -> NotifyConfig:
    reader = _Reader(raw, "notify", NOTIFY_KEYS, report)
    webhook_url = reader.string("webhook_url", "")
    if webhook_url:
        webhook_url = _http_url(reader, "webhook_url", webhook_url) or ""
    events = reader.strings("on", tuple(sorted(DEFAULT_NOTIFY_ON)))
    on: set[str] = set()
    for index, event in enumerate(events):
        if event in NOTIFY_EVENTS:
            on.add(event)
        else:
            report.problem(f"notify.on[{index}]", _not_one_of(event, NOTIFY_EVENTS, "an event"))
    return NotifyConfig(
        webhook_url=webhook_url,
        apprise_urls=reader.strings("apprise_urls", ()),
        on=frozenset(on),
    )


# --- cross-folder rules -------------------------------------------------------------------


def _label(draft: _FolderDraft) -> str:
    name = f" ({draft.folder.name!r})" if draft.folder.name else ""
    return f"folder[{draft.index}]{name}"


def _hidden_inside(path: PurePosixPath, inbox: PurePosixPath) -> bool:
    """True when `path` is below `inbox` under a hidden name, so never taken as an input."""
    relative = path.relative_to(inbox).parts
    return any(part.startswith(".") for part in relative)


def _check_layout(drafts: Sequence[_FolderDraft], daemon: DaemonConfig, report: _Report) -> None:
    """Inboxes must not overlap, and nothing the daemon writes may land in a watched tree."""
    placed = [draft for draft in drafts if draft.inbox_ok]
    for draft in placed:
        inbox = draft.folder.inbox
        where = f"folder[{draft.index}].inbox"
        for other in placed:
            if other is draft:
                continue
            other_inbox = other.folder.inbox
            if inbox == other_inbox:
                if other.index < draft.index:
                    report.problem(where, f"same inbox as {_label(other)}: {inbox}")
            elif inbox.is_relative_to(other_inbox):
                report.problem(
                    where,
                    f"{inbox} is inside the inbox of {_label(other)} ({other_inbox}); "
                    "inboxes must not overlap",
                )
        for other in placed:
            for key in sorted(other.explicit):
                output = getattr(other.folder, key)
                if inbox != output and inbox.is_relative_to(output):
                    report.problem(
                        where,
                        f"{inbox} is inside the {key} of {_label(other)} ({output}); "
                        "files the daemon writes there could be taken as inputs",
                    )
    for draft in placed:
        for key in sorted(draft.explicit):
            output = getattr(draft.folder, key)
            for other in placed:
                other_inbox = other.folder.inbox
                if not output.is_relative_to(other_inbox):
                    continue
                if other is draft and output != other_inbox and _hidden_inside(output, other_inbox):
                    continue  # hidden names are never inputs
                report.problem(
                    f"folder[{draft.index}].{key}",
                    f"{output} is inside the inbox of {_label(other)} ({other_inbox}); "
                    "its files would be taken as inputs: put it outside every inbox "
                    "(or under a hidden name like .mh-done in this folder's own inbox)",
                )
    for draft in placed:
        inbox = draft.folder.inbox
        state_dir = daemon.state_dir
        if state_dir.is_relative_to(inbox) and (
            state_dir == inbox or not _hidden_inside(state_dir, inbox)
        ):
            report.problem(
                "daemon.state_dir",
                f"{state_dir} is inside the inbox of {_label(draft)} ({inbox}); "
                "put it outside every inbox, e.g. /var/lib/mh-watchd",
            )
