"""The image's entrypoint pieces (mh_watchd.container), without podman: they run everywhere."""

from __future__ import annotations

import http.server
import os
import re
import threading
from collections.abc import Iterator
from pathlib import Path

import pytest

from mh_watchd import container
from mh_watchd.adapters import config_file
from mh_watchd.container import ContainerError, Identity

REPO = Path(__file__).resolve().parents[2]
ME = Identity(uid=os.getuid(), gid=os.getgid(), umask=0o002)


def test_identity_defaults_and_refusals() -> None:
    assert container.identity_from({}) == Identity(1000, 1000, 0o002)
    assert container.identity_from({"PUID": "1026", "PGID": "100", "UMASK": "022"}) == Identity(
        1026, 100, 0o022
    )
    for bad in ({"PUID": "bob"}, {"PGID": "-1"}, {"UMASK": "9"}, {"UMASK": "1777"}):
        with pytest.raises(ContainerError, match=next(iter(bad))):
            container.identity_from(bad)


def test_set_account_replaces_an_earlier_start_and_keeps_the_rest(tmp_path: Path) -> None:
    etc = tmp_path / "etc"
    etc.mkdir()
    (etc / "passwd").write_text(
        "root:x:0:0:root:/root:/bin/bash\nmhwatchd:x:1000:1000::/config:/usr/sbin/nologin\n"
    )
    (etc / "group").write_text("root:x:0:\nusers:x:100:\nmhwatchd:x:1000:\n")
    container.set_account(tmp_path, Identity(1026, 100, 0o002))
    assert (etc / "passwd").read_text().splitlines() == [
        "root:x:0:0:root:/root:/bin/bash",
        "mhwatchd:x:1026:100:mh-watchd:/config:/usr/sbin/nologin",
    ]
    # A gid another group already has (Synology's users = 100) is shared, as groupmod -o does.
    assert (etc / "group").read_text().splitlines() == [
        "root:x:0:",
        "users:x:100:",
        "mhwatchd:x:100:",
    ]


def test_the_starter_config_is_valid_and_points_inside_the_container(tmp_path: Path) -> None:
    config = tmp_path / "config" / "config.toml"
    data = tmp_path / "data"
    data.mkdir()
    assert container.write_starter(config, Identity(ME.uid, ME.gid, 0o022), data)
    assert config.stat().st_mode & 0o777 == 0o644
    parsed = config_file.load(config)
    assert parsed.warnings == ()
    assert str(parsed.daemon.state_dir) == "/state"
    assert parsed.daemon.http_listen == "127.0.0.1:9309"
    assert parsed.daemon.umask == 0o022  # the container's UMASK at first start
    assert parsed.daemon.observer == "auto"
    assert [(str(f.inbox), str(f.outbox)) for f in parsed.folders] == [
        ("/data/magic-hour/in", "/data/magic-hour/out")
    ]
    # /data here is no mount point: nothing is made in it. A second start leaves the file be.
    assert list(data.iterdir()) == []
    config.write_text("# mine\n")
    assert not container.write_starter(config, ME, data)
    assert config.read_text() == "# mine\n"


def test_a_token_file_becomes_the_credential_the_daemon_reads(tmp_path: Path) -> None:
    secret = tmp_path / "secret"
    secret.write_text("  key-from-a-file\n")
    environ = {"MAGIC_HOUR_API_KEY_FILE": str(secret), "MAGIC_HOUR_API_KEY": "from-env"}
    assert container.install_token(environ, ME, tmp_path / "run") == str(secret)
    copied = Path(environ["CREDENTIALS_DIRECTORY"]) / "magic-hour-token"
    assert copied.stat().st_mode & 0o777 == 0o400
    starter = tmp_path / "config.toml"
    starter.write_text(container.STARTER_CONFIG.replace("{umask}", "0002"))
    api = config_file.load(starter).api
    assert config_file.read_token(api, environ) == "key-from-a-file"
    # A user's own CREDENTIALS_DIRECTORY is left alone; a named file that is missing is an error.
    assert container.install_token({"CREDENTIALS_DIRECTORY": "/x"}, ME, tmp_path / "r2") is None
    with pytest.raises(ContainerError, match="no such file"):
        container.install_token({"MAGIC_HOUR_API_KEY_FILE": "/nope"}, ME, tmp_path / "r3")


def test_the_daemon_runs_as_the_user_with_no_privileges_left() -> None:
    command = container.daemon_command([], Path("/config/config.toml"))
    assert command == ["/opt/mh-watchd/bin/mh-watchd", "run", "-c", "/config/config.toml"]
    assert container.daemon_command(["check", "--offline"], Path("/c"))[1:] == [
        "check",
        "--offline",
    ]
    argv = container.setpriv_argv(Identity(1234, 1234, 0o002), command)
    assert argv[:6] == [
        "setpriv",
        "--reuid=1234",
        "--regid=1234",
        "--clear-groups",
        "--no-new-privs",
        "--",
    ]


class _Health(http.server.BaseHTTPRequestHandler):
    status = 200

    def do_GET(self) -> None:
        self.send_response(self.status)
        self.end_headers()
        self.wfile.write(b'{"ok": true}')

    def log_message(self, *args: object) -> None:
        pass


@pytest.fixture
def health_server() -> Iterator[http.server.HTTPServer]:
    server = http.server.HTTPServer(("127.0.0.1", 0), _Health)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        yield server
    finally:
        server.shutdown()
        server.server_close()
        thread.join()


def test_healthcheck_asks_the_configured_listen_address(
    tmp_path: Path, health_server: http.server.HTTPServer
) -> None:
    config = tmp_path / "config.toml"
    port = health_server.server_address[1]
    config.write_text(f'[daemon]\nhttp_listen = "0.0.0.0:{port}"\n')
    assert container.health_url(config) == f"http://127.0.0.1:{port}/healthz"
    assert container.healthcheck(config) == 0
    _Health.status = 503
    try:
        assert container.healthcheck(config) == 1
    finally:
        _Health.status = 200
    config.write_text('[daemon]\nhttp_listen = ""\n')
    assert container.healthcheck(config) == 1
    assert container.health_url(tmp_path / "missing.toml") == "http://127.0.0.1:9309/healthz"


def test_containerfile_and_compose_keep_their_promises() -> None:
    text = (REPO / "Containerfile").read_text()
    assert "ARG BASE=python:3.12-slim" in text
    assert re.search(r"pip install [^\n]*--no-index", text)
    for needed in ("HEALTHCHECK", "STOPSIGNAL SIGTERM", "org.opencontainers.image.title"):
        assert needed in text
    compose = (REPO / "compose.yaml").read_text()
    grace = re.search(r"stop_grace_period: (\d+)s", compose)
    assert grace and int(grace.group(1)) > 60  # above daemon.stop_grace_seconds' default


def test_an_explicit_umask_that_the_config_overrides_is_named(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    config = tmp_path / "config.toml"
    config.write_text('[daemon]\numask = "0022"\n')
    container.warn_umask_mismatch(config, Identity(1, 1, 0o002), {"UMASK": "002"})
    assert "daemon.umask" in capsys.readouterr().err
    container.warn_umask_mismatch(config, Identity(1, 1, 0o002), {})  # UMASK unset: quiet
    config.write_text("[daemon]\n")  # the daemon's default, 0002, matches
    container.warn_umask_mismatch(config, Identity(1, 1, 0o002), {"UMASK": "002"})
    assert capsys.readouterr().err == ""
