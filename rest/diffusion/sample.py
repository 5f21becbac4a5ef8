"""Offline, non-streaming generation with the teacher: the whole clip denoised at once (bidirectional attention).

This is the quality baseline the streaming student is measured against, not the product path (that is
rest/pipelines, where the offline path is the streaming path run to the end).
"""

from __future__ import annotations

import torch

from rest.diffusion.flow import FlowMatchingConfig, Guidance, sample_euler
from rest.models.audio import AudioEncoder
from rest.models.dit import DenoiserDiT
from rest.models.vae import CausalVideoVAE


@torch.no_grad()
def sample(
    denoiser: DenoiserDiT,
    vae: CausalVideoVAE,
    audio_encoder: AudioEncoder,
    portrait: torch.Tensor,
    audio: torch.Tensor,
    steps: int = 50,
    guidance: Guidance | None = None,
    seed: int = 0,
    shift: float | None = None,
    emotion: torch.Tensor | None = None,
    window: int | None = None,
    overlap: int = 2,
) -> torch.Tensor:
    """Generate a talking-head clip from a portrait and speech.

    A teacher sees clips of one length in training (`window` latent frames; teacher.json's
    `train_latent_frames`). Longer clips are generated window by window: each later window starts with the last
    `overlap` latent frames of the one before, given clean (the continuation the teacher trains on, flow
    `continuation_share`), at the window-relative positions of training. Sampling a much longer clip in one pass
    puts the frames at positions and attention lengths training never saw; the samples blur (docs/experiments.md).

    Args:
        denoiser: a bidirectional `DenoiserDiT` (set_attention_mode("bidirectional") for a student).
        vae: the VAE whose latents the denoiser was trained on.
        audio_encoder: the audio encoder trained with the denoiser.
        portrait: (3, H, W) or (B or 1, 3, 1, H, W) pixels in [-1, 1].
        audio: (B, N) float samples at the audio encoder's rate (16 kHz).
        steps: Euler steps.
        guidance: CFG scales (rest.diffusion.flow.Guidance); None = Guidance() defaults.
        seed: seeds the initial noise (drawn on the CPU, so a seed gives the same noise on every device).
        shift: timestep shift; None = the default resolution rule (`FlowMatchingConfig().shift_for`), which is
            what training uses unless its config overrides `flow.shift` (then pass that value).
        emotion: (B,) emotion labels, or None for the null label.
        window: latent frames per pass; None = the whole clip in one pass.
        overlap: clean latent frames carried into each later window, 1 .. window - 1 (at most the teacher's
            `flow.max_clean_frames` to stay within training).

    Returns:
        frames (B, 3, F, H, W) in [-1, 1], F = N // samples_per_frame rounded down to 1 + t*k (t = VAE temporal
        compression).
    """
    if denoiser.attention_mode != "bidirectional":
        raise ValueError(
            f"offline sampling runs the whole clip bidirectionally; this denoiser is in {denoiser.attention_mode!r} "
            f"mode: call denoiser.set_attention_mode('bidirectional') first"
        )
    if audio.ndim != 2:
        raise ValueError(f"audio must be (B, N) samples, got {tuple(audio.shape)}")
    b = audio.shape[0]
    if portrait.ndim == 3:
        portrait = portrait[None, :, None]  # (1, 3, 1, H, W)
    if portrait.ndim != 5 or portrait.shape[2] != 1 or portrait.shape[0] not in (1, b):
        raise ValueError(f"portrait must be (3, H, W) or (1 or B={b}, 3, 1, H, W), got {tuple(portrait.shape)}")
    portrait = portrait.expand(b, -1, -1, -1, -1)

    t = vae.temporal_compression
    available = audio_encoder.num_frames(audio.shape[1])
    if available < 1:
        raise ValueError(
            f"{audio.shape[1]} samples are shorter than one video frame ({audio_encoder.samples_per_frame} samples)"
        )
    num_frames = 1 + t * ((available - 1) // t)
    num_latent = vae.num_latent_frames(num_frames)

    device = next(denoiser.parameters()).device
    vae_dtype = next(vae.parameters()).dtype
    # 1. Conditions: audio features (one per video frame; extra frames serve as look-ahead) and portrait latents
    features = audio_encoder(audio.to(device))  # (B, available, D)
    ref = vae.encode(portrait.to(device=device, dtype=vae_dtype)).latent_dist.mode()
    ref = vae.normalize_latents(ref)  # (B, C, 1, h, w)

    # 2. Denoise from noise: the whole clip, or window by window
    _, c, _, h, w = ref.shape
    generator = torch.Generator().manual_seed(seed)
    noise = torch.randn(b, c, num_latent, h, w, generator=generator).to(device)
    if shift is None:
        shift = FlowMatchingConfig().shift_for(denoiser.tokens_per_frame(h, w))
    guidance = guidance or Guidance()
    if window is None or window >= num_latent:
        latents = sample_euler(denoiser, noise, features, ref, steps, shift, guidance, emotion)
    else:
        if not 1 <= overlap < window:
            raise ValueError(f"overlap must be in 1 .. window - 1 = {window - 1}, got {overlap}")
        latents = sample_euler(denoiser, noise[:, :, :window], features, ref, steps, shift, guidance, emotion)
        while latents.shape[2] < num_latent:
            start = latents.shape[2] - overlap
            end = min(start + window, num_latent)
            part = sample_euler(
                denoiser,
                noise[:, :, start:end],
                features[:, t * (start - 1) + 1 :],  # from the first video frame latent frame `start` covers
                ref,
                steps,
                shift,
                guidance,
                emotion,
                clean=latents[:, :, start:],
                first_latent_frame=start,
            )
            latents = torch.cat([latents, part[:, :, overlap:]], dim=2)

    # 3. Decode
    frames = vae.decode(vae.denormalize_latents(latents.to(vae_dtype))).sample
    return frames.float().clamp(-1, 1)  # (B, 3, F, H, W)


__all__ = ["sample"]
