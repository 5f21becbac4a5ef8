"""Media I/O: decode video, audio and images into the project's conventions, and write H.264 + AAC mp4 files.

Conventions (DESIGN.md): video at 25 fps by default; audio 16 kHz mono float32 in [-1, 1]; pixels as uint8
numpy `(F, H, W, 3)` at the I/O boundary and float `(3, F, H, W)` in [-1, 1] inside the models
(`frames_to_tensor` / `tensor_to_frames` convert).

Decoding goes through PyAV (FFmpeg); `RandomAccessVideo` uses decord for random windows of frames in training.
Every problem with an input file raises `MediaError` with a one-line message that names the file and the
problem; FFmpeg's own errors never reach the user. A damaged file is never decoded "as far as it goes" in
silence: a truncated file is detected from its structure (MP4 boxes, the WAV header) and from comparing what
was decoded with the duration the container declares, since FFmpeg often stops early at a cut without an error.
"""

from __future__ import annotations

import os
import re
import struct
import uuid
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from fractions import Fraction
from pathlib import Path

import av
import av.error
import av.logging
import numpy as np
import torch
import torch.nn.functional as F
from PIL import Image, ImageOps, UnidentifiedImageError

from rest.errors import RestError

PathLike = str | os.PathLike

SAMPLE_RATE = 16000  # audio inside the project: 16 kHz mono float32
FPS = 25.0  # default video frame rate

# FFmpeg prints a line for every damaged packet; our MediaError already says what went wrong, on one line.
# PyAV >= 13 keeps FFmpeg's log off by default (level None); older versions forward warnings, so quiet them.
if av.logging.get_level() is not None:
    av.logging.set_level(av.logging.PANIC)


class MediaError(RestError):
    """A media file cannot be read or written; the message names the file and says what is wrong, on one line."""


def _error(path: PathLike, problem: str) -> MediaError:
    return MediaError(f"{path}: {problem}")


#################################################################################
#                                  Data types                                   #
#################################################################################


@dataclass
class Audio:
    """Mono audio: float32 samples in [-1, 1] at `sample_rate` Hz."""

    samples: np.ndarray  # (N,) float32
    sample_rate: int

    def __post_init__(self) -> None:
        if self.samples.ndim != 1 or self.samples.dtype != np.float32:
            raise ValueError(f"Audio.samples must be float32 (N,), got {self.samples.dtype} {self.samples.shape}")

    @property
    def duration(self) -> float:
        """Length in seconds."""
        return len(self.samples) / self.sample_rate


@dataclass
class VideoInfo:
    """What `probe` reads from a media file's header, without decoding it.

    For an audio-only file `has_video` is False, `width`, `height` and `num_frames` are 0, `fps` is 0.0,
    `codec` is "" and `duration` is the audio's.
    """

    path: Path
    width: int
    height: int
    fps: float  # average frame rate of the video stream
    num_frames: int
    duration: float  # seconds, of the video stream (of the audio stream for an audio-only file)
    codec: str  # video codec name as FFmpeg spells it ("h264", "mpeg4", ...)
    has_audio: bool
    audio_sample_rate: int | None
    audio_channels: int | None
    audio_codec: str | None  # "aac", "pcm_s16le", ...
    audio_duration: float | None  # seconds, of the audio stream
    has_video: bool


@dataclass
class Video:
    """Decoded video: uint8 RGB frames at `fps`, with the audio track (16 kHz mono) when there is one."""

    frames: np.ndarray  # (F, H, W, 3) uint8
    fps: float
    audio: Audio | None

    @property
    def num_frames(self) -> int:
        return len(self.frames)

    @property
    def duration(self) -> float:
        """Length of the frames in seconds (`num_frames / fps`)."""
        return len(self.frames) / self.fps


#################################################################################
#                        Opening files and finding damage                       #
#################################################################################


def _check_input_file(path: PathLike) -> Path:
    """Fail with a clear message for the problems we can see before FFmpeg looks at the file."""
    p = Path(path)
    if not p.exists():
        raise _error(path, "file not found")
    if p.is_dir():
        raise _error(path, "is a directory, not a media file")
    try:
        with open(p, "rb") as f:
            f.read(1)
    except PermissionError:
        raise _error(path, "permission denied") from None
    except OSError as e:
        raise _error(path, f"cannot be read ({e.strerror})") from None
    if p.stat().st_size == 0:
        raise _error(path, "file is empty")
    return p


