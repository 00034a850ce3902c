"""`next_effect` over every state x hold reason x job variant x daemon facts: each effect is a
legal move of the state table, and none breaks a promise (a create with no fresh upload, over
the daily limit or past the account gate; share work in an outage; output into a broken
outbox; a second create for a submitting job)."""

from __future__ import annotations

import itertools
from collections.abc import Iterator

import pytest

from mh_watchd.core import backoff
from mh_watchd.core.effects import Effect, EffectKind, Facts, next_effect
from mh_watchd.core.jobs import HoldReason, Job, JobState, hold, release, transition
from mh_watchd.core.outcomes import STEP_STATES, Step
from tests.factories import job_in

NOW = 1_000_000.0
_S = JobState

UPLOADS = {
    "no upload": {},
    "fresh upload": {"upload_file_path": "api-assets/x.mp4", "uploaded_at": NOW - 60},
    "stale upload": {
        "upload_file_path": "api-assets/x.mp4",
        "uploaded_at": NOW - backoff.UPLOAD_REUSE_SECONDS - 1,
    },
}
RENDERS = {
    "not rendering": {},
    "rendering": {"render_started_at": NOW - 60},
    "overdue": {"render_started_at": NOW - 3 * 3600},
}
PROJECTS = {"no project": {}, "project": {"project_id": "cuid-1"}}


def jobs() -> Iterator[tuple[str, Job]]:
    for state in JobState:
        reasons: list[HoldReason | None] = list(HoldReason) if state is _S.HELD else [None]
        for reason in reasons:
            for (u, upload), (r, render), (p, project) in itertools.product(
                UPLOADS.items(), RENDERS.items(), PROJECTS.items()
            ):
                changes = {**upload, **render, **project, "credits_estimate": 10}
                if reason is not None:
                    job = job_in(state, hold_reason=reason, resume_state=_S.RENDERING, **changes)
                else:
                    job = job_in(state, **changes)
                yield f"{state.value}/{reason}/{u}/{r}/{p}", job


def facts() -> Iterator[Facts]:
    for configured, outage, output, block, up, render, (limit, spent) in itertools.product(
        (True, False),
        (None, "not mounted"),
        (None, "outbox full"),
        (None, HoldReason.AUTH, HoldReason.CREDITS),
        (True, False),
        (True, False),
        ((0, 0), (100, 0), (100, 95)),
    ):
        if not configured and (outage or output):
            continue  # a removed folder has no folder facts
        yield Facts(
            now=NOW,
            folder_configured=configured,
            inbox="/in",
            outage=outage,
            output_problem=output,
            account_block=block,
            upload_slot=up,
            render_slot=render,
            daily_limit=limit,
            spent_today=spent,
            render_timeout_seconds=3600.0,
        )


CASES = [(name, job, f) for name, job in jobs() for f in facts()]


def check_legal(job: Job, effect: Effect) -> None:
    """The effect is a move the state table allows, from the job's state."""
    if effect.kind is EffectKind.NONE:
        return
    assert not job.is_terminal
    if effect.kind is EffectKind.HOLD:
        assert effect.hold_reason is not None and effect.why
        hold(job, effect.hold_reason)
    elif effect.kind is EffectKind.RELEASE:
        release(job)
    else:
        assert effect.step is not None
        state = job.state
        if effect.state is not None:
            state = transition(job, effect.state).state
        assert state in STEP_STATES[effect.step], (job.state, effect)


