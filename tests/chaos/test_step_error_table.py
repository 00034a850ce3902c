"""Every failure of every step lands in a legal state (pure, in-process).

For every job state x step x error class (each class of mh_watchd/core/errors.py, plus
OSError(ENOSPC), OSError(ENOENT) and a plain RuntimeError), the core's decision must be "stay"
(no move) or a legal move of `LEGAL_MOVES` that `transition()` accepts (a rendering job is
only ever held as render_overdue).

The decision comes from `mh_watchd.core.outcomes.next_move(job, step, error)` when it exists.
TODO(lead): once `next_move` is the only decision function, delete `_decide_with_dispose` (the
fallback mirrors daemon.py's `_apply_error` over today's `dispose()`).
"""

from __future__ import annotations

import dataclasses
import errno
import inspect
from collections.abc import Callable
from typing import Any

import pytest

from mh_watchd.core import errors as errors_module
from mh_watchd.core import outcomes
from mh_watchd.core.errors import (
    AccountApiError,
    ApiError,
    ConfigError,
    NotFoundError,
    NotSentError,
    PermanentApiError,
    RefusedError,
)
from mh_watchd.core.jobs import (
    LEGAL_MOVES,
    HoldReason,
    IllegalTransition,
    Job,
    JobState,
    transition,
)
from tests.factories import SETTINGS

S = JobState
STEPS = ("upload", "create", "poll", "download", "deliver")
# A held job, per reason, with the state it plausibly resumes to.
HELD_RESUME = {
    HoldReason.AUTH: S.QUEUED,
    HoldReason.CREDITS: S.QUEUED,
    HoldReason.DAILY_LIMIT: S.QUEUED,
    HoldReason.OUTAGE: S.QUEUED,
    HoldReason.OUTPUT_UNAVAILABLE: S.DOWNLOADING,
    HoldReason.AMBIGUOUS_CREATE: S.SUBMITTING,
    HoldReason.RENDER_OVERDUE: S.RENDERING,
}
API_STATUS = {
    "RefusedError": 503,
    "NotSentError": None,
    "AmbiguousCreateError": 504,
    "UrlExpiredError": 403,
    "PermanentApiError": 422,
    "NotFoundError": 404,
    "AuthError": 401,
    "CreditsError": 402,
    "AccountApiError": 401,
}


def _job(state: JobState, reason: HoldReason | None = None) -> Job:
    job = Job(
        folder="f",
        rel_path="a.mp4",
        size=1,
        mtime_ns=1,
        inode=1,
        settings=SETTINGS,
        id=1,
        sha256="0" * 64,
        upload_file_path="api-assets/x/y.mp4",
        start_seconds=0.0,
        end_seconds=1.0,
    )
    changes: dict[str, Any] = {"state": state}
    if state in (S.RENDERING, S.DOWNLOADING, S.DELIVERING, S.DONE) or reason in (
        HoldReason.RENDER_OVERDUE,
        HoldReason.OUTPUT_UNAVAILABLE,
    ):
        changes["project_id"] = "cproject"
    if reason is not None:
        changes.update(hold_reason=reason, resume_state=HELD_RESUME[reason])
    return dataclasses.replace(job, **changes)


JOBS: dict[str, Job] = {s.value: _job(s) for s in S if s is not S.HELD}
JOBS.update({f"held-{r.value}": _job(S.HELD, r) for r in HoldReason})


def _instances() -> dict[str, Exception]:
    """One instance of every error class in core/errors.py, plus the OS and plain errors."""
    found: dict[str, Exception] = {}
    for name, cls in inspect.getmembers(errors_module, inspect.isclass):
        if not issubclass(cls, Exception) or cls.__module__ != errors_module.__name__:
            continue
        if issubclass(cls, ApiError):
            found[name] = cls("boom", operation="op", status=API_STATUS.get(name, 500))
        elif issubclass(cls, ConfigError):
            found[name] = cls(["daemon.x: boom"])
        else:
            found[name] = cls("boom")
    found["OSError(ENOSPC)"] = OSError(errno.ENOSPC, "No space left on device")
    found["OSError(ENOENT)"] = OSError(errno.ENOENT, "No such file or directory")
    found["RuntimeError"] = RuntimeError("a bug")
    return found


ERRORS = _instances()


