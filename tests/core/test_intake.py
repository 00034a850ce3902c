"""Which files are inputs, how subfolders route to presets, and the trim window."""

from __future__ import annotations

from pathlib import PurePosixPath

import pytest

from mh_watchd.core.errors import MediaError
from mh_watchd.core.intake import (
    API_EXTENSIONS,
    CONVERT_EXTENSIONS,
    TrimError,
    Verdict,
    classify,
    is_ignored_dir,
    is_ignored_name,
    is_marker_file,
    marker_target,
    needs_conversion,
    ready_marker_path,
    route_preset,
    trim,
    upload_extension,
)

P = PurePosixPath


def verdict(
    path: str,
    *,
    size: int = 1000,
    include: tuple[str, ...] = (),
    exclude: tuple[str, ...] = (),
    min_size_bytes: int = 1,
    ready_marker: str = "",
) -> Verdict:
    return classify(
        P(path),
        size=size,
        include=include,
        exclude=exclude,
        min_size_bytes=min_size_bytes,
        ready_marker=ready_marker,
    )


IGNORED_NAMES = [
    ".hidden.mp4",
    ".DS_Store",
    ".ds_store",
    "._x.mp4",
    "~lock.mp4",
    "a.mp4.part",
    "a.mp4.PART",
    "a.mp4.partial",
    "a.tmp",
    "a.mp4.crdownload",
    "a.mp4.!qB",
    "a.mp4.!QB",
    "@eaDir",
    "@EADIR",
    "#recycle",
    "#Recycle",
    "#snapshot",
    ".@__thumb",
    "$RECYCLE.BIN",
    "$Recycle.Bin",
    "__MACOSX",
    "__macosx",
    "Thumbs.db",
    "THUMBS.DB",
    "desktop.ini",
    "Desktop.ini",
    ".beach.studio-ghibli.mp4.7-0.mh-tmp",  # the daemon's own temp names
    ".mh-done",
    ".mh-failed",
]


@pytest.mark.parametrize("name", IGNORED_NAMES)
def test_every_ignore_pattern_matches_case_insensitively(name: str) -> None:
    assert is_ignored_name(name)
    assert is_ignored_dir(name)


@pytest.mark.parametrize(
    "name",
    ["a.mp4", "IMG_0001.MOV", "holiday.part2.mp4", "tmp.mp4", "recycle.mp4", "eaDir", "x~.mp4"],
)
def test_ordinary_names_are_not_ignored(name: str) -> None:
    assert not is_ignored_name(name)
    assert not is_ignored_dir(name)


@pytest.mark.parametrize(
    ("path", "expected"),
    [
        ("IMG_0001.MOV", Verdict.CANDIDATE),
        ("a.mp4", Verdict.CANDIDATE),
        ("a.M4V", Verdict.CANDIDATE),
        ("a.webm", Verdict.CANDIDATE),
        ("a.MKV", Verdict.CANDIDATE),
        ("trip/day1/a.avi", Verdict.CANDIDATE),
        ("._x.mp4", Verdict.IGNORED),
        (".DS_Store", Verdict.IGNORED),
        ("@eaDir/x.mp4", Verdict.IGNORED),
        ("trip/@eaDir/x.mp4", Verdict.IGNORED),
        ("a.mp4.part", Verdict.IGNORED),
        ("Thumbs.db", Verdict.IGNORED),
        ("#recycle/a.mp4", Verdict.IGNORED),
        ("#snapshot/daily/a.mp4", Verdict.IGNORED),
        (".mh-done/a.mp4", Verdict.IGNORED),
        ("$RECYCLE.BIN/a.mp4", Verdict.IGNORED),
        ("__MACOSX/a.mp4", Verdict.IGNORED),
        ("notes.txt", Verdict.NOT_VIDEO),
        ("photo.JPG", Verdict.NOT_VIDEO),
        ("noextension", Verdict.NOT_VIDEO),
        ("a.mp4.error.json", Verdict.NOT_VIDEO),
        ("mp4", Verdict.NOT_VIDEO),
    ],
)
def test_classify_table(path: str, expected: Verdict) -> None:
    assert verdict(path) is expected


@pytest.mark.parametrize("ext", API_EXTENSIONS + CONVERT_EXTENSIONS)
def test_every_video_extension_is_a_candidate_in_any_case(ext: str) -> None:
    assert verdict(f"clip.{ext}") is Verdict.CANDIDATE
    assert verdict(f"clip.{ext.upper()}") is Verdict.CANDIDATE


