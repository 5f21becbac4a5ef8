"""Student (ASD) training: the asynchronous schedule and the K schedule, the teacher target, the self-rollout
window, a few training steps on a tiny teacher export, resume, export, configs and the entry point."""

import json
import runpy
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
from helpers import small_dit

from rest.cli import main
from rest.config import ConfigError, load_config
from rest.data.shards import ShardWriter
from rest.diffusion.flow import Guidance, flow_sigmas, guided_velocity
from rest.exports import PipelineConfig, StudentInfo, TeacherInfo, load_vae
from rest.models.audio import AudioEncoder
from rest.models.dit import DenoiserDiT
from rest.models.loading import load_local
from rest.models.mouth import MouthRegressor
from rest.models.vae import CausalVideoVAE
from rest.pipelines.talking_head import write_pipeline
from rest.streaming import IDContextCache, StreamingSession, chunk_audio_span, rollout_chunk, write_sink
from rest.training.common import MetricsLog, latest_checkpoint, read_trainer_state
from rest.training.student import (
    ASDConfig,
    AsynchronousStreamingDistillation,
    MouthExpertLoss,
    StudentDataConfig,
    StudentExperiment,
    StudentTrainConfig,
    build_student,
    draw_levels,
    segment_levels,
    train_student,
)
from rest.training.vae import mouth_expert_distance

REPO = Path(__file__).resolve().parents[1]
AUDIO = dict(
    conv_channels=16,
    num_conv_layers=1,
    dim=16,
    num_layers=1,
    num_heads=2,
    attn_window=4,
    lookahead_frames=2,
    out_dim=8,
)


def random_teacher(seed: int = 0) -> tuple[DenoiserDiT, AudioEncoder]:
    """`helpers.small_dit` as the teacher, and a random audio encoder with 8 features per frame to match."""
    dit = small_dit(seed)
    return dit, AudioEncoder(**AUDIO).eval()


@pytest.fixture(scope="module")
def assets(tmp_path_factory) -> dict[str, Path]:
    """Three 20-frame 32x32 clips with audio, a small random VAE (8x spatial, 4x temporal -> 4x4 latents) and a
    random teacher export in train/teacher.py's layout."""
    root = tmp_path_factory.mktemp("student_data")
    writer = ShardWriter(root / "shards", resolution=32)
    yy, xx = np.mgrid[0:32, 0:32]
    rng = np.random.default_rng(0)
    for k in range(3):
        frames = []
        for t in range(20):
            mouth = (np.abs(yy - 22) < 2 + 3 * abs(np.sin(0.5 * t + k))) & (np.abs(xx - 16) < 6)
            frames.append((np.stack([xx / 32, yy / 32, mouth], -1) * 255).astype(np.uint8))
        writer.write_clip(f"clip{k}", np.stack(frames), (0.1 * rng.standard_normal(20 * 640)).astype(np.float32))
    torch.manual_seed(0)
    CausalVideoVAE(latent_channels=4, patch_size=2, block_out_channels=(8, 16, 32)).save_pretrained(root / "vae")
    dit, audio_encoder = random_teacher()
    dit.save_pretrained(root / "teacher" / "denoiser")
    audio_encoder.save_pretrained(root / "teacher" / "audio_encoder")
    TeacherInfo(vae=str(root / "vae"), shift=1.0, step=0).write(root / "teacher")
    return {"shards": root / "shards", "vae": root / "vae", "teacher": root / "teacher"}


def experiment(assets, out: Path, **train) -> StudentExperiment:
    return StudentExperiment(
        teacher=str(assets["teacher"]),
        data=StudentDataConfig(root=str(assets["shards"])),
        asd=ASDConfig(window_chunks=4, steps_schedule=((0, 2), (2, 1)), teacher_substeps=2, gt_loss_weight=0.5),
        train=StudentTrainConfig(
            output_dir=str(out),
            batch_size=2,
            lr=1e-3,
            warmup_steps=1,
            log_every=1,
            eval_every=0,
            eval_clips=2,
            checkpoint_every=100,
            **train,
        ),
    )


# ----------------------------------------------------------------------------- schedules


