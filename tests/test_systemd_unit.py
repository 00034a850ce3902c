"""The systemd unit: the directives the daemon relies on, and its hardening score."""

from __future__ import annotations

import re
import shutil
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest

from mh_watchd.core.config import DaemonConfig

UNIT = Path(__file__).resolve().parent.parent / "systemd" / "mh-watchd.service"

Unit = dict[str, dict[str, list[str]]]


def parse_unit(text: str) -> Unit:
    """Sections -> key -> every value given (a key may repeat); comments and blanks skipped."""
    unit: Unit = {}
    section: dict[str, list[str]] | None = None
    for number, raw in enumerate(text.splitlines(), start=1):
        line = raw.strip()
        if not line or line.startswith(("#", ";")):
            continue
        assert not line.endswith("\\"), f"line {number}: keep directives on one line"
        if line.startswith("[") and line.endswith("]"):
            section = unit.setdefault(line[1:-1], {})
            continue
        key, sep, value = line.partition("=")
        assert sep and section is not None, f"line {number}: not a directive: {raw!r}"
        section.setdefault(key.strip(), []).append(value.strip())
    return unit


@pytest.fixture(scope="module")
def unit() -> Unit:
    return parse_unit(UNIT.read_text(encoding="utf-8"))


def _one(unit: Unit, section: str, key: str) -> str:
    values = unit[section].get(key)
    assert values, f"[{section}] {key}= is missing"
    return values[-1]


REQUIRED_SERVICE = {
    "Type": "notify",
    "NotifyAccess": "main",
    "WatchdogSec": "60",
    "Restart": "on-failure",
    "RestartPreventExitStatus": "78",
    "ExecReload": "/bin/kill -HUP $MAINPID",
    "ExecStart": "/usr/local/bin/mh-watchd run -c /etc/mh-watchd/config.toml",
    "StateDirectory": "mh-watchd",
    "User": "mh-watchd",
    "Group": "mh-watchd",
    "LoadCredential": "magic-hour-token:/etc/mh-watchd/token",
    "KillMode": "mixed",
    "UMask": "0002",
    "ProtectSystem": "strict",
    "ProtectHome": "yes",
    "NoNewPrivileges": "yes",
    "PrivateTmp": "yes",
    "PrivateDevices": "yes",
    "ProtectKernelTunables": "yes",
    "ProtectKernelModules": "yes",
    "ProtectKernelLogs": "yes",
    "ProtectControlGroups": "yes",
    "ProtectClock": "yes",
    "ProtectHostname": "yes",
    "ProtectProc": "invisible",
    "RestrictNamespaces": "yes",
    "RestrictRealtime": "yes",
    "RestrictSUIDSGID": "yes",
    "LockPersonality": "yes",
    "MemoryDenyWriteExecute": "yes",
    "CapabilityBoundingSet": "",
    "AmbientCapabilities": "",
    "SystemCallArchitectures": "native",
    "RestrictAddressFamilies": "AF_UNIX AF_INET AF_INET6",
}


@pytest.mark.parametrize(("key", "expected"), sorted(REQUIRED_SERVICE.items()))
def test_service_section_sets_required_directive(unit: Unit, key: str, expected: str) -> None:
    assert _one(unit, "Service", key) == expected


def test_unit_waits_for_the_network_and_installs_for_multi_user(unit: Unit) -> None:
    assert "network-online.target" in " ".join(unit["Unit"]["After"])
    assert "network-online.target" in " ".join(unit["Unit"]["Wants"])
    assert _one(unit, "Install", "WantedBy") == "multi-user.target"


def test_syscall_filter_starts_from_system_service_and_keeps_chown(unit: Unit) -> None:
    filters = unit["Service"]["SystemCallFilter"]
    assert filters[0] == "@system-service"
    assert "~@privileged @resources" in filters
    # chown must come back after @privileged is removed: the order of the lines matters.
    assert filters.index("@chown") > filters.index("~@privileged @resources")


def test_timeouts_and_writable_paths_are_present(unit: Unit) -> None:
    # systemd must not SIGKILL the daemon while it still waits for steps in flight.
    grace = DaemonConfig().stop_grace_seconds
    assert int(_one(unit, "Service", "TimeoutStopSec")) >= grace + 15
    # Optional ("-") so a missing NAS path does not stop the service from starting.
    assert all(v.startswith("-/") for v in unit["Service"]["ReadWritePaths"])
    # ProcSubset=pid would hide /proc/sys/fs/inotify/max_user_watches from the daemon.
    assert "ProcSubset" not in unit["Service"]


def test_comments_point_users_at_what_they_edit() -> None:
    text = UNIT.read_text(encoding="utf-8")
    for hint in ("EDIT: the path to the console script", "#RequiresMountsFor=", "ProtectHome="):
        assert hint in text
    assert text.count("EDIT:") >= 4


def test_parse_unit_keeps_repeated_keys_in_order() -> None:
    parsed = parse_unit("[Service]\n# c\nA=1\nA=2\n; d\nB=\n")
    assert parsed == {"Service": {"A": ["1", "2"], "B": [""]}}


def test_systemd_analyze_rates_the_unit_exposure_at_most_2() -> None:
    analyze = shutil.which("systemd-analyze")
    if analyze is None:
        # No systemd tools here: the directive tests above are the whole check.
        assert _one(parse_unit(UNIT.read_text(encoding="utf-8")), "Service", "Type") == "notify"
        return
    result = subprocess.run(
        [analyze, "security", "--offline=true", "--threshold=20", str(UNIT)],
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    output = result.stdout + result.stderr
    match = re.search(r"Overall exposure level for \S+: (\d+(?:\.\d+)?)", output)
    assert match, output
    assert float(match.group(1)) <= 2.0, output
    assert result.returncode == 0, output


def test_memory_deny_write_execute_is_safe_for_pyav(tmp_path: Path) -> None:
    """Run PyAV encode + decode with W^X enforced by the kernel (prctl PR_SET_MDWE, Linux 6.3+).

    systemd's MemoryDenyWriteExecute= refuses the same mappings with seccomp; a codec that
    needed a JIT would crash here first.
    """
    script = textwrap.dedent(
        f"""
        import ctypes, mmap, pathlib, sys
        libc = ctypes.CDLL(None, use_errno=True)
        if libc.prctl(65, 1, 0, 0, 0) != 0:  # PR_SET_MDWE, PR_MDWE_REFUSE_EXEC_GAIN
            print("NO-MDWE")
            sys.exit(0)
        try:
            mmap.mmap(-1, 4096, prot=mmap.PROT_READ | mmap.PROT_WRITE | mmap.PROT_EXEC)
            print("WX-ALLOWED")
            sys.exit(1)
        except OSError:
            pass
        import av, ssl
        from mh_watchd.adapters.samples import synthesize_clip
        clip = synthesize_clip(pathlib.Path({str(tmp_path / "c.mp4")!r}), seconds=1.0, fps=12)
        with av.open(str(clip)) as container:
            frames = sum(1 for _ in container.decode(video=0))
        ssl.create_default_context()
        print("FRAMES", frames)
        """
    )
    result = subprocess.run(
        [sys.executable, "-c", script],
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
        cwd=UNIT.parent.parent,
    )
    if result.stdout.strip() == "NO-MDWE":
        pytest.skip("this kernel has no PR_SET_MDWE (Linux < 6.3)")
    assert result.returncode == 0, result.stdout + result.stderr
    assert result.stdout.split() == ["FRAMES", "12"], result.stdout + result.stderr
