"""Reconstruction quality of the VAE on real videos: PSNR and SSIM (torchmetrics), whole-clip or streamed."""

from __future__ import annotations

import numpy as np
import torch
from torchmetrics.functional.image import peak_signal_noise_ratio, structural_similarity_index_measure

from rest.media import frames_to_tensor, tensor_to_frames
from rest.models.vae import CausalVideoVAE


@torch.no_grad()
def reconstruct(vae: CausalVideoVAE, frames: np.ndarray, chunk_frames: int | None = None) -> np.ndarray:
    """Encode and decode uint8 frames (F, R, R, 3) with the posterior mode; returns the first 1 + t*k frames.

    `chunk_frames=None` codes the whole clip at once; otherwise the clip streams through the VAE in chunks of
    that many frames (the way a live stream would), which gives the same result up to float rounding.
    """
    t = vae.temporal_compression
    n = 1 + t * ((len(frames) - 1) // t)
    device = next(vae.parameters()).device
    x = frames_to_tensor(frames[:n]).unsqueeze(0).to(device)  # (1, 3, F, R, R)
    if chunk_frames is None:
        y = vae.decode(vae.encode(x).latent_dist.mode()).sample
    else:
        enc, dec, outs = vae.init_cache("encode"), vae.init_cache("decode"), []
        for s in range(0, n, chunk_frames):
            out, enc = vae.encode_chunk(x[:, :, s : s + chunk_frames], enc)
            z = out.latent_dist.mode()
            if z.shape[2]:
                frames_out, dec = vae.decode_chunk(z, dec)
                outs.append(frames_out.sample)
        y = torch.cat(outs, dim=2)
    return tensor_to_frames(y[0])


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
