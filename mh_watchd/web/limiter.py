"""Failed logins, counted per client address: a few a minute, then 429 until the window moves.

The clock is handed in (monotonic seconds), so tests turn it by hand. The table is bounded: the
oldest addresses are forgotten first when too many try at once.
"""

from __future__ import annotations

import threading
from collections import OrderedDict, deque
from collections.abc import Callable

DEFAULT_MAX_FAILURES = 5
DEFAULT_WINDOW_SECONDS = 60.0
MAX_CLIENTS = 4096


class LoginLimiter:
    """Allows `max_failures` failed logins per client in any `window_seconds`. Thread-safe."""

    def __init__(
        self,
        *,
        clock: Callable[[], float],
        max_failures: int = DEFAULT_MAX_FAILURES,
        window_seconds: float = DEFAULT_WINDOW_SECONDS,
        max_clients: int = MAX_CLIENTS,
    ) -> None:
        self._clock = clock
        self._max = max_failures
        self._window = window_seconds
        self._max_clients = max_clients
        self._failures: OrderedDict[str, deque[float]] = OrderedDict()
        self._lock = threading.Lock()

    def retry_after_seconds(self, client: str) -> float:
        """0 when `client` may try to log in now, else how long until it may."""
        with self._lock:
            times = self._recent(client)
            if len(times) < self._max:
                return 0.0
            return max(0.0, times[0] + self._window - self._clock())

    def failed(self, client: str) -> None:
        """Count one failed login by `client`."""
        with self._lock:
            times = self._recent(client)
            times.append(self._clock())
            self._failures[client] = times
            self._failures.move_to_end(client)
            while len(self._failures) > self._max_clients:
                self._failures.popitem(last=False)

    def succeeded(self, client: str) -> None:
        """A good login forgets the client's failures."""
        with self._lock:
            self._failures.pop(client, None)

    def _recent(self, client: str) -> deque[float]:
        times = self._failures.get(client, deque())
        horizon = self._clock() - self._window
        while times and times[0] <= horizon:
            times.popleft()
        if not times:
            self._failures.pop(client, None)
        return times
