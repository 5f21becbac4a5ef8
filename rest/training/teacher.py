"""Stage 1 of ASD: train the bidirectional teacher (denoiser DiT + audio encoder) with rectified flow.

Each step reads clips of F = 1 + t*k frames with their audio and a reference frame (TalkingClipDataset), encodes
video and reference with the frozen, pretrained VAE (no gradients; latents normalised with the VAE's measured
scale), and trains the audio encoder jointly with the denoiser (at `audio_encoder_lr_scale` times the rate; 0
freezes it) on the flow-matching loss of rest/diffusion/flow.py: synchronous noise, a share of clips with clean
leading frames (continuation), and independent audio / portrait dropout for classifier-free guidance. Both networks
start fresh, or from `init` (a teacher export: fine-tuning); the audio encoder from `audio_encoder_init` instead
(an AudioEncoder folder, e.g. the audio expert of rest/training/audio_expert.py). With `audio_path: phonetic` the
audio path is the phonetic channel instead (rest/data/phonetic.py: the phones an acoustic model trained on real
speech hears, drawn as SynthTalk's visemes; no parameters, features cached by `rest preprocess --phonetic`).

Runs unchanged on CPU, one GPU or many through accelerate (`accelerate launch train/teacher.py --config ...`;
configs/accelerate/ddp.yaml or fsdp.yaml). The two trained networks live in one module (`TeacherModel`) so that
DDP, FSDP, the EMA and the checkpoints each see a single model.

A run folder holds `checkpoints/` (resumable accelerate state: weights, optimizer, EMA, RNG, step),
`metrics.jsonl` (status lines and evaluations), and `export/` (EMA weights in save_pretrained layout:
`export/denoiser/`, `export/audio_encoder/`, plus `export/teacher.json` with the VAE path, the timestep shift and
the latent frames of a training clip, the window offline sampling uses).

Evaluation (every `eval_every` steps, EMA weights, fixed clips, noise and levels): `val_loss` with the true audio,
`val_loss_shuffled_audio` with the audio of another clip of the evaluation set, and `val_loss_null_audio` with
the null audio. `audio_gain = val_loss_shuffled_audio - val_loss` > 0 means the model uses the audio it is given.
"""

from __future__ import annotations

import inspect
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Protocol

import torch
import torch.nn as nn
from accelerate import Accelerator
from torch.utils.data import DataLoader

from rest.config import ConfigError, get_preset, to_dict
from rest.data.augment import AugmentConfig
from rest.data.dataset import StreamStartBatchSampler, TalkingClipDataset, TalkingLatentDataset
from rest.data.phonetic import PhoneticAudioEncoder
from rest.data.preprocess import vae_fingerprint
from rest.diffusion.flow import FlowDraw, FlowMatchingConfig, RectifiedFlowLoss, shift_timesteps
from rest.exports import AUDIO_PATHS, TEACHER_HINT, TeacherInfo
from rest.models.audio import AudioEncoder
from rest.models.dit import DenoiserDiT
from rest.models.loading import load_local
from rest.models.vae import CausalVideoVAE
from rest.training.common import TrainConfig, save_networks, start_from
from rest.training.loop import StepOutput, Trainer, epochs, training_loop

#################################################################################
#                                    Config                                     #
#################################################################################


@dataclass
class TeacherDataConfig:
    root: str  # shard root written by `rest preprocess` or SynthTalk
    num_frames: int = 33  # video frames per clip, 1 + t*k (33 = 9 latent frames at t = 4)
    latents: bool = False  # read latents cached by `rest preprocess --vae` (no VAE encoder in the step; windows
    # inside streams, as the student generates them) instead of encoding frames of fresh windows
    stream_start_share: float = 0.25  # with latents: share of batches of windows at a stream's start
    split: str = "train"
    eval_split: str | None = None  # clips of the periodic evaluation; None = the training split
    ref_min_gap: int | None = None  # min. distance (frames) of the reference from the clip; None = num_frames
    num_workers: int = 0  # DataLoader workers
    augment_audio: bool = False  # training windows' audio through rest.data.augment (real-speech robustness)


