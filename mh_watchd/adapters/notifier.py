"""[notify]: tell a person when a job fails, is held, a folder is in outage (or a job is done).

`notify()` only puts the event on a bounded queue; a background thread delivers it to a webhook
(JSON POST, retried under `retrying.webhook_policy`: the request backoff numbers from core,
honouring a Retry-After in seconds or as an HTTP date) and, when the optional `apprise`
package is installed, to apprise URLs. Nothing here ever blocks or fails the caller for long.
Webhook and apprise URLs carry secrets (tokens in paths, queries, userinfo): logs name only the
webhook's scheme://host and an apprise URL's scheme.
"""

from __future__ import annotations

import collections
import importlib
import socket
import threading
import time
from collections.abc import Callable, Collection, Sequence
from datetime import UTC, datetime
from typing import Any

import httpx
import structlog

from mh_watchd.adapters import retrying

NOTIFY_EVENTS = frozenset({"failed", "held", "outage", "done"})
QUEUE_MAX_EVENTS = 100
_PAYLOAD_KEYS = ("folder", "file", "job", "reason", "output")

log = structlog.get_logger(__name__)


def safe_url(url: str) -> str:
    """Return only `scheme://host[:port]` of `url`, dropping userinfo, path and query."""
    try:
        parsed = httpx.URL(url)
    except (httpx.InvalidURL, TypeError):
        return "<invalid url>"
    host = parsed.host
    if ":" in host:
        host = f"[{host}]"
    port = f":{parsed.port}" if parsed.port is not None else ""
    return f"{parsed.scheme}://{host}{port}"


def _apprise_scheme(url: str) -> str:
    # Apprise URLs hold tokens in the "host" part (tgram://bottoken/chat): keep the scheme only.
    scheme, sep, _ = url.partition("://")
    return f"{scheme}://" if sep else "<invalid url>"


def _summary(payload: dict[str, Any]) -> str:
    parts = [f"mh-watchd on {payload['host']}: {payload['event']}"]
    for key in ("folder", "file", "job", "reason", "output"):
        if payload.get(key) not in (None, ""):
            parts.append(f"{key}={payload[key]}")
    return " ".join(parts)


