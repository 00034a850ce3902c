"""The command line as users meet it: exit codes, messages, status and retry."""

from __future__ import annotations

import json
import subprocess
from collections.abc import Callable
from pathlib import Path

import pytest

from mh_watchd.adapters.samples import synthesize_clip
from mh_watchd.core.jobs import JobState
from mh_watchd.emulator import EmulatorServer
from tests.e2e.conftest import SCRIPT, TOKEN, DaemonProcess, Workspace, wait_jobs


def mh(*args: str, env: dict[str, str]) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [SCRIPT, *args], env=env, capture_output=True, text=True, timeout=60, check=False
    )


def test_no_command_and_bad_usage_exit_64_with_a_hint(daemon_env: dict[str, str]) -> None:
    assert mh(env=daemon_env).returncode == 64
    result = mh("frobnicate", env=daemon_env)
    assert result.returncode == 64
    assert "--help" in result.stderr
    assert "Traceback" not in result.stderr


def test_check_offline_accepts_a_good_config(
    workspace: Workspace, daemon_env: dict[str, str]
) -> None:
    workspace.folder("anime", style={"art_style": "Comic"})
    workspace.write_config()
    result = mh("check", "--offline", "-c", str(workspace.config_path), env=daemon_env)
    assert result.returncode == 0, result.stderr
    assert "config ok" in result.stdout


def test_check_reports_every_config_problem_with_its_path_and_exits_78(
    tmp_path: Path, daemon_env: dict[str, str]
) -> None:
    cfg = tmp_path / "bad.toml"
    cfg.write_text(
        "[daemon]\nstate_dir = '/tmp/x'\nsettle_secnds = 3\n"
        "[[folder]]\nname = 'a'\ninbox = '/tmp/a'\noutbox = '/tmp/b'\n"
        "style = { art_style = 'Studio Gibli' }\n"
    )
    result = mh("check", "--offline", "-c", str(cfg), env=daemon_env)
    assert result.returncode == 78
    assert "daemon.settle_secnds" in result.stderr and "settle_seconds" in result.stderr
    assert "Studio Ghibli" in result.stderr
    assert "Traceback" not in result.stderr


def test_check_missing_inbox_exits_69(workspace: Workspace, daemon_env: dict[str, str]) -> None:
    workspace.folder("anime", style={"art_style": "Comic"})
    workspace.write_config()
    workspace.inbox("anime").rmdir()
    result = mh("check", "--offline", "-c", str(workspace.config_path), env=daemon_env)
    assert result.returncode == 69
    assert str(workspace.inbox("anime")) in result.stderr


def test_check_online_verifies_the_key_against_the_service(
    workspace: Workspace, emu: EmulatorServer, daemon_env: dict[str, str]
) -> None:
    workspace.folder("anime", style={"art_style": "Comic"})
    workspace.write_config()
    ok = mh("check", "-c", str(workspace.config_path), env=daemon_env)
    assert ok.returncode == 0, ok.stderr
    assert "credits" in ok.stdout
    assert TOKEN not in ok.stdout + ok.stderr
    missing = dict(daemon_env)
    missing.pop("MH_TEST_TOKEN")
    result = mh("check", "-c", str(workspace.config_path), env=missing)
    assert result.returncode == 78
    assert "MH_TEST_TOKEN" in result.stderr


def test_status_without_a_journal_exits_69_and_run_without_a_token_exits_78(
    workspace: Workspace, daemon_env: dict[str, str]
) -> None:
    workspace.folder("anime", style={"art_style": "Comic"})
    workspace.write_config()
    result = mh("status", "-c", str(workspace.config_path), env=daemon_env)
    assert result.returncode == 69
    no_token = dict(daemon_env)
    no_token.pop("MH_TEST_TOKEN")
    result = mh("run", "-c", str(workspace.config_path), env=no_token)
    assert result.returncode == 78
    assert "API key" in result.stderr


def test_retry_needs_arguments_and_rejects_unknown_ids(
    workspace: Workspace, daemon_env: dict[str, str], run_daemon: Callable[..., DaemonProcess]
) -> None:
    workspace.folder("anime", style={"art_style": "Comic"})
    proc = run_daemon()
    wait_jobs_started(workspace)
    assert proc.stop() == 0
    assert mh("retry", "-c", str(workspace.config_path), env=daemon_env).returncode == 64
    result = mh("retry", "-c", str(workspace.config_path), "999", env=daemon_env)
    assert result.returncode == 65
    assert "999" in result.stderr