def test_asynchronous_levels_and_step_schedule():
    """Per-chunk levels are non-decreasing in time (indices non-increasing), the last chunk is always trained,
    clean context occurs, and K follows the schedule."""
    g = torch.Generator().manual_seed(0)
    for steps in (1, 2, 4):
        k = draw_levels(512, 6, steps, g)
        assert k.shape == (512, 6) and k.min() >= 0 and k.max() <= steps
        assert (k[:, 1:] <= k[:, :-1]).all() and (k[:, -1] < steps).all()
        assert (k == steps).any() and len(k.unique()) == steps + 1  # clean context and every student level
        t = flow_sigmas(steps, shift=2.0)[k]
        assert (t[:, 1:] >= t[:, :-1]).all()  # t_0 <= t_1 <= ... : the past cleaner than the present
    cfg = ASDConfig(steps_schedule=((0, 4), (100, 2), (200, 1)))
    assert [cfg.steps_at(s) for s in (0, 99, 100, 199, 200, 10**6)] == [4, 4, 2, 2, 1, 1]
    for bad in (((10, 4),), ((0, 4), (0, 2)), ((0, 0),), ()):
        with pytest.raises(ConfigError, match="steps_schedule"):
            ASDConfig(steps_schedule=bad).check()


def test_segment_levels():
    t = torch.tensor([[1.0, 0.5, 0.0]])
    t_next = torch.tensor([[0.8, 0.0, 0.0]])
    levels = segment_levels(t, t_next, 4, shift=2.0)
    assert levels.shape == (5, 1, 3)
    assert torch.equal(levels[0], t) and torch.equal(levels[-1], t_next) and (levels[:, 0, 2] == 0).all()
    assert (levels[1:] <= levels[:-1]).all()
    # Evenly spaced in unshifted time: the sub-levels of [1, 0] are flow_sigmas' grid for 4 steps up to its end.
    whole = segment_levels(torch.ones(1, 1), torch.zeros(1, 1), 4, shift=2.0)[:, 0, 0]
    expected = torch.tensor([1.0, 6 / 7, 2 / 3, 0.4, 0.0])  # shift(0.75) = 6/7, shift(0.5) = 2/3, shift(0.25) = 0.4
    assert torch.allclose(whole, expected, atol=1e-6)
    assert torch.equal(segment_levels(t, t_next, 1, 2.0), torch.stack([t, t_next]))


# ----------------------------------------------------------------------------- the objective


def small_setup(window_chunks: int = 3, substeps: int = 1):
    teacher, _ = random_teacher()
    student, _ = build_student(teacher, AudioEncoder(**AUDIO), {})
    objective = AsynchronousStreamingDistillation(
        ASDConfig(window_chunks=window_chunks, teacher_substeps=substeps, teacher_guidance=Guidance(2.0, 1.5)), 2.0
    )
    g = torch.Generator().manual_seed(1)
    latents = torch.randn(2, 4, window_chunks, 4, 4, generator=g)
    features = torch.randn(2, 1 + 4 * (window_chunks - 1) + 2, 8, generator=g)
    portrait = torch.randn(2, 4, 1, 4, 4, generator=g)
    return teacher, student, objective, latents, features, portrait


def test_self_rollout_window_and_teacher_target():
    """The window holds the student's own states: pure noise at k = 0, its generated chunk at k = K, its halfway
    state at 0 < k < K; the generated chunks are the streaming rollout's from the same noise; with one substep
    the target is the teacher's guided velocity over the whole window at the per-chunk levels."""
    teacher, student, objective, latents, features, portrait = small_setup()
    draw = objective.draw(latents.shape, 2, "cpu", torch.Generator().manual_seed(0))
    draw.levels = torch.tensor([[2, 1, 0], [2, 2, 0]])  # sample 1: two clean context chunks
    sigmas = objective.sigmas(2)
    chunks = [slice(i, i + 1) for i in range(3)]
    window, generated = objective._self_rollout(student, features, portrait, draw, sigmas, chunks)
    assert torch.equal(window[:, :, 2], draw.noise[:, :, 2])  # k = 0: the starting noise
    assert torch.equal(window[:, :, 0], generated[:, :, 0]) and torch.equal(window[1, :, 1], generated[1, :, 1])
    assert not torch.allclose(window[0, :, 1], generated[0, :, 1], atol=1e-3)  # k = 1: halfway

    cache = write_sink(student, IDContextCache.for_model(student, 2, 4, 4), portrait)
    for i, chunk in enumerate(chunks):
        start, stop = chunk_audio_span(student, i)
        states = []
        out, cache = rollout_chunk(
            student, cache, draw.noise[:, :, chunk], features[:, start:stop], sigmas, states=states
        )
        assert torch.equal(out, generated[:, :, chunk])
        assert torch.equal(window[0, :, chunk], states[int(draw.levels[0, i])][0])

    t, t_next = sigmas[draw.levels], sigmas[(draw.levels + 1).clamp(max=2)]  # (B, M) = (B, f): chunks of 1 frame
    target = objective._teacher_target(teacher, window, t, t_next, features, portrait, 2)
    guided = guided_velocity(teacher, window, t, features, portrait, Guidance(2.0, 1.5))
    noisy = t_next < t
    frames = lambda x: x.permute(0, 2, 1, 3, 4)  # noqa: E731  (B, f, C, h, w)
    assert torch.allclose(frames(target)[noisy], frames(guided)[noisy], atol=1e-4)  # (x(t') - w) / dt rounding
    assert (frames(target)[~noisy] == 0).all()


