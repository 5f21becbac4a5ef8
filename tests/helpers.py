"""Small random models for tests, shared by the test files (`from helpers import small_dit`): one definition each.

pytest puts this folder on `sys.path` (the default `prepend` import mode, tests/ has no `__init__.py`), so the test
modules and conftest.py import it by name.
"""

from __future__ import annotations

from pathlib import Path

import torch

from rest.exports import PipelineConfig
from rest.models.audio import AudioEncoder
from rest.models.dit import DenoiserDiT
from rest.models.vae import CausalVideoVAE
from rest.pipelines import write_pipeline

# A denoiser that runs in milliseconds: 4 latent channels (the small test VAEs'), 32 wide, 2 blocks, 8 audio
# features per video frame, 4 video frames per latent frame; block_causal chunks see 2 previous chunks.
SMALL_DIT = dict(
    in_channels=4,
    width=32,
    depth=2,
    num_heads=2,
    mlp_ratio=2.0,
    frequency_dim=32,
    audio_dim=8,
    temporal_compression=4,
    chunk_latent_frames=1,
    context_chunks=2,
)


def small_dit(seed: int = 0, **overrides) -> DenoiserDiT:
    """`SMALL_DIT` (with `overrides`), random weights from `seed`, in eval mode.

    adaLN-zero starts every block as the identity and the output at 0; the zero parameters are drawn from
    N(0, 0.2^2) instead, so the output depends on every input (latents, timesteps, audio, portrait, cache).
    """
    torch.manual_seed(seed)
    dit = DenoiserDiT(**{**SMALL_DIT, **overrides}).eval()
    with torch.no_grad():
        for p in dit.parameters():
            if not p.any():
                p.normal_(0.0, 0.2)
    return dit


def build_test_pipeline(output: str | Path, seed: int = 0, resolution: int = 64) -> Path:
    """A tiny random-weight pipeline folder (seconds to run on a CPU), written with the public `write_pipeline`."""
    torch.manual_seed(seed)
    vae = CausalVideoVAE(latent_channels=8, patch_size=2, block_out_channels=(16, 32, 32))
    audio_encoder = AudioEncoder(
        conv_channels=16, num_conv_layers=1, dim=32, num_layers=1, num_heads=2, attn_window=8, out_dim=16
    )
    denoiser = DenoiserDiT(
        in_channels=8,
        patch_size=1,
        width=32,
        depth=2,
        num_heads=2,
        mlp_ratio=2.0,
        frequency_dim=32,
        audio_dim=16,
        temporal_compression=vae.temporal_compression,
        attention_mode="block_causal",
        context_chunks=2,
    )
    with torch.no_grad():  # adaLN-zero starts every block as the identity: make the output depend on the inputs
        for p in denoiser.parameters():
            if not p.any():
                p.normal_(0.0, 0.05)
    config = PipelineConfig(preset="test", resolution=resolution, steps=1, shift=1.0, context_chunks=2)
    return write_pipeline(output, vae, audio_encoder, denoiser, config)


def build_test_motion_model(output: str | Path, seed: int = 0) -> Path:
    """A tiny random-weight motion student folder (motion.json, rig/, denoiser/), as train/motion.py exports it."""
    from rest.data.synth.emotion import EMOTIONS
    from rest.diffusion.flow import flow_sigmas
    from rest.exports import MotionInfo
    from rest.models.rig import MotionRig
    from rest.training.motion import FIXED

    output = Path(output)
    denoiser = small_dit(
        seed, width=32, depth=2, num_heads=2, mlp_ratio=2.0, frequency_dim=32, chunk_latent_frames=2, context_chunks=3,
        attention_mode="block_causal", **FIXED,
    )  # fmt: skip
    denoiser.save_pretrained(output / "denoiser")
    MotionRig(std=(0.2,) * FIXED["in_channels"]).save_pretrained(output / "rig")
    MotionInfo(
        stage="student",
        audio="phonetic",
        emotions=EMOTIONS,
        shift=1.0,
        steps=1,
        sigmas=tuple(flow_sigmas(1, 1.0).tolist()),
        window_frames=20,
        step=0,
    ).write(output)
    return output
