"""Decoding video, audio and images into the project's conventions (`rest.media.types`).

Video and audio go through PyAV (FFmpeg); images through PIL. A file that fails or stops early while decoding
raises `MediaError` saying how far it got.
"""

from __future__ import annotations

from collections.abc import Iterator
from fractions import Fraction

import av
import av.error
import numpy as np
from PIL import Image, ImageOps, UnidentifiedImageError

from rest.media.damage import _check_complete, _open_input, check_input_file
from rest.media.errors import MediaError, _error, _reason
from rest.media.header import _declared_duration, _stream_fps, _video_stream
from rest.media.types import SAMPLE_RATE, Audio, PathLike, Video


def read_video(
    path: PathLike, *, fps: float | None = None, with_audio: bool = True, max_frames: int | None = None
) -> Video:
    """Decode a video file into uint8 RGB frames `(F, H, W, 3)` and its audio track (16 kHz mono).

    Args:
        path: any video FFmpeg reads (mp4, mov, mkv, webm, ...).
        fps: output frame rate. None keeps the source's frames as they are. Otherwise the output frame k shows
            the source frame whose presentation interval (from its pts to the next frame's pts) contains the time
            k / fps, so any source rate, constant or variable, is resampled without drift.
        with_audio: also decode the audio track, if any, to 16 kHz mono float32.
        max_frames: stop after this many output frames (the audio is then cut to the same length).
    """
    if fps is not None and fps <= 0:
        raise ValueError(f"read_video: fps must be positive, got {fps}")
    if max_frames is not None and max_frames < 1:
        raise ValueError(f"read_video: max_frames must be at least 1, got {max_frames}")
    with _open_input(path) as container:
        stream = _video_stream(container)
        if stream is None:
            raise _error(path, "has no video track")
        stream.thread_type = "AUTO"
        source_fps = _stream_fps(stream)
        out_fps = fps if fps is not None else source_fps
        if out_fps <= 0:
            raise _error(path, "the video stream declares no frame rate: pass fps= to resample it")
        frames = _decode_frames(path, container, stream, fps, max_frames)
        has_audio = bool(container.streams.audio)
    if not frames:
        raise _error(path, "the video stream holds no frames")
    video = Video(frames=np.stack(frames), fps=out_fps, audio=None)
    if with_audio and has_audio:
        samples = read_audio(path, SAMPLE_RATE)
        if max_frames is not None and len(frames) == max_frames:
            samples = samples[: round(video.duration * SAMPLE_RATE)]
        video.audio = Audio(samples, SAMPLE_RATE)
    return video


def _decode_frames(
    path: PathLike,
    container: av.container.InputContainer,
    stream: av.VideoStream,
    fps: float | None,
    max_frames: int | None,
) -> list[np.ndarray]:
    """Decode `stream` to RGB arrays, resampled to `fps` (None: every frame), and check it decoded to its end."""
    out: list[np.ndarray] = []
    step = Fraction(fps).limit_denominator(1_000_000) if fps is not None else None
    k = 0  # next output frame; its time is k / fps after the first frame
    first, end = None, None
    for frame, start, end in _frame_intervals(path, container, stream):
        if first is None:
            first = start
        if step is None:  # keep every source frame
            out.append(frame.to_ndarray(format="rgb24"))
        else:  # repeat or skip this frame for each output time in [start, end)
            rgb = None
            while first + k / step < end and (max_frames is None or len(out) < max_frames):
                rgb = rgb if rgb is not None else frame.to_ndarray(format="rgb24")
                out.append(rgb)
                k += 1
        if max_frames is not None and len(out) >= max_frames:
            return out[:max_frames]
    if first is not None:
        source_fps = _stream_fps(stream)
        frame_time = 1 / source_fps if source_fps > 0 else 0.0
        start_time = stream.start_time * stream.time_base if stream.start_time is not None else first
        decoded = float(end - min(start_time, first))
        declared, own = _declared_duration(stream, container), stream.duration is not None
        _check_complete(path, "video", decoded, declared, own, 0.1 + 2 * frame_time)
    return out


def _frame_intervals(
    path: PathLike, container: av.container.InputContainer, stream: av.VideoStream
) -> Iterator[tuple[av.VideoFrame, Fraction, Fraction]]:
    """Decoded frames in presentation order with their interval [start, end) in seconds, from their pts.

    A frame's interval ends where the next frame starts; the last one lasts its own `duration` (else the
    previous frame spacing, else 1 / average rate).
    """
    declared = _declared_duration(stream, container)
    fallback = Fraction(1) / Fraction(stream.average_rate or stream.guessed_rate or 25)
    pending: tuple[av.VideoFrame, Fraction] | None = None
    spacing = fallback
    count = 0
    try:
        for frame in container.decode(stream):
            if frame.pts is not None and frame.time_base is not None:
                start = frame.pts * frame.time_base
            else:  # no timestamps: assume the declared constant rate
                start = count * fallback
            count += 1
            if pending is not None:
                spacing = start - pending[1] if start > pending[1] else spacing
                yield pending[0], pending[1], start
            pending = (frame, start)
    except av.error.FFmpegError as e:
        decoded = float(pending[1]) if pending is not None else 0.0
        raise _decode_failed(path, "video", e, decoded, declared) from None
    if pending is not None:
        frame, start = pending
        duration = getattr(frame, "duration", None)  # PyAV >= 14
        last = duration * frame.time_base if duration and frame.time_base is not None else spacing
        yield frame, start, start + last