def test_context_timestep_noises_the_teachers_context_as_the_students_cache():
    """asd.context_timestep = c: the student writes its past to the cache re-noised to c; the teacher's window
    holds the clean context chunks the same way (the same noise), at level c, with no segment to integrate, and
    so does the ground-truth loss's window."""
    teacher, student, objective, latents, features, portrait = small_setup()
    objective.config.context_timestep = 0.2
    draw = objective.draw(latents.shape, 2, "cpu", torch.Generator().manual_seed(0))
    draw.levels = torch.tensor([[2, 1, 0], [2, 2, 0]])  # context: chunk 0 of clip 0, chunks 0 and 1 of clip 1
    calls = []
    target_of = objective._teacher_target
    objective._teacher_target = lambda teacher, window, t, t_next, *rest: (
        calls.append((window, t, t_next)) or (target_of(teacher, window, t, t_next, *rest))
    )
    objective(student, teacher, latents, features, features, portrait, draw)
    window, t, t_next = calls[0]

    sigmas = objective.sigmas(2)
    chunks = [slice(i, i + 1) for i in range(3)]
    own, generated = objective._self_rollout(student, features, portrait, draw, sigmas, chunks)
    context = draw.levels == 2
    expected = own.clone().permute(0, 2, 1, 3, 4)  # (B, f, C, h, w)
    noised = (0.8 * generated + 0.2 * draw.context_noise).permute(0, 2, 1, 3, 4)
    expected[context] = noised[context]
    assert torch.allclose(window.permute(0, 2, 1, 3, 4), expected, atol=1e-6)
    assert torch.equal(t[context], torch.full((3,), 0.2)) and torch.equal(t_next[context], t[context])
    assert torch.equal(t[~context], sigmas[draw.levels][~context])
    assert torch.equal(t_next[~context], sigmas[(draw.levels + 1).clamp(max=2)][~context])

    # The ground-truth (teacher-forcing) loss meets its clean context the same way: re-noised to c, at level c.
    objective.config.distill_weight = 0.0
    seen = []
    hook = student.register_forward_pre_hook(lambda module, args: seen.append((args[0], args[1])))
    objective(student, teacher, latents, features, features, portrait, draw)
    hook.remove()
    (x_gt, t_gt), t = seen[0], sigmas[draw.levels]
    expected = (latents + t[:, None, :, None, None] * (draw.noise - latents)).permute(0, 2, 1, 3, 4)
    expected[context] = (0.8 * latents + 0.2 * draw.context_noise).permute(0, 2, 1, 3, 4)[context]
    assert torch.allclose(x_gt.permute(0, 2, 1, 3, 4), expected, atol=1e-6)
    assert torch.equal(t_gt, torch.where(context, torch.full_like(t, 0.2), t))


def teacher_euler(teacher, objective, window, t, t_next, substeps, features, portrait):
    """The guided teacher integrated by hand from each frame's t to its t_next in `substeps` Euler steps."""
    x = window.clone()
    levels = segment_levels(t, t_next, substeps, 2.0)
    for s in range(substeps):
        v = guided_velocity(teacher, x, levels[s], features, portrait, objective.config.teacher_guidance)
        x = x + (levels[s + 1] - levels[s])[:, None, :, None, None] * v
    return x


def test_teacher_target_with_substeps_lands_where_the_teacher_lands():
    """N substeps: one student Euler step with the target velocity reaches the teacher's N-step result."""
    teacher, _, objective, latents, features, portrait = small_setup(substeps=3)
    t = torch.tensor([[0.0, 0.5, 1.0]]).expand(2, 3)
    t_next = torch.tensor([[0.0, 0.25, 0.5]]).expand(2, 3)
    window = torch.randn(latents.shape, generator=torch.Generator().manual_seed(2))
    target = objective._teacher_target(teacher, window, t, t_next, features, portrait, 2)
    x = teacher_euler(teacher, objective, window, t, t_next, 3, features, portrait)
    landed = window + (t_next - t)[:, None, :, None, None] * target
    assert torch.allclose(landed, x, atol=1e-5)
    assert (target[:, :, 0] == 0).all()  # clean context: no segment, no target


