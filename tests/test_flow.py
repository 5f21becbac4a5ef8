"""Rectified flow: schedule and Euler step equal diffusers' FlowMatchEulerDiscreteScheduler, CFG math, training
draws, the loss mask, and offline sampling end to end."""

import pytest
import torch
import torch.nn as nn
from diffusers import FlowMatchEulerDiscreteScheduler
from diffusers.models.modeling_outputs import Transformer2DModelOutput
from helpers import small_dit

from rest.diffusion import sample
from rest.diffusion.flow import (
    FlowDraw,
    FlowMatchingConfig,
    Guidance,
    RectifiedFlowLoss,
    cfg_combine,
    condition_dropout,
    continuation_frames,
    euler_step,
    flow_sigmas,
    guided_velocity,
    interpolate,
    motion_map,
    resolution_shift,
    sample_euler,
    sample_logit_normal,
    shift_timesteps,
    velocity_target,
)
from rest.models.audio import AudioEncoder
from rest.models.vae import CausalVideoVAE

# ----------------------------------------------------------------------------- schedule


@pytest.mark.parametrize("steps, shift", [(1, 1.0), (4, 2.0), (10, 3.0), (28, 5.0), (50, 0.7)])
def test_schedule_equals_diffusers(steps, shift):
    scheduler = FlowMatchEulerDiscreteScheduler(shift=shift)
    scheduler.set_timesteps(steps)
    sigmas = flow_sigmas(steps, shift)
    assert sigmas.shape == (steps + 1,) and sigmas[-1] == 0
    assert torch.allclose(sigmas, scheduler.sigmas, atol=1e-7, rtol=0)
    assert torch.allclose(sigmas[:-1] * 1000, scheduler.timesteps, atol=1e-4, rtol=0)


def test_euler_steps_equal_diffusers():
    """A whole trajectory with a velocity that depends on x and t: every step matches scheduler.step."""
    steps, shift = 6, 3.0
    scheduler = FlowMatchEulerDiscreteScheduler(shift=shift)
    scheduler.set_timesteps(steps)
    sigmas = flow_sigmas(steps, shift)
    x_ours = x_theirs = torch.randn(2, 4, 3, 4, 4, generator=torch.Generator().manual_seed(0))
    for i, timestep in enumerate(scheduler.timesteps):
        velocity = lambda x, s: torch.sin(3 * x) + s  # noqa: E731
        x_theirs = scheduler.step(velocity(x_theirs, timestep / 1000), timestep, x_theirs).prev_sample
        x_ours = euler_step(x_ours, velocity(x_ours, sigmas[i]), sigmas[i], sigmas[i + 1])
        assert torch.allclose(x_ours, x_theirs, atol=1e-6), i


def test_shift():
    t = torch.linspace(0, 1, 11)
    assert torch.allclose(shift_timesteps(t, 1.0), t)
    shifted = shift_timesteps(t, 3.0)
    assert shifted[0] == 0 and shifted[-1] == 1 and (shifted[1:-1] > t[1:-1]).all()
    assert resolution_shift(64) == pytest.approx(2.0) and resolution_shift(256) == pytest.approx(4.0)
    assert FlowMatchingConfig().shift_for(64) == pytest.approx(2.0)
    assert FlowMatchingConfig(shift=5.0).shift_for(64) == 5.0


# ----------------------------------------------------------------------------- training pieces


def test_interpolation_and_target():
    g = torch.Generator().manual_seed(0)
    x0, noise = torch.randn(2, 2, 4, 3, 4, 4, generator=g).unbind(0)  # (B, C, f, h, w) each
    t = torch.tensor([[0.0, 0.5, 1.0], [0.25, 0.25, 0.25]])
    x_t = interpolate(x0, noise, t)
    assert torch.equal(x_t[0, :, 0], x0[0, :, 0]) and torch.equal(x_t[0, :, 2], noise[0, :, 2])
    dt = 1e-3  # the target is the derivative of x_t in t
    derivative = (interpolate(x0, noise, t + dt) - x_t) / dt
    assert torch.allclose(derivative, velocity_target(x0, noise), atol=1e-3)