def _decode_failed(path: PathLike, kind: str, e: BaseException, decoded: float, declared: float | None) -> MediaError:
    """The error for a decoder that fails mid-stream (after `decoded` seconds)."""
    if decoded == 0:
        return _error(path, f"not a readable media file (the {kind} stream does not decode: {_reason(e)})")
    of = f" of {declared:.2f} s declared" if declared is not None else ""
    return _error(
        path, f"file is truncated or corrupt: {kind} decoding failed after {decoded:.2f} s{of} ({_reason(e)})"
    )


def read_audio(path: PathLike, sample_rate: int = SAMPLE_RATE) -> np.ndarray:
    """Decode an audio file, or a video's audio track, to float32 mono `(N,)` in [-1, 1] at `sample_rate` Hz.

    Resampling and downmixing go through libswresample (PyAV's `AudioResampler`); channels are averaged
    (`rematrix_maxval=1`), so a full-scale stereo file stays within [-1, 1] instead of gaining 3 dB. Decoded
    audio past the stream's declared end (AAC's padding of the last frame) is dropped. The resampling filter
    can overshoot full scale by a hair; the result is clipped to [-1, 1].
    """
    if sample_rate <= 0:
        raise ValueError(f"read_audio: sample_rate must be positive, got {sample_rate}")
    with _open_input(path) as container:
        if not container.streams.audio:
            raise _error(path, "has no audio track")
        stream = container.streams.audio[0]
        declared, own = _declared_duration(stream, container), stream.duration is not None
        # the container's exact length; decoded audio after it is the encoder's padding of the last frame
        exact = float(stream.duration * stream.time_base) if stream.duration is not None else None
        resampler = av.AudioResampler(format="flt", layout="mono", rate=sample_rate, options={"rematrix_maxval": "1"})
        chunks: list[np.ndarray] = []
        decoded = 0.0  # seconds of source audio
        try:
            for frame in container.decode(stream):
                decoded += frame.samples / frame.sample_rate
                chunks.extend(out.to_ndarray().reshape(-1) for out in resampler.resample(frame))
            chunks.extend(out.to_ndarray().reshape(-1) for out in resampler.resample(None))
        except (av.error.FFmpegError, ValueError) as e:
            raise _decode_failed(path, "audio", e, decoded, declared) from None
    _check_complete(path, "audio", decoded, declared, own, 0.1)
    if decoded == 0:
        raise _error(path, "the audio stream holds no samples")
    samples = np.concatenate(chunks).astype(np.float32, copy=False)
    if exact is not None:
        samples = samples[: round(exact * sample_rate)]
    return np.clip(samples, -1.0, 1.0)


def read_image(path: PathLike) -> np.ndarray:
    """Read an image as uint8 RGB `(H, W, 3)`, upright per its EXIF orientation.

    Grayscale and palette images are expanded to RGB; transparent pixels are composited over white;
    16-bit grayscale is scaled to 8 bits.
    """
    check_input_file(path)
    try:
        with Image.open(path) as image:
            image.load()
            image = ImageOps.exif_transpose(image)
            return _to_rgb(image)
    except UnidentifiedImageError:
        raise _error(path, "not a readable image file") from None
    except Image.DecompressionBombError as e:
        raise _error(path, f"image is too large to read safely ({e})") from None
    except (OSError, SyntaxError, ValueError) as e:
        if "truncated" in str(e):  # PIL: "image file is truncated (34 bytes not processed)"
            raise _error(path, "file is truncated (the image data ends early)") from None
        raise _error(path, f"image does not decode ({e})") from None


def _to_rgb(image: Image.Image) -> np.ndarray:
    if image.mode in ("I;16", "I;16L", "I;16B", "I"):  # 16-bit grayscale (PNG): 0..65535 -> 0..255
        gray = np.asarray(image).astype(np.float32) / 257.0
        return np.repeat(np.clip(gray.round(), 0, 255).astype(np.uint8)[..., None], 3, axis=-1)
    if image.mode in ("RGBA", "LA", "PA", "RGBa", "La") or (image.mode == "P" and "transparency" in image.info):
        rgba = image.convert("RGBA")
        image = Image.alpha_composite(Image.new("RGBA", rgba.size, (255, 255, 255, 255)), rgba)
    return np.array(image.convert("RGB"), dtype=np.uint8)