# Top-level box types of ISO base media (mp4 / mov / m4a) files; used to recognise one and walk its boxes.
_ISO_BOXES = frozenset(
    [b"ftyp", b"styp", b"moov", b"moof", b"mdat", b"free", b"skip", b"wide", b"pnot", b"pdin", b"uuid", b"meta"]
)


def _find_damage(path: Path) -> str | None:
    """The problem with the file's structure when it is cut short (MP4 boxes, the WAV header), else None.

    FFmpeg decodes a truncated file as far as its data goes and often stops without an error, and for WAV it
    even re-estimates the duration from the file size, so the cut is invisible to it. The headers still say
    how long the file should be.
    """
    size = path.stat().st_size
    with open(path, "rb") as f:
        head = f.read(12)
        if len(head) == 12 and head[:4] == b"RIFF" and head[8:12] == b"WAVE":
            return _find_wav_damage(f, size)
        if len(head) >= 8 and head[4:8] in _ISO_BOXES:
            return _find_iso_damage(f, size)
    return None


def _find_wav_damage(f, size: int) -> str | None:
    """A WAV whose `data` chunk runs past the end of the file."""
    offset, byte_rate = 12, 0
    while offset + 8 <= size:
        f.seek(offset)
        chunk_id, chunk_size = struct.unpack("<4sI", f.read(8))
        if chunk_id == b"fmt " and chunk_size >= 12:
            fmt = f.read(12)
            if len(fmt) < 12:
                return "file is truncated: it ends inside its header"
            byte_rate = struct.unpack("<HHII", fmt)[3]
        if chunk_id == b"data":
            if chunk_size in (0, 0xFFFFFFFF):  # written by a streaming writer that never filled in the size
                return None
            present = size - (offset + 8)
            if present >= chunk_size:
                return None
            if byte_rate > 0:
                return (
                    f"file is truncated: it holds {present / byte_rate:.2f} s of audio "
                    f"of the {chunk_size / byte_rate:.2f} s its header declares"
                )
            return f"file is truncated: it holds {present} bytes of audio of the {chunk_size} its header declares"
        offset += 8 + chunk_size + (chunk_size & 1)  # chunks are padded to an even size
    return None


def _find_iso_damage(f, size: int) -> str | None:
    """An MP4/MOV whose top-level boxes run past the end of the file, or that never got its index (`moov`)."""
    offset, seen = 0, set()
    while offset + 8 <= size:
        f.seek(offset)
        box_size, box_type = struct.unpack(">I4s", f.read(8))
        if box_size == 1:  # 64-bit size follows the type
            if offset + 16 > size:
                return f"file is truncated: it ends inside the header of its '{box_type.decode('latin-1')}' box"
            box_size = struct.unpack(">Q", f.read(8))[0]
        elif box_size == 0:  # the box runs to the end of the file
            box_size = size - offset
        if box_size < 8 or not all(32 <= c < 127 for c in box_type):
            return None  # not a box layout we understand; leave it to FFmpeg
        seen.add(box_type)
        if offset + box_size > size:
            name = box_type.decode("latin-1")
            return f"file is truncated: it has {size:,} bytes but its '{name}' box ends at byte {offset + box_size:,}"
        offset += box_size
    if b"mdat" in seen and b"moov" not in seen and b"moof" not in seen:
        return "file is truncated or was never finalized: it has no 'moov' index box"
    return None


def _open_input(path: PathLike) -> av.container.InputContainer:
    """Open a media file with PyAV, or raise MediaError saying why it cannot be read."""
    p = _check_input_file(path)
    damage = _find_damage(p)
    if damage is not None:
        raise _error(path, damage)
    try:
        container = av.open(str(p), mode="r")
    except av.error.FFmpegError as e:
        raise _error(path, f"not a readable media file ({_reason(e)})") from None
    if not container.streams.video and not container.streams.audio:
        container.close()
        raise _error(path, "not a readable media file (no audio or video stream)")
    return container


def _reason(e: BaseException) -> str:
    """FFmpeg's short description of an error, without PyAV's errno and file name decorations."""
    return getattr(e, "strerror", None) or str(e) or type(e).__name__