def _decide_with_next_move(job: Job, step: str, error: Exception) -> list[tuple[JobState, Any]]:
    """The moves `next_move` makes: [] for none (stale, or a wait in the same state)."""
    step_arg: Any = outcomes.Step(step) if hasattr(outcomes, "Step") else step
    move = outcomes.next_move(job, step_arg, error)
    target = getattr(move, "state", move)
    if target is None:
        return []
    target = JobState(target)
    reason = getattr(move, "hold_reason", None)
    if target is job.state and (target is not S.HELD or reason in (None, job.hold_reason)):
        return []  # stays where it is (a poll or retry wait, a hold kept)
    return [(target, reason)]


def _decide_with_dispose(job: Job, step: str, error: Exception) -> list[tuple[JobState, Any]]:
    """Today's dispose() applied the way daemon.py's _apply_error applies it."""
    d = outcomes.dispose(error, step=step, attempts=job.attempts + 1)
    action = d.action.value
    before_create = job.state in (S.UPLOADING, S.SUBMITTING)
    if action == "retry":
        return [(S.QUEUED, None)] if step != "poll" and before_create else []
    if action == "hold":
        moves: list[tuple[JobState, Any]] = []
        if before_create and d.hold_reason is not HoldReason.AMBIGUOUS_CREATE:
            moves.append((S.QUEUED, None))
        return [*moves, (S.HELD, d.hold_reason)]
    if action == "restart":
        return [(S.FAILED, None)]  # daemon.py moves a restart to failed (superseded: TODO)
    return [(S.FAILED, None)]


decide: Callable[[Job, str, Exception], list[tuple[JobState, Any]]] = (
    _decide_with_next_move if hasattr(outcomes, "next_move") else _decide_with_dispose
)


@pytest.mark.parametrize("step", STEPS)
@pytest.mark.parametrize("label", list(JOBS))
def test_every_error_of_every_step_lands_in_a_legal_state(label: str, step: str) -> None:
    job = JOBS[label]
    illegal = []
    for name, error in ERRORS.items():
        current = job
        try:
            moves = decide(job, step, error)
        except Exception as exc:  # the decision itself must never blow up
            illegal.append(f"{name}: the decision raised {exc!r}")
            continue
        for target, reason in moves:
            try:
                if target not in LEGAL_MOVES[current.state]:
                    raise IllegalTransition(f"not in LEGAL_MOVES[{current.state.value}]")
                if target is S.HELD:
                    if reason is None:
                        raise IllegalTransition("held without a hold_reason")
                    current = transition(current, S.HELD, hold_reason=reason)
                else:
                    current = transition(current, target)
            except IllegalTransition as exc:
                path = " -> ".join(t.value for t, _ in moves)
                illegal.append(f"{name}: {job.state.value} -> {path} ({exc})")
                break
    assert not illegal, f"{label} x {step}:\n" + "\n".join(illegal)


@pytest.mark.parametrize("name", list(ERRORS))
def test_a_create_that_may_have_reached_the_service_is_never_resent_without_retry(
    name: str,
) -> None:
    """Invariant 2 on the same table: only not-sent and refused creates go back to a state that
    sends again (401/402 and 400/403/422 answers prove nothing was made either); anything else
    ends where only `retry` sends again: held `ambiguous_create`, failed, or superseded."""
    error = ERRORS[name]
    moves = decide(JOBS["submitting"], "create", error)
    resend_states = {S.QUEUED, S.SUBMITTING, S.UPLOADING}
    states = [t for t, _ in moves]
    if isinstance(error, (NotSentError, RefusedError)):
        return
    if isinstance(error, AccountApiError) or (
        isinstance(error, PermanentApiError) and not isinstance(error, NotFoundError)
    ):
        assert states and states[-1] in (S.HELD, S.FAILED), states
        return
    assert states, f"{name} on create: no move, so the create is sent again"
    assert not (set(states) & resend_states), f"{name} on create -> {states}: a silent resend"
    final, reason = moves[-1]
    assert final in (S.HELD, S.FAILED, S.SUPERSEDED), moves
    if final is S.HELD:
        assert reason is HoldReason.AMBIGUOUS_CREATE, (
            f"{name} on create -> held {reason}: released without `retry`, it creates again"
        )
