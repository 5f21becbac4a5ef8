"""Reconstruction quality of the VAE on real videos: PSNR and SSIM (torchmetrics), whole-clip or streamed."""

from __future__ import annotations

import numpy as np
import torch
from torchmetrics.functional.image import peak_signal_noise_ratio, structural_similarity_index_measure


def reconstruction_metrics(reference: np.ndarray, reconstruction: np.ndarray) -> dict[str, float]:
    """PSNR (dB) and SSIM over all frames of two uint8 clips (F, H, W, 3) of equal length."""
    if reference.shape != reconstruction.shape:
        raise ValueError(f"clips differ in shape: {reference.shape} vs {reconstruction.shape}")
    ref = torch.from_numpy(reference).permute(0, 3, 1, 2).float() / 255  # (F, 3, H, W)
    rec = torch.from_numpy(reconstruction).permute(0, 3, 1, 2).float() / 255
    return {
        "psnr": peak_signal_noise_ratio(rec, ref, data_range=1.0).item(),
        "ssim": structural_similarity_index_measure(rec, ref, data_range=1.0).item(),
        "frames": len(reference),
    }