@dataclass
class TeacherTrainConfig(TrainConfig):
    output_dir: str = "runs/teacher"
    lr: float = 2e-4
    warmup_steps: int = 500
    max_steps: int = 20000
    gradient_checkpointing: bool = False  # recompute DiT blocks in the backward pass (less memory, ~30% slower)
    sample_posterior: bool = True  # video latents drawn from the VAE posterior (False: its mean); portrait: mean
    eval_clips: int = 8  # clips in the evaluation set
    # Learning rate of the audio encoder relative to `lr`; 0 freezes it at its initialisation. Trained from scratch
    # at the full rate on data whose mouth is a small part of the loss, the encoder's output can collapse to one
    # constant vector before the denoiser has found a use for it (audio_gain then stays at 0 for good).
    audio_encoder_lr_scale: float = 1.0


@dataclass
class TeacherExperiment:
    data: TeacherDataConfig
    vae: str  # folder of the pretrained VAE (save_pretrained layout), e.g. runs/vae_tiny/export
    preset: str = "tiny"
    denoiser: dict = field(default_factory=dict)  # DenoiserDiT arguments over the preset's (depth, width, ...)
    audio_encoder: dict = field(default_factory=dict)  # AudioEncoder arguments over its defaults
    # "mel": the learned AudioEncoder on log-mel frames; "phonetic": the phonetic channel (PhoneticAudioEncoder),
    # whose features the clips carry (`rest preprocess --output ROOT --phonetic`)
    audio_path: str = "mel"
    flow: FlowMatchingConfig = field(default_factory=FlowMatchingConfig)
    train: TeacherTrainConfig = field(default_factory=TeacherTrainConfig)
    init: str | None = None  # a teacher export (denoiser/, audio_encoder/) to start from: fine-tuning
    # An AudioEncoder folder to start the audio encoder from (train/audio_expert.py); wins over init's.
    audio_encoder_init: str | None = None

    def build_models(self, vae: CausalVideoVAE) -> tuple[DenoiserDiT, AudioEncoder | PhoneticAudioEncoder]:
        """The denoiser and audio encoder: fresh, or with the weights of `init` / `audio_encoder_init` (whose
        architecture must be the config's). Latent channels, temporal compression and the audio width are taken
        from the VAE and the audio encoder, and an override that contradicts them is an error."""
        if self.audio_path not in AUDIO_PATHS:
            raise ConfigError(f"audio_path must be one of {', '.join(AUDIO_PATHS)}, got {self.audio_path!r}")
        if self.audio_path == "phonetic":
            if self.audio_encoder or self.audio_encoder_init:
                raise ConfigError("audio_path phonetic has no audio encoder: remove audio_encoder, audio_encoder_init")
            if self.data.augment_audio:
                raise ConfigError("audio_path phonetic reads features decoded once per clip: set augment_audio false")
        _check_arguments(AudioEncoder, self.audio_encoder, "audio_encoder")
        _check_arguments(DenoiserDiT, self.denoiser, "denoiser")
        audio_encoder = PhoneticAudioEncoder() if self.audio_path == "phonetic" else AudioEncoder(**self.audio_encoder)
        derived = {
            "in_channels": vae.config.latent_channels,
            "temporal_compression": vae.temporal_compression,
            "audio_dim": audio_encoder.config.out_dim,
        }
        for key, value in derived.items():
            if key in self.denoiser and self.denoiser[key] != value:
                raise ConfigError(
                    f"denoiser.{key} = {self.denoiser[key]} contradicts the value {value} fixed by the VAE / audio "
                    f"encoder; remove it from the config"
                )
        get_preset(self.preset)
        denoiser = DenoiserDiT.from_preset(self.preset, **{**self.denoiser, **derived})
        if denoiser.attention_mode != "bidirectional":
            raise ConfigError("the teacher is bidirectional: remove denoiser.attention_mode from the config")
        if self.init is not None:
            start_from(denoiser, Path(self.init) / "denoiser", "init", "denoiser")
        audio_init = self.audio_encoder_init or (self.init and str(Path(self.init) / "audio_encoder"))
        if self.init is not None and (Path(self.init) / TeacherInfo.FILE).is_file():
            init_audio = TeacherInfo.read(self.init, TEACHER_HINT).audio
            if init_audio != self.audio_path:
                raise ConfigError(f"init {self.init} reads the {init_audio} audio path, this config {self.audio_path}")
        if audio_init and self.audio_path == "mel":
            start_from(
                audio_encoder, audio_init, "audio_encoder_init" if self.audio_encoder_init else "init", "audio_encoder"
            )
        return denoiser, audio_encoder


