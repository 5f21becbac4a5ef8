"""Tests for `rest.media`: decoding the shared test media, the write/read round trip, atomic writes, and a clear
`MediaError` for every kind of bad input file (missing, empty, truncated, not media)."""

from __future__ import annotations

import io
import re
import wave
from fractions import Fraction
from pathlib import Path

import av
import numpy as np
import pytest
import torch
from PIL import Image

from rest.media import (
    MediaError,
    RandomAccessVideo,
    center_crop_resize,
    frames_to_tensor,
    probe,
    read_audio,
    read_image,
    read_video,
    tensor_to_frames,
    write_video,
)
from rest.media.encode import _encode_audio

FPS = 25.0
SR = 16000
TONE_HZ = 440.0

#################################################################################
#                                    Helpers                                    #
#################################################################################


def moving_gradient(num_frames: int, height: int = 64, width: int = 96) -> np.ndarray:
    """uint8 (F, H, W, 3): smooth ramps that shift a little every frame, easy on H.264 and different per frame."""
    yy, xx = np.mgrid[0:height, 0:width]
    frames = [
        np.stack([(xx * 2 + 4 * i) % 256, (yy * 3 + 2 * i) % 256, np.full_like(xx, 128 + i % 64)], axis=-1)
        for i in range(num_frames)
    ]
    return np.stack(frames).astype(np.uint8)


def tone(seconds: float, hz: float = TONE_HZ, rate: int = SR, amplitude: float = 0.5) -> np.ndarray:
    t = np.arange(round(seconds * rate)) / rate
    return (amplitude * np.sin(2 * np.pi * hz * t)).astype(np.float32)


def psnr(a: np.ndarray, b: np.ndarray) -> float:
    mse = np.mean((a.astype(np.float64) - b.astype(np.float64)) ** 2)
    return float(10 * np.log10(255.0**2 / mse))


def peak_hz(samples: np.ndarray, rate: int = SR) -> float:
    spectrum = np.abs(np.fft.rfft(samples * np.hanning(len(samples))))
    return float(np.argmax(spectrum) * rate / len(samples))


def write_wav(path: Path, rate: int, channels: int, width: int, seconds: float = 1.5) -> Path:
    """A 440 Hz tone at amplitude 0.5 in every channel, as signed PCM of `width` bytes per sample."""
    x = np.repeat(tone(seconds, rate=rate).astype(np.float64)[:, None], channels, axis=1)  # (N, C)
    q = np.round(x * (2 ** (8 * width - 1) - 1)).astype("<i4")
    data = q.astype("<i2").tobytes() if width == 2 else q.view(np.uint8).reshape(-1, 4)[:, :3].tobytes()
    with wave.open(str(path), "wb") as w:
        w.setnchannels(channels)
        w.setsampwidth(width)
        w.setframerate(rate)
        w.writeframes(data)
    return path


def write_with_pyav(path: Path, pts_ms: list[int], audio: np.ndarray | None = None, fmt: str | None = None) -> None:
    """Write frames at arbitrary timestamps (ms) with plain PyAV: no faststart (index at the end), any container.

    Frame i is a flat gray of level (20 + 30 * i) % 250, so a decoded frame tells which of the first 8 it is.
    """
    with av.open(str(path), "w", format=fmt) as container:
        video = container.add_stream("libx264", rate=25)
        video.width, video.height, video.pix_fmt = 32, 32, "yuv420p"
        video.codec_context.time_base = Fraction(1, 1000)
        sound = container.add_stream("aac", rate=SR, layout="mono") if audio is not None else None
        for i, pts in enumerate(pts_ms):
            frame = av.VideoFrame.from_ndarray(np.full((32, 32, 3), (20 + 30 * i) % 250, np.uint8), format="rgb24")
            frame.pts, frame.time_base = pts, Fraction(1, 1000)
            container.mux(video.encode(frame))
        container.mux(video.encode(None))
        if sound is not None:
            for start in range(0, len(audio), 1024):
                frame = av.AudioFrame.from_ndarray(audio[None, start : start + 1024], format="fltp", layout="mono")
                frame.sample_rate, frame.pts = SR, start
                container.mux(sound.encode(frame))
            container.mux(sound.encode(None))


