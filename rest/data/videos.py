"""A folder of raw videos as random fixed-length clips, for VAE training."""

from __future__ import annotations

from pathlib import Path
from typing import Literal

import numpy as np
import torch
from torch.utils.data import Dataset

from rest.errors import RestError
from rest.media import RandomAccessVideo, center_crop_resize, frames_to_tensor, read_video

VIDEO_SUFFIXES = (".mp4", ".mov", ".mkv", ".avi", ".webm")


def list_videos(root: str | Path) -> list[Path]:
    """Every video file under `root` (recursive), sorted; a clear error when there is none."""
    root = Path(root)
    if root.is_file():
        return [root]
    if not root.is_dir():
        raise RestError(f"video folder not found: {root}")
    files = sorted(p for p in root.rglob("*") if p.suffix.lower() in VIDEO_SUFFIXES)
    if not files:
        raise RestError(f"no videos ({', '.join(VIDEO_SUFFIXES)}) under {root}")
    return files


class VideoClipDataset(Dataset):
    """Random clips of `num_frames` frames from a folder of videos, cropped square to `resolution`.

    `crop="center"` takes the centred square; `crop="face"` uses the smoothed face track of
    `rest.data.preprocess` (a face detector must be installed). With `cache_in_memory` every video is decoded
    once at the target resolution (fast for small folders); otherwise clips are read by random access.
    Each item is float32 (3, num_frames, R, R) in [-1, 1]. Clip starts are drawn from `torch`'s RNG, so they
    follow the trainer's seed.

    With `motion_maps` (needs `cache_in_memory`) an item is `(clip, motion)`: `motion` (1, R, R) is the
    per-pixel standard deviation over time of the clip's whole video, divided by its mean over the frame, so
    it is large where the footage moves (mouth, eyes, head contour) and about 0 on still background. The VAE
    trainer turns it into loss weights (`loss.motion_weight`).
    """

    def __init__(
        self,
        root: str | Path,
        resolution: int,
        num_frames: int,
        crop: Literal["center", "face"] = "center",
        fps: float = 25.0,
        cache_in_memory: bool = True,
        clips_per_epoch: int = 1000,
        motion_maps: bool = False,
    ):
        if motion_maps and not cache_in_memory:
            raise RestError("motion maps need cache_in_memory: true (they are measured on the whole video)")
        if crop == "face" and not cache_in_memory:
            raise RestError("crop: face needs cache_in_memory: true (or face-crop the videos with rest preprocess)")
        self.paths = list_videos(root)
        self.resolution = resolution
        self.num_frames = num_frames
        self.clips_per_epoch = clips_per_epoch
        self.videos: list[np.ndarray] = []
        self.readers: list[RandomAccessVideo] = []
        self.motion: list[torch.Tensor] = []
        for path in self.paths:
            if cache_in_memory:
                frames = read_video(path, fps=fps, with_audio=False).frames
                frames = _face_crop(frames, resolution) if crop == "face" else center_crop_resize(frames, resolution)
                if len(frames) < num_frames:
                    raise RestError(f"{path}: {len(frames)} frames, shorter than a training clip ({num_frames})")
                self.videos.append(frames)
                if motion_maps:
                    self.motion.append(motion_map(frames))
            else:
                self.readers.append(RandomAccessVideo(path))

    def __len__(self) -> int:
        return self.clips_per_epoch

    def num_videos(self) -> int:
        return len(self.paths)

    def __getitem__(self, index: int) -> torch.Tensor | tuple[torch.Tensor, torch.Tensor]:
        v = index % self.num_videos()
        if self.videos:
            frames = self.videos[v]
            start = int(torch.randint(0, len(frames) - self.num_frames + 1, ()).item())
            clip = frames[start : start + self.num_frames]
            if self.motion:
                return frames_to_tensor(clip), self.motion[v]
        else:
            reader = self.readers[v]
            start = int(torch.randint(0, len(reader) - self.num_frames + 1, ()).item())
            clip = center_crop_resize(reader.get(range(start, start + self.num_frames)), self.resolution)
        return frames_to_tensor(clip)  # (3, F, R, R)

    def whole_videos(self, max_frames: int | None = None) -> list[np.ndarray]:
        """The cached videos (uint8 (F, R, R, 3)), for evaluation on the training footage."""
        return [v[:max_frames] for v in self.videos]


def motion_map(frames: np.ndarray, block: int = 64) -> torch.Tensor:
    """(1, H, W) float32: per-pixel temporal std of uint8 frames (F, H, W, 3), channel-averaged, over its mean."""
    x = torch.from_numpy(frames)
    total = torch.zeros(frames.shape[1:], dtype=torch.float64)
    total_sq = torch.zeros_like(total)
    for i in range(0, len(frames), block):  # float64 sums in blocks: no float copy of the whole video
        chunk = x[i : i + block].double()
        total += chunk.sum(0)
        total_sq += chunk.pow(2).sum(0)
    mean = total / len(frames)
    std = (total_sq / len(frames) - mean.pow(2)).clamp_min(0).sqrt().mean(-1)  # (H, W)
    return (std / std.mean().clamp_min(1e-6)).float().unsqueeze(0)


def _face_crop(frames: np.ndarray, resolution: int) -> np.ndarray:
    from rest.data.face import FaceDetector
    from rest.data.preprocess import crop_face_track

    return crop_face_track(frames, FaceDetector(), resolution)
