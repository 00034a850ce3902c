"""`mh-watchd web` as a subprocess: it serves the journal read-only, stops cleanly on SIGTERM,
and refuses what it must (no journal yet: 69; an open address without a token: 78)."""

from __future__ import annotations

import os
import signal
import subprocess
from pathlib import Path

import httpx

from tests.e2e.conftest import SCRIPT

WEB_TOKEN = "cli-web-token-0123456789"


def write_config(tmp_path: Path, daemon_extra: str = "") -> Path:
    inbox, outbox = tmp_path / "in", tmp_path / "out"
    inbox.mkdir(exist_ok=True)
    outbox.mkdir(exist_ok=True)
    config = tmp_path / "config.toml"
    config.write_text(
        f'[daemon]\nstate_dir = "{tmp_path / "state"}"\n{daemon_extra}\n'
        f'[[folder]]\nname = "anime"\ninbox = "{inbox}"\noutbox = "{outbox}"\n'
        '[folder.style]\nart_style = "Oil Painting"\n'
    )
    return config


def run(*args: str) -> subprocess.CompletedProcess[str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("MH_WATCHD")}
    return subprocess.run([SCRIPT, *args], capture_output=True, text=True, timeout=30, env=env)


def test_web_without_a_journal_exits_69_saying_so(tmp_path: Path) -> None:
    result = run("web", "-c", str(write_config(tmp_path)), "--listen", "127.0.0.1:0")
    assert result.returncode == 69, result.stderr
    assert "has the daemon run yet?" in result.stderr


def test_web_on_an_open_address_without_a_token_exits_78_saying_what_to_do(
    tmp_path: Path,
) -> None:
    result = run("web", "-c", str(write_config(tmp_path)), "--listen", "0.0.0.0:0")
    assert result.returncode == 78
    assert "daemon.http_token" in result.stderr and "openssl rand" in result.stderr


def test_a_config_with_an_open_address_and_no_token_is_a_config_error(tmp_path: Path) -> None:
    config = write_config(tmp_path, 'http_listen = "0.0.0.0:9309"')
    result = run("check", "-c", str(config), "--offline")
    assert result.returncode == 78
    assert "daemon.http_token: required because http_listen '0.0.0.0:9309'" in result.stderr


def test_web_serves_the_journal_read_only_and_stops_on_sigterm(tmp_path: Path) -> None:
    from mh_watchd.adapters.journal import Journal

    Journal.open(tmp_path / "state").close()  # as a daemon that has run once leaves it
    config = write_config(tmp_path, f'http_token = "{WEB_TOKEN}"')
    proc = subprocess.Popen(
        [SCRIPT, "web", "-c", str(config), "--listen", "0.0.0.0:0"],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    try:
        assert proc.stdout is not None
        url = proc.stdout.readline().split()[0]
        port = url.rsplit(":", 1)[1].strip("/")
        base = f"http://127.0.0.1:{port}"
        bearer = {"Authorization": f"Bearer {WEB_TOKEN}"}
        with httpx.Client(base_url=base, timeout=5.0) as http:
            assert http.get("/api/status").status_code == 401
            status = http.get("/api/status", headers=bearer)
            assert status.status_code == 200 and status.json()["daemon"]["running"] is False
            retry = http.post("/api/retry", json={"failed": True}, headers=bearer)
            assert retry.status_code == 409 and "read-only" in retry.json()["error"]
            assert http.get("/healthz", headers=bearer).status_code == 404  # the daemon has it
    finally:
        proc.send_signal(signal.SIGTERM)
        code = proc.wait(10)
        stderr = proc.stderr.read() if proc.stderr else ""
        for stream in (proc.stdout, proc.stderr):
            if stream is not None:
                stream.close()
    assert code == 0
    assert WEB_TOKEN not in stderr
