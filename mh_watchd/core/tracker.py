"""Everything the daemon remembers about files it has not taken in yet, in one place.

Settle state (is the file still changing?), scan memory (which stats a rescan already looked
at), files waiting for a job on their path and skipped versions (files to leave alone until
they change) used to be separate memories,
and a file forgotten by one but remembered by another was never taken. `IntakeTracker` owns all
three, and `forget()` clears every one of them, so a forgotten file is always seen again by the
next stat pass or rescan. Pure: times are monotonic seconds handed in by the caller.
"""

from __future__ import annotations

from mh_watchd.core.settle import Observation, SettleTracker

Key = tuple[str, str]  # (folder name, path relative to the inbox)
Stats = tuple[int, int, int]  # (size, mtime_ns, inode)


class IntakeTracker:
    """Files on their way in: settling, remembered by rescans, or skipped in this version."""

    def __init__(self, settle_seconds: float) -> None:
        self._settle: SettleTracker[Key] = SettleTracker(settle_seconds)
        self._scanned: dict[Key, Stats] = {}
        self._skipped: dict[Key, Stats] = {}
        self._logged_not_video: set[Key] = set()
        # Per settling file: whether the last stat pass found it takeable (its ready marker
        # there, no job holding its path). A rescan's observation alone never makes it so.
        self._eligible: dict[Key, bool] = {}
        # Settling files whose path a running job still holds: looked at again when that job
        # moves (or on a slow timer), not on every stat pass.
        self._waiting: set[Key] = set()

    # ------------------------------------------------------------------ settling
    def observe(self, key: Key, stats: Stats, now: float, *, eligible: bool | None = None) -> None:
        """Record a stat of a candidate taken at `now`; pending until taken or forgotten.

        `eligible` (from a stat pass) says whether it may be taken once settled; None keeps
        what the last stat pass said (nothing yet: not eligible).
        """
        self._settle.observe(key, Observation(*stats), now)
        if eligible is not None:
            self._eligible[key] = eligible
            if eligible:
                self._waiting.discard(key)

    def touched(self, key: Key, now: float) -> None:
        """A filesystem event named `key`: (re)start its quiet period and look at it again."""
        self._scanned.pop(key, None)
        self._settle.touched(key, now)

    def ready(self, key: Key, now: float, settle_seconds: float) -> bool:
        """True once `key` has settled (see SettleTracker.ready) and the last stat pass found
        it eligible."""
        return self._eligible.get(key, False) and self._settle.ready(key, now, settle_seconds)

    def pending(self, folder: str | None = None) -> list[Key]:
        """Keys still settling (all folders, or one), oldest first."""
        keys = self._settle.pending()
        return keys if folder is None else [k for k in keys if k[0] == folder]

    def is_pending(self, key: Key) -> bool:
        return key in self._settle

    def changed_since(self, key: Key, since: float) -> bool:
        """True when an event or a changed stat touched `key` after `since`: a listing
        or stat pass begun before then may predate the file and must not forget it."""
        state = self._settle.state(key)
        return state is not None and state.last_change > since

    def wait_for_job(self, key: Key) -> None:
        """A job holds `key`'s path: leave it out of stat passes until `stop_waiting`."""
        if key in self._settle:
            self._waiting.add(key)

    def stop_waiting(self, key: Key) -> bool:
        """The job on `key`'s path moved: look at it again. True when it was waiting."""
        if key in self._waiting:
            self._waiting.discard(key)
            return True
        return False

    def waiting(self, folder: str) -> list[Key]:
        """Settling keys of `folder` that wait for a job to let go of their path."""
        return [k for k in self._waiting if k[0] == folder]

    def settling(self, folder: str) -> list[Key]:
        """Settling keys of `folder` that no job holds: the ones a stat pass looks at."""
        return [k for k in self.pending(folder) if k not in self._waiting]

    def taken(self, key: Key) -> None:
        """`key` was handed to intake: it no longer settles. Its scan memory stays until the
        intake's result is known (`forget` on failure, `remember` on success)."""
        self._settle.forget(key)
        self._eligible.pop(key, None)
        self._waiting.discard(key)

    # ------------------------------------------------------------------ rescans
    def unchanged_since_scan(self, key: Key, stats: Stats) -> bool:
        """True when a rescan already looked at exactly this version and it is not settling."""
        return self._scanned.get(key) == stats and key not in self._settle

    def remember(self, key: Key, stats: Stats) -> None:
        """A rescan has dealt with this version: the next rescan skips it unless it changed."""
        self._scanned[key] = stats

    def scanned_keys(self, folder: str) -> list[Key]:
        return [k for k in self._scanned if k[0] == folder]

    # ------------------------------------------------------------------ skips
    def skip(self, key: Key, stats: Stats) -> None:
        """Leave this version of the file alone (already done); a changed file is seen again."""
        self._skipped[key] = stats

    def unskip(self, key: Key) -> None:
        self._skipped.pop(key, None)

    def is_skipped(self, key: Key, stats: Stats) -> bool:
        return self._skipped.get(key) == stats

    def first_not_video(self, key: Key) -> bool:
        """True the first time `key` is reported as not a video (so it is logged once)."""
        if key in self._logged_not_video:
            return False
        self._logged_not_video.add(key)
        return True

    # ------------------------------------------------------------------ forgetting
    def forget(self, key: Key) -> None:
        """Forget `key` everywhere: the next stat pass or rescan looks at it afresh."""
        self.taken(key)
        self._scanned.pop(key, None)
        self._skipped.pop(key, None)

    def forget_folder(self, folder: str) -> None:
        """Forget every file of `folder` (an outage began, or the folder was removed)."""
        for key in {*self._settle.pending(), *self._scanned, *self._skipped}:
            if key[0] == folder:
                self.forget(key)
        self._logged_not_video = {k for k in self._logged_not_video if k[0] != folder}

    def set_settle_seconds(self, settle_seconds: float) -> None:
        """A reload changed the daemon's default quiet period; files keep their progress."""
        self._settle.settle_seconds = settle_seconds
