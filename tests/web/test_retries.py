"""retries.request_retries: the one function `mh-watchd retry` and the web page both call."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest

from mh_watchd.adapters.journal import Journal
from mh_watchd.core.jobs import HoldReason, JobState
from mh_watchd.retries import request_retries
from tests.factories import job_in


@pytest.fixture
def journal(tmp_path: Path) -> Iterator[Journal]:
    j = Journal.open(tmp_path / "state")
    try:
        yield j
    finally:
        j.close()


def test_all_or_nothing_one_bad_id_writes_no_request(journal: Journal) -> None:
    failed = journal.insert(job_in(JobState.FAILED, rel_path="f.mp4"), event="t")
    rendering = journal.insert(job_in(JobState.RENDERING, rel_path="r.mp4"), event="t")
    outcome = request_retries(journal, job_ids=[str(failed.id), str(rendering.id)], now=1.0)
    assert not outcome.ok
    assert outcome.problems == (
        f"{rendering.id}: rendering, not failed, held or done; nothing to retry",
    )
    assert journal.pending_requests() == []


def test_a_job_named_and_also_in_all_failed_is_requested_once(journal: Journal) -> None:
    failed = journal.insert(job_in(JobState.FAILED, rel_path="f.mp4"), event="t")
    held = journal.insert(
        job_in(JobState.HELD, rel_path="h.mp4", hold_reason=HoldReason.AMBIGUOUS_CREATE),
        event="t",
    )
    outcome = request_retries(journal, job_ids=[str(failed.id)], failed=True, held=True, now=1.0)
    assert [t.id for t in outcome.requested] == [failed.id, held.id]
    assert [r.job_id for r in journal.pending_requests()] == [failed.id, held.id]
    warning = outcome.requested[1].warning
    assert warning is not None and "before paying twice" in warning