def _video_stream(container: av.container.InputContainer) -> av.VideoStream | None:
    """The first real video stream (cover art in audio files is a video stream too, flagged `attached_pic`)."""
    for stream in container.streams.video:
        if not stream.disposition & av.stream.Disposition.attached_pic:
            return stream
    return None


def _declared_duration(stream: av.stream.Stream, container: av.container.InputContainer) -> float | None:
    """Seconds the container declares for `stream`: its own duration, else the container's, else None."""
    if stream.duration is not None and stream.time_base is not None:
        return float(stream.duration * stream.time_base)
    if container.duration is not None:
        return container.duration / av.time_base
    return None


def _stream_fps(stream: av.VideoStream) -> float:
    rate = stream.average_rate or stream.guessed_rate or stream.base_rate
    return float(rate) if rate else 0.0


def _check_complete(
    path: PathLike, kind: str, decoded: float, declared: float | None, own: bool, tolerance: float
) -> None:
    """Raise when a stream decoded to its end holds clearly less than the container declares.

    `own` says the duration is the stream's own (MP4, WAV). Otherwise it is the whole file's (Matroska / WebM
    store no per-stream length): the longest stream, so a shorter one is only truncated if every stream ends
    early, which we check by reading the packets' timestamps (no decoding).
    """
    if declared is None or decoded >= declared - tolerance:
        return
    if not own and _packets_end(path) >= declared - tolerance:
        return
    raise _error(path, f"file is truncated: decoded {decoded:.2f} s of {declared:.2f} s of {kind} declared")


def _packets_end(path: PathLike) -> float:
    """Seconds from the start of the file to the end of its last packet, over all audio and video streams."""
    with av.open(str(path)) as container:
        streams = [*container.streams.video, *container.streams.audio]
        start = min((s.start_time * s.time_base for s in streams if s.start_time is not None), default=0)
        end = start
        try:
            for packet in container.demux(streams):
                if packet.pts is not None and packet.time_base is not None:
                    end = max(end, (packet.pts + (packet.duration or 0)) * packet.time_base)
        except av.error.FFmpegError:
            pass  # damaged past this point: what was read so far is where the data ends
    return float(end - start)


def _decode_failed(path: PathLike, kind: str, e: BaseException, decoded: float, declared: float | None) -> MediaError:
    """The error for a decoder that fails mid-stream (after `decoded` seconds)."""
    if decoded == 0:
        return _error(path, f"not a readable media file (the {kind} stream does not decode: {_reason(e)})")
    of = f" of {declared:.2f} s declared" if declared is not None else ""
    return _error(
        path, f"file is truncated or corrupt: {kind} decoding failed after {decoded:.2f} s{of} ({_reason(e)})"
    )


#################################################################################
#                                    Reading                                    #
#################################################################################


def probe(path: PathLike) -> VideoInfo:
    """Read a media file's streams and durations from its header (no decoding); works for audio-only files."""
    with _open_input(path) as container:
        video = _video_stream(container)
        audio = container.streams.audio[0] if container.streams.audio else None
        audio_duration = _declared_duration(audio, container) if audio is not None else None
        if video is not None:
            fps = _stream_fps(video)
            duration = _declared_duration(video, container)
            num_frames = video.frames or _count_packets(container, video)
            if duration is None:
                duration = num_frames / fps if fps > 0 else 0.0
            width, height, codec = video.codec_context.width, video.codec_context.height, video.codec_context.name
        else:
            fps, num_frames, width, height, codec = 0.0, 0, 0, 0, ""
            duration = audio_duration or 0.0
        return VideoInfo(
            path=Path(path),
            width=width,
            height=height,
            fps=fps,
            num_frames=num_frames,
            duration=duration,
            codec=codec,
            has_audio=audio is not None,
            audio_sample_rate=audio.codec_context.sample_rate if audio is not None else None,
            audio_channels=audio.codec_context.channels if audio is not None else None,
            audio_codec=audio.codec_context.name if audio is not None else None,
            audio_duration=audio_duration,
            has_video=video is not None,
        )


def _count_packets(container: av.container.InputContainer, stream: av.VideoStream) -> int:
    """Frames of a stream whose container does not store the count (Matroska, WebM): one packet per frame."""
    return sum(1 for packet in container.demux(stream) if packet.size > 0)


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
    _check_input_file(path)
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


