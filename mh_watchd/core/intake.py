"""Which files in an inbox are inputs, which preset a subfolder routes to, and the trim window.

Pure: every function takes a relative path (a `PurePosixPath` below the inbox root) and facts
the caller already has (size, duration); nothing here touches the filesystem.
"""

from __future__ import annotations

import fnmatch
import math
from collections.abc import Iterable, Sequence
from enum import StrEnum
from pathlib import PurePosixPath

from mh_watchd.core.errors import MediaError

# Sent to the upload-urls route as they are.
API_EXTENSIONS: tuple[str, ...] = ("mp4", "m4v", "mov", "webm")
# Remuxed (or transcoded) to mp4 locally before upload.
CONVERT_EXTENSIONS: tuple[str, ...] = (
    "mkv", "avi", "ts", "m2ts", "mts", "mpg", "mpeg", "wmv", "flv", "3gp",
)  # fmt: skip

# A trimmed clip shorter than this is refused before any upload.
MIN_TRIM_SECONDS = 0.1
# Float slack so that e.g. 1.0 - 0.9 (0.0999...) still counts as the 0.1 s it means.
_TRIM_SLACK_SECONDS = 1e-9

# Exact names (compared casefolded): NAS and OS litter.
_IGNORED_NAMES: frozenset[str] = frozenset(
    name.casefold()
    for name in (
        "@eaDir",  # Synology thumbnails
        "#recycle",  # Synology recycle bin
        "#snapshot",  # Synology snapshots
        ".@__thumb",  # QNAP thumbnails
        "$RECYCLE.BIN",  # Windows recycle bin on a share
        "__MACOSX",  # zip litter from macOS
        "Thumbs.db",
        "desktop.ini",
        ".DS_Store",
    )
)
# Prefixes: hidden files (covers `._*` AppleDouble and the daemon's own `.mh-*` temp names,
# archive and failed folders) and editor/Office lock files.
_IGNORED_PREFIXES: tuple[str, ...] = (".", "~")
# Suffixes of files still being written by browsers, download managers and sync tools.
_IGNORED_SUFFIXES: tuple[str, ...] = tuple(
    s.casefold() for s in (".part", ".partial", ".tmp", ".crdownload", ".!qB")
)

_VIDEO_EXTENSIONS: frozenset[str] = frozenset(API_EXTENSIONS + CONVERT_EXTENSIONS)


class Verdict(StrEnum):
    CANDIDATE = "candidate"  # a video to settle, probe and queue
    IGNORED = "ignored"  # hidden, temporary, NAS/OS litter or the daemon's own: silently
    NOT_VIDEO = "not_video"  # another extension: left alone, logged once
    EXCLUDED = "excluded"  # filtered out by the folder's include/exclude globs
    TOO_SMALL = "too_small"  # below min_size_bytes: waits in place (a copy not yet begun)


class TrimError(MediaError):
    """The configured start/max window leaves nothing (or under 0.1 s) of this video."""


def is_ignored_name(name: str) -> bool:
    """Return True when one path component is hidden, temporary or NAS/OS litter.

    Case-insensitive. Covers `.*`, `~*`, `*.part`, `*.partial`, `*.tmp`, `*.crdownload`,
    `*.!qB`, `@eaDir`, `#recycle`, `#snapshot`, `$RECYCLE.BIN`, `__MACOSX`, `Thumbs.db`,
    `desktop.ini` (`.DS_Store`, `._*` and `.@__thumb` are hidden names).
    """
    folded = name.casefold()
    return (
        folded in _IGNORED_NAMES
        or folded.startswith(_IGNORED_PREFIXES)
        or folded.endswith(_IGNORED_SUFFIXES)
    )


def is_ignored_dir(name: str) -> bool:
    """Return True when a directory with this name must not be walked (same list as files)."""
    return is_ignored_name(name)


def is_marker_file(name: str, marker: str) -> bool:
    """Return True when `name` is a ready marker (`a.mp4.done` for marker `.done`).

    Case-insensitive; an empty marker (the feature off) never matches.
    """
    if not marker:
        return False
    return len(name) > len(marker) and name.casefold().endswith(marker.casefold())


def ready_marker_path(rel_path: PurePosixPath, marker: str) -> PurePosixPath:
    """Return the marker file whose existence releases `rel_path`: `a.mp4` + `.done` ->
    `a.mp4.done`. Raises ValueError for an empty marker or a path without a name."""
    if not marker:
        raise ValueError("ready_marker is empty: no marker file to look for")
    if not rel_path.name:
        raise ValueError(f"{rel_path!s} has no file name")
    return rel_path.with_name(rel_path.name + marker)


def marker_target(rel_path: PurePosixPath, marker: str) -> PurePosixPath | None:
    """Return the file a marker releases (`a.mp4.done` -> `a.mp4`), or None when `rel_path` is
    not a marker file."""
    if not is_marker_file(rel_path.name, marker):
        return None
    return rel_path.with_name(rel_path.name[: -len(marker)])


def _extension(rel_path: PurePosixPath) -> str:
    # PurePosixPath.suffix is "" for dotfiles, which are ignored before this is asked anyway.
    return rel_path.suffix[1:].casefold()


def _glob_matches(rel_path: PurePosixPath, patterns: Sequence[str]) -> bool:
    # Globs are case-insensitive on every platform (users on SMB shares type whatever case);
    # a pattern may name the whole relative path ("trip/*.mov") or just the file ("*.mov").
    whole = rel_path.as_posix().casefold()
    name = rel_path.name.casefold()
    for pattern in patterns:
        folded = pattern.casefold()
        if fnmatch.fnmatchcase(whole, folded) or fnmatch.fnmatchcase(name, folded):
            return True
    return False


