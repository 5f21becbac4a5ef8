"""The face-motion model: the video model's recipe in the rig's space (rest/models/rig.py).

A motion frame (14 rig parameters, normalised by `MotionRig`) is a latent frame of 1 x 1 pixels and one token; the
denoiser is the project's `DenoiserDiT` with `temporal_compression` 1, the audio path is the phonetic channel
(rest/data/phonetic.py: per-frame mouth opening, width and speech of the phones pocketsphinx hears, 3 features), and
the ID-Sink is the rig at rest (`MotionRig.rest_latent`). The emotion is the denoiser's label (`num_emotions`).
The same two stages as the video model's, through the same code:

- `stage: teacher`: the bidirectional denoiser trained with rectified flow (`RectifiedFlowLoss`: synchronous noise,
  clean leading frames for continuation, audio / sink dropout for CFG) on random windows of SynthTalk motion
  clips (`rest synth --motion`), a share of them at a stream's start; the emotion label is dropped to the null label
  with probability `emotion_dropout` (a stream without an emotion asked for).
- `stage: student`: a copy of the teacher switched to block_causal attention with the streaming window of the
  config, distilled by `AsynchronousStreamingDistillation` (rest/training/student.py: self-rollout through
  `rollout_chunk`, the asynchronous levels, the teacher's guided average velocity, the ground-truth term), the
  emotion passed to both networks.

Evaluation (EMA weights, fixed windows of `data.eval_split`, fixed noise and levels): the flow loss with the true
features, another window's features, and the null audio; `audio_gain` = shuffled - true > 0 when the audio is used.

Export (`export/`): `denoiser/`, `rig/` (the normalisation, measured on the training split) and `motion.json`
(`rest.exports.MotionInfo`); rest/pipelines/motion.py loads it.
"""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Literal

import numpy as np
import torch
import torch.nn as nn
from accelerate import Accelerator

from rest.config import ConfigError, to_dict
from rest.data.phonetic import FRAME_CHANNELS
from rest.data.synth.emotion import EMOTIONS
from rest.data.synth.motion_set import MotionClip, load_motion_set
from rest.diffusion.flow import FlowDraw, FlowMatchingConfig, RectifiedFlowLoss, flow_sigmas
from rest.exports import MotionInfo
from rest.models.dit import DenoiserDiT
from rest.models.loading import load_local
from rest.models.rig import RIG_PARAMS, MotionRig
from rest.training.common import TrainConfig
from rest.training.loop import StepOutput, Trainer, training_loop
from rest.training.student import ASDConfig, AsynchronousStreamingDistillation

#################################################################################
#                                    Config                                     #
#################################################################################


@dataclass
class MotionDataConfig:
    root: str  # a motion set (`rest synth --motion ROOT`)
    window_frames: int = 48  # teacher: frames per training window (the student's is asd.window_chunks chunks)
    split: str = "train"
    eval_split: str = "test_id"  # held-out identities (and their voices) for the periodic evaluation
    stream_start_share: float = 0.25  # teacher: share of batches of windows at a clip's start


@dataclass
class MotionTrainConfig(TrainConfig):
    output_dir: str = "runs/motion/teacher"
    batch_size: int = 64
    lr: float = 3e-4
    warmup_steps: int = 200
    max_steps: int = 4000
    log_every: int = 100
    eval_every: int = 1000
    eval_windows: int = 64  # windows in the evaluation set
    emotion_dropout: float = 0.1  # share of windows trained with the null emotion label
    emotion_lr_scale: float = 1.0  # the emotion embedding's rate, times lr (it starts at std 0.02: see the config)


