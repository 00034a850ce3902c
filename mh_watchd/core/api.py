"""Facts about the Magic Hour video-to-video API, and its request and response shapes.

Pure data: the vocabularies the service accepts, the credit estimate, and frozen dataclasses
for what the client sends and gets back. Both the client and the emulator use these.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field

ART_STYLES: tuple[str, ...] = (
    "3D Render", "Airbender", "Android", "Anime Warrior", "Armored Knight", "Assassin's Creed",
    "Avatar", "Black Spiderman", "Boba Fett", "Bold Anime", "Celestial Skin",
    "Chinese Swordsmen", "Clay", "Comic", "Cyberpunk", "Cypher", "Dark Fantasy", "Dragonball Z",
    "Future Bot", "Futuristic Fantasy", "GTA", "Ghibli Anime", "Ghost", "Gundam", "Hologram",
    "Illustration", "Impressionism", "Ink", "Ink Poster", "Jinx", "Knight", "Lego", "Link",
    "Marble", "Mario", "Master Chief", "Mech", "Minecraft", "Mystique", "Naruto", "Neon Dream",
    "No Art Style", "Oil Painting", "On Fire", "Origami", "Painterly Anime", "Pixar", "Pixel",
    "Power Armor", "Power Ranger", "Radiant Anime", "Realistic Anime", "Realistic Pixar",
    "Retro Anime", "Retro Sci-Fi", "Samurai", "Samurai Bot", "Sharp Anime", "Soft Anime",
    "Solid Snake", "Spartan", "Starfield", "Street Fighter", "Studio Ghibli", "Sub-Zero",
    "The Void", "Tomb Raider", "Underwater", "Van Gogh", "Viking", "Watercolor",
    "Western Anime", "Wu Kong", "Wuxia Anime", "Zelda",
)  # fmt: skip

MODELS: tuple[str, ...] = (
    "default", "Dreamshaper", "Absolute Reality", "Flat 2D Anime", "Soft Anime", "Kaywaii",
    "Western Anime", "3D Anime",
)  # fmt: skip

PROMPT_TYPES: tuple[str, ...] = ("default", "custom", "append_default")
PROMPT_REQUIRED_TYPES: frozenset[str] = frozenset({"custom", "append_default"})
VERSIONS: tuple[str, ...] = ("default", "v1", "v2")
FPS_RESOLUTIONS: tuple[str, ...] = ("FULL", "HALF")
VIDEO_SOURCES: tuple[str, ...] = ("file", "youtube")

# Extensions the upload-urls route accepts for type "video"; others are remuxed first.
UPLOAD_VIDEO_EXTENSIONS: tuple[str, ...] = ("mp4", "m4v", "mov", "webm")

# Long-edge caps by plan, in pixels.
TIER_MAX_EDGE: dict[str, int] = {"free": 576, "creator": 1024, "pro": 1472}

PROJECT_STATUSES: tuple[str, ...] = (
    "draft", "queued", "rendering", "complete", "error", "canceled",
)  # fmt: skip
TERMINAL_STATUSES: frozenset[str] = frozenset({"complete", "error", "canceled"})

SERVICE_NAME_MAX_CHARS = 200


def estimate_credits(seconds: float, fps_resolution: str) -> int:
    """Credits the service is expected to charge for `seconds` of video.

    An inference (fits the docs' example, 15 s HALF -> 450): 30 fps assumed, FULL costs twice
    HALF. Always prefer the service's own `credits_charged` once known.
    """
    factor = 1.0 if fps_resolution == "FULL" else 0.5
    return math.ceil(round(seconds * 30 * factor * 2, 6))


@dataclass(frozen=True)
class Style:
    """The `style` object of a create request."""

    art_style: str
    model: str = "default"
    prompt: str | None = None
    prompt_type: str = "default"
    version: str = "default"

    def to_json(self) -> dict[str, object]:
        """The style as the create body wants it."""
        return {
            "art_style": self.art_style,
            "model": self.model,
            "prompt": self.prompt,
            "prompt_type": self.prompt_type,
            "version": self.version,
        }


@dataclass(frozen=True)
class CreateRequest:
    """Everything a video-to-video create sends."""

    name: str
    file_path: str
    start_seconds: float
    end_seconds: float
    fps_resolution: str
    style: Style

    def to_json(self) -> dict[str, object]:
        """The JSON body of `POST /v1/video-to-video`."""
        return {
            "name": self.name,
            "start_seconds": self.start_seconds,
            "end_seconds": self.end_seconds,
            "fps_resolution": self.fps_resolution,
            "assets": {"video_source": "file", "video_file_path": self.file_path},
            "style": self.style.to_json(),
        }


@dataclass(frozen=True)
class UploadUrl:
    """One item of `POST /v1/files/upload-urls`."""

    upload_url: str
    file_path: str
    expires_at: str


@dataclass(frozen=True)
class CreatedProject:
    """The answer to a create."""

    id: str
    credits_charged: int
    estimated_frame_cost: int


@dataclass(frozen=True)
class Download:
    """One output of a completed project."""

    url: str
    expires_at: str


@dataclass(frozen=True)
class ProjectError:
    """Why a project ended in `error`."""

    code: str
    message: str


@dataclass(frozen=True)
class Project:
    """`GET /v1/video-projects/{id}`: all 16 keys of the service's answer."""

    id: str
    name: str | None
    status: str
    type: str
    created_at: str
    width: int
    height: int
    enabled: bool
    start_seconds: float
    end_seconds: float
    credits_charged: int
    total_frame_cost: int
    fps: float
    error: ProjectError | None
    downloads: tuple[Download, ...] = field(default_factory=tuple)
    download: Download | None = None

    @property
    def is_terminal(self) -> bool:
        """True once the project is complete, errored or canceled."""
        return self.status in TERMINAL_STATUSES


@dataclass(frozen=True)
class Account:
    """`GET /v1/account`."""

    id: str
    email: str
    credits: int
    tier: str
    subscription: object = None