class EventNotifier:
    """Deliver job and folder events to a webhook and apprise URLs from a background thread."""

    def __init__(
        self,
        *,
        webhook_url: str,
        apprise_urls: Sequence[str],
        on: Collection[str],
        http: httpx.Client,
        sleep: Callable[[float], None] | None = None,
        max_attempts: int = 5,
        clock: Callable[[], float] = time.time,
        queue_max_events: int = QUEUE_MAX_EVENTS,
    ) -> None:
        unknown = set(on) - NOTIFY_EVENTS
        if unknown:
            raise ValueError(f"unknown notify events: {', '.join(sorted(unknown))}")
        self.webhook_url = webhook_url
        self.apprise_urls = tuple(apprise_urls)
        self.on = frozenset(on)
        self._http = http
        self._max_attempts = max(1, max_attempts)
        self._clock = clock
        self._host = socket.gethostname()
        self._queue: collections.deque[dict[str, Any]] = collections.deque()
        self._queue_max = max(1, queue_max_events)
        self._cond = threading.Condition()
        self._stop = threading.Event()
        self._deadline = float("inf")  # set by stop(): until then queued events still get a try
        # The default wait between retries is interruptible, so stop() never waits out a backoff.
        self._sleep = sleep if sleep is not None else self._stop.wait
        self._thread: threading.Thread | None = None
        self._apprise: Any = None
        self._apprise_missing_logged = False

    @property
    def enabled(self) -> bool:
        """True when there is somewhere to send and at least one event to send."""
        return bool(self.on) and bool(self.webhook_url or self.apprise_urls)

    def start(self) -> None:
        """Start the delivery thread (a no-op when disabled or already started)."""
        if not self.enabled or self._thread is not None:
            return
        self._stop.clear()
        # A daemon thread: a webhook hanging past stop()'s deadline must not keep the process
        # alive; stop() still joins it for as long as it is allowed to.
        self._thread = threading.Thread(target=self._run, name="mh-watchd-notifier", daemon=True)
        self._thread.start()

    def stop(self, timeout_seconds: float = 5.0) -> None:
        """Stop the thread: queued events get one try each until the deadline, then are dropped.

        Returns within about `timeout_seconds` whatever the webhook does; never raises.
        """
        thread = self._thread
        if thread is None:
            return
        with self._cond:
            self._deadline = time.monotonic() + max(timeout_seconds, 0.0)
            self._stop.set()
            self._cond.notify_all()
        thread.join(timeout_seconds)
        self._thread = None
        if thread.is_alive():
            log.warning("notify.stop_timed_out", pending=len(self._queue))

    def notify(self, event: str, **fields: Any) -> None:
        """Queue `event` (failed|held|outage|done) with its fields, unless `on` leaves it out.

        Known fields: folder, file, job, reason, output; others are sent as they are. When the
        queue is full the oldest event is dropped (logged). Raises ValueError on an unknown event.
        """
        if event not in NOTIFY_EVENTS:
            raise ValueError(f"unknown notify event {event!r}")
        if event not in self.on or not self.enabled or self._stop.is_set():
            return
        payload: dict[str, Any] = {"event": event}
        for key in _PAYLOAD_KEYS:
            payload[key] = fields.pop(key, None)
        payload["at"] = datetime.fromtimestamp(self._clock(), UTC).isoformat()
        payload["host"] = self._host
        payload.update(fields)
        payload["text"] = _summary(payload)
        dropped: dict[str, Any] | None = None
        with self._cond:
            if len(self._queue) >= self._queue_max:
                dropped = self._queue.popleft()
            self._queue.append(payload)
            self._cond.notify()
        if dropped is not None:
            log.warning("notify.dropped", dropped_event=dropped["event"], queue_max=self._queue_max)

    # -- the delivery thread -------------------------------------------------------------

    def _run(self) -> None:
        while True:
            with self._cond:
                while not self._queue and not self._stop.is_set():
                    self._cond.wait()
                if not self._queue:
                    return
                if self._stop.is_set() and time.monotonic() >= self._deadline:
                    log.warning("notify.dropped_at_stop", pending=len(self._queue))
                    self._queue.clear()
                    return
                payload = self._queue.popleft()
            try:
                self._deliver(payload)
            except Exception:  # the thread must outlive any one event, whatever went wrong
                log.exception("notify.crashed", notify_event=payload["event"])

    def _deliver(self, payload: dict[str, Any]) -> None:
        if self.webhook_url:
            self._post_webhook(payload)
        if self.apprise_urls:
            self._send_apprise(payload)

    def _post_webhook(self, payload: dict[str, Any]) -> None:
        target = safe_url(self.webhook_url)
        attempts = 0

        def post() -> httpx.Response | httpx.HTTPError:
            nonlocal attempts
            attempts += 1
            try:
                return self._http.post(self.webhook_url, json=payload)
            except httpx.HTTPError as exc:
                return exc

        policy = retrying.webhook_policy(
            attempts=self._max_attempts,
            sleep=self._sleep,
            # After stop() only one try is left to each event, so shutdown stays prompt.
            stop_when=self._stop.is_set,
            before_sleep=retrying.log_retrying(
                log, "notify.retrying", notify_event=payload["event"], to=target
            ),
        )
        outcome = policy(post)
        if isinstance(outcome, httpx.Response) and outcome.is_success:
            log.info("notify.sent", notify_event=payload["event"], to=target, attempts=attempts)
            return
        log.warning(
            "notify.failed",
            notify_event=payload["event"],
            to=target,
            attempts=attempts,
            outcome=retrying.outcome_name(outcome),
        )

    def _send_apprise(self, payload: dict[str, Any]) -> None:
        if self._apprise is None:
            try:
                module = importlib.import_module("apprise")
            except ImportError:
                if not self._apprise_missing_logged:
                    self._apprise_missing_logged = True
                    log.warning(
                        "notify.apprise_missing",
                        hint="pip install 'mh-watchd[apprise]' to use notify.apprise_urls",
                    )
                return
            client = module.Apprise()
            for url in self.apprise_urls:
                if not client.add(url):
                    log.warning("notify.apprise_url_rejected", scheme=_apprise_scheme(url))
            self._apprise = client
        title = f"mh-watchd: {payload['event']}"
        ok = bool(self._apprise.notify(title=title, body=payload["text"]))
        schemes = sorted({_apprise_scheme(url) for url in self.apprise_urls})
        if ok:
            log.info("notify.apprise_sent", notify_event=payload["event"], schemes=schemes)
        else:
            log.warning("notify.apprise_failed", notify_event=payload["event"], schemes=schemes)
