"""The media adapter against real files made with PyAV: probe, convert, verify."""

from __future__ import annotations

import io
import math
import subprocess
import sys
import textwrap
from array import array
from collections.abc import Callable
from fractions import Fraction
from pathlib import Path, PurePath
from typing import cast

import av
import pytest

from mh_watchd.adapters.media import (
    API_EXTENSIONS,
    CONVERT_EXTENSIONS,
    MediaInfo,
    convert_to_mp4,
    needs_conversion,
    probe,
    probe_fileobj,
    verify_output,
)
from mh_watchd.core.errors import MediaError
from tests.conftest import ClipFactory

# --- helpers that build awkward files ---------------------------------------------------------


def _remux(
    src: Path,
    dest: Path,
    *,
    fmt: str | None = None,
    options: dict[str, str] | None = None,
    shift_seconds: float = 0.0,
    fileobj: io.RawIOBase | None = None,
) -> Path:
    """Copy every stream of `src` into `dest` (or `fileobj`), shifting timestamps if asked."""
    target: object = fileobj if fileobj is not None else str(dest)
    with av.open(str(src)) as inp, av.open(target, mode="w", format=fmt, options=options) as out:
        mapping = {s.index: out.add_stream_from_template(s, opaque=True) for s in inp.streams}
        for packet in inp.demux(*inp.streams):
            if packet.size == 0:
                continue
            shift = round(Fraction(shift_seconds) / packet.time_base)
            if packet.pts is not None:
                packet.pts += shift
            if packet.dts is not None:
                packet.dts += shift
            packet.stream = mapping[packet.stream_index]
            out.mux(packet)
    return dest


def _loop(src: Path, dest: Path, times: int) -> Path:
    """A long mp4 made of `src` (an intra-only-order clip) repeated `times`, without encoding."""
    with av.open(str(src)) as first:
        length = cast(int, first.duration) / 1_000_000
    with av.open(str(dest), mode="w") as out:
        stream = None
        for i in range(times):
            with av.open(str(src)) as inp:
                video = inp.streams.video[0]
                if stream is None:
                    stream = out.add_stream_from_template(video, opaque=True)
                shift = round(Fraction(length * i) / cast(Fraction, video.time_base))
                for packet in inp.demux(video):
                    if packet.size == 0:
                        continue
                    packet.pts = cast(int, packet.pts) + shift
                    packet.dts = cast(int, packet.dts) + shift
                    packet.stream = stream
                    out.mux(packet)
    return dest


def _sine_frames(rate: int, seconds: float) -> list[av.AudioFrame]:
    frames = []
    total = int(seconds * rate)
    for start in range(0, total, 1024):
        count = min(1024, total - start)
        tone = array(
            "f", (0.2 * math.sin(2 * math.pi * 440 * (start + k) / rate) for k in range(count))
        )
        frame = av.AudioFrame(format="fltp", layout="mono", samples=count)
        frame.planes[0].update(tone.tobytes().ljust(frame.planes[0].buffer_size, b"\0"))
        frame.sample_rate = rate
        frame.pts = start
        frame.time_base = Fraction(1, rate)
        frames.append(frame)
    return frames


def _with_audio(video_clip: Path, dest: Path, codec: str, rate: int = 44100) -> Path:
    """`video_clip`'s video copied into `dest` next to one second of tone encoded as `codec`."""
    with av.open(str(video_clip)) as inp, av.open(str(dest), mode="w") as out:
        video = out.add_stream_from_template(inp.streams.video[0], opaque=True)
        audio = cast(av.AudioStream, out.add_stream(codec, rate=rate))
        audio.layout = "mono"
        for packet in inp.demux(inp.streams.video[0]):
            if packet.size:
                packet.stream = video
                out.mux(packet)
        for frame in _sine_frames(rate, 1.0):
            out.mux(audio.encode(frame))
        out.mux(audio.encode(None))
    return dest


def _audio_only(dest: Path) -> Path:
    with av.open(str(dest), mode="w") as out:
        audio = out.add_stream("aac", rate=44100)
        audio.layout = "mono"
        for frame in _sine_frames(44100, 1.0):
            out.mux(audio.encode(frame))
        out.mux(audio.encode(None))
    return dest


