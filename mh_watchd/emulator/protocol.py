"""The emulator's reading of request bodies: validation with the service's codes and messages.

Every check raises `Problem(status, message)`; the message names the offending field, as the
service's 400s do. Nothing here touches the ledger or the disk.
"""

from __future__ import annotations

import json
import math
import re
from dataclasses import dataclass
from typing import Any

from mh_watchd.core.api import (
    ART_STYLES,
    FPS_RESOLUTIONS,
    MODELS,
    PROMPT_REQUIRED_TYPES,
    PROMPT_TYPES,
    UPLOAD_VIDEO_EXTENSIONS,
    VERSIONS,
    VIDEO_SOURCES,
)

# The SDK's documented lists for the other asset types; the emulator accepts them but only
# renders video.
_ASSET_EXTENSIONS: dict[str, tuple[str, ...]] = {
    "video": UPLOAD_VIDEO_EXTENSIONS,
    "audio": ("mp3", "mpeg", "wav", "aac", "aiff", "flac"),
    "image": ("png", "jpg", "jpeg", "webp", "avif", "jp2", "tiff", "bmp"),
}
_EXTENSION_RE = re.compile(r"^[a-z0-9]+$")
FORCE_END_STATUSES: tuple[str, ...] = ("error", "canceled")


class Problem(Exception):
    """An HTTP answer other than success: `status` and the `{"message": ...}` text."""

    def __init__(self, status: int, message: str, headers: dict[str, str] | None = None) -> None:
        self.status = status
        self.message = message
        self.headers = dict(headers or {})
        super().__init__(f"{status}: {message}")


@dataclass(frozen=True)
class UploadItem:
    """One requested upload slot."""

    extension: str
    type: str


@dataclass(frozen=True)
class CreateSpec:
    """A validated `POST /v1/video-to-video` body."""

    name: str | None
    start_seconds: float
    end_seconds: float
    fps_resolution: str
    file_path: str
    style: dict[str, Any]


def parse_json_object(body: bytes) -> dict[str, Any]:
    """Return the body as a JSON object; raises Problem(400) for anything else."""
    try:
        doc = json.loads(body.decode("utf-8")) if body.strip() else None
    except (UnicodeDecodeError, ValueError) as exc:
        raise Problem(400, f"Request body is not valid JSON: {exc}") from exc
    if not isinstance(doc, dict):
        raise Problem(400, "Request body must be a JSON object")
    return doc


def _is_number(value: object) -> bool:
    return isinstance(value, int | float) and not isinstance(value, bool) and math.isfinite(value)


def _number(doc: dict[str, Any], key: str, path: str) -> float:
    if key not in doc or doc[key] is None:
        raise Problem(400, f"{path} is required")
    value = doc[key]
    if not _is_number(value):
        raise Problem(400, f"{path} must be a number, got {value!r}")
    return float(value)


def _choice(
    doc: dict[str, Any], key: str, path: str, allowed: tuple[str, ...], default: str
) -> str:
    value = doc.get(key)
    if value is None:
        return default
    if value not in allowed:
        raise Problem(400, f"{path} {value!r} is not one of: {', '.join(allowed)}")
    return str(value)


def parse_upload_items(doc: dict[str, Any]) -> list[UploadItem]:
    """Return the items of a `POST /v1/files/upload-urls` body, in request order.

    Raises Problem(400) for a malformed item, Problem(422) for an extension the type refuses.
    """
    items = doc.get("items")
    if items is None:
        raise Problem(400, "items is required")
    if not isinstance(items, list) or not items:
        raise Problem(400, "items must be a non-empty list")
    parsed: list[UploadItem] = []
    for index, item in enumerate(items):
        path = f"items[{index}]"
        if not isinstance(item, dict):
            raise Problem(400, f"{path} must be an object")
        extension = item.get("extension")
        if extension is None:
            raise Problem(400, f"{path}.extension is required")
        if not isinstance(extension, str) or not _EXTENSION_RE.match(extension):
            raise Problem(
                400, f"{path}.extension {extension!r} must be lowercase letters and digits, no dot"
            )
        kind = item.get("type")
        if kind is None:
            raise Problem(400, f"{path}.type is required")
        if not isinstance(kind, str) or kind not in _ASSET_EXTENSIONS:
            raise Problem(400, f"{path}.type {kind!r} is not one of: video, audio, image")
        allowed = _ASSET_EXTENSIONS[kind]
        if extension not in allowed:
            raise Problem(
                422,
                f"{path}.extension {extension!r} is not a supported {kind} type; "
                f"supported: {', '.join(allowed)}",
            )
        parsed.append(UploadItem(extension=extension, type=str(kind)))
    return parsed


