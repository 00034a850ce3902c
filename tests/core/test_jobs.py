"""The job state table in core/jobs.py: every (from, to) pair, holds and releases."""

from __future__ import annotations

import itertools

import pytest

from mh_watchd.core.jobs import (
    LEGAL_MOVES,
    TERMINAL_STATES,
    HoldReason,
    IllegalTransition,
    JobState,
    check_move,
    hold,
    release,
    transition,
)
from tests.factories import job_in

S = JobState

# The contract's life of a job, written out independently of LEGAL_MOVES so that a change to
# the table has to be a deliberate change here too.
EXPECTED_LEGAL: frozenset[tuple[JobState, JobState]] = frozenset(
    {
        (S.QUEUED, S.UPLOADING),
        (S.QUEUED, S.SUBMITTING),
        (S.QUEUED, S.FAILED),
        (S.QUEUED, S.HELD),
        (S.QUEUED, S.SUPERSEDED),
        (S.UPLOADING, S.QUEUED),
        (S.UPLOADING, S.SUBMITTING),
        (S.UPLOADING, S.FAILED),
        (S.UPLOADING, S.HELD),
        (S.UPLOADING, S.SUPERSEDED),
        (S.SUBMITTING, S.RENDERING),
        (S.SUBMITTING, S.QUEUED),
        (S.SUBMITTING, S.FAILED),
        (S.SUBMITTING, S.HELD),
        (S.SUBMITTING, S.SUBMITTING),
        (S.SUBMITTING, S.SUPERSEDED),
        (S.RENDERING, S.DOWNLOADING),
        (S.RENDERING, S.FAILED),
        (S.RENDERING, S.HELD),
        (S.DOWNLOADING, S.DELIVERING),
        (S.DOWNLOADING, S.FAILED),
        (S.DOWNLOADING, S.HELD),
        (S.DOWNLOADING, S.RENDERING),
        (S.DELIVERING, S.DONE),
        (S.DELIVERING, S.HELD),
        (S.DELIVERING, S.DOWNLOADING),
        (S.DONE, S.QUEUED),
        (S.FAILED, S.QUEUED),
        *((S.HELD, to) for to in JobState if to is not S.DONE),
    }
)
ALL_PAIRS = list(itertools.product(JobState, JobState))
HOLDABLE_SOURCES = [S.QUEUED, S.UPLOADING, S.SUBMITTING, S.DOWNLOADING, S.DELIVERING]


def test_legal_moves_table_is_exactly_the_contract() -> None:
    table = {(old, new) for old, targets in LEGAL_MOVES.items() for new in targets}
    assert table == EXPECTED_LEGAL
    assert set(LEGAL_MOVES) == set(JobState)


@pytest.mark.parametrize(("old", "new"), ALL_PAIRS, ids=[f"{a}->{b}" for a, b in ALL_PAIRS])
def test_transition_allows_exactly_the_legal_pairs(old: JobState, new: JobState) -> None:
    job = job_in(old)
    # render_overdue is the one reason every state, rendering included, may be held for.
    changes: dict[str, object] = {"attempts": 5}
    if new is S.HELD:
        changes["hold_reason"] = HoldReason.RENDER_OVERDUE
    if (old, new) in EXPECTED_LEGAL:
        moved = transition(job, new, **changes)
        assert moved.state is new
        assert moved.attempts == 5
        assert job.state is old and job.attempts == 0  # the original record is untouched
        check_move(old, new)
    else:
        with pytest.raises(IllegalTransition, match=f"{old.value} -> {new.value}"):
            transition(job, new, **changes)
        with pytest.raises(IllegalTransition):
            check_move(old, new)


@pytest.mark.parametrize("source", HOLDABLE_SOURCES)
def test_hold_records_resume_state_and_release_returns_to_it(source: JobState) -> None:
    held = hold(job_in(source), HoldReason.OUTPUT_UNAVAILABLE, last_error="ENOSPC")
    assert held.state is S.HELD
    assert held.hold_reason is HoldReason.OUTPUT_UNAVAILABLE
    assert held.resume_state is source
    assert held.last_error == "ENOSPC"

    resumed = release(held, attempts=1)
    assert resumed.state is source
    assert resumed.hold_reason is None
    assert resumed.resume_state is None
    assert resumed.attempts == 1


@pytest.mark.parametrize("reason", [r for r in HoldReason if r is not HoldReason.RENDER_OVERDUE])
def test_rendering_job_cannot_be_held_for_other_reasons(reason: HoldReason) -> None:
    with pytest.raises(IllegalTransition, match="render_overdue"):
        hold(job_in(S.RENDERING), reason)


def test_rendering_job_can_be_held_as_render_overdue_and_resumes_rendering() -> None:
    held = hold(job_in(S.RENDERING, project_id="cm1"), HoldReason.RENDER_OVERDUE)
    assert (held.state, held.resume_state, held.hold_reason) == (
        S.HELD,
        S.RENDERING,
        HoldReason.RENDER_OVERDUE,
    )
    assert release(held).state is S.RENDERING


def test_held_to_held_keeps_the_original_resume_state() -> None:
    first = hold(job_in(S.UPLOADING), HoldReason.OUTAGE)
    second = hold(first, HoldReason.AUTH)
    assert second.state is S.HELD
    assert second.hold_reason is HoldReason.AUTH
    assert second.resume_state is S.UPLOADING
    assert release(second).state is S.UPLOADING


def test_holding_without_a_reason_is_refused() -> None:
    with pytest.raises(IllegalTransition, match="hold_reason"):
        transition(job_in(S.QUEUED), S.HELD)


def test_leaving_held_by_transition_clears_hold_fields() -> None:
    held = hold(job_in(S.SUBMITTING), HoldReason.AMBIGUOUS_CREATE)
    failed = transition(held, S.FAILED, last_error="gave up")
    assert failed.hold_reason is None and failed.resume_state is None
    assert failed.is_terminal


@pytest.mark.parametrize("state", [s for s in JobState if s is not S.HELD])
def test_release_refuses_a_job_that_is_not_held(state: JobState) -> None:
    with pytest.raises(IllegalTransition, match="only a held job"):
        release(job_in(state))


def test_release_refuses_a_held_job_without_resume_state() -> None:
    with pytest.raises(IllegalTransition, match="resume_state"):
        release(job_in(S.HELD, resume_state=None))


def test_terminal_states_are_done_failed_and_superseded() -> None:
    assert frozenset({S.DONE, S.FAILED, S.SUPERSEDED}) == TERMINAL_STATES
    assert [s for s in JobState if job_in(s).is_terminal] == [S.DONE, S.FAILED, S.SUPERSEDED]


def test_superseded_is_final_and_only_reached_before_a_create() -> None:
    assert LEGAL_MOVES[S.SUPERSEDED] == frozenset()
    reach = {s for s, targets in LEGAL_MOVES.items() if S.SUPERSEDED in targets}
    assert reach == {S.QUEUED, S.UPLOADING, S.SUBMITTING, S.HELD}


def test_rendering_job_with_stale_hold_reason_cannot_be_held_for_it() -> None:
    stale = job_in(S.RENDERING, hold_reason=HoldReason.AUTH)
    with pytest.raises(IllegalTransition):
        transition(stale, S.HELD)