def test_teacher_steps_fix_the_teachers_trajectory_whatever_k():
    """asd.teacher_steps = 8 makes every target an 8-step teacher trajectory: 2 substeps per step at K = 4, 8 at
    K = 1 (where a fixed teacher_substeps of 2 would make the target a 2-step teacher sample); a 1-step student's
    target then lands where 8 teacher steps from noise land."""
    config = ASDConfig(teacher_substeps=2, teacher_steps=8)
    assert [config.substeps_at(k) for k in (1, 2, 3, 4, 16)] == [8, 4, 3, 2, 1]
    assert ASDConfig(teacher_substeps=2).substeps_at(1) == 2
    with pytest.raises(ConfigError, match="teacher_steps"):
        ASDConfig(teacher_steps=0).check()

    teacher, _, objective, latents, features, portrait = small_setup()
    objective.config.teacher_steps = 8
    t, t_next = torch.tensor([[0.0, 1.0, 1.0]]).expand(2, 3), torch.zeros(2, 3)
    window = torch.randn(latents.shape, generator=torch.Generator().manual_seed(2))
    target = objective._teacher_target(teacher, window, t, t_next, features, portrait, 1)
    x = teacher_euler(teacher, objective, window, t, t_next, 8, features, portrait)
    assert torch.allclose(window - target, x, atol=1e-5)
    two_steps = objective._teacher_target(teacher, window, t, t_next, features, portrait, 4)  # N = 2
    assert not torch.allclose(two_steps, target, atol=1e-3)


def test_paired_audio_loss_matches_the_teachers_response_to_swapped_audio():
    """asd.audio_pair_weight: the last chunk's audio is swapped for the next clip's (from its first frame on, the
    past untouched); the loss adds || dv_S - dv_T ||^2, where dv_T is the teacher target's change under the swap."""
    teacher, student, objective, latents, features, portrait = small_setup(window_chunks=3)
    objective.config.audio_pair_weight = 1.0
    swapped, swapped_teacher = objective._swap_last_chunk_audio(student, features, features + 1)
    start, _ = chunk_audio_span(student, 2)
    assert torch.equal(swapped[:, :start], features[:, :start])
    assert torch.equal(swapped[0, start:], features[1, start:]) and torch.equal(
        swapped[1, start:], features[0, start:]
    )
    assert torch.equal(swapped_teacher, swapped + 1)

    draw = objective.draw(latents.shape, 2, "cpu", torch.Generator().manual_seed(3))
    loss, logs = objective(student, teacher, latents, features, features, portrait, draw)
    assert logs["loss_pair"] > 0 and logs["response_teacher"] > 0 and logs["response_student"] > 0
    assert loss.item() == pytest.approx(logs["loss_distill"] + 0.1 * logs["loss_gt"] + logs["loss_pair"], rel=1e-5)

    sigmas = objective.sigmas(2)
    window, _ = objective._self_rollout(student, features, portrait, draw, sigmas, [slice(i, i + 1) for i in range(3)])
    t, t_next = sigmas[draw.levels], sigmas[(draw.levels + 1).clamp(max=2)]
    own = objective._teacher_target(teacher, window, t, t_next, features, portrait, 2)
    other = objective._teacher_target(teacher, window, t, t_next, swapped, portrait, 2)
    assert logs["response_teacher"] == pytest.approx((other - own)[:, :, 2].pow(2).mean().item(), rel=1e-4)

    one = objective.draw(latents[:1].shape, 2, "cpu")  # a batch of 1 (an evaluation remainder): no other clip
    loss, logs = objective(student, teacher, latents[:1], features[:1], features[:1], portrait[:1], one)
    assert "loss_pair" not in logs and loss.item() == pytest.approx(logs["loss_distill"] + 0.1 * logs["loss_gt"])
    with pytest.raises(ConfigError, match="audio_pair_weight"):
        ASDConfig(audio_pair_weight=1.0, distill_weight=0.0).check()


def small_mouth_loss(seed: int = 0, box=None) -> MouthExpertLoss:
    """A random VAE (4 latent channels, 8x spatial: 4x4 latents -> 32x32 frames) and a random mouth expert."""
    torch.manual_seed(seed)
    vae = CausalVideoVAE(latent_channels=4, patch_size=2, block_out_channels=(8, 16, 32))
    return MouthExpertLoss(vae, MouthRegressor(image_size=16, channels=(8, 8)), box)