def _check_arguments(cls: type, overrides: dict, where: str) -> None:
    valid = set(inspect.signature(cls.__init__).parameters) - {"self"}
    unknown = sorted(set(overrides) - valid)
    if unknown:
        raise ConfigError(
            f"{where}: unknown key {unknown[0]!r} for {cls.__name__} (valid keys: {', '.join(sorted(valid))})"
        )


#################################################################################
#                                    Model                                      #
#################################################################################


class TeacherModel(nn.Module):
    """The denoiser and the audio encoder trained together; forward = audio features -> flow-matching loss."""

    def __init__(self, denoiser: DenoiserDiT, audio_encoder: AudioEncoder, loss: RectifiedFlowLoss):
        super().__init__()
        self.denoiser = denoiser
        self.audio_encoder = audio_encoder
        self.loss = loss

    def forward(
        self,
        latents: torch.Tensor,
        audio: torch.Tensor,
        portrait: torch.Tensor,
        draw: FlowDraw,
        first_latent_frame: int = 0,
    ) -> tuple[torch.Tensor, dict[str, float]]:
        """latents: (B, C, f, h, w) clean, normalised; audio: (B, N) samples; portrait: (B, C, 1, h, w);
        first_latent_frame: 0 at a stream's start, 1 for a window inside a stream (RectifiedFlowLoss)."""
        features = self.audio_encoder(audio)  # (B, N // samples_per_frame, D)
        return self.loss(self.denoiser, latents, features, portrait, draw, first_latent_frame=first_latent_frame)


def collate_clips(items: list[dict]) -> dict[str, torch.Tensor]:
    """Stack the fields the teacher uses (the per-frame metadata may hold strings, which default_collate refuses)."""
    return {key: torch.stack([item[key] for item in items]) for key in ("video", "audio", "ref")}


def collate_latent_windows(items: list[dict]) -> dict:
    """Stack TalkingLatentDataset items; a batch shares `first_latent_frame` (StreamStartBatchSampler)."""
    first = {item["first_latent_frame"] for item in items}
    if len(first) != 1:
        raise ValueError(f"a batch mixes stream starts and continuations: first_latent_frame {sorted(first)}")
    batch = {key: torch.stack([item[key] for item in items]) for key in ("mean", "logvar", "audio", "ref")}
    batch["first_latent_frame"] = first.pop()
    return batch


def batch_latents(vae: CausalVideoVAE, batch: dict, sample_posterior: bool) -> tuple[torch.Tensor, int]:
    """Normalised video latents (B, C, f, h, w) of a batch and its first_latent_frame: encoded from the frames,
    or drawn from the cached posterior (`data.latents`)."""
    if "mean" not in batch:
        return encode_latents(vae, batch["video"], sample_posterior), 0
    mean, logvar = batch["mean"], batch["logvar"]
    if sample_posterior:
        mean = mean + torch.exp(0.5 * logvar.clamp(-30.0, 20.0)) * torch.randn_like(mean)
    return vae.normalize_latents(mean), batch["first_latent_frame"]


@torch.no_grad()
def encode_latents(vae: CausalVideoVAE, pixels: torch.Tensor, sample_posterior: bool) -> torch.Tensor:
    """Pixels (B, 3, F, H, W) in [-1, 1] -> normalised latents (B, C, f, h, w), without gradients."""
    posterior = vae.encode(pixels).latent_dist
    return vae.normalize_latents(posterior.sample() if sample_posterior else posterior.mode())


#################################################################################
#                                   Training                                    #
#################################################################################


def train_teacher(cfg: TeacherExperiment, resume: str | None = None) -> Path:
    """Train (or resume) and export the teacher; returns the export folder."""
    if cfg.train.audio_encoder_lr_scale < 0:
        raise ConfigError(f"train.audio_encoder_lr_scale must be >= 0, got {cfg.train.audio_encoder_lr_scale}")
    return training_loop(TeacherTrainer(cfg), cfg.train, to_dict(cfg), resume)


