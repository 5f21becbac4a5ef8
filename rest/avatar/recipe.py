"""`rest avatar train`: one speaker's video -> a person-specific pipeline folder (rest/avatar/__init__.py).

The work folder (`<output>.work` unless given) holds each stage's state, so a rerun of the same command resumes:

    data/       shard root of the training segments (split "train"), portrait.png, split.json
    heldout/    shard root of the held-out part (one clip, split "heldout")
    vae/        the VAE run (checkpoints/, metrics.jsonl, export/), done.json when finished
    student/    the student run, done.json when finished

A finished stage is skipped; an unfinished one resumes from its latest checkpoint. Each stage trains until its
step count or its share of the time budget (`minutes`: 40% VAE, then the student at least 60%, more when the VAE
finished early), whichever comes first.
"""

from __future__ import annotations

import json
import shutil
import time
from dataclasses import dataclass, fields
from pathlib import Path

import numpy as np
from PIL import Image

from rest.config import VAEArch
from rest.data.preprocess import PreprocessOptions, SkipClip, cache_phonetic, preprocess_video
from rest.data.shards import ShardWriter
from rest.errors import RestError
from rest.exports import PipelineConfig, load_vae
from rest.pipelines.talking_head import export_pipeline
from rest.training.student import ASDConfig, StudentDataConfig, StudentExperiment, StudentTrainConfig, train_student
from rest.training.vae import VAEDataConfig, VAEExperiment, VAELossConfig, VAETrainConfig, train_vae

AVATAR_FILE = "avatar.json"
PORTRAIT_FILE = "portrait.png"
BATCH_SIZE = 4  # student clips per step; the training part is cut into at least this many segments
MIN_SEGMENT_FRAMES = 40  # a segment holds a training window (21 frames + audio look-ahead) and a reference apart
VAE_SHARE = 0.4  # of the time budget; the student gets the rest


@dataclass
class AvatarOptions:
    video: Path  # one speaker, frontal, steady light; 1-5 minutes is the intended length
    output: Path  # the pipeline folder to write
    base: Path = Path("weights/rest-tiny")  # the pipeline fine-tuned from
    work: Path | None = None  # stage state; None = <output>.work
    holdout: float = 0.2  # the last share of the video, never trained on: the report's footage
    minutes: float = 60.0  # training time budget of both stages together
    vae_steps: int = 1000  # at most; 2 CPU cores run about 0.7 steps/s (24 min)
    student_steps: int = 900  # at most; 2 CPU cores run about 0.4 steps/s (36 min)
    segment_seconds: float = 4.0  # length of a training clip
    video_is_crop: bool = False  # the video already is a face crop (no face detection)
    max_seconds: float | None = None  # use only the video's first seconds (None: all of it)
    # also train the student against the ground truth from its own rollout (rest/training/student.py, no teacher);
    # twice the time a step; at equal wall time not better on average over three real clips (docs/experiments.md)
    rollout_loss: bool = False
    seed: int = 0

    @property
    def work_dir(self) -> Path:
        return self.work if self.work is not None else self.output.with_name(self.output.name + ".work")

    def check(self) -> None:
        if not self.video.is_file():
            raise RestError(f"--video {self.video}: no such file")
        if not 0.05 <= self.holdout <= 0.5:
            raise RestError(f"--holdout {self.holdout}: must be between 0.05 and 0.5 (a share of the video)")
        if not self.minutes > 0:
            raise RestError(f"--minutes {self.minutes}: must be a positive number of minutes")
        if self.max_seconds is not None and not self.max_seconds > 0:
            raise RestError(f"--max-seconds {self.max_seconds}: must be a positive number of seconds")
        if self.vae_steps < 1 or self.student_steps < 1:
            raise RestError("--vae-steps and --student-steps must be >= 1")
        if self.output.exists() and not (self.output / AVATAR_FILE).is_file():
            raise RestError(f"--output {self.output}: exists and is not an avatar folder; name a new folder")
        PipelineConfig.read(self.base)  # a clear error before any work when the base is not a pipeline


#################################################################################
#                                    Stages                                     #
#################################################################################


