"""The daemon's one loop: a queue of messages and a heap of timers, run on one thread.

Anything may `post` a message (a zero-argument callable) from any thread: watchers, a future's
done-callback, a signal handler (`queue.SimpleQueue.put` is reentrant). Timers are set with
`at` on the loop thread only. `run` blocks until the next message or the next due timer, so an
idle daemon wakes only when something is due; `max_wait_seconds` caps each wait as a safety
net, and `after_turn` runs after each wake-up (the scheduling pass and the status report).
"""

from __future__ import annotations

import heapq
import itertools
import queue
from collections.abc import Callable, Hashable
from dataclasses import dataclass, field

Message = Callable[[], None]

# A wake-up with nothing to do (a signal handler posts it to make the loop look at its flags).
WAKE: Message = lambda: None  # noqa: E731


@dataclass(order=True)
class _Timer:
    when: float
    seq: int
    key: Hashable = field(compare=False)
    message: Message = field(compare=False)


class Loop:
    """Messages and timers, handled in order on the thread that calls `run`."""

    def __init__(
        self,
        *,
        monotonic: Callable[[], float],
        on_error: Callable[[BaseException], None],
        after_turn: Callable[[], None],
        max_wait_seconds: float = 1.0,
    ) -> None:
        self._monotonic = monotonic
        self._on_error = on_error
        self._after_turn = after_turn
        self._max_wait = max_wait_seconds
        self._messages: queue.SimpleQueue[Message] = queue.SimpleQueue()
        self._heap: list[_Timer] = []
        self._live: dict[Hashable, _Timer] = {}
        self._seq = itertools.count()
        self.last_turn = monotonic()
        self.turns = 0

    # ------------------------------------------------------------------ any thread
    def post(self, message: Message) -> None:
        """Queue `message` to run on the loop thread. Safe from any thread and from a signal
        handler."""
        self._messages.put(message)

    # ------------------------------------------------------------------ loop thread only
    def at(self, when: float, message: Message, *, key: Hashable, replace: bool = False) -> None:
        """Run `message` at monotonic time `when`. One timer per `key`: an existing one that
        is due sooner is kept, unless `replace` (then the new time wins either way)."""
        current = self._live.get(key)
        if current is not None and current.when <= when and not replace:
            return
        timer = _Timer(when, next(self._seq), key, message)
        self._live[key] = timer
        heapq.heappush(self._heap, timer)
        if len(self._heap) > 64 + 4 * len(self._live):
            self._compact()

    def after(self, seconds: float, message: Message, *, key: Hashable) -> None:
        """`at(now + seconds, ...)`, keeping a sooner timer of the same key."""
        self.at(self._monotonic() + max(0.0, seconds), message, key=key)

    def cancel(self, key: Hashable) -> None:
        self._live.pop(key, None)

    def due(self, key: Hashable) -> float | None:
        """When the timer `key` fires, or None when there is none."""
        timer = self._live.get(key)
        return timer.when if timer is not None else None

    def run(self, until: Callable[[], bool], *, deadline: float | None = None) -> bool:
        """Handle messages and timers until `until()` holds (checked after each wake-up) or the
        monotonic `deadline` passes; returns `until()`."""
        while not until():
            now = self._monotonic()
            if deadline is not None and now >= deadline:
                return until()
            wake = now + self._max_wait
            if self._heap:
                wake = min(wake, self._heap[0].when)
            if deadline is not None:
                wake = min(wake, deadline)
            self.turn(max(0.0, wake - now))
        return True

    def turn(self, wait_seconds: float) -> None:
        """One wake-up: wait up to `wait_seconds` for a message, then handle every queued
        message and every due timer, then `after_turn`."""
        try:
            first: Message | None = self._messages.get(timeout=wait_seconds)
        except queue.Empty:
            first = None
        self.last_turn = self._monotonic()
        self.turns += 1
        if first is not None:
            self._handle(first)
        while True:
            try:
                message = self._messages.get_nowait()
            except queue.Empty:
                break
            self._handle(message)
        self._fire_due()
        self._handle(self._after_turn)

    # ------------------------------------------------------------------ internals
    def _fire_due(self) -> None:
        now = self._monotonic()
        while self._heap and self._heap[0].when <= now:
            timer = heapq.heappop(self._heap)
            if self._live.get(timer.key) is not timer:
                continue  # replaced or cancelled
            del self._live[timer.key]
            self._handle(timer.message)

    def _handle(self, message: Message) -> None:
        try:
            message()
        except Exception as exc:  # the top of the loop: one bad message never stops it
            self._on_error(exc)

    def _compact(self) -> None:
        self._heap = list(self._live.values())
        heapq.heapify(self._heap)
