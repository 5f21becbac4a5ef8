"""The project's media conventions and the data types at the I/O boundary.

Conventions (docs/design.md, "Conventions"): video at 25 fps by default; audio 16 kHz mono float32 in [-1, 1];
pixels as uint8 numpy `(F, H, W, 3)` at the I/O boundary and float `(3, F, H, W)` in [-1, 1] inside the models
(`frames_to_tensor` / `tensor_to_frames` in `rest.media.pixels` convert).
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path

import numpy as np

PathLike = str | os.PathLike

SAMPLE_RATE = 16000  # audio inside the project: 16 kHz mono float32
FPS = 25.0  # default video frame rate


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
