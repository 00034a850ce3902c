"""Names at the service and on disk: slugs, outputs, collisions, temps, and the 255-byte limit."""

from __future__ import annotations

import itertools
import random
from pathlib import PurePosixPath

import pytest

from mh_watchd.core.api import ART_STYLES
from mh_watchd.core.intake import Verdict, classify, is_ignored_name
from mh_watchd.core.naming import (
    MAX_NAME_BYTES,
    MAX_TAG_BYTES,
    NAME_RESERVE,
    collision_candidates,
    collision_name,
    error_json_name,
    fit_name,
    output_name,
    output_rel_path,
    service_name,
    style_slug,
    temp_name,
)

P = PurePosixPath


def nbytes(name: str) -> int:
    return len(name.encode("utf-8", "surrogateescape"))


@pytest.mark.parametrize(
    ("art_style", "slug"),
    [
        ("Studio Ghibli", "studio-ghibli"),
        ("Assassin's Creed", "assassins-creed"),
        ("Assassin’s Creed", "assassins-creed"),
        ("3D Render", "3d-render"),
        ("Sub-Zero", "sub-zero"),
        ("Retro Sci-Fi", "retro-sci-fi"),
        ("GTA", "gta"),
        ("  Neon -- Dream!  ", "neon-dream"),
        ("Café Noir", "caf-noir"),
        ("!!!", "style"),
    ],
)
def test_style_slug(art_style: str, slug: str) -> None:
    assert style_slug(art_style) == slug


def test_every_art_style_has_a_distinct_plain_slug() -> None:
    slugs = [style_slug(style) for style in ART_STYLES]
    assert len(set(slugs)) == len(ART_STYLES)
    for slug in slugs:
        assert slug and slug.strip("-") == slug
        assert set(slug) <= set("abcdefghijklmnopqrstuvwxyz0123456789-")


@pytest.mark.parametrize(
    ("folder", "rel", "expected"),
    [
        ("anime", "beach.mp4", "anime/beach.mp4"),
        ("anime", "trip/day 1/beach.MOV", "anime/trip/day 1/beach.MOV"),
    ],
)
def test_service_name(folder: str, rel: str, expected: str) -> None:
    assert service_name(folder, P(rel)) == expected


def test_service_name_keeps_200_characters_and_the_tail() -> None:
    exact = "a" * (200 - len("anime/.mp4")) + ".mp4"
    assert service_name("anime", P(exact)) == "anime/" + exact
    long_rel = P("/".join(["folder"] * 40) + "/clip-ü.mp4")
    name = service_name("anime", long_rel)
    assert len(name) == 200
    assert name.startswith("…")
    assert name.endswith("folder/clip-ü.mp4")
    assert ("anime/" + long_rel.as_posix()).endswith(name[1:])


@pytest.mark.parametrize(
    ("stem", "slug", "index", "expected"),
    [
        ("beach", "studio-ghibli", 0, "beach.studio-ghibli.mp4"),
        ("beach", "studio-ghibli", 1, "beach.studio-ghibli-2.mp4"),
        ("beach", "studio-ghibli", 4, "beach.studio-ghibli-5.mp4"),
        ("IMG_0001", "gta", 0, "IMG_0001.gta.mp4"),
        ("my.holiday.2024", "pixar", 0, "my.holiday.2024.pixar.mp4"),
    ],
)
def test_output_name(stem: str, slug: str, index: int, expected: str) -> None:
    assert output_name(stem, slug, index) == expected


@pytest.mark.parametrize(
    ("stem", "slug", "index"), [("a", "gta", -1), ("", "gta", 0), ("a", "", 0)]
)
def test_output_name_rejects_nonsense(stem: str, slug: str, index: int) -> None:
    with pytest.raises(ValueError):
        output_name(stem, slug, index)


@pytest.mark.parametrize(
    ("rel", "index", "expected"),
    [
        ("trip/beach.MOV", 0, "trip/beach.studio-ghibli.mp4"),
        ("beach.mp4", 0, "beach.studio-ghibli.mp4"),
        ("a/b/c/beach.mkv", 1, "a/b/c/beach.studio-ghibli-2.mp4"),
    ],
)
def test_output_rel_path_mirrors_the_subfolder(rel: str, index: int, expected: str) -> None:
    assert output_rel_path(P(rel), "studio-ghibli", index) == P(expected)


