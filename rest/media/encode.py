"""Writing H.264 + AAC mp4 / mov files and 16-bit WAV files, atomically (complete at `path`, or not there)."""

from __future__ import annotations

import os
import uuid
from collections.abc import Sequence
from fractions import Fraction
from pathlib import Path

import av
import av.error
import numpy as np
import torch

from rest.media.errors import _error, _reason
from rest.media.pixels import tensor_to_frames
from rest.media.types import FPS, SAMPLE_RATE, PathLike

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
