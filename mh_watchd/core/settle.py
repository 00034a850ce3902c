"""The quiet-period tracker: a file counts as complete once it stops changing.

A file settles when its size, mtime and inode stayed the same over at least two observations
and no filesystem event arrived for `settle_seconds`. Times are monotonic seconds handed in by
the caller; stats are only ever compared with the same file's earlier stats, never with the
clock (a NAS's mtimes come from another machine's clock).
"""

from __future__ import annotations

from collections.abc import Hashable
from dataclasses import dataclass, replace
from typing import Any, Generic, TypeVar

K = TypeVar("K", bound=Hashable)


@dataclass(frozen=True)
class Observation:
    """One stat of a file: what settling compares."""

    size: int
    mtime_ns: int
    inode: int


@dataclass(frozen=True)
class SettleState:
    """What the tracker knows about one file.

    `observations` counts every stat seen; `steady` counts the latest run of identical ones
    (reset to 1 by a change, and back to at most 1 by an event, so a fresh stat is needed).
    """

    first_seen: float
    last_change: float
    last: Observation | None
    observations: int
    steady: int = 0


class SettleTracker(Generic[K]):
    """Tracks files until they settle; keyed by any hashable (e.g. (folder, rel_path)).

    Annotate the attribute (`SettleTracker[tuple[str, str]]`) to have keys type-checked;
    unannotated, the keys are `Any`.
    """

    # `self: SettleTracker[Any]` lets `SettleTracker(10.0)` type-check without an annotation.
    def __init__(self: SettleTracker[Any], settle_seconds: float) -> None:
        if settle_seconds < 0:
            raise ValueError(f"settle_seconds must not be negative, got {settle_seconds}")
        self.settle_seconds = settle_seconds
        self._states: dict[K, SettleState] = {}

    def observe(self, key: K, obs: Observation, now: float) -> None:
        """Record a stat of `key` taken at monotonic time `now`.

        A size, mtime or inode differing from the last stat restarts the quiet period.
        """
        state = self._states.get(key)
        if state is None:
            self._states[key] = SettleState(
                first_seen=now, last_change=now, last=obs, observations=1, steady=1
            )
        elif state.last == obs:
            self._states[key] = replace(
                state, observations=state.observations + 1, steady=state.steady + 1
            )
        else:
            self._states[key] = replace(
                state, last_change=now, last=obs, observations=state.observations + 1, steady=1
            )

    def touched(self, key: K, now: float) -> None:
        """Record that a filesystem event named `key` at `now`: restart its quiet period.

        The stats seen so far may predate the write, so one more identical stat is needed.
        """
        state = self._states.get(key)
        if state is None:
            self._states[key] = SettleState(
                first_seen=now, last_change=now, last=None, observations=0, steady=0
            )
        else:
            self._states[key] = replace(state, last_change=now, steady=min(state.steady, 1))

    def forget(self, key: K) -> None:
        """Stop tracking `key` (taken, deleted or ignored); unknown keys are fine."""
        self._states.pop(key, None)

    def ready(self, key: K, now: float, settle_seconds: float | None = None) -> bool:
        """Return True when `key` has settled at `now`: two identical stats at least, the last
        two equal, and no change or event for `settle_seconds` (default: the tracker's)."""
        state = self._states.get(key)
        if state is None or state.steady < 2:
            return False
        quiet = self.settle_seconds if settle_seconds is None else settle_seconds
        return now - state.last_change >= quiet

    def state(self, key: K) -> SettleState | None:
        """Return what is known about `key`, or None when it is not tracked."""
        return self._states.get(key)

    def pending(self) -> list[K]:
        """Return every tracked key, oldest first seen first."""
        return list(self._states)

    def __len__(self) -> int:
        return len(self._states)

    def __contains__(self, key: object) -> bool:
        return key in self._states