#################################################################################
#                                    Writing                                    #
#################################################################################

# Output suffix -> FFmpeg muxer. Both store AAC's encoder delay and padding (an edit list), so the audio track
# lasts exactly as long as the samples given; Matroska does not, so it is not offered.
_CONTAINERS = {".mp4": "mp4", ".mov": "mov"}
_AAC_FRAME = 1024  # samples per AAC-LC frame: the encoder takes exactly this many (the last frame may be short)


def check_output_file(path: PathLike, suffixes: Sequence[str] = tuple(_CONTAINERS)) -> Path:
    """Fail with a one-line `MediaError` when `path` cannot become a file, so that no work is spent on an output
    that cannot be written: a suffix not in `suffixes`, a folder at `path`, a file where a folder should be, or a
    folder that is not writable (the nearest existing one, when the missing folders would be created). An existing
    file at `path` is fine: the writers here replace it atomically, and only once the new file is complete."""
    p = Path(path)
    if p.is_dir():
        raise _error(path, f"is a folder; name the file to write in it, e.g. {p / ('video' + suffixes[0])}")
    if suffixes and p.suffix.lower() not in suffixes:
        raise _error(path, f"the output must be a {' or '.join(suffixes)} file")
    folder = p.absolute().parent
    existing = next(f for f in (folder, *folder.parents) if f.exists())  # the root exists
    if not existing.is_dir():
        raise _error(path, f"cannot write: {existing} is a file, not a folder")
    if not os.access(existing, os.W_OK | os.X_OK):
        problem = "cannot write: the folder" if existing == folder else f"cannot create the folder {folder}:"
        raise _error(path, f"{problem} {existing} is not writable (permission denied or read-only)")
    return p


def write_audio(path: PathLike, samples: np.ndarray | torch.Tensor, sample_rate: int = SAMPLE_RATE) -> None:
    """Write float mono samples in [-1, 1] as a 16-bit PCM WAV file, atomically."""
    import wave

    path = Path(path)
    pcm = (np.clip(_as_audio(samples), -1.0, 1.0) * 32767.0).round().astype("<i2")
    tmp = path.with_name(f".{path.name}.{uuid.uuid4().hex[:8]}.tmp")
    try:
        with wave.open(str(tmp), "wb") as w:
            w.setnchannels(1)
            w.setsampwidth(2)
            w.setframerate(int(sample_rate))
            w.writeframes(pcm.tobytes())
        os.replace(tmp, path)
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise


def write_video(
    path: PathLike,
    frames: np.ndarray | torch.Tensor,
    fps: float = FPS,
    audio: np.ndarray | torch.Tensor | None = None,
    sample_rate: int = SAMPLE_RATE,
    crf: int = 18,
    keyframe_interval: int = 25,
) -> None:
    """Write frames (and a mono audio track) as H.264 (yuv420p) + AAC, atomically.

    Args:
        path: output file, `.mp4` or `.mov` (index first: it plays while still downloading).
        frames: uint8 `(F, H, W, 3)` RGB, or a float tensor `(3, F, H, W)` in [-1, 1]. H and W must be even
            (yuv420p halves the chroma resolution).
        fps: frame rate; the video lasts exactly F / fps seconds.
        audio: float `(N,)` mono in [-1, 1] at `sample_rate` Hz; cut or padded with silence to F / fps seconds so
            both tracks end together.
        crf: x264 constant rate factor (0 lossless, 18 visually lossless, 23 x264's default).
        keyframe_interval: frames between keyframes; random access (decord, seeking) decodes from the previous
            keyframe, so short intervals keep reads of training windows cheap.

    The file is written under a temporary name in the same folder and renamed into place when complete, so on
    any error (or Ctrl-C) no partial file is left behind and an existing file at `path` is untouched.
    """
    frames = _as_frames(frames)
    num_frames, height, width, _ = frames.shape
    if num_frames == 0:
        raise ValueError("write_video: no frames to write")
    with VideoWriter(path, width, height, fps, audio, sample_rate, num_frames, crf, keyframe_interval) as writer:
        writer.write(frames)


