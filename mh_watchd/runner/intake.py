"""Intake: a settled inbox file probed (and hashed when asked) into an `IntakeResult`.

The file is opened once, never through a symlink, and read only through that open file
(`FileSystem.open_candidate`); a link is never read.
"""

from __future__ import annotations

import dataclasses
import os
from pathlib import Path, PurePosixPath

import structlog

from mh_watchd.adapters import media
from mh_watchd.adapters.fs import FileSystem, NotACandidateError, OpenCandidate, open_files_under
from mh_watchd.core.errors import MediaError
from mh_watchd.core.intake import trim
from mh_watchd.runner.results import IntakeResult

log = structlog.get_logger("mh_watchd")


class IntakeProbe:
    """Probes and hashes settled inbox files. Safe to call from a worker thread."""

    def __init__(self, *, fs: FileSystem) -> None:
        self._fs = fs

    def probe(
        self,
        folder: str,
        root: Path,
        rel_path: str,
        *,
        start_seconds: float,
        max_seconds: float,
        hash_now: bool,
    ) -> IntakeResult:
        """Probe a settled file; hash it when asked (a done version may share its path).

        The file is opened once without following links and read only through that open file.
        A link, or anything but a regular file, comes back `vanished` (and `link` for a link,
        logged as `intake.link_ignored`); a file gone, or one whose size changed while it was
        hashed, comes back `vanished`; one a process on this host holds open for writing comes
        back `busy`; one that is not a video, or cannot be trimmed, comes back with `error`.
        Other errors (an unreadable file, a failing share) propagate to the caller.
        """
        gone = IntakeResult(folder, rel_path, 0, 0, 0, vanished=True)
        try:
            opened = self._fs.open_candidate(root, rel_path)
        except NotACandidateError as exc:
            if exc.link:
                log.info("intake.link_ignored", folder=folder, file=rel_path)
            return dataclasses.replace(gone, link=exc.link)
        except (FileNotFoundError, NotADirectoryError):
            return gone
        with opened.file:
            return self._probe_open(
                folder, root, rel_path, opened, start_seconds, max_seconds, hash_now
            )

    def _probe_open(
        self,
        folder: str,
        root: Path,
        rel_path: str,
        opened: OpenCandidate,
        start_seconds: float,
        max_seconds: float,
        hash_now: bool,
    ) -> IntakeResult:
        st = opened.stat
        base = IntakeResult(folder, rel_path, st.st_size, st.st_mtime_ns, st.st_ino)
        if Path(os.path.realpath(root / rel_path)) in open_files_under(root):
            # Quiet is not finished: a local writer (a slow copy, a download client) holds it.
            return dataclasses.replace(base, busy=True)
        try:
            info = media.probe_fileobj(opened.file, name=PurePosixPath(rel_path).name)
            start, end = trim(
                info.duration_seconds, start_seconds=start_seconds, max_seconds=max_seconds
            )
        except MediaError as exc:
            return dataclasses.replace(base, error=str(exc))
        sha = None
        if hash_now:
            size, sha = self._fs.sha256_file(opened.file)
            if size != st.st_size:
                return dataclasses.replace(base, vanished=True)
        return dataclasses.replace(
            base,
            duration_seconds=info.duration_seconds,
            fps=info.fps,
            start_seconds=start,
            end_seconds=end,
            sha256=sha,
        )