def cut(src: Path, dst: Path, keep: float | int) -> Path:
    """Copy the first `keep` bytes (an int) or the first fraction `keep` of them (a float) of `src` to `dst`."""
    data = src.read_bytes()
    dst.write_bytes(data[: keep if isinstance(keep, int) else int(len(data) * keep)])
    return dst


def media_error(fn, *args, **kwargs) -> str:
    """Call `fn`, expect a MediaError, check it is one clean line with no FFmpeg traceback, return its message."""
    with pytest.raises(MediaError) as info:
        fn(*args, **kwargs)
    message = str(info.value)
    assert "\n" not in message and "Errno" not in message, message
    assert info.value.__cause__ is None, "the av/PIL exception must not be chained (raise ... from None)"
    return message


def leftovers(folder: Path) -> list[str]:
    return sorted(p.name for p in folder.iterdir())


@pytest.fixture(scope="module")
def clip(tmp_path_factory) -> tuple[Path, np.ndarray]:
    """An mp4 written by `write_video`: 37 frames (an odd count) of 96x64 at 25 fps, with 2.3 s of a 440 Hz tone
    (longer than the video's 1.48 s, so the writer must cut it)."""
    frames = moving_gradient(37)
    path = tmp_path_factory.mktemp("clip") / "clip.mp4"
    write_video(path, frames, FPS, audio=tone(2.3), sample_rate=SR)
    return path, frames


#################################################################################
#                               Shared test media                               #
#################################################################################

# name -> (sample rate, channels, FFmpeg codec) as SOURCES.md describes them
SHARED_AUDIO = {
    "english_60s.wav": (16000, 1, "pcm_s16le"),
    "english_radio_8s.wav": (16000, 2, "pcm_s16le"),
    "english_5s.wav": (24000, 1, "pcm_s16le"),
    "japanese.wav": (48000, 2, "pcm_s24le"),
    "chinese_news.wav": (48000, 2, "pcm_s16le"),
}
# name -> (video codec, side in pixels, frames, audio sample rate)
SHARED_VIDEO = {
    "hdtf_a_8s.mp4": ("mpeg4", 512, 200, 16000),
    "hdtf_b_8s.mp4": ("mpeg4", 512, 200, 16000),
    "talking_c_9s.mp4": ("h264", 512, 225, 44100),
    "talking_d_7s.mp4": ("h264", 480, 175, 44100),
}
SHARED_PORTRAITS = ["cartoon_girl.jpg", "monalisa.png", "painted_girl.jpg", "sketch_woman.jpg", "statue.jpg"]


@pytest.mark.parametrize("name", SHARED_AUDIO)
def test_shared_audio_reads_to_16k_mono(name, shared_data):
    path = shared_data / "audio" / name
    rate, channels, codec = SHARED_AUDIO[name]
    info = probe(path)
    assert (info.audio_sample_rate, info.audio_channels, info.audio_codec) == (rate, channels, codec)
    assert not info.has_video

    samples = read_audio(path)
    assert samples.dtype == np.float32 and samples.ndim == 1
    assert abs(len(samples) / SR - info.audio_duration) < 0.010
    assert np.isfinite(samples).all() and np.abs(samples).max() <= 1.0
    assert np.sqrt(np.mean(samples**2)) > 0.01  # speech, not silence


@pytest.mark.parametrize("name", ["english_60s.wav", "english_radio_8s.wav"])
def test_shared_16k_wav_matches_its_pcm(name, shared_data):
    """No resampling at 16 kHz: mono is the PCM itself, stereo the mean of its channels (not their sum / sqrt 2)."""
    path = shared_data / "audio" / name
    with wave.open(str(path)) as w:
        pcm = np.frombuffer(w.readframes(w.getnframes()), "<i2").reshape(-1, w.getnchannels())
    expected = pcm.astype(np.float64).mean(axis=1) / 32768.0
    samples = read_audio(path)
    assert len(samples) == len(expected)
    assert np.abs(samples - expected).max() < 1e-4


