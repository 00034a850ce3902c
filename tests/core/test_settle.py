"""The quiet-period tracker: when a file counts as completely written."""

from __future__ import annotations

from dataclasses import dataclass

import pytest

from mh_watchd.core.settle import Observation, SettleTracker

A = Observation(size=100, mtime_ns=1_000, inode=7)
GROWN = Observation(size=200, mtime_ns=2_000, inode=7)
TOUCHED = Observation(size=100, mtime_ns=5_000, inode=7)  # same size, new mtime
REPLACED = Observation(size=100, mtime_ns=1_000, inode=8)  # same size and mtime, new inode


@dataclass(frozen=True)
class Step:
    """One scripted moment: at `at`, observe `obs` and/or deliver an event, then ask ready()."""

    at: float
    obs: Observation | None = None
    event: bool = False
    ready: bool = False


def run(steps: list[Step], settle_seconds: float) -> list[bool]:
    tracker: SettleTracker[str] = SettleTracker(settle_seconds)
    got = []
    for step in steps:
        if step.event:
            tracker.touched("f", step.at)
        if step.obs is not None:
            tracker.observe("f", step.obs, step.at)
        got.append(tracker.ready("f", step.at))
    return got


SEQUENCES: dict[str, tuple[float, list[Step]]] = {
    "two identical observations after the period are ready": (
        10.0,
        [Step(0.0, A), Step(5.0, A), Step(9.9, A), Step(10.0, A, ready=True)],
    ),
    "the period counts from the first of the identical stats": (
        10.0,
        [Step(0.0, A), Step(10.0), Step(10.0, A, ready=True)],
    ),
    "a single observation is never ready, however old": (
        10.0,
        [Step(0.0, A), Step(1000.0)],
    ),
    "a growing file is never ready": (
        2.0,
        [Step(float(t), Observation(size=t * 10, mtime_ns=t, inode=7)) for t in range(0, 60, 3)],
    ),
    "growth resets the clock; it settles a full period after the last change": (
        10.0,
        [
            Step(0.0, A),
            Step(10.0, A, ready=True),
            Step(12.0, GROWN),
            Step(20.0, GROWN),
            Step(21.9, GROWN),
            Step(22.0, GROWN, ready=True),
        ],
    ),
    "an mtime change alone resets the clock": (
        10.0,
        [Step(0.0, A), Step(8.0, TOUCHED), Step(15.0, TOUCHED), Step(18.0, TOUCHED, ready=True)],
    ),
    "an inode change resets the clock (file replaced by rename)": (
        10.0,
        [Step(0.0, A), Step(9.0, REPLACED), Step(12.0, REPLACED), Step(19.0, REPLACED, ready=True)],
    ),
    "an event resets the clock": (
        10.0,
        [
            Step(0.0, A),
            Step(9.0, event=True),
            Step(12.0, A),
            Step(18.9, A),
            Step(19.0, A, ready=True),
        ],
    ),
    "after an event a fresh identical stat is needed even past the period": (
        10.0,
        [Step(0.0, A), Step(5.0, A), Step(6.0, event=True), Step(30.0), Step(30.0, A, ready=True)],
    ),
    "an event before any stat starts tracking but is not enough": (
        0.0,
        [Step(0.0, event=True), Step(1.0, A), Step(2.0, A, ready=True)],
    ),
    "settle 0 still needs two identical observations": (
        0.0,
        [Step(0.0, A), Step(0.0, GROWN), Step(0.0, GROWN, ready=True)],
    ),
    "settle 0: identical back-to-back stats are ready at once": (
        0.0,
        [Step(5.0, A), Step(5.0, A, ready=True)],
    ),
    "an A-B-A flip does not count as two identical observations": (
        1.0,
        [Step(0.0, A), Step(5.0, GROWN), Step(10.0, A), Step(10.5, A), Step(11.0, A, ready=True)],
    ),
}


@pytest.mark.parametrize("name", list(SEQUENCES))
def test_settle_sequences(name: str) -> None:
    settle_seconds, steps = SEQUENCES[name]
    assert run(steps, settle_seconds) == [step.ready for step in steps]


def test_unknown_key_is_not_ready() -> None:
    tracker: SettleTracker[str] = SettleTracker(0.0)
    assert not tracker.ready("nothing", 100.0)


def test_per_call_settle_seconds_overrides_the_default() -> None:
    # A folder may set its own settle_seconds over the daemon's.
    tracker: SettleTracker[str] = SettleTracker(10.0)
    tracker.observe("f", A, 0.0)
    tracker.observe("f", A, 3.0)
    assert not tracker.ready("f", 3.0)
    assert tracker.ready("f", 3.0, settle_seconds=3.0)
    assert not tracker.ready("f", 3.0, settle_seconds=30.0)


def test_keys_are_independent_and_forget_drops_state() -> None:
    tracker: SettleTracker[tuple[str, str]] = SettleTracker(1.0)
    one, two = ("anime", "a.mp4"), ("anime", "b.mp4")
    tracker.observe(one, A, 0.0)
    tracker.observe(two, A, 0.5)
    tracker.observe(one, A, 1.0)
    tracker.touched(two, 1.0)
    tracker.observe(two, A, 2.0)
    assert tracker.ready(one, 2.0)
    assert not tracker.ready(two, 1.9)
    assert tracker.ready(two, 2.0)
    assert tracker.pending() == [one, two]
    assert len(tracker) == 2 and one in tracker

    tracker.forget(one)
    tracker.forget(("anime", "never-seen.mp4"))  # harmless
    assert tracker.pending() == [two]
    assert len(tracker) == 1 and one not in tracker
    # A forgotten file starts from scratch: one observation is not enough.
    tracker.observe(one, A, 50.0)
    assert not tracker.ready(one, 100.0)
    assert tracker.pending() == [two, one]


def test_state_records_what_was_seen() -> None:
    tracker: SettleTracker[str] = SettleTracker(5.0)
    assert tracker.state("f") is None
    tracker.observe("f", A, 1.0)
    tracker.observe("f", A, 2.0)
    tracker.observe("f", GROWN, 4.0)
    state = tracker.state("f")
    assert state is not None
    assert (state.first_seen, state.last_change, state.last) == (1.0, 4.0, GROWN)
    assert (state.observations, state.steady) == (3, 1)
    tracker.touched("f", 6.0)
    state = tracker.state("f")
    assert state is not None
    assert (state.first_seen, state.last_change, state.observations) == (1.0, 6.0, 3)


def test_negative_settle_seconds_is_refused() -> None:
    with pytest.raises(ValueError, match="negative"):
        SettleTracker(-1.0)
