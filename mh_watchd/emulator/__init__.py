"""A Magic Hour API emulator on loopback: same routes, bodies, codes and headers as the service.

For tests, benchmarks, the demo, and rehearsing a setup without spending credits. It renders
real (restyled) video with PyAV, keeps a credit ledger, issues expiring presigned-looking URLs,
and misbehaves on request (see `faults`). Modules: `server` (HTTP, routes, EmulatorServer),
`store` (state, lifecycle rules, ledger), `lifecycle` (clock thread, render pool), `render`
(PyAV), `protocol` (body validation), `faults` (fault plans), `command` (the CLI entry).
"""

from __future__ import annotations

from .command import add_arguments, run
from .server import EmulatorOptions, EmulatorServer

__all__ = ["EmulatorOptions", "EmulatorServer", "add_arguments", "run"]