def prepare(opts: AvatarOptions, config: PipelineConfig) -> dict:
    """Crop and split the video into the work folder (skipped when done); returns split.json's content."""
    data, heldout = opts.work_dir / "data", opts.work_dir / "heldout"
    marker = data / "split.json"
    if marker.is_file():
        split = json.loads(marker.read_text())
        if split["video"] != str(opts.video):
            raise RestError(
                f"{opts.work_dir} holds an avatar of {split['video']}, not {opts.video}: give another --output (or "
                "--work), or delete that folder to start over"
            )
        return split
    for folder in (data, heldout):  # an interrupted prepare left partial shards: start it over
        shutil.rmtree(folder, ignore_errors=True)
    t0 = time.perf_counter()
    options = PreprocessOptions(
        resolution=config.resolution,
        fps=config.fps,
        sample_rate=config.sample_rate,
        max_seconds=opts.max_seconds,
        face_crop=not opts.video_is_crop,
    )
    detector = None
    if not opts.video_is_crop:
        from rest.data.face import FaceDetector

        detector = FaceDetector("auto")
    try:
        clip = preprocess_video(opts.video, options, detector)
    except SkipClip as err:
        raise RestError(f"{opts.video}: {err}") from None
    frames, audio = clip.frames, clip.audio
    spf = config.sample_rate // config.fps
    total = len(frames)
    train_frames = total - max(1, round(total * opts.holdout))
    segment = min(round(opts.segment_seconds * config.fps), train_frames // BATCH_SIZE)
    if segment < MIN_SEGMENT_FRAMES:
        need = (BATCH_SIZE * MIN_SEGMENT_FRAMES / (1 - opts.holdout)) / config.fps
        raise RestError(
            f"{opts.video}: {total / config.fps:.1f} s is too short for an avatar; it needs at least {need:.0f} s "
            f"({BATCH_SIZE} training segments of {MIN_SEGMENT_FRAMES / config.fps:.1f} s, plus the held-out "
            f"{opts.holdout:.0%}); 1-5 minutes work best"
        )
    starts = list(range(0, train_frames - segment + 1, segment))
    writer = ShardWriter(data, resolution=config.resolution, fps=config.fps, sample_rate=config.sample_rate)
    for i, s in enumerate(starts):
        e = train_frames if i == len(starts) - 1 else s + segment  # the last segment takes the remainder
        writer.write_clip(f"segment{i:04d}", frames[s:e], audio[s * spf : e * spf], source=str(opts.video))
    ShardWriter(heldout, resolution=config.resolution, fps=config.fps, sample_rate=config.sample_rate).write_clip(
        "heldout", frames[train_frames:], audio[train_frames * spf :], split="heldout", source=str(opts.video)
    )
    Image.fromarray(frames[typical_frame(frames[:train_frames])]).save(data / PORTRAIT_FILE)
    if config.audio == "phonetic":  # a base on the phonetic channel trains on its features of the person's speech
        cache_phonetic(data, progress=False)
        cache_phonetic(heldout, progress=False)
    split = {
        "video": str(opts.video),
        "frames": total,
        "train_frames": train_frames,
        "heldout_frames": total - train_frames,
        "segments": len(starts),
        "seconds": round(time.perf_counter() - t0, 1),
    }
    marker.write_text(json.dumps(split, indent=2) + "\n")
    return split


def typical_frame(frames: np.ndarray, size: int = 32) -> int:
    """The frame closest to the mean frame (at `size` px): the person's usual pose and expression, the portrait."""
    step = max(1, frames.shape[1] // size)
    small = frames[:, ::step, ::step].astype(np.float32)
    return int(((small - small.mean(axis=0)) ** 2).mean(axis=(1, 2, 3)).argmin())


def _stage(folder: Path, run) -> dict:
    """Run a training stage unless done.json says it finished; resumes an interrupted run. Returns done.json."""
    done = folder / "done.json"
    if done.is_file():
        return json.loads(done.read_text())
    t0 = time.perf_counter()
    export = run("latest")
    metrics = [json.loads(line) for line in (folder / "metrics.jsonl").read_text().splitlines() if line.strip()]
    steps = max((m["step"] for m in metrics if "step" in m), default=0)
    record = {"export": str(export), "steps": steps, "seconds": round(time.perf_counter() - t0, 1)}
    done.write_text(json.dumps(record, indent=2) + "\n")
    return record


def fine_tune_vae(opts: AvatarOptions, config: PipelineConfig, minutes: float) -> dict:
    base = load_vae(opts.base / "vae", "base VAE").config
    arch = {f.name: base[f.name] for f in fields(VAEArch) if f.name not in ("scaling_factor", "shift_factor")}
    experiment = VAEExperiment(
        data=VAEDataConfig(
            root=str(opts.work_dir / "data" / "clips"),
            resolution=config.resolution,
            num_frames=9,
            context_frames=9,  # warm causal caches, as a stream has
            crop="center",  # already face crops
        ),
        preset=config.preset,
        model=arch,
        init=str(opts.base / "vae"),
        keep_latent_scale=True,
        loss=VAELossConfig(kl_weight=1e-6, motion_weight=1.0, temporal_weight=3.0),  # the demo VAE's losses
        train=VAETrainConfig(
            output_dir=str(opts.work_dir / "vae"),
            seed=opts.seed,
            batch_size=2,
            lr=1e-4,
            warmup_steps=min(50, opts.vae_steps // 10),
            max_steps=opts.vae_steps,
            max_minutes=minutes,
            ema_decay=0.99,
            log_every=50,
            eval_every=0,
            checkpoint_every=100,
        ),
    )
    return _stage(opts.work_dir / "vae", lambda resume: train_vae(experiment, resume))


def fine_tune_student(opts: AvatarOptions, config: PipelineConfig, vae: str, minutes: float) -> dict:
    experiment = StudentExperiment(
        teacher=None,
        data=StudentDataConfig(root=str(opts.work_dir / "data")),
        init=str(opts.base),
        vae=vae,
        asd=ASDConfig(
            window_chunks=6,
            steps_schedule=((0, config.steps),),
            # no teacher knows this person: the ground truth is the target, by teacher forcing, and with
            # `rollout_loss` also seen from the student's own rollout (the drift a stream meets; 2x the time a step)
            distill_weight=1.0 if opts.rollout_loss else 0.0,
            gt_loss_weight=1.0,
            context_timestep=config.context_timestep,
        ),
        train=StudentTrainConfig(
            output_dir=str(opts.work_dir / "student"),
            seed=opts.seed,
            batch_size=BATCH_SIZE,
            lr=1e-4,
            warmup_steps=min(50, opts.student_steps // 10),
            max_steps=opts.student_steps,
            max_minutes=minutes,
            ema_decay=0.99,
            log_every=25,
            eval_every=0,
            eval_clips=BATCH_SIZE,
            checkpoint_every=100,
            train_audio_encoder=True,  # the person's own speech (the phonetic channel has no weights to train)
        ),
    )
    return _stage(opts.work_dir / "student", lambda resume: train_student(experiment, resume))


#################################################################################
#                                  The recipe                                   #
#################################################################################


def train_avatar(opts: AvatarOptions, log=print) -> Path:
    """Every stage (module docstring), then the pipeline folder at `opts.output`; returns it."""
    opts.check()
    config = PipelineConfig.read(opts.base)
    work = opts.work_dir
    work.mkdir(parents=True, exist_ok=True)
    vae_minutes, student_minutes = VAE_SHARE * opts.minutes, (1 - VAE_SHARE) * opts.minutes
    log(
        f"avatar: {opts.video} -> {opts.output} (work folder {work}); fine-tuning {opts.base}: VAE up to "
        f"{opts.vae_steps} steps or {vae_minutes:.0f} min, student up to {opts.student_steps} steps or "
        f"{student_minutes:.0f} min, whichever comes first (a GPU, when there is one, reaches the steps first)"
    )
    split = prepare(opts, config)
    log(
        f"prepare: {split['frames']} frames; training on the first {split['train_frames']} "
        f"({split['segments']} segments), holding out the last {split['heldout_frames']}"
    )
    vae = fine_tune_vae(opts, config, vae_minutes)
    log(f"vae: {vae['steps']} steps, {vae['seconds'] / 60:.1f} min")
    student_minutes = max(opts.minutes - vae["seconds"] / 60, student_minutes)  # what the VAE left over
    student = fine_tune_student(opts, config, vae["export"], student_minutes)
    log(f"student: {student['steps']} steps, {student['seconds'] / 60:.1f} min")
    export_pipeline(student["export"], opts.output, vae=vae["export"], preset=config.preset)
    shutil.copy(work / "data" / PORTRAIT_FILE, opts.output / PORTRAIT_FILE)
    record = {
        "video": str(opts.video),
        "base": str(opts.base),
        "work": str(work),
        "data": str(work / "data"),
        "heldout": str(work / "heldout"),
        "portrait": PORTRAIT_FILE,
        "split": split,
        "stages": {"vae": vae, "student": student},
    }
    (opts.output / AVATAR_FILE).write_text(json.dumps(record, indent=2) + "\n")
    log(f"wrote {opts.output}: rest generate --weights {opts.output} --audio SPEECH --output VIDEO.mp4")
    return opts.output


__all__ = ["AVATAR_FILE", "AvatarOptions", "PORTRAIT_FILE", "prepare", "train_avatar", "typical_frame"]
