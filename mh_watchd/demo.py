"""`mh-watchd demo`: the whole product offline, in one command, against the emulator."""

from __future__ import annotations

import os
import shutil
import sys
import time
from pathlib import Path

from mh_watchd.adapters import config_file, logs
from mh_watchd.adapters.samples import synthesize_clip
from mh_watchd.core.jobs import JobState
from mh_watchd.emulator import EmulatorOptions, EmulatorServer

DEMO_TOKEN = "mhk_live_demo_not_a_real_key"
# Written into every workspace the demo creates: only a folder carrying it is ever emptied.
MARKER_NAME = ".mh-watchd-demo-workspace"
MARKER_TEXT = "Created by `mh-watchd demo`; the next demo run empties this folder.\n"
# The workspace named by $MH_WATCHD_DEMO_DIR is unusable (not ours, not empty, or not a folder).
# Exit 69 (EX_UNAVAILABLE), as the contract gives `backup` for a PATH it cannot use and `check`
# for a folder problem: the command line was fine (so not 64), the folder it points at is not.
EX_UNAVAILABLE = 69


class DemoWorkspaceError(Exception):
    """The demo workspace cannot be used without risking someone's files."""


def _made_by_demo(root: Path) -> bool:
    marker = root / MARKER_NAME
    if marker.is_file() and not marker.is_symlink():
        return True
    # A workspace from before the marker: its config.toml starts with the demo's own header.
    config = root / "config.toml"
    if config.is_file() and not config.is_symlink():
        with config.open("rb") as handle:
            first = handle.readline(200)
        return first.decode("utf-8", "replace") == CONFIG_TEMPLATE.splitlines(keepends=True)[0]
    return False


def prepare_workspace(root: Path) -> None:
    """Make `root` an empty demo workspace carrying the marker, or raise DemoWorkspaceError.

    A missing folder is created; an empty one is used; one carrying the marker (an earlier
    demo's) is emptied. Anything else, a folder with files the demo did not make, or a file,
    is refused and left untouched.
    """
    hint = "set MH_WATCHD_DEMO_DIR to a new or empty folder"
    if root.is_symlink() or (root.exists() and not root.is_dir()):
        raise DemoWorkspaceError(f"demo workspace {root} is not a folder; {hint}")
    if root.is_dir():
        if _made_by_demo(root):
            shutil.rmtree(root)
        elif any(root.iterdir()):
            raise DemoWorkspaceError(
                f"demo workspace {root} already holds files the demo did not make, so it is "
                f"left alone (the demo empties its workspace); {hint}"
            )
    root.mkdir(parents=True, exist_ok=True)
    (root / MARKER_NAME).write_text(MARKER_TEXT)


CONFIG_TEMPLATE = """\
# Written by `mh-watchd demo`: a real config, pointed at the built-in emulator.
[api]
base_url = "{base_url}"
token_env = "MH_WATCHD_DEMO_TOKEN"
poll_interval_seconds = 0.5

[daemon]
state_dir = "{root}/state"
settle_seconds = 0.5
rescan_seconds = 5
http_listen = ""
log_format = "console"

[styles.ghibli]
art_style = "Studio Ghibli"

[[folder]]
name = "anime"
inbox = "{root}/anime/in"
outbox = "{root}/anime/out"
style = "ghibli"
fps_resolution = "HALF"
recursive = true

[[folder]]
name = "paint"
inbox = "{root}/paint/in"
outbox = "{root}/paint/out"
fps_resolution = "FULL"
max_seconds = 2
[folder.style]
art_style = "Oil Painting"
model = "Dreamshaper"
"""


def run_demo(workspace: Path | None = None, *, timeout_seconds: float = 240.0) -> int:
    """Run the demo; returns 0 when every sample clip was delivered, 69 when the workspace
    ($MH_WATCHD_DEMO_DIR, default ./demo-workspace) is a folder the demo did not make."""
    from mh_watchd.daemon import Daemon

    root = (workspace or Path(os.environ.get("MH_WATCHD_DEMO_DIR", "demo-workspace"))).resolve()
    try:
        prepare_workspace(root)
    except (DemoWorkspaceError, OSError) as exc:
        sys.stderr.write(f"mh-watchd demo: {exc}\n")
        return EX_UNAVAILABLE
    print(f"demo workspace: {root}")
    with EmulatorServer(
        EmulatorOptions(queue_seconds=0.5, render_seconds=1.0, data_dir=root / "emulator")
    ) as server:
        print(f"emulator: {server.base_url}")
        config_path = root / "config.toml"
        config_path.write_text(CONFIG_TEMPLATE.format(base_url=server.base_url, root=root))
        clips = [
            root / "anime/in/beach day.mp4",
            root / "anime/in/trip/IMG_0001.MOV",
            root / "paint/in/garden.mkv",
        ]
        for i, clip in enumerate(clips):
            synthesize_clip(clip, seconds=2.0, fps=24, with_audio=True, hue=i * 60)
            print(f"sample clip: {clip.relative_to(root)}")
        # As a user makes them: the daemon never creates an outbox root (a missing one is an
        # unmounted share, and outputs wait for it rather than land on the local disk).
        for folder in ("anime", "paint"):
            (root / folder / "out").mkdir(parents=True, exist_ok=True)
        config = config_file.load(config_path)
        logs.configure_logging(log_format="console", stream=sys.stderr)
        environ = dict(os.environ, MH_WATCHD_DEMO_TOKEN=DEMO_TOKEN)
        daemon = Daemon.open(config, token=DEMO_TOKEN, config_path=config_path, environ=environ)
        daemon.start()
        journal = daemon.journal

        def all_done() -> bool:
            jobs = journal.jobs()
            return len(jobs) >= len(clips) and all(j.is_terminal for j in jobs)

        started = time.monotonic()
        finished = daemon.run_until(all_done, timeout_seconds)
        jobs = journal.jobs()
        daemon.shutdown()
        state = server.state()
    print()
    print(f"finished in {time.monotonic() - started:.1f} s" if finished else "timed out")
    ok = finished
    for job in jobs:
        if job.state is JobState.DONE:
            for out in job.outputs:
                print(f"  {job.folder}/{job.rel_path} -> {out.final_path}")
            print(f"    original filed at {job.archive_path}")
        else:
            ok = False
            print(f"  {job.folder}/{job.rel_path}: {job.state.value}: {job.last_error}")
    counts = state["counts"]
    print(
        f"emulator saw {counts['creates']} create(s) for {len(clips)} clip(s); "
        f"{1_000_000 - state['credits']} demo credits spent"
    )
    print(f"try: mh-watchd status -c {config_path}")
    return 0 if ok else 1
