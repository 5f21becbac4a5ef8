"""Pixel layout and resizing: uint8 frames `(F, H, W, 3)` <-> float tensors `(3, F, H, W)` in [-1, 1], and the
centred square crop."""

from __future__ import annotations

import numpy as np
import torch
import torch.nn.functional as F


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