def test_mouth_expert_loss_compares_the_decoded_last_chunk_after_the_ground_truth_past():
    """The last chunk is decoded after the ground-truth past (as the whole window would decode it); identical
    latents are at distance 0; gradients reach the estimate only."""
    mouth = small_mouth_loss()
    g = torch.Generator().manual_seed(2)
    latents = torch.randn(2, 4, 3, 4, 4, generator=g)
    estimate = torch.randn(2, 4, 1, 4, 4, generator=g, requires_grad=True)
    assert mouth(latents, latents[:, :, -1:]).item() == pytest.approx(0.0, abs=1e-10)
    loss = mouth(latents, estimate)
    vae = mouth.vae
    last = lambda z: vae.decode(vae.denormalize_latents(z)).sample[:, :, -4:].transpose(1, 2).flatten(0, 1)  # noqa: E731
    with torch.no_grad():
        whole = mouth_expert_distance(mouth.expert, last(torch.cat([latents[:, :, :-1], estimate], 2)), last(latents))
    assert loss.item() > 0 and loss.item() == pytest.approx(whole.item(), rel=1e-4)
    loss.backward()
    assert estimate.grad.abs().sum() > 0
    assert all(p.grad is None for p in [*vae.parameters(), *mouth.expert.parameters()])

    # mouth_box: the expert sees the estimate's pixels inside the box (rows 16-24, columns 8-24 of 32), the ground
    # truth's around it.
    boxed = small_mouth_loss(box=(0.5, 0.75, 0.25, 0.75))
    with torch.no_grad():
        got, want = last(torch.cat([latents[:, :, :-1], estimate], 2)), last(latents)
        composite = want.clone()
        composite[:, :, 16:24, 8:24] = got[:, :, 16:24, 8:24]
        expected = mouth_expert_distance(boxed.expert, composite, want)
        assert boxed(latents, estimate).item() == pytest.approx(expected.item(), rel=1e-4)
        assert expected.item() != pytest.approx(whole.item(), rel=1e-3)
    with pytest.raises(ConfigError, match="mouth_box"):
        ASDConfig(mouth_box=(0.8, 0.5, 0.2, 0.7)).check()


def test_mouth_weight_adds_the_mouth_loss_of_the_students_clean_estimate():
    """asd.mouth_weight: L += lambda_m * L_mouth on x0_hat = x_t - t v of the teacher-forced forward's last chunk;
    it trains the student even with the ground-truth flow loss off; the config needs an expert."""
    teacher, student, objective, latents, features, portrait = small_setup(window_chunks=3)
    mouth = small_mouth_loss()
    objective = AsynchronousStreamingDistillation(
        ASDConfig(window_chunks=3, teacher_substeps=1, mouth_weight=0.5, mouth_expert="expert"), 2.0, mouth
    )
    student.train()
    draw = objective.draw(latents.shape, 1, "cpu", torch.Generator().manual_seed(3))
    loss, logs = objective(student, teacher, latents, features, features, portrait, draw)
    assert logs["loss_mouth"] > 0
    assert loss.item() == pytest.approx(logs["loss_distill"] + 0.1 * logs["loss_gt"] + 0.5 * logs["loss_mouth"])
    t = objective.sigmas(1)[draw.levels]  # (B, M): chunk = latent frame; context_timestep 0
    x = (1 - t)[:, None, :, None, None] * latents + t[:, None, :, None, None] * draw.noise
    with torch.no_grad():  # K = 1: the last chunk is at t = 1, so x0_hat = noise - v
        v = student(x, t, features, portrait).sample
    estimate = draw.noise[:, :, -1:] - v[:, :, -1:]
    assert logs["loss_mouth"] == pytest.approx(mouth(latents, estimate).item(), rel=1e-4)

    objective.config.gt_loss_weight, objective.config.distill_weight = 0.0, 0.0
    student.zero_grad()
    loss, logs = objective(student, teacher, latents, features, features, portrait, draw)
    loss.backward()
    assert "loss_gt" not in logs and loss.item() == pytest.approx(0.5 * logs["loss_mouth"])
    assert sum(p.grad.abs().sum() for p in student.parameters() if p.grad is not None) > 0
    with pytest.raises(ConfigError, match="mouth_expert"):
        ASDConfig(mouth_weight=1.0).check()
    with pytest.raises(ValueError, match="MouthExpertLoss"):
        AsynchronousStreamingDistillation(ASDConfig(mouth_weight=1.0, mouth_expert="expert"), 2.0)


def test_loss_trains_the_student_only():
    """Gradients reach every trainable parameter of the student, and neither the frozen CFG parameters nor the
    teacher; the loss is L_distill + gt_loss_weight * L_gt."""
    teacher, student, objective, latents, features, portrait = small_setup(window_chunks=4)
    student.train()
    draw = objective.draw(latents.shape, 2, "cpu", torch.Generator().manual_seed(3))
    loss, logs = objective(student, teacher, latents, features, features, portrait, draw)
    loss.backward()
    assert logs["loss_distill"] > 0 and logs["loss_gt"] > 0 and logs["K"] == 2
    assert loss.item() == pytest.approx(logs["loss_distill"] + 0.1 * logs["loss_gt"], rel=1e-5)
    assert all(p.grad is None for p in teacher.parameters())
    assert student.null_portrait.grad is None and student.null_audio.grad is None
    grads = [p.grad for n, p in student.named_parameters() if p.requires_grad]
    assert all(g is not None for g in grads) and sum(g.abs().sum() for g in grads) > 0