@dataclass
class MotionExperiment:
    data: MotionDataConfig
    stage: Literal["teacher", "student"] = "teacher"
    # DenoiserDiT arguments (teacher); in_channels, audio_dim, temporal_compression and num_emotions are fixed by
    # the rig, the phonetic channel and the emotions, and patch_size is 1
    denoiser: dict = field(default_factory=dict)
    student: dict = field(default_factory=dict)  # student: chunk_latent_frames / context_chunks over the teacher's
    teacher: str | None = None  # student: the teacher export to distil
    flow: FlowMatchingConfig = field(default_factory=lambda: FlowMatchingConfig(shift=1.0))
    asd: ASDConfig = field(default_factory=ASDConfig)
    sample_steps: int = 16  # teacher: default Euler steps of offline sampling (motion.json)
    train: MotionTrainConfig = field(default_factory=MotionTrainConfig)


FIXED = {
    "in_channels": len(RIG_PARAMS),
    "audio_dim": len(FRAME_CHANNELS),
    "temporal_compression": 1,
    "num_emotions": len(EMOTIONS),
    "patch_size": 1,
}
STREAMING_KEYS = ("chunk_latent_frames", "context_chunks")


def build_teacher(cfg: MotionExperiment) -> DenoiserDiT:
    for key, value in FIXED.items():
        if key in cfg.denoiser and cfg.denoiser[key] != value:
            raise ConfigError(f"denoiser.{key} = {cfg.denoiser[key]} is fixed to {value} for motion; remove it")
    if cfg.denoiser.get("attention_mode", "bidirectional") != "bidirectional":
        raise ConfigError("the teacher is bidirectional: remove denoiser.attention_mode from the config")
    return DenoiserDiT(**{**cfg.denoiser, **FIXED})


def build_student(teacher: DenoiserDiT, overrides: dict) -> DenoiserDiT:
    unknown = sorted(set(overrides) - set(STREAMING_KEYS))
    if unknown:
        raise ConfigError(f"student: {unknown[0]!r} cannot change; valid keys: {', '.join(STREAMING_KEYS)}")
    student = DenoiserDiT.from_config(teacher.config, attention_mode="block_causal", **overrides)
    student.load_state_dict(teacher.state_dict(), strict=True)
    student.null_portrait.requires_grad_(False)  # CFG-only parameters: the student has no CFG
    student.null_audio.requires_grad_(False)
    return student


#################################################################################
#                                     Data                                      #
#################################################################################


def measure_rig(clips: list[MotionClip]) -> MotionRig:
    """The normalisation of the rig: per-parameter mean and std over the clips' frames (std floored at 0.01, so a
    parameter that barely moves in the data is not blown up)."""
    frames = np.concatenate([c.rig for c in clips])
    return MotionRig(
        params=RIG_PARAMS,
        mean=tuple(float(v) for v in frames.mean(0)),
        std=tuple(float(v) for v in np.maximum(frames.std(0), 0.01)),
    )


class MotionWindows:
    """Random windows of motion clips, drawn from a generator seeded per step (resuming redraws the same batches).

    A window is (rig latents (P, L, 1, 1), features (L, 3), emotion); a clip is drawn with probability proportional
    to its windows, then the start uniformly (or 0 for a window at the stream's start)."""

    def __init__(self, clips: list[MotionClip], rig: MotionRig, frames: int):
        clips = [c for c in clips if len(c.rig) >= frames]
        if not clips:
            raise ConfigError(f"no clip has {frames} frames for a training window")
        self.clips, self.frames = clips, frames
        with torch.no_grad():
            self.latents = [
                rig.normalize_latents(torch.from_numpy(c.rig).T[None, :, :, None, None])[0] for c in clips
            ]  # (P, F, 1, 1) each
        self.features = [torch.from_numpy(c.features) for c in clips]
        self.emotions = torch.tensor([c.emotion for c in clips])
        starts = np.array([len(c.rig) - frames + 1 for c in clips], np.float64)
        self.weights = torch.from_numpy(starts / starts.sum())

    def __len__(self) -> int:
        return len(self.clips)

    def batch(self, size: int, generator: torch.Generator, at_start: bool) -> dict[str, torch.Tensor]:
        index = torch.multinomial(self.weights, size, replacement=True, generator=generator)
        latents, features = [], []
        for i in index.tolist():
            top = len(self.clips[i].rig) - self.frames
            s = 0 if at_start else int(torch.randint(1, max(top, 1) + 1, (1,), generator=generator))
            s = min(s, top)
            latents.append(self.latents[i][:, s : s + self.frames])
            features.append(self.features[i][s : s + self.frames])
        return {
            "latents": torch.stack(latents),  # (B, P, L, 1, 1)
            "features": torch.stack(features),  # (B, L, 3)
            "emotion": self.emotions[index],  # (B,)
            "first": 0 if at_start else 1,
        }

    def fixed(self, count: int, seed: int) -> dict[str, torch.Tensor]:
        """An evaluation batch: windows from the middle of `count` clips (cycling if there are fewer)."""
        latents, features, emotions = [], [], []
        for k in range(count):
            i = (k * 7919 + seed) % len(self.clips)
            s = (len(self.clips[i].rig) - self.frames) // 2
            latents.append(self.latents[i][:, s : s + self.frames])
            features.append(self.features[i][s : s + self.frames])
            emotions.append(self.emotions[i])
        return {"latents": torch.stack(latents), "features": torch.stack(features), "emotion": torch.stack(emotions)}


