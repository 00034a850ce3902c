"""structlog setup, done once by the daemon or the CLI: JSON lines or a console, secrets redacted.

Every event goes through one processor chain: contextvars merged in, the level, an ISO UTC
`timestamp`, exceptions rendered to text, then the redaction of every string value (nested
ones too), then the renderer. Redaction runs after exceptions are rendered so a traceback that
happens to quote a key is scrubbed as well.
"""

from __future__ import annotations

import logging
import re
import sys
import threading
from collections.abc import Iterable, Mapping
from typing import Any, TextIO

import structlog
from structlog.typing import EventDict, Processor, WrappedLogger

REDACTED = "[redacted]"
LOG_FORMATS = ("auto", "json", "console")
LOG_LEVELS: dict[str, int] = {
    "debug": logging.DEBUG,
    "info": logging.INFO,
    "warning": logging.WARNING,
    "error": logging.ERROR,
    "critical": logging.CRITICAL,
}

# Magic Hour keys look like `mhk_live_...`; a bearer header value is a credential whatever it is.
_PATTERNS = (
    (re.compile(r"(?i)\b(bearer)\s+\S+"), rf"\1 {REDACTED}"),
    (re.compile(r"mhk_(?:live|test)_\w+"), REDACTED),
)

_LEAD_KEYS = ("timestamp", "level", "event")

_secrets_lock = threading.Lock()
_secrets: tuple[str, ...] = ()


# Shorter strings are not redacted: replacing a 1-character "key" would garble every line,
# and no real key is that short (`run` and `check` warn about such a key instead).
MIN_SECRET_CHARS = 8


def add_secret(secret: str) -> None:
    """Register one more exact string to redact from every later event (e.g. a reloaded token).

    Strings shorter than MIN_SECRET_CHARS once stripped are ignored; never raises.
    """
    global _secrets
    cleaned = secret.strip()
    if len(cleaned) < MIN_SECRET_CHARS:
        return
    with _secrets_lock:
        if cleaned not in _secrets:
            # Longest first, so a secret that contains another is replaced whole.
            _secrets = tuple(sorted((*_secrets, cleaned), key=len, reverse=True))


def _set_secrets(secrets: Iterable[str]) -> None:
    global _secrets
    with _secrets_lock:
        _secrets = ()
    for secret in secrets:
        add_secret(secret)


def redact_text(text: str) -> str:
    """Return `text` with every registered secret, bearer token and Magic Hour key replaced."""
    for secret in _secrets:
        if secret in text:
            text = text.replace(secret, REDACTED)
    for pattern, replacement in _PATTERNS:
        text = pattern.sub(replacement, text)
    return text


def _redact_value(value: Any) -> Any:
    if isinstance(value, str):
        return redact_text(value)
    if value is None or isinstance(value, bool | int | float):
        return value
    if isinstance(value, Mapping):
        return {key: _redact_value(item) for key, item in value.items()}
    if isinstance(value, list | tuple | set | frozenset):
        return [_redact_value(item) for item in value]
    # Anything else is rendered with str()/repr() later (URLs, exceptions, paths): only
    # replace it when its text holds something to hide, so harmless objects keep their type.
    text = str(value)
    redacted = redact_text(text)
    return redacted if redacted != text else value


def redact_processor(_logger: WrappedLogger, _name: str, event_dict: EventDict) -> EventDict:
    """structlog processor: redact every value of the event dict in place and return it."""
    for key, value in list(event_dict.items()):
        event_dict[key] = _redact_value(value)
    return event_dict


def _lead_with_basics(_logger: WrappedLogger, _name: str, event_dict: EventDict) -> EventDict:
    # JSON keeps insertion order: timestamp, level and event first read well in journalctl.
    ordered = {key: event_dict.pop(key) for key in _LEAD_KEYS if key in event_dict}
    ordered.update(event_dict)
    return ordered


def _isatty(stream: TextIO) -> bool:
    isatty = getattr(stream, "isatty", None)
    try:
        return bool(isatty()) if callable(isatty) else False
    except ValueError:  # a closed stream
        return False


def configure_logging(
    *,
    log_format: str = "auto",
    stream: TextIO | None = None,
    secrets: Iterable[str] = (),
    level: str = "info",
) -> None:
    """Configure structlog for the whole process; calling it again replaces the configuration.

    `log_format`: "auto" (console on a tty, else JSON lines), "json" or "console". Logs go to
    `stream` (default stderr, so stdout stays free for command output). `secrets` replaces the
    set of redacted strings. Raises ValueError on an unknown format or level.
    """
    if log_format not in LOG_FORMATS:
        raise ValueError(f"log_format must be one of {', '.join(LOG_FORMATS)}, not {log_format!r}")
    if level not in LOG_LEVELS:
        raise ValueError(f"level must be one of {', '.join(LOG_LEVELS)}, not {level!r}")
    out = stream if stream is not None else sys.stderr
    _set_secrets(secrets)
    tty = _isatty(out)
    renderer: Processor
    processors_tail: list[Processor] = []
    if log_format == "console" or (log_format == "auto" and tty):
        renderer = structlog.dev.ConsoleRenderer(colors=tty, sort_keys=True)
    else:
        renderer = structlog.processors.JSONRenderer(sort_keys=False, default=str)
        processors_tail.insert(0, _lead_with_basics)
    processors: list[Processor] = [
        structlog.contextvars.merge_contextvars,
        structlog.processors.add_log_level,
        structlog.processors.TimeStamper(fmt="iso", utc=True, key="timestamp"),
        structlog.processors.StackInfoRenderer(),
        # Render exceptions to text before redaction, in both modes, so tracebacks are scrubbed.
        structlog.processors.format_exc_info,
        redact_processor,
        *processors_tail,
        renderer,
    ]
    structlog.configure(
        processors=processors,
        wrapper_class=structlog.make_filtering_bound_logger(LOG_LEVELS[level]),
        context_class=dict,
        logger_factory=structlog.PrintLoggerFactory(file=out),
        # Not cached: loggers bound at import time must follow a later reconfiguration.
        cache_logger_on_first_use=False,
    )