@pytest.mark.parametrize(
    ("path", "include", "exclude", "expected"),
    [
        ("a.mp4", ["*.mp4"], [], Verdict.CANDIDATE),
        ("a.MP4", ["*.mp4"], [], Verdict.CANDIDATE),  # globs are case-insensitive
        ("a.mov", ["*.mp4"], [], Verdict.EXCLUDED),
        ("trip/a.mov", ["trip/*"], [], Verdict.CANDIDATE),
        ("TRIP/a.mov", ["trip/*"], [], Verdict.CANDIDATE),
        ("other/a.mov", ["trip/*"], [], Verdict.EXCLUDED),
        ("deep/sub/a.mov", ["*.mov"], [], Verdict.CANDIDATE),  # the bare name is tried too
        ("deep/sub/a.mov", ["a.*"], [], Verdict.CANDIDATE),
        ("a.mp4", [], ["*.mp4"], Verdict.EXCLUDED),
        ("raw/a.mp4", [], ["raw/*"], Verdict.EXCLUDED),
        ("Raw/a.mp4", [], ["RAW/*"], Verdict.EXCLUDED),
        ("cooked/a.mp4", [], ["raw/*"], Verdict.CANDIDATE),
        ("a_draft.mp4", ["*.mp4"], ["*_draft*"], Verdict.EXCLUDED),  # exclude wins
        ("a.mp4", ["*.mp4", "*.mov"], ["*.webm"], Verdict.CANDIDATE),
        ("notes.txt", ["*"], [], Verdict.NOT_VIDEO),  # not a video before any glob
        (".hidden.mp4", ["*"], [], Verdict.IGNORED),
    ],
)
def test_include_and_exclude_globs(
    path: str, include: list[str], exclude: list[str], expected: Verdict
) -> None:
    assert verdict(path, include=tuple(include), exclude=tuple(exclude)) is expected


@pytest.mark.parametrize(
    ("size", "min_size_bytes", "expected"),
    [
        (0, 1, Verdict.TOO_SMALL),  # an empty file: a copy not yet begun
        (1, 1, Verdict.CANDIDATE),
        (999, 1000, Verdict.TOO_SMALL),
        (1000, 1000, Verdict.CANDIDATE),
        (0, 0, Verdict.CANDIDATE),
    ],
)
def test_min_size(size: int, min_size_bytes: int, expected: Verdict) -> None:
    assert verdict("a.mp4", size=size, min_size_bytes=min_size_bytes) is expected


def test_too_small_is_decided_after_the_globs() -> None:
    assert verdict("a.mp4", size=0, exclude=("*.mp4",)) is Verdict.EXCLUDED
    assert verdict("a.txt", size=0) is Verdict.NOT_VIDEO


@pytest.mark.parametrize(
    ("path", "ext", "convert"),
    [
        ("IMG_0001.MOV", "mov", False),
        ("a.mp4", "mp4", False),
        ("a.M4V", "m4v", False),
        ("a.WebM", "webm", False),
        ("a.mkv", "mp4", True),
        ("a.AVI", "mp4", True),
        ("a.m2ts", "mp4", True),
        ("trip/a.3GP", "mp4", True),
        ("a.MPEG", "mp4", True),
    ],
)
def test_upload_extension_and_conversion(path: str, ext: str, convert: bool) -> None:
    assert upload_extension(P(path)) == ext
    assert needs_conversion(P(path)) is convert


@pytest.mark.parametrize("path", ["notes.txt", "noext", "a.mp4.part"])
def test_upload_extension_refuses_non_videos(path: str) -> None:
    with pytest.raises(ValueError, match="not a video"):
        upload_extension(P(path))
    assert not needs_conversion(P(path))


@pytest.mark.parametrize(
    ("path", "recursive", "presets", "expected"),
    [
        ("ghibli/a.mp4", True, ["Ghibli"], "Ghibli"),
        ("GHIBLI/a.mp4", True, ["ghibli"], "ghibli"),
        ("ghibli/deeper/a.mp4", True, ["Ghibli"], "Ghibli"),
        ("ghibli/a.mp4", False, ["Ghibli"], None),  # only recursive folders route
        ("ghibli.mp4", True, ["ghibli"], None),  # a file, not a subfolder
        ("a.mp4", True, ["ghibli"], None),
        ("trip/ghibli/a.mp4", True, ["ghibli"], None),  # first level only
        ("anime/a.mp4", True, ["ghibli", "anime"], "anime"),
        ("ghibli/a.mp4", True, [], None),
    ],
)
def test_route_preset(path: str, recursive: bool, presets: list[str], expected: str | None) -> None:
    assert route_preset(P(path), recursive=recursive, preset_names=presets) == expected


