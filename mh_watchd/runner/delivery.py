"""Delivery: downloaded outputs placed in the outbox, then the original archived, kept or
deleted by the folder's `on_success` policy.

Unlike the other steps, delivery checkpoints its sub-steps into the journal as it goes: the
target of each step is recorded before the step is taken, so a restart can finish a half-done
delivery. Nothing already there is ever replaced, and a name that is now a symlink (or
anything but a regular file) is never moved or deleted.
"""

from __future__ import annotations

import dataclasses
import errno
import os
from collections.abc import Callable
from pathlib import Path, PurePosixPath

import structlog

from mh_watchd.adapters.fs import FileSystem
from mh_watchd.adapters.journal import Journal
from mh_watchd.core import naming
from mh_watchd.core.errors import MediaError, SourceChangedError
from mh_watchd.core.jobs import Job, Output
from mh_watchd.runner.paths import (
    NAME_RESERVE_BYTES,
    makedirs_in_root,
    original_path,
    original_stat,
    outbox_dir,
    output_name,
    remove_converted,
)
from mh_watchd.runner.results import StepOutcome

log = structlog.get_logger("mh_watchd")


class Delivery:
    """Places a job's outputs and files its original. Safe to call from a worker thread."""

    def __init__(self, *, fs: FileSystem, journal: Journal, clock: Callable[[], float]) -> None:
        self._fs = fs
        self._journal = journal
        self._clock = clock

    def deliver(self, job: Job) -> StepOutcome:
        """Place every output without replacing anything, then file the original.

        Each target is journaled before its step; a target that already holds the journaled
        size and hash counts as done, so this is safe to run again after a crash. Every error
        comes back in the outcome.
        """
        assert job.id is not None
        try:
            current = job
            outputs = list(current.outputs)
            for i, out in enumerate(outputs):
                if out.placed:
                    continue
                out = self._place_output(current, out)
                outputs[i] = out
                current = self._journal.save(
                    dataclasses.replace(current, outputs=tuple(outputs), updated_at=self._clock()),
                    event="delivery.output_placed",
                    detail={"path": out.final_path},
                )
            archive_path, left = self._file_original(current)
            remove_converted(self._fs, current)
            return StepOutcome(
                job.id,
                "deliver",
                {"outputs": tuple(outputs), "archive_path": archive_path, "original_left": left},
            )
        except Exception as exc:
            return StepOutcome(job.id, "deliver", {}, error=exc)

    def _place_output(self, job: Job, out: Output) -> Output:
        """Move `out` from its temp file to the first free output name; return it placed.

        A journaled target holding `out`'s size and hash counts as placed. Raises MediaError
        when the temp file is gone (download again), OSError EEXIST when no name is free.
        """
        out_dir = outbox_dir(job)
        if out.final_path is not None:
            final = Path(out.final_path)
            if self._matches(final, out):
                return dataclasses.replace(out, placed=True)
            # When someone else's file took the journaled name meanwhile, choose again below.
            temp = Path(out.temp_path) if out.temp_path else None
            if temp is not None and temp.exists() and self._fs.place_noreplace(temp, final):
                return dataclasses.replace(out, placed=True)
        if not out.temp_path or not Path(out.temp_path).exists():
            raise MediaError(f"the downloaded output {out.temp_path} is gone; downloading again")
        name = output_name(job, out.index)
        for candidate in naming.collision_candidates(name):
            final = out_dir / naming.fit_name(candidate, reserve=NAME_RESERVE_BYTES // 2)
            if final.exists() or final.is_symlink():
                continue
            # Record the target before taking it (a restart then finds it by size and hash).
            chosen = dataclasses.replace(out, final_path=str(final))
            self._journal.save(
                dataclasses.replace(
                    job,
                    outputs=tuple(chosen if o.index == out.index else o for o in job.outputs),
                    updated_at=self._clock(),
                ),
                event="delivery.target_chosen",
                detail={"path": str(final)},
            )
            if self._fs.place_noreplace(Path(out.temp_path), final):
                return dataclasses.replace(chosen, placed=True)
        raise OSError(errno.EEXIST, f"no free output name for {name} in {out_dir}")

    def _matches(self, path: Path, out: Output) -> bool:
        """Whether `path` holds `out`'s journaled size and hash."""
        st = self._fs.stat(path)
        if st is None or out.size is None or st.st_size != out.size:
            return False
        _, sha = self._fs.sha256_file(path)
        return sha == out.sha256

    def _file_original(self, job: Job) -> tuple[str | None, bool]:
        """Archive, keep or delete the original; returns (archive path, original_left).

        A name that is now a symlink (or anything but a regular file) is never moved or
        deleted: it counts as the original gone.
        """
        source = original_path(job)
        policy = job.settings.on_success
        st = original_stat(self._fs, job)
        if job.archive_path is not None and st is None:
            return job.archive_path, False  # filed before a crash
        if st is None:
            log.warning("delivery.original_missing", folder=job.folder, file=job.rel_path)
            return None, True
        if (st.st_size, st.st_mtime_ns) != (job.size, job.mtime_ns) and not self._same_content(
            job, st
        ):
            # A new version sits there now: never file it as done.
            log.info("delivery.original_changed", folder=job.folder, file=job.rel_path)
            return None, True
        if policy == "keep":
            return None, False
        if policy == "delete":
            try:
                source.unlink()
            except OSError as exc:
                log.warning("delivery.delete_failed", file=job.rel_path, error=str(exc))
                return None, True
            return None, False
        rel = PurePosixPath(job.rel_path)
        try:
            archive_dir = makedirs_in_root(self._fs, job, job.settings.archive, rel.parent)
            for candidate in naming.collision_candidates(rel.name):
                target = archive_dir / naming.fit_name(candidate, reserve=NAME_RESERVE_BYTES)
                if target.exists() or target.is_symlink():
                    continue
                self._journal.save(
                    dataclasses.replace(job, archive_path=str(target), updated_at=self._clock()),
                    event="delivery.archive_chosen",
                    detail={"path": str(target)},
                )
                if self._fs.move_noreplace(source, target):
                    return str(target), False
        except OSError as exc:
            log.warning("delivery.archive_failed", file=job.rel_path, error=str(exc))
        return None, True

    def _same_content(self, job: Job, st: os.stat_result) -> bool:
        """Whether the original (of lstat `st`) still holds the job's bytes, read without
        following links; False when it cannot be read as that file."""
        if st.st_size != job.size:
            return False
        try:
            opened = self._fs.open_candidate(
                Path(job.settings.inbox), job.rel_path, expect_inode=st.st_ino
            )
        except (SourceChangedError, FileNotFoundError, NotADirectoryError):
            return False
        with opened.file:
            size, sha = self._fs.sha256_file(opened.file)
        return size == job.size and sha == job.sha256
