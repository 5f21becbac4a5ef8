"""FVD: I3D features of 16-frame clips (StyleGAN-V's `i3d_torchscript.pt`) and their Frechet distance.

Pinned conventions:
- clips: every non-overlapping run of 16 consecutive frames of a video, from frame 0 (a video of 40 frames gives 2
  clips; one shorter than 16 frames gives none, and the output says so). The clip count of each set is reported.
- pixels: uint8 RGB -> a centred square crop (talking-head videos are square already) -> [0, 1] -> bilinear resize
  to 224 x 224 (align_corners=False) -> [-1, 1]; tensor `(B, 3, 16, 224, 224)`.
- the detector is called as `detector(x, rescale=False, resize=False, return_features=True)` and returns the
  400-d pre-softmax features (Kinetics-400 logits layer input), as in the widely used re-implementations of
  StyleGAN-V's metric. StyleGAN-V's own `frechet_video_distance.py` passes uint8 videos with `rescale=True,
  resize=True` and lets the TorchScript do the same two steps internally; we do them outside so the resize filter
  is ours and known.
- Frechet distance as for FID (`rest.metrics.fid`), float64.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F

from rest.errors import RestError
from rest.metrics.fid import Extractor, file_sha256, is_torchscript

CLIP_FRAMES = 16
I3D_SIZE = 224


def video_clips(frames: np.ndarray, clip_frames: int = CLIP_FRAMES) -> np.ndarray:
    """Non-overlapping clips of `clip_frames` frames from frame 0: uint8 (F, H, W, 3) -> (K, clip_frames, H, W, 3)."""
    k = len(frames) // clip_frames
    return frames[: k * clip_frames].reshape(k, clip_frames, *frames.shape[1:])


def preprocess_clips(clips: np.ndarray, size: int = I3D_SIZE) -> torch.Tensor:
    """uint8 (K, T, H, W, 3) -> float (K, 3, T, size, size) in [-1, 1] (centred square crop, bilinear resize)."""
    k, t, h, w, _ = clips.shape
    side = min(h, w)
    top, left = (h - side) // 2, (w - side) // 2
    x = torch.from_numpy(np.ascontiguousarray(clips[:, :, top : top + side, left : left + side]))
    x = x.reshape(k * t, side, side, 3).permute(0, 3, 1, 2).float() / 255.0  # (K*T, 3, s, s)
    x = F.interpolate(x, size=(size, size), mode="bilinear", align_corners=False)
    x = x.reshape(k, t, 3, size, size).permute(0, 2, 1, 3, 4)  # (K, 3, T, size, size)
    return (2.0 * x - 1.0).contiguous()


class I3DFeatures:
    """I3D TorchScript features of 16-frame clips (module docstring); `extractor` names the weights."""

    def __init__(self, path: str | Path, device: torch.device | str = "cpu", batch_size: int = 4):
        path = Path(path)
        if not path.is_file():
            raise RestError(f"FVD I3D weights not found at {path}")
        if not is_torchscript(path):
            raise RestError(
                f"{path}: not a TorchScript file; FVD needs StyleGAN-V's i3d_torchscript.pt (torch.jit.load)"
            )
        try:
            self.model = torch.jit.load(str(path), map_location="cpu").eval()
        except Exception as err:
            raise RestError(f"{path}: cannot load the I3D TorchScript ({type(err).__name__}: {err})") from None
        self.device = torch.device(device)
        self.model = self.model.to(self.device)
        self.batch_size = batch_size
        self.extractor = Extractor("i3d-kinetics400 (StyleGAN-V torchscript)", str(path), file_sha256(path))

    @torch.no_grad()
    def __call__(self, clips: np.ndarray) -> np.ndarray:
        """uint8 (K, 16, H, W, 3) -> float64 (K, D) (D = 400 for StyleGAN-V's file)."""
        out = []
        for i in range(0, len(clips), self.batch_size):
            x = preprocess_clips(clips[i : i + self.batch_size]).to(self.device)
            try:
                feats = self.model(x, rescale=False, resize=False, return_features=True)
            except Exception as err:  # a TorchScript without I3D's call interface
                raise RestError(
                    f"{self.extractor.weights}: does not take I3D's call "
                    f"detector(videos, rescale=False, resize=False, return_features=True) ({type(err).__name__})"
                ) from None
            out.append(feats.reshape(len(x), -1).double().cpu().numpy())
        return np.concatenate(out) if out else np.zeros((0, 0))


__all__ = ["CLIP_FRAMES", "I3DFeatures", "I3D_SIZE", "preprocess_clips", "video_clips"]
