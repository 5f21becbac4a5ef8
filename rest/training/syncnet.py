"""Train a SyncNet on the project's shard format, exporting weights that `rest.metrics.syncnet.load_syncnet` reads
(the network: rest/models/syncnet.py).

Objective: contrastive, on the Euclidean distance d between the lip embedding of a 5-frame window and the audio
embedding of a 20-MFCC-frame window, which is exactly what LSE-D / LSE-C read (unnormalised embeddings,
`pairwise_distance`); that is why we do not use Wav2Lip's BCE on cosine similarity. Two forms:
- "infonce" (default): each video window is scored against its in-sync audio window and K off-sync ones, and the
  cross-entropy of picking the in-sync one with logits -d is minimised (van den Oord et al. 2018, CPC). This is
  the offset search of the metric in miniature.
- "pairwise": the SyncNet paper's loss (Chung & Zisserman, "Out of time", 2016) on one off-sync window,
  mean(d_sync^2) + mean(max(margin - d_off, 0)^2).
Why the default is not the paper's: on SynthTalk, "pairwise" sat for hundreds of steps (in one of the two runs we
made, for all of 2000) at the input-independent solution d_sync = d_off = margin / 2, a stationary point of that
loss; "infonce" left chance level after ~200 steps.

Off-sync windows are the same clip's audio shifted by d frames, 2 <= |d| <= 15: off by one frame the windows
overlap by 80 %, so those are left out; the upper bound is the offset range the metric searches. Windows, MFCC and
crops are exactly the ones `SyncNetScorer` uses at evaluation (`rest.metrics.syncnet`), so a trained model scores
with the same pipeline.

All crops of the split are held in memory as uint8 (`image_size`^2 * 3 bytes per frame: 27 KiB at 96 px); this is
meant for SynthTalk-sized sets (minutes to a few hours of video).

A run folder holds `checkpoints/step_*/` (accelerate state + trainer_state.json; `resume="latest"` continues from
the newest), `metrics.jsonl`, and `export/` (save_pretrained layout). Runs on CPU or one GPU with
`python train/syncnet.py`, or several with `accelerate launch`.
"""

from __future__ import annotations

import json
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from accelerate import Accelerator

from rest.config import to_dict
from rest.data.shards import ShardReader
from rest.errors import RestError
from rest.models.syncnet import MFCC_PER_FRAME, SyncNet, center_crops, sync_windows, syncnet_mfcc
from rest.training.common import TrainConfig
from rest.training.loop import StepOutput, Trainer, training_loop

# Architectures by name: syncnet_python's (224 px face crops) and a narrow one on 96 px crops that trains on CPU.
SYNCNET_PRESETS: dict[str, dict] = {
    "syncnet_v2": {},
    "small": dict(
        audio_channels=(32, 64, 96, 64, 64, 128),
        lip_channels=(32, 64, 64, 64, 64, 128),
        fc_dim=256,
        embed_dim=256,
        image_size=96,
        crop="center",
        crop_fraction=0.6,
    ),
}


@dataclass
class SyncNetTrainConfig:
    """Everything a SyncNet training run needs."""

    data: str  # shard root (SynthTalk or `rest preprocess` output)
    output: str  # run folder
    preset: str = "small"  # key of SYNCNET_PRESETS
    model: dict = field(default_factory=dict)  # SyncNet arguments overriding the preset's
    split: str = "train"  # clips trained on
    eval_split: str | None = None  # clips scored at the end (None: every clip not in `split`)
    steps: int = 2000  # optimizer steps
    batch_size: int = 32  # video windows per step (each with one in-sync and one off-sync audio window)
    lr: float = 1e-3  # peak AdamW learning rate
    warmup_steps: int = 100  # linear warm-up, then cosine decay to 10 %
    weight_decay: float = 1e-4
    loss: str = "infonce"  # "infonce" (1 in-sync vs `negatives` off-sync windows) or "pairwise" (margin)
    negatives: int = 4  # off-sync audio windows per video window ("pairwise" uses the first)
    margin: float = 10.0  # "pairwise": contrastive margin on the L2 distance
    min_shift: int = 2  # smallest |d| of an off-sync pair (frames)
    max_shift: int = 15  # largest |d| of an off-sync pair (frames)
    log_every: int = 50  # status line period (steps)
    checkpoint_every: int = 500  # accelerate checkpoint period (steps; 0: only at the end)
    seed: int = 0


#################################################################################
#                                    Data                                       #
#################################################################################