def parse_create(doc: dict[str, Any]) -> CreateSpec:
    """Return a validated create body; raises Problem(400) naming the first bad field.

    A YouTube source or an http(s) URL gets Problem(422): the emulator fetches nothing.
    """
    name = doc.get("name")
    if name is not None and not isinstance(name, str):
        raise Problem(400, "name must be a string")
    assets = doc.get("assets")
    if assets is None:
        raise Problem(400, "assets is required")
    if not isinstance(assets, dict):
        raise Problem(400, "assets must be an object")
    source = assets.get("video_source")
    if source is None:
        raise Problem(400, "assets.video_source is required")
    if source not in VIDEO_SOURCES:
        raise Problem(
            400, f"assets.video_source {source!r} is not one of: {', '.join(VIDEO_SOURCES)}"
        )
    file_path = ""
    if source == "file":
        file_path = assets.get("video_file_path") or ""
        if not file_path:
            raise Problem(400, "assets.video_file_path is required when video_source is 'file'")
        if not isinstance(file_path, str):
            raise Problem(400, "assets.video_file_path must be a string")
        if file_path.startswith(("http://", "https://")):
            raise Problem(
                422,
                "assets.video_file_path: the emulator cannot fetch URLs; "
                "upload the file and pass its api-assets/ path",
            )
        if not file_path.startswith("api-assets/"):
            raise Problem(
                400, "assets.video_file_path must be an api-assets/ path or an http(s) URL"
            )
    else:
        if not assets.get("youtube_url"):
            raise Problem(400, "assets.youtube_url is required when video_source is 'youtube'")
        raise Problem(422, "assets.youtube_url: the emulator cannot fetch YouTube videos")
    start = _number(doc, "start_seconds", "start_seconds")
    end = _number(doc, "end_seconds", "end_seconds")
    if start < 0:
        raise Problem(400, f"start_seconds must be at least 0, got {start}")
    if end < 0.1:
        raise Problem(400, f"end_seconds must be at least 0.1, got {end}")
    if end <= start:
        raise Problem(400, f"end_seconds ({end}) must be greater than start_seconds ({start})")
    fps_resolution = _choice(doc, "fps_resolution", "fps_resolution", FPS_RESOLUTIONS, "HALF")
    for deprecated in ("width", "height"):
        value = doc.get(deprecated)
        if value is not None and not (_is_number(value)):
            raise Problem(400, f"{deprecated} must be an integer")
    return CreateSpec(
        name=name,
        start_seconds=start,
        end_seconds=end,
        fps_resolution=fps_resolution,
        file_path=file_path,
        style=_parse_style(doc.get("style")),
    )


def _parse_style(style: object) -> dict[str, Any]:
    if style is None:
        raise Problem(400, "style is required")
    if not isinstance(style, dict):
        raise Problem(400, "style must be an object")
    art_style = style.get("art_style")
    if art_style is None:
        raise Problem(400, "style.art_style is required")
    if art_style not in ART_STYLES:
        raise Problem(400, f"style.art_style {art_style!r} is not a valid art style")
    model = _choice(style, "model", "style.model", MODELS, "default")
    prompt_type = _choice(style, "prompt_type", "style.prompt_type", PROMPT_TYPES, "default")
    version = _choice(style, "version", "style.version", VERSIONS, "default")
    prompt = style.get("prompt")
    if prompt is not None and not isinstance(prompt, str):
        raise Problem(400, "style.prompt must be a string")
    if prompt_type in PROMPT_REQUIRED_TYPES and not (prompt or "").strip():
        raise Problem(400, f"style.prompt is required when style.prompt_type is {prompt_type!r}")
    return {
        "art_style": art_style,
        "model": model,
        "prompt": prompt,
        "prompt_type": prompt_type,
        "version": version,
    }


def parse_credits(doc: dict[str, Any]) -> int:
    """Return the `credits` of a `POST /_emulator/credits` body; Problem(400) unless an int >= 0."""
    value = doc.get("credits")
    if not isinstance(value, int) or isinstance(value, bool) or value < 0:
        raise Problem(400, f"credits must be an integer >= 0, got {value!r}")
    return value


def parse_force_end(doc: dict[str, Any]) -> tuple[str, dict[str, str] | None]:
    """Return (status, error) of a `POST /_emulator/projects/<id>` body; Problem(400) if bad."""
    status = doc.get("status")
    if status not in FORCE_END_STATUSES:
        raise Problem(400, f"status must be one of: {', '.join(FORCE_END_STATUSES)}")
    error = doc.get("error")
    if error is None:
        return str(status), None
    if (
        not isinstance(error, dict)
        or not isinstance(error.get("code"), str)
        or not isinstance(error.get("message"), str)
    ):
        raise Problem(400, "error must be an object with string code and message")
    return str(status), {"code": error["code"], "message": error["message"]}
