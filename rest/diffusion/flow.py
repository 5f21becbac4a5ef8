"""Rectified flow: training loss, timestep sampling, shifted schedule, and the Euler sampler with two-way CFG.

Conventions (Liu et al. 2022, "Flow Straight and Fast"; Esser et al. 2024, SD3):
    x_t = (1 - t) x0 + t eps,   t in [0, 1] (t = 0 clean, t = 1 pure noise),   target velocity v = eps - x0,
so a sampler integrates dx/dt = v from t = 1 down to t = 0. `t` is also diffusers' "sigma";
diffusers' "timestep" is 1000 t.

Timestep shift. A shift s > 1 moves noise levels towards t = 1: t' = s t / (1 + (s - 1) t). Larger latents
(more tokens per frame) keep more of their signal at a given t, so they need more noise to be equally hard
(SD3, section 5.3.2: s = sqrt(m / n) for m vs n latent values). Our rule is on tokens per latent frame:
    s = shift_base * sqrt(tokens_per_frame / shift_reference_tokens)
with shift_base = 2 at 64 tokens: tiny (8x8) -> 2, base (16x16) -> 4 (in the range LTX-Video's resolution rule
gives for 512x512 clips). Training and sampling use the same s.

Classifier-free guidance with separate audio and portrait scales (the two conditions are dropped independently in
training, with probabilities p_drop_audio and p_drop_portrait):
    v = v_uncond + s_p (v_portrait - v_uncond) + s_a (v_full - v_portrait)
where v_uncond has neither audio nor portrait, v_portrait has the portrait only, v_full both; s_p = s_a = 1 gives
v_full. The needed branches run as one batched forward.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch
import torch.nn as nn

#################################################################################
#                             Noise-level schedules                             #
#################################################################################


def shift_timesteps(t: torch.Tensor, shift: float) -> torch.Tensor:
    """t' = s t / (1 + (s - 1) t): s > 1 moves noise levels towards 1 (more noise), keeping 0 and 1 fixed."""
    return shift * t / (1 + (shift - 1) * t)


def resolution_shift(tokens_per_frame: int, shift_base: float = 2.0, shift_reference_tokens: int = 64) -> float:
    """The timestep shift for latents with `tokens_per_frame` tokens per latent frame (module docstring)."""
    return shift_base * math.sqrt(tokens_per_frame / shift_reference_tokens)


def sample_logit_normal(
    batch_size: int,
    mean: float = 0.0,
    std: float = 1.0,
    generator: torch.Generator | None = None,
    device: torch.device | str | None = None,
) -> torch.Tensor:
    """t = sigmoid(u), u ~ N(mean, std^2) (SD3's logit-normal): (B,) in (0, 1), denser in the middle."""
    u = torch.randn(batch_size, generator=generator, device=device)
    return torch.sigmoid(mean + std * u)


def flow_sigmas(steps: int, shift: float, num_train_timesteps: int = 1000) -> torch.Tensor:
    """Noise levels of an Euler sampler: (steps + 1,) float32, decreasing from 1 to a final 0.

    Identical to diffusers' `FlowMatchEulerDiscreteScheduler(shift=shift).set_timesteps(steps).sigmas`:
    evenly spaced from 1 to the scheduler's smallest training level shift(1 / num_train_timesteps), then shifted
    (so that smallest level is shifted twice, as diffusers does), then a terminal 0.
    """
    if steps < 1:
        raise ValueError(f"steps must be >= 1, got {steps}")
    t_min = shift_timesteps(torch.tensor(1.0 / num_train_timesteps, dtype=torch.float32), shift).item()
    grid = torch.linspace(1.0, t_min, steps, dtype=torch.float64)
    sigmas = shift_timesteps(grid, shift).float()
    return torch.cat([sigmas, sigmas.new_zeros(1)])


def euler_step(
    sample: torch.Tensor, velocity: torch.Tensor, t: torch.Tensor | float, t_next: torch.Tensor | float
) -> torch.Tensor:
    """x_{t_next} = x_t + (t_next - t) v, in float32, returned in sample's dtype.

    t / t_next: floats, or tensors broadcastable to sample (e.g. per latent frame (B, 1, f, 1, 1)).
    """
    dt = torch.as_tensor(t_next, dtype=torch.float32) - torch.as_tensor(t, dtype=torch.float32)
    return (sample.float() + dt.to(sample.device) * velocity.float()).to(sample.dtype)


#################################################################################
#                                   Training                                    #
#################################################################################


def interpolate(x0: torch.Tensor, noise: torch.Tensor, t: torch.Tensor) -> torch.Tensor:
    """x_t = (1 - t) x0 + t eps. x0, noise: (B, C, f, h, w); t: (B, f) per latent frame."""
    t = t[:, None, :, None, None].to(x0.dtype)
    return (1 - t) * x0 + t * noise