class VideoWriter:
    """Stream frames into an H.264 (yuv420p) + AAC file, atomically: `write_video` one block at a time.

        with VideoWriter("out.mp4", W, H, fps=25, audio=samples, num_frames=F) as writer:
            for block in blocks:       # uint8 (F', H, W, 3)
                writer.write(block)

    `audio` (float (N,) mono) is cut or padded with silence to `num_frames / fps` seconds and muxed as the frames
    arrive. The file appears at `path` only when the block exits normally after exactly `num_frames` frames; on
    an exception (or Ctrl-C), or a different frame count, the temporary file is removed and `path` is untouched.
    """

    def __init__(
        self,
        path: PathLike,
        width: int,
        height: int,
        fps: float = FPS,
        audio: np.ndarray | torch.Tensor | None = None,
        sample_rate: int = SAMPLE_RATE,
        num_frames: int | None = None,
        crf: int = 18,
        keyframe_interval: int = 25,
    ):
        self.path = path = Path(path)
        if height % 2 or width % 2:
            raise ValueError(
                f"write_video: H.264 yuv420p needs an even width and height, got {width}x{height}: "
                "crop or pad the frames"
            )
        if fps <= 0:
            raise ValueError(f"write_video: fps must be positive, got {fps}")
        if keyframe_interval < 1:
            raise ValueError(f"write_video: keyframe_interval must be >= 1, got {keyframe_interval}")
        if not 0 <= crf <= 51:
            raise ValueError(f"write_video: crf must be in [0, 51], got {crf}")
        if path.suffix.lower() not in _CONTAINERS:
            raise ValueError(f"write_video: {path} must end in one of {', '.join(_CONTAINERS)}")
        if not path.parent.is_dir():
            raise _error(path, f"cannot write: the folder {path.parent} does not exist")
        if audio is not None and num_frames is None:
            raise ValueError("write_video: give num_frames with audio (the audio track is fitted to the video)")
        self.width, self.height, self.num_frames = width, height, num_frames
        self.rate = Fraction(fps).limit_denominator(1001)  # 25.0 -> 25, 29.97002997 -> 30000/1001
        self.sample_rate, self.crf, self.keyframe_interval = sample_rate, crf, keyframe_interval
        self.samples = None
        if audio is not None:
            self.samples = _fit_audio(_as_audio(audio), round(num_frames / self.rate * sample_rate))
        self.frames_written = 0
        self._written_audio = 0

    def __enter__(self) -> VideoWriter:
        path = self.path
        self.tmp = path.with_name(f".{path.name}.{uuid.uuid4().hex[:8]}.tmp")
        os.close(os.open(self.tmp, os.O_CREAT | os.O_EXCL | os.O_WRONLY, 0o666))  # the umask applies, as for `open`
        try:
            options = {"movflags": "+faststart"}  # move the index (moov) before the data once the file is complete
            self.container = av.open(str(self.tmp), mode="w", format=_CONTAINERS[path.suffix.lower()], options=options)
            self.video = self.container.add_stream("libx264", rate=self.rate)
            self.video.width, self.video.height, self.video.pix_fmt = self.width, self.height, "yuv420p"
            self.video.options = {"crf": str(self.crf)}
            self.video.codec_context.gop_size = self.keyframe_interval
            self.sound = None
            if self.samples is not None:
                self.sound = self.container.add_stream("aac", rate=self.sample_rate, layout="mono")
        except BaseException as err:
            self.tmp.unlink(missing_ok=True)
            if isinstance(err, av.error.FFmpegError):
                raise _error(path, f"cannot write video ({_reason(err)})") from None
            raise
        return self

    def write(self, frames: np.ndarray | torch.Tensor) -> None:
        """Append frames: uint8 (F', H, W, 3) RGB or a float tensor (3, F', H, W) in [-1, 1]."""
        frames = _as_frames(frames)
        if frames.shape[1:] != (self.height, self.width, 3):
            raise ValueError(f"write_video: frames must be ({self.height}, {self.width}, 3), got {frames.shape[1:]}")
        try:
            for rgb in frames:
                i = self.frames_written
                frame = av.VideoFrame.from_ndarray(np.ascontiguousarray(rgb), format="rgb24")
                frame.pts = i  # in units of 1 / rate
                self.container.mux(self.video.encode(frame))
                if self.sound is not None:  # audio up to the end of this frame
                    stop = round((i + 1) / self.rate * self.sample_rate)
                    self._written_audio = _encode_audio(
                        self.container, self.sound, self.samples, self._written_audio, stop
                    )
                self.frames_written += 1
        except av.error.FFmpegError as e:
            raise _error(self.path, f"cannot write video ({_reason(e)})") from None

    def __exit__(self, exc_type, exc, tb) -> None:
        try:
            if exc_type is None:
                if self.frames_written == 0:
                    raise ValueError("write_video: no frames to write")
                if self.num_frames is not None and self.frames_written != self.num_frames:
                    raise ValueError(f"write_video: {self.frames_written} frames written, {self.num_frames} declared")
                try:
                    self.container.mux(self.video.encode(None))
                    if self.sound is not None:
                        _encode_audio(self.container, self.sound, self.samples, self._written_audio, len(self.samples))
                        self.container.mux(self.sound.encode(None))
                    self.container.close()
                except av.error.FFmpegError as e:
                    raise _error(self.path, f"cannot write video ({_reason(e)})") from None
                os.replace(self.tmp, self.path)
            else:
                self.container.close()
        except BaseException:
            try:
                self.container.close()
            except Exception:
                pass
            raise
        finally:
            self.tmp.unlink(missing_ok=True)


