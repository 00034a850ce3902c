"""Probe, convert and verify videos with PyAV: the daemon's one window onto media internals.

`probe` answers "is this a real video, how long, what frame rate" from the container header and
one decoded frame. `convert_to_mp4` turns containers the API does not take into mp4, copying
each stream whose codec fits and transcoding the others to H.264/AAC. `verify_output` checks a
downloaded render (contract invariant 3) before the original is filed away.

Every PyAV/FFmpeg failure on the source side becomes a `MediaError` with a plain reason; a
failure to write the destination (disk full, read-only) stays an `OSError` for the caller to
classify, because it says nothing about the file being converted.
"""

from __future__ import annotations

import contextlib
import os
import secrets
from collections.abc import Iterator
from dataclasses import dataclass
from fractions import Fraction
from pathlib import Path, PurePath
from typing import BinaryIO

import av
import av.error
from av.audio.stream import AudioStream
from av.container import InputContainer, OutputContainer
from av.packet import Packet
from av.stream import Disposition, Stream
from av.video.frame import VideoFrame
from av.video.stream import VideoStream

from mh_watchd.adapters.durable import fsync_dir, fsync_file
from mh_watchd.core.errors import MediaError

API_EXTENSIONS = frozenset({"mp4", "m4v", "mov", "webm"})
CONVERT_EXTENSIONS = frozenset(
    {"mkv", "avi", "ts", "m2ts", "mts", "mpg", "mpeg", "wmv", "flv", "3gp"}
)

_COPY_VIDEO_CODECS = frozenset({"h264", "hevc", "mpeg4"})
_COPY_AUDIO_CODECS = frozenset({"aac", "mp3"})
_AAC_SAMPLE_RATES = frozenset(
    {8000, 11025, 12000, 16000, 22050, 24000, 32000, 44100, 48000, 64000, 88200, 96000}
)
_AV_TIME_BASE = 1_000_000  # FFmpeg's AV_TIME_BASE: container times are in microseconds
# A recording cut mid-GOP (a .ts from a tuner) yields no picture until its next keyframe; a
# long GOP is a few hundred packets. Past this many, the stream is broken, not just cut.
_PROBE_MAX_PACKETS = 600
# A transcode tolerates scattered damaged packets (broadcast glitches), but not a file of them.
_MAX_BAD_PACKETS = 100
# verify_output reads only the last few seconds of a render to see that its data is all there.
_TAIL_SECONDS = 3.0
# The demuxed data may end this much before the header's duration (a last frame's rounding).
_TAIL_SLACK_SECONDS = 0.25
_PYAV_ERRORS = (av.error.FFmpegError, OSError)
# PyAV reads a Python file object through callbacks; big reads keep a conversion's overhead low.
_READ_BUFFER_BYTES = 1 << 20


@dataclass(frozen=True)
class MediaInfo:
    """What a probe learned about a video file."""

    container: str  # format name as PyAV reports it, e.g. "mov,mp4,m4a,3gp,3g2,mj2"
    duration_seconds: float
    fps: float  # average frame rate of the first video stream; 0.0 when unknown
    width: int
    height: int
    video_codec: str  # e.g. "h264"
    audio_codec: str | None


def needs_conversion(path: PurePath) -> bool:
    """Return True when `path`'s suffix (any case) names a container the API does not take."""
    return path.suffix.lower().lstrip(".") in CONVERT_EXTENSIONS


def probe(path: Path) -> MediaInfo:
    """Return what `path` holds, reading its header and decoding one video frame.

    Raises MediaError when it is not a decodable video (empty, truncated, text, audio only,
    no frame decodes) or cannot be opened at all. For inbox files, open them without
    following links (`LocalFileSystem.open_candidate`) and use `probe_fileobj`.
    """
    name = path.name
    try:
        with path.open("rb") as fileobj:
            return probe_fileobj(fileobj, name=name)
    except OSError as exc:
        raise _unreadable(name, _why(exc)) from exc