@pytest.mark.parametrize("name", SHARED_VIDEO)
def test_shared_video_reads_frames_and_audio(name, shared_data):
    path = shared_data / "video" / name
    codec, side, num_frames, audio_rate = SHARED_VIDEO[name]
    info = probe(path)
    assert (info.codec, info.width, info.height, info.num_frames, info.fps) == (codec, side, side, num_frames, 25.0)
    assert (info.audio_codec, info.audio_sample_rate, info.audio_channels) == ("aac", audio_rate, 2)

    video = read_video(path)
    assert video.frames.shape == (num_frames, side, side, 3) and video.frames.dtype == np.uint8
    assert video.fps == 25.0
    assert 20 < video.frames.mean() < 235  # a real picture, not a blank frame
    assert video.audio is not None and video.audio.sample_rate == SR
    assert video.audio.samples.dtype == np.float32
    assert abs(video.audio.duration - num_frames / 25.0) < 0.1
    assert np.sqrt(np.mean(video.audio.samples**2)) > 0.01


def test_shared_video_resamples_to_half_rate(shared_data):
    path = shared_data / "video" / "hdtf_a_8s.mp4"
    full = read_video(path, with_audio=False, max_frames=40)
    half = read_video(path, fps=12.5, max_frames=20)
    assert half.fps == 12.5 and len(half.frames) == 20
    np.testing.assert_array_equal(half.frames, full.frames[::2])
    assert abs(half.audio.duration - 20 / 12.5) < 1e-3  # the audio is cut to the frames read
    assert len(read_video(path, fps=12.5, with_audio=False).frames) == 100  # 200 frames at 25 fps


@pytest.mark.parametrize("name", SHARED_PORTRAITS)
def test_shared_portraits_read_as_rgb(name, shared_data):
    path = shared_data / "portraits" / name
    image = read_image(path)
    with Image.open(path) as reference:
        width, height = reference.size
    assert image.dtype == np.uint8 and image.shape == (height, width, 3)
    assert image.std() > 10  # a picture, not a flat fill


#################################################################################
#                               Reading audio files                             #
#################################################################################


@pytest.mark.parametrize(
    "rate, channels, width", [(16000, 1, 2), (24000, 1, 2), (44100, 2, 2), (48000, 2, 3), (48000, 2, 2)]
)
def test_read_audio_resamples_and_downmixes(tmp_path, rate, channels, width):
    path = write_wav(tmp_path / "tone.wav", rate, channels, width, seconds=1.5)
    samples = read_audio(path)
    assert samples.dtype == np.float32 and samples.shape == (24000,)  # exactly 1.5 s at 16 kHz
    assert abs(peak_hz(samples) - TONE_HZ) < 2
    rms = np.sqrt(np.mean(samples[1000:-1000] ** 2))
    assert abs(rms - 0.5 / np.sqrt(2)) < 0.005  # amplitude 0.5 kept: channels averaged, no gain


def test_read_audio_other_rate(tmp_path):
    path = write_wav(tmp_path / "tone.wav", 44100, 2, 2, seconds=1.0)
    samples = read_audio(path, sample_rate=8000)
    assert samples.shape == (8000,)
    assert abs(peak_hz(samples, 8000) - TONE_HZ) < 2
    info = probe(path)  # an audio-only file
    assert not info.has_video and (info.codec, info.num_frames, info.width) == ("", 0, 0)
    assert info.duration == info.audio_duration == 1.0 and info.audio_sample_rate == 44100


#################################################################################
#                          Writing and reading video                            #
#################################################################################


def test_write_video_round_trip(clip):
    path, frames = clip
    info = probe(path)
    assert (info.codec, info.audio_codec) == ("h264", "aac")
    assert (info.width, info.height, info.num_frames, info.fps) == (96, 64, 37, 25.0)
    assert abs(info.duration - 37 / FPS) <= 1 / FPS
    assert abs(info.audio_duration - info.duration) <= 1 / FPS
    assert (info.audio_sample_rate, info.audio_channels) == (SR, 1)

    video = read_video(path)
    assert video.frames.shape == frames.shape
    assert psnr(video.frames, frames) > 30
    assert abs(video.audio.duration - 37 / FPS) <= 1 / FPS
    assert abs(peak_hz(video.audio.samples) - TONE_HZ) < 2


