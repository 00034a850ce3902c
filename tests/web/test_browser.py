"""The web page in a real browser (Playwright driving Debian's chromium) against a real
`mh-watchd run` and the emulator: a delivered, a held and a failed job on the page; Retry on
the failed one, once its cause is gone, gets it delivered; off loopback the token is required
(login form, wrong token refused, right token in, a POST from another origin refused); then
`mh-watchd web` serves the same journal read-only. Screenshots land in tests/web/artifacts/.
"""

from __future__ import annotations

import os
import signal
import socket
import subprocess
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest

from mh_watchd.adapters.samples import synthesize_clip
from mh_watchd.core.jobs import HoldReason, Job, JobState
from mh_watchd.emulator import EmulatorServer
from tests.conftest import wait_for
from tests.e2e.conftest import (
    SCRIPT,
    DaemonProcess,
    Workspace,
    daemon_env,
    emu,
    run_daemon,
    wait_jobs,
    workspace,
)

__all__ = ["daemon_env", "emu", "run_daemon", "workspace"]  # fixtures used from the e2e harness

CHROMIUM = os.environ.get("MH_WATCHD_CHROMIUM", "/usr/bin/chromium")
CHROMIUM_ARGS = [
    "--no-sandbox",
    "--disable-gpu",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
    "--no-first-run",
]
ARTIFACTS = Path(__file__).parent / "artifacts"
WEB_TOKEN = "browser-test-token-0123456789"
DESKTOP = {"width": 1280, "height": 900}
PHONE = {"width": 390, "height": 844}

pytestmark = pytest.mark.slow


def _missing() -> str | None:
    try:
        import playwright.sync_api  # noqa: F401
    except ImportError:
        return "the playwright Python package is missing (pip install playwright)"
    if not (os.path.isfile(CHROMIUM) and os.access(CHROMIUM, os.X_OK)):
        return f"chromium is missing at {CHROMIUM} (apt-get install chromium)"
    return None


@pytest.fixture
def browser() -> Iterator[Any]:
    """A headless chromium, or a skip naming what this machine lacks."""
    missing = _missing()
    if missing:
        pytest.skip(f"browser test of the web page: {missing}")
    from playwright.sync_api import sync_playwright

    with sync_playwright() as pw:
        chromium = pw.chromium.launch(executable_path=CHROMIUM, args=CHROMIUM_ARGS)
        try:
            yield chromium
        finally:
            chromium.close()


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def screenshot(page: Any, name: str) -> Path:
    ARTIFACTS.mkdir(exist_ok=True)
    path = ARTIFACTS / f"{name}.png"
    page.screenshot(path=str(path), full_page=True)
    print(f"screenshot: {path}")
    return path


def one(jobs: list[Job], name: str) -> Job:
    return next(j for j in jobs if j.rel_path == name)


def _three_jobs(ws: Workspace, emu: EmulatorServer, proc: DaemonProcess) -> dict[str, Job]:
    """delivered.mp4 done, failed.mp4 failed (422 at create), held.mp4 held (500 at create)."""
    inbox = ws.inbox("anime")
    synthesize_clip(inbox / "delivered.mp4", seconds=1.0)
    wait_jobs(ws.state_dir, lambda js: one(js, "delivered.mp4").is_terminal, proc=proc)
    emu.set_faults({"rules": [{"route": "create", "fault": "status", "status": 422}]})
    synthesize_clip(inbox / "failed.mp4", seconds=1.0)
    wait_jobs(
        ws.state_dir,
        lambda js: any(j.rel_path == "failed.mp4" and j.state is JobState.FAILED for j in js),
        proc=proc,
        what="failed.mp4 failed",
    )
    emu.set_faults({"rules": [{"route": "create", "fault": "status", "status": 500}]})
    synthesize_clip(inbox / "held.mp4", seconds=1.0)
    jobs = wait_jobs(
        ws.state_dir,
        lambda js: any(j.rel_path == "held.mp4" and j.state is JobState.HELD for j in js),
        proc=proc,
        what="held.mp4 held",
    )
    emu.set_faults({"rules": []})  # the cause of the failure is gone
    found = {name: one(jobs, name) for name in ("delivered.mp4", "failed.mp4", "held.mp4")}
    assert found["delivered.mp4"].state is JobState.DONE
    assert found["held.mp4"].hold_reason is HoldReason.AMBIGUOUS_CREATE
    return found


def _log_in(page: Any, base: str) -> None:
    """Off loopback: the page is a login form; a wrong token fails; the right one lets in."""
    response = page.goto(base + "/")
    assert response.status == 401
    assert page.locator("input[type=password]").count() == 1
    assert "held.mp4" not in page.content()
    screenshot(page, "login")
    page.fill("input[name=token]", "not-the-token-at-all")
    page.click("button[type=submit]")
    assert "not the token" in page.content()
    page.fill("input[name=token]", WEB_TOKEN)
    page.click("button[type=submit]")
    page.wait_for_selector("#failed")
    assert WEB_TOKEN not in page.content()