def probe_fileobj(fileobj: BinaryIO, *, name: str) -> MediaInfo:
    """Return what the seekable binary `fileobj` holds (as `probe` does); `name` is for messages.

    Reads from its start and leaves it open. Raises MediaError when it is not a decodable video.
    """
    try:
        if fileobj.seek(0, os.SEEK_END) == 0:
            raise _unreadable(name, "the file is empty")
        fileobj.seek(0)
        with av.open(fileobj, mode="r", metadata_errors="replace") as container:
            return _inspect(container, name)
    except _PYAV_ERRORS as exc:
        raise _unreadable(name, _why(exc)) from exc


def convert_to_mp4(src: Path | BinaryIO, dest: Path, *, name: str | None = None) -> Path:
    """Write `src` as an mp4 at `dest` (stream copy where codecs allow, else H.264/AAC).

    `src` is a path, or a seekable binary file already open (an inbox file opened without
    following links), read from its start and left open; `name` names it in messages
    (default: the path's name). Writes through a hidden temp name beside `dest`, then renames.
    Returns `dest`. Raises MediaError when `src` does not decode or cannot be converted,
    OSError when `dest` cannot be written (nothing is left behind either way), ValueError
    when `dest` is not a .mp4.
    """
    if dest.suffix != ".mp4":
        raise ValueError(f"conversion target must end in .mp4: {dest}")
    if not isinstance(src, Path):
        return _convert(src, dest, name or _name_of(src))
    try:
        fileobj = src.open("rb")
    except OSError as exc:
        raise _unreadable(name or src.name, _why(exc)) from exc
    with fileobj:
        return _convert(fileobj, dest, name or src.name)


def _convert(src: BinaryIO, dest: Path, name: str) -> Path:
    probe_fileobj(src, name=name)  # refuse before writing anything when it is not a video
    stem = dest.stem.encode()[:100].decode(errors="ignore")  # temp name must fit 255 bytes
    tmp = dest.with_name(f".{stem}.{secrets.token_hex(4)}.part")
    try:
        src.seek(0)
        _write_mp4(src, name, tmp)
        fsync_file(tmp)
        try:
            probe(tmp)
        except MediaError as exc:
            raise MediaError(f"{name} could not be converted: the result is unreadable") from exc
        os.replace(tmp, dest)
    except BaseException:
        with contextlib.suppress(OSError):
            tmp.unlink(missing_ok=True)
        raise
    fsync_dir(dest.parent)
    return dest


def verify_output(
    path: Path,
    *,
    expected_size: int | None,
    expected_duration_seconds: float | None,
    tolerance_seconds: float = 0.5,
) -> MediaInfo:
    """Return `path`'s MediaInfo once it is a complete, readable video of the expected shape.

    Checks the size (when given), that PyAV opens it and decodes its first frame, that its data
    reaches the end its header announces (reading only the tail), and the duration (when given)
    within `tolerance_seconds`. Raises MediaError with a plain reason otherwise.
    """
    name = path.name
    try:
        size = path.stat().st_size
    except OSError as exc:
        raise MediaError(f"{name} cannot be verified: {_why(exc)}") from exc
    if expected_size is not None and size != expected_size:
        raise MediaError(f"{name} has {size} bytes, expected {expected_size}")
    try:
        with av.open(str(path), metadata_errors="replace") as container:
            info = _inspect(container, name)
            _check_tail(container, name, info.duration_seconds)
    except _PYAV_ERRORS as exc:
        raise _unreadable(name, _why(exc)) from exc
    if (
        expected_duration_seconds is not None
        and abs(info.duration_seconds - expected_duration_seconds) > tolerance_seconds
    ):
        raise MediaError(
            f"{name} lasts {info.duration_seconds:.2f} s, expected "
            f"{expected_duration_seconds:.2f} s (+-{tolerance_seconds:g} s)"
        )
    return info


# --- probing -------------------------------------------------------------------------------


