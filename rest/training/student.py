"""Stages 2 and 3 of ASD: the streaming student, distilled from the frozen bidirectional teacher.

Stage 2 (initialisation). The student is the teacher's denoiser and audio encoder (`export/denoiser`,
`export/audio_encoder` of train/teacher.py), switched to `block_causal` attention with the streaming window of the
config (`chunk_latent_frames`, `context_chunks`). The parameters only classifier-free guidance uses (the null
portrait, and the null audio, which otherwise only feeds the portrait slot) stay frozen: the student has no CFG.
The audio encoder is frozen too unless `train.train_audio_encoder` (then the student's copy trains jointly).

Stage 3 (Asynchronous Streaming Distillation), one training step on a batch of B clips of M chunks
(`asd.window_chunks`; a clip of F = 1 + t*(M*c - 1) frames is a stream from its first frame):

    K       = the student's step count at this training step (`asd.steps_schedule`, e.g. 4, then 2, then 1)
    sigma   = flow_sigmas(K, shift): sigma_0 = 1 > sigma_1 > ... > sigma_{K-1} > sigma_K = 0, the student's
              inference levels (the teacher's shift, teacher.json)
    eps_i   ~ N(0, I), the starting noise of chunk i (i = 0 .. M-1)

1. Asynchronous schedule (`draw_levels`). Per clip, draw M step indices uniformly from {0, .., K} and sort them in
   decreasing order: k_0 >= k_1 >= ... >= k_{M-1}; force k_{M-1} <= K - 1. Chunk i sits at t_i = sigma_{k_i}, so
   t_0 <= t_1 <= ... <= t_{M-1}: the past is cleaner than the present. k_i = K (t_i = 0) makes chunk i pure
   context (not in the loss); the last chunk is always trained.
2. Self-rollout (no gradient). The student generates the window chunk by chunk exactly as at inference:
   `rollout_chunk(student, cache, eps_i, audio_i, sigma, context_timestep)`, so chunk i's context is the student's
   OWN output for chunks < i (its errors included: the source of drift). The rollout records each chunk's Euler
   states x_i(sigma_0) = eps_i, x_i(sigma_1), ..., x_i(sigma_K) = the generated chunk.
3. The noisy window. Chunk i enters at its own drawn state: w_i = x_i(sigma_{k_i}), at level t_i (clean context
   chunks are the generated chunks themselves). These are the inputs the student meets at inference, on its own
   trajectory. With `asd.context_timestep` = c > 0 the student's cache holds its past re-noised to level c
   (x_i(0) (1 - c) + c eps'_i), and the teacher's window holds the clean context chunks the same way, at level c
   (noise augmentation of the context, against the blur and errors of the student's own past compounding). The
   teacher never trained on a context at level c; a student distilled through it at c > 0 keeps its face
   over a stream, where one distilled with a clean context loses it (docs/experiments.md).
4. Teacher target (frozen, bidirectional, no gradient). The teacher sees the whole window [w_0, .., w_{M-1}] at the
   per-chunk levels [t_0, .., t_{M-1}] at once, with the portrait and the audio, and CFG baked in (guided velocity,
   `asd.teacher_guidance`). With `asd.teacher_substeps` = N it integrates the window over the student's next step,
   every chunk from t_i to t'_i = sigma_{k_i + 1} jointly, in N Euler steps (sub-levels evenly spaced in the
   unshifted time, then shifted, as the student's own grid), and the target is the average velocity over that
   segment:
        v_T,i = (x_i(t'_i) - w_i) / (t'_i - t_i);            N = 1: v_T,i = v_guided(window, t)_i
   With `asd.teacher_steps` = T set instead, N = ceil(T / K): every target is a T-step teacher trajectory whatever
   the student's K (a fixed N = 2 makes a 1-step student's target a 2-step teacher sample).
5. Student prediction (with gradient). For each chunk in the loss, the student's velocity at (w_i, t_i) from the
   streaming path against its own past: `chunk_velocity(student, cache, w_i, t_i, audio_i)`, the cache holding
   the sink and the student's own chunks < i (rebuilt by writing the rollout's chunks back in order: the same
   write as the rollout's, so it is the cache chunk i saw).
6. Loss:
        L_distill = mean over chunks in the loss of  || v_S,i - v_T,i ||^2
        L_gt      = mean over the same chunks of     || v_gt,i - (eps_i - x0_i) ||^2
        L         = asd.distill_weight * L_distill + asd.gt_loss_weight * L_gt        (distill_weight: 1)
   where v_gt is the student's block-causal forward over the ground-truth window noised at the same levels,
   x_gt = (1 - t) x0 + t eps (teacher forcing: ground-truth past; chunks at t = 0 are clean context, re-noised to
   `asd.context_timestep` when it is > 0, as in the cache). It anchors the student to the data where the teacher
   is wrong. All squared errors are means over (C, c, h, w).

7. Paired audio loss (`asd.audio_pair_weight` = lambda_a > 0; off by default). The last chunk's audio is swapped for
   the next clip's in the batch (A -> A', from the chunk's first video frame on), on the same window and cache.
   The teacher's response to the swap, dv_T = v_T(A') - v_T(A) on the last chunk, is a small part of its target
   (CFG audio amplifies it), and the plain distillation loss leaves it buried under the error of the whole chunk;
   this term matches it directly:
        L_pair = || (v_S(A') - v_S(A)) - dv_T ||^2,      L += lambda_a * L_pair
   It costs one more teacher target and one more student pass on the last chunk, and needs batches of 2 or more
   clips (an evaluation batch of 1 skips it). Without this term the student's response to swapped audio
   stays a small fraction of the teacher's and hardly aligned with it, and its mouth does not follow the audio
   (docs/experiments.md, "Run of 2026-11-30").

8. Mouth-expert loss (`asd.mouth_weight` = lambda_m > 0, with `asd.mouth_expert`; off by default). The student's
   clean estimate of the last chunk from the teacher-forced forward of 6., x0_hat = x_gt - t v_gt, is decoded by
   the (frozen) VAE after the ground-truth past, and so is the ground-truth chunk; a mouth-openness network
   (train/mouth_regressor.py; the demo uses the VAE's mouth expert, not the evaluation's regressor) compares the
   two mouths (`mouth_expert_distance`: its features, and its openness readings):
        L_mouth = d_expert(D(x0_hat), D(x0)),      L += lambda_m * L_mouth
   With `asd.mouth_box` the expert sees D(x0_hat) inside the box and D(x0) around it, so only the mouth's pixels
   can lower the loss. Without it, a student can learn to move the hair and the cheeks with the audio, which the
   expert, looking at the whole lower face, reads as an opening mouth (docs/experiments.md).
   The mouth is a few of the latent frame's tokens, so the flow and distillation losses, averaged over the
   frame, let it settle near its mean; this term weighs it as a lip-sync expert does (Wav2Lip's SyncNet loss,
   Prajwal et al. 2020). At t = 1 (K = 1) x0_hat is the student's one-step sample given its audio.

Ablation: `asd.distill_weight: 0` skips steps 2-5 and trains by teacher forcing only (the ground-truth loss over
the asynchronous levels, the student never seeing its own past): the "no ASD" student of evaluation/drift_study.py.

Without a teacher (`teacher: null`, fine-tuning the student of `init` on one person's footage: `rest avatar`), step 4's
target is the ground truth seen from the student's own state: v_T,i = (w_i - x0_i) / t_i, the velocity that takes
chunk i from where the student's rollout put it to the data (at K = 1, w_i = eps_i: the flow-matching target, but
after the student's own past instead of the true one). The student learns to pull its own drifted past back to the
footage, which teacher forcing alone never shows it. The paired audio loss needs the teacher.

Deviations from the design's wording, and why:
- `teacher_substeps` N > 1 (tiny/base configs: 4). With N = 1 the target is the teacher's instantaneous guided
  velocity, which is the design's definition; but a K-step Euler student that matches instantaneous velocities
  only reproduces the teacher's field, and integrating it with K = 1..4 large steps lands on the blurry mean
  (the reason few-step samplers are distilled, not just copied: progressive distillation, Salimans & Ho 2022;
  InstaFlow / rectified-flow distillation, Liu et al. 2023). Matching the teacher's average velocity over the
  student's step makes one student Euler step land where N teacher steps land. N = 1 recovers the definition.
  The teacher's own samples need several steps to follow the audio (at 2 steps its mouth barely beats shuffled
  audio; docs/experiments.md): hence `teacher_steps`, which keeps the target's trajectory as K drops to 1.
- The window holds the student's own intermediate states, not noised ground truth, and the ground-truth loss uses
  a separate teacher-forced forward. If the teacher saw the ground-truth past while the student saw its own, the
  target would ask the student for a continuation of a past it never saw (pose, expression): it can only learn
  the average. With its own states in the window the teacher continues the student's actual past, which is the
  correction that stops drift; the ground-truth term keeps the data in view.
- Clean context (k_i = K, t_i = 0) is part of the draw: at K = 1 the levels would otherwise all be 1 (nothing
  asynchronous left, and a teacher that sees no past at all).

The step count K follows `asd.steps_schedule` (a list of [first training step, K]); the export's student.json
records the K in use at the end of training, the levels, the chunk, the context and the context timestep, which
the streaming session must use.

Runs unchanged on CPU, one GPU or many through accelerate (`accelerate launch train/student.py --config ...`).
A run folder holds `checkpoints/`, `metrics.jsonl` and `export/` (EMA weights: `export/denoiser/`,
`export/audio_encoder/`, `export/student.json`), as the teacher's.
"""