def test_training_draws():
    g = torch.Generator().manual_seed(0)
    u = torch.logit(sample_logit_normal(40000, mean=0.5, std=0.8, generator=g))
    assert abs(u.mean().item() - 0.5) < 0.02 and abs(u.std().item() - 0.8) < 0.02
    drop_audio, drop_portrait = condition_dropout(40000, 0.1, 0.3, generator=g)
    assert abs(drop_audio.float().mean().item() - 0.1) < 0.01 and abs(drop_portrait.float().mean().item() - 0.3) < 0.01
    both = (drop_audio & drop_portrait).float().mean().item()
    assert abs(both - 0.03) < 0.005  # independent
    clean = continuation_frames(4000, 5, share=0.5, max_clean_frames=3, generator=g)
    k = clean.sum(dim=1)
    assert torch.equal(clean, torch.arange(5)[None] < k[:, None])  # a prefix of clean frames
    assert set(k.unique().tolist()) == {0, 1, 2, 3} and abs((k > 0).float().mean().item() - 0.5) < 0.03
    assert not continuation_frames(10, 1, share=1.0, max_clean_frames=3).any()  # never the whole clip
    draw = RectifiedFlowLoss(FlowMatchingConfig(continuation_share=1.0), shift=2.0).draw((8, 4, 5, 2, 2), "cpu", g)
    assert (draw.t[~draw.in_loss] == 0).all() and (draw.t[draw.in_loss] > 0).all()
    assert (draw.t[draw.in_loss].view(-1) > 0).all() and draw.noise.shape == (8, 4, 5, 2, 2)


class ConstantDenoiser(nn.Module):
    """Velocity 1 + 10 [audio dropped] + 100 [portrait dropped] everywhere; counts its calls."""

    def __init__(self):
        super().__init__()
        self.weight = nn.Parameter(torch.zeros(()))
        self.calls = 0

    def forward(
        self,
        x,
        t,
        audio,
        portrait,
        drop_audio=None,
        drop_portrait=None,
        emotion=None,
        first_latent_frame=0,
        frame_positions=None,
    ):
        self.calls += 1
        code = 1.0 + 10.0 * drop_audio.float() + 100.0 * drop_portrait.float()
        return Transformer2DModelOutput(sample=code.view(-1, 1, 1, 1, 1).expand_as(x) + self.weight)


def test_loss_counts_only_noisy_frames():
    latents = torch.zeros(1, 1, 3, 1, 1)
    noise = torch.tensor([1.0, 2.0, 3.0]).view(1, 1, 3, 1, 1)  # target = noise, prediction = 1
    draw = FlowDraw(
        noise=noise,
        t=torch.tensor([[0.0, 0.5, 0.5]]),
        in_loss=torch.tensor([[False, True, True]]),
        drop_audio=torch.zeros(1, dtype=torch.bool),
        drop_portrait=torch.zeros(1, dtype=torch.bool),
    )
    loss_fn = RectifiedFlowLoss(FlowMatchingConfig(), shift=1.0)
    loss, logs = loss_fn(ConstantDenoiser(), latents, torch.zeros(1, 1, 1), torch.zeros(1, 1, 1, 1, 1), draw)
    assert loss.item() == pytest.approx((1.0 + 4.0) / 2) and logs["loss"] == pytest.approx(2.5)


def test_motion_weighted_loss_favours_tokens_that_move():
    latents = torch.zeros(1, 1, 4, 1, 2)  # two tokens; the first changes over the clip, the second is still
    latents[0, 0, :, 0, 0] = torch.tensor([0.0, 1.0, 0.0, 1.0])
    draw = FlowDraw(
        noise=torch.zeros_like(latents),
        t=torch.full((1, 4), 0.5),
        in_loss=torch.ones(1, 4, dtype=torch.bool),
        drop_audio=torch.zeros(1, dtype=torch.bool),
        drop_portrait=torch.zeros(1, dtype=torch.bool),
    )
    motion = motion_map(latents)
    assert motion[0, 0, 1] == 0 and motion[0, 0, 0] == pytest.approx(2.0)  # over the mean of the two tokens
    assert motion_map(latents[:, :, :1]).abs().sum() == 0  # a single frame has no motion
    args = (torch.zeros(1, 1, 1), torch.zeros(1, 1, 1, 1, 1), draw)
    plain = RectifiedFlowLoss(FlowMatchingConfig(), shift=1.0)
    weighted = RectifiedFlowLoss(FlowMatchingConfig(motion_weight=1.0), shift=1.0)
    # Prediction 1 everywhere; target -x0: squared errors 4 or 1 at the moving token, 1 at the still one.
    assert plain(ConstantDenoiser(), latents, *args)[0].item() == pytest.approx((4 + 1 + 4 + 1 + 4 * 1) / 8)
    # Weights 1 + 2 = 3 and 1: (3 * mean(4, 1, 4, 1) + 1 * 1) / (3 + 1)
    assert weighted(ConstantDenoiser(), latents, *args)[0].item() == pytest.approx((3 * 2.5 + 1) / 4)