def test_route_preset_accepts_any_iterable_of_names() -> None:
    presets = {"Ghibli": object(), "Pixar": object()}
    assert route_preset(P("pixar/x.mp4"), recursive=True, preset_names=presets) == "Pixar"
    assert route_preset(P("pixar/x.mp4"), recursive=True, preset_names=iter(["PIXAR"])) == "PIXAR"


@pytest.mark.parametrize(
    ("duration", "start", "max_seconds", "expected"),
    [
        (10.0, 0.0, 60.0, (0.0, 10.0)),  # shorter than the cap: the whole file
        (120.0, 0.0, 60.0, (0.0, 60.0)),  # the cap keeps a film from costing a fortune
        (120.0, 30.0, 60.0, (30.0, 90.0)),
        (100.0, 70.0, 60.0, (70.0, 100.0)),
        (3600.0, 0.0, 0.0, (0.0, 3600.0)),  # max_seconds 0 = the whole file
        (3600.0, 10.0, 0.0, (10.0, 3600.0)),
        (1.0, 0.9, 60.0, (0.9, 1.0)),  # exactly 0.1 s despite float rounding
        (0.1, 0.0, 0.0, (0.0, 0.1)),
        (5.0, 0.0, 0.1, (0.0, 0.1)),
    ],
)
def test_trim_table(
    duration: float, start: float, max_seconds: float, expected: tuple[float, float]
) -> None:
    got = trim(duration, start_seconds=start, max_seconds=max_seconds)
    assert got == pytest.approx(expected)


@pytest.mark.parametrize(
    ("duration", "start", "max_seconds", "words"),
    [
        (10.0, 10.0, 60.0, "only 10.00 s long"),  # start == duration
        (10.0, 12.0, 0.0, "lower start_seconds"),  # start beyond the end
        (10.0, 9.95, 60.0, "at least 0.1 s"),  # 0.05 s left
        (0.05, 0.0, 0.0, "at least 0.1 s"),
        (10.0, 0.0, 0.05, "raise max_seconds"),
        (0.0, 0.0, 60.0, "no usable duration"),
        (float("nan"), 0.0, 60.0, "no usable duration"),
        (float("inf"), 0.0, 60.0, "no usable duration"),
    ],
)
def test_trim_refuses_windows_with_nothing_to_send(
    duration: float, start: float, max_seconds: float, words: str
) -> None:
    with pytest.raises(TrimError, match=words) as caught:
        trim(duration, start_seconds=start, max_seconds=max_seconds)
    # A trim problem is "give up on this file", like any other media problem.
    assert isinstance(caught.value, MediaError)


def test_trim_rejects_negative_settings() -> None:
    with pytest.raises(ValueError, match="negative"):
        trim(10.0, start_seconds=-1.0, max_seconds=60.0)
    with pytest.raises(ValueError, match="negative"):
        trim(10.0, start_seconds=0.0, max_seconds=-1.0)


@pytest.mark.parametrize(
    ("path", "marker", "expected"),
    [
        ("a.mp4", ".done", "a.mp4.done"),
        ("trip/a.MOV", ".done", "trip/a.MOV.done"),
        ("a.mp4", ".ready", "a.mp4.ready"),
    ],
)
def test_ready_marker_path_and_back(path: str, marker: str, expected: str) -> None:
    got = ready_marker_path(P(path), marker)
    assert got == P(expected)
    assert is_marker_file(got.name, marker)
    assert marker_target(got, marker) == P(path)
    assert marker_target(P(path), marker) is None


def test_ready_marker_path_needs_a_marker() -> None:
    with pytest.raises(ValueError, match="empty"):
        ready_marker_path(P("a.mp4"), "")


@pytest.mark.parametrize(
    ("name", "marker", "expected"),
    [
        ("a.mp4.done", ".done", True),
        ("a.mp4.DONE", ".done", True),
        ("a.mp4", ".done", False),
        (".done", ".done", False),  # the marker alone names no file
        ("a.mp4.done", "", False),  # the feature is off
    ],
)
def test_is_marker_file(name: str, marker: str, expected: bool) -> None:
    assert is_marker_file(name, marker) is expected


def test_marker_files_are_ignored_silently_only_when_markers_are_on() -> None:
    assert verdict("a.mp4.done", ready_marker=".done") is Verdict.IGNORED
    assert verdict("a.mp4.done") is Verdict.NOT_VIDEO
    assert verdict("a.mp4", ready_marker=".done") is Verdict.CANDIDATE