def check_promises(job: Job, f: Facts, effect: Effect) -> None:
    step = effect.step if effect.kind is EffectKind.START else None
    if step is Step.CREATE:
        assert job.state is _S.QUEUED and job.upload_file_path and f.render_slot
        assert job.uploaded_at is not None
        assert NOW - job.uploaded_at < backoff.UPLOAD_REUSE_SECONDS
        assert f.account_block is None and f.outage is None
        assert not f.daily_limit or f.spent_today + (job.credits_estimate or 0) <= f.daily_limit
    if step is Step.UPLOAD:
        assert f.upload_slot and f.outage is None and f.account_block is None
    if step is Step.DELIVER:
        assert f.outage is None
    if step in (Step.DOWNLOAD, Step.DELIVER):
        assert f.output_problem is None
    if job.state is _S.SUBMITTING:
        assert step is None  # a create is only ever started from queued
    if job.state is _S.HELD:
        assert step in (None, Step.POLL)
        if step is Step.POLL:
            assert job.hold_reason is HoldReason.RENDER_OVERDUE and job.project_id
    if not f.folder_configured and job.project_id is None and job.state is _S.QUEUED:
        assert effect.kind is EffectKind.NONE  # dropped with its folder, never started


def test_every_effect_is_a_legal_move_that_keeps_every_promise() -> None:
    assert len(CASES) > 10_000
    kinds = set()
    for name, job, f in CASES:
        effect = next_effect(job, f)
        kinds.add((effect.kind, effect.step))
        try:
            check_legal(job, effect)
            check_promises(job, f, effect)
        except Exception as exc:
            pytest.fail(f"{name} with {f}: {effect} ({exc!r})")
    # Every kind of effect is reachable (a table that always says "nothing" would pass above).
    assert {k for k, _ in kinds} == set(EffectKind)
    assert {s for _, s in kinds} >= set(Step)


@pytest.mark.parametrize(
    ("job", "f", "expected"),
    [
        pytest.param(
            job_in(_S.QUEUED, **UPLOADS["fresh upload"], credits_estimate=10),
            Facts(now=NOW, daily_limit=100, spent_today=95),
            Effect(
                EffectKind.HOLD,
                hold_reason=HoldReason.DAILY_LIMIT,
                why="spent today 95 + estimate 10 > limit 100",
            ),
            id="over the daily limit: held, not sent",
        ),
        pytest.param(
            job_in(_S.QUEUED, **UPLOADS["stale upload"]),
            Facts(now=NOW),
            Effect(EffectKind.START, Step.UPLOAD, state=_S.UPLOADING),
            id="an expired upload is uploaded again",
        ),
        pytest.param(
            job_in(_S.SUBMITTING),
            Facts(now=NOW),
            Effect(
                EffectKind.HOLD,
                hold_reason=HoldReason.AMBIGUOUS_CREATE,
                why="the answer to this job's create request was lost; check the web app",
            ),
            id="a create's lost answer is held, never re-sent",
        ),
        pytest.param(
            job_in(_S.RENDERING, project_id="p", **RENDERS["overdue"]),
            Facts(now=NOW, render_timeout_seconds=3600.0),
            Effect(
                EffectKind.HOLD,
                hold_reason=HoldReason.RENDER_OVERDUE,
                why="still rendering after 60 min",
                due_in_seconds=backoff.OVERDUE_POLL_SECONDS,
            ),
            id="an overdue render is held and polled hourly",
        ),
        pytest.param(
            job_in(_S.HELD, hold_reason=HoldReason.OUTAGE, resume_state=_S.UPLOADING),
            Facts(now=NOW),
            Effect(EffectKind.RELEASE),
            id="an outage hold is released when the folder is back",
        ),
        pytest.param(
            job_in(_S.HELD, hold_reason=HoldReason.OUTAGE, resume_state=_S.UPLOADING),
            Facts(now=NOW, outage="gone"),
            Effect(EffectKind.NONE),
            id="an outage hold stays while the outage lasts",
        ),
        pytest.param(
            job_in(_S.DELIVERING),
            Facts(now=NOW, output_problem="outbox /out: full"),
            Effect(
                EffectKind.HOLD,
                hold_reason=HoldReason.OUTPUT_UNAVAILABLE,
                why="outbox /out: full",
            ),
            id="delivery into a full outbox waits held",
        ),
    ],
)
def test_chosen_effects(job: Job, f: Facts, expected: Effect) -> None:
    assert next_effect(job, f) == expected