def test_write_video_keyframe_interval(tmp_path):
    """Short keyframe intervals keep random access into long clips cheap."""
    frames = np.random.default_rng(0).integers(0, 256, (60, 32, 32, 3), dtype=np.uint8)
    write_video(tmp_path / "k.mp4", frames, keyframe_interval=10)
    with av.open(str(tmp_path / "k.mp4")) as container:
        keys = [i for i, packet in enumerate(container.demux(video=0)) if packet.is_keyframe]
    assert keys[0] == 0 and len(keys) >= 6 and max(np.diff(keys)) <= 10
    with pytest.raises(ValueError, match="keyframe_interval"):
        write_video(tmp_path / "bad.mp4", frames, keyframe_interval=0)


def test_write_video_pads_short_audio(tmp_path):
    frames = moving_gradient(25)  # 1 s
    path = tmp_path / "short_audio.mp4"
    write_video(path, frames, FPS, audio=tone(0.5))
    info = probe(path)
    assert abs(info.audio_duration - 1.0) <= 1 / FPS and abs(info.duration - 1.0) <= 1 / FPS
    samples = read_audio(path)
    assert abs(np.sqrt(np.mean(samples[800:7200] ** 2)) - 0.5 / np.sqrt(2)) < 0.02  # the tone
    assert np.abs(samples[9000:]).max() < 0.01  # the padding: silence


def test_write_video_without_audio_and_from_tensor(tmp_path):
    frames = moving_gradient(9)
    path = tmp_path / "silent.mp4"
    write_video(path, frames_to_tensor(frames), fps=10.0)  # the model's layout (3, F, H, W) in [-1, 1]
    info = probe(path)
    assert not info.has_audio and info.fps == 10.0 and abs(info.duration - 0.9) < 1e-6
    video = read_video(path)
    assert video.audio is None and video.fps == 10.0
    assert psnr(video.frames, frames) > 30
    assert media_error(read_audio, path) == f"{path}: has no audio track"


def test_write_video_refuses_bad_frames_and_leaves_nothing(tmp_path):
    path = tmp_path / "out.mp4"
    with pytest.raises(ValueError, match="even width and height"):
        write_video(path, moving_gradient(3, height=63, width=64))
    with pytest.raises(ValueError, match="uint8"):
        write_video(path, moving_gradient(3).astype(np.float32))
    with pytest.raises(ValueError, match=".mp4"):
        write_video(tmp_path / "out.avi", moving_gradient(3))
    assert leftovers(tmp_path) == []
    assert "does not exist" in media_error(write_video, tmp_path / "no" / "out.mp4", moving_gradient(3))


@pytest.mark.parametrize("interrupt", [RuntimeError("disk full"), KeyboardInterrupt()])
def test_write_video_is_atomic(tmp_path, monkeypatch, interrupt):
    """A write that fails midway (here: while muxing the audio of frame 10) leaves the folder as it was."""
    path = tmp_path / "out.mp4"
    path.write_bytes(b"previous version")
    calls = []

    def failing(*args, **kwargs):
        calls.append(1)
        if len(calls) == 10:
            temporary = [name for name in leftovers(tmp_path) if name.endswith(".tmp")]
            assert len(temporary) == 1 and (tmp_path / temporary[0]).stat().st_size > 0  # it was writing
            raise interrupt
        return _encode_audio(*args, **kwargs)

    monkeypatch.setattr("rest.media.encode._encode_audio", failing)
    with pytest.raises(type(interrupt)):
        write_video(path, moving_gradient(20), FPS, audio=tone(1.0))
    assert leftovers(tmp_path) == ["out.mp4"]
    assert path.read_bytes() == b"previous version"


#################################################################################
#                         Frame-rate resampling by pts                          #
#################################################################################


def test_read_video_resamples_by_frame_count(clip):
    path, _ = clip
    source = read_video(path, with_audio=False).frames  # 37 frames at 25 fps
    half = read_video(path, fps=12.5, with_audio=False).frames
    np.testing.assert_array_equal(half, source[::2])  # 19 frames: times 0, 0.08, ..., 1.44 s
    double = read_video(path, fps=50.0, with_audio=False).frames
    np.testing.assert_array_equal(double, np.repeat(source, 2, axis=0))
    ten = read_video(path, fps=10.0, with_audio=False).frames  # output k shows source frame floor(2.5 k)
    np.testing.assert_array_equal(ten, source[[int(k * 2.5) for k in range(15)]])
    assert len(read_video(path, fps=12.5, max_frames=4, with_audio=False).frames) == 4