from __future__ import annotations

import dataclasses
import math
from collections.abc import Iterator
from dataclasses import dataclass, field, replace
from pathlib import Path

import torch
import torch.nn as nn
from accelerate import Accelerator

from rest.config import ConfigError, to_dict
from rest.data.dataset import TalkingClipDataset
from rest.data.phonetic import PhoneticAudioEncoder
from rest.diffusion.flow import (
    Guidance,
    euler_step,
    flow_sigmas,
    guided_velocity,
    interpolate,
    shift_timesteps,
    velocity_target,
)
from rest.exports import PipelineConfig, StudentInfo, load_audio_path, load_student, load_teacher, load_vae
from rest.models.audio import AudioEncoder
from rest.models.dit import DenoiserDiT
from rest.models.loading import load_local
from rest.models.mouth import MouthRegressor, box_slices
from rest.models.vae import CausalVideoVAE
from rest.streaming import IDContextCache, chunk_audio_span, chunk_velocity, rollout_chunk, write_chunk, write_sink
from rest.training.common import TrainConfig, save_networks, start_from
from rest.training.loop import StepOutput, Trainer, epochs, training_loop
from rest.training.teacher import clip_dataset, clip_loader, collate_clips, encode_latents
from rest.training.vae import mouth_expert_distance

STREAMING_KEYS = ("chunk_latent_frames", "context_chunks")  # the student settings a config may change

#################################################################################
#                                    Config                                     #
#################################################################################


@dataclass
class StudentDataConfig:
    root: str  # shard root written by `rest preprocess` or SynthTalk
    split: str = "train"
    eval_split: str | None = None  # clips of the periodic evaluation; None = the training split
    ref_min_gap: int | None = None  # min. distance (frames) of the reference from the clip; None = the clip length
    num_workers: int = 0
    augment_audio: bool = False  # training windows' audio through rest.data.augment (real-speech robustness)


