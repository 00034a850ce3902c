"""`make demo`, the README's first command: the whole product offline, end to end."""

from __future__ import annotations

import os
import subprocess
from pathlib import Path

import av
import pytest

from tests.e2e.conftest import SCRIPT

pytestmark = pytest.mark.timeout(300)


def test_the_demo_delivers_every_sample_clip(tmp_path: Path) -> None:
    workspace = tmp_path / "demo"
    env = dict(os.environ, MH_WATCHD_DEMO_DIR=str(workspace))
    result = subprocess.run(
        [SCRIPT, "demo"], env=env, capture_output=True, text=True, timeout=280, check=False
    )
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-3000:]
    assert "emulator saw 3 create(s) for 3 clip(s)" in result.stdout
    outputs = sorted(p for p in workspace.glob("*/out/**/*") if p.is_file())
    assert [p.relative_to(workspace).as_posix() for p in outputs] == [
        "anime/out/beach day.studio-ghibli.mp4",
        "anime/out/trip/IMG_0001.studio-ghibli.mp4",
        "paint/out/garden.oil-painting.mp4",
    ]
    for out in outputs:
        with av.open(str(out)) as container:
            assert container.streams.video and container.duration
