"""The emulator's stand-in for Magic Hour's model: a real, visibly restyled render with PyAV.

It decodes the upload, keeps `start_seconds..end_seconds`, keeps every other frame for HALF,
runs a per-art-style filter chain (libavfilter, so no per-pixel Python), scales to the plan's
size rule and encodes H.264 in mp4.
"""

from __future__ import annotations

import hashlib
import math
from collections.abc import Callable
from dataclasses import dataclass
from fractions import Fraction
from pathlib import Path

import av
import av.error
import av.filter

from mh_watchd.core.api import ART_STYLES, TIER_MAX_EDGE
from mh_watchd.core.errors import MediaError

# Each look is a libavfilter chain; the style's hash picks one and a hue rotation, so every
# art style gets its own visibly different colours.
_LOOKS: tuple[tuple[tuple[str, str], ...], ...] = (
    (("hue", "s=1.8"),),
    (("negate", ""),),
    (("lutrgb", "r='bitand(val,192)':g='bitand(val,192)':b='bitand(val,192)'"),),
    (("colorchannelmixer", "rr=0:rg=1:gg=0:gb=1:bb=0:br=1"),),
    (("edgedetect", "mode=colormix:high=0.3:low=0.1"),),
)


class RenderAborted(Exception):
    """The emulator is stopping; the render was abandoned half way."""


class NothingToRender(Exception):
    """The video decodes but holds no frame inside the requested window."""


@dataclass(frozen=True)
class RenderResult:
    """What a finished render produced."""

    width: int
    height: int
    fps: float
    frames: int
    duration_seconds: float


def output_size(width: int, height: int, tier: str) -> tuple[int, int]:
    """Return the output (width, height): long edge capped by `tier`, sides floored to 64.

    Raises KeyError for an unknown tier. Each side is at least 64.
    """
    cap = TIER_MAX_EDGE[tier]
    scale = min(1.0, cap / max(width, height, 1))
    return (
        max(64, math.floor(width * scale) // 64 * 64),
        max(64, math.floor(height * scale) // 64 * 64),
    )


def style_filters(art_style: str) -> list[tuple[str, str]]:
    """Return the (filter, args) chain that stands for `art_style`; stable across runs.

    The known styles get 75 distinct (look, hue) pairs; any other name is placed by its hash.
    """
    if art_style in ART_STYLES:
        number = ART_STYLES.index(art_style)
    else:
        number = int.from_bytes(hashlib.sha256(art_style.encode("utf-8")).digest()[:4], "big")
    look = _LOOKS[number % len(_LOOKS)]
    # 15 hue steps of 24 degrees per look: 75 combinations, one per art style.
    hue_degrees = (number // len(_LOOKS)) % 15 * 24
    return [*look, ("hue", f"h={hue_degrees}")]


def render_video(
    source: Path,
    target: Path,
    *,
    start_seconds: float,
    end_seconds: float,
    fps_resolution: str,
    art_style: str,
    tier: str,
    should_stop: Callable[[], bool] = lambda: False,
) -> RenderResult:
    """Render `source` into an H.264 mp4 at `target` and return its facts.

    Raises MediaError when the source is not a decodable video, NothingToRender when the window
    holds no frame, RenderAborted once `should_stop()` is true. A partial `target` is removed.
    """
    try:
        return _render(
            source,
            target,
            start_seconds=start_seconds,
            end_seconds=end_seconds,
            fps_resolution=fps_resolution,
            art_style=art_style,
            tier=tier,
            should_stop=should_stop,
        )
    except BaseException:
        target.unlink(missing_ok=True)
        raise


def _render(
    source: Path,
    target: Path,
    *,
    start_seconds: float,
    end_seconds: float,
    fps_resolution: str,
    art_style: str,
    tier: str,
    should_stop: Callable[[], bool],
) -> RenderResult:
    try:
        container = av.open(str(source), mode="r")
    except (av.error.FFmpegError, OSError, UnicodeDecodeError) as exc:
        raise MediaError(f"not a readable video: {exc}") from exc
    with container:
        if not container.streams.video:
            raise MediaError("the file holds no video stream")
        stream = container.streams.video[0]
        in_fps = stream.guessed_rate or stream.average_rate or Fraction(30)
        out_fps = Fraction(in_fps) / 2 if fps_resolution == "HALF" else Fraction(in_fps)
        out_base = 1 / out_fps
        time_base = stream.time_base or Fraction(1, 90000)
        origin = stream.start_time or 0
        # Frame times are k/fps in floating point: a quarter frame of slack keeps the
        # frame at exactly start_seconds and drops the one at exactly end_seconds.
        slack = 0.25 / float(in_fps)
        writer: _Writer | None = None
        kept = 0
        try:
            for frame in container.decode(stream):
                if should_stop():
                    raise RenderAborted()
                if frame.pts is None:
                    continue
                t = float((frame.pts - origin) * time_base)
                if t < start_seconds - slack:
                    continue
                if t >= end_seconds - slack:
                    break
                kept += 1
                if fps_resolution == "HALF" and kept % 2 == 0:
                    continue
                if writer is None:
                    writer = _Writer(target, frame, out_fps, art_style, tier)
                writer.write(frame, out_base)
        except av.error.FFmpegError as exc:
            if writer is not None:
                writer.close()
            raise MediaError(f"the video does not decode: {exc}") from exc
        except BaseException:
            if writer is not None:
                writer.close()
            raise
        if writer is None:
            raise NothingToRender("the video has no frames between start_seconds and end_seconds")
        writer.finish()
        return RenderResult(
            width=writer.width,
            height=writer.height,
            fps=float(out_fps),
            frames=writer.frames,
            duration_seconds=float(writer.frames / out_fps),
        )


class _Writer:
    """The filter graph and the H.264 encoder, set up from the first kept frame."""

    def __init__(
        self, target: Path, first: av.VideoFrame, fps: Fraction, art_style: str, tier: str
    ) -> None:
        self.width, self.height = output_size(first.width, first.height, tier)
        self.frames = 0
        self._base = 1 / fps
        self._graph = av.filter.Graph()
        nodes = [
            self._graph.add_buffer(
                width=first.width,
                height=first.height,
                format=first.format,
                time_base=self._base,
            )
        ]
        for name, args in style_filters(art_style):
            nodes.append(self._graph.add(name, args or None))
        nodes.append(self._graph.add("scale", f"{self.width}:{self.height}"))
        nodes.append(self._graph.add("format", "yuv420p"))
        nodes.append(self._graph.add("buffersink"))
        self._graph.link_nodes(*nodes).configure()
        self._container = av.open(str(target), mode="w", format="mp4")
        self._stream = self._container.add_stream("libx264", rate=fps)
        self._stream.width = self.width
        self._stream.height = self.height
        self._stream.pix_fmt = "yuv420p"
        self._stream.codec_context.options = {"preset": "veryfast"}

    def write(self, frame: av.VideoFrame, base: Fraction) -> None:
        frame.pts = self.frames
        frame.time_base = base
        self.frames += 1
        self._graph.vpush(frame)
        self._drain()

    def finish(self) -> None:
        self._graph.vpush(None)
        self._drain()
        for packet in self._stream.encode():
            self._container.mux(packet)
        self._container.close()

    def close(self) -> None:
        self._container.close()

    def _drain(self) -> None:
        while True:
            try:
                out = self._graph.vpull()
            except (av.error.BlockingIOError, av.error.EOFError):
                return
            for packet in self._stream.encode(out):
                self._container.mux(packet)
