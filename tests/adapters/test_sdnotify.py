"""sdnotify: real AF_UNIX datagram sockets stand in for systemd's notification socket."""

from __future__ import annotations

import os
import socket
import time
import uuid
from collections.abc import Iterator
from pathlib import Path

import pytest

from mh_watchd.adapters.sdnotify import SystemdNotifier


@pytest.fixture
def notify_socket(tmp_path: Path) -> Iterator[tuple[socket.socket, str]]:
    path = tmp_path / "notify.sock"
    sock = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
    sock.bind(str(path))
    sock.settimeout(2.0)
    try:
        yield sock, str(path)
    finally:
        sock.close()


def _receive(sock: socket.socket) -> list[str]:
    return sock.recv(4096).decode("utf-8").split("\n")


def test_messages_arrive_as_datagrams_on_the_notify_socket(
    notify_socket: tuple[socket.socket, str],
) -> None:
    sock, path = notify_socket
    notifier = SystemdNotifier({"NOTIFY_SOCKET": path})
    assert notifier.enabled

    assert notifier.ready() is True
    assert _receive(sock) == ["READY=1"]
    assert notifier.status("2 folders watched,\n1 job rendering")
    assert _receive(sock) == ["STATUS=2 folders watched, 1 job rendering"]
    assert notifier.watchdog()
    assert _receive(sock) == ["WATCHDOG=1"]
    assert notifier.stopping()
    assert _receive(sock) == ["STOPPING=1"]


def test_reloading_carries_the_monotonic_clock_in_the_same_datagram(
    notify_socket: tuple[socket.socket, str],
) -> None:
    sock, path = notify_socket
    before = time.clock_gettime_ns(time.CLOCK_MONOTONIC) // 1000
    assert SystemdNotifier({"NOTIFY_SOCKET": path}).reloading()
    after = time.clock_gettime_ns(time.CLOCK_MONOTONIC) // 1000
    first, second = _receive(sock)
    assert first == "RELOADING=1"
    key, _, value = second.partition("=")
    assert key == "MONOTONIC_USEC"
    assert before <= int(value) <= after


def test_an_abstract_socket_name_with_at_sign_works() -> None:
    name = f"mh-watchd-test-{uuid.uuid4().hex}"
    with socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM) as sock:
        sock.bind("\0" + name)
        sock.settimeout(2.0)
        notifier = SystemdNotifier({"NOTIFY_SOCKET": "@" + name})
        assert notifier.ready()
        assert _receive(sock) == ["READY=1"]


def test_without_notify_socket_every_call_is_a_quiet_no_op() -> None:
    notifier = SystemdNotifier({})
    assert not notifier.enabled
    results = [
        notifier.ready(),
        notifier.reloading(),
        notifier.status("x"),
        notifier.watchdog(),
        notifier.stopping(),
    ]
    assert results == [False] * 5
    assert not SystemdNotifier({"NOTIFY_SOCKET": "relative/path"}).enabled


def test_a_socket_nobody_listens_on_returns_false_instead_of_raising(tmp_path: Path) -> None:
    notifier = SystemdNotifier({"NOTIFY_SOCKET": str(tmp_path / "gone.sock")})
    assert notifier.enabled
    assert notifier.ready() is False
    assert notifier.watchdog() is False


def test_watchdog_interval_is_half_of_watchdog_usec_for_this_process() -> None:
    env = {"NOTIFY_SOCKET": "/run/systemd/notify", "WATCHDOG_USEC": "60000000"}
    assert SystemdNotifier(env).watchdog_interval_seconds() == 30.0
    mine = {**env, "WATCHDOG_PID": str(os.getpid())}
    assert SystemdNotifier(mine).watchdog_interval_seconds() == 30.0


@pytest.mark.parametrize(
    "extra",
    [
        {"WATCHDOG_PID": "1"},  # inherited from a parent: not ours to feed
        {"WATCHDOG_PID": "not-a-pid"},
        {"WATCHDOG_USEC": "0"},
        {"WATCHDOG_USEC": "sixty"},
        {"WATCHDOG_USEC": ""},
    ],
)
def test_watchdog_interval_is_none_when_not_meant_for_us(extra: dict[str, str]) -> None:
    env = {"NOTIFY_SOCKET": "/run/systemd/notify", "WATCHDOG_USEC": "60000000", **extra}
    assert SystemdNotifier(env).watchdog_interval_seconds() is None
