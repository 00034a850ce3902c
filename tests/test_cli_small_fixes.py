"""The command line's small promises: quiet broken pipes, held and superseded jobs in `status`
and `retry`, a demo that never deletes a folder it did not make, `check` and apprise.

Journals are seeded directly (no daemon runs), so these tests are fast and deterministic.
"""

from __future__ import annotations

import dataclasses
import importlib.util
import json
import os
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest

from mh_watchd import cli, report
from mh_watchd.adapters.journal import Journal
from mh_watchd.core.jobs import HoldReason, Job, JobState
from tests.adapters.test_journal import new_job

SCRIPT = str(Path(sys.executable).with_name("mh-watchd"))
S = JobState


@dataclasses.dataclass
class Setup:
    root: Path
    config: Path
    state_dir: Path
    env: dict[str, str]


def write_config(root: Path, extra: str = "") -> Path:
    inbox = root / "anime" / "in"
    inbox.mkdir(parents=True, exist_ok=True)
    path = root / "config.toml"
    path.write_text(
        "[api]\n"
        'base_url = "http://127.0.0.1:9"\n'
        'token_env = "MH_TEST_TOKEN"\n'
        "[daemon]\n"
        f'state_dir = "{root / "state"}"\n'
        'http_listen = ""\n'
        "[[folder]]\n"
        'name = "anime"\n'
        f'inbox = "{inbox}"\n'
        f'outbox = "{root / "anime" / "out"}"\n'
        'style = { art_style = "Comic" }\n'
        f"{extra}"
    )
    return path


@pytest.fixture
def setup(tmp_path: Path) -> Setup:
    env = {k: v for k, v in os.environ.items() if not k.startswith(("MAGIC_HOUR", "MH_WATCHD"))}
    env["MH_TEST_TOKEN"] = "mhk_live_test"
    return Setup(tmp_path, write_config(tmp_path), tmp_path / "state", env)


@pytest.fixture
def journal(setup: Setup) -> Iterator[Journal]:
    j = Journal.open(setup.state_dir)
    try:
        yield j
    finally:
        j.close()


def mh(*args: str, env: dict[str, str]) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [SCRIPT, *args], env=env, capture_output=True, text=True, timeout=60, check=False
    )


def seed(journal: Journal, rel_path: str, state: JobState, **changes: object) -> Job:
    return journal.insert(new_job(rel_path, state=state, **changes), event="job.seeded")


# ---------------------------------------------------------------- 1. closed pipes