def _video_without_frames(dest: Path) -> Path:
    with av.open(str(dest), mode="w") as out:
        video = out.add_stream("libx264", rate=24)
        video.width, video.height, video.pix_fmt = 160, 120, "yuv420p"
        out.start_encoding()
    return dest


def _video_payloads(path: Path) -> list[bytes]:
    with av.open(str(path)) as container:
        return [bytes(p) for p in container.demux(container.streams.video[0]) if p.size]


def _decoded(path: Path) -> tuple[int, int, str]:
    """(video frames, audio frames) decoded from the whole file, and the video pixel format."""
    with av.open(str(path)) as container:
        video_frames = sum(1 for _ in container.decode(video=0))
    with av.open(str(path)) as container:
        audio_frames = sum(1 for _ in container.decode(audio=0)) if container.streams.audio else 0
        pix_fmt = container.streams.video[0].codec_context.pix_fmt or ""
    return video_frames, audio_frames, pix_fmt


def _stream_seconds(path: Path, kind: str) -> float:
    with av.open(str(path)) as container:
        stream = container.streams.video[0] if kind == "video" else container.streams.audio[0]
        return float(cast(int, stream.duration) * cast(Fraction, stream.time_base))


class _NonSeekable(io.RawIOBase):
    """A write-only pipe stand-in: muxers cannot go back to fill in a duration."""

    def __init__(self, target: io.BufferedWriter) -> None:
        self.target = target

    def writable(self) -> bool:
        return True

    def write(self, data: object) -> int:
        return self.target.write(cast(bytes, data))


class _CountingReader(io.RawIOBase):
    """A seekable reader that counts the bytes handed to PyAV."""

    def __init__(self, target: io.BufferedReader) -> None:
        self.target = target
        self.bytes_read = 0

    def readable(self) -> bool:
        return True

    def seekable(self) -> bool:
        return True

    def readinto(self, buffer: object) -> int:
        view = memoryview(cast(bytearray, buffer))
        count = self.target.readinto(view)
        self.bytes_read += count
        return count

    def read(self, size: int = -1) -> bytes:
        data = self.target.read(size)
        self.bytes_read += len(data)
        return data

    def seek(self, offset: int, whence: int = io.SEEK_SET) -> int:
        return self.target.seek(offset, whence)

    def tell(self) -> int:
        return self.target.tell()


def _siblings(dest: Path) -> list[str]:
    return sorted(p.name for p in dest.parent.iterdir())


# --- suffixes ---------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("name", "expected"),
    [
        ("a.mkv", True),
        ("A.MKV", True),
        ("trip/b.M2TS", True),
        ("c.mpeg", True),
        ("d.3gp", True),
        ("e.mp4", False),
        ("f.MOV", False),
        ("g.webm", False),
        ("h.txt", False),
        ("mkv", False),
    ],
)
def test_needs_conversion_goes_by_lowercase_suffix(name: str, expected: bool) -> None:
    assert needs_conversion(PurePath(name)) is expected


def test_api_and_convert_extension_sets_are_disjoint_and_complete() -> None:
    assert {"mp4", "m4v", "mov", "webm"} == API_EXTENSIONS
    assert not API_EXTENSIONS & CONVERT_EXTENSIONS
    assert len(CONVERT_EXTENSIONS) == 10


# --- probe ------------------------------------------------------------------------------------


def test_probe_describes_a_good_mp4(make_clip: ClipFactory) -> None:
    info = probe(make_clip("good.mp4", seconds=1.0, fps=24))
    assert info.container == "mov,mp4,m4a,3gp,3g2,mj2"
    assert info.duration_seconds == pytest.approx(1.0, abs=0.05)
    assert info.fps == pytest.approx(24.0)
    assert (info.width, info.height) == (160, 120)
    assert info.video_codec == "h264"
    assert info.audio_codec is None


def test_probe_names_the_audio_codec_of_an_mkv(make_clip: ClipFactory) -> None:
    info = probe(make_clip("talk.mkv", with_audio=True))
    assert info.container == "matroska,webm"
    assert (info.video_codec, info.audio_codec) == ("h264", "aac")
    assert info.duration_seconds == pytest.approx(1.0, abs=0.05)


def _empty(tmp: Path, make_clip: ClipFactory) -> Path:
    path = tmp / "empty.mp4"
    path.write_bytes(b"")
    return path


