"""A Magic Hour API emulator on loopback: same routes, bodies, codes and headers as the service.

For tests, benchmarks, the demo, and rehearsing a setup without spending credits. It renders
real (restyled) video with PyAV, keeps a credit ledger, issues expiring presigned-looking URLs,
and misbehaves on request (see `faults`). Modules: `server` (HTTP, routes, EmulatorServer),
`store` (state, lifecycle rules, ledger), `lifecycle` (clock thread, render pool), `render`
(PyAV), `protocol` (body validation), `faults` (fault plans), `command` (the CLI entry).
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from .command import add_arguments, run
from .options import EmulatorOptions

if TYPE_CHECKING:
    from .server import EmulatorServer


def __getattr__(name: str) -> Any:
    # The server (and PyAV under it) loads on first use, so every other `mh-watchd` command,
    # whose argument parser reads the emulator's option defaults, starts without it.
    if name == "EmulatorServer":
        from .server import EmulatorServer

        return EmulatorServer
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")


__all__ = ["EmulatorOptions", "EmulatorServer", "add_arguments", "run"]
