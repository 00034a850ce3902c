"""logs: JSON lines with the basics, contextvars merged, secrets redacted everywhere."""

from __future__ import annotations

import io
import json
from collections.abc import Iterator
from typing import Any

import pytest
import structlog

from mh_watchd.adapters.logs import REDACTED, add_secret, configure_logging, redact_text


@pytest.fixture(autouse=True)
def _reset_structlog() -> Iterator[None]:
    yield
    structlog.contextvars.clear_contextvars()
    structlog.reset_defaults()


def _json_lines(stream: io.StringIO) -> list[dict[str, Any]]:
    lines = stream.getvalue().splitlines()
    assert lines, "nothing was logged"
    return [json.loads(line) for line in lines]


class _FakeTty(io.StringIO):
    def isatty(self) -> bool:
        return True


def test_json_mode_writes_one_object_per_line_with_basics_and_bound_keys() -> None:
    stream = io.StringIO()
    configure_logging(log_format="json", stream=stream)
    structlog.contextvars.bind_contextvars(job_id=7)
    log = structlog.get_logger().bind(folder="anime")
    log.info("job.submitted", project_id="cm123")
    log.debug("hidden.by.default")
    log.warning("job.held", reason="credits")

    first, second = _json_lines(stream)
    assert list(first)[:3] == ["timestamp", "level", "event"]
    assert first["event"] == "job.submitted"
    assert first["level"] == "info"
    assert first["folder"] == "anime"
    assert first["job_id"] == 7
    assert first["project_id"] == "cm123"
    assert first["timestamp"].endswith("Z") and "T" in first["timestamp"]
    assert second["level"] == "warning" and second["reason"] == "credits"


def test_a_configured_token_is_redacted_in_values_and_in_tracebacks() -> None:
    stream = io.StringIO()
    token = "s3cr3t-token-value"
    configure_logging(log_format="json", stream=stream, secrets=[token])
    log = structlog.get_logger()
    log.info("api.called", url=f"https://x.test/?key={token}")
    try:
        raise RuntimeError(f"bad key {token}")
    except RuntimeError:
        log.exception("api.crashed")

    text = stream.getvalue()
    assert token not in text
    called, crashed = _json_lines(stream)
    assert called["url"] == f"https://x.test/?key={REDACTED}"
    assert f"bad key {REDACTED}" in crashed["exception"]


def test_bearer_tokens_and_magic_hour_keys_are_redacted_even_when_nested() -> None:
    stream = io.StringIO()
    configure_logging(log_format="json", stream=stream)
    structlog.get_logger().info(
        "api.request",
        headers={"Authorization": "Bearer xyz", "Accept": "application/json"},
        attempts=[{"key": "mhk_live_AbC123xyz"}, ("mhk_test_q1", 3)],
        note="sent Bearer abc.def-ghi to the service",
    )
    (event,) = _json_lines(stream)
    assert event["headers"] == {"Authorization": f"Bearer {REDACTED}", "Accept": "application/json"}
    assert event["attempts"] == [{"key": REDACTED}, [REDACTED, 3]]
    assert event["note"] == f"sent Bearer {REDACTED} to the service"
    assert "xyz" not in stream.getvalue() and "AbC123" not in stream.getvalue()


def test_add_secret_redacts_a_reloaded_token_from_then_on() -> None:
    stream = io.StringIO()
    configure_logging(log_format="json", stream=stream, secrets=["old-token-1"])
    add_secret("new-token-2")
    add_secret("   ")  # ignored: redacting whitespace would mangle every line
    structlog.get_logger().info("token.reloaded", old="old-token-1", new="new-token-2")
    (event,) = _json_lines(stream)
    assert event["old"] == REDACTED and event["new"] == REDACTED
    assert event["event"] == "token.reloaded"


def test_objects_whose_text_holds_a_secret_are_replaced_by_redacted_text() -> None:
    class Url:
        def __str__(self) -> str:
            return "https://hooks.test/?token=mhk_live_zzz"

    stream = io.StringIO()
    configure_logging(log_format="json", stream=stream)
    structlog.get_logger().info("notify.x", url=Url(), count=3, ratio=0.5, flag=True, none=None)
    (event,) = _json_lines(stream)
    assert event["url"] == f"https://hooks.test/?token={REDACTED}"
    assert (event["count"], event["ratio"], event["flag"], event["none"]) == (3, 0.5, True, None)


def test_reconfiguring_replaces_secrets_and_the_stream() -> None:
    first, second = io.StringIO(), io.StringIO()
    configure_logging(log_format="json", stream=first, secrets=["alpha-secret"])
    log = structlog.get_logger()  # bound before the reconfiguration, as modules do at import
    configure_logging(log_format="json", stream=second, secrets=["beta-secret"])
    log.info("x", a="alpha-secret", b="beta-secret")
    assert first.getvalue() == ""
    (event,) = _json_lines(second)
    assert event["a"] == "alpha-secret" and event["b"] == REDACTED


def test_console_mode_renders_a_readable_line_and_a_traceback() -> None:
    stream = io.StringIO()
    configure_logging(log_format="console", stream=stream, secrets=["tok-123456"])
    log = structlog.get_logger()
    log.info("watcher.rescan_done", folder="anime", files=3, key="tok-123456")
    try:
        raise ValueError("broken")
    except ValueError:
        log.exception("loop.crashed")
    text = stream.getvalue()
    assert "watcher.rescan_done" in text and "folder=anime" in text and "files=3" in text
    assert "tok-123456" not in text and REDACTED in text
    assert "ValueError: broken" in text
    assert not text.lstrip().startswith("{")


def test_auto_mode_picks_console_on_a_tty_and_json_otherwise() -> None:
    tty = _FakeTty()
    configure_logging(stream=tty)
    structlog.get_logger().info("on.tty")
    assert "on.tty" in tty.getvalue() and not tty.getvalue().startswith("{")
    assert "\x1b[" in tty.getvalue()  # colours on a real terminal

    plain = io.StringIO()
    configure_logging(stream=plain)
    structlog.get_logger().info("not.tty")
    assert _json_lines(plain)[0]["event"] == "not.tty"


def test_unknown_format_or_level_is_refused() -> None:
    with pytest.raises(ValueError, match="log_format"):
        configure_logging(log_format="xml", stream=io.StringIO())
    with pytest.raises(ValueError, match="level"):
        configure_logging(level="loud", stream=io.StringIO())


def test_redact_text_leaves_ordinary_text_alone() -> None:
    assert redact_text("uploaded beach.mp4 (12 MB) to api-assets/acct/x.mp4") == (
        "uploaded beach.mp4 (12 MB) to api-assets/acct/x.mp4"
    )


def test_a_key_too_short_to_be_real_does_not_garble_every_line() -> None:
    add_secret("x")  # a placeholder key: redacting it would replace every "x" in the log
    assert redact_text("inbox /data/x.mp4") == "inbox /data/x.mp4"
    add_secret("long-enough-key")
    assert redact_text("key long-enough-key") == f"key {REDACTED}"
