"""Running as a service: sd_notify, reload, health and metrics, notifications, redaction."""

from __future__ import annotations

import http.server
import json
import signal
import socket
import threading
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import ClassVar

import httpx
import pytest

from mh_watchd.adapters.samples import synthesize_clip
from mh_watchd.core.jobs import JobState
from mh_watchd.emulator import EmulatorServer
from tests.conftest import wait_for
from tests.e2e.conftest import TOKEN, DaemonProcess, Workspace, all_done, read_jobs, wait_jobs

pytestmark = pytest.mark.slow


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


class NotifySocket:
    """A real NOTIFY_SOCKET datagram socket that records what the daemon sends."""

    def __init__(self, path: Path) -> None:
        self.path = path
        self.sock = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
        self.sock.bind(str(path))
        self.sock.settimeout(0.2)
        self.messages: list[str] = []
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._read, daemon=True)
        self._thread.start()

    def _read(self) -> None:
        while not self._stop.is_set():
            try:
                data = self.sock.recv(4096)
            except TimeoutError:
                continue
            except OSError:
                return
            self.messages.append(data.decode())

    def seen(self, prefix: str) -> bool:
        return any(line.startswith(prefix) for m in self.messages for line in m.splitlines())

    def close(self) -> None:
        self._stop.set()
        self._thread.join(2)
        self.sock.close()


@pytest.fixture
def notify_socket(tmp_path: Path) -> Iterator[NotifySocket]:
    sock = NotifySocket(tmp_path / "notify.sock")
    yield sock
    sock.close()


def test_systemd_notify_ready_status_watchdog_reload_and_stopping(
    workspace: Workspace,
    emu: EmulatorServer,
    run_daemon: Callable[..., DaemonProcess],
    daemon_env: dict[str, str],
    notify_socket: NotifySocket,
) -> None:
    ws = workspace
    ws.folder("anime", style={"art_style": "Comic"})
    env = dict(daemon_env, NOTIFY_SOCKET=str(notify_socket.path), WATCHDOG_USEC="1000000")
    proc = run_daemon(env)
    wait_for(lambda: notify_socket.seen("READY=1"), what="READY=1")
    wait_for(lambda: notify_socket.seen("WATCHDOG=1"), what="WATCHDOG=1")
    synthesize_clip(ws.inbox("anime") / "a.mp4", seconds=1.0)
    wait_jobs(ws.state_dir, all_done(1), proc=proc, what="a delivery")
    wait_for(lambda: notify_socket.seen("STATUS="), what="a STATUS line")
    proc.signal(signal.SIGHUP)
    wait_for(lambda: notify_socket.seen("RELOADING=1"), what="RELOADING=1")
    assert proc.stop() == 0
    wait_for(lambda: notify_socket.seen("STOPPING=1"), what="STOPPING=1")
    ready_index = next(i for i, m in enumerate(notify_socket.messages) if "READY=1" in m)
    stopping_index = next(i for i, m in enumerate(notify_socket.messages) if "STOPPING=1" in m)
    assert ready_index < stopping_index


def test_sighup_adds_a_folder_and_an_invalid_config_keeps_the_old_one(
    workspace: Workspace, emu: EmulatorServer, run_daemon: Callable[..., DaemonProcess]
) -> None:
    ws = workspace
    ws.folder("anime", style={"art_style": "Comic"})
    proc = run_daemon()
    wait_for(lambda: (ws.state_dir / "journal.sqlite3").exists(), what="the journal")
    # An invalid config: reported in full, the old one kept, the daemon still works.
    good = ws.config_path.read_text()
    ws.config_path.write_text(good + "\n[daemon2]\nnonsense = 1\n")
    proc.signal(signal.SIGHUP)
    wait_for(lambda: "config.reload_rejected" in proc.log_text(), what="the rejected reload")
    synthesize_clip(ws.inbox("anime") / "a.mp4", seconds=1.0)
    wait_jobs(ws.state_dir, all_done(1), proc=proc, what="work with the old config")
    # A valid config with a second folder takes effect without a restart.
    ws.folder("paint", style={"art_style": "Oil Painting"})
    ws.write_config()
    synthesize_clip(ws.inbox("paint") / "b.mp4", seconds=1.0)
    proc.signal(signal.SIGHUP)
    wait_jobs(ws.state_dir, all_done(2), proc=proc, what="the added folder's file")
    assert proc.stop() == 0
    assert (ws.outbox("paint") / "b.oil-painting.mp4").exists()
    assert "config.folder_added" in proc.log_text()


