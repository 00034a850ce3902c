"""`mh-watchd backup PATH`: a consistent copy of the journal taken while the daemon runs and
writes, refusing to overwrite, and the README's restore steps bringing the jobs back."""

from __future__ import annotations

import json
import shutil
import sqlite3
import subprocess
from collections.abc import Callable
from pathlib import Path

import pytest

from mh_watchd.adapters.journal import JOURNAL_FILENAME, Journal
from mh_watchd.adapters.samples import synthesize_clip
from mh_watchd.core.jobs import JobState
from tests.conftest import wait_for
from tests.e2e.conftest import SCRIPT, DaemonProcess, Workspace, all_done, read_jobs, wait_jobs

CLIPS = 4


def mh(*args: str, env: dict[str, str]) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [SCRIPT, *args], env=env, capture_output=True, text=True, timeout=60, check=False
    )


def backed_up_jobs(backup: Path, into: Path) -> int:
    """Check the copy like a restore would use it; return how many jobs it holds."""
    with sqlite3.connect(backup) as conn:
        assert conn.execute("PRAGMA integrity_check").fetchone()[0] == "ok"
        assert conn.execute("PRAGMA journal_mode").fetchone()[0] == "delete"
    into.mkdir()
    shutil.copyfile(backup, into / JOURNAL_FILENAME)
    with Journal.open(into, readonly=True) as journal:
        jobs = journal.jobs()
        for job in jobs:
            assert job.id is not None and journal.events(job.id)[-1].to_state is job.state
        return len(jobs)


def test_backup_without_a_journal_exits_69(
    workspace: Workspace, daemon_env: dict[str, str], tmp_path: Path
) -> None:
    workspace.folder("anime", style={"art_style": "Comic"})
    result = mh("backup", "-c", str(workspace.write_config()), str(tmp_path / "b"), env=daemon_env)
    assert result.returncode == 69
    assert "no journal" in result.stderr and "Traceback" not in result.stderr


@pytest.mark.slow
def test_backup_while_the_daemon_writes_is_consistent_and_restores(
    workspace: Workspace,
    daemon_env: dict[str, str],
    run_daemon: Callable[..., DaemonProcess],
    tmp_path: Path,
) -> None:
    ws = workspace
    ws.folder("anime", style={"art_style": "Comic"})
    for i in range(CLIPS):
        synthesize_clip(ws.inbox("anime") / f"clip{i}.mp4", seconds=1.0)
    proc = run_daemon()
    config = str(ws.config_path)
    wait_jobs(ws.state_dir, lambda jobs: len(jobs) >= 1, proc=proc, what="a first job")
    # Copies taken while jobs move through their states: each one is a whole journal.
    copies = 0
    while not all_done(CLIPS)(read_jobs(ws.state_dir)) and copies < 20:
        target = tmp_path / f"during-{copies}.sqlite3"
        result = mh("backup", "-c", config, str(target), env=daemon_env)
        assert result.returncode == 0, result.stderr
        assert "backup written" in result.stdout
        assert backed_up_jobs(target, tmp_path / f"check-{copies}") >= 1
        copies += 1
    assert copies >= 1
    wait_jobs(ws.state_dir, all_done(CLIPS), proc=proc, what="every clip done")

    final = tmp_path / "final.sqlite3"
    assert mh("backup", "-c", config, str(final), env=daemon_env).returncode == 0
    assert backed_up_jobs(final, tmp_path / "check-final") == CLIPS
    # It never overwrites a file without --force, nor writes inside the state_dir.
    again = mh("backup", "-c", config, str(final), env=daemon_env)
    assert again.returncode == 73 and "--force" in again.stderr
    inside = mh("backup", "-c", config, str(ws.state_dir / "b.sqlite3"), env=daemon_env)
    assert inside.returncode == 73 and "inside the state_dir" in inside.stderr
    forced = mh("backup", "--force", "-c", config, str(final), env=daemon_env)
    assert forced.returncode == 0, forced.stderr
    missing_dir = mh("backup", "-c", config, str(tmp_path / "nope" / "b"), env=daemon_env)
    assert missing_dir.returncode == 69 and "Traceback" not in missing_dir.stderr
    assert proc.stop() == 0
    stopped = tmp_path / "stopped.sqlite3"
    result = mh("backup", "-c", config, str(stopped), env=daemon_env)  # works without a daemon
    assert result.returncode == 0, result.stderr
    assert backed_up_jobs(stopped, tmp_path / "check-stopped") == CLIPS

    # The README's restore: stop, copy the backup over the journal, remove -wal/-shm, start.
    journal_file = ws.state_dir / JOURNAL_FILENAME
    journal_file.write_bytes(b"lost")  # the disk ate it
    shutil.copyfile(final, journal_file)
    for suffix in ("-wal", "-shm"):
        Path(f"{journal_file}{suffix}").unlink(missing_ok=True)
    restarted = run_daemon()
    wait_for(
        lambda: restarted.log_text().count("daemon.started") == 2,
        what="the daemon started on the restored journal",
    )
    wait_jobs(ws.state_dir, all_done(CLIPS), proc=restarted, what="the restored jobs")
    status = mh("status", "--json", "-c", config, env=daemon_env)
    assert status.returncode == 0, status.stderr
    assert json.loads(status.stdout)["folders"][0]["counts"] == {"done": CLIPS}
    assert restarted.stop() == 0
    assert {j.state for j in read_jobs(ws.state_dir)} == {JobState.DONE}