class TeacherTrainer(Trainer):
    """The teacher's part of `training_loop`: frozen VAE, TeacherModel, clip or latent data, flow-matching loss."""

    name = "teacher"

    def __init__(self, cfg: TeacherExperiment):
        self.cfg = cfg

    def build(self, accelerator: Accelerator) -> None:
        cfg, tc = self.cfg, self.cfg.train
        self.accelerator = accelerator
        device = accelerator.device
        vae = load_local(CausalVideoVAE, cfg.vae, "VAE").to(device).eval().requires_grad_(False)
        denoiser, audio_encoder = cfg.build_models(vae)
        if tc.gradient_checkpointing:
            denoiser.enable_gradient_checkpointing()
        dataset = _dataset(cfg, cfg.data.split, audio_encoder, denoiser, vae, random_windows=True)
        if dataset.samples_per_frame != audio_encoder.samples_per_frame:
            raise ConfigError(
                f"{cfg.data.root} has {dataset.samples_per_frame} audio samples per video frame, the audio encoder "
                f"expects {audio_encoder.samples_per_frame}; set audio_encoder.sample_rate / fps to match the shards"
            )
        latent_size = dataset.reader.resolution // vae.spatial_compression
        shift = cfg.flow.shift_for(denoiser.tokens_per_frame(latent_size, latent_size))
        model = TeacherModel(denoiser, audio_encoder, RectifiedFlowLoss(cfg.flow, shift))
        if cfg.data.latents:
            sampler = StreamStartBatchSampler(dataset, tc.batch_size, cfg.data.stream_start_share, seed=tc.seed)
            loader = DataLoader(
                dataset, batch_sampler=sampler, num_workers=cfg.data.num_workers, collate_fn=collate_latent_windows
            )
        else:
            loader = clip_loader(dataset, tc.batch_size, cfg.data.num_workers)
        if len(loader) == 0:
            raise ConfigError(f"{len(dataset)} training clips are fewer than one batch of {tc.batch_size}")
        groups = [{"params": [p for name, p in model.named_parameters() if not name.startswith("audio_encoder.")]}]
        if tc.audio_encoder_lr_scale > 0 and any(True for _ in audio_encoder.parameters()):
            groups.append({"params": list(audio_encoder.parameters()), "lr_scale": tc.audio_encoder_lr_scale})
        else:
            audio_encoder.requires_grad_(False)
        opt = torch.optim.AdamW(groups, lr=tc.lr, weight_decay=tc.weight_decay, betas=(0.9, 0.99))
        self.model, self.optimizer, self.loader = accelerator.prepare(model, opt, loader)
        self.unwrapped = accelerator.unwrap_model(self.model)
        self.vae, self.denoiser, self.audio_encoder = vae, denoiser, audio_encoder
        self.dataset, self.shift = dataset, shift
        self.eval_set = _eval_set(cfg, audio_encoder, denoiser, vae, shift, device)

    def summary(self, accelerator: Accelerator) -> str:
        count = lambda m: sum(p.numel() for p in m.parameters()) / 1e6  # noqa: E731
        cfg, vae, denoiser = self.cfg, self.vae, self.denoiser
        resolution = self.dataset.reader.resolution
        latent_size = resolution // vae.spatial_compression
        return (
            f"teacher: denoiser {count(denoiser):.2f}M params ({denoiser.config.depth} x {denoiser.config.width}), "
            f"audio encoder {count(self.audio_encoder):.2f}M; {len(self.dataset)} clips of {cfg.data.num_frames} "
            f"frames at {resolution}px -> {vae.num_latent_frames(cfg.data.num_frames)} x {latent_size}x{latent_size} "
            f"latents; shift {self.shift:.2f}; {accelerator.num_processes} process(es) on {accelerator.device}"
        )

    def batches(self, step: int) -> Iterator:
        return epochs(self.loader, step, self.dataset.set_epoch)  # new windows and references each epoch

    def train_step(self, batch, step: int) -> StepOutput:
        latents, first = batch_latents(self.vae, batch, self.cfg.train.sample_posterior)  # (B, C, f, h, w)
        portrait = encode_latents(self.vae, batch["ref"], sample_posterior=False)  # (B, C, 1, h, w)
        draw = self.unwrapped.loss.draw(latents.shape, self.accelerator.device)
        loss, values = self.model(latents, batch["audio"], portrait, draw, first_latent_frame=first)
        return StepOutput(loss, values, samples=latents.shape[0])

    def evaluate(self, step: int) -> dict:
        return evaluate(self.model, self.eval_set)  # every process: sharded models need all ranks in the forward

    def format_eval(self, step: int, result: dict, final: bool) -> str:
        return _format_eval(step, result) + (" (final, EMA weights)" if final else "")

    def export(self, accelerator: Accelerator, folder: Path, step: int) -> None:
        state = accelerator.get_state_dict(self.model)  # full weights on the main process, also under FSDP
        if accelerator.is_main_process:
            folders = export_teacher(
                self.unwrapped,
                state,
                folder,
                vae_path=self.cfg.vae,
                shift=self.shift,
                step=step,
                train_latent_frames=self.vae.num_latent_frames(self.cfg.data.num_frames),
                audio=self.cfg.audio_path,
            )
            print(f"exported EMA weights to {folder} ({', '.join(folders)}, teacher.json)")