def _cross_site_post_is_refused(page: Any, base: str, failed_id: int) -> None:
    cookies = {c["name"]: c["value"] for c in page.context.cookies()}
    assert cookies, "the login set no cookie"
    cookie = next(c for c in page.context.cookies())
    assert cookie["httpOnly"] and cookie["sameSite"] == "Strict"
    assert WEB_TOKEN not in cookie["value"]
    with httpx.Client(base_url=base, cookies=cookies, timeout=5.0) as http:
        evil = http.post(
            "/retry", data={"job_id": str(failed_id)}, headers={"Origin": "http://evil.example"}
        )
        assert evil.status_code == 403
        bare = http.post("/retry", data={"job_id": str(failed_id)})
        assert bare.status_code == 403  # no Origin, no Referer: not a page of ours
    with httpx.Client(base_url=base, timeout=5.0) as http:
        api = http.get("/api/status")
        assert api.status_code == 401
        api = http.get("/api/status", headers={"Authorization": f"Bearer {WEB_TOKEN}"})
        assert api.status_code == 200 and api.json()["failed"][0]["id"] == failed_id
        assert http.get("/healthz").status_code == 200  # no token for health checks


def _read_only_web(ws: Workspace, env: dict[str, str], browser: Any) -> None:
    """`mh-watchd web` on loopback, daemon stopped: no login, Retry off, says why."""
    port = free_port()
    ws.extra_daemon = f'http_listen = "127.0.0.1:{port}"'  # no token: loopback only
    ws.write_config()
    proc = subprocess.Popen(
        [SCRIPT, "web", "-c", str(ws.config_path)],
        env=env,
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
    )
    try:
        assert proc.stdout is not None
        assert "(read-only)" in proc.stdout.readline()
        page = browser.new_page(viewport=PHONE, color_scheme="dark")
        page.goto(f"http://127.0.0.1:{port}/")
        text = page.content()
        assert "the daemon is not running" in text
        assert page.locator("form[action='/retry']").count() == 0
        assert page.locator("button:disabled").count() >= 1
        screenshot(page, "phone-dark-read-only")
        page.close()
    finally:
        proc.send_signal(signal.SIGTERM)
        code = proc.wait(10)
        if proc.stdout is not None:
            proc.stdout.close()
    assert code == 0


def test_page_shows_delivered_held_failed_and_retry_delivers_the_failed_one(
    workspace: Workspace,
    emu: EmulatorServer,
    run_daemon: Callable[..., DaemonProcess],
    daemon_env: dict[str, str],
    browser: Any,
) -> None:
    ws = workspace
    port = free_port()
    ws.extra_daemon = f'http_listen = "0.0.0.0:{port}"\nhttp_token = "{WEB_TOKEN}"'
    ws.folder("anime", style={"art_style": "Oil Painting"})
    proc = run_daemon()
    base = f"http://127.0.0.1:{port}"
    jobs = _three_jobs(ws, emu, proc)
    failed_id = jobs["failed.mp4"].id
    assert failed_id is not None

    page = browser.new_page(viewport=DESKTOP)
    _log_in(page, base)
    for name in ("delivered.mp4", "held.mp4", "failed.mp4"):
        assert page.locator(f"text={name}").count() >= 1, name
    assert "ambiguous_create" in page.locator("#held").inner_text()
    failed_text = page.locator("#failed").inner_text()
    assert "failed.mp4.error.json" in failed_text  # the report's path, its text in <details>
    recent = page.locator("#recent").inner_text()
    assert "delivered.oil-painting.mp4" in recent
    screenshot(page, "desktop")
    phone = browser.new_page(viewport=PHONE, is_mobile=True, device_scale_factor=2)
    phone.context.add_cookies(page.context.cookies())
    phone.goto(base + "/")
    phone.wait_for_selector("#failed")
    width = phone.evaluate("document.documentElement.scrollWidth")
    assert width <= PHONE["width"], f"the page is {width}px wide on a {PHONE['width']}px phone"
    screenshot(phone, "phone")
    phone.close()

    _cross_site_post_is_refused(page, base, failed_id)

    row = page.locator("#failed li", has_text="failed.mp4")
    row.locator("button", has_text="Retry").click()
    page.wait_for_url("**/?retried=1")
    assert "Retry requested for 1 job(s)" in page.content()
    wait_jobs(
        ws.state_dir,
        lambda js: any(j.id == failed_id and j.state is JobState.DONE for j in js),
        proc=proc,
        timeout_seconds=60,
        what="the retried job delivered",
    )
    page.goto(base + "/")
    wait_for(
        lambda: "failed.oil-painting.mp4" in page.locator("#recent").inner_text(),
        what="the retried job among recent deliveries",
    )
    assert page.locator("#failed li").count() == 0
    screenshot(page, "desktop-after-retry")
    page.close()
    assert proc.stop() == 0
    assert WEB_TOKEN not in proc.log_text()  # never logged

    _read_only_web(ws, daemon_env, browser)