def _inspect(container: InputContainer, name: str) -> MediaInfo:
    """Describe an open container, decoding one video frame; raise MediaError if not a video."""
    video = _video_stream(container)
    if video is None:
        kinds = ", ".join(sorted({s.type for s in container.streams})) or "no streams at all"
        raise _unreadable(name, f"it has no video stream ({kinds})")
    audio = container.streams.audio[0] if container.streams.audio else None
    frame = _first_frame(container, video, name)
    duration = _header_duration(container, video)
    if duration is None:
        duration = _duration_from_packets(container, video, frame)
    if duration is None or duration <= 0:
        raise _unreadable(name, "its duration is unknown")
    return MediaInfo(
        container=container.format.name,
        duration_seconds=duration,
        fps=_fps(video),
        width=frame.width,
        height=frame.height,
        video_codec=video.codec_context.name,
        audio_codec=audio.codec_context.name if audio is not None else None,
    )


def _video_stream(container: InputContainer) -> VideoStream | None:
    """The first real video stream; cover art (an attached picture) does not count."""
    for stream in container.streams.video:
        if not stream.disposition & Disposition.attached_pic:
            return stream
    return None


def _first_frame(container: InputContainer, video: VideoStream, name: str) -> VideoFrame:
    """Decode packets of `video` until one frame comes out; raise MediaError if none does."""
    for count, packet in enumerate(container.demux(video), start=1):
        try:
            frames = packet.decode()
        except av.error.InvalidDataError:
            # Packets before the first keyframe reference pictures the file never had.
            frames = []
        if frames:
            return frames[0]
        if count >= _PROBE_MAX_PACKETS:
            break
    raise _unreadable(name, "no video frame decodes")


def _header_duration(container: InputContainer, video: VideoStream) -> float | None:
    """The duration the container or the video stream declares, in seconds, if any."""
    if container.duration is not None and container.duration > 0:
        return container.duration / _AV_TIME_BASE
    if video.duration and video.time_base is not None:
        return float(video.duration * video.time_base)
    return None


def _duration_from_packets(
    container: InputContainer, video: VideoStream, first: VideoFrame
) -> float | None:
    """Demux (never decode) the rest of `video` and measure from its start to its last packet."""
    interval = 1.0 / _fps(video) if _fps(video) > 0 else 0.0
    end = first.time + interval if first.time is not None else None
    for packet in container.demux(video):
        if packet.pts is None or packet.size == 0:
            continue
        step = float(packet.duration * packet.time_base) if packet.duration else interval
        packet_end = float(packet.pts * packet.time_base) + step
        end = packet_end if end is None else max(end, packet_end)
    if end is None:
        return None
    return end - _start_seconds(container, video)


def _start_seconds(container: InputContainer, video: VideoStream) -> float:
    """When the file's timeline starts (often not 0 for .ts and .mpg), in seconds."""
    if container.start_time is not None:
        return container.start_time / _AV_TIME_BASE
    if video.start_time is not None and video.time_base is not None:
        return float(video.start_time * video.time_base)
    return 0.0


def _fps(video: VideoStream) -> float:
    """The stream's average frame rate, else FFmpeg's best guess, else 0.0."""
    rate = video.average_rate or video.guessed_rate or video.base_rate
    return float(rate) if rate else 0.0


def _check_tail(container: InputContainer, name: str, duration_seconds: float) -> None:
    """Raise MediaError unless packets reach the end the header announces (a cut download)."""
    start = _start_seconds(container, _video_stream_or_fail(container, name))
    target = start + duration_seconds - _TAIL_SECONDS
    # Without a stream, the offset is in AV_TIME_BASE; backward lands on a keyframe before it.
    container.seek(max(0, int(target * _AV_TIME_BASE)), backward=True)
    streams = [*container.streams.video, *container.streams.audio]
    end: float | None = None
    for packet in container.demux(*streams):
        if packet.size == 0 or packet.pts is None:
            continue
        if packet.is_corrupt:
            at = float(packet.pts * packet.time_base)
            raise MediaError(f"{name} is truncated: data is missing at {at:.2f} s")
        step = packet.duration or 0
        packet_end = float((packet.pts + step) * packet.time_base)
        end = packet_end if end is None else max(end, packet_end)
    reached = 0.0 if end is None else end - start
    if reached < duration_seconds - _TAIL_SLACK_SECONDS:
        raise MediaError(
            f"{name} is truncated: its data ends at {reached:.2f} s of {duration_seconds:.2f} s"
        )