def test_read_video_resamples_variable_frame_rate_by_pts(tmp_path):
    """Frames at 0, 40, 80, 200, 240, 400, 440 ms: at 25 fps the output holds each for its real time span."""
    path = tmp_path / "vfr.mp4"
    write_with_pyav(path, [0, 40, 80, 200, 240, 400, 440])
    video = read_video(path, fps=25.0)
    shown = [round((frame.mean() - 20) / 30) for frame in video.frames]  # which source frame each output shows
    assert shown == [0, 1, 2, 2, 2, 3, 4, 4, 4, 4, 5, 6]
    assert len(read_video(path).frames) == 7  # fps=None: the source frames as they are


#################################################################################
#                               Bad input files                                 #
#################################################################################

READERS = [probe, read_video, read_audio]


@pytest.mark.parametrize("reader", [*READERS, read_image, RandomAccessVideo])
def test_missing_file(tmp_path, reader):
    path = tmp_path / "nowhere.mp4"
    assert media_error(reader, path) == f"{path}: file not found"


@pytest.mark.parametrize("reader", [*READERS, read_image, RandomAccessVideo])
@pytest.mark.parametrize("suffix", [".mp4", ".wav", ".png"])
def test_empty_file(tmp_path, reader, suffix):
    path = tmp_path / f"empty{suffix}"
    path.touch()
    assert media_error(reader, path) == f"{path}: file is empty"


@pytest.mark.parametrize("reader", READERS)
@pytest.mark.parametrize("suffix", [".mp4", ".wav"])
def test_text_file_is_not_media(tmp_path, reader, suffix):
    path = tmp_path / f"notes{suffix}"
    path.write_text("these are meeting notes, not a recording\n" * 20)
    message = media_error(reader, path)
    assert message.startswith(f"{path}: not a readable media file (")


def test_non_image_files(tmp_path, clip):
    text = tmp_path / "notes.png"
    text.write_text("not a picture")
    assert media_error(read_image, text) == f"{text}: not a readable image file"
    assert media_error(read_image, clip[0]) == f"{clip[0]}: not a readable image file"


@pytest.mark.parametrize("reader", [*READERS, RandomAccessVideo])
@pytest.mark.parametrize("keep", [0.4, 0.7])  # the first 40 % of the bytes; the last 30 % cut off
def test_truncated_mp4_from_write_video(tmp_path, clip, reader, keep):
    """`write_video` puts the index first: a cut file still opens, but its media data box overruns the end."""
    path = cut(clip[0], tmp_path / "cut.mp4", keep)
    message = media_error(reader, path)
    assert re.fullmatch(rf"{re.escape(str(path))}: file is truncated: it has [\d,]+ bytes but its 'mdat' .*", message)


@pytest.mark.parametrize("keep", [0.4, 0.7])
def test_truncated_mp4_detected_by_decoding_alone(tmp_path, clip, monkeypatch, keep):
    """Without the box check, the cut still shows: FFmpeg stops the video early in silence (caught by comparing
    with the declared duration) and fails on the audio's partial last packet."""
    monkeypatch.setattr("rest.media.damage._find_damage", lambda path: None)
    path = cut(clip[0], tmp_path / "cut.mp4", keep)
    message = media_error(read_video, path, with_audio=False)
    pattern = rf"{re.escape(str(path))}: file is truncated: decoded ([\d.]+) s of 1.48 s of video declared"
    found = re.fullmatch(pattern, message)
    assert found and float(found[1]) < 1.48 * keep + 0.2, message
    message = media_error(read_audio, path)
    assert message.startswith(f"{path}: file is truncated or corrupt: audio decoding failed after "), message