def _encode_audio(
    container: av.container.OutputContainer, stream: av.AudioStream, samples: np.ndarray, start: int, stop: int
) -> int:
    """Encode whole AAC frames of `samples[start:stop]` (and the short last one at the end); return the new start."""
    stop = min(stop, len(samples))
    while start + _AAC_FRAME <= stop or (stop == len(samples) and start < stop):
        chunk = samples[start : start + _AAC_FRAME]
        frame = av.AudioFrame.from_ndarray(chunk[None], format="fltp", layout="mono")
        frame.sample_rate, frame.pts = stream.rate, start
        container.mux(stream.encode(frame))
        start += len(chunk)
    return start


def _as_frames(frames: np.ndarray | torch.Tensor) -> np.ndarray:
    if isinstance(frames, torch.Tensor):
        return tensor_to_frames(frames)
    if not isinstance(frames, np.ndarray) or frames.dtype != np.uint8 or frames.ndim != 4 or frames.shape[-1] != 3:
        got = f"{frames.dtype} {frames.shape}" if isinstance(frames, np.ndarray) else type(frames).__name__
        raise ValueError(f"frames must be uint8 (F, H, W, 3) or a float tensor (3, F, H, W), got {got}")
    return frames


def _as_audio(audio: np.ndarray | torch.Tensor) -> np.ndarray:
    if isinstance(audio, torch.Tensor):
        audio = audio.detach().cpu().numpy()
    if audio.ndim != 1 or not np.issubdtype(audio.dtype, np.floating):
        raise ValueError(f"audio must be float mono (N,), got {audio.dtype} {audio.shape}")
    return np.ascontiguousarray(audio, dtype=np.float32)


def _fit_audio(samples: np.ndarray, length: int) -> np.ndarray:
    """Cut or zero-pad `samples` to exactly `length`."""
    if len(samples) >= length:
        return samples[:length]
    return np.concatenate([samples, np.zeros(length - len(samples), np.float32)])


#################################################################################
#                           Random access (training)                            #
#################################################################################


class RandomAccessVideo:
    """Random access to a video's frames through decord, for sampling training windows.

    decord decodes with the same FFmpeg conversion as `read_video` (identical frames at the source rate); it
    seeks to the keyframe before each requested frame, so scattered windows are cheap.
    """

    def __init__(self, path: PathLike, size: int | None = None):
        """Open `path`; `size` resizes square frames to `size` x `size` at decode (non-square video is refused:
        resizing would stretch it; crop it first, e.g. with `center_crop_resize`)."""
        decord = _decord()
        self.path = Path(path)
        info = probe(path)  # the clear MediaError for missing, empty, truncated or non-media files
        if not info.has_video:
            raise _error(path, "has no video track")
        if size is not None and info.width != info.height:
            raise ValueError(
                f"RandomAccessVideo: {path} is {info.width}x{info.height}; resizing to {size}x{size} at decode "
                "would stretch it: open it with size=None and use center_crop_resize"
            )
        resize = {} if size is None else {"width": size, "height": size}
        try:
            self._reader = decord.VideoReader(str(path), ctx=decord.cpu(0), **resize)
        except (decord.DECORDError, RuntimeError) as e:
            raise _error(path, f"decord cannot open it ({_decord_reason(e)})") from None

    def __len__(self) -> int:
        return len(self._reader)

    @property
    def fps(self) -> float:
        return float(self._reader.get_avg_fps())

    def get(self, indices: Sequence[int]) -> np.ndarray:
        """Frames at `indices` (any order, repeats allowed) as uint8 `(N, H, W, 3)`."""
        indices = [int(i) for i in indices]
        for i in indices:
            if not 0 <= i < len(self):
                raise IndexError(f"{self.path}: frame {i} out of range (the video has {len(self)} frames)")
        decord = _decord()
        try:
            return self._reader.get_batch(indices).asnumpy()
        except (decord.DECORDError, RuntimeError) as e:
            raise _error(self.path, f"file is corrupt: decord failed to decode frames ({_decord_reason(e)})") from None