def _dataset(
    cfg: TeacherExperiment,
    split: str,
    audio_encoder: AudioEncoder,
    denoiser: DenoiserDiT,
    vae: CausalVideoVAE,
    random_windows: bool,
) -> TalkingClipDataset | TalkingLatentDataset:
    # Audio after the clip: the encoder's look-ahead plus the denoiser's, so the last frames hear real audio.
    lookahead = audio_encoder.lookahead_frames + denoiser.config.audio_lookahead
    if cfg.data.latents:
        return TalkingLatentDataset(
            cfg.data.root,
            num_latent_frames=vae.num_latent_frames(cfg.data.num_frames),
            temporal_compression=vae.temporal_compression,
            split=split,
            seed=cfg.train.seed,
            audio_lookahead_frames=lookahead,
            ref_min_gap=cfg.data.ref_min_gap,
            random_windows=random_windows,
            vae_fingerprint=vae_fingerprint(cfg.vae),
            augment_audio=AugmentConfig() if cfg.data.augment_audio and random_windows else None,
            phonetic=cfg.audio_path == "phonetic",
        )
    return clip_dataset(
        cfg.data,
        cfg.train.seed,
        split,
        cfg.data.num_frames,
        vae.temporal_compression,
        lookahead,
        random_windows,
        phonetic=cfg.audio_path == "phonetic",
    )


def clip_loader(dataset: TalkingClipDataset, batch_size: int, num_workers: int) -> DataLoader:
    """Shuffled training batches of whole clip windows (the last, incomplete batch dropped)."""
    return DataLoader(
        dataset, batch_size=batch_size, shuffle=True, drop_last=True, num_workers=num_workers, collate_fn=collate_clips
    )


class ClipData(Protocol):
    """What `clip_dataset` reads of a trainer's `data:` config (the teacher's and the student's)."""

    root: str
    ref_min_gap: int | None
    augment_audio: bool


def clip_dataset(
    data: ClipData,
    seed: int,
    split: str,
    num_frames: int,
    temporal_compression: int,
    lookahead: int,
    random_windows: bool,
    phonetic: bool = False,
) -> TalkingClipDataset:
    """Windows of `num_frames` decoded frames of a split, with `lookahead` frames of audio after each window (the
    encoder's look-ahead plus the denoiser's); training windows (`random_windows`) get `data.augment_audio`;
    `phonetic`: the clips' phonetic features instead of samples."""
    return TalkingClipDataset(
        data.root,
        num_frames=num_frames,
        temporal_compression=temporal_compression,
        split=split,
        seed=seed,
        audio_lookahead_frames=lookahead,
        ref_min_gap=data.ref_min_gap,
        random_windows=random_windows,
        augment_audio=AugmentConfig() if data.augment_audio and random_windows else None,
        phonetic=phonetic,
    )


@dataclass
class EvalBatch:
    """A fixed evaluation batch on the device."""

    latents: torch.Tensor  # (B, C, f, h, w) posterior means
    audio: torch.Tensor  # (B, N) the clips' own audio
    other_audio: torch.Tensor | None  # (B, N) the audio of the next clip of the evaluation set; None for one clip
    portrait: torch.Tensor  # (B, C, 1, h, w)
    draw: FlowDraw  # fixed noise and levels, every frame in the loss, no condition dropped
    first_latent_frame: int = 0  # 1: windows inside streams (cached latents)


