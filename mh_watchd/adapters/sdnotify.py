"""The sd_notify protocol: datagrams to $NOTIFY_SOCKET telling systemd how the daemon is doing.

No libsystemd: one AF_UNIX datagram per message, sent from a short-lived socket so there is
nothing to close. Outside systemd (no NOTIFY_SOCKET) every call is a no-op that returns False.
Sending never raises: a lost notification must not take the daemon down.
"""

from __future__ import annotations

import os
import socket
import time
from collections.abc import Mapping

_SEND_TIMEOUT_SECONDS = 2.0


class SystemdNotifier:
    """Send READY/RELOADING/STOPPING/STATUS/WATCHDOG messages to the service manager."""

    def __init__(self, environ: Mapping[str, str] = os.environ) -> None:
        raw = environ.get("NOTIFY_SOCKET", "")
        address: str | None = None
        if raw.startswith("@") and len(raw) > 1:
            # An abstract socket: the name starts with a NUL byte instead of '@'.
            address = "\0" + raw[1:]
        elif raw.startswith("/"):
            address = raw
        self._address = address
        self._watchdog_usec = environ.get("WATCHDOG_USEC", "")
        self._watchdog_pid = environ.get("WATCHDOG_PID", "")

    @property
    def enabled(self) -> bool:
        """True when NOTIFY_SOCKET names a usable socket address."""
        return self._address is not None

    def send(self, *assignments: str) -> bool:
        """Send `KEY=value` lines as one datagram; True when it was sent, False otherwise."""
        if self._address is None or not assignments:
            return False
        message = "\n".join(assignments).encode("utf-8")
        try:
            with socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM) as sock:
                # A full receive queue would block a datagram send; never stall the main loop.
                sock.settimeout(_SEND_TIMEOUT_SECONDS)
                sock.connect(self._address)
                sock.send(message)
        except OSError:
            return False
        return True

    def ready(self) -> bool:
        """Tell systemd start-up is complete (READY=1); True when sent."""
        return self.send("READY=1")

    def reloading(self) -> bool:
        """Tell systemd a reload began (RELOADING=1 with MONOTONIC_USEC); True when sent.

        systemd >= 253 requires MONOTONIC_USEC in the same datagram to match the reload to
        its SIGHUP; older versions ignore the extra field. Send ready() when the reload ends.
        """
        usec = time.clock_gettime_ns(time.CLOCK_MONOTONIC) // 1000
        return self.send("RELOADING=1", f"MONOTONIC_USEC={usec}")

    def stopping(self) -> bool:
        """Tell systemd an orderly shutdown began (STOPPING=1); True when sent."""
        return self.send("STOPPING=1")

    def status(self, text: str) -> bool:
        """Set the one-line status shown by `systemctl status`; True when sent."""
        # A newline would start a new assignment in the protocol.
        one_line = " ".join(text.split())
        return self.send(f"STATUS={one_line}")

    def watchdog(self) -> bool:
        """Ping the service watchdog (WATCHDOG=1); True when sent."""
        return self.send("WATCHDOG=1")

    def watchdog_interval_seconds(self) -> float | None:
        """Seconds between watchdog pings (half of WATCHDOG_USEC), or None when not asked for.

        None too when WATCHDOG_PID names another process (the variable was inherited).
        """
        if self._watchdog_pid:
            try:
                if int(self._watchdog_pid) != os.getpid():
                    return None
            except ValueError:
                return None
        try:
            usec = int(self._watchdog_usec)
        except ValueError:
            return None
        if usec <= 0:
            return None
        return usec / 2_000_000
