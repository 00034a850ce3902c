"""Synthesize small real videos with PyAV: sample clips for the demo and test fixtures."""

from __future__ import annotations

import math
from array import array
from fractions import Fraction
from pathlib import Path
from typing import cast

import av


def synthesize_clip(
    path: Path,
    *,
    seconds: float = 2.0,
    fps: int = 24,
    width: int = 160,
    height: int = 120,
    codec: str = "libx264",
    with_audio: bool = False,
    hue: int = 0,
) -> Path:
    """Write a moving test pattern of `seconds` at `fps` to `path` (container from its suffix).

    Returns `path`. Frames differ from one another so encoders and decoders do real work.
    """
    path.parent.mkdir(parents=True, exist_ok=True)
    frames = max(1, round(seconds * fps))
    with av.open(str(path), mode="w") as container:
        stream = cast("av.VideoStream", container.add_stream(codec, rate=fps))
        stream.width = width
        stream.height = height
        stream.pix_fmt = "yuv420p"
        audio: av.AudioStream | None = None
        if with_audio:
            audio = container.add_stream("aac", rate=44100)
            audio.layout = "mono"
        for i in range(frames):
            frame = _pattern_frame(width, height, i, hue)
            frame.pts = i
            frame.time_base = Fraction(1, fps)
            for packet in stream.encode(frame):
                container.mux(packet)
        for packet in stream.encode():
            container.mux(packet)
        if audio is not None:
            rate = 44100
            total = int(seconds * rate)
            chunk = 1024
            for start in range(0, total, chunk):
                count = min(chunk, total - start)
                tone = array(
                    "f",
                    (0.2 * math.sin(2 * math.pi * 440 * (start + k) / rate) for k in range(count)),
                )
                aframe = av.AudioFrame(format="fltp", layout="mono", samples=count)
                aframe.planes[0].update(tone.tobytes().ljust(aframe.planes[0].buffer_size, b"\0"))
                aframe.sample_rate = rate
                aframe.pts = start
                aframe.time_base = Fraction(1, rate)
                for packet in audio.encode(aframe):
                    container.mux(packet)
            for packet in audio.encode():
                container.mux(packet)
    return path


def _pattern_frame(width: int, height: int, index: int, hue: int) -> av.VideoFrame:
    """One rgb24 frame of diagonal colour bands that move with `index`."""
    frame = av.VideoFrame(width, height, "rgb24")
    plane = frame.planes[0]
    pad = b"\0" * (plane.line_size - width * 3)
    rows = []
    for y in range(height):
        row = bytearray(width * 3)
        row[0::3] = bytes(
            ((x * 255 // max(width - 1, 1)) + index * 7 + hue) & 255 for x in range(width)
        )
        row[1::3] = bytes([((y * 255 // max(height - 1, 1)) + index * 3) & 255]) * width
        row[2::3] = bytes((x + y + index * 5 + hue * 3) & 255 for x in range(width))
        rows.append(bytes(row) + pad)
    plane.update(b"".join(rows))
    return frame