@pytest.mark.parametrize("reader", READERS)
@pytest.mark.parametrize("keep", [0.4, 0.7])
def test_truncated_mp4_with_index_at_the_end(tmp_path, reader, keep):
    """The usual layout of recorders: the index (moov) is written last, so a cut file loses it."""
    source = tmp_path / "plain.mp4"
    write_with_pyav(source, list(range(0, 2000, 40)), audio=tone(2.0))
    assert len(read_video(source).frames) == 50
    path = cut(source, tmp_path / "cut.mp4", keep)
    assert media_error(reader, path).startswith(f"{path}: file is truncated: ")


def test_mp4_never_finalized(tmp_path):
    """A recording killed before it wrote its index: complete boxes, but no moov."""
    source = tmp_path / "plain.mp4"
    write_with_pyav(source, list(range(0, 2000, 40)), audio=tone(2.0))
    moov = source.read_bytes().rfind(b"moov") - 4  # the box starts 4 bytes before its type
    path = cut(source, tmp_path / "unfinished.mp4", moov)
    expected = f"{path}: file is truncated or was never finalized: it has no 'moov' index box"
    assert media_error(read_video, path) == expected


@pytest.mark.parametrize("keep", [0.4, 0.7])
def test_truncated_matroska_detected_by_decoding(tmp_path, keep):
    """Matroska has no structure we check: the cut shows as less decoded than the header declares."""
    source = tmp_path / "clip.mkv"
    write_with_pyav(source, list(range(0, 2000, 40)), audio=tone(2.0), fmt="matroska")
    path = cut(source, tmp_path / "cut.mkv", keep)
    for reader, kind in [(read_video, "video"), (read_audio, "audio")]:
        message = media_error(reader, path)
        pattern = rf"{re.escape(str(path))}: file is truncated: decoded ([\d.]+) s of ([\d.]+) s of {kind} declared"
        found = re.fullmatch(pattern, message)
        assert found, message
        decoded, declared = float(found[1]), float(found[2])
        assert decoded < declared - 0.2 and abs(declared - 2.0) < 0.1


def test_matroska_with_longer_audio_is_not_truncated(tmp_path):
    """Matroska declares one duration for the file (its longest stream); a shorter video is not a cut."""
    path = tmp_path / "long_audio.mkv"
    write_with_pyav(path, list(range(0, 1000, 40)), audio=tone(2.0), fmt="matroska")
    assert len(read_video(path, with_audio=False).frames) == 25
    assert abs(len(read_audio(path)) / SR - 2.0) < 0.1


@pytest.mark.parametrize("reader", READERS)
def test_truncated_wav(tmp_path, reader):
    """FFmpeg re-estimates a WAV's duration from its size, so only the header shows the cut."""
    source = write_wav(tmp_path / "tone.wav", 16000, 1, 2, seconds=2.0)
    path = cut(source, tmp_path / "cut.wav", 0.4)
    expected = f"{path}: file is truncated: it holds 0.80 s of audio of the 2.00 s its header declares"
    assert media_error(reader, path) == expected


def test_wav_cut_inside_its_header(tmp_path):
    path = cut(write_wav(tmp_path / "tone.wav", 16000, 1, 2), tmp_path / "cut.wav", 26)
    assert media_error(read_audio, path) == f"{path}: file is truncated: it ends inside its header"


def test_audio_file_has_no_video_track(tmp_path):
    path = write_wav(tmp_path / "tone.wav", 16000, 1, 2)
    for reader in (read_video, RandomAccessVideo):
        assert media_error(reader, path) == f"{path}: has no video track"