def _text(tmp: Path, make_clip: ClipFactory) -> Path:
    path = tmp / "notes.mp4"
    path.write_text("these are my holiday notes, not a video\n" * 20)
    return path


def _truncated(tmp: Path, make_clip: ClipFactory) -> Path:
    data = make_clip("whole.mp4").read_bytes()
    path = tmp / "half.mp4"
    path.write_bytes(data[: len(data) // 2])
    return path


def _random(tmp: Path, make_clip: ClipFactory) -> Path:
    path = tmp / "noise.mp4"
    # Fixed bytes, not os.urandom: a failure must be reproducible.
    path.write_bytes(bytes((i * 7919 + (i >> 3) * 104729) & 255 for i in range(64 * 1024)))
    return path


def _sound(tmp: Path, make_clip: ClipFactory) -> Path:
    return _audio_only(tmp / "song.mp4")


def _trackless(tmp: Path, make_clip: ClipFactory) -> Path:
    # mp4 drops a track without samples: this file has no streams at all.
    return _video_without_frames(tmp / "trackless.mp4")


def _frameless(tmp: Path, make_clip: ClipFactory) -> Path:
    # Matroska keeps the empty video track, but FFmpeg cannot learn its picture format.
    return _video_without_frames(tmp / "frameless.mkv")


def _garbled(tmp: Path, make_clip: ClipFactory) -> Path:
    """A well-formed mkv whose every video packet is zeros: a stream with nothing decodable."""
    src = make_clip("clean.mkv")
    dest = tmp / "garbled.mkv"
    with av.open(str(src)) as inp, av.open(str(dest), mode="w") as out:
        video = out.add_stream_from_template(inp.streams.video[0], opaque=True)
        for packet in inp.demux(inp.streams.video[0]):
            if packet.size:
                zeros = av.Packet(bytes(packet.size))
                zeros.pts, zeros.dts, zeros.time_base = packet.pts, packet.dts, packet.time_base
                zeros.stream = video
                out.mux(zeros)
    return dest


@pytest.mark.parametrize(
    ("build", "reason"),
    [
        (_empty, "empty"),
        (_text, "invalid data"),
        (_truncated, "invalid data"),
        (_random, "invalid data"),
        (_sound, "no video stream (audio)"),
        (_trackless, "no video stream (no streams at all)"),
        (_frameless, "ends before a picture"),
        (_garbled, "no video frame decodes"),
    ],
    ids=["empty", "text", "truncated", "random", "audio-only", "no-tracks", "no-frames", "garbled"],
)
def test_probe_rejects_what_is_not_a_decodable_video(
    tmp_path: Path, make_clip: ClipFactory, build: Callable[[Path, ClipFactory], Path], reason: str
) -> None:
    path = build(tmp_path, make_clip)
    with pytest.raises(MediaError) as caught:
        probe(path)
    message = str(caught.value)
    assert message.startswith(f"{path.name} is not a readable video: "), message
    assert reason in message.lower(), message


def test_probe_rejects_a_missing_file(tmp_path: Path) -> None:
    with pytest.raises(MediaError, match=r"gone\.mp4 is not a readable video: no such file"):
        probe(tmp_path / "gone.mp4")


def test_probe_measures_duration_from_packets_when_the_header_has_none(
    tmp_path: Path, make_clip: ClipFactory
) -> None:
    streamed = tmp_path / "streamed.mkv"
    with streamed.open("wb") as sink:
        _remux(
            make_clip("src.mkv", seconds=1.5), streamed, fmt="matroska", fileobj=_NonSeekable(sink)
        )
    with av.open(str(streamed)) as container:  # the premise: nothing in the header
        assert container.duration is None
        assert container.streams.video[0].duration is None
    assert probe(streamed).duration_seconds == pytest.approx(1.5, abs=0.05)


def test_probe_reads_a_small_part_of_a_long_clip(tmp_path: Path, make_clip: ClipFactory) -> None:
    # Few large frames, so the index (which grows with the frame count) stays small.
    second = make_clip("second.mp4", seconds=1.0, fps=4, width=640, height=480, codec="mpeg4")
    minute = _loop(second, tmp_path / "minute.mp4", 60)
    size = minute.stat().st_size
    with minute.open("rb") as raw:
        reader = _CountingReader(raw)
        info = probe_fileobj(cast("io.BufferedReader", reader), name=minute.name)
    assert info.duration_seconds == pytest.approx(60.0, abs=0.1)
    assert (info.width, info.height, info.fps) == (640, 480, 4.0)
    # The header, the index and the first frame: a small fraction of a minute of video.
    assert 0 < reader.bytes_read < size / 10, (reader.bytes_read, size)
    # Control: the counter does see a full read, so the bound above means something.
    with minute.open("rb") as raw:
        control = _CountingReader(raw)
        with av.open(control, mode="r") as container:
            packets = sum(1 for p in container.demux(container.streams.video[0]) if p.size)
    assert packets == 240
    assert control.bytes_read > size * 0.9


# --- convert ----------------------------------------------------------------------------------


def test_convert_copies_h264_and_aac_out_of_an_mkv(tmp_path: Path, make_clip: ClipFactory) -> None:
    src = make_clip("holiday.mkv", seconds=1.0, with_audio=True)
    dest = tmp_path / "out" / "holiday.mp4"
    dest.parent.mkdir()
    assert convert_to_mp4(src, dest) == dest
    info = probe(dest)
    assert info.container.startswith("mov,mp4")
    assert (info.video_codec, info.audio_codec) == ("h264", "aac")
    assert info.duration_seconds == pytest.approx(probe(src).duration_seconds, abs=0.1)
    # Stream copy: the very same compressed pictures, not a re-encode.
    assert _video_payloads(dest) == _video_payloads(src)
    video_frames, audio_frames, _ = _decoded(dest)
    assert video_frames == 24
    assert audio_frames > 0
    assert _siblings(dest) == ["holiday.mp4"]


def test_convert_remuxes_an_avi_with_mpeg4(tmp_path: Path, make_clip: ClipFactory) -> None:
    src = make_clip("old.avi", seconds=1.0, codec="mpeg4")
    dest = convert_to_mp4(src, tmp_path / "old.mp4")
    info = probe(dest)
    assert info.video_codec == "mpeg4"
    assert info.duration_seconds == pytest.approx(1.0, abs=0.1)
    assert _decoded(dest)[0] == 24


def test_convert_transcodes_mpeg2_and_mp2_to_h264_and_aac(
    tmp_path: Path, make_clip: ClipFactory
) -> None:
    video_only = make_clip("tape.mkv", seconds=1.0, codec="mpeg2video")
    src = _with_audio(video_only, tmp_path / "tape.mpg", "mp2")
    assert (probe(src).video_codec, probe(src).audio_codec) == ("mpeg2video", "mp2")
    dest = convert_to_mp4(src, tmp_path / "tape.mp4")
    info = probe(dest)
    assert (info.video_codec, info.audio_codec) == ("h264", "aac")
    assert info.fps == pytest.approx(24.0, abs=0.05)  # the mkv source kept times in ms
    assert (info.width, info.height) == (160, 120)
    assert info.duration_seconds == pytest.approx(1.0, abs=0.1)
    assert _stream_seconds(dest, "audio") == pytest.approx(1.0, abs=0.1)
    video_frames, audio_frames, pix_fmt = _decoded(dest)
    assert video_frames == 24
    assert audio_frames > 0
    assert pix_fmt == "yuv420p"


def test_convert_crops_odd_sides_to_even_for_h264(tmp_path: Path, make_clip: ClipFactory) -> None:
    src = make_clip("odd.mkv", seconds=1.0, width=161, height=121, codec="ffv1")
    dest = convert_to_mp4(src, tmp_path / "odd.mp4")
    info = probe(dest)
    assert (info.video_codec, info.width, info.height) == ("h264", 160, 120)
    assert _decoded(dest)[0] == 24


def test_convert_copies_video_and_transcodes_only_the_audio(
    tmp_path: Path, make_clip: ClipFactory
) -> None:
    video_only = make_clip("film.mkv", seconds=1.0)
    src = _with_audio(video_only, tmp_path / "film-flac.mkv", "flac")
    dest = convert_to_mp4(src, tmp_path / "film.mp4")
    info = probe(dest)
    assert (info.video_codec, info.audio_codec) == ("h264", "aac")
    assert _video_payloads(dest) == _video_payloads(src)
    assert _stream_seconds(dest, "audio") == pytest.approx(1.0, abs=0.1)


def test_convert_starts_a_late_starting_ts_at_zero(tmp_path: Path, make_clip: ClipFactory) -> None:
    # Tuner recordings start at arbitrary clock times; a naive copy would keep the gap.
    src = _remux(make_clip("rec.mkv", with_audio=True), tmp_path / "rec.ts", shift_seconds=100.0)
    with av.open(str(src)) as container:
        assert container.start_time / 1_000_000 > 99.0
    dest = convert_to_mp4(src, tmp_path / "rec.mp4")
    assert probe(dest).duration_seconds == pytest.approx(1.0, abs=0.1)
    with av.open(str(dest)) as container:
        assert container.start_time / 1_000_000 < 0.1
    assert _decoded(dest)[0] == 24


def test_convert_refuses_a_non_video_and_writes_nothing(tmp_path: Path) -> None:
    src = tmp_path / "fake.mkv"
    src.write_text("not a video")
    dest = tmp_path / "fake.mp4"
    with pytest.raises(MediaError, match=r"fake\.mkv is not a readable video"):
        convert_to_mp4(src, dest)
    assert _siblings(dest) == ["fake.mkv"]


def test_convert_refuses_a_dest_that_is_not_mp4(tmp_path: Path, make_clip: ClipFactory) -> None:
    with pytest.raises(ValueError, match=r"\.mp4"):
        convert_to_mp4(make_clip("a.mkv"), tmp_path / "a.mov")
    assert not (tmp_path / "a.mov").exists()


def test_convert_leaves_no_partial_file_when_the_disk_fills(
    tmp_path: Path, make_clip: ClipFactory
) -> None:
    src = make_clip("big.mkv", seconds=1.0, with_audio=True)
    out = tmp_path / "out"
    out.mkdir()
    # A file-size limit in a child process stands in for a full disk, without touching ours.
    script = textwrap.dedent(
        """
        import resource, signal, sys
        from pathlib import Path
        from mh_watchd.adapters.media import convert_to_mp4
        from mh_watchd.core.errors import MediaError
        signal.signal(signal.SIGXFSZ, signal.SIG_IGN)
        resource.setrlimit(resource.RLIMIT_FSIZE, (4096, resource.RLIM_INFINITY))
        try:
            convert_to_mp4(Path(sys.argv[1]), Path(sys.argv[2]))
        except MediaError:
            print("MediaError")
        except OSError as exc:
            print("OSError", exc.errno)
        else:
            print("converted")
        """
    )
    result = subprocess.run(
        [sys.executable, "-c", script, str(src), str(out / "big.mp4")],
        capture_output=True,
        text=True,
        timeout=60,
        check=True,
    )
    assert result.stdout.split() == ["OSError", "27"], result.stdout + result.stderr  # EFBIG
    assert list(out.iterdir()) == []


# --- verify -----------------------------------------------------------------------------------


def test_verify_accepts_a_complete_render(make_clip: ClipFactory) -> None:
    path = make_clip("render.mp4", seconds=1.0)
    info = verify_output(path, expected_size=path.stat().st_size, expected_duration_seconds=1.3)
    assert isinstance(info, MediaInfo)
    assert info.duration_seconds == pytest.approx(1.0, abs=0.05)


def test_verify_accepts_unknown_size_and_duration(make_clip: ClipFactory) -> None:
    path = make_clip("render.mp4", seconds=1.0, with_audio=True)
    info = verify_output(path, expected_size=None, expected_duration_seconds=None)
    assert info.audio_codec == "aac"


def test_verify_rejects_a_size_mismatch(make_clip: ClipFactory) -> None:
    path = make_clip("render.mp4")
    size = path.stat().st_size
    with pytest.raises(MediaError, match=rf"render\.mp4 has {size} bytes, expected {size + 1}"):
        verify_output(path, expected_size=size + 1, expected_duration_seconds=1.0)


def test_verify_rejects_a_duration_beyond_tolerance(make_clip: ClipFactory) -> None:
    path = make_clip("render.mp4", seconds=1.0)
    with pytest.raises(MediaError, match=r"lasts 1\.00 s, expected 1\.60 s"):
        verify_output(path, expected_size=None, expected_duration_seconds=1.6)
    with pytest.raises(MediaError, match=r"expected 0\.80 s \(\+-0\.1 s\)"):
        verify_output(
            path, expected_size=None, expected_duration_seconds=0.8, tolerance_seconds=0.1
        )


def test_verify_rejects_a_truncated_file(tmp_path: Path, make_clip: ClipFactory) -> None:
    data = make_clip("render.mp4", seconds=1.0).read_bytes()
    cut = tmp_path / "cut.mp4"
    cut.write_bytes(data[: len(data) * 2 // 3])
    with pytest.raises(MediaError, match=r"cut\.mp4 is not a readable video"):
        verify_output(cut, expected_size=None, expected_duration_seconds=1.0)


def test_verify_rejects_a_faststart_file_cut_short_even_without_a_size(
    tmp_path: Path, make_clip: ClipFactory
) -> None:
    # With the index first, a cut file still opens and announces its full length.
    whole = _remux(
        make_clip("render.mp4", seconds=2.0),
        tmp_path / "faststart.mp4",
        options={"movflags": "+faststart"},
    )
    assert verify_output(whole, expected_size=None, expected_duration_seconds=2.0)
    data = whole.read_bytes()
    cut = tmp_path / "cut.mp4"
    cut.write_bytes(data[: len(data) * 2 // 3])
    with av.open(str(cut)) as container:  # the premise: the header still says 2 s
        assert container.duration == 2_000_000
    with pytest.raises(MediaError, match=r"cut\.mp4 is truncated"):
        verify_output(cut, expected_size=None, expected_duration_seconds=2.0)


def test_verify_rejects_a_missing_file(tmp_path: Path) -> None:
    with pytest.raises(MediaError, match=r"gone\.mp4 cannot be verified"):
        verify_output(tmp_path / "gone.mp4", expected_size=None, expected_duration_seconds=None)


# --- reading an inbox file only through its open descriptor ---------------------------------


def _swap_for_link(path: Path, target: Path) -> None:
    path.unlink()
    path.symlink_to(target)


def test_probe_fileobj_reads_the_opened_file_after_its_name_became_a_link(
    tmp_path: Path, make_clip: ClipFactory
) -> None:
    clip = make_clip("beach.mp4", seconds=1.0)
    decoy = tmp_path / "decoy.txt"
    decoy.write_text("not a video")
    with clip.open("rb") as opened:
        _swap_for_link(clip, decoy)
        info = probe_fileobj(opened, name="beach.mp4")
        assert not opened.closed
    assert info.duration_seconds == pytest.approx(1.0, abs=0.1)


def test_probe_fileobj_says_an_empty_file_is_empty(tmp_path: Path) -> None:
    empty = tmp_path / "empty.mp4"
    empty.write_bytes(b"")
    with empty.open("rb") as opened, pytest.raises(MediaError, match="the file is empty"):
        probe_fileobj(opened, name="empty.mp4")


def test_probe_fileobj_reads_from_the_start_whatever_the_position(
    make_clip: ClipFactory,
) -> None:
    clip = make_clip("beach.mp4", seconds=1.0)
    with clip.open("rb") as opened:
        opened.seek(0, io.SEEK_END)
        assert probe_fileobj(opened, name="beach.mp4").duration_seconds == pytest.approx(
            1.0, abs=0.1
        )


def test_convert_reads_an_open_file_even_after_its_name_became_a_link(
    tmp_path: Path, make_clip: ClipFactory
) -> None:
    src = make_clip("holiday.mkv", seconds=1.0, with_audio=True)
    payloads = _video_payloads(src)
    decoy = tmp_path / "decoy.mkv"
    decoy.write_text("not a video")
    dest = tmp_path / "out" / "holiday.mp4"
    dest.parent.mkdir()
    with src.open("rb") as opened:
        _swap_for_link(src, decoy)
        assert convert_to_mp4(opened, dest, name="holiday.mkv") == dest
        assert not opened.closed  # the caller's file: it closes it
    assert _video_payloads(dest) == payloads
    assert _siblings(dest) == ["holiday.mp4"]


def test_convert_from_an_open_file_refuses_a_non_video_naming_it(tmp_path: Path) -> None:
    src = tmp_path / "fake.mkv"
    src.write_text("not a video")
    dest = tmp_path / "fake.mp4"
    with src.open("rb") as opened, pytest.raises(MediaError, match=r"fake\.mkv is not"):
        convert_to_mp4(opened, dest, name="fake.mkv")
    assert _siblings(dest) == ["fake.mkv"]