@dataclass
class ASDConfig:
    """Asynchronous Streaming Distillation (module docstring)."""

    window_chunks: int = 6  # M, chunks per training window (> context_chunks + 1 also trains the rolling window)
    steps_schedule: tuple[tuple[int, int], ...] = ((0, 4), (4000, 2), (8000, 1))  # (from training step, K)
    teacher_guidance: Guidance = field(default_factory=Guidance)  # CFG scales baked into the student
    teacher_substeps: int = 4  # N teacher Euler steps per student step (1 = the instantaneous guided velocity)
    teacher_steps: int | None = None  # teacher steps over a whole trajectory: N = ceil(teacher_steps / K) per step
    gt_loss_weight: float = 0.1  # weight of the ground-truth flow-matching loss
    distill_weight: float = 1.0  # weight of the distillation loss; 0 = teacher forcing only (an ablation)
    context_timestep: float = 0.0  # level at which generated chunks are written to the cache (0 = clean)
    audio_pair_weight: float = 0.0  # weight of the paired audio loss (module docstring, 7.); 0 = off
    mouth_weight: float = 0.0  # weight of the mouth-expert loss (module docstring, 8.); 0 = off
    mouth_expert: str | None = None  # MouthRegressor export folder (train/mouth_regressor.py) for mouth_weight
    # (top, bottom, left, right) fractions of the frame: the expert sees the estimate inside this box only, the
    # ground truth outside it (module docstring, 8.); None = the estimate everywhere
    mouth_box: tuple[float, float, float, float] | None = None

    def steps_at(self, step: int) -> int:
        """K, the student's step count at training step `step`."""
        return [k for start, k in self.steps_schedule if start <= step][-1]

    def substeps_at(self, steps: int) -> int:
        """N, the teacher's Euler steps per student step when the student takes K = `steps` steps."""
        return self.teacher_substeps if self.teacher_steps is None else max(1, math.ceil(self.teacher_steps / steps))

    def check(self) -> None:
        starts = [s for s, _ in self.steps_schedule]
        if not starts or starts[0] != 0 or starts != sorted(set(starts)) or any(k < 1 for _, k in self.steps_schedule):
            raise ConfigError(
                f"asd.steps_schedule must be [[0, K0], [step1, K1], ...] with increasing steps and K >= 1, got "
                f"{self.steps_schedule}"
            )
        if self.window_chunks < 1 or self.teacher_substeps < 1 or self.gt_loss_weight < 0 or self.distill_weight < 0:
            raise ConfigError(
                "need asd.window_chunks >= 1, asd.teacher_substeps >= 1, asd.gt_loss_weight >= 0, "
                "asd.distill_weight >= 0"
            )
        if self.teacher_steps is not None and self.teacher_steps < 1:
            raise ConfigError(f"asd.teacher_steps must be >= 1 (or null: teacher_substeps), got {self.teacher_steps}")
        if self.audio_pair_weight < 0 or (self.audio_pair_weight > 0 and self.distill_weight == 0):
            raise ConfigError("asd.audio_pair_weight must be >= 0, and needs the distillation (distill_weight > 0)")
        if self.gt_loss_weight == 0 and self.distill_weight == 0:
            raise ConfigError("asd.gt_loss_weight and asd.distill_weight are both 0: nothing to train")
        if self.mouth_weight < 0 or (self.mouth_weight > 0 and self.mouth_expert is None):
            raise ConfigError(
                "asd.mouth_weight must be >= 0, and > 0 needs asd.mouth_expert (a train/mouth_regressor.py export)"
            )
        box = self.mouth_box
        if box is not None and not (len(box) == 4 and 0 <= box[0] < box[1] <= 1 and 0 <= box[2] < box[3] <= 1):
            raise ConfigError(f"asd.mouth_box must be [top, bottom, left, right] fractions of the frame, got {box}")
        if not 0 <= self.context_timestep < 1:
            raise ConfigError(f"asd.context_timestep must be in [0, 1), got {self.context_timestep}")


@dataclass
class StudentTrainConfig(TrainConfig):
    output_dir: str = "runs/student"
    lr: float = 5e-5
    warmup_steps: int = 200
    max_steps: int = 12000
    gradient_checkpointing: bool = False
    train_audio_encoder: bool = False  # False: the teacher's audio encoder, frozen
    sample_posterior: bool = True  # ground-truth latents drawn from the VAE posterior (False: its mean)
    eval_clips: int = 8


@dataclass
class StudentExperiment:
    # the teacher's export folder (denoiser/, audio_encoder/, teacher.json); None: no teacher, which needs `init`: the
    # ground truth is the target (module docstring; the fine-tuning of `rest avatar train`)
    teacher: str | None
    data: StudentDataConfig
    # a student export (student.json) or a pipeline folder (pipeline.json) to continue from (fine-tuning); None = the
    # teacher (stage 2)
    init: str | None = None
    vae: str | None = None  # the VAE folder; None = the one teacher.json names
    shift: float | None = None  # timestep shift of the student's levels; None = teacher.json's
    student: dict = field(default_factory=dict)  # streaming overrides of the denoiser: chunk_latent_frames, ...
    asd: ASDConfig = field(default_factory=ASDConfig)
    train: StudentTrainConfig = field(default_factory=StudentTrainConfig)


#################################################################################
#                             Stage 2: the student                              #
#################################################################################


def _fresh_audio(audio_encoder: AudioEncoder | PhoneticAudioEncoder) -> AudioEncoder | PhoneticAudioEncoder:
    """A new audio path of the same architecture (the phonetic channel has no weights: a new one)."""
    if isinstance(audio_encoder, PhoneticAudioEncoder):
        return PhoneticAudioEncoder(audio_encoder.settle_s)
    return AudioEncoder.from_config(audio_encoder.config)


def audio_path_of(audio_encoder: AudioEncoder | PhoneticAudioEncoder) -> str:
    """The export name of an audio path (rest.exports.AUDIO_PATHS)."""
    return "phonetic" if isinstance(audio_encoder, PhoneticAudioEncoder) else "mel"


def build_student(
    teacher: DenoiserDiT, teacher_audio: AudioEncoder | PhoneticAudioEncoder, overrides: dict
) -> tuple[DenoiserDiT, AudioEncoder | PhoneticAudioEncoder]:
    """Stage 2: copies of the teacher's networks, the denoiser switched to block_causal with `overrides`."""
    unknown = sorted(set(overrides) - set(STREAMING_KEYS))
    if unknown:
        raise ConfigError(
            f"student: {unknown[0]!r} cannot change (the student has the teacher's architecture); valid keys: "
            f"{', '.join(STREAMING_KEYS)}"
        )
    student = DenoiserDiT.from_config(teacher.config, attention_mode="block_causal", **overrides)
    student.load_state_dict(teacher.state_dict(), strict=True)
    audio_encoder = _fresh_audio(teacher_audio)
    audio_encoder.load_state_dict(teacher_audio.state_dict(), strict=True)
    # CFG-only parameters: never used without condition dropout.
    student.null_portrait.requires_grad_(False)
    student.null_audio.requires_grad_(False)
    return student, audio_encoder


#################################################################################
#                        Stage 3: the distillation objective                    #
#################################################################################