def classify(
    rel_path: PurePosixPath,
    *,
    size: int,
    include: Sequence[str],
    exclude: Sequence[str],
    min_size_bytes: int,
    ready_marker: str = "",
) -> Verdict:
    """Return what the daemon does with the regular file at `rel_path` (relative to the inbox).

    In order: an ignored component (or a ready-marker file) -> IGNORED; an extension that is
    not a video -> NOT_VIDEO; include/exclude globs -> EXCLUDED; size below min_size_bytes ->
    TOO_SMALL; else CANDIDATE. Never raises.
    """
    if any(is_ignored_name(part) for part in rel_path.parts if part != "/"):
        return Verdict.IGNORED
    if is_marker_file(rel_path.name, ready_marker):
        return Verdict.IGNORED
    if _extension(rel_path) not in _VIDEO_EXTENSIONS:
        return Verdict.NOT_VIDEO
    if include and not _glob_matches(rel_path, include):
        return Verdict.EXCLUDED
    if exclude and _glob_matches(rel_path, exclude):
        return Verdict.EXCLUDED
    if size < min_size_bytes:
        return Verdict.TOO_SMALL
    return Verdict.CANDIDATE


def needs_conversion(rel_path: PurePosixPath) -> bool:
    """Return True when the file must be remuxed/transcoded to mp4 before upload."""
    return _extension(rel_path) in CONVERT_EXTENSIONS


def upload_extension(rel_path: PurePosixPath) -> str:
    """Return the extension to announce to the API: lowercase, "mp4" after conversion.

    Raises ValueError for a file that is not a video candidate.
    """
    ext = _extension(rel_path)
    if ext in API_EXTENSIONS:
        return ext
    if ext in CONVERT_EXTENSIONS:
        return "mp4"
    raise ValueError(f"{rel_path!s} is not a video the daemon sends (extension {ext!r})")


def route_preset(
    rel_path: PurePosixPath, *, recursive: bool, preset_names: Iterable[str]
) -> str | None:
    """Return the preset a first-level subfolder routes to, spelled as in `preset_names`.

    Only for recursive folders, only when the file is inside that subfolder; the folder name
    matches case-insensitively. None means: use the folder's own style.
    """
    parts = rel_path.parts
    if not recursive or len(parts) < 2:
        return None
    first = parts[0].casefold()
    for name in preset_names:
        if name.casefold() == first:
            return name
    return None


def trim(
    duration_seconds: float, *, start_seconds: float, max_seconds: float
) -> tuple[float, float]:
    """Return the (start, end) window in seconds to send; max_seconds 0 sends to the end.

    Raises TrimError when start is at or past the end or the window is under 0.1 s, and
    ValueError for a negative start or max (the config forbids them).
    """
    if start_seconds < 0 or max_seconds < 0:
        raise ValueError("start_seconds and max_seconds must not be negative")
    if not math.isfinite(duration_seconds) or duration_seconds <= 0:
        raise TrimError(
            "this video reports no usable duration, so there is nothing to send; "
            "check that it plays, or re-export it"
        )
    if start_seconds >= duration_seconds:
        raise TrimError(
            f"start_seconds is {start_seconds:g} s but the video is only "
            f"{duration_seconds:.2f} s long; lower start_seconds for this folder"
        )
    end = (
        duration_seconds if max_seconds == 0 else min(duration_seconds, start_seconds + max_seconds)
    )
    if end - start_seconds < MIN_TRIM_SECONDS - _TRIM_SLACK_SECONDS:
        raise TrimError(
            f"only {end - start_seconds:.3f} s of video would be sent (from {start_seconds:g} s "
            f"to {end:.3f} s); the service needs at least {MIN_TRIM_SECONDS:g} s: lower "
            "start_seconds or raise max_seconds"
        )
    return (start_seconds, end)


class Take(StrEnum):
    """What intake does with one version of a file it looked at."""

    TAKE = "take"  # settle it, then probe it and queue it
    SKIP = "skip"  # leave this version alone until it changes
    LATER = "later"  # keep it settling: an intake or a job still holds its path


def needs_journal(kind: Verdict, *, skipped: bool, intake_running: bool) -> bool:
    """True when `take_verdict` needs the journal's facts about the path (the other facts
    alone do not decide), so the caller looks them up only then."""
    return kind is Verdict.CANDIDATE and not skipped and not intake_running


def take_verdict(
    kind: Verdict,
    *,
    skipped: bool,
    intake_running: bool,
    known_version: bool = False,
    latest_finished: bool = True,
    latest_started: bool = False,
) -> Take:
    """Take, skip or look again later at one version of a file.

    `kind` is `classify()`'s verdict; `skipped`: this exact version was set aside (already
    done); `intake_running`: an intake of the path is under way. The journal's facts (looked
    up only when `needs_journal`): `known_version` (a job exists for this very version),
    `latest_finished` (the path's latest job is finished, or there is none) and
    `latest_started` (that job has an upload or a step under way).
    """
    if kind is not Verdict.CANDIDATE or skipped:
        return Take.SKIP  # another kind, or its size or name must change before it counts
    if intake_running:
        return Take.LATER
    if known_version:
        return Take.SKIP
    if latest_finished or not latest_started:
        # Nothing holds the path; a queued job not yet uploading has its facts refreshed.
        return Take.TAKE
    # Uploading, uploaded or rendering: the running step ends that job (superseded if it is
    # still before its create), or the change is a new version once it is done.
    return Take.LATER
