"""The loop: timers fire in time order on a fake clock, one timer per key, messages from other
threads wake it at once, and a failing message never stops it."""

from __future__ import annotations

import threading
import time

from mh_watchd.service.loop import Loop


class FakeClock:
    def __init__(self) -> None:
        self.now = 100.0

    def __call__(self) -> float:
        return self.now


def make_loop(clock: FakeClock, seen: list[str], errors: list[BaseException]) -> Loop:
    return Loop(monotonic=clock, on_error=errors.append, after_turn=lambda: seen.append("after"))


def test_timers_fire_in_time_order_once_due() -> None:
    clock, seen, errors = FakeClock(), [], []  # type: ignore[var-annotated]
    loop = make_loop(clock, seen, errors)
    loop.at(105.0, lambda: seen.append("b"), key="b")
    loop.at(101.0, lambda: seen.append("a"), key="a")
    loop.turn(0)
    assert seen == ["after"]  # nothing due yet
    clock.now = 110.0
    seen.clear()
    loop.turn(0)
    assert seen == ["a", "b", "after"]
    assert loop.due("a") is None and not errors


def test_one_timer_per_key_keeps_the_sooner_unless_replaced() -> None:
    clock, seen, errors = FakeClock(), [], []  # type: ignore[var-annotated]
    loop = make_loop(clock, seen, errors)
    loop.at(102.0, lambda: seen.append("first"), key="k")
    loop.at(108.0, lambda: seen.append("later"), key="k")  # sooner one kept
    assert loop.due("k") == 102.0
    loop.at(109.0, lambda: seen.append("replaced"), key="k", replace=True)
    assert loop.due("k") == 109.0
    clock.now = 120.0
    loop.turn(0)
    assert seen == ["replaced", "after"]


def test_a_cancelled_timer_never_fires() -> None:
    clock, seen, errors = FakeClock(), [], []  # type: ignore[var-annotated]
    loop = make_loop(clock, seen, errors)
    loop.after(1.0, lambda: seen.append("x"), key="x")
    loop.cancel("x")
    clock.now = 200.0
    loop.turn(0)
    assert seen == ["after"]


def test_many_replaced_timers_do_not_grow_the_heap_without_bound() -> None:
    clock, seen, errors = FakeClock(), [], []  # type: ignore[var-annotated]
    loop = make_loop(clock, seen, errors)
    for i in range(10_000):
        loop.at(1000.0 + i, lambda: None, key="same", replace=True)
    assert len(loop._heap) < 200


def test_a_failing_message_is_reported_and_the_rest_still_run() -> None:
    clock, seen, errors = FakeClock(), [], []  # type: ignore[var-annotated]
    loop = make_loop(clock, seen, errors)

    def boom() -> None:
        raise RuntimeError("bad message")

    loop.post(boom)
    loop.post(lambda: seen.append("next"))
    loop.turn(0)
    assert seen == ["next", "after"]
    assert [str(e) for e in errors] == ["bad message"]


def test_a_message_from_another_thread_wakes_a_sleeping_loop_at_once() -> None:
    seen: list[str] = []
    loop = Loop(
        monotonic=time.monotonic,
        on_error=lambda exc: None,
        after_turn=lambda: None,
        max_wait_seconds=30.0,
    )
    threading.Timer(0.05, lambda: loop.post(lambda: seen.append("hello"))).start()
    started = time.monotonic()
    assert loop.run(until=lambda: bool(seen), deadline=started + 20.0)
    # It woke for the message, not for its 30 s safety-net wait or the deadline.
    assert time.monotonic() - started < 10.0


def test_run_stops_at_its_deadline_when_nothing_happens() -> None:
    clock = FakeClock()
    loop = Loop(monotonic=clock, on_error=lambda exc: None, after_turn=lambda: None)
    loop.at(150.0, lambda: None, key="far")
    clock.now = 160.0  # past the deadline already
    assert loop.run(until=lambda: False, deadline=150.0) is False
