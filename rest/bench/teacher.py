"""`rest bench teacher`: seconds per denoising step of the bidirectional teacher on a whole clip, with and without
the classifier-free-guidance batch, and the compute per generated second of video at a given step count.

Random weights (speed does not depend on them). Audio features are random tensors: the audio encoder and the VAE
decode are not part of a denoising step and are not timed here (see `rest bench vae`).
"""

from __future__ import annotations

import torch

from rest.bench.common import device_info, peak_memory_of, time_call
from rest.config import get_preset
from rest.diffusion.flow import Guidance, guided_velocity
from rest.models.dit import DenoiserDiT


@torch.no_grad()
def bench_teacher(
    preset: str,
    device: torch.device,
    latent_frames: int = 9,
    steps: int = 50,
    repeats: int = 3,
    dtype: torch.dtype = torch.float32,
    guidance: Guidance | None = None,
) -> dict:
    """Time one denoising step (one forward) for a clip of `latent_frames` latent frames plus the portrait."""
    p = get_preset(preset)
    guidance = guidance or Guidance(audio=2.0, portrait=1.5)  # both scales != 1: the full three-branch CFG batch
    torch.manual_seed(0)
    dit = DenoiserDiT.from_preset(preset).eval().to(device)
    # nn.Module's casts (floating-point tensors only); ModelMixin.to(dtype) warns about fp32 modules we do not have.
    {torch.float32: dit.float, torch.bfloat16: dit.bfloat16, torch.float16: dit.half}[dtype]()
    c, s, t = p.vae.latent_channels, p.latent_size, p.vae.temporal_compression
    frames = 1 + t * (latent_frames - 1)
    x = torch.randn(1, c, latent_frames, s, s, device=device, dtype=dtype)
    timesteps = torch.full((1, latent_frames), 0.5, device=device, dtype=dtype)
    audio = torch.randn(1, frames, dit.config.audio_dim, device=device, dtype=dtype)
    portrait = torch.randn(1, c, 1, s, s, device=device, dtype=dtype)

    def step_plain():
        dit(x, timesteps, audio, portrait)

    def step_cfg():
        guided_velocity(dit, x, timesteps, audio, portrait, guidance)

    seconds = frames / p.fps  # media time of the clip
    plain = time_call(step_plain, device, repeats=repeats)["median_s"]
    cfg = time_call(step_cfg, device, repeats=repeats)["median_s"]
    n = dit.tokens_per_frame(s, s)
    result = {
        "benchmark": "teacher",
        "preset": preset,
        "dtype": str(dtype).replace("torch.", ""),
        **device_info(device),
        "params_m": sum(q.numel() for q in dit.parameters()) / 1e6,
        "depth": dit.config.depth,
        "width": dit.config.width,
        "heads": dit.config.num_heads,
        "latent_frames": latent_frames,
        "video_frames": frames,
        "video_seconds": seconds,
        "tokens": (1 + latent_frames) * n,  # portrait + clip
        "steps": steps,
        "step_s": plain,
        "step_cfg_s": cfg,
        "cfg_branches": len(guidance.branches),
        "compute_s_per_video_s": steps * plain / seconds,
        "compute_s_per_video_s_cfg": steps * cfg / seconds,
    }
    # Memory after the timings (the CPU measurement changes malloc's behaviour, see peak_memory_of); the first
    # measurement only settles the allocator (memory freed before it may still be resident and get reused).
    peak_memory_of(step_cfg, device)
    result["step_peak_mem_mb"] = peak_memory_of(step_plain, device)
    result["step_cfg_peak_mem_mb"] = peak_memory_of(step_cfg, device)
    return result


__all__ = ["bench_teacher"]