def test_teacher_forcing_only_ablation():
    """distill_weight 0: no rollout and no teacher pass; the loss is the weighted ground-truth loss alone."""
    teacher, student, objective, latents, features, portrait = small_setup(window_chunks=4)
    objective.config.distill_weight = 0.0
    student.train()
    draw = objective.draw(latents.shape, 2, "cpu", torch.Generator().manual_seed(3))
    calls = []
    teacher.register_forward_hook(lambda *_: calls.append(1))
    loss, logs = objective(student, teacher, latents, features, features, portrait, draw)
    loss.backward()
    assert not calls and logs["loss_distill"] == 0 and logs["loss_gt"] > 0
    assert loss.item() == pytest.approx(0.1 * logs["loss_gt"], rel=1e-6)
    assert sum(p.grad.abs().sum() for p in student.parameters() if p.grad is not None) > 0
    objective.config.gt_loss_weight = 0.0
    with pytest.raises(ConfigError, match="nothing to train"):
        objective.config.check()


def test_gradient_checkpointing_gives_the_same_gradients():
    """The window is longer than the context, so chunks written after a gradient pass overwrite the cache slots
    it read: the checkpointed recomputation must not see them."""
    grads = []
    for checkpointing in (False, True):
        teacher, student, objective, latents, features, portrait = small_setup(window_chunks=4)
        student.train()
        if checkpointing:
            student.enable_gradient_checkpointing()
        draw = objective.draw(latents.shape, 2, "cpu", torch.Generator().manual_seed(3))
        objective(student, teacher, latents, features, features, portrait, draw)[0].backward()
        grads.append(torch.cat([p.grad.flatten() for p in student.parameters() if p.grad is not None]))
    assert torch.allclose(grads[0], grads[1], atol=1e-6) and grads[0].abs().sum() > 0


# ----------------------------------------------------------------------------- training


def test_train_resume_export(assets, tmp_path, capsys):
    """3 steps (K = 2, then 1 from step 2), resume to 4, export loads and streams."""
    out = tmp_path / "run"
    export = train_student(experiment(assets, out, max_steps=3))
    first = latest_checkpoint(out)
    assert read_trainer_state(first)["step"] == 3
    logs = MetricsLog.read(out, "train")
    assert [m["step"] for m in logs] == [1, 2, 3] and [m["K"] for m in logs] == [2, 2, 1]
    assert all(np.isfinite(m["loss"]) and m["loss_distill"] > 0 for m in logs)
    assert {"val_loss", "val_loss_distill", "val_loss_gt"} <= set(MetricsLog.read(out, "eval")[-1])
    info = StudentInfo.read(export)
    assert (info.steps, info.context_chunks, info.chunk_latent_frames, info.step) == (1, 2, 1, 3)
    assert list(info.sigmas) == flow_sigmas(1, 1.0).tolist() and info.vae == str(assets["vae"])
    student = load_local(DenoiserDiT, export / "denoiser")
    audio_encoder = load_local(AudioEncoder, export / "audio_encoder")
    assert student.attention_mode == "block_causal" and audio_encoder.config.out_dim == 8
    teacher = load_local(DenoiserDiT, assets["teacher"] / "denoiser")
    assert any(
        not torch.equal(a, b)
        for a, b in zip(student.state_dict().values(), teacher.state_dict().values(), strict=True)
    )
    weights_at_3 = {k: v.clone() for k, v in student.state_dict().items()}

    # The export is what the streaming session runs.
    vae = load_vae(info.vae)
    features, portrait, sigmas = torch.randn(1, 11, 8), torch.randn(1, 4, 1, 4, 4), torch.tensor(info.sigmas)
    session = StreamingSession(
        student.eval(), vae, portrait, sigmas, context_timestep=info.context_timestep, end="whole_chunks"
    )
    frames = session.push_features(features)
    assert frames.shape == (1, 3, 9, 32, 32)

    # ... and what `rest bench stream --weights` times (K and the VAE from student.json); a teacher is refused.
    bench = tmp_path / "bench.json"
    assert main(["bench", "stream", "--weights", str(export), "--seconds", "0.5", "--output", str(bench)]) == 0
    result = json.loads(bench.read_text())
    assert result["steps"] == 1 and result["depth"] == 2 and result["streams"][0]["chunks"] == 3
    assert main(["bench", "stream", "--weights", str(assets["teacher"]), "--seconds", "0.5"]) == 2
    assert "train/student.py" in capsys.readouterr().err

    capsys.readouterr()
    train_student(experiment(assets, out, max_steps=4), resume="latest")
    assert f"resumed from {first} at step 3" in capsys.readouterr().out
    assert [m["step"] for m in MetricsLog.read(out, "train")] == [1, 2, 3, 4]
    weights_at_4 = load_local(DenoiserDiT, out / "export" / "denoiser").state_dict()
    assert any(not torch.equal(weights_at_3[k], weights_at_4[k]) for k in weights_at_3)