def velocity_target(x0: torch.Tensor, noise: torch.Tensor) -> torch.Tensor:
    """v = eps - x0, the derivative of x_t in t."""
    return noise - x0


def condition_dropout(
    batch_size: int,
    p_audio: float,
    p_portrait: float,
    generator: torch.Generator | None = None,
    device: torch.device | str | None = None,
) -> tuple[torch.Tensor, torch.Tensor]:
    """Independent per-sample drops of the audio and the portrait: two (B,) bool masks, True = dropped."""
    u = torch.rand(2, batch_size, generator=generator, device=device)
    return u[0] < p_audio, u[1] < p_portrait


def continuation_frames(
    batch_size: int,
    num_frames: int,
    share: float,
    max_clean_frames: int,
    generator: torch.Generator | None = None,
    device: torch.device | str | None = None,
) -> torch.Tensor:
    """Which latent frames are given clean: (B, f) bool. A `share` of the clips get their first k frames clean,
    k uniform in 1 .. min(max_clean_frames, f - 1); the rest none (so the teacher also learns to continue)."""
    k_max = min(max_clean_frames, num_frames - 1)
    if k_max < 1 or share <= 0:
        return torch.zeros(batch_size, num_frames, dtype=torch.bool, device=device)
    chosen = torch.rand(batch_size, generator=generator, device=device) < share
    k = torch.randint(1, k_max + 1, (batch_size,), generator=generator, device=device) * chosen  # 0 = none clean
    return torch.arange(num_frames, device=device)[None, :] < k[:, None]


@dataclass
class FlowMatchingConfig:
    """Settings of the rectified-flow objective (training) and its schedule (training and sampling)."""

    logit_mean: float = 0.0  # logit-normal training timesteps: t = sigmoid(N(mean, std^2)), then shifted
    logit_std: float = 1.0
    shift: float | None = None  # timestep shift; None = resolution_shift(tokens per latent frame)
    shift_base: float = 2.0  # resolution rule: shift_base * sqrt(tokens_per_frame / shift_reference_tokens)
    shift_reference_tokens: int = 64
    p_drop_audio: float = 0.1  # classifier-free guidance: probability of replacing the audio by the null audio
    p_drop_portrait: float = 0.1  # ... and, independently, the portrait by the null portrait
    continuation_share: float = 0.25  # share of clips whose first latent frames are given clean (not in the loss)
    max_clean_frames: int = 3  # at most this many clean leading latent frames (and at most f - 1)
    # Motion-weighted loss: a token's weight is 1 + motion_weight * min(motion, motion_cap), where motion is the
    # std of the clean latents over the clip's frames at that token (channel mean) over its mean across tokens.
    # What moves in a talking head (mouth, eyes) is a few tokens a plain mean leaves for last. 0 = plain mean.
    motion_weight: float = 0.0
    motion_cap: float = 8.0

    def shift_for(self, tokens_per_frame: int) -> float:
        """The shift to use for latents with this many tokens per frame."""
        if self.shift is not None:
            return self.shift
        return resolution_shift(tokens_per_frame, self.shift_base, self.shift_reference_tokens)


@dataclass
class FlowDraw:
    """The random choices of one training step, drawn by `RectifiedFlowLoss.draw` (or fixed, for evaluation)."""

    noise: torch.Tensor  # (B, C, f, h, w) standard normal
    t: torch.Tensor  # (B, f) noise level per latent frame
    in_loss: torch.Tensor  # (B, f) bool: frames that count in the loss (not the clean continuation context)
    drop_audio: torch.Tensor  # (B,) bool
    drop_portrait: torch.Tensor  # (B,) bool