@pytest.mark.parametrize("json_flag", [[], ["--json"]], ids=["text", "json"])
def test_status_piped_into_head_exits_quietly(
    setup: Setup, journal: Journal, json_flag: list[str]
) -> None:
    # Far more output than a pipe buffers, so `status` is still writing when head exits
    # (it lists at most report.LIST_LIMIT failed jobs: long reasons make up the bytes).
    for i in range(3000):
        seed(journal, f"clip-{i:05d}.mp4", S.FAILED, last_error="not a readable video " * 60)
    journal.close()
    rc_file = setup.root / "rc"
    pipeline = subprocess.run(
        [
            "bash",
            "-c",
            '"$0" status -c "$1" "${@:3}" | head -1; echo "${PIPESTATUS[0]}" > "$2"',
            SCRIPT,
            str(setup.config),
            str(rc_file),
            *json_flag,
        ],
        env=setup.env,
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    assert pipeline.stderr == ""
    assert len(pipeline.stdout.splitlines()) == 1
    # Like any Unix filter killed by SIGPIPE: 128 + 13, which `set -o pipefail` reports.
    assert rc_file.read_text().strip() == "141"


def test_a_closed_stdout_before_the_first_write_is_quiet_too(
    setup: Setup, journal: Journal
) -> None:
    seed(journal, "a.mp4", S.FAILED, last_error="not a readable video")
    journal.close()
    read_end, write_end = os.pipe()
    os.close(read_end)  # nobody will ever read: the first write fails with EPIPE
    try:
        result = subprocess.run(
            [SCRIPT, "status", "-c", str(setup.config)],
            env=setup.env,
            stdout=write_end,
            stderr=subprocess.PIPE,
            text=True,
            timeout=60,
            check=False,
        )
    finally:
        os.close(write_end)
    assert result.stderr == ""
    assert result.returncode == 141


# ---------------------------------------------------------------- 2. held without last_error


def test_status_explains_a_recovered_ambiguous_create_instead_of_none(
    setup: Setup, journal: Journal, capsys: pytest.CaptureFixture[str]
) -> None:
    job = seed(
        journal,
        "trip/a.mp4",
        S.HELD,
        hold_reason=HoldReason.AMBIGUOUS_CREATE,
        resume_state=S.SUBMITTING,
        service_name="anime/trip/a.mp4",
        last_error=None,
    )
    journal.close()
    assert cli.main(["status", "-c", str(setup.config)]) == 0
    text = capsys.readouterr().out
    held_line = next(line for line in text.splitlines() if "ambiguous_create" in line)
    assert "None" not in held_line
    assert "'anime/trip/a.mp4'" in held_line
    assert f"mh-watchd retry {job.id}" in held_line
    assert cli.main(["status", "--json", "-c", str(setup.config)]) == 0
    data = json.loads(capsys.readouterr().out)
    assert data["held"][0]["why"] and "web app" in data["held"][0]["why"]


@pytest.mark.parametrize("reason", list(HoldReason))
def test_every_hold_reason_has_a_plain_explanation(reason: HoldReason) -> None:
    job = dataclasses.replace(new_job(), id=7, state=S.HELD, hold_reason=reason, last_error=None)
    why = report.build_held_row(job)["why"]
    assert isinstance(why, str) and len(why) > 20 and "None" not in why


# ---------------------------------------------------------------- 3. superseded


def seed_superseded_history(journal: Journal) -> dict[str, int]:
    old = seed(
        journal,
        "a.mp4",
        S.SUPERSEDED,
        last_error="superseded: the file changed during upload; taken again as a new version",
    )
    newer = seed(journal, "a.mp4", S.DONE, size=2000)
    broken = seed(journal, "b.mp4", S.FAILED, last_error="not a readable video")
    # Written by a daemon from before the superseded state: failed, with this prefix.
    legacy = seed(
        journal, "c.mp4", S.FAILED, last_error="superseded: the file vanished; taken again"
    )
    ids = {"old": old.id, "newer": newer.id, "broken": broken.id, "legacy": legacy.id}
    return {k: v for k, v in ids.items() if v is not None}


def test_status_shows_superseded_in_history_not_as_failed(
    setup: Setup, journal: Journal, capsys: pytest.CaptureFixture[str]
) -> None:
    ids = seed_superseded_history(journal)
    journal.close()
    assert cli.main(["status", "--json", "-c", str(setup.config)]) == 0
    data = json.loads(capsys.readouterr().out)
    assert data["folders"][0]["counts"] == {"done": 1, "failed": 1, "superseded": 2}
    assert [j["id"] for j in data["failed"]] == [ids["broken"]]
    assert data["held"] == [] and data["active"] == []
    assert cli.main(["status", "-c", str(setup.config)]) == 0
    text = capsys.readouterr().out
    assert "anime: done 1, failed 1, superseded 2" in text
    failed_section = text.split("failed:\n", 1)[1]
    assert "a.mp4" not in failed_section and "c.mp4" not in failed_section
    assert "b.mp4" in failed_section


def test_retry_of_a_superseded_job_exits_65_naming_the_newer_job(
    setup: Setup, journal: Journal, capsys: pytest.CaptureFixture[str]
) -> None:
    ids = seed_superseded_history(journal)
    journal.close()
    assert cli.main(["retry", "-c", str(setup.config), str(ids["old"])]) == 65
    err = capsys.readouterr().err
    assert (
        f"job {ids['old']} was superseded: the file changed before its upload finished; "
        f"job {ids['newer']} holds the newer version"
    ) in err
    # No newer version of c.mp4 was ever taken (it vanished).
    assert cli.main(["retry", "-c", str(setup.config), str(ids["legacy"])]) == 65
    err = capsys.readouterr().err
    assert f"job {ids['legacy']} was superseded" in err
    assert "no newer version" in err
    with Journal.open(setup.state_dir, readonly=True) as ro:
        assert ro.pending_requests() == []


def test_retry_failed_never_selects_superseded_jobs(
    setup: Setup, journal: Journal, capsys: pytest.CaptureFixture[str]
) -> None:
    ids = seed_superseded_history(journal)
    journal.close()
    assert cli.main(["retry", "-c", str(setup.config), "--failed"]) == 0
    with Journal.open(setup.state_dir, readonly=True) as ro:
        assert [r.job_id for r in ro.pending_requests()] == [ids["broken"]]
    assert "c.mp4" not in capsys.readouterr().out


# ---------------------------------------------------------------- 4. demo workspace


def test_demo_refuses_a_non_empty_folder_it_did_not_make(setup: Setup) -> None:
    mine = setup.root / "my-videos"
    mine.mkdir()
    (mine / "precious.mov").write_bytes(b"do not delete")
    env = dict(setup.env, MH_WATCHD_DEMO_DIR=str(mine))
    result = mh("demo", env=env)
    assert result.returncode == 69
    assert str(mine) in result.stderr
    assert "Traceback" not in result.stderr
    assert (mine / "precious.mov").read_bytes() == b"do not delete"
    assert sorted(p.name for p in mine.iterdir()) == ["precious.mov"]


def test_demo_workspace_is_created_marked_and_reused_only_when_marked(tmp_path: Path) -> None:
    from mh_watchd.demo import (
        CONFIG_TEMPLATE,
        MARKER_NAME,
        DemoWorkspaceError,
        prepare_workspace,
    )

    fresh = tmp_path / "fresh" / "demo"
    prepare_workspace(fresh)
    assert (fresh / MARKER_NAME).is_file()
    # A demo workspace from an earlier run is emptied and reused.
    (fresh / "anime").mkdir()
    (fresh / "anime" / "old.mp4").write_bytes(b"x")
    prepare_workspace(fresh)
    assert sorted(p.name for p in fresh.iterdir()) == [MARKER_NAME]
    # So is one from a demo older than the marker, known by the header of its config.toml.
    older = tmp_path / "older"
    (older / "state").mkdir(parents=True)
    (older / "config.toml").write_text(CONFIG_TEMPLATE.format(base_url="http://x", root=older))
    prepare_workspace(older)
    assert sorted(p.name for p in older.iterdir()) == [MARKER_NAME]
    # An empty folder is fine: nothing can be lost.
    empty = tmp_path / "empty"
    empty.mkdir()
    prepare_workspace(empty)
    assert (empty / MARKER_NAME).is_file()
    # A file, or a folder with something in it and no marker, is refused and left alone.
    a_file = tmp_path / "a-file"
    a_file.write_text("x")
    with pytest.raises(DemoWorkspaceError):
        prepare_workspace(a_file)
    assert a_file.read_text() == "x"
    busy = tmp_path / "busy"
    (busy / "sub").mkdir(parents=True)
    (busy / "config.toml").write_text("[api]\n")  # someone's own config, not the demo's
    with pytest.raises(DemoWorkspaceError, match="MH_WATCHD_DEMO_DIR"):
        prepare_workspace(busy)
    assert (busy / "sub").is_dir()


# ---------------------------------------------------------------- 6. check and apprise


def env_without_apprise(setup: Setup) -> dict[str, str]:
    """The environment, with `apprise` hidden if installed, as on a host without the extra."""
    env = dict(setup.env)
    if importlib.util.find_spec("apprise") is not None:
        shadow = setup.root / "shadow"
        shadow.mkdir(exist_ok=True)
        (shadow / "apprise.py").write_text("raise ImportError('hidden by the test')\n")
        env["PYTHONPATH"] = str(shadow)
    return env


def test_check_reports_apprise_urls_without_the_apprise_package(setup: Setup) -> None:
    write_config(setup.root, '[notify]\napprise_urls = ["json://localhost/hook"]\n')
    env = env_without_apprise(setup)
    result = mh("check", "--offline", "-c", str(setup.config), env=env)
    assert result.returncode == 69, result.stdout + result.stderr
    assert "notify.apprise_urls" in result.stderr
    assert "pip install 'mh-watchd[apprise]'" in result.stderr
    assert "json://localhost" not in result.stderr  # a URL may carry a secret
    assert "Traceback" not in result.stderr
    write_config(setup.root)  # no apprise URLs: nothing to install
    assert mh("check", "--offline", "-c", str(setup.config), env=env).returncode == 0


def test_run_logs_an_error_at_start_for_apprise_urls_without_apprise(setup: Setup) -> None:
    write_config(setup.root, '[notify]\napprise_urls = ["json://localhost/hook"]\n')
    env = env_without_apprise(setup)
    env.pop("MH_TEST_TOKEN")  # so `run` stops right after its start-up checks (exit 78)
    result = mh("run", "-c", str(setup.config), env=env)
    assert result.returncode == 78
    output = result.stdout + result.stderr
    assert "config.missing_package" in output
    assert "mh-watchd[apprise]" in output
