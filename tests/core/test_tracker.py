"""The intake tracker: one memory of files on their way in, with one forget."""

from __future__ import annotations

from mh_watchd.core.tracker import IntakeTracker

KEY = ("anime", "a.mp4")
OTHER = ("other", "b.mp4")
STATS = (10, 1, 7)


def test_a_file_settles_after_two_identical_stats_and_the_quiet_period() -> None:
    t = IntakeTracker(settle_seconds=1.0)
    t.observe(KEY, STATS, now=0.0)
    assert not t.ready(KEY, 5.0, 1.0)  # one observation is never enough
    t.observe(KEY, STATS, now=0.5, eligible=True)
    assert not t.ready(KEY, 0.9, 1.0)
    assert t.ready(KEY, 1.0, 1.0)


def test_forget_clears_settling_scan_memory_and_skips_together() -> None:
    t = IntakeTracker(settle_seconds=1.0)
    t.observe(KEY, STATS, now=0.0)
    t.remember(KEY, STATS)
    t.skip(KEY, STATS)
    t.forget(KEY)
    assert not t.is_pending(KEY)
    assert not t.unchanged_since_scan(KEY, STATS)  # the next rescan looks at it again
    assert not t.is_skipped(KEY, STATS)


def test_an_outage_forgets_only_its_own_folder() -> None:
    t = IntakeTracker(settle_seconds=1.0)
    for key in (KEY, OTHER):
        t.observe(key, STATS, now=0.0)
        t.remember(key, STATS)
    t.forget_folder("anime")
    assert t.pending() == [OTHER]
    assert not t.unchanged_since_scan(KEY, STATS)
    assert t.scanned_keys("other") == [OTHER]


def test_a_settling_file_is_never_unchanged_since_scan() -> None:
    t = IntakeTracker(settle_seconds=1.0)
    t.remember(KEY, STATS)
    assert t.unchanged_since_scan(KEY, STATS)
    t.observe(KEY, STATS, now=0.0)
    assert not t.unchanged_since_scan(KEY, STATS)
    t.taken(KEY)
    assert t.unchanged_since_scan(KEY, STATS)


def test_an_event_drops_scan_memory_and_restarts_the_quiet_period() -> None:
    t = IntakeTracker(settle_seconds=1.0)
    t.observe(KEY, STATS, now=0.0)
    t.observe(KEY, STATS, now=0.5)
    t.remember(KEY, STATS)
    t.touched(KEY, now=0.9)
    assert not t.ready(KEY, 1.5, 1.0)
    t.observe(KEY, STATS, now=1.0, eligible=True)
    assert t.ready(KEY, 2.0, 1.0)
    t.taken(KEY)
    assert not t.unchanged_since_scan(KEY, STATS)


def test_not_a_video_is_reported_once_until_the_folder_is_forgotten() -> None:
    t = IntakeTracker(settle_seconds=1.0)
    assert t.first_not_video(KEY)
    assert not t.first_not_video(KEY)
    t.forget_folder("anime")
    assert t.first_not_video(KEY)


def test_only_a_stat_pass_makes_a_file_takeable_and_forget_clears_it() -> None:
    t = IntakeTracker(settle_seconds=0.0)
    t.observe(KEY, STATS, now=0.0)
    t.observe(KEY, STATS, now=0.1)  # a rescan's observations: settled, but not yet eligible
    assert not t.ready(KEY, 1.0, 0.0)
    t.observe(KEY, STATS, now=0.2, eligible=False)  # marker missing / a job holds the path
    assert not t.ready(KEY, 1.0, 0.0)
    t.observe(KEY, STATS, now=0.3, eligible=True)
    assert t.ready(KEY, 1.0, 0.0)
    t.forget(KEY)
    t.observe(KEY, STATS, now=2.0)
    t.observe(KEY, STATS, now=2.1)
    assert not t.ready(KEY, 3.0, 0.0)  # a forgotten file's old eligibility is gone too