def draw_levels(
    batch_size: int, window_chunks: int, steps: int, generator: torch.Generator | None = None
) -> torch.Tensor:
    """The asynchronous schedule (module docstring, 1.): (B, M) long step indices in {0, .., K}, non-increasing
    along the chunks (chunk i at level sigma_{k_i}: the past cleaner than the present), the last one < K."""
    k = torch.randint(0, steps + 1, (batch_size, window_chunks), generator=generator)
    k = k.sort(dim=1, descending=True).values
    k[:, -1] = k[:, -1].clamp(max=steps - 1)
    return k


def segment_levels(t: torch.Tensor, t_next: torch.Tensor, substeps: int, shift: float) -> torch.Tensor:
    """Sub-levels from t to t_next (same shape), evenly spaced in unshifted time and then shifted (the spacing of
    `flow_sigmas`): (substeps + 1, *t.shape), from t to t_next."""
    unshift = lambda s: s / (shift - (shift - 1) * s)  # noqa: E731  (inverse of shift_timesteps)
    u = torch.linspace(0, 1, substeps + 1, device=t.device).view(-1, *[1] * t.ndim)
    levels = shift_timesteps(unshift(t) + u * (unshift(t_next) - unshift(t)), shift)
    levels[0], levels[-1] = t, t_next  # exact endpoints
    return levels


@dataclass
class ASDDraw:
    """The random choices of one ASD step."""

    noise: torch.Tensor  # (B, C, f, h, w): eps_i, chunk i's starting noise (also the ground-truth loss's noise)
    levels: torch.Tensor  # (B, M) long step indices k_i in {0 .. K}
    steps: int  # K
    context_noise: torch.Tensor | None  # (B, C, f, h, w) re-noising of the written context (context_timestep > 0)


class MouthExpertLoss:
    """Step 8 of the module docstring: the mouth-expert distance between a clean estimate of a window's last chunk
    and the ground truth, both decoded by the frozen VAE after the ground-truth past."""

    def __init__(
        self, vae: CausalVideoVAE, expert: MouthRegressor, box: tuple[float, float, float, float] | None = None
    ):
        self.vae = vae.eval().requires_grad_(False)
        self.expert = expert.eval().requires_grad_(False)
        self.box = box

    def __call__(self, latents: torch.Tensor, estimate: torch.Tensor) -> torch.Tensor:
        """latents: (B, C, f, h, w) the normalised ground-truth window; estimate: (B, C, c, h, w) a clean estimate of
        its last c latent frames (gradients reach it only) -> the scalar distance."""
        vae, c = self.vae, estimate.shape[2]
        dtype = next(vae.parameters()).dtype
        pixels = lambda z, cache: vae.decode_chunk(vae.denormalize_latents(z).to(dtype), cache)[0].sample  # noqa: E731
        with torch.no_grad():
            past = vae.init_cache("decode")
            pixels(latents[:, :, :-c], past)
            want = pixels(latents[:, :, -c:], replace(past, slots=list(past.slots)))
        got = pixels(estimate, replace(past, slots=list(past.slots)))
        if self.box is not None:  # the estimate inside the box, the ground truth around it
            inside = torch.zeros(got.shape[-2:], dtype=torch.bool, device=got.device)
            inside[box_slices(self.box, *got.shape[-2:])] = True
            got = torch.where(inside, got, want)
        frames = lambda x: x.float().transpose(1, 2).flatten(0, 1)  # noqa: E731  (B, 3, n, H, W) -> (B n, 3, H, W)
        return mouth_expert_distance(self.expert, frames(got), frames(want))