class SyncWindowSampler:
    """In-memory crops (BGR) and MFCC of a split's clips; draws (video, in-sync audio, off-sync audio) batches."""

    def __init__(self, reader: ShardReader, clip_ids: list[str], model: SyncNet, min_shift: int, max_shift: int):
        cfg = model.config
        if reader.fps != 25 or reader.sample_rate != 16000:
            raise RestError(
                f"{reader.root}: SyncNet needs 25 fps and 16 kHz clips, got {reader.fps}, {reader.sample_rate}"
            )
        if not 1 <= min_shift <= max_shift:
            raise RestError(f"need 1 <= min_shift <= max_shift, got {min_shift}, {max_shift}")
        self.window, self.mfcc_frames = cfg.window_frames, cfg.mfcc_frames
        self.min_shift, self.max_shift = min_shift, max_shift
        self.crops, self.mfccs, self.windows = [], [], []
        for clip_id in clip_ids:
            frames = reader.frames(clip_id)
            audio = np.asarray(reader.audio(clip_id), dtype=np.float32)
            n = sync_windows(len(frames), len(audio), self.window)
            if n <= 2 * max_shift:  # too short for off-sync pairs
                continue
            crops = center_crops(frames, cfg.crop_fraction, cfg.image_size) if cfg.crop == "center" else None
            if crops is None:
                raise RestError("training with crop='face' is not supported: preprocess clips to face crops first")
            self.crops.append(torch.from_numpy(np.ascontiguousarray(crops[..., ::-1])))  # BGR (F, S, S, 3)
            self.mfccs.append(torch.from_numpy(syncnet_mfcc(audio)).float())  # (13, M)
            self.windows.append(n)
        if not self.crops:
            raise RestError(
                f"no clip in {reader.root} is long enough for off-sync pairs (> {2 * max_shift + 6} frames)"
            )
        self.weights = np.asarray(self.windows, np.float64) / sum(self.windows)

    def _audio(self, clip: int, start: int) -> torch.Tensor:
        m = MFCC_PER_FRAME * start
        return self.mfccs[clip][None, :, m : m + self.mfcc_frames]  # (1, 13, 20)

    def sample(self, batch_size: int, negatives: int, rng: np.random.Generator) -> tuple[torch.Tensor, torch.Tensor]:
        """video (B, 3, 5, S, S) BGR in [0, 255]; MFCC windows (B, 1 + negatives, 1, 13, 20), the first in sync."""
        videos, audios = [], []
        for _ in range(batch_size):
            c = int(rng.choice(len(self.crops), p=self.weights))
            n = self.windows[c]
            s = int(rng.integers(0, n))
            starts = [s]
            while len(starts) < 1 + negatives:
                d = int(rng.integers(self.min_shift, self.max_shift + 1)) * (1 if rng.random() < 0.5 else -1)
                if 0 <= s + d < n:
                    starts.append(s + d)
            clip = self.crops[c][s : s + self.window]  # (5, S, S, 3)
            if rng.random() < 0.5:
                clip = clip.flip(2)  # mirror: sync does not depend on it
            videos.append(clip.permute(3, 0, 1, 2).float())
            audios.append(torch.stack([self._audio(c, a) for a in starts]))
        return torch.stack(videos), torch.stack(audios)


def sync_loss(video: torch.Tensor, audio: torch.Tensor, kind: str, margin: float) -> dict:
    """Loss on the L2 distances between lip embeddings (B, D) and audio embeddings (B, 1 + K, D), index 0 in sync.

    "infonce": cross-entropy of the in-sync window among the 1 + K candidates with logits -distance (K off-sync
    windows per video window). "pairwise": the SyncNet paper's contrastive loss on the first off-sync window,
    mean(d_sync^2) + mean(max(margin - d_off, 0)^2). Also returns the mean distances and how often the in-sync
    window is the nearest (`acc`), for the log.
    """
    d = torch.linalg.vector_norm(video[:, None] - audio + 1e-6, dim=-1)  # (B, 1 + K); pairwise_distance's eps
    if kind == "infonce":
        loss = F.cross_entropy(-d, torch.zeros(len(d), dtype=torch.long, device=d.device))
    elif kind == "pairwise":
        loss = d[:, 0].pow(2).mean() + torch.relu(margin - d[:, 1]).pow(2).mean()
    else:
        raise RestError(f"unknown SyncNet loss {kind!r}; choose infonce or pairwise")
    accuracy = (d.argmin(dim=1) == 0).float().mean()
    return {"loss": loss, "d_sync": d[:, 0].mean().detach(), "d_off": d[:, 1:].mean().detach(), "acc": accuracy}


#################################################################################
#                                   Training                                    #
#################################################################################


def build_syncnet(cfg: SyncNetTrainConfig) -> SyncNet:
    if cfg.preset not in SYNCNET_PRESETS:
        raise RestError(f"unknown SyncNet preset {cfg.preset!r}; choose one of {', '.join(SYNCNET_PRESETS)}")
    return SyncNet(**{**SYNCNET_PRESETS[cfg.preset], **cfg.model})


# Scores held-out clips with the metric's pipeline: (model, reader, clip ids, device) -> a JSON-able dict.
SyncEvaluation = Callable[[SyncNet, ShardReader, list[str], torch.device], dict]


