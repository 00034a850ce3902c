"""Every name the daemon makes: at the service, in the outbox, for collisions, temps, errors.

Names are measured in bytes as the filesystem stores them (UTF-8; undecodable bytes that came
in as surrogate escapes count as one byte each). Stems are shortened on character boundaries
so that every name written fits `MAX_NAME_BYTES`, including its ` (n)` and temp forms.
"""

from __future__ import annotations

import itertools
import re
from collections.abc import Iterator
from pathlib import PurePosixPath

# NAME_MAX on every filesystem we meet (ext4, xfs, btrfs, zfs, SMB, NFS).
MAX_NAME_BYTES = 255
# The service's project name limit, in characters.
MAX_SERVICE_NAME_CHARS = 200
# A temp-name tag longer than this is refused (a job id and an output index fit easily).
MAX_TAG_BYTES = 32
TEMP_SUFFIX = ".mh-tmp"
ERROR_JSON_SUFFIX = ".error.json"

# Room kept by final names for a collision counter up to " (99999)".
COLLISION_RESERVE = len(" (99999)")
# Room kept by final names for the temp wrapping ".<name>.<tag>.mh-tmp".
TEMP_RESERVE = len(".") + len(".") + MAX_TAG_BYTES + len(TEMP_SUFFIX)
# What every final name keeps free, so its " (n)" and temp forms still fit.
NAME_RESERVE = COLLISION_RESERVE + TEMP_RESERVE

_APOSTROPHES = re.compile("['’]")
_NON_SLUG = re.compile(r"[^a-z0-9]+")
_SURROGATE_BYTES = "surrogateescape"


def _byte_len(text: str) -> int:
    return len(text.encode("utf-8", _SURROGATE_BYTES))


def _split_last_suffix(name: str) -> tuple[str, str]:
    # The " (n)" goes before the last suffix; a leading dot (hidden name) or a trailing dot is
    # not a suffix.
    dot = name.rfind(".")
    if dot <= 0 or dot == len(name) - 1:
        return name, ""
    return name[:dot], name[dot:]


def style_slug(art_style: str) -> str:
    """Return the art style as it appears in output names: "Studio Ghibli" -> "studio-ghibli".

    Lowercase, apostrophes dropped, other runs of non-[a-z0-9] -> "-", no leading/trailing "-";
    "style" when nothing is left.
    """
    slug = _NON_SLUG.sub("-", _APOSTROPHES.sub("", art_style.lower())).strip("-")
    return slug or "style"


def service_name(folder: str, rel_path: PurePosixPath) -> str:
    """Return the project name shown in Magic Hour's web app: "<folder>/<rel_path>".

    Longer than 200 characters, it is cut from the left to "…" + its tail.
    """
    name = f"{folder}/{rel_path.as_posix()}"
    if len(name) <= MAX_SERVICE_NAME_CHARS:
        return name
    return "…" + name[-(MAX_SERVICE_NAME_CHARS - 1) :]


def fit_name(
    name: str, max_bytes: int = MAX_NAME_BYTES, reserve: int = 0, *, keep_suffix: str | None = None
) -> str:
    """Return `name` with its stem shortened so its UTF-8 length + reserve <= max_bytes.

    `keep_suffix` (default: the last suffix) is never cut; the stem is cut from its end on a
    character boundary and keeps at least one character. Raises ValueError when even that
    does not fit, or `name` does not end with `keep_suffix`.
    """
    if keep_suffix is None:
        stem, suffix = _split_last_suffix(name)
    elif name.endswith(keep_suffix) and len(name) > len(keep_suffix):
        stem, suffix = name[: len(name) - len(keep_suffix)], keep_suffix
    else:
        raise ValueError(f"{name!r} has no stem before {keep_suffix!r}")
    budget = max_bytes - reserve - _byte_len(suffix)
    if _byte_len(stem) <= budget:
        return name
    cut = _prefix_within(stem, budget)
    if not cut:
        raise ValueError(f"no room for a name ending in {suffix!r} within {max_bytes} bytes")
    return cut + suffix


def _prefix_within(stem: str, budget: int) -> str:
    used = 0
    for index, char in enumerate(stem):
        used += _byte_len(char)
        if used > budget:
            return stem[:index]
    return stem


def output_name(stem: str, slug: str, index: int) -> str:
    """Return the name of output `index` of a job: "<stem>.<slug>.mp4", then "<stem>.<slug>-2.mp4".

    The stem is shortened so the name keeps NAME_RESERVE bytes free. Raises ValueError for a
    negative index or an empty stem or slug.
    """
    if index < 0:
        raise ValueError(f"output index must not be negative, got {index}")
    if not stem or not slug:
        raise ValueError("an output name needs a stem and a style slug")
    tail = f".{slug}.mp4" if index == 0 else f".{slug}-{index + 1}.mp4"
    return fit_name(stem + tail, reserve=NAME_RESERVE, keep_suffix=tail)


def output_rel_path(rel_path: PurePosixPath, slug: str, index: int) -> PurePosixPath:
    """Return the output path relative to the outbox, mirroring the input's subfolder:
    "trip/beach.MOV" -> "trip/beach.studio-ghibli.mp4". Raises ValueError as output_name."""
    return rel_path.parent / output_name(rel_path.stem, slug, index)


def collision_name(name: str, n: int, *, reserve: int = TEMP_RESERVE) -> str:
    """Return the `n`-th name to try for `name`: n=1 -> "a.mp4", n=2 -> "a (2).mp4", ...

    The " (n)" goes before the last suffix; the result is fitted to MAX_NAME_BYTES with
    `reserve` bytes free. Raises ValueError for n < 1, or as fit_name.
    """
    if n < 1:
        raise ValueError(f"collision counter starts at 1, got {n}")
    if n == 1:
        return fit_name(name, reserve=reserve)
    base, suffix = _split_last_suffix(name)
    counter = f" ({n}){suffix}"
    return fit_name(base + counter, reserve=reserve, keep_suffix=counter)


def collision_candidates(name: str, *, reserve: int = TEMP_RESERVE) -> Iterator[str]:
    """Yield names to try in order: "a.mp4", "a (2).mp4", "a (3).mp4", ... (endless).

    Each is `collision_name(name, n)`, so every one fits with `reserve` bytes free (default:
    room for its temp form). Raises ValueError as fit_name.
    """
    for n in itertools.count(1):
        yield collision_name(name, n, reserve=reserve)


def temp_name(final_name: str, tag: str) -> str:
    """Return the hidden temp name a file is written under first: ".<final_name>.<tag>.mh-tmp".

    Deterministic and within MAX_NAME_BYTES (the final name's stem is shortened if needed).
    Raises ValueError for an empty tag, one with "/" or NUL, or one over MAX_TAG_BYTES.
    """
    if not tag or "/" in tag or "\0" in tag or _byte_len(tag) > MAX_TAG_BYTES:
        raise ValueError(f"bad temp tag {tag!r}: 1-{MAX_TAG_BYTES} bytes, no '/' or NUL")
    base, suffix = _split_last_suffix(final_name)
    tail = f"{suffix}.{tag}{TEMP_SUFFIX}"
    return fit_name(f".{base}{tail}", keep_suffix=tail)


def error_json_name(original_name: str, *, reserve: int = TEMP_RESERVE) -> str:
    """Return the report's name beside a failed original: "<original name>.error.json".

    The original's stem is shortened when needed so the name (and its temp form) fits.
    """
    base, suffix = _split_last_suffix(original_name)
    tail = suffix + ERROR_JSON_SUFFIX
    return fit_name(base + tail, reserve=reserve, keep_suffix=tail)
