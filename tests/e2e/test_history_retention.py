"""The daemon as wired by `Daemon.open`/`start` runs housekeeping: a minute after start the old
history of finished jobs is compacted and `journal.history_compacted` is logged."""

from __future__ import annotations

import time
from pathlib import Path

from structlog.testing import capture_logs

from mh_watchd.adapters import config_file
from mh_watchd.adapters.journal import Journal
from mh_watchd.daemon import Daemon
from mh_watchd.service import housekeeping
from tests.adapters.test_journal_history import DAY, DONE_PATH, make_job
from tests.e2e.conftest import TOKEN, Workspace


def test_the_running_daemon_compacts_old_history_a_minute_after_start(tmp_path: Path) -> None:
    ws = Workspace(root=tmp_path / "ws", base_url="http://127.0.0.1:9")  # never contacted
    ws.folder("anime", style={"art_style": "Comic"})
    ws.extra_daemon = "history_days = 30"
    config = config_file.load(ws.write_config())
    with Journal.open(ws.state_dir) as journal:
        old = make_job(journal, "old.mp4", DONE_PATH, start=time.time() - 31 * DAY)
        new = make_job(journal, "new.mp4", DONE_PATH, start=time.time() - 29 * DAY)
    skipped = [0.0]
    daemon = Daemon.open(
        config,
        token=TOKEN,
        config_path=ws.config_path,
        environ={"MH_TEST_TOKEN": TOKEN},
        monotonic=lambda: time.monotonic() + skipped[0],
    )
    try:
        with capture_logs() as logs:
            daemon.start()
            due = daemon.loop.due(housekeeping.TIMER_KEY)
            assert due is not None and due > daemon.ctx.monotonic() + 50
            skipped[0] += housekeeping.FIRST_RUN_SECONDS
            assert daemon.run_until(
                lambda: any(e["event"] == "journal.history_compacted" for e in logs), 10
            )
        entry = next(e for e in logs if e["event"] == "journal.history_compacted")
        assert (entry["events_deleted"], entry["jobs_compacted"]) == (len(DONE_PATH), 1)
        assert old.id is not None and new.id is not None
        assert len(daemon.journal.events(old.id)) == 1
        assert len(daemon.journal.events(new.id)) == len(DONE_PATH) + 1
    finally:
        daemon.shutdown()
    assert daemon.loop.due(housekeeping.TIMER_KEY) is None