# ----------------------------------------------------------------------------- guidance


def test_cfg_combination():
    u, p, f = torch.tensor(5.0), torch.tensor(2.0), torch.tensor(1.0)
    assert cfg_combine(u, p, f, Guidance(audio=3.0, portrait=2.0)) == 5 + 2 * (2 - 5) + 3 * (1 - 2)
    assert cfg_combine(None, p, f, Guidance(audio=3.0, portrait=1.0)) == 2 + 3 * (1 - 2)
    assert cfg_combine(None, None, f, Guidance(audio=1.0, portrait=1.0)) == 1
    assert cfg_combine(u, p, f, Guidance(audio=1.0, portrait=1.0)) == 1  # no guidance is v_full


@pytest.mark.parametrize(
    "guidance, branches",
    [
        (Guidance(3.0, 2.0), ("uncond", "portrait", "full")),
        (Guidance(3.0, 1.0), ("portrait", "full")),
        (Guidance(1.0, 1.0), ("full",)),
    ],
)
def test_guided_velocity_is_one_batched_forward(guidance, branches):
    denoiser = ConstantDenoiser()
    x = torch.zeros(2, 1, 3, 2, 2)
    v = guided_velocity(denoiser, x, torch.zeros(2, 3), torch.zeros(2, 5, 1), torch.zeros(2, 1, 1, 2, 2), guidance)
    assert guidance.branches == branches and denoiser.calls == 1
    v_uncond, v_portrait, v_full = 111.0, 11.0, 1.0  # ConstantDenoiser's codes
    expected = v_uncond + guidance.portrait * (v_portrait - v_uncond) + guidance.audio * (v_full - v_portrait)
    assert torch.allclose(v, torch.full_like(x, expected))


def test_euler_sampler_reaches_the_data_point():
    """For data concentrated on one point c the exact velocity is (x_t - c) / t and trajectories are straight,
    so Euler integration from t = 1 lands exactly on c whatever the step count and shift."""
    c = torch.full((1, 1, 2, 2, 2), 0.7)

    class PointMass(nn.Module):
        def __init__(self):
            super().__init__()
            self.weight = nn.Parameter(torch.zeros(()))

        def forward(self, x, t, *conditions, **options):  # the velocity of the point mass; conditions unused
            return Transformer2DModelOutput(sample=(x - c) / t[:, None, :, None, None])

    noise = torch.randn(1, 1, 2, 2, 2, generator=torch.Generator().manual_seed(0))
    out = sample_euler(PointMass(), noise, torch.zeros(1, 5, 1), torch.zeros(1, 1, 1, 2, 2), 3, 2.5, Guidance(1, 1))
    assert torch.allclose(out, c, atol=1e-5)


# ----------------------------------------------------------------------------- offline sampling


def _tiny_sampling_models():
    torch.manual_seed(0)
    vae = CausalVideoVAE(latent_channels=4, patch_size=2, block_out_channels=(8, 16, 32)).eval()  # 8x spatial, 4x time
    audio_encoder = AudioEncoder(
        conv_channels=16, num_conv_layers=1, dim=16, num_layers=1, num_heads=2, attn_window=4, out_dim=8
    ).eval()
    return vae, audio_encoder, small_dit(depth=1)  # off the zero init, so its velocity depends on the audio


def test_sample_end_to_end():
    vae, audio_encoder, dit = _tiny_sampling_models()  # a non-zero velocity, so the seed matters
    portrait = torch.rand(3, 32, 32) * 2 - 1
    audio = torch.randn(2, 640 * 10 + 100, generator=torch.Generator().manual_seed(1)) * 0.1  # 10 frames -> 9 used
    kwargs = dict(steps=2, guidance=Guidance(audio=2.0, portrait=1.5))
    a = sample(dit, vae, audio_encoder, portrait, audio, seed=3, **kwargs)
    b = sample(dit, vae, audio_encoder, portrait[None, :, None], audio, seed=3, **kwargs)
    c = sample(dit, vae, audio_encoder, portrait, audio, seed=4, **kwargs)
    assert a.shape == (2, 3, 9, 32, 32) and a.abs().max() <= 1
    assert torch.equal(a, b) and not torch.allclose(a, c)
    with pytest.raises(ValueError, match="shorter than one video frame"):
        sample(dit, vae, audio_encoder, portrait, audio[:, :600], **kwargs)
    dit.set_attention_mode("block_causal")
    with pytest.raises(ValueError, match="set_attention_mode"):
        sample(dit, vae, audio_encoder, portrait, audio, **kwargs)