def _video_stream_or_fail(container: InputContainer, name: str) -> VideoStream:
    video = _video_stream(container)
    if video is None:
        raise _unreadable(name, "it has no video stream")
    return video


# --- conversion ----------------------------------------------------------------------------


def _write_mp4(src: BinaryIO, name: str, tmp: Path) -> None:
    """Convert open file `src` into a new mp4 at `tmp`; source trouble is MediaError, output
    OSError."""
    try:
        source = av.open(src, mode="r", metadata_errors="replace", buffer_size=_READ_BUFFER_BYTES)
    except _PYAV_ERRORS as exc:
        raise _unreadable(name, _why(exc)) from exc
    try:
        with source, av.open(str(tmp), mode="w", format="mp4") as output:
            video = _video_stream_or_fail(source, name)
            audio = source.streams.audio[0] if source.streams.audio else None
            start_seconds = source.start_time / _AV_TIME_BASE if source.start_time else 0.0
            routes: dict[int, _Route] = {}
            routes[video.index] = (
                _Copy(output, video, start_seconds)
                if video.codec_context.name in _COPY_VIDEO_CODECS
                else _VideoEncode(output, video, start_seconds, name)
            )
            if audio is not None:
                routes[audio.index] = (
                    _Copy(output, audio, start_seconds)
                    if audio.codec_context.name in _COPY_AUDIO_CODECS
                    else _AudioEncode(output, audio, start_seconds, name)
                )
            for packet in _source_packets(source, [video, *([audio] if audio else [])], name):
                routes[packet.stream_index].feed(packet)
            for route in routes.values():
                route.finish()
    except (MediaError, OSError):
        # OSError includes PyAV's OSError family: the destination failed (disk full, EROFS).
        raise
    except (av.error.FFmpegError, ValueError) as exc:
        # An encoder or muxer refusing these streams: nothing the caller can retry.
        raise MediaError(f"{name} could not be converted: {_why(exc)}") from exc


def _source_packets(
    container: InputContainer, streams: list[VideoStream | AudioStream], name: str
) -> Iterator[Packet[Stream]]:
    """Demux `streams`, turning any read failure into MediaError (it is the source's fault)."""
    packets = container.demux(*streams)
    while True:
        try:
            packet = next(packets)
        except StopIteration:
            return
        except _PYAV_ERRORS as exc:
            raise _unreadable(name, _why(exc)) from exc
        yield packet


class _Route:
    """Carries one source stream's packets into the output."""

    def feed(self, packet: Packet[Stream]) -> None:
        raise NotImplementedError

    def finish(self) -> None:
        """Flush whatever the route still holds once the source is exhausted."""


class _Copy(_Route):
    """Stream copy: packets move unchanged, their times shifted so the output starts at 0."""

    def __init__(self, output: OutputContainer, source: Stream, start_seconds: float) -> None:
        self.output = output
        self.stream = output.add_stream_from_template(source, opaque=True)
        self.offset = _ticks(start_seconds, source.time_base)

    def feed(self, packet: Packet[Stream]) -> None:
        if packet.size == 0:  # PyAV's end-of-stream marker, meant for decoders
            return
        if packet.pts is not None:
            packet.pts -= self.offset
        if packet.dts is not None:
            packet.dts -= self.offset
        packet.stream = self.stream
        self.output.mux(packet)


class _Decoding(_Route):
    """Shared decode step of the transcoding routes: tolerate a few damaged packets."""

    def __init__(self, source: VideoStream | AudioStream, name: str) -> None:
        self.source = source
        self.name = name
        self.bad_packets = 0

    def decode(self, packet: Packet[Stream] | None) -> list[VideoFrame] | list[av.AudioFrame]:
        try:
            return self.source.decode(packet)
        except av.error.InvalidDataError as exc:
            self.bad_packets += 1
            if self.bad_packets > _MAX_BAD_PACKETS:
                raise _unreadable(self.name, "too many damaged packets") from exc
            return []
        except _PYAV_ERRORS as exc:
            raise _unreadable(self.name, _why(exc)) from exc