class Recorder(http.server.BaseHTTPRequestHandler):
    received: ClassVar[list[dict[str, object]]] = []

    def do_POST(self) -> None:
        length = int(self.headers.get("Content-Length", "0"))
        Recorder.received.append(json.loads(self.rfile.read(length)))
        self.send_response(204)
        self.end_headers()

    def log_message(self, format: str, *args: object) -> None:
        return


def test_health_metrics_and_webhook_notifications(
    workspace: Workspace, emu: EmulatorServer, run_daemon: Callable[..., DaemonProcess]
) -> None:
    Recorder.received = []
    hook = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Recorder)
    thread = threading.Thread(target=hook.serve_forever, daemon=True)
    thread.start()
    try:
        ws = workspace
        port = free_port()
        ws.extra_daemon = f'http_listen = "127.0.0.1:{port}"'
        ws.folder("anime", style={"art_style": "Comic"})
        cfg_text = ws.write_config().read_text().replace('http_listen = ""\n', "")
        cfg_text += (
            f'\n[notify]\nwebhook_url = "http://127.0.0.1:{hook.server_address[1]}/hook?key=s3cret"\n'
            'on = ["failed", "done"]\n'
        )
        ws.config_path.write_text(cfg_text)
        synthesize_clip(ws.inbox("anime") / "good.mp4", seconds=1.0)
        (ws.inbox("anime") / "bad.mp4").write_text("no video here " * 20)
        proc = run_daemon_keep_config(run_daemon, ws)
        base = f"http://127.0.0.1:{port}"
        wait_for(lambda: _get(base + "/healthz") is not None, what="/healthz answering")
        wait_jobs(
            ws.state_dir,
            lambda js: len(js) == 2 and all(j.is_terminal for j in js),
            proc=proc,
            what="one done and one failed",
        )
        health = _get(base + "/healthz")
        assert health is not None and health.status_code == 200
        assert health.json()["status"] == "ok"
        metrics = _get(base + "/metrics")
        assert metrics is not None
        text = metrics.text
        assert 'mh_watchd_api_requests_total{endpoint="create",status="200"}' in text
        assert "mh_watchd_bytes_uploaded_total" in text
        assert 'mh_watchd_credits_charged_total{folder="anime"}' in text
        wait_for(lambda: len(Recorder.received) >= 2, what="two webhook posts")
        events = sorted(str(r["event"]) for r in Recorder.received)
        assert events == ["done", "failed"]
        failed = next(r for r in Recorder.received if r["event"] == "failed")
        assert failed["file"] == "bad.mp4"
        done = next(r for r in Recorder.received if r["event"] == "done")
        assert done["output"]
        assert proc.stop() == 0
        log_text = proc.log_text()
        assert "s3cret" not in log_text
        assert TOKEN not in log_text
        assert {j.state for j in read_jobs(ws.state_dir)} == {JobState.DONE, JobState.FAILED}
    finally:
        hook.shutdown()
        hook.server_close()
        thread.join(2)


def run_daemon_keep_config(
    run_daemon: Callable[..., DaemonProcess], ws: Workspace
) -> DaemonProcess:
    """Start the daemon without rewriting the hand-edited config file."""
    text = ws.config_path.read_text()
    original = ws.write_config

    def keep() -> Path:
        ws.config_path.write_text(text)
        return ws.config_path

    ws.write_config = keep  # type: ignore[method-assign]
    try:
        return run_daemon()
    finally:
        ws.write_config = original  # type: ignore[method-assign]


def _get(url: str) -> httpx.Response | None:
    try:
        return httpx.get(url, timeout=2.0)
    except httpx.HTTPError:
        return None