def test_collision_sequence() -> None:
    got = list(itertools.islice(collision_candidates("a.mp4"), 4))
    assert got == ["a.mp4", "a (2).mp4", "a (3).mp4", "a (4).mp4"]


@pytest.mark.parametrize(
    ("name", "second"),
    [
        ("beach.studio-ghibli.mp4", "beach.studio-ghibli (2).mp4"),  # before ".mp4" only
        ("IMG_0001.MOV", "IMG_0001 (2).MOV"),
        ("README", "README (2)"),
        ("a.mp4.error.json", "a.mp4.error (2).json"),
    ],
)
def test_collision_counter_goes_before_the_last_suffix(name: str, second: str) -> None:
    candidates = collision_candidates(name)
    assert next(candidates) == name
    assert next(candidates) == second


def test_collision_name_counts_from_one() -> None:
    assert collision_name("a.mp4", 1) == "a.mp4"
    assert collision_name("a.mp4", 12) == "a (12).mp4"
    with pytest.raises(ValueError, match="starts at 1"):
        collision_name("a.mp4", 0)


def test_collision_candidates_are_all_distinct() -> None:
    got = list(itertools.islice(collision_candidates("x.mp4"), 500))
    assert len(set(got)) == 500
    assert got[-1] == "x (500).mp4"


@pytest.mark.parametrize(
    ("final", "tag", "expected"),
    [
        ("beach.studio-ghibli.mp4", "7-0", ".beach.studio-ghibli.mp4.7-0.mh-tmp"),
        ("a (2).mp4", "abc", ".a (2).mp4.abc.mh-tmp"),
    ],
)
def test_temp_name_is_hidden_and_ignored(final: str, tag: str, expected: str) -> None:
    name = temp_name(final, tag)
    assert name == expected
    assert is_ignored_name(name)
    assert classify(P(name), size=10**9, include=(), exclude=(), min_size_bytes=1) is (
        Verdict.IGNORED
    )


@pytest.mark.parametrize("tag", ["", "a/b", "a\0b", "x" * (MAX_TAG_BYTES + 1)])
def test_temp_name_rejects_bad_tags(tag: str) -> None:
    with pytest.raises(ValueError, match="bad temp tag"):
        temp_name("a.mp4", tag)


@pytest.mark.parametrize(
    ("original", "expected"),
    [("beach.MOV", "beach.MOV.error.json"), ("trip notes.mkv", "trip notes.mkv.error.json")],
)
def test_error_json_name(original: str, expected: str) -> None:
    assert error_json_name(original) == expected


@pytest.mark.parametrize(
    ("name", "max_bytes", "reserve", "expected"),
    [
        ("abcdef.mp4", 255, 0, "abcdef.mp4"),  # fits: unchanged
        ("abcdef.mp4", 8, 0, "abcd.mp4"),
        ("abcdef.mp4", 10, 2, "abcd.mp4"),
        ("éééé.mp4", 9, 0, "éé.mp4"),  # 5 bytes for the stem: a 2-byte é is never split
        ("éééé.mp4", 8, 0, "éé.mp4"),
        ("éééé.mp4", 7, 0, "é.mp4"),
        ("日本語.mp4", 10, 0, "日本.mp4"),
        ("日本語.mp4", 9, 0, "日.mp4"),
        ("😀😀.mp4", 11, 0, "😀.mp4"),
    ],
)
def test_fit_name_cuts_the_stem_on_character_boundaries(
    name: str, max_bytes: int, reserve: int, expected: str
) -> None:
    assert fit_name(name, max_bytes, reserve) == expected


def test_fit_name_keeps_an_explicit_suffix_chain() -> None:
    name = "x" * 300 + ".studio-ghibli-2.mp4"
    fitted = fit_name(name, keep_suffix=".studio-ghibli-2.mp4")
    assert fitted == "x" * (255 - len(".studio-ghibli-2.mp4")) + ".studio-ghibli-2.mp4"


def test_fit_name_counts_undecodable_bytes_as_one_byte_each() -> None:
    # A Latin-1 name on a NAS arrives from os.fsdecode as surrogate escapes.
    name = b"caf\xe9-".decode("utf-8", "surrogateescape") * 100 + ".mp4"
    fitted = fit_name(name)
    assert nbytes(fitted) == 255
    assert fitted.endswith(".mp4")
    assert name.startswith(fitted[:-4])