def test_sample_euler_keeps_a_clean_prefix_at_training_positions():
    """Continuation: the clean frames are returned as given, enter every step at t = 0, and a window inside a
    stream gets the window-relative positions the training loss gives it."""
    _, _, dit = _tiny_sampling_models()
    calls = []
    forward = dit.forward

    def spy(latents, timesteps, *args, **kwargs):
        calls.append((latents[:, :, :2].clone(), timesteps.clone(), kwargs))
        return forward(latents, timesteps, *args, **kwargs)

    dit.forward = spy
    noise = torch.randn(1, 4, 5, 4, 4, generator=torch.Generator().manual_seed(0))
    clean = torch.randn(1, 4, 2, 4, 4, generator=torch.Generator().manual_seed(1))
    audio, portrait = torch.randn(1, 40, 8), torch.randn(1, 4, 1, 4, 4)
    out = sample_euler(dit, noise, audio, portrait, 3, 2.0, Guidance(1.0, 1.0), clean=clean, first_latent_frame=7)
    assert torch.equal(out[:, :, :2], clean) and not torch.allclose(out[:, :, 2:], noise[:, :, 2:])
    assert len(calls) == 3
    for x, t, kwargs in calls:
        assert torch.equal(x, clean)
        assert torch.all(t[:, :2] == 0) and torch.all(t[:, 2:] > 0)
        assert kwargs["first_latent_frame"] == 7
        assert torch.equal(kwargs["frame_positions"], dit.config.video_rope_start + torch.arange(5))
    with pytest.raises(ValueError, match="nothing to sample"):
        sample_euler(dit, noise[:, :, :2], audio, portrait, 3, 2.0, Guidance(1.0, 1.0), clean=clean)


def test_sample_in_windows_chains_continuations():
    """Windows of 3 latent frames with an overlap of 1 over an 8-latent-frame clip: starts 0, 2, 4, 6 (the last one
    2 frames long); each later window hears the audio from the first video frame it covers and has its first frame
    clean (t = 0); a window as long as the clip is the one-pass sample."""
    vae, audio_encoder, dit = _tiny_sampling_models()
    portrait = torch.rand(3, 32, 32) * 2 - 1
    audio = torch.randn(1, 640 * 30, generator=torch.Generator().manual_seed(1)) * 0.1  # 30 frames -> 29 used
    features = audio_encoder(audio)
    kwargs = dict(steps=2, guidance=Guidance(audio=2.0, portrait=1.0), seed=3)
    whole = sample(dit, vae, audio_encoder, portrait, audio, **kwargs)
    assert torch.equal(sample(dit, vae, audio_encoder, portrait, audio, window=8, **kwargs), whole)

    calls = []
    forward = dit.forward

    def spy(latents, timesteps, audio_features, *args, **kw):
        calls.append((latents.shape[2], kw["first_latent_frame"], audio_features[:1].clone(), timesteps[0]))
        return forward(latents, timesteps, audio_features, *args, **kw)

    dit.forward = spy
    windowed = sample(dit, vae, audio_encoder, portrait, audio, window=3, overlap=1, **kwargs)
    assert windowed.shape == whole.shape == (1, 3, 29, 32, 32)
    assert not torch.allclose(windowed, whole)
    starts = [first for _, first, _, _ in calls[::2]]  # two Euler steps per window
    assert starts == [0, 2, 4, 6] and [n for n, _, _, _ in calls[::2]] == [3, 3, 3, 2]
    for _, first, heard, t in calls:
        begin = 0 if first == 0 else 4 * (first - 1) + 1
        assert torch.equal(heard, features[:, begin:])
        assert (first == 0 and torch.all(t > 0)) or (t[0] == 0 and torch.all(t[1:] > 0))
    with pytest.raises(ValueError, match="overlap"):
        sample(dit, vae, audio_encoder, portrait, audio, window=3, overlap=3, **kwargs)
