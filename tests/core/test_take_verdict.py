"""`take_verdict` over every kind x memory x journal fact: a file is taken only when it is a
candidate no intake or running job holds and no job has this very version; when
`needs_journal` says the journal is not needed, its facts really change nothing."""

from __future__ import annotations

import itertools

from mh_watchd.core.intake import Take, Verdict, needs_journal, take_verdict

BOOLS = (False, True)


def test_every_combination_takes_only_what_nothing_holds() -> None:
    seen = set()
    for kind, skipped, running, known, finished, started in itertools.product(
        Verdict, BOOLS, BOOLS, BOOLS, BOOLS, BOOLS
    ):
        verdict = take_verdict(
            kind,
            skipped=skipped,
            intake_running=running,
            known_version=known,
            latest_finished=finished,
            latest_started=started,
        )
        seen.add(verdict)
        case = (kind, skipped, running, known, finished, started, verdict)
        if verdict is Take.TAKE:
            assert kind is Verdict.CANDIDATE and not skipped and not running, case
            assert not known and (finished or not started), case
        if kind is not Verdict.CANDIDATE or skipped or (known and not running):
            assert verdict is Take.SKIP, case
        if kind is Verdict.CANDIDATE and not skipped and (running or (not finished and started)):
            assert verdict is not Take.TAKE, case
        if not needs_journal(kind, skipped=skipped, intake_running=running):
            # Decided without the journal: the journal's facts must not matter.
            assert verdict is take_verdict(kind, skipped=skipped, intake_running=running), case
    assert seen == set(Take)


def test_a_queued_job_on_the_path_lets_the_new_version_refresh_it() -> None:
    verdict = take_verdict(
        Verdict.CANDIDATE,
        skipped=False,
        intake_running=False,
        latest_finished=False,
        latest_started=False,
    )
    assert verdict is Take.TAKE


def test_an_uploading_job_on_the_path_makes_the_new_version_wait() -> None:
    verdict = take_verdict(
        Verdict.CANDIDATE,
        skipped=False,
        intake_running=False,
        latest_finished=False,
        latest_started=True,
    )
    assert verdict is Take.LATER