def train_syncnet(cfg: SyncNetTrainConfig, resume: str | None = None, evaluate: SyncEvaluation | None = None) -> Path:
    """Train (or resume: "latest" or a checkpoint folder) and export to `<output>/export`; returns that folder.

    `evaluate` scores the held-out clips at the end (train/syncnet.py passes `rest.metrics.syncnet.evaluate_sync`,
    the LSE pipeline: the metrics score, training imports none of them); None skips that evaluation."""
    train = TrainConfig(
        output_dir=cfg.output,
        seed=cfg.seed,
        batch_size=cfg.batch_size,
        lr=cfg.lr,
        weight_decay=cfg.weight_decay,
        warmup_steps=cfg.warmup_steps,
        max_steps=cfg.steps,
        grad_clip=0.0,  # no clipping
        log_every=cfg.log_every,
        eval_every=0,  # held-out clips are scored at the end only
        checkpoint_every=cfg.checkpoint_every,
        keep_checkpoints=2,
    )
    return training_loop(SyncNetTrainer(cfg, evaluate), train, to_dict(cfg), resume)


class SyncNetTrainer(Trainer):
    """SyncNet's part of `training_loop`: in-memory windows of a split (`SyncWindowSampler`), `sync_loss`, the
    trained weights (no EMA) exported and scored on held-out clips with the evaluation pipeline."""

    name = "syncnet"
    ema = False
    evaluate_on = "main"

    def __init__(self, cfg: SyncNetTrainConfig, evaluate: SyncEvaluation | None = None):
        self.cfg = cfg
        self.evaluate_clips = evaluate

    def build(self, accelerator: Accelerator) -> None:
        cfg = self.cfg
        self.accelerator = accelerator
        self.reader = ShardReader(cfg.data)
        train_ids = [r.clip_id for r in self.reader.records if r.split == cfg.split]
        if not train_ids:
            raise RestError(f"no clips of split {cfg.split!r} in {cfg.data}")
        model = build_syncnet(cfg)
        self.sampler = SyncWindowSampler(self.reader, train_ids, model, cfg.min_shift, cfg.max_shift)
        opt = torch.optim.AdamW(model.parameters(), lr=cfg.lr, weight_decay=cfg.weight_decay)
        self.model, self.optimizer = accelerator.prepare(model, opt)
        self.unwrapped = accelerator.unwrap_model(self.model)

    def summary(self, accelerator: Accelerator) -> str:
        return (
            f"SyncNet {self.cfg.preset}: {sum(p.numel() for p in self.model.parameters()) / 1e6:.2f}M parameters, "
            f"{len(self.sampler.crops)} clips, {sum(self.sampler.windows)} windows; "
            f"{accelerator.num_processes} process(es) on {accelerator.device}"
        )

    def batches(self, step: int) -> Iterator[tuple[torch.Tensor, torch.Tensor]]:
        """The batch drawn at a step depends only on (seed, step, rank), so a resumed run draws what the
        uninterrupted one would have."""
        cfg, device = self.cfg, self.accelerator.device
        while True:
            rng = np.random.default_rng([cfg.seed, step, self.accelerator.process_index])
            video, audio = self.sampler.sample(cfg.batch_size, cfg.negatives, rng)
            yield video.to(device), audio.to(device)
            step += 1

    def train_step(self, batch: tuple[torch.Tensor, torch.Tensor], step: int) -> StepOutput:
        video, audio = batch  # (B, 3, 5, S, S), (B, 1 + K, 1, 13, 20)
        lip = self.unwrapped.forward_lip(video)  # (B, D)
        aud = self.unwrapped.forward_aud(audio.flatten(0, 1)).unflatten(0, audio.shape[:2])  # (B, 1 + K, D)
        losses = sync_loss(lip, aud, self.cfg.loss, self.cfg.margin)
        return StepOutput(losses["loss"], {k: v.item() for k, v in losses.items()}, samples=self.cfg.batch_size)

    def evaluate(self, step: int) -> dict | None:
        """Sync of the held-out clips (`eval_split`, else every clip not in `split`); None if there are none."""
        cfg, records = self.cfg, self.reader.records
        split_ids = [r.clip_id for r in records if r.split == cfg.eval_split]
        other_ids = [r.clip_id for r in records if r.split != cfg.split]
        eval_ids = split_ids if cfg.eval_split else other_ids
        if not eval_ids or self.evaluate_clips is None:
            return None
        return self.evaluate_clips(self.unwrapped, self.reader, eval_ids, self.accelerator.device)

    def format_eval(self, step: int, result: dict, final: bool) -> str:
        return f"held-out sync: {json.dumps(result)}"

    def export(self, accelerator: Accelerator, folder: Path, step: int) -> None:
        self.unwrapped.eval()
        if accelerator.is_main_process:
            self.unwrapped.save_pretrained(str(folder))


__all__ = [
    "SYNCNET_PRESETS",
    "SyncNetTrainConfig",
    "SyncEvaluation",
    "SyncNetTrainer",
    "SyncWindowSampler",
    "sync_loss",
    "train_syncnet",
]