#################################################################################
#                                    Models                                     #
#################################################################################


class MotionTeacherModel(nn.Module):
    """The teacher denoiser; forward = the flow-matching loss of a batch of windows."""

    def __init__(self, denoiser: DenoiserDiT, loss: RectifiedFlowLoss):
        super().__init__()
        self.denoiser = denoiser
        self.loss = loss

    def forward(self, latents, features, sink, draw: FlowDraw, emotion, first_latent_frame: int = 0):
        return self.loss(
            self.denoiser, latents, features, sink, draw, emotion=emotion, first_latent_frame=first_latent_frame
        )


class MotionStudentModel(nn.Module):
    """The student denoiser; forward = the ASD loss of a batch of windows (the frozen teacher passed in)."""

    def __init__(self, denoiser: DenoiserDiT, objective: AsynchronousStreamingDistillation):
        super().__init__()
        self.denoiser = denoiser
        self.objective = objective

    def forward(self, teacher: DenoiserDiT, latents, features, sink, draw, emotion):
        return self.objective(self.denoiser, teacher, latents, features, features, sink, draw, emotion)


#################################################################################
#                                   Training                                    #
#################################################################################


def train_motion(cfg: MotionExperiment, resume: str | None = None) -> Path:
    """Train (or resume) and export a motion teacher or student; returns the export folder."""
    if cfg.stage == "student":
        cfg.asd.check()
        if cfg.teacher is None:
            raise ConfigError("stage: student distils a teacher: set teacher: to a motion teacher's export folder")
    return training_loop(MotionTrainer(cfg), cfg.train, to_dict(cfg), resume)


