"""How an emulator behaves: its options, apart from the server so that reading them (the
`mh-watchd emulator` argument defaults) costs no import of the server or PyAV."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any


@dataclass(frozen=True)
class EmulatorOptions:
    """How an emulator behaves; the defaults are the `mh-watchd emulator` defaults."""

    host: str = "127.0.0.1"
    port: int = 0
    token: str | None = None
    credits: int = 1_000_000
    queue_seconds: float = 1.0
    render_seconds: float = 2.0
    url_ttl_seconds: float = 3600.0
    tier: str = "creator"
    faults: dict[str, Any] | None = None
    seed: int | None = None
    data_dir: Path | None = None