class RectifiedFlowLoss:
    """Rectified-flow velocity loss (Liu et al. 2022) with SD3's shifted logit-normal timesteps (Esser et al. 2024).

    Synchronous noise: one t per clip, shared by its latent frames; continuation clips have their first k frames
    at t = 0 (clean context, excluded from the loss). The loss is the mean squared velocity error over the noisy
    frames of the batch, with tokens weighted by their motion in the clip if `config.motion_weight` > 0. `shift`
    is fixed per run (it depends on the latent resolution, see `FlowMatchingConfig.shift_for`).
    """

    def __init__(self, config: FlowMatchingConfig, shift: float):
        self.config = config
        self.shift = shift

    def draw(
        self, shape: tuple[int, ...], device: torch.device | str, generator: torch.Generator | None = None
    ) -> FlowDraw:
        """Noise, levels, loss frames and condition drops for latents of shape (B, C, f, h, w)."""
        cfg = self.config
        b, f = shape[0], shape[2]
        t = sample_logit_normal(b, cfg.logit_mean, cfg.logit_std, generator, device)
        t = shift_timesteps(t, self.shift)[:, None].expand(b, f)  # (B, f), synchronous
        clean = continuation_frames(b, f, cfg.continuation_share, cfg.max_clean_frames, generator, device)
        t = torch.where(clean, torch.zeros_like(t), t)
        drop_audio, drop_portrait = condition_dropout(b, cfg.p_drop_audio, cfg.p_drop_portrait, generator, device)
        noise = torch.randn(shape, generator=generator, device=device)
        return FlowDraw(noise=noise, t=t, in_loss=~clean, drop_audio=drop_audio, drop_portrait=drop_portrait)

    def __call__(
        self,
        denoiser: nn.Module,
        latents: torch.Tensor,
        audio: torch.Tensor,
        portrait: torch.Tensor,
        draw: FlowDraw,
        emotion: torch.Tensor | None = None,
        first_latent_frame: int = 0,
    ) -> tuple[torch.Tensor, dict[str, float]]:
        """latents: (B, C, f, h, w) clean; audio: (B, Fa, D) features; portrait: (B, C, 1, h, w) -> (loss, logs).

        first_latent_frame: 0 for clips from a stream's start; >= 1 for a window inside a stream (the audio then
        starts at the window's first covered frame), whose frames take the window-relative RoPE positions the
        streaming cache gives them (the first at `video_rope_start`).
        """
        noise = draw.noise.to(latents.dtype)
        x_t = interpolate(latents, noise, draw.t)
        positions = window_positions(denoiser, first_latent_frame, latents.shape[2])
        v = denoiser(
            x_t,
            draw.t,
            audio,
            portrait,
            drop_audio=draw.drop_audio,
            drop_portrait=draw.drop_portrait,
            emotion=emotion,
            first_latent_frame=first_latent_frame,
            frame_positions=positions,
        ).sample
        err = (v.float() - velocity_target(latents, noise).float()).pow(2).mean(dim=1)  # (B, f, h, w)
        if self.config.motion_weight > 0:
            token_weight = 1 + self.config.motion_weight * motion_map(latents).clamp(max=self.config.motion_cap)
            err = (err * token_weight[:, None]).mean(dim=(2, 3)) / token_weight.mean(dim=(1, 2))[:, None]
        else:
            err = err.mean(dim=(2, 3))  # (B, f)
        weight = draw.in_loss.float()
        loss = (err * weight).sum() / weight.sum().clamp_min(1.0)
        return loss, {"loss": loss.item()}


def window_positions(denoiser: nn.Module, first_latent_frame: int, num_frames: int) -> torch.Tensor | None:
    """RoPE frame positions of a window of `num_frames` latent frames: None (the denoiser's default, stream
    positions) for a clip from the stream's start; for a window inside a stream (`first_latent_frame` > 0) the
    window-relative positions the streaming cache gives, the first at `video_rope_start`."""
    if first_latent_frame == 0:
        return None
    return denoiser.config.video_rope_start + torch.arange(num_frames)


def motion_map(latents: torch.Tensor) -> torch.Tensor:
    """(B, h, w): std over frames of clean latents (B, C, f, h, w), channel mean, over its mean across tokens.

    Zero for a single frame or a still clip."""
    if latents.shape[2] < 2:
        return latents.new_zeros(latents.shape[0], *latents.shape[3:]).float()
    std = latents.float().std(dim=2).mean(dim=1)  # (B, h, w)
    return std / std.mean(dim=(1, 2), keepdim=True).clamp_min(1e-6)


#################################################################################
#                             Sampling with guidance                            #
#################################################################################


@dataclass
class Guidance:
    """Classifier-free guidance scales (module docstring); 1 and 1 = no guidance (one forward per step)."""

    audio: float = 2.0  # s_a: strength of the audio condition given the portrait
    portrait: float = 1.0  # s_p: strength of the portrait condition

    @property
    def branches(self) -> tuple[str, ...]:
        """The forwards the combination needs, in batch order."""
        if self.portrait != 1.0:
            return ("uncond", "portrait", "full")
        if self.audio != 1.0:
            return ("portrait", "full")
        return ("full",)


def cfg_combine(
    v_uncond: torch.Tensor | None, v_portrait: torch.Tensor | None, v_full: torch.Tensor, guidance: Guidance
) -> torch.Tensor:
    """v = v_uncond + s_p (v_portrait - v_uncond) + s_a (v_full - v_portrait); branches that `guidance.branches`
    does not list may be None (with s_p = 1 the formula is v_portrait + s_a (v_full - v_portrait))."""
    if "uncond" in guidance.branches:
        v = v_uncond + guidance.portrait * (v_portrait - v_uncond)
    elif "portrait" in guidance.branches:
        v = v_portrait
    else:
        return v_full
    return v + guidance.audio * (v_full - v_portrait)