def wait_jobs_started(ws: Workspace) -> None:
    from tests.conftest import wait_for

    wait_for(lambda: (ws.state_dir / "journal.sqlite3").exists(), what="the journal")


@pytest.mark.slow
def test_second_daemon_on_one_state_dir_refuses_with_exit_75_naming_the_pid(
    workspace: Workspace, run_daemon: Callable[..., DaemonProcess]
) -> None:
    workspace.folder("anime", style={"art_style": "Comic"})
    first = run_daemon()
    wait_jobs_started(workspace)
    second = run_daemon()
    assert second.wait(30) == 75
    assert first.proc is not None
    assert str(first.proc.pid) in second.log_text()
    assert first.alive()
    assert first.stop() == 0


@pytest.mark.slow
def test_status_json_shows_counts_watch_mode_credits_and_failed_reasons(
    workspace: Workspace,
    emu: EmulatorServer,
    daemon_env: dict[str, str],
    run_daemon: Callable[..., DaemonProcess],
) -> None:
    ws = workspace
    ws.folder("anime", style={"art_style": "Comic"})
    synthesize_clip(ws.inbox("anime") / "good.mp4", seconds=1.0)
    (ws.inbox("anime") / "bad.mp4").write_text("nope " * 100)
    proc = run_daemon()
    wait_jobs(
        ws.state_dir,
        lambda jobs: {j.state for j in jobs} == {JobState.DONE, JobState.FAILED},
        proc=proc,
        what="one done, one failed",
    )
    result = mh("status", "--json", "-c", str(ws.config_path), env=daemon_env)
    assert result.returncode == 0, result.stderr
    data = json.loads(result.stdout)
    assert data["daemon"]["running"] is True
    folder = data["folders"][0]
    assert folder["name"] == "anime"
    assert folder["counts"] == {"done": 1, "failed": 1}
    assert folder["watch_mode"] in ("native", "polling")
    assert folder["watch_reason"]
    assert data["failed"][0]["file"] == "bad.mp4"
    assert "not a readable video" in data["failed"][0]["why"]
    assert data["credits"]["spent_today"] == emu.state()["projects"][0]["credits_charged"]
    text = mh("status", "-c", str(ws.config_path), env=daemon_env)
    assert "anime: done 1, failed 1" in text.stdout

    # retry moves the original back; it fails again (still not a video).
    failed_job = data["failed"][0]["id"]
    result = mh("retry", "-c", str(ws.config_path), str(failed_job), env=daemon_env)
    assert result.returncode == 0, result.stderr
    wait_jobs(
        ws.state_dir,
        lambda jobs: _retried(ws, failed_job),
        proc=proc,
        what="the retried job to fail again",
    )
    assert proc.stop() == 0
    assert (ws.inbox("anime") / ".mh-failed" / "bad.mp4").exists()
    assert (ws.inbox("anime") / ".mh-failed" / "bad.mp4.error.json").exists()


def _retried(ws: Workspace, job_id: int) -> bool:
    from mh_watchd.adapters.journal import Journal

    journal = Journal.open(ws.state_dir, readonly=True)
    try:
        events = [e.event for e in journal.events(job_id)]
        job = journal.get(job_id)
    finally:
        journal.close()
    return (
        "job.retried" in events
        and job is not None
        and job.state is JobState.FAILED
        and job.failed_path is not None
        and events[-1] == "job.original_filed"
    )


def test_check_offline_accepts_the_example_config_with_its_paths_moved(
    tmp_path: Path, daemon_env: dict[str, str]
) -> None:
    from tests.adapters.test_config_file import example_in

    cfg = example_in(tmp_path)
    for inbox in ("/srv/media/mh/anime/in", "/mnt/nas/video/to-paint"):
        Path(f"{tmp_path}{inbox}").mkdir(parents=True)
    # The NAS folder asks for a marker file that proves the share is mounted.
    Path(f"{tmp_path}/mnt/nas/video/to-paint/.mh-share-online").touch()
    result = mh("check", "--offline", "-c", str(cfg), env=daemon_env)
    assert result.returncode == 0, result.stdout + result.stderr
    assert "config ok" in result.stdout