class AsynchronousStreamingDistillation:
    """The ASD objective (module docstring, steps 1-8): student `chunk_velocity` on its own rollout vs the frozen
    teacher's guided velocity over the asynchronous window, plus a weighted ground-truth flow loss (and, optionally,
    the paired audio and the mouth-expert losses)."""

    def __init__(self, config: ASDConfig, shift: float, mouth: MouthExpertLoss | None = None):
        if (config.mouth_weight > 0) != (mouth is not None):
            raise ValueError("asd.mouth_weight > 0 needs a MouthExpertLoss, and only then")
        self.config = config
        self.shift = shift
        self.mouth = mouth

    def sigmas(self, steps: int) -> torch.Tensor:
        return flow_sigmas(steps, self.shift)

    def draw(
        self, shape: tuple[int, ...], steps: int, device: torch.device | str, generator: torch.Generator | None = None
    ) -> ASDDraw:
        """Noise and levels for clean latents of shape (B, C, f, h, w)."""
        levels = draw_levels(shape[0], self.config.window_chunks, steps, generator)
        noise = torch.randn(shape, generator=generator)
        context_noise = torch.randn(shape, generator=generator) if self.config.context_timestep > 0 else None
        return ASDDraw(
            noise=noise.to(device),
            levels=levels.to(device),
            steps=steps,
            context_noise=None if context_noise is None else context_noise.to(device),
        )

    def __call__(
        self,
        student: DenoiserDiT,
        teacher: DenoiserDiT,
        latents: torch.Tensor,
        features: torch.Tensor,
        teacher_features: torch.Tensor,
        portrait: torch.Tensor,
        draw: ASDDraw,
        emotion: torch.Tensor | None = None,
    ) -> tuple[torch.Tensor, dict[str, float]]:
        """latents: (B, C, f, h, w) clean ground truth; features / teacher_features: (B, Fa, D) per video frame from
        the student's / the teacher's audio encoder; portrait: (B, C, 1, h, w); emotion: (B,) labels of models with
        an emotion embedding, else None -> (loss, logs)."""
        cfg = self.config
        b, _, f, h, w = latents.shape
        c, m, k_max = student.config.chunk_latent_frames, cfg.window_chunks, draw.steps
        if f != m * c:
            raise ValueError(f"a window of {m} chunks of {c} latent frames has {m * c} latent frames, got {f}")
        sigmas = self.sigmas(k_max).to(latents.device)
        k = draw.levels  # (B, M)
        chunks = [slice(i * c, (i + 1) * c) for i in range(m)]
        in_loss = k < k_max  # (B, M)
        t = sigmas[k]  # (B, M), non-decreasing along the chunks
        t_next = sigmas[(k + 1).clamp(max=k_max)]
        per_frame = lambda x: x.repeat_interleave(c, dim=1)  # noqa: E731  (B, M) -> (B, f)

        weight = in_loss.float()
        count = weight.sum().clamp_min(1.0)
        loss_distill = latents.new_zeros((), dtype=torch.float32)
        # 7. (on the last chunk, in steps 4-5) The paired audio loss; b = 1 (an evaluation batch's remainder) has no
        # other clip to take audio from.
        pair = cfg.distill_weight > 0 and cfg.audio_pair_weight > 0 and b > 1
        if cfg.distill_weight > 0:  # 0: teacher forcing only (the "no ASD" ablation), steps 2-5 skipped
            # 2-3. Self-rollout without gradients; the window holds each chunk's own state at its level.
            window, generated = self._self_rollout(student, features, portrait, draw, sigmas, chunks, emotion)
            # 3. The teacher sees the clean context as the student's cache holds it (re-noised when c > 0).
            window, t_teacher = self._context_as_cached(window, t, in_loss, draw, c)
            t_next_teacher = torch.where(in_loss, t_next, t_teacher)  # no segment for context chunks

            # 4. Teacher target over the whole window at once (no teacher: the ground truth from the student's state).
            with torch.no_grad():
                if teacher is None:
                    level = per_frame(t_teacher)[:, None, :, None, None].float()
                    target = (window.float() - latents.float()) / level.clamp_min(1e-6) * (level > 0)
                else:
                    target = self._teacher_target(
                        teacher, window, per_frame(t_teacher), per_frame(t_next_teacher), teacher_features, portrait,
                        k_max, emotion,
                    )  # fmt: skip

            if pair:  # 7. The teacher's response to the other clip's audio under the last chunk.
                features_swap, teacher_swap = self._swap_last_chunk_audio(student, features, teacher_features)
                with torch.no_grad():
                    target_swap = self._teacher_target(
                        teacher, window, per_frame(t_teacher), per_frame(t_next_teacher), teacher_swap, portrait,
                        k_max, emotion,
                    )  # fmt: skip
                response_teacher = (target_swap - target)[:, :, chunks[-1]]

            # 5. Student predictions with gradients, chunk by chunk against its own past.
            cache = write_sink(student, IDContextCache.for_model(student, b, h, w), portrait, emotion)
            errors = []  # per chunk: (B,) squared error against the teacher's target
            for i, chunk in enumerate(chunks):
                audio = self._chunk_audio(student, features, i)
                if in_loss[:, i].any():
                    v = chunk_velocity(student, cache, window[:, :, chunk], t[:, i, None].expand(b, c), audio, emotion)
                    errors.append((v.float() - target[:, :, chunk]).pow(2).mean(dim=(1, 2, 3, 4)))
                else:  # pure context in every clip of the batch: no gradient pass
                    errors.append(latents.new_zeros(b, dtype=torch.float32))
                if pair and i == m - 1:  # the last chunk is always in the loss
                    audio_swap = self._chunk_audio(student, features_swap, i)
                    level = t[:, i, None].expand(b, c)
                    v_swap = chunk_velocity(student, cache, window[:, :, chunk], level, audio_swap, emotion)
                    response = v_swap.float() - v.float()
                    loss_pair = (response - response_teacher).pow(2).mean()
                    logs_pair = {
                        "loss_pair": loss_pair.item(),
                        "response_teacher": response_teacher.pow(2).mean().item(),
                        "response_student": response.detach().pow(2).mean().item(),
                    }
                context_noise = None if draw.context_noise is None else draw.context_noise[:, :, chunk]
                write_chunk(
                    student,
                    cache,
                    generated[:, :, chunk],
                    audio,
                    context_timestep=cfg.context_timestep,
                    context_noise=context_noise,
                    emotion=emotion,
                )
            loss_distill = (torch.stack(errors, dim=1) * weight).sum() / count
        logs = {"loss_distill": loss_distill.item(), "K": float(k_max)}

        loss = cfg.distill_weight * loss_distill
        if pair:
            loss = loss + cfg.audio_pair_weight * loss_pair
            logs.update(logs_pair)

        # 6. Ground-truth flow loss, teacher forcing (block-causal forward over the noised ground-truth window).
        if cfg.gt_loss_weight > 0 or self.mouth is not None:
            noise = draw.noise.to(latents.dtype)
            x_gt, t_gt = self._context_as_cached(interpolate(latents, noise, per_frame(t)), t, in_loss, draw, c)
            v = student(x_gt, per_frame(t_gt), features, portrait, emotion=emotion).sample
            if cfg.gt_loss_weight > 0:
                err = (v.float() - velocity_target(latents, noise).float()).pow(2).mean(dim=(1, 3, 4))  # (B, f)
                loss_gt = (err.view(b, m, c).mean(dim=2) * weight).sum() / count
                loss = loss + cfg.gt_loss_weight * loss_gt
                logs["loss_gt"] = loss_gt.item()
            if self.mouth is not None:  # 8. The last chunk (always in the loss): x0_hat = x_t - t v.
                level = t_gt[:, -1].view(b, 1, 1, 1, 1).float()
                estimate = x_gt[:, :, chunks[-1]].float() - level * v[:, :, chunks[-1]].float()
                loss_mouth = self.mouth(latents, estimate)
                loss = loss + cfg.mouth_weight * loss_mouth
                logs["loss_mouth"] = loss_mouth.item()
        logs["loss"] = loss.item()
        return loss, logs

    def _context_as_cached(
        self, x: torch.Tensor, t: torch.Tensor, in_loss: torch.Tensor, draw: ASDDraw, chunk_frames: int
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """A window x (B, C, f, h, w) at chunk levels t (B, M) with its clean context chunks (not in the loss, t = 0)
        as the student's cache holds them: re-noised to `context_timestep` c with the cache's noise, at level c
        (module docstring, 3. and 6.). Unchanged when c = 0."""
        c = self.config.context_timestep
        if c == 0:
            return x, t
        level = torch.where(in_loss, t, torch.full_like(t, c))
        per_frame = level.repeat_interleave(chunk_frames, dim=1)
        noised = interpolate(x, draw.context_noise.to(x.dtype), per_frame)
        context = (~in_loss).repeat_interleave(chunk_frames, dim=1)[:, None, :, None, None]
        return torch.where(context, noised, x), level

    def _swap_last_chunk_audio(
        self, student: DenoiserDiT, features: torch.Tensor, teacher_features: torch.Tensor
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """The student's and the teacher's features with the next clip's audio (batch rolled by one) from the last
        chunk's first video frame on (module docstring, 7.)."""
        start, _ = chunk_audio_span(student, self.config.window_chunks - 1)
        swapped = []
        for x in (features, teacher_features):
            x = x.clone()
            x[:, start:] = x.roll(1, dims=0)[:, start:]
            swapped.append(x)
        return swapped[0], swapped[1]

    def _chunk_audio(self, student: DenoiserDiT, features: torch.Tensor, chunk: int) -> torch.Tensor:
        start, stop = chunk_audio_span(student, chunk)
        return features[:, start:stop]

    @torch.no_grad()
    def _self_rollout(
        self,
        student: DenoiserDiT,
        features: torch.Tensor,
        portrait: torch.Tensor,
        draw: ASDDraw,
        sigmas: torch.Tensor,
        chunks: list[slice],
        emotion: torch.Tensor | None = None,
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """The student generates the window as at inference -> (the window of drawn states, the generated chunks),
        each (B, C, f, h, w) float32."""
        b, _, _, h, w = draw.noise.shape
        cache = write_sink(student, IDContextCache.for_model(student, b, h, w), portrait, emotion)
        window = torch.zeros_like(draw.noise, dtype=torch.float32)
        generated = torch.zeros_like(window)
        batch = torch.arange(b, device=draw.noise.device)
        for i, chunk in enumerate(chunks):
            states: list[torch.Tensor] = []
            latents, cache = rollout_chunk(
                student,
                cache,
                draw.noise[:, :, chunk],
                self._chunk_audio(student, features, i),
                sigmas,
                context_timestep=self.config.context_timestep,
                context_noise=None if draw.context_noise is None else draw.context_noise[:, :, chunk],
                emotion=emotion,
                states=states,
            )
            window[:, :, chunk] = torch.stack(states)[draw.levels[:, i], batch]  # (B, C, c, h, w): x_i(sigma_{k_i})
            generated[:, :, chunk] = latents
        return window, generated

    def _teacher_target(
        self,
        teacher: DenoiserDiT,
        window: torch.Tensor,
        t: torch.Tensor,
        t_next: torch.Tensor,
        features: torch.Tensor,
        portrait: torch.Tensor,
        steps: int,
        emotion: torch.Tensor | None = None,
    ) -> torch.Tensor:
        """The teacher's average guided velocity over each frame's segment [t, t_next] (module docstring, 4.):
        window (B, C, f, h, w) at levels t (B, f) of a K = `steps` student -> (B, C, f, h, w) float32 (0 where
        t_next = t)."""
        cfg = self.config
        substeps = cfg.substeps_at(steps)
        levels = segment_levels(t, t_next, substeps, self.shift)  # (N + 1, B, f)
        dtype = next(teacher.parameters()).dtype
        x = window.float()
        for s in range(substeps):
            v = guided_velocity(
                teacher, x.to(dtype), levels[s], features.to(dtype), portrait.to(dtype), cfg.teacher_guidance, emotion
            )
            x = euler_step(x, v, levels[s][:, None, :, None, None], levels[s + 1][:, None, :, None, None])
        dt = (t_next - t)[:, None, :, None, None]
        return torch.where(dt < 0, (x - window.float()) / dt.clamp(max=-1e-8), torch.zeros_like(x))


#################################################################################
#                                    Model                                      #
#################################################################################


class StudentModel(nn.Module):
    """The student denoiser and its audio encoder; forward = one ASD step's loss (the frozen teacher is passed in,
    so that DDP / FSDP, the optimizer and the EMA see the student only)."""

    def __init__(
        self,
        denoiser: DenoiserDiT,
        audio_encoder: AudioEncoder,
        objective: AsynchronousStreamingDistillation,
        train_audio_encoder: bool,
    ):
        super().__init__()
        self.denoiser = denoiser
        self.audio_encoder = audio_encoder.requires_grad_(train_audio_encoder)
        self.objective = objective
        self.train_audio_encoder = train_audio_encoder

    def forward(
        self,
        teacher: nn.Module,
        latents: torch.Tensor,
        audio: torch.Tensor,
        portrait: torch.Tensor,
        draw: ASDDraw,
    ) -> tuple[torch.Tensor, dict[str, float]]:
        """teacher: a `TeacherNetworks`, or None (ground-truth loss only); latents (B, C, f, h, w); audio (B, N)
        samples; portrait (B, C, 1, h, w)."""
        if self.train_audio_encoder:
            features = self.audio_encoder(audio)
        else:
            with torch.no_grad():
                features = self.audio_encoder(audio)
        if teacher is None:
            return self.objective(self.denoiser, None, latents, features, features, portrait, draw)
        with torch.no_grad():
            teacher_features = teacher.audio_encoder(audio)
        return self.objective(self.denoiser, teacher.denoiser, latents, features, teacher_features, portrait, draw)


class TeacherNetworks(nn.Module):
    """The frozen teacher: denoiser and audio encoder."""

    def __init__(self, denoiser: DenoiserDiT, audio_encoder: AudioEncoder):
        super().__init__()
        self.denoiser = denoiser
        self.audio_encoder = audio_encoder
        self.requires_grad_(False).eval()


#################################################################################
#                                   Training                                    #
#################################################################################


def train_student(cfg: StudentExperiment, resume: str | None = None) -> Path:
    """Distil (or resume) the streaming student and export it; returns the export folder."""
    cfg.asd.check()
    if cfg.teacher is None and (cfg.init is None or cfg.asd.audio_pair_weight > 0):
        raise ConfigError(
            "teacher: null fine-tunes the student of init on the ground truth: it needs init, and "
            "asd.audio_pair_weight: 0 (the paired audio loss matches the teacher's response)"
        )
    if cfg.asd.audio_pair_weight > 0 and cfg.train.batch_size < 2:
        raise ConfigError("asd.audio_pair_weight swaps audio between the clips of a batch: needs batch_size >= 2")
    return training_loop(StudentTrainer(cfg), cfg.train, to_dict(cfg), resume)


class StudentTrainer(Trainer):
    """The student's part of `training_loop`: frozen teacher and VAE, StudentModel, clips from a stream's start, the
    ASD loss at the K of the schedule."""

    name = "student"
    postfix_keys = ("K",)

    def __init__(self, cfg: StudentExperiment):
        self.cfg = cfg

    def build(self, accelerator: Accelerator) -> None:
        cfg, tc = self.cfg, self.cfg.train
        self.accelerator = accelerator
        device = accelerator.device
        # Teacher (frozen), stage-2 student, VAE, data.
        if cfg.teacher is not None:
            teacher_dit, teacher_audio, teacher_info = load_teacher(cfg.teacher)
            self.vae_path, shift = cfg.vae or teacher_info.vae, teacher_info.shift
            denoiser, audio_encoder = build_student(teacher_dit, teacher_audio, cfg.student)
            self.teacher = TeacherNetworks(teacher_dit, teacher_audio).to(device)
            self.guidance, self.teacher_name = cfg.asd.teacher_guidance, str(cfg.teacher)
        else:  # no teacher (ground-truth fine-tuning): the networks of `init`, its settings
            denoiser, audio_encoder, start = _student_networks(cfg.init, cfg.student)
            self.vae_path, shift = cfg.vae or start.vae, start.shift
            self.teacher = None
            self.guidance, self.teacher_name = start.teacher_guidance, start.teacher
        if cfg.init is not None:  # continue from a student export (its streaming settings must match `student:`)
            start_from(denoiser, Path(cfg.init) / "denoiser", "init", "student")
            if isinstance(audio_encoder, AudioEncoder):
                start_from(audio_encoder, Path(cfg.init) / "audio_encoder", "init", "teacher (its audio encoder)")
        vae = load_vae(self.vae_path).to(device).eval().requires_grad_(False)
        if tc.gradient_checkpointing:
            denoiser.enable_gradient_checkpointing()
        self.shift = cfg.shift if cfg.shift is not None else shift
        mouth = None
        if cfg.asd.mouth_weight > 0:
            expert = load_local(MouthRegressor, cfg.asd.mouth_expert, "mouth expert (asd.mouth_expert)").to(device)
            mouth = MouthExpertLoss(vae, expert, cfg.asd.mouth_box)
        self.objective = AsynchronousStreamingDistillation(cfg.asd, self.shift, mouth)
        model = StudentModel(denoiser, audio_encoder, self.objective, tc.train_audio_encoder)
        self.num_frames = window_frames(denoiser, cfg.asd.window_chunks)
        dataset = _dataset(cfg, cfg.data.split, audio_encoder, denoiser, self.num_frames, random_windows=True)
        if dataset.samples_per_frame != audio_encoder.samples_per_frame:
            raise ConfigError(
                f"{cfg.data.root} has {dataset.samples_per_frame} audio samples per video frame, the audio encoder "
                f"expects {audio_encoder.samples_per_frame}"
            )
        loader = clip_loader(dataset, tc.batch_size, cfg.data.num_workers)
        if len(loader) == 0:
            raise ConfigError(f"{len(dataset)} training clips are fewer than one batch of {tc.batch_size}")
        trainable = [p for p in model.parameters() if p.requires_grad]
        opt = torch.optim.AdamW(trainable, lr=tc.lr, weight_decay=tc.weight_decay, betas=(0.9, 0.99))
        self.model, self.optimizer, self.loader = accelerator.prepare(model, opt, loader)
        self.trainable = [p for p in self.model.parameters() if p.requires_grad]  # FSDP2 replaces parameters
        self.unwrapped = accelerator.unwrap_model(self.model)
        self.vae, self.denoiser, self.dataset = vae, denoiser, dataset
        self.eval_set = _eval_set(cfg, audio_encoder, denoiser, vae, self.num_frames, device)

    def summary(self, accelerator: Accelerator) -> str:
        dc, asd = self.denoiser.config, self.cfg.asd
        return (
            f"student: {sum(p.numel() for p in self.trainable) / 1e6:.2f}M trainable params ({dc.depth} x "
            f"{dc.width}, block_causal, chunk {dc.chunk_latent_frames} latent frame(s), context {dc.context_chunks}); "
            f"windows of {asd.window_chunks} chunks = {self.num_frames} frames; K schedule "
            f"{list(asd.steps_schedule)}; shift {self.shift:.2f}; {accelerator.num_processes} process(es) on "
            f"{accelerator.device}"
        )

    def batches(self, step: int) -> Iterator:
        return epochs(self.loader, step, self.dataset.set_epoch)

    def train_step(self, batch, step: int) -> StepOutput:
        latents = encode_latents(self.vae, batch["video"], self.cfg.train.sample_posterior)  # (B, C, f, h, w)
        portrait = encode_latents(self.vae, batch["ref"], sample_posterior=False)  # (B, C, 1, h, w)
        draw = self.objective.draw(latents.shape, self.cfg.asd.steps_at(step), self.accelerator.device)
        loss, values = self.model(self.teacher, latents, batch["audio"], portrait, draw)
        return StepOutput(loss, values, samples=latents.shape[0])

    def clipped_parameters(self) -> list[torch.Tensor]:
        return self.trainable

    def evaluate(self, step: int) -> dict:
        steps = self.cfg.asd.steps_at(max(step - 1, 0))  # the K of the last step
        return evaluate(self.model, self.teacher, self.objective, self.eval_set, steps, self.cfg.train.seed)

    def format_eval(self, step: int, result: dict, final: bool) -> str:
        return _format_eval(step, result) + (" (final, EMA weights)" if final else "")

    def export(self, accelerator: Accelerator, folder: Path, step: int) -> None:
        cfg = self.cfg
        state = accelerator.get_state_dict(self.model)
        if accelerator.is_main_process:
            steps = cfg.asd.steps_at(max(cfg.train.max_steps - 1, 0))
            info = StudentInfo(
                steps=steps,
                sigmas=tuple(self.objective.sigmas(steps).tolist()),
                shift=self.shift,
                context_timestep=cfg.asd.context_timestep,
                chunk_latent_frames=self.denoiser.config.chunk_latent_frames,
                context_chunks=self.denoiser.config.context_chunks,
                window_chunks=cfg.asd.window_chunks,
                teacher_substeps=cfg.asd.substeps_at(steps),
                teacher_guidance=replace(self.guidance),
                teacher=self.teacher_name,
                vae=str(self.vae_path),
                step=step,
                audio=audio_path_of(self.unwrapped.audio_encoder),
            )
            folders = export_student(self.unwrapped, state, folder, info)
            print(f"exported EMA weights to {folder} ({', '.join(folders)}, student.json)")


def _student_networks(folder: str, overrides: dict) -> tuple[DenoiserDiT, AudioEncoder, StudentInfo]:
    """The streaming networks and student.json of a student export, or of a pipeline folder (its `training`
    section, with its own vae/): the architecture a teacher-free run fine-tunes (`init`, copied in by the caller)."""
    folder = Path(folder)
    if (folder / StudentInfo.FILE).is_file():
        denoiser, audio_encoder, info = load_student(folder)
    else:
        config = PipelineConfig.read(folder, "init must be a student export (student.json) or a pipeline folder")
        denoiser = load_local(DenoiserDiT, folder / "denoiser", "init denoiser")
        audio_encoder = load_audio_path(config.audio, folder / "audio_encoder", "init audio encoder")
        if config.training is not None:
            own = {f.name: getattr(config.training, f.name) for f in dataclasses.fields(StudentInfo)}
        else:  # a pipeline assembled without training records: its streaming settings are all there is
            own = dict(
                steps=config.steps,
                sigmas=tuple(flow_sigmas(config.steps, config.shift).tolist()),
                shift=config.shift,
                context_timestep=config.context_timestep,
                chunk_latent_frames=config.chunk_latent_frames,
                context_chunks=config.context_chunks,
                window_chunks=config.context_chunks + 1,
                teacher_guidance=Guidance(),
                teacher="",
                step=0,
            )
        info = StudentInfo(**{**own, "vae": str(folder / "vae"), "audio": config.audio})
    unknown = sorted(set(overrides) - set(STREAMING_KEYS))
    if unknown:
        raise ConfigError(f"student: {unknown[0]!r} cannot change; valid keys: {', '.join(STREAMING_KEYS)}")
    student = DenoiserDiT.from_config(denoiser.config, attention_mode="block_causal", **overrides)
    student.null_portrait.requires_grad_(False)
    student.null_audio.requires_grad_(False)
    return student, _fresh_audio(audio_encoder), info


def window_frames(denoiser: DenoiserDiT, window_chunks: int) -> int:
    """Video frames of a window of M chunks from a stream's start: 1 + t*(M*c - 1)."""
    return 1 + denoiser.config.temporal_compression * (window_chunks * denoiser.config.chunk_latent_frames - 1)


def _dataset(
    cfg: StudentExperiment,
    split: str,
    audio_encoder: AudioEncoder,
    denoiser: DenoiserDiT,
    num_frames: int,
    random_windows: bool,
) -> TalkingClipDataset:
    lookahead = audio_encoder.lookahead_frames + denoiser.config.audio_lookahead
    temporal_compression = denoiser.config.temporal_compression
    phonetic = isinstance(audio_encoder, PhoneticAudioEncoder)
    return clip_dataset(
        cfg.data, cfg.train.seed, split, num_frames, temporal_compression, lookahead, random_windows, phonetic
    )


@dataclass
class EvalBatch:
    """A fixed evaluation batch on the device."""

    latents: torch.Tensor  # (B, C, f, h, w) posterior means
    audio: torch.Tensor  # (B, N)
    portrait: torch.Tensor  # (B, C, 1, h, w)


def _eval_set(
    cfg: StudentExperiment,
    audio_encoder: AudioEncoder,
    denoiser: DenoiserDiT,
    vae: CausalVideoVAE,
    num_frames: int,
    device: torch.device,
) -> list[EvalBatch]:
    """The middle window of each of `eval_clips` clips of the evaluation split (`clips_in_turn`), encoded once."""
    split = cfg.data.eval_split or cfg.data.split
    dataset = _dataset(cfg, split, audio_encoder, denoiser, num_frames, random_windows=False)
    n = min(cfg.train.eval_clips, len(dataset))
    items = collate_clips([dataset[i] for i in range(n)])
    batches = []
    for start in range(0, n, cfg.train.batch_size):
        part = slice(start, min(start + cfg.train.batch_size, n))
        batches.append(
            EvalBatch(
                latents=encode_latents(vae, items["video"][part].to(device), sample_posterior=False),
                audio=items["audio"][part].to(device),
                portrait=encode_latents(vae, items["ref"][part].to(device), sample_posterior=False),
            )
        )
    return batches


@torch.no_grad()
def evaluate(
    model: nn.Module,
    teacher: nn.Module,
    objective: AsynchronousStreamingDistillation,
    eval_set: list[EvalBatch],
    steps: int,
    seed: int,
) -> dict:
    """Mean ASD losses on the evaluation set at K = `steps`, with noise and levels fixed by `seed` (comparable across
    evaluations at the same K)."""
    generator = torch.Generator().manual_seed(seed + 12345)
    sums: dict[str, float] = {}
    count = 0
    for batch in eval_set:
        draw = objective.draw(batch.latents.shape, steps, batch.latents.device, generator)
        _, logs = model(teacher, batch.latents, batch.audio, batch.portrait, draw)
        b = batch.latents.shape[0]
        for key, value in logs.items():
            sums[f"val_{key}"] = sums.get(f"val_{key}", 0.0) + value * b
        count += b
    return {key: value / count for key, value in sums.items()}


def _format_eval(step: int, result: dict) -> str:
    parts = [f"step {step} | eval"]
    for key in ("val_loss", "val_loss_distill", "val_loss_gt", "val_loss_mouth", "val_K"):
        if key in result:
            parts.append(f"{key} {result[key]:.4f}")
    return " | ".join(parts)


def export_student(model: StudentModel, state: dict[str, torch.Tensor], export: Path, info: StudentInfo) -> list[str]:
    """Write `state` (the StudentModel's full state dict) as `denoiser/` and `audio_encoder/` save_pretrained folders
    plus `student.json` (`info`: the streaming settings the generator must use); the phonetic audio path has no
    weights and no folder. Returns the network folders written."""
    folders = save_networks(model, state, export, info.audio)
    info.write(export)
    return folders


__all__ = [
    "ASDConfig",
    "ASDDraw",
    "AsynchronousStreamingDistillation",
    "StudentDataConfig",
    "StudentExperiment",
    "StudentModel",
    "StudentTrainConfig",
    "StudentTrainer",
    "TeacherNetworks",
    "build_student",
    "draw_levels",
    "evaluate",
    "export_student",
    "segment_levels",
    "train_student",
    "window_frames",
]