@pytest.mark.parametrize(
    ("name", "max_bytes", "keep_suffix"),
    [("abc.mp4", 4, None), ("abc.mp4", 255, ".mov"), (".mp4", 255, ".mp4")],
)
def test_fit_name_refuses_what_cannot_fit(
    name: str, max_bytes: int, keep_suffix: str | None
) -> None:
    with pytest.raises(ValueError):
        fit_name(name, max_bytes, keep_suffix=keep_suffix)


def _stems() -> list[str]:
    """Stems up to and past 250 bytes mixing 1-, 2-, 3- and 4-byte characters."""
    rng = random.Random(1234)
    alphabet = ["a", "Z", "-", " ", ".", "é", "ß", "日", "本", "語", "한", "😀", "\udce9"]
    stems = [
        "é" * 80 + "日本語のビデオ" * 4,  # 160 + 84 = 244 bytes
        "é" * 125,  # 250 bytes
        "日" * 84,  # 252 bytes
        "😀" * 63,  # 252 bytes
        "a" * 255,
        "a" * 250 + "é",
        "x",
    ]
    for _ in range(300):
        length = rng.randint(1, 130)
        stems.append("".join(rng.choice(alphabet) for _ in range(length)))
    return stems


def _assert_name_ok(name: str) -> None:
    assert nbytes(name) <= MAX_NAME_BYTES, (nbytes(name), name)
    assert "/" not in name and "\0" not in name
    assert name  # never empty


@pytest.mark.parametrize("slug", ["studio-ghibli", "futuristic-fantasy", "gta"])
def test_every_generated_name_fits_255_bytes(slug: str) -> None:
    for stem in _stems():
        for index in (0, 1, 9):
            out = output_name(stem, slug, index)
            _assert_name_ok(out)
            # The user's stem is only ever shortened, the daemon's suffix is always kept.
            tail = f".{slug}.mp4" if index == 0 else f".{slug}-{index + 1}.mp4"
            assert out.endswith(tail)
            assert stem.startswith(out[: -len(tail)])
            assert nbytes(out) + NAME_RESERVE <= MAX_NAME_BYTES
            # An output is never taken as an input of its own inbox.
            assert not is_ignored_name(out) or stem.startswith((".", "~"))

            variants = list(itertools.islice(collision_candidates(out), 3))
            variants.append(collision_name(out, 99_999))
            assert variants[0] == out  # a name already fitted is not cut again
            assert variants[-1].endswith(" (99999).mp4")
            for variant in variants:
                _assert_name_ok(variant)
                for tag in ("1", "12345-0", "t" * MAX_TAG_BYTES):
                    temp = temp_name(variant, tag)
                    _assert_name_ok(temp)
                    assert temp.startswith(".") and temp.endswith(f".{tag}.mh-tmp")
                    assert is_ignored_name(temp)
                    assert nbytes(error_json_name(variant)) <= MAX_NAME_BYTES

        # Originals near the limit (archive/failed mirrors) and their reports also fit.
        for ext in (".MOV", ".mkv", ".m2ts"):
            original = fit_name(stem + ext)  # as the filesystem could hold it
            for variant in itertools.islice(collision_candidates(original), 3):
                _assert_name_ok(variant)
                assert variant.endswith(ext)
                _assert_name_ok(temp_name(variant, "t" * MAX_TAG_BYTES))
            report = error_json_name(original)
            _assert_name_ok(report)
            assert report.endswith(ext + ".error.json")
            _assert_name_ok(temp_name(report, "t" * MAX_TAG_BYTES))


def test_temp_name_of_an_overlong_final_name_is_shortened_but_keeps_its_shape() -> None:
    final = "é" * 127 + ".mp4"  # 258 bytes: not even a valid name; temp_name still fits
    temp = temp_name(final, "9-9")
    assert nbytes(temp) <= MAX_NAME_BYTES
    assert temp.startswith(".é") and temp.endswith(".mp4.9-9.mh-tmp")
    assert temp_name(final, "9-9") == temp  # deterministic: the journal can re-derive it