def guided_velocity(
    denoiser: nn.Module,
    x: torch.Tensor,
    t: torch.Tensor,
    audio: torch.Tensor,
    portrait: torch.Tensor,
    guidance: Guidance,
    emotion: torch.Tensor | None = None,
    first_latent_frame: int = 0,
    frame_positions: torch.Tensor | None = None,
) -> torch.Tensor:
    """The guided velocity of x (B, C, f, h, w) at levels t (B, f): one batched forward over the needed branches.

    first_latent_frame / frame_positions: where x sits in its stream (`DenoiserDiT.forward`)."""
    branches = guidance.branches
    k, b = len(branches), x.shape[0]
    drops = {"uncond": (True, True), "portrait": (True, False), "full": (False, False)}
    drop_audio = torch.tensor([drops[n][0] for n in branches], device=x.device).repeat_interleave(b)  # (k*B,)
    drop_portrait = torch.tensor([drops[n][1] for n in branches], device=x.device).repeat_interleave(b)
    v = denoiser(
        x.repeat(k, 1, 1, 1, 1),
        t.repeat(k, 1),
        audio.repeat(k, 1, 1),
        portrait.repeat(k, 1, 1, 1, 1),
        drop_audio=drop_audio,
        drop_portrait=drop_portrait,
        emotion=None if emotion is None else emotion.repeat(k),
        first_latent_frame=first_latent_frame,
        frame_positions=frame_positions,
    ).sample
    out = dict(zip(branches, v.chunk(k), strict=True))
    return cfg_combine(out.get("uncond"), out.get("portrait"), out["full"], guidance)


@torch.no_grad()
def sample_euler(
    denoiser: nn.Module,
    noise: torch.Tensor,
    audio: torch.Tensor,
    portrait: torch.Tensor,
    steps: int,
    shift: float,
    guidance: Guidance,
    emotion: torch.Tensor | None = None,
    clean: torch.Tensor | None = None,
    first_latent_frame: int = 0,
) -> torch.Tensor:
    """Integrate from pure noise (B, C, f, h, w) at t = 1 to clean latents over `flow_sigmas(steps, shift)`,
    every noisy latent frame at the same level (bidirectional). Returns float32 latents (B, C, f, h, w).

    clean: (B, C, k, h, w) latents given clean (t = 0) as the clip's first k frames, the teacher's continuation
    context (`continuation_frames`); the first k frames of `noise` are ignored and the output starts with `clean`.
    first_latent_frame: > 0 for a window inside a stream; its frames then take the window-relative RoPE positions
    of training (`RectifiedFlowLoss.__call__`) and `audio` starts at the window's first covered video frame.
    """
    sigmas = flow_sigmas(steps, shift).to(noise.device)
    dtype = next(denoiser.parameters()).dtype  # the state stays float32; the forward runs in the model's dtype
    x = noise.float().clone()  # written in place below; the caller's noise stays as given
    b, _, f = noise.shape[:3]
    k = 0 if clean is None else clean.shape[2]
    if k >= f:
        raise ValueError(f"{k} clean frames leave nothing to sample in a clip of {f} latent frames")
    if k:
        x[:, :, :k] = clean.float()
    positions = window_positions(denoiser, first_latent_frame, f)
    noisy = torch.arange(f, device=noise.device) >= k  # (f,)
    for i in range(steps):
        # float32 whatever the model's dtype: the timestep embedding is computed in float32
        t = torch.where(noisy, sigmas[i], sigmas.new_zeros(())).expand(b, f)
        v = guided_velocity(
            denoiser,
            x.to(dtype),
            t,
            audio.to(dtype),
            portrait.to(dtype),
            guidance,
            emotion,
            first_latent_frame=first_latent_frame,
            frame_positions=positions,
        )
        x[:, :, k:] = euler_step(x[:, :, k:], v[:, :, k:], sigmas[i], sigmas[i + 1])
    return x


__all__ = [
    "FlowDraw",
    "FlowMatchingConfig",
    "Guidance",
    "RectifiedFlowLoss",
    "cfg_combine",
    "condition_dropout",
    "continuation_frames",
    "euler_step",
    "flow_sigmas",
    "guided_velocity",
    "interpolate",
    "resolution_shift",
    "sample_euler",
    "sample_logit_normal",
    "shift_timesteps",
    "velocity_target",
    "window_positions",
]