def _decord():
    """decord, imported on first use: only training needs it, and it loads its own copy of FFmpeg."""
    import decord

    decord.logging.set_level(decord.logging.QUIET)  # its FFmpeg logs to stderr by default
    return decord


def _decord_reason(e: BaseException) -> str:
    """decord's message without its timestamp and C++ source location ("[12:00:00] src/x.cc:83: ...")."""
    lines = [re.sub(r"^\[[\d:]+\] \S+:\d+: ", "", line).strip() for line in str(e).splitlines()]
    lines = [line for line in lines if line and not line.startswith("Stack trace")]
    return lines[0] if lines else type(e).__name__


#################################################################################
#                          Pixel layout and resizing                            #
#################################################################################


def frames_to_tensor(frames: np.ndarray) -> torch.Tensor:
    """uint8 `(F, H, W, 3)` -> float32 `(3, F, H, W)` in [-1, 1]."""
    if frames.dtype != np.uint8 or frames.ndim != 4 or frames.shape[-1] != 3:
        raise ValueError(f"frames_to_tensor expects uint8 (F, H, W, 3), got {frames.dtype} {frames.shape}")
    x = torch.from_numpy(np.ascontiguousarray(frames)).permute(3, 0, 1, 2)  # (3, F, H, W)
    return (x.float() / 127.5 - 1.0).contiguous()


def tensor_to_frames(x: torch.Tensor) -> np.ndarray:
    """float `(3, F, H, W)` in [-1, 1] -> uint8 `(F, H, W, 3)`; values outside [-1, 1] are clamped, then rounded."""
    if x.ndim != 4 or x.shape[0] != 3 or not x.is_floating_point():
        raise ValueError(f"tensor_to_frames expects a float tensor (3, F, H, W), got {x.dtype} {tuple(x.shape)}")
    x = ((x.detach().float().clamp(-1.0, 1.0) + 1.0) * 127.5).round().to(torch.uint8)
    return x.permute(1, 2, 3, 0).contiguous().cpu().numpy()  # (F, H, W, 3)


def center_crop_resize(frames: np.ndarray, size: int, batch: int = 32) -> np.ndarray:
    """Crop the largest centred square of uint8 `(F, H, W, 3)` frames and resize it to `(F, size, size, 3)`.

    Bicubic with antialiasing (torch `interpolate`), so downscaling does not alias; `batch` frames at a time
    bound the float memory.
    """
    if frames.dtype != np.uint8 or frames.ndim != 4 or frames.shape[-1] != 3:
        raise ValueError(f"center_crop_resize expects uint8 (F, H, W, 3), got {frames.dtype} {frames.shape}")
    if size < 1:
        raise ValueError(f"center_crop_resize: size must be positive, got {size}")
    _, height, width, _ = frames.shape
    side = min(height, width)
    top, left = (height - side) // 2, (width - side) // 2
    square = frames[:, top : top + side, left : left + side]
    if side == size:
        return square.copy()
    out = np.empty((len(frames), size, size, 3), dtype=np.uint8)
    for i in range(0, len(frames), batch):
        x = torch.from_numpy(np.ascontiguousarray(square[i : i + batch])).permute(0, 3, 1, 2).float()  # (B, 3, s, s)
        y = F.interpolate(x, size=(size, size), mode="bicubic", align_corners=False, antialias=True)
        out[i : i + batch] = y.round().clamp(0, 255).to(torch.uint8).permute(0, 2, 3, 1).numpy()
    return out