def test_distillation_loss_decreases(assets, tmp_path):
    """At K = 1 the student learns the teacher's one-step targets on its own rollouts."""
    out = tmp_path / "run"
    cfg = experiment(assets, out, max_steps=40, sample_posterior=False)
    cfg.asd.steps_schedule, cfg.asd.gt_loss_weight = ((0, 1),), 0.0
    cfg.train.lr, cfg.train.log_every = 3e-3, 10
    train_student(cfg)
    losses = [m["loss_distill"] for m in MetricsLog.read(out, "train")]
    assert len(losses) == 4 and losses[-1] < 0.3 * losses[0], losses


def test_init_continues_from_a_student_export_with_the_mouth_loss(assets, tmp_path):
    """`init`: the student starts from a student export's weights, not the teacher's (lr 0: the export is the init);
    `asd.mouth_weight` with an expert folder logs the mouth loss; an init of another architecture is refused."""
    teacher = load_local(DenoiserDiT, assets["teacher"] / "denoiser")
    student, audio_encoder = build_student(teacher, load_local(AudioEncoder, assets["teacher"] / "audio_encoder"), {})
    with torch.no_grad():
        for p in student.parameters():
            p.add_(0.01)
    student.save_pretrained(tmp_path / "init" / "denoiser")
    audio_encoder.save_pretrained(tmp_path / "init" / "audio_encoder")
    MouthRegressor(image_size=16, channels=(8, 8)).save_pretrained(tmp_path / "expert")

    cfg = experiment(assets, tmp_path / "run", max_steps=2)
    cfg.init, cfg.train.lr = str(tmp_path / "init"), 0.0
    cfg.asd.mouth_weight, cfg.asd.mouth_expert = 1.0, str(tmp_path / "expert")
    export = train_student(cfg)
    logs = MetricsLog.read(tmp_path / "run", "train")
    assert len(logs) == 2 and all(m["loss_mouth"] > 0 for m in logs)
    assert "val_loss_mouth" in MetricsLog.read(tmp_path / "run", "eval")[-1]
    exported = load_local(DenoiserDiT, export / "denoiser").state_dict()
    assert all(torch.equal(v, exported[k]) for k, v in student.state_dict().items())

    cfg = experiment(assets, tmp_path / "run2", max_steps=1)
    cfg.init, cfg.student = str(tmp_path / "init"), {"context_chunks": 1}
    with pytest.raises(ConfigError, match="context_chunks"):
        train_student(cfg)


def test_teacher_free_fine_tuning_of_a_pipeline_folder(assets, tmp_path):
    """teacher: null (what `rest avatar train` runs): the networks, the shift and the VAE come from the pipeline
    folder of `init`, only the ground-truth loss trains (lr 0: the export is the init), and train.max_minutes stops
    the run after the step that crosses it. A teacher-free run that asks for distillation is refused."""
    teacher = load_local(DenoiserDiT, assets["teacher"] / "denoiser")
    student, audio_encoder = build_student(teacher, load_local(AudioEncoder, assets["teacher"] / "audio_encoder"), {})
    config = PipelineConfig(preset="test", resolution=32, steps=1, shift=1.5, context_timestep=0.2, context_chunks=3)
    write_pipeline(tmp_path / "pipe", load_vae(assets["vae"]), audio_encoder, student, config, half=False)

    cfg = experiment(assets, tmp_path / "run", max_steps=5, max_minutes=0.0)
    cfg.teacher, cfg.init, cfg.train.lr = None, str(tmp_path / "pipe"), 0.0
    cfg.asd = ASDConfig(window_chunks=4, steps_schedule=((0, 1),), distill_weight=0.0, gt_loss_weight=1.0)
    export = train_student(cfg)
    logs = MetricsLog.read(tmp_path / "run", "train")
    assert len(logs) == 1 and logs[0]["loss_gt"] > 0 and logs[0]["loss_distill"] == 0  # stopped by the budget
    info = StudentInfo.read(export)
    assert (info.shift, info.vae, info.teacher, info.step) == (1.5, str(tmp_path / "pipe" / "vae"), "", 1)
    exported = load_local(DenoiserDiT, export / "denoiser").state_dict()
    assert all(torch.equal(v, exported[k]) for k, v in student.state_dict().items())

    # With the distillation on, the target is the ground truth seen from the student's own rollout.
    cfg.asd.distill_weight, cfg.train.output_dir, cfg.train.max_minutes, cfg.train.max_steps = (
        1.0,
        str(tmp_path / "r2"),
        None,
        2,
    )
    train_student(cfg)
    logs = MetricsLog.read(tmp_path / "r2", "train")
    assert len(logs) == 2 and all(m["loss_distill"] > 0 for m in logs)
    cfg.asd.audio_pair_weight = 1.0
    with pytest.raises(ConfigError, match="teacher: null.*audio_pair_weight: 0"):
        train_student(cfg)
    cfg.asd.audio_pair_weight, cfg.init = 0.0, None
    with pytest.raises(ConfigError, match="teacher: null.*needs init"):
        train_student(cfg)