def test_truncated_image(tmp_path):
    buffer = io.BytesIO()
    Image.fromarray(moving_gradient(1, 128, 128)[0]).save(buffer, format="JPEG")
    path = tmp_path / "cut.jpg"
    path.write_bytes(buffer.getvalue()[: len(buffer.getvalue()) // 2])
    assert media_error(read_image, path) == f"{path}: file is truncated (the image data ends early)"


#################################################################################
#                                    Images                                     #
#################################################################################


def test_read_image_modes(tmp_path):
    gray = tmp_path / "gray.png"
    Image.fromarray(np.full((6, 8), 77, np.uint8), "L").save(gray)
    assert read_image(gray).shape == (6, 8, 3) and (read_image(gray) == 77).all()

    rgba = np.zeros((6, 8, 4), np.uint8)
    rgba[..., 0], rgba[:, :4, 3], rgba[:, 4:, 3] = 200, 255, 0  # left half opaque red, right half transparent
    Image.fromarray(rgba, "RGBA").save(tmp_path / "rgba.png")
    image = read_image(tmp_path / "rgba.png")
    assert (image[:, :4] == [200, 0, 0]).all() and (image[:, 4:] == 255).all()  # composited over white

    Image.fromarray(np.full((6, 8, 3), [10, 150, 250], np.uint8)).convert("P", palette=Image.Palette.ADAPTIVE).save(
        tmp_path / "palette.png"
    )
    assert (read_image(tmp_path / "palette.png") == [10, 150, 250]).all()

    Image.fromarray(np.full((6, 8), 40000, np.uint16)).save(tmp_path / "gray16.png")
    assert (read_image(tmp_path / "gray16.png") == round(40000 / 257)).all()


def test_read_image_applies_exif_orientation(tmp_path):
    pixels = np.zeros((20, 40, 3), np.uint8)
    pixels[:, :20] = 255  # left half white
    exif = Image.Exif()
    exif[0x0112] = 6  # orientation: rotate 90 degrees clockwise to display
    Image.fromarray(pixels).save(tmp_path / "rotated.jpg", exif=exif, quality=95)
    image = read_image(tmp_path / "rotated.jpg")
    assert image.shape == (40, 20, 3)
    assert image[:18].mean() > 240 and image[22:].mean() < 15  # the white half is now on top


#################################################################################
#                            Random access (decord)                             #
#################################################################################


def test_random_access_matches_read_video(clip):
    path, _ = clip
    reference = read_video(path, with_audio=False).frames
    reader = RandomAccessVideo(path)
    assert len(reader) == 37 and reader.fps == 25.0
    indices = [5, 0, 36, 5, 17]
    np.testing.assert_array_equal(reader.get(indices), reference[indices])
    with pytest.raises(IndexError, match="frame 37 out of range"):
        reader.get([37])


def test_random_access_resizes_square_video_only(tmp_path, clip):
    path = tmp_path / "square.mp4"
    write_video(path, moving_gradient(5, 64, 64))
    assert RandomAccessVideo(path, size=32).get([0, 4]).shape == (2, 32, 32, 3)
    with pytest.raises(ValueError, match="would stretch it"):
        RandomAccessVideo(clip[0], size=32)  # 96x64


#################################################################################
#                           Pixel layout and resizing                           #
#################################################################################


def test_frames_tensor_round_trip():
    frames = np.random.default_rng(0).integers(0, 256, (3, 5, 7, 3), dtype=np.uint8)
    x = frames_to_tensor(frames)
    assert x.shape == (3, 3, 5, 7) and x.dtype == torch.float32  # (3, F, H, W)
    assert x.min() >= -1 and x.max() <= 1
    assert x[1, 2, 3, 4].item() == pytest.approx(frames[2, 3, 4, 1] / 127.5 - 1, abs=1e-6)  # green of frame 2
    np.testing.assert_array_equal(tensor_to_frames(x), frames)
    clamped = tensor_to_frames(torch.tensor([-3.0, 2.0, 0.0]).reshape(3, 1, 1, 1))
    np.testing.assert_array_equal(clamped.reshape(3), [0, 255, 128])  # clamp, then round 127.5 up


def test_center_crop_resize():
    frames = moving_gradient(3, 64, 96)
    np.testing.assert_array_equal(center_crop_resize(frames, 64), frames[:, :, 16:80])
    flat = np.full((2, 50, 80, 3), 99, np.uint8)
    assert (center_crop_resize(flat, 20) == 99).all()
    # a 1-pixel checkerboard scaled down 3.2x averages to flat gray with antialiasing; plain bicubic aliases it
    # into a pattern of std ~60
    board = (np.indices((64, 64)).sum(axis=0) % 2 * 255).astype(np.uint8)
    small = center_crop_resize(np.repeat(board[None, ..., None], 3, axis=-1), 20)
    assert small.shape == (1, 20, 20, 3) and abs(small.mean() - 127.5) < 3 and small.std() < 3