class _VideoEncode(_Decoding):
    """Decode the source video and encode H.264 yuv420p at the same frame rate and timing."""

    def __init__(
        self, output: OutputContainer, source: VideoStream, start_seconds: float, name: str
    ) -> None:
        super().__init__(source, name)
        self.output = output
        rate = source.average_rate or source.guessed_rate or Fraction(25)
        self.stream = output.add_stream("libx264", rate=rate)
        # yuv420p needs even sides; a 1-pixel crop is invisible, an encoder error is not.
        self.width = max(2, source.codec_context.width & ~1)
        self.height = max(2, source.codec_context.height & ~1)
        self.stream.width = self.width
        self.stream.height = self.height
        self.stream.pix_fmt = "yuv420p"
        self.time_base = source.time_base or 1 / Fraction(rate)
        # Encoding in the source's time base keeps every frame's time exactly.
        self.stream.codec_context.time_base = self.time_base
        self.step = max(1, round(1 / (Fraction(rate) * self.time_base)))
        self.offset = _ticks(start_seconds, self.time_base)
        self.last_pts: int | None = None

    def feed(self, packet: Packet[Stream]) -> None:
        if packet.size == 0:
            return
        for frame in self.decode(packet):
            assert isinstance(frame, VideoFrame)
            self._encode(frame)

    def finish(self) -> None:
        for frame in self.decode(None):
            assert isinstance(frame, VideoFrame)
            self._encode(frame)
        self.output.mux(self.stream.encode(None))

    def _encode(self, frame: VideoFrame) -> None:
        if frame.pts is None:
            pts = 0 if self.last_pts is None else self.last_pts + self.step
        else:
            pts = frame.pts - self.offset
        if self.last_pts is not None and pts <= self.last_pts:
            return  # a repeated timestamp; x264 refuses non-increasing ones
        self.last_pts = pts
        picture = frame.reformat(width=self.width, height=self.height, format="yuv420p")
        picture.pts = pts
        picture.time_base = self.time_base
        self.output.mux(self.stream.encode(picture))


class _AudioEncode(_Decoding):
    """Decode the source audio and encode AAC (mono or stereo) at a rate AAC supports."""

    def __init__(
        self, output: OutputContainer, source: AudioStream, start_seconds: float, name: str
    ) -> None:
        super().__init__(source, name)
        self.output = output
        rate = source.sample_rate if source.sample_rate in _AAC_SAMPLE_RATES else 48000
        self.stream = output.add_stream("aac", rate=rate)
        self.stream.layout = "mono" if source.channels == 1 else "stereo"
        self.offset = _ticks(start_seconds, source.time_base) if source.time_base else 0

    def feed(self, packet: Packet[Stream]) -> None:
        if packet.size == 0:
            return
        for frame in self.decode(packet):
            self._encode(frame)

    def finish(self) -> None:
        for frame in self.decode(None):
            self._encode(frame)
        self.output.mux(self.stream.encode(None))

    def _encode(self, frame: VideoFrame | av.AudioFrame) -> None:
        assert isinstance(frame, av.AudioFrame)
        if frame.pts is not None:
            frame.pts -= self.offset
        self.output.mux(self.stream.encode(frame))


def _ticks(seconds: float, time_base: Fraction | None) -> int:
    """`seconds` in units of `time_base` (0 without one)."""
    if not time_base:
        return 0
    return round(Fraction(seconds) / time_base)


# --- small helpers -------------------------------------------------------------------------


def _name_of(fileobj: BinaryIO) -> str:
    """A file object's base name for messages ("video" when it has none, e.g. an fd)."""
    raw = getattr(fileobj, "name", None)
    return os.path.basename(raw) if isinstance(raw, str) and raw else "video"


def _unreadable(name: str, why: str) -> MediaError:
    return MediaError(f"{name} is not a readable video: {why}")


def _why(exc: BaseException) -> str:
    """A plain reason from a PyAV or OS error, without FFmpeg's errno noise."""
    if isinstance(exc, av.error.EOFError):
        return "it ends before a picture can be read (cut short?)"
    text = getattr(exc, "strerror", None) or str(exc) or type(exc).__name__
    return text[:1].lower() + text[1:]