def test_ground_truth_target_without_a_teacher(monkeypatch):
    """No teacher: the distillation target of a chunk in the loss is (w - x0) / t, the velocity from the student's own
    state to the data; at K = 1, w is the chunk's noise, so a student that predicts 0 scores mean (eps - x0)^2 over
    the chunks in the loss (the clean context chunks are not in it). The teacher's target never runs."""
    _, student, objective, latents, features, portrait = small_setup()
    objective.config.gt_loss_weight = 0.0
    draw = objective.draw(latents.shape, 1, "cpu", torch.Generator().manual_seed(0))
    draw.levels = torch.tensor([[1, 0, 0], [1, 1, 0]])  # clean context first, then chunks at t = 1
    monkeypatch.setattr(objective, "_teacher_target", lambda *a, **k: pytest.fail("no teacher: no teacher target"))
    zero = lambda model, cache, x, t, audio, emotion=None: torch.zeros_like(x)  # noqa: E731
    monkeypatch.setattr("rest.training.student.chunk_velocity", zero)
    _, logs = objective(student, None, latents, features, features, portrait, draw)
    in_loss = draw.levels < 1
    per_chunk = (draw.noise - latents).pow(2).mean(dim=(1, 3, 4))  # (B, M): one latent frame per chunk
    expected = (per_chunk * in_loss).sum() / in_loss.sum()
    assert logs["loss_distill"] == pytest.approx(expected.item(), rel=1e-5)


def test_config_errors(assets, tmp_path):
    cfg = experiment(assets, tmp_path / "run", max_steps=1)
    cfg.student["width"] = 64
    with pytest.raises(ConfigError, match="'width' cannot change"):
        train_student(cfg)
    cfg = experiment(assets, tmp_path / "run", max_steps=1)
    cfg.asd.steps_schedule = ((5, 2),)
    with pytest.raises(ConfigError, match="steps_schedule"):
        train_student(cfg)
    cfg = experiment(assets, tmp_path / "run", max_steps=1)
    cfg.train.batch_size, cfg.asd.audio_pair_weight = 1, 1.0
    with pytest.raises(ConfigError, match="batch_size >= 2"):
        train_student(cfg)
    cfg = experiment(assets, tmp_path / "run", max_steps=1)
    cfg.teacher = str(tmp_path)
    with pytest.raises(Exception, match="teacher.json"):
        train_student(cfg)


def test_shipped_configs_load():
    for name in ["student_tiny.yaml", "student_base.yaml"]:
        cfg = load_config(StudentExperiment, REPO / "configs" / name)
        cfg.asd.check()
        assert cfg.asd.steps_schedule[0][0] == 0 and [k for _, k in cfg.asd.steps_schedule] == [4, 2, 1]
        assert cfg.asd.window_chunks > 3 + 1  # longer than the preset's context: the window also rolls


def test_train_script_entry_point(assets, tmp_path, monkeypatch):
    """The documented command line: python train/student.py --config ... --set ..."""
    cfg = tmp_path / "cfg.yaml"
    cfg.write_text(
        f"teacher: {assets['teacher']}\ndata: {{root: {assets['shards']}}}\n"
        f"asd: {{window_chunks: 2, steps_schedule: [[0, 1]], teacher_substeps: 1}}\n"
        f"train: {{output_dir: {tmp_path / 'run'}, max_steps: 1, batch_size: 1, eval_every: 0, eval_clips: 1}}\n"
    )
    argv = ["train/student.py", "--config", str(cfg), "--set", "train.log_every=1", "student.context_chunks=1"]
    monkeypatch.setattr(sys, "argv", argv)
    runpy.run_path(str(REPO / "train" / "student.py"), run_name="__main__")
    info = StudentInfo.read(tmp_path / "run" / "export")
    assert info.context_chunks == 1 and info.steps == 1
    assert MetricsLog.read(tmp_path / "run", "train")[-1]["step"] == 1