class MotionTrainer(Trainer):
    """The motion model's part of `training_loop` (module docstring)."""

    name = "motion"

    def __init__(self, cfg: MotionExperiment):
        self.cfg = cfg
        self.name = f"motion {cfg.stage}"

    def build(self, accelerator: Accelerator) -> None:
        cfg, tc = self.cfg, self.cfg.train
        self.accelerator = accelerator
        device = accelerator.device
        train = load_motion_set(cfg.data.root, cfg.data.split)
        held_out = load_motion_set(cfg.data.root, cfg.data.eval_split)
        if not train or not held_out:
            raise ConfigError(
                f"{cfg.data.root}: {len(train)} clips in split {cfg.data.split!r}, {len(held_out)} in "
                f"{cfg.data.eval_split!r}; both need clips"
            )
        if cfg.stage == "teacher":
            self.rig = measure_rig(train)
            denoiser = build_teacher(cfg)
            self.teacher, self.teacher_name = None, None
            self.shift = cfg.flow.shift_for(1)
            frames = cfg.data.window_frames
            model = MotionTeacherModel(denoiser, RectifiedFlowLoss(cfg.flow, self.shift))
        else:
            teacher_info = MotionInfo.read(cfg.teacher, "point at the export/ folder of a motion teacher run")
            self.rig = load_local(MotionRig, Path(cfg.teacher) / "rig", "motion rig")
            teacher = load_local(DenoiserDiT, Path(cfg.teacher) / "denoiser", "motion teacher")
            self.teacher = teacher.to(device).eval().requires_grad_(False)
            self.teacher_name, self.shift = str(cfg.teacher), teacher_info.shift
            denoiser = build_student(teacher, cfg.student)
            frames = cfg.asd.window_chunks * denoiser.config.chunk_latent_frames
            self.objective = AsynchronousStreamingDistillation(cfg.asd, self.shift)
            model = MotionStudentModel(denoiser, self.objective)
        self.rig = self.rig.to(device)
        self.windows = MotionWindows(train, self.rig, frames)
        self.eval_batch = {
            k: v.to(device)
            for k, v in MotionWindows(held_out, self.rig, frames).fixed(tc.eval_windows, tc.seed).items()
        }
        trainable = [p for p in model.parameters() if p.requires_grad]
        if tc.emotion_lr_scale <= 0:
            raise ConfigError(f"train.emotion_lr_scale must be > 0, got {tc.emotion_lr_scale}")
        emotion = {id(p) for p in denoiser.emotion_embed.parameters()}
        groups = [
            {"params": [p for p in trainable if id(p) not in emotion]},
            {"params": [p for p in trainable if id(p) in emotion], "lr_scale": tc.emotion_lr_scale},
        ]
        opt = torch.optim.AdamW(groups, lr=tc.lr, weight_decay=tc.weight_decay, betas=(0.9, 0.99))
        self.model, self.optimizer = accelerator.prepare(model, opt)
        self.unwrapped = accelerator.unwrap_model(self.model)
        self.denoiser, self.frames = denoiser, frames
        self.trainable = trainable

    def summary(self, accelerator: Accelerator) -> str:
        dc = self.denoiser.config
        n = sum(p.numel() for p in self.denoiser.parameters()) / 1e6
        stream = (
            f", chunk {dc.chunk_latent_frames} frames, context {dc.context_chunks}"
            if self.cfg.stage == "student"
            else ""
        )
        return (
            f"motion {self.cfg.stage}: {n:.2f}M params ({dc.depth} x {dc.width}, {dc.attention_mode}{stream}); "
            f"{len(self.windows)} clips, windows of {self.frames} frames; shift {self.shift:.2f}; "
            f"{accelerator.num_processes} process(es) on {accelerator.device}"
        )

    def batches(self, step: int) -> Iterator:
        cfg, device = self.cfg, self.accelerator.device
        while True:
            generator = torch.Generator().manual_seed(cfg.train.seed * 1_000_003 + step)
            at_start = cfg.stage == "student" or bool(
                torch.rand((), generator=generator) < cfg.data.stream_start_share
            )
            batch = self.windows.batch(cfg.train.batch_size, generator, at_start)
            drop = torch.rand(cfg.train.batch_size, generator=generator) < cfg.train.emotion_dropout
            batch["emotion"] = torch.where(drop, torch.full_like(batch["emotion"], len(EMOTIONS)), batch["emotion"])
            yield {k: v.to(device) if torch.is_tensor(v) else v for k, v in batch.items()}
            step += 1

    def train_step(self, batch, step: int) -> StepOutput:
        latents, b = batch["latents"], batch["latents"].shape[0]
        sink = self.rig.rest_latent(b)
        if self.cfg.stage == "teacher":
            draw = self.unwrapped.loss.draw(latents.shape, self.accelerator.device)
            loss, values = self.model(latents, batch["features"], sink, draw, batch["emotion"], batch["first"])
        else:
            draw = self.objective.draw(latents.shape, self.cfg.asd.steps_at(step), self.accelerator.device)
            loss, values = self.model(self.teacher, latents, batch["features"], sink, draw, batch["emotion"])
        return StepOutput(loss, values, samples=b)

    def clipped_parameters(self) -> list[torch.Tensor]:
        return self.trainable

    @torch.no_grad()
    def evaluate(self, step: int) -> dict:
        batch = self.eval_batch
        latents, b = batch["latents"], batch["latents"].shape[0]
        sink = self.rig.rest_latent(b)
        generator = torch.Generator().manual_seed(self.cfg.train.seed + 12345)
        shuffled = batch["features"].roll(1, dims=0)
        if self.cfg.stage == "teacher":
            loss = self.unwrapped.loss
            base = loss.draw(latents.shape, "cpu", generator)
            draw = FlowDraw(
                base.noise.to(latents.device),
                base.t.to(latents.device),
                torch.ones_like(base.in_loss).to(latents.device),
                torch.zeros(b, dtype=torch.bool, device=latents.device),
                torch.zeros(b, dtype=torch.bool, device=latents.device),
            )
            null = replace(draw, drop_audio=torch.ones_like(draw.drop_audio))
            run = lambda f, d: loss(self.unwrapped.denoiser, latents, f, sink, d, emotion=batch["emotion"])[0].item()  # noqa: E731
            out = {"val_loss": run(batch["features"], draw), "val_loss_shuffled_audio": run(shuffled, draw)}
            out["val_loss_null_audio"] = run(batch["features"], null)
        else:
            steps = self.cfg.asd.steps_at(max(step - 1, 0))
            draw = self.objective.draw(latents.shape, steps, latents.device, generator)
            run = lambda f: self.objective(  # noqa: E731
                self.unwrapped.denoiser, self.teacher, latents, f, f, sink, draw, batch["emotion"]
            )[1]
            own, other = run(batch["features"]), run(shuffled)
            out = {
                "val_loss": own["loss"],
                "val_loss_shuffled_audio": other["loss"],
                "val_distill": own["loss_distill"],
            }
        out["audio_gain"] = out["val_loss_shuffled_audio"] - out["val_loss"]
        return out

    def format_eval(self, step: int, result: dict, final: bool) -> str:
        parts = [f"step {step} | eval"] + [f"{k} {v:.4f}" for k, v in result.items()]
        return " | ".join(parts) + (" (final, EMA weights)" if final else "")

    def export(self, accelerator: Accelerator, folder: Path, step: int) -> None:
        state = accelerator.get_state_dict(self.model)
        if not accelerator.is_main_process:
            return
        cfg = self.cfg
        weights = {k[len("denoiser.") :]: v for k, v in state.items() if k.startswith("denoiser.")}
        fresh = DenoiserDiT.from_config(self.denoiser.config)
        fresh.load_state_dict(weights, strict=True)
        fresh.save_pretrained(folder / "denoiser")
        self.rig.save_pretrained(folder / "rig")
        steps = cfg.sample_steps if cfg.stage == "teacher" else cfg.asd.steps_at(max(cfg.train.max_steps - 1, 0))
        MotionInfo(
            stage=cfg.stage,
            audio="phonetic",
            emotions=EMOTIONS,
            shift=self.shift,
            steps=steps,
            sigmas=tuple(flow_sigmas(steps, self.shift).tolist()),
            context_timestep=cfg.asd.context_timestep if cfg.stage == "student" else 0.0,
            window_frames=self.frames,
            teacher=self.teacher_name,
            step=step,
        ).write(folder)
        print(f"exported EMA weights to {folder} (denoiser/, rig/, motion.json)")


__all__ = [
    "MotionDataConfig",
    "MotionExperiment",
    "MotionTrainConfig",
    "MotionTrainer",
    "MotionWindows",
    "build_student",
    "build_teacher",
    "measure_rig",
    "train_motion",
]
