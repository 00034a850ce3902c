"""The emulator's clock thread and its bounded render pool.

The clock thread sleeps until the store's next timed status change (or until woken by a new
project or a finished render) and applies it; renders run in a pool of two workers, so a GET
never waits on one.
"""

from __future__ import annotations

import threading
from concurrent.futures import ThreadPoolExecutor

from mh_watchd.core.errors import MediaError

from .render import NothingToRender, RenderAborted, render_video
from .store import RenderJob, Store

RENDER_WORKERS = 2


class Lifecycle:
    """Moves projects along in time and runs their renders; `start()` once, `stop()` once."""

    def __init__(self, store: Store, tier: str) -> None:
        self._store = store
        self._tier = tier
        self._stopping = threading.Event()
        self._pool = ThreadPoolExecutor(RENDER_WORKERS, thread_name_prefix="emulator-render")
        self._thread = threading.Thread(target=self._run, name="emulator-clock", daemon=True)
        store.on_render = self._submit

    def start(self) -> None:
        """Start the clock thread."""
        self._thread.start()

    def stop(self) -> None:
        """Stop the clock, abandon running renders and join every thread."""
        self._stopping.set()
        with self._store.cond:
            self._store.cond.notify_all()
        if self._thread.is_alive():
            self._thread.join()
        self._pool.shutdown(wait=True, cancel_futures=True)

    def _run(self) -> None:
        cond = self._store.cond
        with cond:
            while not self._stopping.is_set():
                self._store.advance()
                cond.wait(timeout=self._store.seconds_to_next_change())

    def _submit(self, job: RenderJob) -> None:
        if self._stopping.is_set():
            return
        try:
            self._pool.submit(self._render, job)
        except RuntimeError:
            # The pool shut down between the check and the submit: the emulator is stopping.
            return

    def _render(self, job: RenderJob) -> None:
        error: dict[str, str] | None = None
        result = None
        try:
            result = render_video(
                job.source,
                job.target,
                start_seconds=job.start_seconds,
                end_seconds=job.end_seconds,
                fps_resolution=job.fps_resolution,
                art_style=job.art_style,
                tier=self._tier,
                should_stop=self._stopping.is_set,
            )
        except RenderAborted:
            return
        except MediaError as exc:
            error = {"code": "invalid_video_file", "message": f"The input video is invalid: {exc}"}
        except NothingToRender as exc:
            error = {"code": "invalid_parameters", "message": str(exc)}
        except Exception as exc:  # the top of a worker: a bug must not kill the pool thread
            error = {"code": "unknown_error", "message": f"The render failed: {exc!r}"}
        self._store.render_finished(job.project_id, result, error)