def _eval_set(
    cfg: TeacherExperiment,
    audio_encoder: AudioEncoder,
    denoiser: DenoiserDiT,
    vae: CausalVideoVAE,
    shift: float,
    device: torch.device,
) -> list[EvalBatch]:
    """The middle window of each of `eval_clips` clips of the evaluation split (more windows per clip only when the
    split has fewer clips), encoded once, with noise and levels drawn once from the training distribution (seeded),
    so that evaluations are comparable across steps and runs. Clip i's "shuffled" audio is clip i + 1's."""
    dataset = _dataset(cfg, cfg.data.eval_split or cfg.data.split, audio_encoder, denoiser, vae, random_windows=False)
    n = min(cfg.train.eval_clips, len(dataset))
    collate = collate_latent_windows if cfg.data.latents else collate_clips
    items = collate([dataset[i] for i in range(n)])
    other_audio = items["audio"].roll(-1, dims=0) if n > 1 else None  # clip i hears clip i + 1
    generator = torch.Generator().manual_seed(cfg.train.seed + 12345)
    batches = []
    for start in range(0, n, cfg.train.batch_size):
        part = slice(start, min(start + cfg.train.batch_size, n))
        part_items = {k: v[part].to(device) if torch.is_tensor(v) else v for k, v in items.items()}
        latents, first = batch_latents(vae, part_items, sample_posterior=False)
        portrait = encode_latents(vae, part_items["ref"], sample_posterior=False)
        b, f = latents.shape[0], latents.shape[2]
        u = cfg.flow.logit_mean + cfg.flow.logit_std * torch.randn(b, generator=generator)
        t = shift_timesteps(torch.sigmoid(u), shift)
        draw = FlowDraw(
            noise=torch.randn(latents.shape, generator=generator).to(device),
            t=t[:, None].expand(b, f).to(device),
            in_loss=torch.ones(b, f, dtype=torch.bool, device=device),
            drop_audio=torch.zeros(b, dtype=torch.bool, device=device),
            drop_portrait=torch.zeros(b, dtype=torch.bool, device=device),
        )
        other = None if other_audio is None else other_audio[part].to(device)
        batches.append(EvalBatch(latents, part_items["audio"], other, portrait, draw, first))
    return batches


@torch.no_grad()
def evaluate(model: nn.Module, eval_set: list[EvalBatch]) -> dict[str, float]:
    """Mean flow loss on the evaluation set with the true audio, another clip's audio, and the null audio."""
    sums: dict[str, float] = {}
    counts: dict[str, int] = {}
    for batch in eval_set:
        d = batch.draw
        null = FlowDraw(d.noise, d.t, d.in_loss, torch.ones_like(d.drop_audio), d.drop_portrait)
        runs = {"val_loss": (batch.audio, d), "val_loss_null_audio": (batch.audio, null)}
        if batch.other_audio is not None:
            runs["val_loss_shuffled_audio"] = (batch.other_audio, d)
        for name, (audio, draw) in runs.items():
            loss, _ = model(batch.latents, audio, batch.portrait, draw, first_latent_frame=batch.first_latent_frame)
            b = batch.latents.shape[0]
            sums[name] = sums.get(name, 0.0) + loss.item() * b
            counts[name] = counts.get(name, 0) + b
    out = {k: sums[k] / counts[k] for k in sums}
    if "val_loss_shuffled_audio" in out:
        out["audio_gain"] = out["val_loss_shuffled_audio"] - out["val_loss"]
    return out


def _format_eval(step: int, result: dict) -> str:
    parts = [f"step {step} | eval"]
    for key in ("val_loss", "val_loss_shuffled_audio", "val_loss_null_audio", "audio_gain"):
        if key in result:
            parts.append(f"{key} {result[key]:.4f}")
    return " | ".join(parts)


def export_teacher(
    model: TeacherModel,
    state: dict[str, torch.Tensor],
    export: Path,
    vae_path: str,
    shift: float,
    step: int,
    train_latent_frames: int | None = None,
    audio: str = "mel",
) -> list[str]:
    """Write `state` (the TeacherModel's full state dict) as `denoiser/` and `audio_encoder/` save_pretrained
    folders plus `teacher.json` (VAE, shift, step, the audio path, and the latent frames of a training clip: the
    window offline sampling uses); loading is strict, so a missing or extra key is an error here, not later. The
    phonetic audio path has no weights and no folder. Returns the network folders written."""
    folders = save_networks(model, state, export, audio)
    TeacherInfo(vae=str(vae_path), shift=shift, step=step, train_latent_frames=train_latent_frames, audio=audio).write(
        export
    )
    return folders


__all__ = [
    "TeacherDataConfig",
    "TeacherExperiment",
    "TeacherModel",
    "TeacherTrainConfig",
    "TeacherTrainer",
    "batch_latents",
    "clip_dataset",
    "clip_loader",
    "collate_clips",
    "collate_latent_windows",
    "encode_latents",
    "evaluate",
    "export_teacher",
    "train_teacher",
]
